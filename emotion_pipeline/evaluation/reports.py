"""Scores as people read them: the quality report, per-class tables, intervals, a comparison's verdict.

Apart from the numbers (emotion_pipeline.evaluation.metrics, .uncertainty) so that the wording of a report is in the
closure of the stages that write reports (evaluate, baseline, export's model card, quantize's README) and not of
train: a sentence edited here re-runs no training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from emotion_pipeline.evaluation.metrics import confusion


def report_text(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> str:
    from sklearn.metrics import classification_report

    return classification_report(y_true, y_pred, labels=list(range(len(labels))), target_names=labels,
                                 digits=4, zero_division=0)


def text_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as a terminal table: columns left-aligned to their widest cell, two spaces apart, no trailing blanks."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def quality_report(metrics: dict, table: pd.DataFrame, labels: list[str], top_mistakes: int, title: str,
                   sections: Sequence[str] = ()) -> str:
    """Markdown an engineer reads to decide what to try next.

    With ``metrics["intervals"]`` (emotion_pipeline.evaluation.uncertainty.score_intervals) every score is shown with
    its bootstrap interval; ``sections`` (markdown lines) go after the per-class table.
    """
    y_true = table["actual"].map({name: i for i, name in enumerate(labels)}).to_numpy()
    y_pred = table["predicted"].map({name: i for i, name in enumerate(labels)}).to_numpy()
    intervals = metrics.get("intervals")
    lines = [
        f"# {title}",
        "",
        f"{metrics['examples']} test examples: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, "
        f"weighted-F1 {metrics['weighted_f1']:.4f}, expected calibration error {metrics['ece']:.4f}.",
        *(["", interval_summary(metrics, intervals)] if intervals else []),
        "",
        "## Per class",
        "",
        *per_class_table(metrics["per_class"], intervals["per_class_f1"] if intervals else None),
        *sections,
    ]
    matrix = confusion(y_true, y_pred, labels)
    lines += ["", "## Confusion matrix (rows: true, columns: predicted)", "",
              "| true \\ predicted | " + " | ".join(labels) + " |", "| --- " * (len(labels) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(str(n) for n in matrix.loc[name]) + " |" for name in labels]
    lines.append("")
    mistakes = table[~table["correct"]].sort_values("confidence", ascending=False, kind="stable").head(top_mistakes)
    lines += [f"## The {len(mistakes)} most confident mistakes", "", "| probability | true | predicted | text |",
              "| --- | --- | --- | --- |"]
    for row in mistakes.itertuples():
        lines.append(f"| {row.confidence:.4f} | {row.actual} | {row.predicted} | {markdown_cell(row.text)} |")
    return "\n".join(lines) + "\n"


def markdown_cell(text: str) -> str:
    """A text as one cell of a markdown table: its pipes escaped."""
    return text.replace("|", "\\|")


def per_class_table(per_class: dict, f1_intervals: dict | None = None) -> list[str]:
    """The markdown lines of a per-class precision / recall / F1 / support table (quality report, model card);
    with ``f1_intervals`` ({class: [low, high]}), each F1 with its interval."""
    def f1(name: str, scores: dict) -> str:
        return f"{scores['f1']:.4f}" if f1_intervals is None else with_interval(scores["f1"], f1_intervals[name])

    header = "F1" if f1_intervals is None else "F1 [interval]"
    lines = [f"| class | precision | recall | {header} | support |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | {s['precision']:.4f} | {s['recall']:.4f} | {f1(name, s)} | {s['support']} |"
              for name, s in per_class.items()]
    return lines


def format_interval(bounds: list[float], signed: bool = False) -> str:
    """``[0.8790, 0.9050]``: an interval as reports and the model card print it (``signed``: ``[-0.0100, +0.0050]``)."""
    spec = "+.4f" if signed else ".4f"
    return f"[{bounds[0]:{spec}}, {bounds[1]:{spec}}]"


def with_interval(value: float, bounds: list[float]) -> str:
    """``0.8920 [0.8790, 0.9050]``: a score followed by its interval."""
    return f"{value:.4f} {format_interval(bounds)}"


def interval_summary(metrics: dict, intervals: dict) -> str:
    """The quality report's sentence on how sure its headline scores are."""
    settings = intervals["bootstrap"]
    scores = ", ".join(f"{title} {with_interval(metrics[key], intervals[key])}"
                       for key, title in (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("weighted_f1", "weighted-F1")))
    return (f"{settings['confidence']:.0%} bootstrap intervals ({settings['resamples']} resamples of the test examples, "
            f"seed {settings['seed']}): {scores}. Another run's scores inside these bounds are no evidence of a "
            "difference by themselves: compare two runs on the same texts with `python -m emotion_pipeline.compare A B`.")


def verdict(comparison: dict, a: str = "A", b: str = "B") -> str:
    """One line: which model is better by McNemar's exact test at 1 − confidence, or none, with p, and
    whether the macro-F1 difference's interval agrees (it may not: McNemar looks at right vs wrong
    only, macro-F1 weighs the rare classes up)."""
    alpha = 1 - comparison["bootstrap"]["confidence"]
    test, f1 = comparison["mcnemar"], comparison["macro_f1"]
    p = test["p_value"]
    if p < alpha:
        line = f"{b if test['only_b_right'] > test['only_a_right'] else a} better, p = {p:.3g}"
    else:
        line = f"no significant difference (p = {p:.3g})"
    low, high = f1["difference_interval"]
    f1_says = "excludes 0" if low > 0 or high < 0 else "contains 0"
    return f"{line}; macro-F1 {b} − {a} {f1['difference']:+.4f} {format_interval([low, high], signed=True)} {f1_says}"


def comparison_section(comparison: dict, a: str, b: str) -> list[str]:
    """Markdown lines: model B against model A on the same test examples, with the verdict."""
    settings, test = comparison["bootstrap"], comparison["mcnemar"]
    lines = [f"| score | {a} | {b} | {b} − {a} ({settings['confidence']:.0%} paired interval) |", "| --- | --- | --- | --- |"]
    lines += [f"| {title} | {s['a']:.4f} | {s['b']:.4f} | {s['difference']:+.4f} "
              f"{format_interval(s['difference_interval'], signed=True)} |"
              for title, s in (("accuracy", comparison["accuracy"]), ("macro-F1", comparison["macro_f1"]))]
    lines += ["", f"Of the {comparison['examples']} test texts, {test['only_a_right']} are right by {a} alone and "
              f"{test['only_b_right']} by {b} alone (McNemar's exact test: p = {test['p_value']:.3g}).", "",
              f"Verdict: {verdict(comparison, a, b)}."]
    return lines


def environment_lines(record: dict) -> list[str]:
    """The block as 'key: value' lines (versions one per line), for model cards, comparisons and messages."""
    lines = [f"{key}: {value}" for key, value in record.items() if key != "versions"]
    lines += [f"{name}: {version or 'not installed'}" for name, version in record.get("versions", {}).items()]
    return lines
