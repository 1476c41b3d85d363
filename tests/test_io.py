"""Atomic outputs: complete or absent, never half-written, created with the usual modes."""

from __future__ import annotations

import os
import stat

import pytest

from emotion_pipeline.io import atomic_dir, write_json, write_text


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_honour_the_umask(tmp_path, umask_022):
    """A model written here must be readable by the serving user: 0644 files, 0755 folders under umask 022."""
    write_text(tmp_path / "report.md", "hi\n")
    with atomic_dir(tmp_path / "export") as staging:
        (staging / "model.safetensors").write_bytes(b"weights")
    assert mode(tmp_path / "report.md") == 0o644
    assert mode(tmp_path / "export") == 0o755
    assert mode(tmp_path / "export" / "model.safetensors") == 0o644


def test_an_interrupted_folder_leaves_the_old_one_and_no_staging(tmp_path):
    target = tmp_path / "export"
    with atomic_dir(target) as staging:
        (staging / "v1").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as staging:
        (staging / "v2").write_text("half")
        raise KeyboardInterrupt
    assert sorted(p.name for p in target.iterdir()) == ["v1"]
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"b": 1, "a": 2})
    assert path.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    with pytest.raises(TypeError):
        write_text(path, 123)  # fails inside the write, after the temporary file exists
    assert path.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_an_atomic_file_is_complete_or_absent(tmp_path):
    """emotion-batch's output and every metrics file: flushed and moved into place, or removed on an error."""
    from emotion_pipeline.io import atomic_file

    target = tmp_path / "out.jsonl"
    target.write_bytes(b"previous\n")
    with pytest.raises(RuntimeError), atomic_file(target, binary=True) as handle:
        handle.write(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"previous\n" and [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]
    with atomic_file(target, binary=True) as handle:
        handle.write(b"new\n")
        handle.close()  # a writer handed the handle (pyarrow's) may close it itself
    assert target.read_bytes() == b"new\n" and [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def _killed_between_the_swaps_renames(target, content: str) -> None:
    """In a child process: atomic_dir(target) with new content, SIGKILLed after the old folder is moved aside and
    before the new one takes its name (the moment a kill can hit between the swap's two renames)."""
    import signal

    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery, leave with os._exit or the kill
        try:
            real_replace, calls = os.replace, []

            def replace(source, destination):
                calls.append(destination)
                if len(calls) == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
                real_replace(source, destination)

            os.replace = replace
            with atomic_dir(target) as staging:
                (staging / "version").write_text(content)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def test_a_kill_between_the_swaps_renames_loses_nothing(tmp_path):
    """kill -9 between the two renames leaves the old output swapped out; the next write of that path puts it back
    before it does anything else, even when that write fails too."""
    target = tmp_path / "export"
    with atomic_dir(target) as staging:
        (staging / "version").write_text("v1")
    _killed_between_the_swaps_renames(target, "v2")
    assert not target.exists()  # the moment the kill left: the complete old output under its swapped-out name
    with pytest.raises(RuntimeError), atomic_dir(target) as staging:
        raise RuntimeError("the next run fails as well")
    assert (target / "version").read_text() == "v1"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export"]  # no staging, no old copy


def test_a_signal_during_the_swap_waits_until_the_output_is_in_place(tmp_path):
    """Ctrl-C or SIGTERM while the folders are swapped is held until both renames are done, then raised. In a child
    process with Python's own SIGINT handler: a test runner (or a shell's `cmd &`) may have SIGINT ignored."""
    import signal

    target = tmp_path / "export"
    with atomic_dir(target) as staging:
        (staging / "version").write_text("v1")
    pid = os.fork()
    if pid == 0:
        status = 3
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            real_replace = os.replace

            def replace_and_interrupt(source, destination):
                real_replace(source, destination)
                os.kill(os.getpid(), signal.SIGINT)  # arrives between the two renames

            os.replace = replace_and_interrupt
            try:
                with atomic_dir(target) as staging:
                    (staging / "version").write_text("v2")
            except KeyboardInterrupt:
                status = 0 if (target / "version").read_text() == "v2" else 4
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status  # 3: no interrupt; 4: not v2 in place
    with atomic_dir(target) as staging:  # the next write clears what the interrupted one could not
        (staging / "version").write_text("v3")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export"]


def test_a_killed_file_write_leaves_no_temporary_after_the_next_one(tmp_path):
    target = tmp_path / "metrics.json"
    leftover = tmp_path / ".metrics.json.0badc0de.tmp"  # what a kill -9 mid-write leaves
    leftover.write_text('{"half": ')
    write_json(target, {"complete": True})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["metrics.json"]
