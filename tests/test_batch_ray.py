"""`emotion-batch`: a file scored with Ray Data gives emotion-predict's records for the same file, row for row.

Ray starts once for the module (ray_cluster); the in-process runs use it, and the console script joins
it as a second driver through RAY_ADDRESS, as it would join a cluster. The model is the tiny Qwen3
classifier (conftest's tiny_classifier). The checks of the reading and of bad input need no Ray.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

import pandas as pd  # noqa: E402
from conftest import subprocess_env  # noqa: E402

from emotion_pipeline import predict  # noqa: E402
from emotion_pipeline.serving import batch  # noqa: E402

# A BOM, Windows line ends, empty and blank lines, an old-Mac '\r' line end and no line end at the end:
# everything emotion-predict's reading of a text file takes care of.
AWKWARD = (b"\xef\xbb\xbfi feel so happy today\r\n\r\nthat noise scared me\r\n   \r\nold\rmac line\n"
           b"i am so angry at them\r\n\n")


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def predicted(capsys, *args) -> tuple[list[dict], str]:
    """emotion-predict's records and stderr, run in this process."""
    predict.main([*map(str, args)])
    out, err = capsys.readouterr()
    return [json.loads(line) for line in out.splitlines()], err


def batched(capsys, *args) -> tuple[int, str]:
    try:
        batch.main([*map(str, args)])
        code = 0
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err


def read_output(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return pd.read_parquet(path).to_dict("records")


def awkward_file(folder: Path, data: Path, rows: int = 300) -> Path:
    """AWKWARD, then ``rows`` tweets of the test split with an empty line every 50 lines."""
    tweets = [line.rsplit(";", 1)[0] for line in (data / "test.txt").read_text().splitlines()[:rows]]
    body = "".join(f"{text}\r\n" + ("\r\n" if i % 50 == 0 else "") for i, text in enumerate(tweets))
    path = folder / "texts.txt"
    path.write_bytes(AWKWARD + body.encode("utf-8"))
    return path


def test_text_file_pieces_read_like_emotion_predict(tmp_path, small_data):
    """Cut into byte ranges of any size, a text file gives emotion-predict's lines, each exactly once."""
    path = awkward_file(tmp_path, small_data, rows=100)
    expected = [line for _, line in predict.read_texts(argparse.Namespace(texts=[], file=path, column="text"))]
    for piece_bytes in (1, 7, 64, 1000, 10**6):
        bounds = batch.piece_bounds(path, piece_bytes)
        assert bounds[0][0] == 0 and bounds[-1][1] == path.stat().st_size
        assert [line for start, stop in bounds for line in batch.piece_lines(path, start, stop)] == expected, piece_bytes


def test_bad_input_is_one_paragraph_before_ray_starts(tiny_classifier, tmp_path, capsys):
    reviews = tmp_path / "reviews.csv"
    reviews.write_text("id,review\n1,so happy\n")
    cases = {
        ("--input", tmp_path / "missing.txt", "--output", tmp_path / "o.jsonl"): "does not exist",
        ("--input", reviews, "--output", tmp_path / "o.jsonl"): "no column 'text' (it has: id, review)",
        ("--input", reviews, "--column", "review", "--output", tmp_path / "o.csv"): "must end in .parquet or .jsonl",
        ("--input", reviews, "--column", "review", "--output", tmp_path / "o.jsonl", "--actors", "0"): "--actors",
        ("--input", reviews, "--column", "review", "--output", tmp_path / "o.jsonl", "--top-k", "7"): "6 classes",
    }
    for args, needle in cases.items():
        code, err = batched(capsys, tiny_classifier, *args)
        assert code == 2 and err.startswith("error: ") and needle in err and "Traceback" not in err, (args, err)
    code, err = batched(capsys, tmp_path / "no-model", "--input", reviews, "--column", "review", "--output", tmp_path / "o.jsonl")
    assert code == 2 and "model folder" in err and "does not exist" in err
    assert not list(tmp_path.glob("o.*"))


@pytest.mark.slow
def test_a_text_file_with_bom_crlf_and_empty_lines_gives_emotion_predicts_records(ray_cluster, tiny_classifier, small_data,
                                                                                 tmp_path, capsys):
    """Into Parquet (the next test writes JSON Lines)."""
    path = awkward_file(tmp_path, small_data)
    expected, predict_err = predicted(capsys, tiny_classifier, "--file", path)
    output = tmp_path / "labelled.parquet"
    # Small pieces and batches: the rows come back from many read tasks and batches, still in file order.
    code, err = batched(capsys, tiny_classifier, "--input", path, "--output", output, "--actors", "2", "--batch-size", "16",
                        "--piece-bytes", "2000")
    assert code == 0, err
    records = read_output(output)
    assert [r["line"] for r in records] == [r["line"] for r in expected] and records[0]["text"] == "i feel so happy today"
    for got, want in zip(records, expected):
        assert (got["text"], got["label"]) == (want["text"], want["label"]) and set(got) == set(want)
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == [line for line in predict_err.splitlines() if line.startswith("warning:")]
    assert "skipped the empty text at line 2" in err and "skipped the empty text at line 4" in err


@pytest.mark.slow
def test_a_csv_column_with_top_k_and_a_file_of_only_empty_texts(ray_cluster, tiny_classifier, tmp_path, capsys):
    path = tmp_path / "reviews.csv"
    path.write_text('id,review\n1,i feel so happy today\n2,""\n3,"so scary, really"\n4,007\n')
    expected, _ = predicted(capsys, tiny_classifier, "--file", path, "--column", "review", "--top-k", "2")
    output = tmp_path / "labelled.jsonl"
    code, err = batched(capsys, tiny_classifier, "--input", path, "--column", "review", "--top-k", "2", "--output", output)
    assert code == 0, err
    records = read_output(output)
    assert [(r["line"], r["text"]) for r in records] == [(2, "i feel so happy today"), (4, "so scary, really"), (5, "007")]
    assert [[t["label"] for t in r["top_k"]] for r in records] == [[t["label"] for t in r["top_k"]] for r in expected]
    assert "skipped the empty text at line 3" in err

    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n")
    code, err = batched(capsys, tiny_classifier, "--input", empty, "--output", tmp_path / "none.jsonl")
    assert code == 2 and "no text to classify" in err and not (tmp_path / "none.jsonl").exists()
    assert not list(tmp_path.glob(".none.jsonl.*"))  # nor a half-written one


@pytest.mark.slow
def test_the_console_script_joins_a_running_cluster_through_ray_address(ray_cluster, tiny_classifier, tmp_path, capsys):
    """Parquet in, Parquet out, from a separate process connected to the module's Ray as to a cluster."""
    source = tmp_path / "corpus.parquet"
    pd.DataFrame({"id": [1, 2, 3], "body": ["i feel so happy today", None, "that noise scared me"]}).to_parquet(source)
    output = tmp_path / "labelled.parquet"
    script = Path(sys.executable).with_name("emotion-batch")
    result = subprocess.run([str(script), str(tiny_classifier), "--input", str(source), "--column", "body", "--output",
                             str(output), "--actors", "1"], capture_output=True, text=True, timeout=300,
                            env={**subprocess_env(), "RAY_ADDRESS": ray_cluster})
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_output(output)
    assert [(r["line"], r["text"]) for r in records] == [(1, "i feel so happy today"), (3, "that noise scared me")]
    assert "skipped the empty text at line 2" in result.stderr
    expected, _ = predicted(capsys, tiny_classifier, "i feel so happy today", "that noise scared me")
    for got, want in zip(records, expected, strict=True):
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)
