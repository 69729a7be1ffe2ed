"""Stage I recipe: the PromptSRC teacher (or a zero-shot teacher) → teacher artifact + class vectors.

Read top to bottom:
    run_teacher_job(job)           driver: zero-shot (no training, no Ray) or trainer.fit on Ray Train
    train_loop_per_worker(plan)    Ray Train worker: resume, then epoch after epoch: for each batch
                                   a PromptSRC step (`core.promptsrc.PromptSRCTraining`), then the
                                   schedule, GPA and a checkpoint; at the end the artifacts
    write_teacher_outputs(...)     teacher.* + class_vectors.* (ALL classes) into the run folder
The data, the teacher and its training are set up by `teacher_setup`, the same in tests (no Ray).

Design decisions:
- Workers average the prompt gradients with one all_reduce per tensor between backward and the
  optimiser step (`trainer.gradient_averager`) instead of wrapping the teacher in DDP: only a few
  prompt tensors train, the frozen towers stay outside any wrapper, and one worker needs no
  process group at all.
- Every worker draws the same seeded permutation of the items per epoch and takes its strided
  share (`data.kshot`): runs are reproducible. Workers decode the few-shot images themselves.
- An unreadable k-shot image is left out by the driver and counted (`teacher_setup.open_data`); an
  unreadable test image of the final evaluation is an error naming the file.
- Checkpoints, resume and refusals are Stage II's (`orchestration/checkpoints.py`): rank 0
  checkpoints each epoch (prompts, optimiser, scheduler, GPA sums), and a re-run with the same name
  resumes — unless the job changed (model, prompts, data, shots, seed, epochs, GPA), which is
  refused with one sentence before any worker starts.
- At the end rank 0 writes `teacher.*` and `class_vectors.*` (computed on its device) to the run
  folder. The zero-shot mode trains nothing and needs no Ray.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Sequence

import torch
import yaml

from .config import TeacherJob, to_dict
from .core.artifacts import TeacherInfo, read_teacher_info, save_teacher
from .core.classvectors import compute_class_vectors, save_class_vectors
from .core.promptsrc import EpochMeans
from .data.decode import DecodeOptions, load_view
from .errors import BadImageError
from .orchestration import cluster
from .orchestration.checkpoints import anchored, check_resumable, report, restore, run_storage
from .orchestration.progress import Console, Reporter
from .orchestration.tensorboard import TensorBoardLog
from .orchestration.trainer import fit, gradient_averager, this_worker
from .storage import Storage
from .teacher_setup import TeacherData, build_job_teacher, image_size, kshot_batches, new_training, open_data

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherResult:
    teacher: str  # teacher artifact (path or URI of teacher.safetensors)
    class_vectors: str  # class vectors of all classes (class_vectors.safetensors)
    metrics: dict  # final metrics (test accuracy on the training classes when evaluated)


@dataclass(frozen=True)
class TeacherPlan:
    """Everything a Ray Train worker needs (sent to every worker)."""

    job: TeacherJob
    data: TeacherData
    fingerprint: dict
    board: object  # ProgressBoard actor of the driver's console


@torch.no_grad()
def test_accuracy(
    teacher,
    items: Sequence,
    class_vectors: torch.Tensor,
    size: int,
    device="cpu",
    batch_size: int = 64,
    options: DecodeOptions = DecodeOptions(),
) -> float:
    """Top-1 accuracy (percent) of the teacher on `items` against `class_vectors` [N, d]; an
    unreadable test image is a `BadImageError`."""
    teacher.eval()
    correct = 0
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        images = torch.stack([load_test_view(item.path, size, options) for item in chunk]).to(device)
        predicted = (teacher.encode_image(images) @ class_vectors.to(device).t()).argmax(-1).cpu()
        correct += int((predicted == torch.tensor([item.label for item in chunk])).sum())
    return 100.0 * correct / max(len(items), 1)


def load_test_view(path: str, size: int, options: DecodeOptions) -> torch.Tensor:
    """A test image as model input; an unreadable one is an error (it would change the test set)."""
    try:
        return load_view(path, size, options=options)
    except Exception as exc:
        raise BadImageError(
            f"test image {path} is not a readable image ({type(exc).__name__}: {exc}); fix or "
            "remove it, or set data.eval_test: false (a re-run resumes from the last "
            "checkpoint)."
        ) from None


def write_teacher_outputs(teacher, job: TeacherJob, data: TeacherData, run: Storage, device="cpu") -> dict:
    """teacher.{safetensors,json} + class_vectors.{safetensors,json} (all classes) into `run`, the
    test accuracy on the training classes (when there are test items) recorded in teacher.json;
    → the metrics recorded."""
    m = job.teacher
    templates = m.zeroshot_templates if m.mode == "zeroshot" else "single"
    cv = compute_class_vectors(teacher, list(data.classnames), templates=templates, teacher_spec=data.spec)
    cv = replace(cv, meta={"teacher_artifact": "teacher", "job": job.name})
    metrics: dict = {"bad_images": len(data.unreadable)}
    if data.test_items:
        n = len(data.train_classnames)
        metrics["test_accuracy_train_classes"] = test_accuracy(
            teacher,
            data.test_items,
            cv.vectors[:n],
            image_size(job, teacher),
            device,
            options=DecodeOptions.of(job.data),
        )
        log.info("test accuracy on the %d training classes: %.2f", n, metrics["test_accuracy_train_classes"])
    info = TeacherInfo(
        spec=data.spec,
        vision_depth=teacher.image_encoder.depth,
        text_depth=teacher.text_encoder.depth,
        n_ctx=m.n_ctx,
        ctx_init=m.ctx_init,
        extra={
            "recipe": m.mode,
            "job": job.name,
            "dataset": data.dataset_name,
            "shots": job.data.shots,
            "classes": job.data.classes,
            "seed": job.seed,
            "epochs": job.train.epochs,
            "metrics": metrics,
        },
    )
    save_class_vectors(cv, run.path("class_vectors"))
    save_teacher(teacher, info, run.path("teacher"))
    return metrics


# --- Ray Train ----------------------------------------------------------------------------------------


def train_loop_per_worker(plan: TeacherPlan) -> None:
    """Ray Train worker: build, restore, then PromptSRC epochs with per-epoch checkpoints, then
    (rank 0) the artifacts."""
    job, worker = plan.job, this_worker()
    training = new_training(job, plan.data, worker.device)
    tensors, state, progress = restore(plan.fingerprint, worker.rank)
    if tensors is not None:
        training.load_state_dict(tensors, state)
    batches = kshot_batches(job, plan.data, image_size(job, training.teacher))
    average_gradients = gradient_averager(training.teacher.prompt_parameters(), worker.world)
    rank0 = worker.rank == 0
    reporter = Reporter(
        plan.board if rank0 else None,
        job.train.epochs,
        batches.steps,
        TensorBoardLog(run_storage(job)) if rank0 else None,
        job.train.log_every,
        stage="teacher",
    )
    for epoch in range(progress["epoch"] + 1, job.train.epochs):
        lr, meter = training.lr, EpochMeans()
        for step, (images, labels) in enumerate(batches.epoch(epoch, worker.rank, worker.world), 1):
            out = training.backward(images.to(worker.device), labels.to(worker.device))
            if average_gradients is not None:
                average_gradients()
            training.step()
            meter.add(out)
            reporter.step(
                epoch, step, epoch * batches.steps + step, loss=out["loss"], accuracy=out["accuracy"]
            )
        prompts = training.end_epoch(epoch)
        metrics = {"epoch": epoch, "lr": lr, **meter.means()}
        progress.update(epoch=epoch, history=progress["history"] + [metrics])
        reporter.epoch_end(epoch, metrics)
        report(metrics, progress, prompts, training.state_dict(), worker.rank)
    reporter.close()
    if rank0:
        training.load_prompts(training.gpa.result())
        write_teacher_outputs(training.teacher, job, plan.data, run_storage(job), worker.device)


def run_teacher_job(job: TeacherJob) -> TeacherResult:
    """Run (or resume) a Stage I job; artifacts go to storage_path/name/."""
    job = anchored(job)
    run, data = run_storage(job), open_data(job)
    if job.teacher.mode == "zeroshot":
        metrics = write_teacher_outputs(build_job_teacher(job, data.spec), job, data, run)
    else:
        fingerprint = data.fingerprint(job)
        check_resumable(run, fingerprint)
        cluster.connect(job.ray, cluster.cpus_needed(job.train))
        run.write_text("job.yaml", yaml.safe_dump(to_dict(job), sort_keys=False))
        with Console("teacher", job.ray.progress_bars) as board:
            fit(train_loop_per_worker, TeacherPlan(job, data, fingerprint, board), job, job.train)
        metrics = read_teacher_info(run.path("teacher")).extra.get("metrics", {})
    return TeacherResult(run.path("teacher.safetensors"), run.path("class_vectors.safetensors"), metrics)
