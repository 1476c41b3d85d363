"""Seed-to-seed spread of a recipe: ``python -m emotion_pipeline.aggregate [NAME ...]``.

A single run's bootstrap interval says how much its score depends on which test texts were drawn;
it says nothing of how much it depends on the seed (head init, data order, dropout). Run the same
recipe under several seeds and this prints, per headline test score (metrics/test.json), mean ±
standard deviation, min and max over the runs, beside the runs' mean bootstrap half-width:

    dvc exp run --queue -S 'train.seed=range(1,6)' && dvc queue start   # five seeds, then
    python -m emotion_pipeline.aggregate                                 # every group of 2+ experiments

Which experiments: the names given (as `dvc exp show` lists them), or ``--like NAME``, NAME and
every experiment with the same params except train.seed, or, with neither, every such group
among the experiments that finished. Params that change no result (emotion_pipeline.config,
NO_RESULT_EFFECT) do not split a group. Metrics come from `dvc exp show` (emotion_pipeline.experiments); the intervals from
each run's metrics/test_details.json, read through DVC's API like emotion_pipeline.compare does.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from emotion_pipeline.commands import run_command
from emotion_pipeline.config import Params, changes_results
from emotion_pipeline.errors import UserError, first_line
from emotion_pipeline.evaluation.reports import text_table
from emotion_pipeline.evaluation.uncertainty import HEADLINE_SCORES
from emotion_pipeline.experiments import experiment_rows, flat_values
from emotion_pipeline.paths import TEST_DETAILS, TEST_METRICS

SEED = "train.seed"


def experiments() -> list[dict]:
    """Every finished experiment with test scores: its name, revision, and params and metrics by column name."""
    rows = [{"Experiment": name, "rev": row["rev"], **flat_values(row["data"])} for name, row in experiment_rows().items()
            if row["state"] == "success"]
    return [row for row in rows if row.get(f"{TEST_METRICS}:macro_f1") is not None]


def recipe(row: dict) -> tuple:
    """A run's params that change results, less train.seed: equal recipes differ by their seed alone."""
    def counts(key: str) -> bool:
        section, _, name = key.partition(".")
        model = Params.model_fields[section].annotation if section in Params.model_fields else None
        return model is not None and name in model.model_fields and changes_results(model, name) and key != SEED

    return tuple(sorted((key, json.dumps(value, sort_keys=True)) for key, value in row.items() if ":" not in key and counts(key)))


def groups(rows: list[dict], names: list[str], like: str | None) -> list[list[dict]]:
    """The sets of runs to aggregate, each sorted by seed."""
    by_name = {row["Experiment"]: row for row in rows}
    for name in [*names, *([like] if like else [])]:
        if name not in by_name:
            raise UserError(f"no finished experiment named '{name}' (`dvc exp show` lists them; queued ones appear once they ran).")
    if names:
        chosen = [[by_name[name] for name in names]]
    else:
        recipes: dict[tuple, list[dict]] = {}
        for row in rows:
            recipes.setdefault(recipe(row), []).append(row)
        chosen = [recipes[recipe(by_name[like])]] if like else [group for group in recipes.values() if len(group) > 1]
    if not chosen or any(len(group) < 2 for group in chosen):
        raise UserError("nothing to aggregate: it takes two or more finished experiments (e.g. `dvc exp run --queue "
                        "-S 'train.seed=range(1,6)'` and `dvc queue start`).")
    return [sorted(group, key=lambda row: (row.get(SEED) or 0, row["Experiment"])) for group in chosen]


def half_widths(rev: str) -> dict[str, float]:
    """Half the width of each headline score's bootstrap interval in one run's test details."""
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        details = json.loads(dvc.api.read(str(TEST_DETAILS), rev=rev))
    except (DvcException, OSError, ValueError) as exc:
        raise UserError(f"cannot read {TEST_DETAILS} of experiment revision {rev[:7]} ({first_line(exc)}); if its cache is "
                        f"gone (`dvc gc`), `dvc pull` brings it back, or `dvc exp apply` and `dvc repro` rebuild it.") from None
    intervals = details.get("intervals", {})
    return {score: (intervals[score][1] - intervals[score][0]) / 2 for score in HEADLINE_SCORES if score in intervals}


def summary(group: list[dict]) -> dict:
    """Mean, standard deviation (n − 1), min and max of each headline score, and the mean bootstrap half-width."""
    widths = [half_widths(row["rev"]) for row in group]
    result = {"experiments": [row["Experiment"] for row in group], "seeds": [row.get(SEED) for row in group], "scores": {}}
    for score in HEADLINE_SCORES:
        values = np.array([row[f"{TEST_METRICS}:{score}"] for row in group], dtype=float)
        bootstrap = [width[score] for width in widths if score in width]
        result["scores"][score] = {"mean": round(float(values.mean()), 6), "std": round(float(values.std(ddof=1)), 6),
                                   "min": round(float(values.min()), 6), "max": round(float(values.max()), 6),
                                   "bootstrap_half_width": round(float(np.mean(bootstrap)), 6) if bootstrap else None}
    return result


def report(result: dict) -> str:
    rows = [("score", "mean ± std over seeds", "min", "max", "bootstrap ± (mean)")]
    for score, s in result["scores"].items():
        rows.append((score, f"{s['mean']:.4f} ± {s['std']:.4f}", f"{s['min']:.4f}", f"{s['max']:.4f}",
                     "-" if s["bootstrap_half_width"] is None else f"{s['bootstrap_half_width']:.4f}"))
    seeds = ", ".join(f"{name} (seed {seed:g})" if isinstance(seed, (int, float)) else name
                      for name, seed in zip(result["experiments"], result["seeds"]))
    return "\n".join([f"{len(result['experiments'])} runs: {seeds}",
                      *text_table(rows)]) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m emotion_pipeline.aggregate", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help="experiments to aggregate (default: groups by params)")
    parser.add_argument("--like", metavar="NAME", help="NAME and every experiment with its params except train.seed")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    run_command(lambda: run(args))


def run(args: argparse.Namespace) -> None:
    if args.names and args.like:
        raise UserError("give experiment names or --like NAME, not both.")
    results = [summary(group) for group in groups(experiments(), args.names, args.like)]
    print(json.dumps(results, indent=2, sort_keys=True) if args.json else "\n".join(map(report, results)), end="\n" if args.json else "")


if __name__ == "__main__":
    main()
