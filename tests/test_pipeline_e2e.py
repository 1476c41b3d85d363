"""End to end: the real `dvc repro` on a tiny Qwen3 and 300 rows of the real data, then the
experiment workflow a user runs: no-op repro, `dvc exp run -S`, `dvc metrics show/diff`, plots.

The first repro is the session's shared finished project (conftest.finished_run), only read here;
the workflow after it changes a project, so it runs on a private copy of that finished project.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import LABELS, FinishedRun, copy_finished, run, stages_run, subprocess_env
from huggingface_hub import ModelCard
from transformers import pipeline

pytestmark = pytest.mark.slow

HEADLINE_KEYS = {"accuracy", "macro_f1", "weighted_f1", "ece"}
METRIC_KEYS = HEADLINE_KEYS | {"examples", "macro_precision", "macro_recall", "weighted_precision", "weighted_recall",
                               "per_class", "intervals", "environment"}


def declared_outputs(project: Path) -> list[Path]:
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    outs = [next(iter(out)) if isinstance(out, dict) else out for stage in stages.values() for out in stage["outs"]]
    return [project / out for out in outs]


def check_metrics(metrics: dict, examples: int) -> None:
    assert set(metrics) == METRIC_KEYS
    assert metrics["examples"] == examples
    for key in METRIC_KEYS - {"examples", "per_class", "intervals", "environment"}:
        assert 0.0 <= metrics[key] <= 1.0, key
    intervals = metrics["intervals"]  # each bootstrap interval holds its point estimate
    for key in ("accuracy", "macro_f1", "weighted_f1"):
        assert 0.0 <= intervals[key][0] <= metrics[key] <= intervals[key][1] <= 1.0, (key, intervals[key])
    assert sorted(intervals["per_class_f1"]) == sorted(LABELS)
    for label, (low, high) in intervals["per_class_f1"].items():  # a class of few examples can skew: bounds only
        assert 0.0 <= low <= high <= 1.0, (label, low, high)
    assert sorted(metrics["per_class"]) == sorted(LABELS)
    assert sum(scores["support"] for scores in metrics["per_class"].values()) == examples
    for scores in metrics["per_class"].values():
        assert set(scores) == {"precision", "recall", "f1", "support"}
        assert all(0.0 <= scores[key] <= 1.0 for key in ("precision", "recall", "f1"))


EXPORT_CHECK = """
import json, sys
sys.modules["peft"] = None  # the export must load and predict without peft
from transformers import AutoModelForSequenceClassification, AutoTokenizer
import torch
tokenizer = AutoTokenizer.from_pretrained("models/export")
model = AutoModelForSequenceClassification.from_pretrained("models/export").eval()
texts = json.loads(sys.stdin.read())
with torch.inference_mode():
    logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
print(json.dumps([model.config.id2label[i] for i in logits.argmax(-1).tolist()]))
"""


INT8_CHECK = """
import json, sys
from emotion_pipeline.inference.predict import OnnxClassifier, load_classifier, load_exported
assert isinstance(load_exported("models/int8")[0], OnnxClassifier)
classify = load_classifier("models/int8")
print(json.dumps([result["label"] for result in classify(json.loads(sys.stdin.read()))]))
"""


def adapter_labels(project: Path, texts: list[str]) -> list[str]:
    """Labels predicted by the un-merged PEFT model (base + adapter), in a separate process."""
    code = (
        "import json, sys\nimport torch\n"
        "from emotion_pipeline.config import load_params\n"
        "from emotion_pipeline.inference.adapter import load_adapter_model\n"
        "from emotion_pipeline.paths import ADAPTER_DIR\n"
        "from emotion_pipeline.inference.predict import predict_proba\n"
        "model, tokenizer = load_adapter_model(load_params().model, ADAPTER_DIR, torch.device(\"cpu\"))\n"
        "probs = predict_proba(model, tokenizer, json.loads(sys.stdin.read()))\n"
        "print(json.dumps([model.config.id2label[int(i)] for i in probs.argmax(1)]))\n"
    )
    return json.loads(run_with_input([sys.executable, "-c", code], project, json.dumps(texts)).splitlines()[-1])


def run_with_input(args: list[str], cwd: Path, stdin: str) -> str:
    result = subprocess.run(args, cwd=cwd, input=stdin, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def test_pipeline_end_to_end(finished_run: FinishedRun) -> None:
    # 1. The whole DAG runs and writes every declared output.
    project, first = finished_run.path, finished_run.repro
    assert stages_run(first.stdout) == {"prepare", "train", "evaluate", "export", "quantize", "baseline"}
    for output in declared_outputs(project):
        assert output.exists(), f"declared output missing: {output}"

    # 2. Metrics: same keys for the fine-tuned model and the baseline, values in range; the
    # top-level metric files hold the headline of the details files.
    test_metrics = json.loads((project / "metrics/test_details.json").read_text())
    check_metrics(test_metrics, examples=300)
    baseline_metrics = json.loads((project / "metrics/baseline_details.json").read_text())
    check_metrics(baseline_metrics, examples=300)
    for name, details in (("test", test_metrics), ("baseline", baseline_metrics)):
        assert json.loads((project / f"metrics/{name}.json").read_text()) == {key: details[key] for key in HEADLINE_KEYS}
    # The baseline was chosen on validation: the best of its whole search space, recorded.
    choice = json.loads((project / "metrics/baseline_choice.json").read_text())
    assert len(choice["candidates"]) == 2 * 4 * 2 * 2
    assert choice["validation_macro_f1"] == max(c["validation_macro_f1"] for c in choice["candidates"])
    assert set(choice["chosen"]) == {"ngram_max", "c", "class_weight", "sublinear_tf"}
    # The baseline is scored by the same code as evaluate: identical keys, down to each class.
    assert baseline_metrics.keys() == test_metrics.keys()
    assert {name: scores.keys() for name, scores in baseline_metrics["per_class"].items()} == \
        {name: scores.keys() for name, scores in test_metrics["per_class"].items()}
    train_summary = json.loads((project / "metrics/train_details.json").read_text())
    assert 0.0 <= train_summary["val_macro_f1"] <= 1.0
    assert json.loads((project / "metrics/train.json").read_text()) == {
        key: train_summary[key] for key in ("val_macro_f1", "val_accuracy", "best_epoch")}
    assert train_summary["steps"] == 2 * math.ceil(300 / 8)  # 2 epochs at batch 8
    assert 0 < train_summary["trainable_params"] < train_summary["total_params"]
    report = json.loads((project / "metrics/data_report.json").read_text())
    assert {split: info["rows"] for split, info in report["splits"].items()} == {"train": 300, "validation": 300, "test": 300}
    assert set(report["source"]) == {"data.source", "data.revision"} and report["source"]["data.revision"] is None
    predictions = (project / "metrics/predictions.csv").read_text().splitlines()
    probabilities = ",".join(f"prob_{name}" for name in LABELS)  # every class's, for ensembles
    assert predictions[0] == f"text,actual,predicted,confidence,correct,{probabilities}" and len(predictions) == 301
    quality_report = (project / "metrics/quality_report.md").read_text()
    assert "most confident mistakes" in quality_report and "## Label audit of the test split" in quality_report
    assert (project / "metrics/train_log/plots/metrics/train/loss.tsv").is_file()
    assert (project / "metrics/train_log/plots/metrics/eval/macro_f1.tsv").is_file()

    # 3. The export is a plain transformers model (no peft) that predicts like the adapter.
    config = json.loads((project / "models/export/config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(LABELS)}
    assert config["architectures"] == ["Qwen3ForSequenceClassification"]
    assert config["pad_token_id"] is not None
    assert (project / "models/export/model.safetensors").is_file()
    card = ModelCard.load(project / "models/export/README.md")
    assert f"{test_metrics['macro_f1']:.4f}" in card.text and 'pipeline("text-classification"' in card.text
    assert card.data.pipeline_tag == "text-classification" and card.data.datasets == ["dair-ai/emotion"]
    scores = {(result.metric_type, result.metric_config): result.metric_value for result in card.data.eval_results}
    assert scores[("accuracy", None)] == test_metrics["accuracy"] and scores[("f1", "macro")] == test_metrics["macro_f1"]
    # The tiny base is a local folder with no hub origin: named nowhere on the card, its path neither.
    assert card.data.base_model is None and str(Path(yaml.safe_load((project / "params.yaml").read_text())["model"]["name"])) not in card.content
    classify = pipeline("text-classification", model=str(project / "models/export"))
    assert all(result["label"] in LABELS for result in classify(["i feel so happy today", "that noise scared me"]))
    texts = pd.read_csv(project / "metrics/predictions.csv")["text"].head(40).tolist()
    exported = json.loads(run_with_input([sys.executable, "-c", EXPORT_CHECK], project, json.dumps(texts)).splitlines()[-1])
    assert exported == adapter_labels(project, texts)

    # 3b. The int8 model: scored on the test split beside fp32, loadable by the predict CLI and
    # load_classifier with onnxruntime (no torch model involved), labels as the export's.
    int8 = json.loads((project / "metrics/int8_details.json").read_text())
    assert json.loads((project / "metrics/int8.json").read_text()) == {key: int8[key] for key in ("accuracy", "macro_f1")}
    assert int8["fp32_macro_f1"] == test_metrics["macro_f1"] and int8["fusions"]
    assert int8["macro_f1_drop"] == round(test_metrics["macro_f1"] - int8["macro_f1"], 6) <= 0.005
    assert 0.9 <= int8["agreement_with_fp32"] <= 1.0 and 0 < int8["size_mb"]
    assert (project / "models/int8/model.onnx").is_file() and "int8" in (project / "models/int8/README.md").read_text()
    int8_labels = json.loads(run_with_input([sys.executable, "-c", INT8_CHECK], project, json.dumps(texts)).splitlines()[-1])
    assert sum(a == b for a, b in zip(int8_labels, exported)) >= 0.9 * len(texts)
    cli = run_with_input([sys.executable, "-m", "emotion_pipeline.predict", "models/int8", "--top-k", "2"], project,
                         "i feel so happy today\n")
    assert json.loads(cli)["top_k"][0]["label"] in LABELS

    # 4. Nothing changed: a second repro runs no stage.
    second = run(["dvc", "repro"], project)
    assert stages_run(second.stdout) == set(), second.stdout


def test_experiment_workflow_after_the_first_run(finished_project: Path, tmp_path: Path) -> None:
    project = copy_finished(finished_project, tmp_path / "project")

    # 4b. An edit to a raw-format reader that leaves the prepared data as it was re-runs prepare
    # only: train, evaluate, export and baseline see unchanged inputs and stay cached.
    reader = project / "emotion_pipeline" / "data" / "raw.py"
    reader.write_text(reader.read_text() + "\n# An edit that does not change what the readers return.\n")
    edited = run(["dvc", "repro"], project)
    assert stages_run(edited.stdout) == {"prepare"}, edited.stdout
    run(["git", "add", "dvc.lock", "emotion_pipeline/data/raw.py"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "baseline run"], project)

    # 5. A train param re-runs train, evaluate and export; prepare and baseline stay cached.
    experiment = run(["dvc", "exp", "run", "-S", "train.lr=0.001"], project)
    assert stages_run(experiment.stdout) == {"train", "evaluate", "export", "quantize"}, experiment.stdout

    shown = run(["dvc", "metrics", "show"], project).stdout
    assert "metrics/test.json" in shown and "macro_f1" in shown and "metrics/baseline.json" in shown
    assert "metrics/int8.json" in shown
    assert "per_class" not in shown
    widest = max(len(line) for line in shown.splitlines())
    assert widest <= 120, f"dvc metrics show is {widest} columns wide:\n{shown}"
    diff = run(["dvc", "metrics", "diff"], project).stdout
    assert "metrics/train.json" in diff and "val_macro_f1" in diff, diff
    table = run(["dvc", "exp", "show", "--csv"], project).stdout
    assert "train.lr" in table and "0.001" in table and "macro_f1" in table

    # 6. An evaluate-only key re-runs nothing upstream of evaluate.
    evaluate_only = run(["dvc", "exp", "run", "-S", "evaluate.batch_size=7"], project)
    assert "evaluate" in stages_run(evaluate_only.stdout) <= {"evaluate", "export", "quantize"}, evaluate_only.stdout

    # 7. Plots render: training curves and the confusion matrix.
    plots = json.loads(run(["dvc", "plots", "show", "--json"], project).stdout)["data"]
    assert {"metrics/train_log/plots/metrics/train/loss.tsv", "metrics/train_log/plots/metrics/eval/macro_f1.tsv",
            "Test confusion matrix"} <= set(plots)
