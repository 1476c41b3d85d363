"""Which labels are probably wrong: `python -m emotion_pipeline.audit` (confident learning, with cleanlab).

    dvc repro prepare                          # the audit reads data/prepared
    python -m emotion_pipeline.audit           # writes audit/label_issues.csv and audit/report.md
    python -m emotion_pipeline.audit --folds 10 --top 50

    # train's out-of-fold probabilities from K fine-tunes instead (K runs of the pipeline: hours on 2 cores)
    dvc exp run --queue -n audit-fold -S 'data.audit_fold=range(0,5)' evaluate && dvc queue start -j 1
    python -m emotion_pipeline.audit --finetune audit-fold-{1..5}   # DVC numbers a sweep from 1; the folds are 0-4

dair-ai/emotion's labels come from hashtags (distant supervision): some are wrong. Confident learning
(Northcutt et al., cleanlab's `find_label_issues`) flags an example whose given label has a low probability
under a model that never saw that example, relative to how confident that model is on its class. So every
probability here is out of sample:
- train: K-fold out-of-fold probabilities (each text scored by a model fitted on the other folds);
- validation and test: a model fitted on all of train, which never saw them.
By default the model is a TF-IDF logistic regression (emotion_pipeline.data.label_issues: 1-2-grams, C=10): seconds
on 2 cores, where K fine-tunes take hours. Its probabilities are weaker than the fine-tune's, so it flags more texts the
fine-tune would get right: read the list as candidates to look at. With the defaults, the train rows listed here are
exactly those `data.drop_label_issues: true` drops in prepare; evaluate's quality report audits the test split again
with the trained model's own probabilities.

--finetune takes train's probabilities from K finished runs of the pipeline, one per fold: a run with
data.audit_fold = k trains on the other folds (the same stratified folds and seed as the TF-IDF audit) and its
evaluate stage scores fold k as its test split, so its metrics/predictions.csv holds fold k's out-of-fold
probabilities. Each run's data_report.json names its fold and rows; the audit checks that the K runs cover every train
text of this project's data/prepared once, with the same texts. Validation and test keep the TF-IDF model's
probabilities (a fold run's model never saw them either, but none of the K is the model you ship).

Outputs: audit/label_issues.csv (split, row as in data/prepared, text, given label, suggested label, quality: the
probability of the given label, ranked worst first) and audit/report.md (counts per split and per given ->
suggested pair, the top examples per split, exact or near duplicates with conflicting labels after Unicode NFC
and whitespace normalising, and test texts that also appear in train).

Why a command and not a stage: it changes no model and nothing reads its output, and the pipeline's stages run on
every experiment; as a stage it would be one more step per `dvc exp run` for a list a person reads once per data
version. `dvc add audit` tracks what it wrote.
"""

from __future__ import annotations

import argparse
import json
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd

from emotion_pipeline.commands import run_command
from emotion_pipeline.data.label_issues import (
    AUDIT_SETTING,
    FOLDS,
    SEED,
    held_out_probabilities,
    label_issues,
    out_of_sample_probabilities,
)
from emotion_pipeline.data.prepared import read_prepared
from emotion_pipeline.errors import UserError
from emotion_pipeline.evaluation.reports import text_table
from emotion_pipeline.io import write_text
from emotion_pipeline.paths import DATA_REPORT, PREDICTIONS, PREPARED_DIR

AUDIT_DIR = Path("audit")


def normalised(text: str) -> str:
    """A text as duplicates are found: Unicode NFC, case folded, runs of whitespace as one space."""
    return " ".join(unicodedata.normalize("NFC", text).casefold().split())


def conflicting_duplicates(splits: dict[str, pd.DataFrame], labels: list[str]) -> pd.DataFrame:
    """Texts that are equal once normalised but carry different labels, within or across splits."""
    rows = pd.concat([frame.assign(split=name, row=np.arange(len(frame))) for name, frame in splits.items()])
    rows["key"] = rows["text"].map(normalised)
    conflicting = rows.groupby("key")["label"].transform("nunique") > 1
    found = rows[conflicting].sort_values(["key", "split", "row"])
    return found.assign(label=[labels[i] for i in found["label"]])[["key", "split", "row", "label", "text"]]


def finetune_train_probabilities(names: list[str], train: pd.DataFrame, labels: list[str]) -> tuple[np.ndarray, int]:
    """Train's out-of-fold probabilities from the fine-tunes run with data.audit_fold = 0 .. K-1 (one name per fold),
    and K; UserError when the runs are not one per fold of this project's train texts."""
    import dvc.api

    from emotion_pipeline.compare import Side, class_labels, read_predictions, resolve
    from emotion_pipeline.ensemble import probabilities

    probs, runs, folds = np.zeros((len(train), len(labels))), {}, None
    for name in names:
        side = Side(name, *resolve(name), str(PREDICTIONS))
        try:
            fold = json.loads(dvc.api.read(str(DATA_REPORT), rev=side.commit)).get("audit_fold")
        except Exception:  # noqa: BLE001  no data report there: not a fold run either
            fold = None
        if not fold:
            raise UserError(f"'{name}' is not a run of one audit fold: its {DATA_REPORT} has no audit_fold. Run one "
                            "experiment per fold (`dvc exp run --queue -n audit-fold -S 'data.audit_fold=range(0,5)' "
                            "evaluate`) and name those.")
        folds = folds or fold["folds"]
        if fold["folds"] != folds:
            raise UserError(f"'{name}' is fold {fold['fold']} of {fold['folds']}, but the runs named before it are "
                            f"folds of {folds}: name one run per fold of one data.audit_folds.")
        if fold["fold"] in runs:
            raise UserError(f"'{name}' and '{runs[fold['fold']]}' are both fold {fold['fold']} of {folds}: name one run "
                            "per fold.")
        if class_labels(side, side) != labels:
            raise UserError(f"'{name}' classifies into other classes than data/prepared/labels.json {labels}.")
        table, rows = read_predictions(side), np.asarray(fold["held_out_train_rows"], dtype=int)
        if (len(table) != len(rows) or (len(rows) and rows.max() >= len(train))
                or table["text"].tolist() != train["text"].iloc[rows].tolist()):
            raise UserError(f"'{name}' held out other texts than this project's {PREPARED_DIR}/train at the rows its "
                            f"{DATA_REPORT} lists: it ran on other data. Name fold runs of this data, or run `dvc "
                            "repro prepare` with their data params first.")
        probs[rows] = probabilities(side, table, labels)
        runs[fold["fold"]] = name
    missing = sorted(set(range(folds)) - set(runs))
    if missing:
        raise UserError(f"no run of fold {', '.join(map(str, missing))} of {folds}: every train text needs the run that "
                        f"held it out (named: {', '.join(f'{name} = fold {k}' for k, name in sorted(runs.items()))}).")
    return probs, folds


def report(issues: pd.DataFrame, sizes: dict[str, int], duplicates: pd.DataFrame, test_in_train: pd.DataFrame,
           top: int, train_source: str) -> str:
    lines = ["# Label audit (confident learning)", "",
             f"Out-of-sample probabilities: train from {train_source}; validation and test from the TF-IDF model "
             f"({AUDIT_SETTING}) fitted on train. A flagged text is a candidate for a wrong label, not a verdict.", "",
             *text_table([("split", "texts", "flagged", "share")] +
                         [(split, f"{size:,}", f"{(issues['split'] == split).sum():,}",
                           f"{(issues['split'] == split).sum() / size:.1%}") for split, size in sizes.items()]),
             "", "## Given -> suggested", ""]
    pairs = issues.groupby(["split", "given", "suggested"]).size().sort_values(ascending=False)
    lines += text_table([("split", "given -> suggested", "texts")] +
                        [(split, f"{given} -> {suggested}", str(count)) for (split, given, suggested), count in pairs.head(30).items()])
    for split in sizes:
        lines += ["", f"## {split}: the {top} most likely wrong labels", ""]
        worst = issues[issues["split"] == split].head(top)
        lines += text_table([("row", "given", "suggested", "quality", "text")] +
                            [(str(r.row), r.given, r.suggested, f"{r.quality:.3f}", r.text[:90]) for r in worst.itertuples()])
    lines += ["", f"## Duplicates with conflicting labels ({duplicates['key'].nunique()} texts, NFC and whitespace "
                  f"normalised, case folded)", ""]
    lines += text_table([("split", "row", "label", "text")] +
                        [(r.split, str(r.row), r.label, r.text[:90]) for r in duplicates.head(4 * top).itertuples()])
    lines += ["", f"## Test texts that also appear in train ({len(test_in_train)})", ""]
    lines += text_table([("test row", "test label", "train label(s)", "text")] +
                        [(str(r.row), r.label, r.train_labels, r.text[:90]) for r in test_in_train.itertuples()])
    return "\n".join(lines) + "\n"


def test_texts_in_train(splits: dict[str, pd.DataFrame], labels: list[str]) -> pd.DataFrame:
    train_labels: dict[str, set[str]] = {}
    for text, label in zip(splits["train"]["text"], splits["train"]["label"]):
        train_labels.setdefault(normalised(text), set()).add(labels[label])
    test = splits["test"]
    keys = test["text"].map(normalised)
    found = [(row, labels[label], ", ".join(sorted(train_labels[key])), text)
             for row, (key, label, text) in enumerate(zip(keys, test["label"], test["text"])) if key in train_labels]
    return pd.DataFrame(found, columns=["row", "label", "train_labels", "text"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m emotion_pipeline.audit", description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=FOLDS,
                        help=f"folds of the out-of-fold train probabilities (default: {FOLDS}, as data.drop_label_issues)")
    parser.add_argument("--top", type=int, default=20, help="examples per split in the report (default: 20)")
    parser.add_argument("--seed", type=int, default=SEED,
                        help=f"seed of the fold split and the solver (default: {SEED}, as data.drop_label_issues)")
    parser.add_argument("--out", type=Path, default=AUDIT_DIR, help="where to write (default: audit/)")
    parser.add_argument("--finetune", nargs="+", metavar="RUN",
                        help="train's probabilities from these fine-tunes instead, one experiment (or revision) per "
                        "data.audit_fold; --seed then applies to the TF-IDF model of validation and test only")
    args = parser.parse_args(argv)
    run_command(lambda: run(args))


def run(args: argparse.Namespace) -> None:
    if args.folds < 2 or args.top < 1:
        raise UserError("--folds must be at least 2 and --top at least 1.")
    splits, labels = read_prepared(PREPARED_DIR)
    if args.finetune:  # train's from the fold runs; the TF-IDF model only for validation and test
        train_probs, folds = finetune_train_probabilities(args.finetune, splits["train"], labels)
        probs = {"train": train_probs, **held_out_probabilities(splits, len(labels), args.seed)}
        train_source = f"the fine-tune, {folds}-fold out-of-fold (runs {', '.join(args.finetune)})"
    else:
        probs = out_of_sample_probabilities(splits, len(labels), args.folds, args.seed)
        train_source = f"the TF-IDF model, {args.folds}-fold out-of-fold"
    issues = pd.concat([label_issues(splits[split], probs[split], labels, split) for split in splits], ignore_index=True)
    duplicates, test_in_train = conflicting_duplicates(splits, labels), test_texts_in_train(splits, labels)
    write_text(args.out / "label_issues.csv", issues.to_csv(index=False))
    write_text(args.out / "report.md", report(issues, {split: len(frame) for split, frame in splits.items()}, duplicates,
                                              test_in_train, args.top, train_source))
    counts = ", ".join(f"{split} {(issues['split'] == split).sum():,} of {len(frame):,}" for split, frame in splits.items())
    print(f"label audit: flagged {counts}; {args.out}/label_issues.csv and {args.out}/report.md")


if __name__ == "__main__":
    main()
