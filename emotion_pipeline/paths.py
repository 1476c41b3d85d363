"""Where each stage reads and writes, relative to the project root; dvc.yaml declares the same paths."""

from pathlib import Path

PARAMS_FILE = Path("params.yaml")

# Local inputs: folders inside the project whose contents are tracked with `dvc add`, so that a
# local data.source or model.name is a real DVC dependency (see their README.md files).
RAW_DATA_DIR = Path("data/raw")  # datasets for data.source; a dep of prepare
BASE_MODELS_DIR = Path("models/base")  # base models for model.name; a dep of train, evaluate, export
TRACKED_INPUTS = (RAW_DATA_DIR, BASE_MODELS_DIR)
# The locked runtime environment (exact versions and hashes; `bash requirements/update` writes it): a dep of every
# stage, since the versions of torch, transformers, scikit-learn... decide the last bits of every result. Dev-only
# tools are locked apart (requirements/dev.txt), so bumping them re-runs nothing.
RUNTIME_LOCK = Path("requirements/runtime.txt")

# prepare
PREPARED_DIR = Path("data/prepared")  # {train,validation,test}.parquet + labels.json (emotion_pipeline.data.prepared)
DATA_REPORT = Path("metrics/data_report.json")

# train
ADAPTER_DIR = Path("models/adapter")  # LoRA weights, classification head, tokenizer (lora.enabled false: the whole model)
TRAINING_PARAMS_FILE = "training_params.json"  # inside ADAPTER_DIR: the params it was trained with
CLASS_BIAS_FILE = "class_bias.json"  # inside ADAPTER_DIR with train.fit_class_bias: the fitted bias (if kept)
ENVIRONMENT_FILE = "environment.json"  # inside ADAPTER_DIR: the environment it was trained in (the model card shows it)
CHECKPOINT_DIR = Path("models/checkpoints")  # crash recovery; scratch, not a DVC output (dvc.yaml says why)
TRAIN_LOG_DIR = Path("metrics/train_log")  # dvclive: loss and validation metrics per step
TRAIN_METRICS = Path("metrics/train.json")  # headline for `dvc metrics show`: best validation scores, epoch
TRAIN_DETAILS = Path("metrics/train_details.json")  # the whole reproducible summary: also steps, loss, parameters
TRAIN_RUN_INFO = Path("metrics/train_run.json")  # run facts that vary: wall time, throughput, resume

# evaluate
TEST_METRICS = Path("metrics/test.json")  # headline for `dvc metrics show`: accuracy, macro/weighted F1, ECE
TEST_DETAILS = Path("metrics/test_details.json")  # every score: precision, recall, per class with support
CLASSIFICATION_REPORT = Path("metrics/classification_report.txt")
PREDICTIONS = Path("metrics/predictions.csv")  # one row per test text; the confusion-matrix plot
QUALITY_REPORT = Path("metrics/quality_report.md")
VS_BASELINE = Path("metrics/test_vs_baseline.json")  # the fine-tune against the baseline, paired on the same test texts

# export
EXPORT_DIR = Path("models/export")  # merged model, loads with transformers alone
EXPORT_CHECK = Path("metrics/export.json")  # the export-vs-adapter agreement check

# quantize
INT8_DIR = Path("models/int8")  # int8 ONNX model + config + tokenizer, runs with onnxruntime alone
INT8_METRICS = Path("metrics/int8.json")  # headline: test accuracy and macro-F1, beside test.json's fp32 ones
INT8_DETAILS = Path("metrics/int8_details.json")  # also the fp32 scores, the drop, label agreement, size, fusions

# baseline
BASELINE_METRICS = Path("metrics/baseline.json")  # same headline keys as TEST_METRICS
BASELINE_DETAILS = Path("metrics/baseline_details.json")  # same keys as TEST_DETAILS
BASELINE_CHOICE = Path("metrics/baseline_choice.json")  # the validation search: every candidate and the one chosen
BASELINE_QUALITY_REPORT = Path("metrics/baseline_quality_report.md")
BASELINE_PREDICTIONS = Path("metrics/baseline_predictions.csv")  # one row per test text, the columns of PREDICTIONS
