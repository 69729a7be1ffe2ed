"""Stage II recipe: distil a large CLIP teacher into a small CLIP student's prompts, on Ray.

Read top to bottom:
    prepare(job, run)              setup: images, teacher, student, class vectors, input size
    run_distillation(job)          driver: setup → datasets → trainer.fit → student artifact + metrics
    build_soft_label_cache(job)    driver: the teacher's features of K seeded views per image, once
    train_loop_per_worker(plan)    each Ray Train worker: student, optimiser, resume, epochs, reports
    train_one_epoch(...)           the worker's streaming shard → `core.step.distill_step`, batch by batch
    heldout_metrics(...)           label-free student–teacher agreement and KL on the held-out slice

Design decisions:
- The teacher never runs in the training loop: the pipeline (`orchestration/pipeline.py`) brings
  each batch's views together with the teacher's normalised features of the same views; the
  trainer turns them into teacher logits with the class vectors (`core/step.py`).
- DDP through Ray Train (gloo on CPU, NCCL on GPU). The global batch is split evenly over the
  workers and every worker takes the same number of steps (streaming split with equal shards,
  `drop_last`), so no collective ever waits for a worker that ran out of data.
- One report per epoch: metrics from every worker (losses and agreement all-reduced) and, from
  rank 0, a checkpoint with everything that trains plus the optimiser, scheduler and progress.
  A restart (worker failure, `FailureConfig`) or a re-run of the job with the same name and
  storage resumes after the last reported epoch, with the same history.
- With `teacher.cache` (built by `build_soft_label_cache`, `orchestration/softlabels.py`) no
  teacher actor starts: epoch e replays view slot e mod K, re-rendered from the source images.
- Class vectors come from `teacher.class_vectors`, or are computed here once with the teacher's
  text tower and stored in the run folder; a resumed run reuses the stored ones, so its
  checkpoint fingerprint (class-vector hash) still matches.
- The defaults are the authors' optimisation (SGD 0.005, cosine per epoch, 1 warm-up epoch at
  1e-5, batch 8): see `core/schedule.py`. Evaluation on labels is not part of this recipe.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .config import DistillJob, to_dict
from .core.artifacts import ModelRef, StudentInfo, read_teacher_info, save_student
from .core.classvectors import (
    ClassVectors,
    check_class_vectors,
    compute_class_vectors,
    load_class_vectors,
    save_class_vectors,
)
from .core.models import build_student
from .core.models.loading import vision_setting
from .core.schedule import build_optimizer, build_scheduler
from .core.step import autocast_dtype, distill_step, teacher_logits, teacher_scale
from .data.decode import to_model_input
from .data.sources import ImageSource, open_world, resolve_source, vocabulary_names
from .errors import ConfigError
from .orchestration import cluster
from .orchestration.audit import IdAudit, recorded_ids  # noqa: F401  (recorded_ids: re-exported for callers)
from .orchestration.checkpoints import (
    TRAINABLE_FILE,
    TensorBoardLog,
    anchored,
    check_resumable,
    final_checkpoint,
    read_progress,
    report,
    restore,
    run_storage,
)
from .orchestration.epochs import set_epoch, start_clock
from .orchestration.pipeline import bad_images, distill_datasets, start_ledger
from .orchestration.progress import BuildProgress, Console, Reporter
from .orchestration.softlabels import Cache, build_cache, open_cache, replay_datasets
from .orchestration.trainer import (
    all_reduce,
    dataset_shard,
    fit,
    prepare_model,
    surface_user_errors,
    this_worker,
)
from .storage import Storage

log = logging.getLogger(__name__)

CLASS_VECTORS_NAME = "class_vectors"


@dataclass(frozen=True)
class DistillResult:
    run_dir: str  # storage_path/name (local path or URI)
    student_artifact: str  # the student's .safetensors (with its .json beside it)
    history: list  # one metrics dict per epoch
    summary: dict  # what metrics.json holds


@dataclass(frozen=True)
class Setup:
    """What the driver resolved from the job before any worker starts."""

    source: ImageSource  # images to distil on + the held-out slice
    teacher: ModelRef  # how teacher actors build the teacher
    teacher_spec: str  # the teacher's MODEL[:PRETRAINED]
    student_spec: str  # the student's MODEL[:PRETRAINED]
    class_vectors: ClassVectors  # W [N, d_t]
    image_size: int  # training resolution (teacher and student)
    cache: Optional[Cache] = None  # the soft-label cache to replay (teacher.cache), checked against the job

    def fingerprint(self, job: DistillJob) -> dict:
        """What a checkpoint must have been made with to be resumed by this job."""
        s = job.student
        return {
            "student": self.student_spec,
            "n_ctx": s.n_ctx,
            "depth": s.depth,
            "projector": s.projector,
            "edu_attention_width": edu_attention_width(job, self.class_vectors.dim),
            "teacher": self.teacher_spec,
            "class_vectors_sha256": self.class_vectors.sha256,
        }


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a Ray Train worker needs, and nothing else (sent to every worker)."""

    job: DistillJob
    student_spec: str  # the student's MODEL[:PRETRAINED]
    class_vectors: torch.Tensor  # W [N, d_t]
    teacher_logit_scale: float  # exp'd; KDPL uses the student's instead (`core.step.teacher_scale`)
    fingerprint: dict  # see Setup.fingerprint
    steps_per_epoch: int  # global steps per epoch
    local_shuffle: Optional[int]  # Parquet sources: a local shuffle buffer (rows), else None
    has_heldout: bool  # a "heldout" dataset goes to rank 0
    ledger: object  # BadImageLedger actor: unreadable images counted exactly
    clock: object  # EpochClock actor: rank 0 tells the pipeline's tasks which epoch they produce
    board: object  # ProgressBoard actor of the driver's console


# --- setup -------------------------------------------------------------------------------------------


def edu_attention_width(job: DistillJob, dim: int) -> int:
    """C of the student's ComKD-CLIP EduAttention (0 = none): on with `loss.edu_attention`."""
    return (job.student.edu_attention_width or dim) if job.loss.edu_attention else 0


def new_student(job: DistillJob, spec: str, dim: int, device="cpu"):
    """The job's student (frozen backbone, fresh prompts, projector and EduAttention)."""
    s = job.student
    return build_student(
        spec,
        teacher_dim=dim,
        n_ctx=s.n_ctx,
        depth=s.depth,
        projector=s.projector,
        device=device,
        edu_attention_width=edu_attention_width(job, dim),
    )


def prepare(job: DistillJob, run: Storage) -> Setup:
    """Resolve the images, the models, the class vectors and the input size; every mismatch ends in
    one sentence before any worker starts."""
    source, teacher, teacher_spec, student_spec, size = resolve(job)
    cache = open_cache(job.teacher.cache, job, source, teacher, size) if job.teacher.cache else None
    cv = _class_vectors(job, run, teacher, teacher_spec, source)
    if cv.dim != vision_setting(teacher_spec, "embed_dim"):
        raise ConfigError(
            f"The class vectors have dim {cv.dim}, but the teacher {teacher_spec} emits "
            f"features of dim {vision_setting(teacher_spec, 'embed_dim')}."
        )
    return Setup(source, teacher, teacher_spec, student_spec, cv, size, cache)


def resolve(job: DistillJob) -> tuple:
    """(images, teacher ModelRef, teacher spec, student spec, input size) of the job."""
    world = open_world(job.data) if job.data.source == "toyworld" else None
    student_spec = job.student.spec or (world.student_spec if world else "")
    if job.teacher.artifact:
        teacher, teacher_spec = (
            ModelRef("teacher", job.teacher.artifact),
            read_teacher_info(job.teacher.artifact).spec,
        )
    else:
        teacher_spec = job.teacher.spec or (world.teacher_spec if world else "")
        teacher = ModelRef("zeroshot", teacher_spec)
    source = resolve_source(job.data, job.seed, world)
    size = job.data.image_size or vision_setting(student_spec, "image_size")
    for role, spec in (("teacher", teacher_spec), ("student", student_spec)):
        if vision_setting(spec, "image_size") != size:
            raise ConfigError(
                f"The {role} {spec} takes {vision_setting(spec, 'image_size')}-px images, but the job "
                f"trains at {size} px (data.image_size); teacher and student must see the same view."
            )
    return source, teacher, teacher_spec, student_spec, size


def _class_vectors(
    job: DistillJob, run: Storage, teacher: ModelRef, teacher_spec: str, source: ImageSource
) -> ClassVectors:
    """The class vectors the student distils against: of the dataset's classes, or (KDPL-CA) of
    `teacher.vocabulary`; given, stored in the run folder by an earlier attempt, or computed here.
    The run folder always ends up with a copy, so a run (or a sweep's trial) can be scored alone."""
    names = vocabulary_names(job.teacher.vocabulary) if job.teacher.vocabulary else source.classnames
    expected = tuple(names) or None
    for path, where in (
        (job.teacher.class_vectors, f"class vectors {job.teacher.class_vectors}"),
        (
            run.path(CLASS_VECTORS_NAME) if run.exists(CLASS_VECTORS_NAME + ".json") else "",
            f"class vectors in {run.root}",
        ),
    ):
        if path:
            cv = load_class_vectors(path)
            check_class_vectors(cv, expected_classnames=expected, source=where)
            if not run.exists(CLASS_VECTORS_NAME + ".json"):
                save_class_vectors(cv, run.path(CLASS_VECTORS_NAME))
            return cv
    if not names:
        raise ConfigError(
            f"{source.name} has no class names to compute class vectors from; set "
            "teacher.class_vectors to a class-vectors artifact (or teacher.vocabulary)."
        )
    log.info(
        "computing class vectors for %d classes%s with %s (templates: %s)",
        len(names),
        " of the vocabulary" if job.teacher.vocabulary else "",
        teacher_spec,
        job.teacher.templates,
    )
    cv = compute_class_vectors(
        teacher.build("cpu"), list(names), templates=job.teacher.templates, teacher_spec=teacher_spec
    )
    save_class_vectors(cv, run.path(CLASS_VECTORS_NAME))
    return cv


# --- driver --------------------------------------------------------------------------------------------


def run_distillation(job: DistillJob, callbacks: Sequence = ()) -> DistillResult:
    """Run (or resume) the Stage II job; returns where its artifacts are. `callbacks` go to Ray
    Train (a Tune trial's `TuneReportCallback` turns each epoch's report into a Tune result)."""
    import yaml

    job = anchored(job)
    cluster.connect(job.ray, cluster.cpus_needed(job.train, job.teacher_pool))
    cluster.warn_missing_resources({**job.teacher_pool.resources, **job.train.resources_per_worker})
    run = run_storage(job)
    setup = prepare(job, run)
    check_resumable(run, setup.fingerprint(job))
    run.write_text("job.yaml", yaml.safe_dump(to_dict(job), sort_keys=False))
    ledger, clock = start_ledger(), start_clock()
    with contextlib.ExitStack() as running:  # the run's teacher actors end with it
        if setup.cache is not None:
            log.info(
                "replaying the soft-label cache %s (%d views per image): no teacher actors",
                setup.cache.storage.root,
                setup.cache.views,
            )
            datasets = replay_datasets(job, setup.cache, setup.image_size, ledger, clock)
        else:
            datasets = distill_datasets(
                job, setup.source, setup.teacher, setup.image_size, ledger, cluster.has_gpus(), clock, running
            )
        log.info(
            "run %s: %d epochs on %d images, %d worker(s), storage %s",
            job.name,
            job.train.epochs,
            setup.source.num_train,
            job.train.num_workers,
            run.root,
        )
        board = running.enter_context(Console("distill", job.ray.progress_bars))
        plan = WorkerPlan(
            job=job,
            student_spec=setup.student_spec,
            class_vectors=setup.class_vectors.vectors,
            teacher_logit_scale=setup.class_vectors.logit_scale,
            fingerprint=setup.fingerprint(job),
            steps_per_epoch=setup.source.num_train // job.train.batch_size,
            local_shuffle=4 * job.train.batch_size if setup.source.is_parquet and job.data.shuffle else None,
            has_heldout="heldout" in datasets,
            ledger=ledger,
            clock=clock,
            board=board,
        )
        result = fit(
            train_loop_per_worker,
            plan,
            job,
            job.train,
            datasets,
            preserve_order=job.data.preserve_order,
            callbacks=callbacks,
        )
    return _finish(job, setup, run, result, ledger)


def build_soft_label_cache(job: DistillJob, out: str = "", views: int = 0) -> Cache:
    """Write (or finish) the soft-label cache of the job's images: K = `views` (default: the job's
    epochs) seeded views per image and the held-out slice, at `out` (default: teacher.cache, else
    storage_path/soft_labels/NAME)."""
    cluster.connect(job.ray, cluster.cpus_needed(job.train, job.teacher_pool))
    source, teacher, teacher_spec, _, size = resolve(job)
    out = out or job.teacher.cache or Storage(job.storage_path).path(f"soft_labels/{job.name}")
    views = views or job.train.epochs
    log.info(
        "soft-label cache of %d images × %d views (+ %d held out) with %s at %s",
        source.num_train,
        views,
        len(source.heldout_paths),
        teacher_spec,
        out,
    )
    with BuildProgress(
        source.num_train * views + len(source.heldout_paths), job.ray.progress_bars
    ) as progress:
        return build_cache(
            job,
            source,
            teacher,
            size,
            out,
            views,
            start_ledger(),
            start_clock(),
            cluster.has_gpus(),
            progress,
        )


def _finish(job: DistillJob, setup: Setup, run: Storage, result, ledger) -> DistillResult:
    """The student artifact, metrics.csv and metrics.json from the last checkpoint."""
    from safetensors.torch import load_file

    s, cv = job.student, setup.class_vectors
    with final_checkpoint(result) as directory:
        progress = read_progress(directory)
        student = new_student(job, setup.student_spec, cv.dim)
        student.load_trainable_state_dict(load_file(str(directory / TRAINABLE_FILE)))
    history, bad = progress["history"], bad_images(ledger)
    summary = {
        "name": job.name,
        "run_dir": run.root,
        "epochs": len(history),
        "resumes": progress["resumes"],
        "bad_images": history[-1]["bad_images"] if history else len(bad),
        "bad_image_examples": sorted(bad)[:20],
        "class_vectors_sha256": cv.sha256,
        "student_artifact": run.path("student.safetensors"),
        "final": history[-1] if history else {},
        "history": history,
    }
    info = StudentInfo(
        spec=setup.student_spec,
        teacher_dim=cv.dim,
        n_ctx=s.n_ctx,
        depth=s.depth,
        projector=s.projector,
        class_vectors_sha256=cv.sha256,
        edu_attention_width=student.edu_attention_width,
        extra={
            "job": job.name,
            "teacher": setup.teacher_spec,
            "epochs": len(history),
            "teacher_ref": {"kind": setup.teacher.kind, "source": setup.teacher.source},
            "class_vectors_templates": list(cv.templates),
            "vocabulary": job.teacher.vocabulary,
            "image_size": setup.image_size,
            "loss": to_dict(job)["loss"],
            "final_metrics": summary["final"],
        },
    )
    save_student(student, info, run.path("student"))
    run.write_text("metrics.json", json.dumps(summary, indent=1) + "\n")
    run.write_text("metrics.csv", _csv(history))
    log.info(
        "run %s done: %d epochs, student artifact %s, %d unreadable image(s) skipped",
        job.name,
        len(history),
        summary["student_artifact"],
        summary["bad_images"],
    )
    return DistillResult(
        run_dir=run.root, student_artifact=summary["student_artifact"], history=history, summary=summary
    )


def _csv(history: list) -> str:
    keys = list(dict.fromkeys(k for row in history for k in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    return out.getvalue()


# --- worker --------------------------------------------------------------------------------------------


def train_loop_per_worker(plan: WorkerPlan) -> None:
    """Ray Train worker: build, restore, then train and report epoch after epoch."""
    job, worker = plan.job, this_worker()
    class_vectors = plan.class_vectors.to(worker.device)
    torch.manual_seed(job.seed)
    student = new_student(job, plan.student_spec, class_vectors.shape[1], worker.device)
    optimizer = build_optimizer(student.trainable_parameters(), job.train)
    scheduler = build_scheduler(optimizer, job.train)
    tensors, state, progress = restore(plan.fingerprint, worker.rank)
    if tensors is not None:
        student.load_trainable_state_dict(tensors)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    model = prepare_model(student)
    rank0 = worker.rank == 0
    heldout = dataset_shard("heldout") if rank0 and plan.has_heldout else None
    reporter = Reporter(
        plan.board if rank0 else None,
        job.train.epochs,
        plan.steps_per_epoch,
        TensorBoardLog(run_storage(job)) if rank0 else None,
        job.train.log_every,
    )
    shard = dataset_shard("train")
    for epoch in range(progress["epoch"] + 1, job.train.epochs):
        lr_now = optimizer.param_groups[0]["lr"]
        if rank0:  # every worker has finished the previous epoch (its all-reduce); none reads this one yet
            set_epoch(plan.clock, epoch)
        stats, progress["step"] = train_one_epoch(
            model, shard, class_vectors, optimizer, plan, epoch, progress["step"], reporter
        )
        scheduler.step()
        metrics = {"epoch": epoch, "step": progress["step"], "lr": lr_now, **stats}
        if rank0:
            metrics["bad_images"] = len(bad_images(plan.ledger))
            if heldout is not None:
                scale = teacher_scale(job.loss, plan.teacher_logit_scale, student)
                metrics.update(heldout_metrics(student, heldout, class_vectors, scale))
            reporter.epoch_end(epoch, metrics)
        progress.update(epoch=epoch, history=progress["history"] + [metrics])
        report(
            metrics,
            progress,
            student.trainable_state_dict(),
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
            worker.rank,
        )
    reporter.close()


def train_one_epoch(
    model, shard, class_vectors, optimizer, plan: WorkerPlan, epoch: int, step: int, reporter: Reporter
) -> tuple[dict, int]:
    """One pass over this worker's shard; → (metrics averaged over all workers, global step).

    `images_per_s` counts all workers' images from the epoch's first batch on; `startup_s`, the wait
    for that first batch (the stream starting: executor, first tasks), is reported apart."""
    job, world = plan.job, this_worker().world
    precision = autocast_dtype(job.train.precision, class_vectors.device.type)
    totals = torch.zeros(4, dtype=torch.float64)  # Σ loss·n, Σ kd·n, Σ agreement·n, n
    start, first_batch_at = time.perf_counter(), None
    per_worker, audit = job.train.batch_size // world, IdAudit() if job.train.record_ids else None
    batches = shard.iter_torch_batches(
        batch_size=per_worker,
        drop_last=audit is None,
        local_shuffle_buffer_size=plan.local_shuffle,
        local_shuffle_seed=job.seed * 100_003 + epoch if plan.local_shuffle else None,
        collate_fn=audit.collate if audit else None,
    )
    for i, batch in enumerate(surface_user_errors(batches)):
        if audit is not None and not audit.keep(batch, per_worker):
            break  # the epoch's short last batch: recorded, not trained (as drop_last)
        first_batch_at = first_batch_at or time.perf_counter()
        images = to_model_input(batch["image"].to(class_vectors.device))
        out = distill_step(
            model,
            images,
            batch["teacher_feature"].to(class_vectors.device),
            class_vectors,
            optimizer,
            job.loss,
            plan.teacher_logit_scale,
            autocast=precision,
        )
        n = images.shape[0]
        totals += torch.tensor(
            [out["loss"] * n, out.get("kd", out["loss"]) * n, out["agreement"] * n, n], dtype=torch.float64
        )
        step += 1
        rate = totals[3].item() * world / max(time.perf_counter() - first_batch_at, 1e-9)
        reporter.step(epoch, i + 1, step, loss=out["loss"], agreement=out["agreement"], images_per_s=rate)
    end = time.perf_counter()
    if audit is not None:
        audit.write(run_storage(job), epoch, this_worker().rank)
    times = all_reduce(
        torch.tensor([end - (first_batch_at or end), (first_batch_at or end) - start], dtype=torch.float64),
        "max",
    )
    all_reduce(totals)
    n = max(float(totals[3]), 1.0)
    return {
        "loss": float(totals[0]) / n,
        "kd_loss": float(totals[1]) / n,
        "train_agreement": float(totals[2]) / n,
        "images": int(totals[3]),
        "images_per_s": float(totals[3]) / max(float(times[0]), 1e-9),
        "startup_s": float(times[1]),
        "epoch_seconds": float(times[0] + times[1]),
    }, step


@torch.no_grad()
def heldout_metrics(student, shard, class_vectors: torch.Tensor, scale: float) -> dict:
    """Label-free: % of held-out views where student and teacher agree on the top-1 class, and
    the mean KL(teacher ‖ student) at T = 1. Runs the unwrapped student (no DDP collectives)."""
    student.eval()
    agree = kl = count = 0.0
    for batch in shard.iter_torch_batches(batch_size=64):
        images = to_model_input(batch["image"].to(class_vectors.device))
        s_logits = student(images, class_vectors).float()
        t_logits = teacher_logits(batch["teacher_feature"].to(class_vectors.device), class_vectors, scale)
        agree += float((s_logits.argmax(-1) == t_logits.argmax(-1)).sum())
        kl += float(F.kl_div(F.log_softmax(s_logits, -1), F.softmax(t_logits, -1), reduction="sum"))
        count += images.shape[0]
    student.train()
    if not count:
        return {}
    return {
        "heldout_agreement": 100.0 * agree / count,
        "heldout_kl": kl / count,
        "heldout_images": int(count),
    }
