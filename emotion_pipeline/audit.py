"""Which labels are probably wrong: `python -m emotion_pipeline.audit` (confident learning, with cleanlab).

    dvc repro prepare                          # the audit reads data/prepared
    python -m emotion_pipeline.audit           # writes audit/label_issues.csv and audit/report.md
    python -m emotion_pipeline.audit --folds 10 --top 50

dair-ai/emotion's labels come from hashtags (distant supervision): some are wrong. Confident learning
(Northcutt et al., cleanlab's `find_label_issues`) flags an example whose given label has a low probability
under a model that never saw that example, relative to how confident that model is on its class. So every
probability here is out of sample:
- train: K-fold out-of-fold probabilities (each text scored by a model fitted on the other folds);
- validation and test: a model fitted on all of train, which never saw them.
The model is a TF-IDF logistic regression (emotion_pipeline.data.label_issues: 1-2-grams, C=10): seconds on 2 cores,
where K fine-tunes would take hours. Its probabilities are weaker than the fine-tune's, so it flags more texts the
fine-tune would get right: read the list as candidates to look at. With the defaults, the train rows listed here are
exactly those `data.drop_label_issues: true` drops in prepare; evaluate's quality report audits the test split again
with the trained model's own probabilities.

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
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd

from emotion_pipeline.commands import run_command
from emotion_pipeline.data.label_issues import AUDIT_SETTING, FOLDS, SEED, label_issues, out_of_sample_probabilities
from emotion_pipeline.data.prepared import read_prepared
from emotion_pipeline.errors import UserError
from emotion_pipeline.evaluation.reports import text_table
from emotion_pipeline.io import write_text
from emotion_pipeline.paths import PREPARED_DIR

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


def report(issues: pd.DataFrame, sizes: dict[str, int], duplicates: pd.DataFrame, test_in_train: pd.DataFrame,
           top: int, folds: int) -> str:
    lines = ["# Label audit (confident learning)", "",
             f"Out-of-sample probabilities of the TF-IDF model ({AUDIT_SETTING}; train: {folds}-fold out-of-fold, validation "
             f"and test: fitted on train). A flagged text is a candidate for a wrong label, not a verdict.", "",
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
    args = parser.parse_args(argv)
    run_command(lambda: run(args))


def run(args: argparse.Namespace) -> None:
    if args.folds < 2 or args.top < 1:
        raise UserError("--folds must be at least 2 and --top at least 1.")
    splits, labels = read_prepared(PREPARED_DIR)
    probs = out_of_sample_probabilities(splits, len(labels), args.folds, args.seed)
    issues = pd.concat([label_issues(splits[split], probs[split], labels, split) for split in splits], ignore_index=True)
    duplicates, test_in_train = conflicting_duplicates(splits, labels), test_texts_in_train(splits, labels)
    write_text(args.out / "label_issues.csv", issues.to_csv(index=False))
    write_text(args.out / "report.md", report(issues, {split: len(frame) for split, frame in splits.items()}, duplicates,
                                              test_in_train, args.top, args.folds))
    counts = ", ".join(f"{split} {(issues['split'] == split).sum():,} of {len(frame):,}" for split, frame in splits.items())
    print(f"label audit: flagged {counts}; {args.out}/label_issues.csv and {args.out}/report.md")


if __name__ == "__main__":
    main()
