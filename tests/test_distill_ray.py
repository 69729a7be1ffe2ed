"""Stage II on a local Ray: DDP workers fed by the teacher pool; checkpoints, resume after a killed
worker, re-runs, refusals, bad images, TensorBoard, the student artifact — with the run's storage
given as a `file://` URI, so that every file goes through the remote-storage code (pyarrow.fs;
TensorBoard staged locally and uploaded) while the test reads the files on local disk."""

import csv
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from own_ray import descendants, registered
from stage2_fakes import make_split_json, tiny_job

from promptkd_ray.config import distill_job_from_dict
from promptkd_ray.errors import CheckpointMismatchError

pytestmark = pytest.mark.slow

EPOCHS = 3


def kill_a_train_worker_once(run_dir: Path, after_epoch: int = 0, timeout: float = 300.0) -> list:
    """In the background: as soon as Ray Train has registered the checkpoint of `after_epoch`,
    SIGKILL one Ray Train worker process — a worker dying mid-run (during the next epoch's start-up),
    from outside: there is no fault hook in the library. Returns the list that receives the pid."""
    killed: list = []

    def watch() -> None:
        deadline = time.time() + timeout
        while not registered(run_dir, f"checkpoint_epoch_{after_epoch:03d}") and time.time() < deadline:
            time.sleep(0.05)
        for process in descendants(os.getpid(), "RayTrainWorker")[:1]:  # this session's Ray only
            process.kill()
            killed.append(process.pid)

    threading.Thread(target=watch, daemon=True).start()
    return killed


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory, ray_cluster):
    """2 DDP workers, 3 epochs, ≥ 5 % unreadable files, one worker process killed after epoch 0;
    storage on a file:// URI."""
    from promptkd_ray.distill import run_distillation

    tmp = tmp_path_factory.mktemp("faulty")
    root, bad = make_split_json(tmp / "data", per_class=12, bad_per_kind=1)  # 48 good + 3 bad = 5.9 %
    raw = tiny_job(
        root,
        f"file://{tmp / 'runs'}",
        "faulty",
        train={"num_workers": 2, "epochs": EPOCHS, "max_failures": 1, "record_ids": True},
    )
    killed = kill_a_train_worker_once(tmp / "runs" / "faulty")
    result = run_distillation(distill_job_from_dict(raw))
    return result, raw, bad, tmp / "runs" / "faulty", killed


def _copy_run(faulty_run, tmp_path) -> dict:
    """The fixture's job, pointed at a copy of its run folder (tests never change the shared run)."""
    _, raw, _, run_dir, _ = faulty_run
    shutil.copytree(run_dir, tmp_path / "runs" / "faulty")
    return dict(raw, storage_path=f"file://{tmp_path / 'runs'}")


def test_killed_worker_resumes_from_last_checkpoint_and_runs_every_epoch_once(faulty_run):
    result, _, _, _, killed = faulty_run
    assert len(killed) == 1  # the worker process was killed
    assert len(result.summary["resumes"]) == 1 and 1 <= result.summary["resumes"][0] < EPOCHS
    assert [m["epoch"] for m in result.history] == list(range(EPOCHS))
    steps = [m["step"] for m in result.history]
    assert steps == [steps[0] * (e + 1) for e in range(EPOCHS)]  # no step counted twice
    assert all(m["images"] == 40 for m in result.history)  # 2 workers × 5 steps × 4 images


def test_every_image_reaches_the_trainers_exactly_once_per_epoch_across_the_restart(faulty_run):
    """`train.record_ids`: per epoch, the ids both workers received (the epoch re-run after the kill
    included) are every readable train image outside the held-out slice, each once."""
    from promptkd_ray.data.sources import resolve_source
    from promptkd_ray.orchestration.audit import recorded_ids
    from promptkd_ray.storage import Storage

    result, raw, bad, run_dir, _ = faulty_run
    job = distill_job_from_dict(raw)
    source = resolve_source(job.data, job.seed)
    expected = sorted(set(source.train_paths) - set(bad))
    assert len(expected) == 40 and not set(expected) & set(source.heldout_paths)
    for epoch in range(EPOCHS):
        ids = recorded_ids(Storage(run_dir), epoch)
        assert sorted(ids["trained"] + ids["dropped"]) == expected, epoch  # none lost, none twice
        assert len(ids["trained"]) == result.history[epoch]["images"] == 40


def test_bad_images_are_skipped_and_counted_exactly(faulty_run):
    result, _, bad, _, _ = faulty_run
    assert len(bad) == 3
    assert [m["bad_images"] for m in result.history] == [3] * EPOCHS
    assert result.summary["bad_images"] == 3 and sorted(result.summary["bad_image_examples"]) == sorted(bad)


def test_checkpoints_tensorboard_metrics_and_student_artifact_are_written(faulty_run):
    from safetensors.torch import load_file

    from promptkd_ray.core.artifacts import load_student

    result, _, _, run_dir, _ = faulty_run
    assert (
        result.run_dir == f"file://{run_dir}"
        and result.student_artifact == f"file://{run_dir}/student.safetensors"
    )
    checkpoints = sorted(p.name for p in run_dir.glob("checkpoint_epoch_*"))
    assert checkpoints == [
        f"checkpoint_epoch_{e:03d}" for e in range(EPOCHS - 2, EPOCHS)
    ]  # checkpoints_to_keep: 2
    assert {"trainable.safetensors", "train_state.pt", "progress.json"} <= {
        p.name for p in (run_dir / checkpoints[-1]).iterdir()
    }
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    for key in (
        "kd_loss",
        "train_agreement",
        "heldout_agreement",
        "heldout_kl",
        "images_per_s",
        "bad_images",
    ):
        assert key in rows[0]
    summary = json.loads((run_dir / "metrics.json").read_text())
    student, info = load_student(result.student_artifact)  # read back through the URI
    sidecar = json.loads((run_dir / "student.json").read_text())
    assert info.class_vectors_sha256 == summary["class_vectors_sha256"] == sidecar["class_vectors_sha256"]
    assert (info.spec, info.n_ctx, info.depth, info.projector, info.teacher_dim) == (
        "tiny-vit-student",
        2,
        2,
        "mlp2",
        48,
    )
    progress = json.loads((run_dir / checkpoints[-1] / "progress.json").read_text())
    saved = load_file(str(run_dir / checkpoints[-1] / "trainable.safetensors"))
    assert progress["epoch"] == EPOCHS - 1
    assert all(torch.equal(saved[k], v) for k, v in student.trainable_state_dict().items())
    assert any("running_mean" in k for k in saved)  # projector BatchNorm statistics travel too


def test_rerunning_the_job_resumes_it(faulty_run, tmp_path):
    from promptkd_ray.distill import run_distillation

    result = faulty_run[0]
    raw = _copy_run(faulty_run, tmp_path)
    rerun = run_distillation(distill_job_from_dict(dict(raw, train=dict(raw["train"], epochs=EPOCHS + 1))))
    assert [m["epoch"] for m in rerun.history] == list(range(EPOCHS + 1))
    assert rerun.summary["resumes"] == result.summary["resumes"] + [EPOCHS]
    assert rerun.history[:EPOCHS] == result.history


def test_rerunning_with_another_student_is_refused_before_training(faulty_run, tmp_path):
    from promptkd_ray.distill import run_distillation

    raw = _copy_run(faulty_run, tmp_path)
    before = sorted(p.name for p in (tmp_path / "runs" / "faulty").iterdir())
    other = dict(raw, student=dict(raw["student"], depth=3))
    with pytest.raises(CheckpointMismatchError, match=r"made with depth=2, but the job now has 3"):
        run_distillation(distill_job_from_dict(other))
    assert sorted(p.name for p in (tmp_path / "runs" / "faulty").iterdir()) == before


def test_distill_with_on_bad_image_fail_ends_in_one_sentence(tmp_path, ray_cluster, capsys):
    """The BadImageError raised in a Ray Data decode task crosses the Train worker and Ray Train's
    failure handling and reaches the CLI as itself: one line, exit status 2."""
    import yaml

    from promptkd_ray.cli import main

    root, bad = make_split_json(tmp_path / "data", per_class=2, bad_per_kind=1)
    raw = tiny_job(
        root,
        tmp_path / "runs",
        "strict",
        train={"epochs": 1, "warmup_epochs": 0, "max_failures": 0},
        data={"heldout_images": 0, "on_bad_image": "fail"},
    )
    (tmp_path / "strict.yaml").write_text(yaml.safe_dump(raw))
    assert main(["distill", "--config", str(tmp_path / "strict.yaml")]) == 2
    # (the session's test cluster forwards Ray's worker logs to stderr too; the CLI's own line is one)
    (err,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert " is not a readable image (" in err and "data.on_bad_image=skip" in err
    assert any(path in err for path in bad) and "Traceback" not in err


def test_a_diverging_run_stops_with_one_sentence_and_saves_no_student(tmp_path, ray_cluster, capsys):
    """A student whose loss becomes NaN (a ComKD student at an absurd SGD learning rate) ends the run
    with the DivergedError raised in its Train worker: one line naming the epoch and step, exit status
    2, and no student artifact trained on at chance."""
    import yaml

    from promptkd_ray.cli import main

    root, _ = make_split_json(tmp_path / "data", per_class=4, bad_per_kind=0)
    raw = tiny_job(
        root,
        tmp_path / "runs",
        "diverging",
        loss={"preset": "comkd"},
        train={"epochs": 2, "warmup_epochs": 0, "max_failures": 0, "optimizer": "sgd", "lr": 1e6},
        data={"heldout_images": 0},
    )
    (tmp_path / "diverging.yaml").write_text(yaml.safe_dump(raw))
    assert main(["distill", "--config", str(tmp_path / "diverging.yaml")]) == 2
    (err,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert re.match(
        r"error: At epoch [12] of 2, step \d+ of worker 0, the training loss became (nan|inf)", err
    ), err
    assert "the student diverged" in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "diverging" / "student.safetensors").exists()
