"""The `emotion-demo` command: a page in the browser to try the model and see where it goes wrong.

    emotion-demo                          # in a finished project: models/int8 (else models/export) and metrics/
    emotion-demo models/export --port 8080   # the fp32 export instead
    # then open http://127.0.0.1:7860/

The page (demo.html, one file: no CDN, no remote font, nothing fetched from anywhere but this service, so it
works air-gapped) has
- a box for a text: its six scores as bars, from the same POST /classify as every client (emotion-serve's
  service: emotion-predict's load_exported and predict_proba, stored class bias included);
- a file (one text per line, or .csv / .jsonl / .parquet with a "text" column): a table of every text's label and
  scores, to download as CSV (read by emotion-predict's own readers, text_input);
- the run's test results from metrics/: scores with their bootstrap intervals, per-class F1 with its interval,
  the confusion matrix (a click on a cell lists the texts behind it, from metrics/predictions.csv), the most
  confident mistakes, and the test labels the label audit flags (audit/label_issues.csv, when it was run).

Why a page of the service and not a Gradio app: the page calls the very API a user's code calls, so what it shows
is what the service answers; and it adds no dependency (Gradio pulls in ~100 packages and, by default, fetches
fonts and scripts from CDNs). It runs on emotion-serve's one-process engine with two more routes. Bad input (an
empty text, a text over --max-chars, a binary file) is one message on the page; Ctrl-C stops it with one line and
exit 130.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pandas as pd

from emotion_pipeline.commands import run_command
from emotion_pipeline.data.prepared import LABELS_FILE, read_labels
from emotion_pipeline.empty_texts import is_empty
from emotion_pipeline.errors import UserError
from emotion_pipeline.inference.predict import ONNX_FILE
from emotion_pipeline.paths import EXPORT_DIR, INT8_DIR, PREDICTIONS, PREPARED_DIR, TEST_DETAILS
from emotion_pipeline.serving.service import BadRequest, ClassifierService
from emotion_pipeline.text_input import FORMATS, check_text_file, numbered_texts

PAGE = Path(__file__).with_name("demo.html")
AUDIT_ISSUES = Path("audit/label_issues.csv")
MAX_FILE_TEXTS = 10_000
MAX_FILE_BYTES = 20 * 2**20
SHOWN_MISTAKES = 20


def main(argv: list[str] | None = None) -> None:
    from emotion_pipeline.serving.serve import parser

    command = parser("emotion-demo")
    command.description = "A page to try an exported emotion classifier and to see its test results (metrics/)."
    command.usage = ("%(prog)s [MODEL_DIR] [--project DIR] [--host H] [--port P] [--max-chars N] [--max-texts N] "
                     "[--threads N] [--max-batch-size N] [--batch-wait-timeout-s S] [--no-batching]")
    command.set_defaults(port=7860)
    model = next(action for action in command._actions if action.dest == "model_dir")
    model.nargs, model.default = "?", None
    model.help = "models/int8 or models/export (default: models/int8 of --project, else its models/export)"
    command.add_argument("--project", type=Path, default=Path("."),
                         help="the finished project whose metrics/ the page shows (default: the current folder)")
    args = command.parse_args(argv)
    run_command(lambda: run(args))


def run(args: argparse.Namespace) -> None:
    from emotion_pipeline.serving import serve

    project = args.project
    if args.model_dir is None:
        args.model_dir = str(project / (INT8_DIR if (project / INT8_DIR / ONNX_FILE).is_file() else EXPORT_DIR))
    if args.engine != "local":
        raise UserError("emotion-demo runs on the one-process engine (--engine local); serve a cluster with emotion-serve.")
    results = run_results(project)  # read before the model loads: a project without results is said at once
    pages = {("GET", "/"): page, ("GET", "/api/results"): lambda request, service: json_response(results),
             ("POST", "/api/classify-file"): classify_file}
    serve.run(args, pages, name="emotion-demo")


async def page(request, service):
    from starlette.responses import HTMLResponse

    return HTMLResponse(PAGE.read_text(encoding="utf-8"))


async def json_response(body: dict):
    from starlette.responses import JSONResponse

    return JSONResponse(body)


def run_results(project: Path) -> dict:
    """What the page shows of the run: test scores and intervals, per-class scores, every test prediction, the
    audit's test flags. A project without metrics is a UserError naming what to run."""
    details_path, predictions_path = project / TEST_DETAILS, project / PREDICTIONS
    for path in (details_path, predictions_path):
        if not path.is_file():
            raise UserError(f"{path} not found: emotion-demo shows a finished run's test results; run the pipeline "
                            f"first (`dvc repro`), or give --project the folder of one.")
    details = json.loads(details_path.read_text(encoding="utf-8"))
    table = pd.read_csv(predictions_path, keep_default_na=False)
    intervals = details.get("intervals", {})
    per_class = {name: {**scores, "f1_interval": intervals.get("per_class_f1", {}).get(name)}
                 for name, scores in details["per_class"].items()}
    mistakes = table[~table["correct"]].sort_values("confidence", ascending=False, kind="stable").head(SHOWN_MISTAKES)
    audit = None
    if (project / AUDIT_ISSUES).is_file():
        flagged = pd.read_csv(project / AUDIT_ISSUES, keep_default_na=False)
        audit = flagged[flagged["split"] == "test"][["row", "text", "given", "suggested", "quality"]].to_dict("records")
    # The classes in the model's order (data.labels), as the bars show them; metrics files keep them sorted by name.
    prepared = project / PREPARED_DIR / LABELS_FILE
    labels = read_labels(project / PREPARED_DIR) if prepared.is_file() else list(details["per_class"])
    per_class = {name: per_class[name] for name in labels if name in per_class}
    return {"labels": labels,
            "scores": {key: details[key] for key in ("accuracy", "macro_f1", "weighted_f1", "ece", "examples")},
            "intervals": {key: intervals.get(key) for key in ("accuracy", "macro_f1", "weighted_f1")},
            "per_class": per_class,
            "predictions": table[["text", "actual", "predicted", "confidence"]].to_dict("records"),
            "mistakes": mistakes[["text", "actual", "predicted", "confidence"]].to_dict("records"),
            "audit": audit}


async def classify_file(request, service: ClassifierService):
    """POST /api/classify-file?name=FILE&column=COL with the file as the body: every text's label and scores, read
    as emotion-predict --file reads it (UTF-8 checked, line numbers, empty texts skipped and named)."""
    import asyncio

    from starlette.responses import JSONResponse

    name = Path(request.query_params.get("name", "upload.txt")).name or "upload.txt"
    column = request.query_params.get("column") or "text"
    suffix = Path(name).suffix.lower() if Path(name).suffix.lower() in FORMATS else ".txt"
    body = await request.body()
    if len(body) > MAX_FILE_BYTES:
        raise BadRequest(f"{name}: {len(body):,} bytes, more than the page takes ({MAX_FILE_BYTES:,}); score large files "
                         "with emotion-predict --file or emotion-batch.", 413)
    if not body.strip():
        raise BadRequest(f"{name}: the file is empty; give one text per line (or a .csv/.jsonl/.parquet with a "
                         f"'{column}' column).")
    with tempfile.TemporaryDirectory(prefix="emotion-demo-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(body)
        try:
            check_text_file(path, column, "file")
            numbered = list(numbered_texts(path, column))
        except UserError as exc:  # the readers' own message, about the user's file, not our temporary copy
            raise BadRequest(str(exc).replace(str(path), name)) from None
    texts = [(number, text) for number, text in numbered if not is_empty(text)]
    skipped = [number for number, text in numbered if is_empty(text)]
    if not texts:
        raise BadRequest(f"{name}: no text in it (every line or '{column}' value is empty).")
    if len(texts) > MAX_FILE_TEXTS:
        raise BadRequest(f"{name}: {len(texts):,} texts, more than the page scores ({MAX_FILE_TEXTS:,}); score large "
                         "files with emotion-predict --file or emotion-batch.", 413)
    rows = []
    for start in range(0, len(texts), 256):
        chunk = texts[start:start + 256]
        fields, _ = await service.score([text for _, text in chunk])
        rows += [{"line": number, "text": text, **result} for (number, text), result in zip(chunk, fields)]
        await asyncio.sleep(0)  # let single-text requests in between the chunks
    return JSONResponse({"name": name, "rows": rows, "skipped_lines": skipped})
