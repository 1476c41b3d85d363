"""Average the probabilities of N finished runs and score the ensemble: ``python -m emotion_pipeline.ensemble A B C``.

    python -m emotion_pipeline.ensemble seed-1 seed-2 seed-3          # a seed sweep's three experiments
    python -m emotion_pipeline.ensemble workspace workspace:baseline   # the fine-tune and its TF-IDF baseline

Each member is a git revision, an experiment name or ``workspace`` (as for emotion_pipeline.compare), whose
evaluate stage wrote metrics/predictions.csv with every class's probability; ``NAME:baseline`` takes that
revision's TF-IDF baseline (metrics/baseline_predictions.csv) instead. The ensemble predicts the class of the
members' mean probability (equal weights: nothing is fitted, so nothing is tuned on test).

It prints each member's and the ensemble's test scores with bootstrap intervals, and the ensemble against its best
member on the same texts (paired interval, McNemar's test, verdict). The best member is the one with the best
*validation* macro-F1 (metrics/train.json, or baseline_choice.json for a baseline), as a user without the test
labels would pick it: choosing it by test score would flatter the member. The ensemble costs N forward passes per
text; whether that is worth it is this comparison's question.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd

from emotion_pipeline.commands import run_command
from emotion_pipeline.compare import (
    Side,
    add_bootstrap_options,
    check_bootstrap_options,
    class_labels,
    read_predictions,
    resolve,
)
from emotion_pipeline.errors import UserError
from emotion_pipeline.evaluation.metrics import PROB_PREFIX, predictions_table
from emotion_pipeline.evaluation.reports import format_interval, text_table, verdict, with_interval
from emotion_pipeline.evaluation.uncertainty import COMPARED_SCORES, paired_comparison, paired_labels, score_intervals, scores
from emotion_pipeline.io import write_text
from emotion_pipeline.paths import BASELINE_CHOICE, BASELINE_PREDICTIONS, PREDICTIONS, TRAIN_METRICS

BASELINE_SUFFIX = ":baseline"


def member(spec: str) -> Side:
    """A member named on the command line: NAME or NAME:baseline."""
    name, is_baseline = (spec[: -len(BASELINE_SUFFIX)], True) if spec.endswith(BASELINE_SUFFIX) else (spec, False)
    return Side(spec, *resolve(name), str(BASELINE_PREDICTIONS if is_baseline else PREDICTIONS))


def probabilities(side: Side, table: pd.DataFrame, labels: list[str]) -> np.ndarray:
    columns = [f"{PROB_PREFIX}{name}" for name in labels]
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise UserError(f"'{side.name}' has no class probabilities ({side.describe()} lacks {', '.join(missing)}): it "
                        "was evaluated before predictions.csv kept them. Re-run its evaluate stage (`dvc exp run` / "
                        "`dvc repro`) to average it.")
    return table[columns].to_numpy(dtype=np.float64)


def validation_macro_f1(side: Side) -> float | None:
    """The member's validation macro-F1, as its run recorded it; None when it is not there."""
    import dvc.api

    path, key = (BASELINE_CHOICE, "validation_macro_f1") if side.path == str(BASELINE_PREDICTIONS) else (TRAIN_METRICS, "val_macro_f1")
    try:
        return float(json.loads(dvc.api.read(str(path), rev=side.commit))[key])
    except Exception:  # noqa: BLE001  no such file or key: the member cannot be ranked on validation
        return None


def ensemble(sides: list[Side], resamples: int, confidence: float, seed: int) -> tuple[dict, pd.DataFrame]:
    """Every member's and the ensemble's scores, and the ensemble against its best member; with the ensemble's table."""
    tables = [read_predictions(side) for side in sides]
    labels = class_labels(sides[0], sides[0])
    for side in sides[1:]:
        class_labels(sides[0], side)  # a member over other classes is refused, naming both
    preds = []
    for side, table in zip(sides, tables):  # every member over the first one's texts, in its order, or refused
        y_true, _, pred = paired_labels(tables[0], table, f"'{sides[0].name}'", f"'{side.name}'", labels)
        preds.append(pred)
    mean = np.mean([probabilities(side, table, labels) for side, table in zip(sides, tables)], axis=0)
    combined = predictions_table(tables[0]["text"].tolist(), y_true, mean, labels)
    averaged = mean.argmax(axis=1)
    rows = []
    for side, pred in [*zip(sides, preds), (None, averaged)]:
        point = scores(y_true, pred, len(labels))  # accuracy, macro-F1, ...
        intervals = score_intervals(y_true, pred, labels, resamples, confidence, seed)
        where = {"name": "ensemble"} if side is None else {"name": side.name, "commit": side.commit, "file": side.path}
        rows.append({**where, "validation_macro_f1": None if side is None else validation_macro_f1(side),
                     **{score: {"value": round(float(point[i]), 6), "interval": intervals[score]}
                        for i, score in enumerate(COMPARED_SCORES)}})
    ranked = [i for i in range(len(sides)) if rows[i]["validation_macro_f1"] is not None]
    if not ranked:
        raise UserError("no member has a recorded validation macro-F1 (metrics/train.json, or metrics/baseline_choice.json "
                        "for a baseline): the best member cannot be chosen without looking at test.")
    best = max(ranked, key=lambda i: rows[i]["validation_macro_f1"])
    versus = paired_comparison(y_true, preds[best], averaged, len(labels), resamples, confidence, seed)
    return ({"members": rows[:-1], "ensemble": rows[-1], "best_member": sides[best].name, "versus_best": versus,
             "verdict": verdict(versus, sides[best].name, "ensemble")}, combined)


def report(result: dict) -> str:
    """The scores and the verdict as a reader wants them on a terminal."""
    versus, settings = result["versus_best"], result["versus_best"]["bootstrap"]
    rows = [("", "validation macro-F1", "test accuracy", "test macro-F1")]
    for row in result["members"] + [result["ensemble"]]:
        rows.append((row["name"], "-" if row["validation_macro_f1"] is None else f"{row['validation_macro_f1']:.4f}",
                     *(with_interval(row[score]["value"], row[score]["interval"]) for score in COMPARED_SCORES)))
    lines = [f"{versus['examples']} test texts; {settings['confidence']:.0%} intervals from {settings['resamples']} "
             f"bootstrap resamples (seed {settings['seed']}); the ensemble predicts the class of the members' mean "
             "probability.", "", *text_table(rows), "",
             f"Best member by validation macro-F1: {result['best_member']}. The ensemble against it, on the same texts:"]
    for title, key in (("accuracy", "accuracy"), ("macro-F1", "macro_f1")):
        s = versus[key]
        lines.append(f"  {title}: {s['b']:.4f} vs {s['a']:.4f}, {s['difference']:+.4f} "
                     f"{format_interval(s['difference_interval'], signed=True)}")
    lines += [f"  McNemar's exact test: the member alone is right on {versus['mcnemar']['only_a_right']} texts, the "
              f"ensemble alone on {versus['mcnemar']['only_b_right']}: p = {versus['mcnemar']['p_value']:.3g}.",
              f"Verdict: {result['verdict']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m emotion_pipeline.ensemble", description=__doc__.splitlines()[0])
    parser.add_argument("members", nargs="+", metavar="MEMBER",
                        help="a git revision, an experiment name or 'workspace'; NAME:baseline for its TF-IDF baseline")
    parser.add_argument("--out", metavar="CSV", help="also write the ensemble's predictions (the columns of predictions.csv)")
    add_bootstrap_options(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    run_command(lambda: run(args))


def run(args: argparse.Namespace) -> None:
    if len(args.members) < 2 or len(set(args.members)) != len(args.members):
        raise UserError(f"give two or more different members to average; got {', '.join(args.members)}.")
    check_bootstrap_options(args)
    result, table = ensemble([member(spec) for spec in args.members], args.resamples, args.confidence, args.seed)
    if args.out:
        write_text(args.out, table.to_csv(index=False))
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else report(result), end="\n" if args.json else "")


if __name__ == "__main__":
    main()
