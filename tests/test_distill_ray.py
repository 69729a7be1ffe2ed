"""Stage II on a local Ray: DDP workers fed by the teacher pool; checkpoints, resume after a killed
worker, re-runs, bad images, TensorBoard, the student artifact."""

import csv
import json
from pathlib import Path

import pytest
import torch

from promptkd_ray.config import ConfigError, job_from_dict
from stage2_fakes import make_split_json, tiny_job

pytestmark = pytest.mark.slow

EPOCHS = 2
KILL_AT_STEP = 7  # 40 training images / global batch 8 = 5 steps per epoch: step 7 is mid-epoch 1


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory, ray_cluster):
    """2 DDP workers, 2 epochs, ≥ 5 % unreadable files, worker rank 1 killed mid-epoch 1."""
    from promptkd_ray.distill import run_distillation

    tmp = tmp_path_factory.mktemp("faulty")
    root, bad = make_split_json(tmp / "data", per_class=12, bad_per_kind=1)  # 48 good + 3 bad = 5.9 %
    raw = tiny_job(root, tmp / "runs", "faulty", train={"num_workers": 2, "epochs": EPOCHS, "max_failures": 1},
                   fault_injection={"kill_at_step": KILL_AT_STEP, "rank": 1})
    result = run_distillation(job_from_dict(raw))
    return result, raw, bad, tmp / "runs" / "faulty"


def test_killed_worker_resumes_from_last_checkpoint_and_runs_every_epoch_once(faulty_run):
    result, _, _, run_dir = faulty_run
    assert (run_dir / "fault_injected").is_file()  # the fault did fire
    assert result.summary["resumes"] == [1]  # the restarted workers began at epoch 1, from epoch 0's checkpoint
    assert [m["epoch"] for m in result.history] == list(range(EPOCHS))
    steps = [m["step"] for m in result.history]
    assert steps == [steps[0] * (e + 1) for e in range(EPOCHS)]  # no step counted twice
    assert all(m["images"] == 40 for m in result.history)  # 2 workers × 5 steps × 4 images


def test_bad_images_are_skipped_and_counted_exactly(faulty_run):
    result, _, bad, _ = faulty_run
    assert len(bad) == 3
    assert [m["bad_images"] for m in result.history] == [3] * EPOCHS
    assert result.summary["bad_images"] == 3 and sorted(result.summary["bad_image_examples"]) == sorted(bad)


def test_checkpoints_tensorboard_metrics_and_student_artifact_are_written(faulty_run):
    from promptkd_ray.artifacts import load_student

    result, _, _, run_dir = faulty_run
    checkpoints = sorted(p.name for p in run_dir.glob("checkpoint_epoch_*"))
    assert checkpoints == [f"checkpoint_epoch_{e:03d}" for e in range(EPOCHS)]
    assert {"student.safetensors", "train_state.pt", "progress.json"} <= {p.name for p in (run_dir / checkpoints[-1]).iterdir()}
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    for key in ("kd_loss", "train_agreement", "heldout_agreement", "heldout_kl", "images_per_s", "bad_images"):
        assert key in rows[0]
    summary = json.loads((run_dir / "metrics.json").read_text())
    student, info = load_student(run_dir / "student")
    sidecar = json.loads((run_dir / "student.json").read_text())
    assert info.class_vectors_sha256 == summary["class_vectors_sha256"] == sidecar["class_vectors_sha256"]
    assert (info.spec, info.n_ctx, info.depth, info.projector, info.teacher_dim) == ("tiny-vit-student", 2, 2, "mlp2", 48)
    progress = json.loads((run_dir / checkpoints[-1] / "progress.json").read_text())
    from safetensors.torch import load_file
    saved = load_file(str(run_dir / checkpoints[-1] / "student.safetensors"))
    assert progress["epoch"] == EPOCHS - 1
    assert all(torch.equal(saved[k], v) for k, v in student.trainable_state_dict().items())
    assert any("running_mean" in k for k in saved)  # projector BatchNorm statistics travel too


def test_rerunning_the_job_resumes_it(faulty_run):
    from promptkd_ray.distill import run_distillation

    result, raw, _, _ = faulty_run
    longer = dict(raw, train=dict(raw["train"], epochs=EPOCHS + 1))
    rerun = run_distillation(job_from_dict(longer))
    assert [m["epoch"] for m in rerun.history] == list(range(EPOCHS + 1))
    assert rerun.summary["resumes"] == [1, EPOCHS]
    assert rerun.history[:EPOCHS] == result.history


def test_rerunning_with_another_student_is_refused_before_training(faulty_run):
    from promptkd_ray.distill import run_distillation

    _, raw, _, _ = faulty_run
    other = dict(raw, student=dict(raw["student"], depth=3))
    with pytest.raises(ConfigError, match=r"made with depth=2, but the job now has 3"):
        run_distillation(job_from_dict(other))


def _test_hm(encoder, class_vectors, test_split) -> dict:
    """Base / novel / HM (PROTOCOL.md) of an image encoder on labelled test items."""
    from promptkd_ray.evaluate import base_to_novel
    from promptkd_ray.inference import encode_items

    encoded = encode_items(encoder, [i.path for i in test_split.test], [i.label for i in test_split.test],
                           use_ray=False)
    return base_to_novel(encoded.features, encoded.labels, class_vectors, test_split.classnames)


def test_toy_b2n_job_with_two_workers_beats_the_students_zero_shot_hm(tmp_path, ray_cluster, toy_world):
    """Acceptance: jobs/toy_b2n.yaml (2 DDP workers + a teacher pool) on the quick toy world."""
    from promptkd_ray.classvectors import compute_class_vectors, load_class_vectors
    from promptkd_ray.config import load_job
    from promptkd_ray.data.benchmarks import load_split_json_dataset
    from promptkd_ray.distill import run_distillation
    from promptkd_ray.inference import EncoderSpec
    from promptkd_ray.models import build_teacher

    job = load_job(Path(__file__).resolve().parents[1] / "jobs" / "toy_b2n.yaml",
                   ["data.toyworld_profile=quick", f"storage_path={tmp_path}", "ray.progress_bars=false"])
    assert job.train.num_workers == 2 and job.teacher_pool.size >= 1
    result = run_distillation(job)
    domain = toy_world.domain(job.data.dataset)
    splits = load_split_json_dataset(domain.root, domain.dataset_folder, domain.image_folder,
                                     domain.split_file.name, name=domain.name)
    distilled = _test_hm(EncoderSpec("student", result.student_artifact),
                         load_class_vectors(tmp_path / job.name / "class_vectors"), splits)
    own_text = compute_class_vectors(build_teacher(toy_world.student_spec), list(splits.classnames))
    zero_shot = _test_hm(EncoderSpec("zeroshot", toy_world.student_spec), own_text, splits)
    print(f"toy b2n: distilled {distilled}, student zero-shot {zero_shot}")
    assert len(result.history) == job.train.epochs
    assert distilled["hm"] > zero_shot["hm"]
