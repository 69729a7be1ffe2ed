"""Stage II recipe: distil a large CLIP teacher into a small CLIP student's prompts, on Ray.

Read top to bottom:
    prepare(job, run)              setup (`distill_setup.py`): the stream, the models, class vectors
    run_distillation(job)          driver: setup → datasets → trainer.fit → student artifact + metrics
    build_cache(job)               driver: the teacher's features of K seeded views per image, once
    train_loop_per_worker(plan)    each Ray Train worker: student, optimiser, resume, epochs, reports
    train_one_epoch(...)           for each of the worker's batches: `core.step.distill_step`, meter
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
- With `teacher.cache` (built by `build_cache`, `orchestration/cache.py`) no
  teacher actor starts: epoch e replays view slot e mod K, re-rendered from the source images.
- With `teacher.ensemble` (further caches of other teachers, `orchestration/ensemble.py`) each batch
  carries every member's features and the step is `core.step.ensemble_step`: the KD target combines
  the members' distributions, each from its own class vectors (`core/ensemble.py`).
- Class vectors come from `teacher.class_vectors`, or are computed once by the setup and stored in
  the run folder (`distill_setup.py`).
- The defaults are the authors' optimisation (SGD 0.005, cosine per epoch, 1 warm-up epoch at
  1e-5, batch 8): see `core/schedule.py`. Evaluation on labels is not part of this recipe.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
from dataclasses import dataclass, replace
from typing import Sequence

import torch
import torch.nn.functional as F

from .config import DistillJob, to_dict
from .core.artifacts import save_student
from .core.ensemble import Teacher
from .core.schedule import build_optimizer, build_scheduler
from .core.step import autocast_dtype, distill_step, diverged, ensemble_step, teacher_logits, teacher_scale
from .data.decode import to_model_input
from .distill_setup import Setup, WorkerPlan, new_student, prepare, resolve, run_datasets, worker_plan
from .errors import DivergedError
from .orchestration import cluster
from .orchestration.audit import IdAudit
from .orchestration.bookkeeping import Bookkeeping
from .orchestration.cache import Cache, check_source, write_cache
from .orchestration.checkpoints import (
    TRAINABLE_FILE,
    anchored,
    check_resumable,
    final_checkpoint,
    read_progress,
    report,
    restore,
    run_storage,
)
from .orchestration.epochs import set_epoch
from .orchestration.meter import EpochMeter, ShardFeed
from .orchestration.progress import BuildProgress, Console, Reporter
from .orchestration.resident import ResidentFeed
from .orchestration.tensorboard import TensorBoardLog
from .orchestration.timeline import WORKER_FILE, Marks, phases
from .orchestration.trainer import dataset_shard, fit, prepare_model, this_worker
from .storage import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillResult:
    run_dir: str  # storage_path/name (local path or URI)
    student_artifact: str  # the student's .safetensors (with its .json beside it)
    history: list  # one metrics dict per epoch
    summary: dict  # what metrics.json holds


# --- driver --------------------------------------------------------------------------------------------


def run_distillation(job: DistillJob, callbacks: Sequence = ()) -> DistillResult:
    """Run (or resume) the Stage II job; returns where its artifacts are. `callbacks` go to Ray
    Train (a Tune trial's `TuneReportCallback` turns each epoch's report into a Tune result)."""
    import yaml

    job, marks = anchored(job), Marks()
    cluster.connect(job.ray, cluster.cpus_needed(job.train, job.teacher_pool))
    cluster.warn_missing_resources({**job.teacher_pool.resources, **job.train.resources_per_worker})
    run = run_storage(job)
    setup = prepare(job, run, cluster.has_gpus())
    check_resumable(run, setup.fingerprint(job))
    run.write_text("job.yaml", yaml.safe_dump(to_dict(job), sort_keys=False))
    books = Bookkeeping.start()
    marks.mark("setup")
    with contextlib.ExitStack() as running:  # the run's teacher actors end with it
        datasets, resident = run_datasets(job, setup, books, running)
        log.info(
            "run %s: %d epochs on %d images, %d worker(s), storage %s",
            job.name,
            job.train.epochs,
            setup.source.num_train,
            job.train.num_workers,
            run.root,
        )
        board = running.enter_context(Console("distill", job.ray.progress_bars))
        has_heldout = "heldout" in datasets or bool(resident and resident.heldout_paths)
        plan = worker_plan(job, setup, run, has_heldout, books, board)
        plan = replace(plan, resident=resident)
        marks.mark("fit")
        result = fit(
            train_loop_per_worker,
            plan,
            job,
            job.train,
            datasets,
            preserve_order=job.data.preserve_order,
            callbacks=callbacks,
        )
    marks.mark("fitted")
    return _finish(job, setup, run, result, books, marks)


def build_cache(job: DistillJob, out: str = "", views: int = 0) -> Cache:
    """Write (or finish) the soft-label cache of the job's images: K = `views` (default: the job's
    epochs) seeded views per image and the held-out slice, at `out` (default: teacher.cache, else
    storage_path/soft_labels/NAME)."""
    cluster.connect(job.ray, cluster.cpus_needed(job.train, job.teacher_pool))
    stream, teacher_spec, _ = resolve(job, cluster.has_gpus())
    source = stream.source
    check_source(source)
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
        return write_cache(stream, out, views, Bookkeeping.start(), progress)


def _finish(
    job: DistillJob, setup: Setup, run: Storage, result, books: Bookkeeping, marks: Marks
) -> DistillResult:
    """The student artifact, metrics.csv and metrics.json from the last checkpoint."""
    from safetensors.torch import load_file

    cv = setup.class_vectors
    with final_checkpoint(result) as directory:
        progress = read_progress(directory)
        student = new_student(job, setup.student_spec, cv.dim)
        student.load_trainable_state_dict(load_file(str(directory / TRAINABLE_FILE)))
    history, bad = progress["history"], books.bad_images()
    summary = {
        "name": job.name,
        "run_dir": run.root,
        "epochs": len(history),
        "resumes": progress["resumes"],
        "bad_images": history[-1]["bad_images"] if history else len(bad),
        "bad_image_examples": sorted(bad)[:20],
        "class_vectors_sha256": cv.sha256,
        **setup.recorded(job),
        "student_artifact": run.path("student.safetensors"),
        "final": history[-1] if history else {},
        "history": history,
    }
    info = setup.student_info(
        job,
        student,
        teacher=setup.teacher_spec,
        epochs=len(history),
        vocabulary=job.teacher.vocabulary,
        image_size=setup.stream.decode.size,
        loss=to_dict(job)["loss"],
        final_metrics=summary["final"],
    )
    save_student(student, info, run.path("student"))
    marks.mark("finished")
    worker_marks = json.loads(run.read_text(WORKER_FILE)) if run.is_file(WORKER_FILE) else {}
    summary["timeline"] = phases(marks.at, worker_marks)
    run.write_text("metrics.json", json.dumps(summary, indent=1) + "\n")
    run.write_text("metrics.csv", _csv(history))
    log.info(
        "run %s done: %d epochs, student artifact %s, %d unreadable image(s) skipped",
        job.name,
        len(history),
        summary["student_artifact"],
        summary["bad_images"],
    )
    if summary["timeline"]:
        log.info("run %s: seconds per phase %s", job.name, summary["timeline"])
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
    worker, marks = this_worker(), Marks()
    class_vectors = plan.class_vectors.to(worker.device)
    if plan.ensemble is not None:
        plan = replace(plan, ensemble=plan.ensemble.to(worker.device))
    torch.manual_seed(plan.seed)
    student = new_student(plan, plan.student_spec, class_vectors.shape[1], worker.device)
    optimizer = build_optimizer(student.trainable_parameters(), plan.train)
    scheduler = build_scheduler(optimizer, plan.train)
    tensors, state, progress = restore(plan.fingerprint, worker.rank)
    if tensors is not None:
        student.load_trainable_state_dict(tensors)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    model = prepare_model(student)
    rank0 = worker.rank == 0
    reporter = Reporter(
        plan.board if rank0 else None,
        plan.train.epochs,
        plan.steps_per_epoch,
        TensorBoardLog(Storage(plan.run)) if rank0 else None,
        plan.train.log_every,
    )
    if plan.resident is not None:
        feed = ResidentFeed.start(plan.resident, plan.batches.size, worker)
    else:
        feed = ShardFeed(dataset_shard("train"), plan.batches)
    heldout = heldout_slice(plan, feed) if rank0 and plan.has_heldout else None
    marks.mark("ready")
    for epoch in range(progress["epoch"] + 1, plan.train.epochs):
        lr_now = optimizer.param_groups[0]["lr"]
        if rank0:  # every worker has finished the previous epoch (its all-reduce); none reads this one yet
            set_epoch(plan.books.clock, epoch)
        stats, progress["step"] = train_one_epoch(
            model, feed, class_vectors, optimizer, plan, epoch, progress["step"], reporter
        )
        scheduler.step()
        marks.mark(f"trained_{epoch}")
        metrics = {"epoch": epoch, "step": progress["step"], "lr": lr_now, **stats}
        if rank0:
            metrics["bad_images"] = len(plan.books.bad_images())
            if heldout is not None:
                scale = teacher_scale(plan.loss, plan.teacher_logit_scale, student)
                metrics.update(heldout_metrics(student, heldout(), class_vectors, scale))
            reporter.epoch_end(epoch, metrics)
        marks.mark(f"scored_{epoch}")
        progress.update(epoch=epoch, history=progress["history"] + [metrics])
        report(
            metrics,
            progress,
            student.trainable_state_dict(),
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
            worker.rank,
        )
        marks.mark(f"reported_{epoch}")
    reporter.close()
    if rank0:
        Storage(plan.run).write_text(WORKER_FILE, marks.to_json())


def train_one_epoch(
    model, feed, class_vectors, optimizer, plan: WorkerPlan, epoch: int, step: int, reporter: Reporter
) -> tuple[dict, int]:
    """One pass over this worker's batches of `epoch` (`feed`: its shard of the stream, or its resident
    images); → (metrics averaged over all workers, global step)."""
    worker, device = this_worker(), class_vectors.device
    precision = autocast_dtype(plan.train.precision, device.type)
    audit = IdAudit() if plan.train.record_ids else None
    meter = EpochMeter(worker.world)
    for i, batch in enumerate(meter.timed(feed.epoch_batches(epoch, audit))):
        images = to_model_input(batch["image"].to(device))
        features = batch["teacher_feature"].to(device)
        try:
            if plan.ensemble is None:
                out = distill_step(
                    model,
                    images,
                    features,
                    class_vectors,
                    optimizer,
                    plan.loss,
                    plan.teacher_logit_scale,
                    precision,
                )
            else:  # a teacher ensemble: the job's teacher, then each further cache's (`teacher_feature_i`)
                teachers = plan.ensemble.teachers(
                    batch, Teacher(features, class_vectors, plan.teacher_logit_scale)
                )
                out = ensemble_step(
                    model,
                    images,
                    teachers,
                    plan.ensemble.combine,
                    class_vectors,
                    optimizer,
                    plan.loss,
                    precision,
                )
        except DivergedError as exc:
            where = f"epoch {epoch + 1} of {plan.train.epochs}, step {i + 1} of worker {worker.rank}"
            raise diverged(exc.loss, exc.terms, where) from None
        meter.add(out, images.shape[0])
        step += 1
        reporter.step(
            epoch, i + 1, step, loss=out["loss"], agreement=out["agreement"], images_per_s=meter.images_per_s
        )
    if audit is not None:
        audit.write(Storage(plan.run), epoch, worker.rank)
    return meter.result(), step


@torch.no_grad()
def heldout_slice(plan: WorkerPlan, feed):
    """Rank 0's held-out slice: a function giving its batches each epoch (the materialised dataset's,
    or the resident feed's, built once)."""
    if plan.resident is not None:
        batches = feed.heldout_batches()
        return lambda: batches
    shard = dataset_shard("heldout")
    return lambda: shard.iter_torch_batches(batch_size=64)


def heldout_metrics(student, batches, class_vectors: torch.Tensor, scale: float) -> dict:
    """Label-free: % of held-out views where student and teacher agree on the top-1 class, and
    the mean KL(teacher ‖ student) at T = 1. Runs the unwrapped student (no DDP collectives)."""
    student.eval()
    agree = kl = count = 0.0
    for batch in batches:
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
