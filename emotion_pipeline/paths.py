"""Where each stage reads and writes, relative to the project root; dvc.yaml declares the same paths."""

from pathlib import Path

PARAMS_FILE = Path("params.yaml")

# prepare
PREPARED_DIR = Path("data/prepared")  # {train,validation,test}.parquet + labels.json (emotion_pipeline.prepared)
DATA_REPORT = Path("metrics/data_report.json")

# train
ADAPTER_DIR = Path("models/adapter")  # LoRA weights, classification head, tokenizer
TRAINING_PARAMS_FILE = "training_params.json"  # inside ADAPTER_DIR: the params it was trained with
CHECKPOINT_DIR = Path("models/checkpoints")  # persistent: survives a crash so training can resume
TRAIN_LOG_DIR = Path("metrics/train_log")  # dvclive: loss and validation metrics per step
TRAIN_METRICS = Path("metrics/train.json")  # reproducible summary: best validation scores, steps, loss
TRAIN_RUN_INFO = Path("metrics/train_run.json")  # run facts that vary: wall time, throughput, resume

# evaluate
TEST_METRICS = Path("metrics/test.json")
CLASSIFICATION_REPORT = Path("metrics/classification_report.txt")
PREDICTIONS = Path("metrics/predictions.csv")  # one row per test text; the confusion-matrix plot
QUALITY_REPORT = Path("metrics/quality_report.md")

# export
EXPORT_DIR = Path("models/export")  # merged model, loads with transformers alone
EXPORT_CHECK = Path("metrics/export.json")  # the export-vs-adapter agreement check

# baseline
BASELINE_METRICS = Path("metrics/baseline.json")
BASELINE_QUALITY_REPORT = Path("metrics/baseline_quality_report.md")
