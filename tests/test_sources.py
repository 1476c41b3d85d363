"""The one "local folder or hub id" rule, including DVC's temporary experiment copies (--temp, --queue)."""

from __future__ import annotations

from pathlib import Path

import pytest

from emotion_pipeline.errors import UserError
from emotion_pipeline.sources import original_project, resolve_source


def resolve(value: str):
    return resolve_source(value, "data.source", "a folder or a hub id")


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A project beside a shared data folder: <tmp>/project and <tmp>/shared/emotion."""
    (tmp_path / "shared" / "emotion").mkdir(parents=True)
    project = tmp_path / "project"
    (project / "data" / "raw" / "mine").mkdir(parents=True)
    (project / "models").mkdir()
    monkeypatch.chdir(project)
    return project


def test_hub_ids_stay_hub_ids(project):
    assert resolve("dair-ai/emotion") == "dair-ai/emotion"
    assert resolve("emotion") == "emotion"


def test_existing_folders_are_absolute_paths(project):
    assert resolve("data/raw/mine") == project / "data/raw/mine"
    assert resolve("../shared/emotion") == project.parent / "shared/emotion"
    assert resolve(str(project / "data/raw/mine")) == project / "data/raw/mine"


@pytest.mark.parametrize("value", ["models/export", "./nowhere", "../nowhere", "a/b/c", "/abs/nowhere"])
def test_a_missing_path_is_never_taken_for_a_hub_id(project, value):
    with pytest.raises(UserError) as err:
        resolve(value)
    message = str(err.value)
    assert f"data.source: folder '{value}' does not exist" in message
    assert str(Path(value) if value.startswith("/") else project / value) in message  # the absolute path tried


def test_an_experiment_copy_finds_outside_paths_in_the_original_project(project, monkeypatch):
    copy = project / ".dvc" / "tmp" / "exps" / "tmpabc123"
    (copy / "data" / "raw" / "mine").mkdir(parents=True)
    monkeypatch.chdir(copy)
    assert original_project(copy) == project
    # Inside the project: DVC checked the tracked folder out into the copy; the copy's is used.
    assert resolve("data/raw/mine") == copy / "data/raw/mine"
    # Outside the project: taken from where the copy was made, not from .dvc/tmp/exps.
    assert resolve("../shared/emotion") == project.parent / "shared/emotion"
    with pytest.raises(UserError) as err:
        resolve("../missing")
    assert f"{copy / '../missing'} nor {project / '../missing'}" in str(err.value)


def test_an_ordinary_folder_is_not_an_experiment_copy(project):
    assert original_project(project) is None
