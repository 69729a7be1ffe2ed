"""Stage I recipe: the PromptSRC teacher (or a zero-shot teacher) → teacher artifact + class vectors.

Read top to bottom:
    open_data(job)                 k-shot items of the training classes (seeded), all class names
    run_teacher_job(job)           driver: zero-shot (no training, no Ray) or trainer.fit on Ray Train
    train_loop_per_worker(plan)    Ray Train worker: resume, epochs with checkpoints, final artifacts
    train_prompts(...)             plain PyTorch epochs of `core.promptsrc.promptsrc_step` + GPA; it
                                   runs inside each worker, and directly in tests
    write_teacher_outputs(...)     teacher.* + class_vectors.* (ALL classes) into the run folder

Design decisions:
- Workers average the prompt gradients with one all_reduce per tensor after backward
  (`trainer.gradient_averager`) instead of wrapping the teacher in DDP: only a few prompt tensors
  train, the frozen towers stay outside any wrapper, and one worker needs no process group at all.
- Every worker draws the same seeded permutation of the items per epoch and takes its strided
  share; crops/flips come from a generator seeded by (seed, epoch, rank): runs are reproducible.
- Few-shot data is small (16 × classes), so workers decode images themselves (`data.decode`, with
  the job's pixel limit and EXIF rule). The driver decodes the k-shot sample once before training:
  unreadable images (corrupt, truncated, not images, over `data.max_image_pixels`) are left out of
  it — their class trains on fewer shots — and counted exactly (`bad_images` in the metrics and
  teacher.json). An unreadable test image of the final evaluation is an error naming the file.
- Checkpoints, resume and refusals are Stage II's (`orchestration/checkpoints.py`): rank 0
  checkpoints each epoch (prompts, optimiser, scheduler, GPA sums), and a re-run with the same name
  resumes — unless the job changed (model, prompts, data, shots, seed, epochs, GPA), which is
  refused with one sentence before any worker starts.
- At the end rank 0 writes `teacher.*` and `class_vectors.*` (computed on its device) to the run
  folder. The zero-shot mode trains nothing and needs no Ray.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .config import TeacherJob, to_dict
from .core.artifacts import TeacherInfo, read_teacher_info, save_teacher
from .core.classvectors import compute_class_vectors, save_class_vectors
from .core.promptsrc import GaussianPromptAggregator, SCLWeights, frozen_text_targets, promptsrc_step
from .core.schedule import build_optimizer, build_scheduler
from .core.templates import resolve_templates
from .data.decode import DecodeOptions, load_view, read_image
from .data.fewshot import sample_k_shot
from .data.sources import open_splits, open_world
from .data.splits import num_base_classes
from .errors import BadImageError, ConfigError
from .orchestration import cluster
from .orchestration.checkpoints import TensorBoardLog, anchored, check_resumable, report, restore, run_storage
from .orchestration.progress import Console, Reporter
from .orchestration.trainer import fit, gradient_averager, this_worker
from .storage import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherResult:
    teacher: str  # teacher artifact (path or URI of teacher.safetensors)
    class_vectors: str  # class vectors of all classes (class_vectors.safetensors)
    metrics: dict  # final metrics (test accuracy on the training classes when evaluated)


@dataclass(frozen=True)
class TeacherData:
    spec: str  # the teacher's MODEL[:PRETRAINED] (the job's, or the toy world's)
    dataset_name: str
    items: tuple  # k-shot training items (labels < number of training classes)
    train_classnames: tuple  # the training classes, in label order
    classnames: tuple  # all classes (the class vectors cover them all)
    test_items: tuple  # test images of the training classes (empty: no evaluation)
    unreadable: tuple = ()  # (path, reason) of the k-shot images left out as unreadable

    def fingerprint(self, job: TeacherJob) -> dict:
        """What a checkpoint must have been made with to be resumed by this job."""
        m, t = job.teacher, job.train
        items = hashlib.sha256(json.dumps([(i.path, i.label) for i in self.items]).encode()).hexdigest()
        return {
            "teacher": self.spec,
            "mode": m.mode,
            "vision_depth": m.vision_depth,
            "text_depth": m.text_depth,
            "n_ctx": m.n_ctx,
            "ctx_init": m.ctx_init,
            "classes": list(self.train_classnames),
            "items_sha256": items,
            "epochs": t.epochs,
            "gpa_mean": t.gpa_mean,
            "gpa_std": t.gpa_std,
        }


@dataclass(frozen=True)
class TeacherPlan:
    """Everything a Ray Train worker needs (sent to every worker)."""

    job: TeacherJob
    data: TeacherData
    fingerprint: dict
    board: object  # ProgressBoard actor of the driver's console


# --- data -------------------------------------------------------------------------------------------


def open_data(job: TeacherJob) -> TeacherData:
    """The k-shot items of the training classes (the base classes, or all), and all class names."""
    d = job.data
    world = open_world(d) if d.source == "toyworld" else None
    dataset = open_splits(d, "train", world)
    n = num_base_classes(dataset.num_classes) if d.classes == "base" else dataset.num_classes
    items = sample_k_shot(dataset.train, d.shots, job.seed, labels=range(n))
    unreadable: list = []
    if job.teacher.mode != "zeroshot":  # zero-shot trains on nothing: no k-shot image is read
        items, unreadable = readable_items(items, DecodeOptions.of(d))
    if not items:
        raise ConfigError(f"{dataset.name} has no training images of its first {n} classes to learn from.")
    log.info("%s: %d-shot, %d training classes, %d images", dataset.summary(), d.shots, n, len(items))
    test = tuple(i for i in dataset.test if i.label < n) if d.eval_test else ()
    spec = job.teacher.spec or (world.teacher_spec if world else "")
    return TeacherData(
        spec,
        dataset.name,
        tuple(items),
        tuple(dataset.classnames[:n]),
        tuple(dataset.classnames),
        test,
        tuple(unreadable),
    )


def readable_items(items: Sequence, options: DecodeOptions, threads: int = 8) -> tuple[list, list]:
    """(the items whose image decodes, [(path, reason)] of the others), each decoded once."""

    def reason(item) -> str:
        try:
            read_image(item.path, options)
            return ""
        except Exception as exc:  # any unreadable file, as in `decode.decode_views`
            return f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(threads) as pool:
        reasons = list(pool.map(reason, items))
    bad = [(item.path, r) for item, r in zip(items, reasons) if r]
    for path, r in bad:
        log.warning("skipping unreadable k-shot image %s (%s)", path, r)
    if bad:
        log.warning("%d of %d k-shot images are unreadable and left out", len(bad), len(items))
    return [item for item, r in zip(items, reasons) if not r], bad


def iter_batches(
    items: Sequence,
    batch_size: int,
    epoch: int,
    seed: int,
    size: int,
    rank: int = 0,
    world: int = 1,
    crop_scale_min: float = 0.08,
    options: DecodeOptions = DecodeOptions(),
):
    """This worker's (images [b, 3, size, size], labels [b]) batches of one epoch; drop_last when
    there is at least one full global batch, else one smaller batch."""
    order = np.random.default_rng([seed, epoch]).permutation(len(items))
    mine, per_worker = order[rank::world], batch_size // world
    rng = np.random.default_rng([seed, epoch, rank, 7])
    for b in range(max(len(order) // batch_size, 1)):
        chunk = [items[i] for i in mine[b * per_worker : (b + 1) * per_worker]]
        if not chunk:
            return
        images = torch.stack([load_view(item.path, size, rng, crop_scale_min, options) for item in chunk])
        yield images, torch.tensor([item.label for item in chunk])


# --- recipe (plain PyTorch) ----------------------------------------------------------------------


def build_job_teacher(job: TeacherJob, spec: str = "", device: str = "cpu"):
    """The job's Teacher with freshly initialised prompts (seeded: identical on every worker)."""
    from .core.models import build_teacher

    m = job.teacher
    torch.manual_seed(job.seed)
    prompted = m.mode == "promptsrc"
    return build_teacher(
        spec or m.spec,
        vision_depth=m.vision_depth if prompted else 0,
        text_depth=m.text_depth if prompted else 0,
        n_ctx=m.n_ctx,
        ctx_init=m.ctx_init,
        device=device,
    )


def image_size(job: TeacherJob, teacher) -> int:
    return job.data.image_size or int(teacher.image_encoder.visual.image_size[0])


def train_prompts(
    teacher,
    items: Sequence,
    train_classnames: Sequence[str],
    job: TeacherJob,
    device="cpu",
    rank: int = 0,
    world: int = 1,
    grad_hook: Optional[Callable] = None,
    resume: Optional[tuple] = None,
    on_epoch_end: Optional[Callable] = None,
    on_step: Optional[Callable] = None,
) -> dict:
    """Run the remaining epochs of PromptSRC on `items`; returns the GPA prompts (CPU tensors).

    `resume` = (tensors, state, progress) of a checkpoint; `on_epoch_end(epoch, metrics, tensors, state)`
    runs after each 0-based epoch with what a checkpoint of it holds; `on_step(epoch, step, out)`
    after each step."""
    t = job.train
    optimizer = build_optimizer(teacher.prompt_parameters(), t)
    scheduler = build_scheduler(optimizer, t)
    gpa = GaussianPromptAggregator(t.epochs, t.gpa_mean, t.gpa_std)
    start = 0
    if resume is not None:
        tensors, state, progress = resume
        teacher.load_state_dict({k: v.to(device) for k, v in tensors.items()}, strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        gpa.load_state_dict(state["gpa"])
        start = progress["epoch"] + 1
    frozen_text = frozen_text_targets(
        teacher.text_encoder, train_classnames, resolve_templates(job.teacher.scl_templates)
    ).to(device)
    weights, size = SCLWeights(text=t.text_loss_weight, image=t.image_loss_weight), image_size(job, teacher)
    for epoch in range(start, t.epochs):
        lr = optimizer.param_groups[0]["lr"]
        sums, steps = defaultdict(float), 0
        for images, labels in iter_batches(
            items,
            t.batch_size,
            epoch,
            job.seed,
            size,
            rank,
            world,
            job.data.crop_scale_min,
            DecodeOptions.of(job.data),
        ):
            out = promptsrc_step(
                teacher,
                images.to(device),
                labels.to(device),
                train_classnames,
                frozen_text,
                optimizer,
                weights,
                grad_hook,
            )
            steps += 1
            for key, value in out.items():
                sums[key] += value
            if on_step is not None:
                on_step(epoch, steps, out)
        scheduler.step()
        gpa.add(epoch + 1, teacher.prompt_state_dict())
        metrics = {"epoch": epoch, "lr": lr, **{k: v / max(steps, 1) for k, v in sums.items()}}
        if on_epoch_end is not None:
            on_epoch_end(
                epoch,
                metrics,
                teacher.prompt_state_dict(),
                {
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "gpa": gpa.state_dict(),
                },
            )
    return gpa.result()


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
    """Ray Train worker: PromptSRC epochs with per-epoch checkpoints, then (rank 0) the artifacts."""
    job, worker = plan.job, this_worker()
    teacher = build_job_teacher(job, plan.data.spec).to(worker.device)
    tensors, state, progress = restore(plan.fingerprint, worker.rank)
    steps = max(len(plan.data.items) // job.train.batch_size, 1)
    rank0 = worker.rank == 0
    reporter = Reporter(
        plan.board if rank0 else None,
        job.train.epochs,
        steps,
        TensorBoardLog(run_storage(job)) if rank0 else None,
        job.train.log_every,
        stage="teacher",
    )

    def on_epoch_end(epoch: int, metrics: dict, prompts: dict, train_state: dict) -> None:
        progress.update(epoch=epoch, history=progress["history"] + [metrics])
        reporter.epoch_end(epoch, metrics)
        report(metrics, progress, prompts, train_state, worker.rank)

    prompts = train_prompts(
        teacher,
        plan.data.items,
        plan.data.train_classnames,
        job,
        worker.device,
        worker.rank,
        worker.world,
        gradient_averager(teacher.prompt_parameters(), worker.world),
        None if tensors is None else (tensors, state, progress),
        on_epoch_end,
        lambda epoch, step, out: reporter.step(
            epoch, step, epoch * steps + step, loss=out["loss"], accuracy=out["accuracy"]
        ),
    )
    reporter.close()
    if rank0:
        teacher.load_state_dict({k: v.to(worker.device) for k, v in prompts.items()}, strict=False)
        write_teacher_outputs(teacher, job, plan.data, run_storage(job), worker.device)


def run_teacher_job(job: TeacherJob) -> TeacherResult:
    """Run (or resume) a Stage I job; artifacts go to storage_path/name/."""
    import yaml

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
