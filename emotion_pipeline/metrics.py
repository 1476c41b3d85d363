"""Classification metrics shared by evaluate and baseline, so both write exactly the same keys.

scikit-learn is imported inside the functions that compute scores, not here: the stages that only format
scores (export's model card, a disabled quantize stage) import this module too, and sklearn.metrics costs
about a second of every such process.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int) -> float:
    """Unweighted mean of the F1 of every class id 0..num_labels-1 (a class never predicted nor present
    scores 0): the project's model-selection score (best epoch, baseline choice, class bias)."""
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, labels=list(range(num_labels)), average="macro", zero_division=0))


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(y_true, y_pred))


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, labels: list[str], calibration_bins: int = 10) -> dict:
    """Accuracy, macro/weighted precision/recall/F1, per-class scores and calibration error.

    Values are rounded to 6 decimals: enough for any comparison, and it keeps the JSON
    identical across runs that differ only in the last float bits of a sum.
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    y_pred = probs.argmax(axis=1)
    class_ids = list(range(len(labels)))
    result: dict = {"accuracy": accuracy_score(y_true, y_pred), "examples": int(len(y_true))}
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=class_ids, average=average, zero_division=0
        )
        result.update({f"{average}_precision": precision, f"{average}_recall": recall, f"{average}_f1": f1})
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=class_ids, average=None, zero_division=0
    )
    result["per_class"] = {
        name: {"precision": precision[i], "recall": recall[i], "f1": f1[i], "support": int(support[i])}
        for i, name in enumerate(labels)
    }
    result["ece"] = expected_calibration_error(y_true, probs, calibration_bins)
    return _rounded(result)


HEADLINE = ("accuracy", "macro_f1", "weighted_f1", "ece")


def headline(metrics: dict) -> dict:
    """The few scores `dvc metrics show` and `dvc exp show` print; the rest stays in the details file."""
    return {key: metrics[key] for key in HEADLINE}


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """Weighted mean |accuracy - confidence| over equal-width confidence bins (Guo et al., 2017)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    # Bin i holds confidences in (i/bins, (i+1)/bins]; the clip puts an exact 0 into the first bin.
    bin_ids = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = bin_ids == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def report_text(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> str:
    from sklearn.metrics import classification_report

    return classification_report(y_true, y_pred, labels=list(range(len(labels))), target_names=labels,
                                 digits=4, zero_division=0)


def confusion(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> pd.DataFrame:
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(y_true, y_pred, labels=list(range(len(labels))))
    return pd.DataFrame(matrix, index=pd.Index(labels, name="true"), columns=pd.Index(labels, name="predicted"))


def predictions_table(texts: list[str], y_true: np.ndarray, probs: np.ndarray, labels: list[str]) -> pd.DataFrame:
    """One row per example: the table behind the confusion plot and error analysis."""
    y_pred = probs.argmax(axis=1)
    return pd.DataFrame({
        "text": texts,
        "actual": [labels[i] for i in y_true],
        "predicted": [labels[i] for i in y_pred],
        "confidence": np.round(probs.max(axis=1), 6),
        "correct": y_true == y_pred,
    })


def quality_report(metrics: dict, table: pd.DataFrame, labels: list[str], top_mistakes: int, title: str,
                   sections: Sequence[str] = ()) -> str:
    """Markdown an engineer reads to decide what to try next.

    With ``metrics["intervals"]`` (emotion_pipeline.uncertainty.score_intervals) every score is shown with
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
        text = row.text.replace("|", "\\|")
        lines.append(f"| {row.confidence:.4f} | {row.actual} | {row.predicted} | {text} |")
    return "\n".join(lines) + "\n"


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


def _rounded(value):
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, (float, np.floating)):
        return round(float(value), 6)
    return value
