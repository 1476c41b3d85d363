"""The `emotion-predict` command: texts from arguments, a file or stdin; JSONL out; every bad input one paragraph.

Most cases call main() in this process on a small exported classifier (the tiny Qwen3 with a
six-class head, saved as the export stage saves it); the console script itself runs once, on stdin.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LABELS, importing_torch, interrupt_when, subprocess_env

from emotion_pipeline.predict import main


@pytest.fixture(scope="session")
def exported(tiny_classifier) -> Path:
    """A merged six-class classifier folder, like models/export (conftest's save_classifier on the tiny Qwen3)."""
    return tiny_classifier


def predict(capsys, *args: str) -> tuple[int, list[dict], str]:
    """Run the command in-process: exit code, the JSON records it printed, its stderr."""
    try:
        main([*map(str, args)])
        code = 0
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def test_texts_as_arguments_give_one_record_each_with_every_class(exported, capsys):
    code, records, _ = predict(capsys, exported, "i feel so happy today", "that noise scared me")
    assert code == 0 and [r["argument"] for r in records] == [1, 2]
    for record in records:
        assert record["label"] in LABELS and set(record["scores"]) == set(LABELS)
        assert abs(sum(record["scores"].values()) - 1) < 1e-4
        assert record["score"] == max(record["scores"].values())


def test_top_k_lists_the_best_classes_in_order(exported, capsys):
    code, records, _ = predict(capsys, exported, "i feel so happy today", "--top-k", "2")
    top = records[0]["top_k"]
    assert code == 0 and len(top) == 2 and top[0]["score"] >= top[1]["score"] and top[0]["label"] == records[0]["label"]


def test_a_text_file_with_windows_line_ends_and_blank_lines(exported, capsys, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_bytes(b"\xef\xbb\xbfi feel so happy today\r\n\r\nthat noise scared me\r\n")
    code, records, err = predict(capsys, exported, "--file", texts)
    assert code == 0 and [(r["line"], r["text"]) for r in records] == [(1, "i feel so happy today"), (3, "that noise scared me")]
    assert "skipped the empty text at line 2" in err
    # The '\r' never reaches the model: same scores as the bare text given as an argument.
    _, [bare], _ = predict(capsys, exported, "that noise scared me")
    assert records[1]["scores"] == bare["scores"]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_csv_or_jsonl_file_with_a_named_column(exported, capsys, tmp_path, suffix):
    path = tmp_path / f"reviews{suffix}"
    rows = [{"id": 7, "review": "i feel so happy today"}, {"id": 8, "review": ""}, {"id": 9, "review": "so scary"}]
    if suffix == ".csv":
        path.write_text("id,review\n" + "".join(f"{r['id']},{r['review']}\n" for r in rows))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, records, err = predict(capsys, exported, "--file", path, "--column", "review")
    assert code == 0 and [r["text"] for r in records] == ["i feel so happy today", "so scary"]
    assert f"skipped the empty text at line {3 if suffix == '.csv' else 2}" in err
    code, _, err = predict(capsys, exported, "--file", path)
    assert code == 2 and "no column 'text' (it has: id, review)" in err and "--column" in err


def test_empty_texts_are_skipped_with_a_warning_never_labelled(exported, capsys):
    code, records, err = predict(capsys, exported, "", "i feel so happy today")
    assert code == 0 and [r["argument"] for r in records] == [2]
    assert "skipped the empty text at argument 1" in err
    code, records, err = predict(capsys, exported, "", "   ")
    assert code == 2 and records == [] and "no text to classify" in err and "Traceback" not in err


def test_bad_model_folders_are_one_paragraph_and_exit_2(exported, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    adapter = tmp_path / "models" / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen3-0.6B"}))
    cut_off = tmp_path / "models" / "int8"  # an int8 folder whose model.onnx was cut off in a copy
    cut_off.mkdir()
    (cut_off / "config.json").write_text((exported / "config.json").read_text())
    (cut_off / "model.onnx").write_bytes(b"\x08\x07\x12")
    cases = {
        "models/export": [f"looked for {tmp_path / 'models/export'}"],  # missing, relative
        "models/adapter": ["holds a LoRA adapter", "models/export"],
        str(tmp_path): ["no config.json"],
        "nobody/no-such-model": ["could not load 'nobody/no-such-model'"],  # a hub id, offline
        "models/int8": ["could not load the ONNX model", "quantize stage"],
    }
    for model_dir, needles in cases.items():
        code, records, err = predict(capsys, model_dir, "i feel so happy today")
        assert code == 2 and records == [] and err.startswith("error: ") and "Traceback" not in err, (model_dir, err)
        assert all(needle in err for needle in needles), (model_dir, err)


def test_usage_says_texts_are_optional(capsys):
    with pytest.raises(SystemExit):
        main([])
    err = capsys.readouterr().err
    assert "[TEXT ...]" in err and "required: MODEL_DIR" in err and "TEXT" not in err.split("required:")[1]


def test_the_console_script_reads_stdin(exported):
    script = Path(sys.executable).with_name("emotion-predict")
    result = subprocess.run([str(script), str(exported), "--top-k", "1"], input="i feel so happy today\r\n\r\nso scary\r\n",
                            capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["line"], r["text"]) for r in records] == [(1, "i feel so happy today"), (3, "so scary")]
    assert "skipped the empty text at line 2" in result.stderr


def test_ctrl_c_while_the_console_script_starts_is_one_line_and_exit_130(exported):
    """SIGINT while emotion-predict still imports torch (its first seconds): one line, exit 130, no traceback."""
    script = Path(sys.executable).with_name("emotion-predict")
    result = interrupt_when([str(script), str(exported), "i feel so happy today"], importing_torch)
    assert result.returncode == 130 and result.stdout == "", (result.returncode, result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted (") and "Traceback" not in result.stderr, result.stderr


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"


@pytest.mark.parametrize("name, content, needle", [
    ("picture.png", PNG, "picture.png, line 1: not valid UTF-8"),
    ("latin1.txt", "so happy\ncaf\u00e9 time\n".encode("latin-1"), "latin1.txt, line 2: not valid UTF-8"),
    ("picture.csv", PNG, "picture.csv, line 1: not valid UTF-8"),
    ("broken.jsonl", b'{"text": "so happy"}\n{"text": \n', "broken.jsonl, line 2: not a JSON object"),
    ("picture.parquet", PNG, "picture.parquet: not a Parquet file"),
])
def test_undecodable_files_are_one_paragraph_naming_the_line(exported, capsys, tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content)
    code, records, err = predict(capsys, exported, "--file", path)
    assert code == 2 and records == [] and err.startswith("error: ") and needle in err and "Traceback" not in err, err


def test_jsonl_rows_without_text_are_skipped_never_labelled(exported, capsys, tmp_path):
    """A null or a missing key is no text: skipped with a warning naming its line, as an empty string is."""
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "so happy"}\n{"text": null}\n\n{"id": 4}\n{"text": 7}\n')
    code, records, err = predict(capsys, exported, "--file", path)
    assert code == 0 and [(r["line"], r["text"]) for r in records] == [(1, "so happy"), (5, "7")]
    assert "skipped the empty text at line 2" in err and "skipped the empty text at line 4" in err


def test_a_parquet_file_reads_its_column_as_emotion_batch_does(exported, capsys, tmp_path):
    import pandas as pd

    path = tmp_path / "corpus.parquet"
    pd.DataFrame({"id": [1, 2, 3], "body": ["i feel so happy today", None, "that noise scared me"]}).to_parquet(path)
    code, records, err = predict(capsys, exported, "--file", path, "--column", "body")
    assert code == 0 and [(r["line"], r["text"]) for r in records] == [(1, "i feel so happy today"), (3, "that noise scared me")]
    assert "skipped the empty text at line 2" in err


def test_undecodable_standard_input_is_one_paragraph(exported):
    script = Path(sys.executable).with_name("emotion-predict")
    result = subprocess.run([str(script), str(exported)], input=b"so happy\n" + PNG, capture_output=True,
                            env=subprocess_env(), timeout=300)
    err = result.stderr.decode()
    assert result.returncode == 2 and "standard input, line 2: not valid UTF-8" in err and "Traceback" not in err, err
    assert all(json.loads(line)["text"] == "so happy" for line in result.stdout.decode().splitlines())  # none cut off


def test_records_stream_out_while_standard_input_is_still_open(exported):
    """Output is written chunk by chunk: the first records arrive while the writer has not closed its end."""
    from emotion_pipeline.predict import CHUNK

    script = Path(sys.executable).with_name("emotion-predict")
    process = subprocess.Popen([str(script), str(exported)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=subprocess_env())
    try:
        process.stdin.write(b"i feel so happy today\n" * CHUNK)
        process.stdin.flush()
        first = json.loads(process.stdout.readline())  # stdin is still open: only streaming can answer
        assert first["line"] == 1 and first["text"] == "i feel so happy today"
        process.stdin.close()
        rest = process.stdout.read().splitlines()
        assert process.wait(300) == 0 and len(rest) == CHUNK - 1
    finally:
        process.kill()


def test_sigterm_is_one_line_and_exit_143_after_the_records_so_far(exported):
    script = Path(sys.executable).with_name("emotion-predict")
    # Unbuffered pipes: communicate() reads the file descriptor, so a buffered readline() would hide from it whatever
    # it read past the first line (on a busy machine, part of the next record), and `out` would start mid-record.
    process = subprocess.Popen([str(script), str(exported)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=subprocess_env(), bufsize=0)
    from emotion_pipeline.predict import CHUNK

    process.stdin.write(b"i feel so happy today\n" * CHUNK)
    first = process.stdout.readline()
    assert first  # the first chunk is out: it is waiting for more input
    process.terminate()
    rest, err = process.communicate(timeout=120)
    out = first + rest
    assert process.returncode == 143, err
    lines = err.decode().strip().splitlines()
    assert lines[-1] == "interrupted (SIGTERM): the records printed so far are complete." and b"Traceback" not in err
    assert all(json.loads(line)["label"] in LABELS for line in out.splitlines())


def test_a_closed_output_pipe_ends_it_quietly(exported):
    """`emotion-predict ... | head -1`: no BrokenPipeError traceback."""
    script = Path(sys.executable).with_name("emotion-predict")
    result = subprocess.run(f"'{script}' '{exported}' | head -c 10", shell=True, capture_output=True,
                            input=b"so happy\n" * 5000, env=subprocess_env(), timeout=300)
    assert result.returncode == 0 and b"Traceback" not in result.stderr and b"Error" not in result.stderr, result.stderr


def test_a_text_longer_than_the_model_reads_is_labelled_with_a_warning(exported, capsys):
    long_text = " ".join(["happy"] * 5000)
    code, records, err = predict(capsys, exported, "so happy", long_text)
    assert code == 0 and len(records) == 2
    assert "warning: the text at argument 2 is" in err and "the model reads its first 128" in err
    assert "argument 1" not in err


def test_a_missing_model_folder_says_relative_paths_start_in_the_current_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()  # so 'models/export' can only be a path, not a hub id
    code, _, err = predict(capsys, "models/export", "so happy")
    assert code == 2 and "relative paths are taken from the current folder" in err and "project root" not in err
