"""Interrupted writes and corrupt checkpoints.

A writer killed half-way (SIGKILL, in a subprocess paused by a hook in its own script) leaves the
previous artifact loadable and its half-written files are never picked up; a pair caught between
its two moves is refused with one sentence. A corrupt latest checkpoint makes resume fall back to
the one before it with a warning, or stop with one sentence when none is whole.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from promptkd_ray.core.classvectors import ClassVectors, load_class_vectors, save_class_vectors
from promptkd_ray.errors import CheckpointCorruptError, CheckpointMismatchError, ClassVectorsError
from promptkd_ray.storage import Storage

# Runs in a subprocess: writes class vectors v2 over v1 at OUT, and at the chosen point of the write
# (after writing both temporary files, or between the two moves) signals READY and sleeps until killed.
WRITER = textwrap.dedent("""
    import os, sys, time, torch
    from promptkd_ray import storage
    from promptkd_ray.core.classvectors import ClassVectors, save_class_vectors

    out, ready, pause = sys.argv[1], sys.argv[2], sys.argv[3]

    def stop_here():
        open(ready, "w").close()
        time.sleep(600)

    if pause == "writing":  # both files are in their temporary files (the second just flushed), none moved
        real_fsync, calls = os.fsync, []
        os.fsync = lambda fd: (real_fsync(fd), calls.append(fd), len(calls) == 2 and stop_here())
    else:  # "between moves": the tensors are in place, the sidecar not yet
        real_move = storage.Storage._move
        def move_then_stop(self, temp, rel):
            real_move(self, temp, rel)
            stop_here()
        storage.Storage._move = move_then_stop
    vectors = torch.nn.functional.normalize(torch.randn(300, 64, generator=torch.Generator().manual_seed(2)), dim=-1)
    save_class_vectors(ClassVectors(vectors, tuple(f"new{i}" for i in range(300)), "t", ("single",), 100.0), out)
""")


def class_vectors(prefix: str, n: int = 300) -> ClassVectors:
    vectors = torch.nn.functional.normalize(
        torch.randn(n, 64, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    return ClassVectors(vectors, tuple(f"{prefix}{i}" for i in range(n)), "t", ("single",), 100.0)


def kill_writer_at(pause: str, out: Path, tmp_path: Path) -> None:
    ready = tmp_path / "READY"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(ready), pause], env=env)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, "the writer ended before its pause point"
            assert time.monotonic() < deadline, "the writer never reached its pause point"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_a_writer_killed_while_writing_leaves_the_previous_version_loadable(tmp_path):
    out = tmp_path / "cv"
    old = class_vectors("old")
    save_class_vectors(old, out)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    kill_writer_at("writing", out, tmp_path)
    leftovers = sorted(p.name.split(".")[1:3] for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
    assert leftovers == [["cv", "json"], ["cv", "safetensors"]]  # the interrupted write's files, hidden
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name in before} == before
    loaded = load_class_vectors(out)
    assert loaded.classnames == old.classnames and torch.equal(loaded.vectors, old.vectors)
    assert Storage(tmp_path).list_dir()[1] == (
        "READY",
        "cv.json",
        "cv.safetensors",
        "writer.py",
    )  # leftovers unlisted


def test_a_pair_caught_between_its_two_moves_is_refused_in_one_sentence(tmp_path):
    out = tmp_path / "cv"
    save_class_vectors(class_vectors("old"), out)
    kill_writer_at("between moves", out, tmp_path)
    with pytest.raises(ClassVectorsError) as caught:
        load_class_vectors(out)
    message = str(caught.value)
    assert "do not match the sha256 in cv.json" in message and "not completely written" in message
    assert "\n" not in message and message.endswith(".")


def test_a_failed_write_removes_its_temporary_files_and_keeps_the_old_ones(tmp_path, monkeypatch):
    store = Storage(tmp_path)
    store.write_files({"a.bin": b"old a", "b.json": b"old b"})

    def broken_move(self, temp, rel):
        raise OSError("disk full")

    monkeypatch.setattr(Storage, "_move", broken_move)
    with pytest.raises(OSError, match="disk full"):
        store.write_files({"a.bin": b"new a", "b.json": b"new b"})
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "b.json"]
    assert store.read_bytes("a.bin") == b"old a" and store.read_bytes("b.json") == b"old b"


def test_a_student_artifact_whose_pair_does_not_match_is_refused(tmp_path):
    from promptkd_ray.core.artifacts import ArtifactError, read_tensors, write_artifact

    write_artifact({"w": torch.zeros(3)}, {"kind": "student"}, str(tmp_path / "a"))
    write_artifact({"w": torch.ones(3)}, {"kind": "student"}, str(tmp_path / "b"))
    (tmp_path / "a.safetensors").write_bytes(
        (tmp_path / "b.safetensors").read_bytes()
    )  # b's tensors, a's sidecar
    with pytest.raises(
        ArtifactError, match=r"^Student tensors .*a\.safetensors do not match the sha256 in a\.json"
    ):
        read_tensors(str(tmp_path / "a"), "student")
    assert torch.equal(read_tensors(str(tmp_path / "b"), "student")["w"], torch.ones(3))


# ----------------------------------------------------------------------------- checkpoints
FINGERPRINT = {"job": "x"}


def write_run(root: Path, epochs: int = 3) -> list[Path]:
    """checkpoint_epoch_000 … of a run, each with tensors = epoch."""
    from promptkd_ray.orchestration.checkpoints import CHECKPOINT_PREFIX, new_progress, save_checkpoint

    folders = []
    for epoch in range(epochs):
        folder = root / f"{CHECKPOINT_PREFIX}{epoch:03d}"
        folder.mkdir(parents=True)
        progress = dict(new_progress(FINGERPRINT), epoch=epoch)
        save_checkpoint(
            folder, {"w": torch.full((4,), float(epoch))}, {"step": torch.tensor(epoch)}, progress
        )
        folders.append(folder)
    return folders


def newest_first(folders):
    return [(f.name, lambda f=f: nullcontext(str(f))) for f in reversed(folders)]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage", ["truncated tensors", "flipped optimiser byte", "missing progress", "garbled manifest"]
)
def test_resume_falls_back_from_a_corrupt_latest_checkpoint_with_a_warning(damage, tmp_path, caplog):
    from promptkd_ray.orchestration.checkpoints import latest_progress, load_newest_good

    folders = write_run(tmp_path)
    latest = folders[-1]
    {
        "truncated tensors": lambda: truncate(latest / "trainable.safetensors"),
        "flipped optimiser byte": lambda: flip_a_byte(latest / "train_state.pt"),
        "missing progress": lambda: (latest / "progress.json").unlink(),
        "garbled manifest": lambda: (latest / "manifest.json").write_text("{not json"),
    }[damage]()
    with caplog.at_level(logging.WARNING, logger="promptkd_ray.orchestration.checkpoints"):
        tensors, state, progress, name = load_newest_good(newest_first(folders), FINGERPRINT)
    assert name == folders[1].name and progress["epoch"] == 1
    assert torch.equal(tensors["w"], torch.full((4,), 1.0)) and int(state["step"]) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(latest.name in w and ("corrupt" in w or "incomplete" in w) for w in warnings), warnings
    assert latest_progress(Storage(tmp_path))["epoch"] == 1


def test_resume_stops_with_one_sentence_when_every_checkpoint_is_corrupt(tmp_path):
    from promptkd_ray.orchestration.checkpoints import load_newest_good

    folders = write_run(tmp_path, epochs=2)
    for folder in folders:
        truncate(folder / "trainable.safetensors")
    with pytest.raises(CheckpointCorruptError) as caught:
        load_newest_good(newest_first(folders), FINGERPRINT)
    message = str(caught.value)
    assert (
        message.startswith("Every checkpoint of this run is corrupt or incomplete (") and "\n" not in message
    )
    assert all(f.name in message for f in folders)


def test_a_checkpoint_of_another_job_is_refused_not_skipped(tmp_path):
    from promptkd_ray.orchestration.checkpoints import load_newest_good

    folders = write_run(tmp_path, epochs=2)
    with pytest.raises(CheckpointMismatchError, match="was made with job='x', but the job now has 'y'"):
        load_newest_good(newest_first(folders), {"job": "y"})


def test_restore_in_a_worker_falls_back_to_the_checkpoint_before_rays(tmp_path, monkeypatch, caplog):
    """`restore` takes Ray Train's latest checkpoint and looks beside it when that one is corrupt."""
    import ray.train

    from promptkd_ray.orchestration import checkpoints

    folders = write_run(tmp_path / "run")
    truncate(folders[-1] / "train_state.pt")
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: ray.train.Checkpoint(path=str(folders[-1])))
    with caplog.at_level(logging.WARNING, logger="promptkd_ray.orchestration.checkpoints"):
        tensors, state, progress = checkpoints.restore(FINGERPRINT, rank=0)
    assert progress["epoch"] == 1 and progress["resumes"] == [2] and int(state["step"]) == 1
    assert any(
        "checkpoint_epoch_002" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
    )


def test_a_checkpoint_written_before_manifests_still_loads(tmp_path):
    from promptkd_ray.orchestration.checkpoints import load_checkpoint

    folder = write_run(tmp_path, epochs=1)[0]
    (folder / "manifest.json").unlink()
    tensors, _, progress = load_checkpoint(folder, FINGERPRINT)
    assert progress["epoch"] == 0 and torch.equal(tensors["w"], torch.zeros(4))
    assert json.loads((folder / "progress.json").read_text())["epoch"] == 0
