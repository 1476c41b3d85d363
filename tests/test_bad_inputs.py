"""Bad params, data and models stop the stage with exit 2 and one 'error:' paragraph, never a traceback.

Every case fails before any heavy work (no training step runs). Most run the stage's main()
through the same run_stage wrapper as `python -m stages <name>`, in this process; one case of
each kind (bad params, bad model) also runs as a real subprocess, as dvc runs it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import (
    BAD_PARAMS,
    SPLIT_FILES,
    copy_project,
    run_stage,
    save_classifier,
    set_params,
    subprocess_env,
    tiny_params,
    workdir,
)

from emotion_pipeline import errors


@dataclass
class Result:
    returncode: int
    stderr: str


@pytest.fixture
def stage_in(monkeypatch, capsys, caplog):
    """Run a stage through run_stage in ``folder``, as `python -m stages <name>` does; return exit code and stderr."""

    def run(folder: Path, stage: str) -> Result:
        monkeypatch.chdir(folder)
        capsys.readouterr()
        caplog.clear()
        try:
            errors.run_stage(f"stages.{stage}")
            code = 0
        except SystemExit as exit:
            code = exit.code
        return Result(code, capsys.readouterr().err + caplog.text)

    return run


def assert_user_error(result, *needles: str) -> None:
    """Exit 2 with an 'error:' message naming every needle, and no traceback."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error:" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for needle in needles:
        assert needle in result.stderr, f"{needle!r} not in:\n{result.stderr[-3000:]}"


# --------------------------------------------------------------------------- params


@pytest.mark.parametrize(("overrides", "key"), BAD_PARAMS)
def test_bad_params_stop_the_stage(tmp_path, small_data, tiny_model, stage_in, overrides, key):
    folder = workdir(tmp_path / "p", tiny_params(small_data, tiny_model))
    set_params(folder, overrides)
    assert_user_error(stage_in(folder, "prepare"), f"'{key}'", "params.yaml")
    assert not (folder / "data" / "prepared").exists()


@pytest.mark.slow
def test_bad_params_stop_the_real_stage_process(tmp_path, small_data, tiny_model):
    project = copy_project(tmp_path / "p", tiny_params(small_data, tiny_model))
    set_params(project, {"train": {"lrr": 1e-4}})
    assert_user_error(run_stage(project, "prepare"), "'train.lrr'", "params.yaml", "valid keys here")
    assert not (project / "data" / "prepared").exists()


# --------------------------------------------------------------------------- data


@pytest.fixture
def data_project(tmp_path, small_data, tiny_model) -> tuple[Path, Path]:
    """A stage folder reading a private copy of the 300-row data, which a test may break."""
    data = shutil.copytree(small_data, tmp_path / "data")
    return workdir(tmp_path / "p", tiny_params(data, tiny_model)), data


def replace_line(path: Path, number: int, new: bytes) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    lines[number - 1] = new
    path.write_bytes(b"".join(lines))


def rewrite_as(data: Path, split: str, suffix: str) -> None:
    """Replace split.txt by a file in another format whose text column is called 'sentence'."""
    rows = [line.rsplit(";", 1) for line in (data / SPLIT_FILES[split]).read_text().splitlines()]
    (data / SPLIT_FILES[split]).unlink()
    if suffix == ".csv":
        content = "sentence,label\n" + "".join(f'"{text}",{label}\n' for text, label in rows)
    else:
        content = "".join(json.dumps({"sentence": text, "label": label}) + "\n" for text, label in rows)
    (data / f"{split}{suffix}").write_text(content)


BREAKS = {
    "missing-split": (lambda d: (d / "test.txt").unlink(), ["no test split file", "test{.txt"]),
    "empty-file": (lambda d: (d / "validation.txt").write_text(""), ["validation.txt: the file is empty"]),
    "no-separator": (lambda d: replace_line(d / "train.txt", 7, b"no separator here\n"),
                     ["train.txt, line 7: no ';' separator"]),
    "unknown-label": (lambda d: replace_line(d / "train.txt", 12, b"i feel fine;happiness\n"),
                      ["train.txt, line 12: unknown label 'happiness'"]),
    "empty-text": (lambda d: replace_line(d / "test.txt", 5, b";joy\n"), ["test.txt, line 5: empty text"]),
    "non-utf8": (lambda d: replace_line(d / "validation.txt", 3, b"caf\xe9 au lait;joy\n"),
                 ["validation.txt, line 3: not valid UTF-8"]),
    "csv-no-text-column": (lambda d: rewrite_as(d, "train", ".csv"), ["train.csv: no column 'text'"]),
    "jsonl-no-text-column": (lambda d: rewrite_as(d, "train", ".jsonl"), ["train.jsonl: no column 'text'"]),
}


@pytest.mark.parametrize("case", BREAKS)
def test_bad_data_fails_and_keeps_the_previous_outputs(data_project, stage_in, case):
    project, data = data_project
    assert stage_in(project, "prepare").returncode == 0
    outputs = sorted((project / "data" / "prepared").glob("*")) + [project / "metrics" / "data_report.json"]
    before = {path: path.read_bytes() for path in outputs}
    assert len(before) == 5  # three splits, labels.json, the report

    break_data, needles = BREAKS[case]
    break_data(data)
    assert_user_error(stage_in(project, "prepare"), *needles)
    assert sorted((project / "data" / "prepared").glob("*")) + [project / "metrics" / "data_report.json"] == outputs
    assert {path: path.read_bytes() for path in outputs} == before
    assert not list((project / "data").glob(".prepared.*"))  # no staging folder left behind


def test_a_class_missing_from_a_split_is_only_a_warning(data_project, stage_in):
    project, data = data_project
    path = data / "validation.txt"
    path.write_text("".join(line for line in path.read_text().splitlines(True) if not line.endswith(";surprise\n")))
    result = stage_in(project, "prepare")
    assert result.returncode == 0
    assert "validation split has no example of: surprise" in result.stderr
    report = json.loads((project / "metrics" / "data_report.json").read_text())
    assert report["splits"]["validation"]["label_counts"]["surprise"] == 0
    assert report["warnings"] == ["validation split has no example of: surprise"]


def test_train_test_overlap_is_reported_not_fatal(data_project, stage_in):
    project, data = data_project
    train_lines = (data / "train.txt").read_text().splitlines(True)
    (data / "test.txt").write_text("".join(train_lines[:3]) + (data / "test.txt").read_text())
    result = stage_in(project, "prepare")
    assert result.returncode == 0

    texts = {split: {line.rsplit(";", 1)[0] for line in (data / name).read_text().splitlines()}
             for split, name in SPLIT_FILES.items()}
    overlap = json.loads((project / "metrics" / "data_report.json").read_text())["overlap"]
    assert overlap["train/test"] == len(texts["train"] & texts["test"]) >= 3
    assert overlap["validation/test"] == len(texts["validation"] & texts["test"])
    assert "appear in both train/test splits" in result.stderr


# --------------------------------------------------------------------------- model


@pytest.fixture(scope="session")
def three_class_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model saved as a classifier with a 3-class head, as a fine-tuned checkpoint would be."""
    # transformers' own names for a head of 3 given no names (LABEL_0..LABEL_2).
    return save_classifier(tiny_model, tmp_path_factory.mktemp("three-class") / "model", labels=[f"LABEL_{i}" for i in range(3)])


def _not_a_model(tmp_path: Path, request) -> str:
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / "README.md").write_text("weights will go here\n")
    return str(folder)


def _adapter_only(tmp_path: Path, request) -> str:
    """A folder like models/adapter: a LoRA adapter and its base model's name, no full weights."""
    folder = tmp_path / "my-adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen3-0.6B", "r": 8}))
    return str(folder)


MODELS = {
    "missing-folder": (lambda tmp_path, request: str(tmp_path / "no-such-model"), ["model.name", "does not exist"]),
    # One '/' like a hub id, but 'models/' is a folder of the project: a path, never sent to the hub.
    "missing-relative-path": (lambda tmp_path, request: "models/export",
                              ["model.name", "'models/export' does not exist", "/p/models/export", "project root"]),
    "not-a-model-folder": (_not_a_model, ["model.name", "no config.json"]),
    "adapter-only-folder": (_adapter_only, ["model.name", "holds a LoRA adapter", "'Qwen/Qwen3-0.6B'", "models/export"]),
    "hub-id-offline": (lambda tmp_path, request: "emotion-tests/never-downloaded",
                       ["model.name", "emotion-tests/never-downloaded", "hf download", "no local folder"]),
    "head-for-other-classes": (lambda tmp_path, request: str(request.getfixturevalue("three_class_model")),
                               ["model.name", "classification head for 3 classes", "data.labels lists 6"]),
}


@pytest.mark.parametrize("case", MODELS)
def test_bad_model_stops_train_before_training(tmp_path, small_data, tiny_model, request, stage_in, case):
    folder = workdir(tmp_path / "p", tiny_params(small_data, tiny_model))
    (folder / "models").mkdir()
    assert stage_in(folder, "prepare").returncode == 0
    make_name, needles = MODELS[case]
    set_params(folder, {"model": {"name": make_name(tmp_path, request)}})
    result = stage_in(folder, "train")
    assert_user_error(result, *needles)
    if case == "missing-relative-path":
        assert "hf download" not in result.stderr  # never taken for a hub id
    assert not (folder / "models" / "adapter").exists()
    assert not (folder / "metrics" / "train.json").exists()


@pytest.mark.slow
def test_bad_model_stops_the_real_train_process(tmp_path, small_data, tiny_model):
    project = copy_project(tmp_path / "p", tiny_params(small_data, tiny_model))
    run_stage(project, "prepare", check=True)
    set_params(project, {"model": {"name": "models/export"}})
    result = run_stage(project, "train")
    assert_user_error(result, "model.name", f"looked for {project.resolve() / 'models/export'}")
    assert "hf download" not in result.stderr
    assert not (project / "models" / "adapter").exists()


@pytest.mark.parametrize("argv", [[], ["trian"], ["train", "evaluate"]])
def test_python_m_stages_without_a_stage_is_a_usage_error_exit_2(argv, tmp_path):
    """As argparse does: exit 2 and one line naming the stages (and the misspelt one)."""
    result = subprocess.run([sys.executable, "-m", "stages", *argv], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                            env=subprocess_env(), timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "prepare,train,evaluate" in result.stderr
    assert ("unknown stage 'trian'" in result.stderr) == (argv == ["trian"])


@pytest.mark.parametrize("under_dvc", [False, True])
def test_a_stage_error_under_dvc_says_how_to_get_the_outputs_back(tmp_path, monkeypatch, capsys, under_dvc):
    """DVC removes a stage's outputs before it runs the command: under `dvc repro` / `dvc exp run` the paragraph
    says so and names `dvc checkout`; run alone, the outputs are still there and it says nothing of the kind."""
    (tmp_path / "failing_stage.py").write_text("from emotion_pipeline.errors import UserError\n\n\n"
                                               "def main():\n    raise UserError(\"train.lr: -1 is not > 0.\")\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    if under_dvc:
        monkeypatch.setenv("DVC_STAGE", "train")
    else:
        monkeypatch.delenv("DVC_STAGE", raising=False)
    with pytest.raises(SystemExit) as exited:
        errors.run_stage("failing_stage")
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.startswith("error: train.lr: -1 is not > 0.") and err.count("\n") == 1
    assert ("`dvc checkout` restores the last complete ones" in err) == under_dvc
