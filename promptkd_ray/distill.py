"""Stage II recipe: distil a large CLIP teacher into a small CLIP student's prompts, on Ray.

Read top to bottom:
    run_distillation(job)          driver: setup → datasets → TorchTrainer.fit() → student artifact
    train_loop_per_worker(config)  each Ray Train worker: student, optimiser, resume, epochs, reports
    train_one_epoch(...)           the worker's streaming shard → `step.distill_step`, batch by batch
    heldout_metrics(...)           label-free student–teacher agreement and KL on the held-out slice

Design decisions:
- The teacher never runs in the training loop: the pipeline (`pipeline.py`) brings each batch's
  views together with the teacher's normalised features of the same views; the trainer turns
  them into teacher logits with the class vectors (`step.distill_step`).
- DDP through Ray Train (`prepare_model`; gloo on CPU, NCCL on GPU). The global batch is split
  evenly over the workers and every worker takes the same number of steps (streaming split with
  equal shards, `drop_last`), so no collective ever waits for a worker that ran out of data.
- One report per epoch: metrics from every worker (losses and agreement all-reduced) and, from
  rank 0, a checkpoint with everything that trains plus the optimiser, scheduler and progress.
  A restart (worker failure, `FailureConfig`) or a re-run of the job with the same name and
  storage resumes after the last reported epoch, with the same history.
- The defaults are the authors' optimisation (SGD 0.005, cosine per epoch, 1 warm-up epoch at
  1e-5, batch 8): see `optim.py`. Evaluation on labels is not part of this recipe (evaluate.py).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import DistillJob, job_to_dict
from .decode import BadImageError, to_model_input
from .optim import build_optimizer, build_scheduler
from .pipeline import autocast_dtype, image_dataset, start_ledger, train_feed
from .runstore import (CHECKPOINT_PREFIX, RunStore, TensorBoardLog, check_fingerprint, load_train_state,
                       read_progress, save_train_state)
from .step import distill_step, teacher_logits

log = logging.getLogger(__name__)

FAULT_MARKER = "fault_injected"


@dataclass(frozen=True)
class DistillResult:
    run_dir: str  # storage_path/name (local path or URI)
    student_artifact: str  # the student's .safetensors (with its .json beside it)
    history: list  # one metrics dict per epoch
    summary: dict  # what metrics.json holds


# --- driver ----------------------------------------------------------------------------------------

def run_distillation(job: DistillJob) -> DistillResult:
    """Run (or resume) the Stage II job; returns where its artifacts are."""
    import yaml

    from .distill_setup import cluster_has_gpus, connect_ray, prepare, warn_missing_resources

    store = RunStore(job.storage_path, job.name)
    connect_ray(job)
    warn_missing_resources(job)
    prepared = prepare(job, store)
    previous = store.latest_progress()
    if previous is not None:
        check_fingerprint(previous, fingerprint(job, prepared), store.uri())
        log.info("run %s has a checkpoint after epoch %d: resuming", job.name, previous["epoch"])
    store.write_text("job.yaml", yaml.safe_dump(job_to_dict(job), sort_keys=False))
    gpus = cluster_has_gpus()
    ledger = start_ledger()
    datasets = {"train": train_feed(image_dataset(job, prepared.source, prepared.teacher, prepared.image_size,
                                                  "train", ledger, gpus))}
    if prepared.source.heldout_paths or prepared.source.heldout_fraction:
        log.info("teacher features of the held-out slice …")
        datasets["heldout"] = train_feed(image_dataset(job, prepared.source, prepared.teacher,
                                                       prepared.image_size, "heldout", ledger, gpus)).materialize()
    trainer = _build_trainer(job, prepared, datasets, ledger, store, gpus)
    log.info("run %s: %d epochs on %d images, %d worker(s), storage %s", job.name, job.train.epochs,
             prepared.source.num_train, job.train.num_workers, store.uri())
    result = trainer.fit()
    return _finish(job, prepared, store, result, ledger)


def fingerprint(job: DistillJob, prepared) -> dict:
    """What a checkpoint must have been made with to be resumed by this job."""
    s = job.student
    return {"student": prepared.student_spec, "n_ctx": s.n_ctx, "depth": s.depth, "projector": s.projector,
            "teacher": prepared.teacher_spec, "class_vectors_sha256": prepared.class_vectors.sha256}


def _build_trainer(job: DistillJob, prepared, datasets: dict, ledger, store: RunStore, gpus: bool):
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t = job.train
    use_gpu = gpus if t.use_gpu is None else t.use_gpu
    loop_config = {
        "job": job, "student_spec": prepared.student_spec, "class_vectors": prepared.class_vectors.vectors,
        "teacher_logit_scale": prepared.class_vectors.logit_scale, "fingerprint": fingerprint(job, prepared),
        "ledger": ledger, "steps_per_epoch": prepared.source.num_train // t.batch_size,
        "local_shuffle": 4 * t.batch_size if prepared.source.is_parquet and job.data.shuffle else None,
        "has_heldout": "heldout" in datasets,
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker, **t.resources_per_worker}),
        run_config=RunConfig(name=job.name, storage_path=store.storage_path,
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=t.checkpoints_to_keep)),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )


def _finish(job: DistillJob, prepared, store: RunStore, result, ledger) -> DistillResult:
    """The student artifact, metrics.csv and metrics.json from the last checkpoint."""
    import ray
    from safetensors.torch import load_file

    from .artifacts import StudentInfo, save_student
    from .models import build_student

    if result.checkpoint is None:
        raise RuntimeError(f"Run {job.name} ended without a checkpoint in {store.uri()}.")
    s, cv = job.student, prepared.class_vectors
    with result.checkpoint.as_directory() as directory:
        progress = read_progress(directory)
        student = build_student(prepared.student_spec, teacher_dim=cv.dim, n_ctx=s.n_ctx, depth=s.depth,
                                projector=s.projector)
        student.load_trainable_state_dict(load_file(str(Path(directory) / "student.safetensors")))
    history = progress["history"]
    bad = ray.get(ledger.items.remote())
    summary = {
        "name": job.name, "run_dir": store.uri(), "epochs": len(history), "resumes": progress["resumes"],
        "bad_images": history[-1]["bad_images"] if history else len(bad),
        "bad_image_examples": sorted(bad)[:20], "class_vectors_sha256": cv.sha256,
        "student_artifact": store.uri("student.safetensors"), "final": history[-1] if history else {},
        "history": history,
    }
    info = StudentInfo(spec=prepared.student_spec, teacher_dim=cv.dim, n_ctx=s.n_ctx, depth=s.depth,
                       projector=s.projector, class_vectors_sha256=cv.sha256,
                       extra={"job": job.name, "teacher": prepared.teacher_spec, "epochs": len(history),
                              "image_size": prepared.image_size, "loss": job_to_dict(job)["loss"],
                              "final_metrics": summary["final"]})
    with tempfile.TemporaryDirectory() as tmp:
        save_student(student, info, Path(tmp) / "student")
        Path(tmp, "metrics.json").write_text(json.dumps(summary, indent=1) + "\n")
        Path(tmp, "metrics.csv").write_text(_csv(history))
        store.upload(tmp, "")
    log.info("run %s done: %d epochs, student artifact %s, %d unreadable image(s) skipped", job.name,
             len(history), summary["student_artifact"], summary["bad_images"])
    return DistillResult(run_dir=store.uri(), student_artifact=summary["student_artifact"], history=history,
                         summary=summary)


def _csv(history: list) -> str:
    keys = list(dict.fromkeys(k for row in history for k in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    return out.getvalue()


# --- worker ----------------------------------------------------------------------------------------

def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: build, restore, then train and report epoch after epoch."""
    import ray
    import ray.train
    import ray.train.torch

    from .models import build_student

    job: DistillJob = config["job"]
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    device = ray.train.torch.get_device()
    store = RunStore(job.storage_path, job.name)
    class_vectors = config["class_vectors"].to(device)
    torch.manual_seed(job.seed)
    student = build_student(config["student_spec"], teacher_dim=class_vectors.shape[1], n_ctx=job.student.n_ctx,
                            depth=job.student.depth, projector=job.student.projector).to(device)
    lr = job.effective_lr
    optimizer = build_optimizer(student.trainable_parameters(), job.train, lr)
    scheduler = build_scheduler(optimizer, job.train, lr)
    progress = _restore(student, optimizer, scheduler, config["fingerprint"], rank)
    model = ray.train.torch.prepare_model(student)
    shard = ray.train.get_dataset_shard("train")
    heldout = ray.train.get_dataset_shard("heldout") if rank == 0 and config["has_heldout"] else None
    tensorboard = TensorBoardLog(store) if rank == 0 else None
    for epoch in range(progress["epoch"] + 1, job.train.epochs):
        lr_now = optimizer.param_groups[0]["lr"]
        stats, progress["step"] = train_one_epoch(model, shard, class_vectors, optimizer, job, config, epoch,
                                                  progress["step"], store)
        scheduler.step()
        metrics = {"epoch": epoch, "step": progress["step"], "lr": lr_now, **stats}
        if rank == 0:
            metrics["bad_images"] = ray.get(config["ledger"].count.remote())
            if heldout is not None:
                metrics.update(heldout_metrics(student, heldout, class_vectors, _teacher_scale(job, student, config)))
        progress.update(epoch=epoch, history=progress["history"] + [metrics])
        _report(metrics, progress, student, optimizer, scheduler, rank, tensorboard)
    if tensorboard is not None:
        tensorboard.close()


def _restore(student, optimizer, scheduler, fp: dict, rank: int) -> dict:
    import ray.train

    progress = {"epoch": -1, "step": 0, "history": [], "resumes": [], "fingerprint": fp}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return progress
    with checkpoint.as_directory() as directory:
        progress = load_train_state(directory, student, optimizer, scheduler, fp)
    progress["resumes"] = progress["resumes"] + [progress["epoch"] + 1]
    if rank == 0:
        log.info("resuming after epoch %d (step %d) from %s", progress["epoch"], progress["step"], checkpoint.path)
    return progress


def train_one_epoch(model, shard, class_vectors, optimizer, job: DistillJob, config: dict, epoch: int,
                    step: int, store: RunStore) -> tuple[dict, int]:
    """One pass over this worker's shard; → (metrics averaged over all workers, global step).

    `images_per_s` counts all workers' images over the whole epoch; `startup_s`, the wait for the
    first batch, is part of it (the pipeline starts its teacher actors again every epoch)."""
    import ray.train

    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    device = class_vectors.device
    precision = autocast_dtype(job.train.precision, device.type)
    totals = torch.zeros(4, dtype=torch.float64)  # Σ loss·n, Σ kd·n, Σ agreement·n, n
    start, first_batch_at = time.perf_counter(), None
    batches = shard.iter_torch_batches(batch_size=job.train.batch_size // world, drop_last=True,
                                       local_shuffle_buffer_size=config["local_shuffle"])
    for batch in _bad_images_surface(batches):
        first_batch_at = first_batch_at or time.perf_counter()
        _maybe_inject_fault(job, store, step + 1, rank)
        images = to_model_input(batch["image"].to(device))
        out = distill_step(model, images, batch["teacher_feature"].to(device), class_vectors, optimizer, job.loss,
                           config["teacher_logit_scale"], autocast_dtype=precision)
        n = images.shape[0]
        totals += torch.tensor([out["loss"] * n, out.get("kd", out["loss"]) * n, out["agreement"] * n, n],
                               dtype=torch.float64)
        step += 1
        if rank == 0 and step % job.train.log_every == 0:
            log.info("epoch %d step %d (%d/epoch): loss %.4f, agreement %.1f%%, %.1f img/s per worker", epoch, step,
                     config["steps_per_epoch"], out["loss"], out["agreement"], totals[3] / (time.perf_counter() - start))
    end = time.perf_counter()
    times = torch.tensor([end - start, (first_batch_at or end) - start], dtype=torch.float64)
    if world > 1:
        torch.distributed.all_reduce(totals)
        torch.distributed.all_reduce(times, op=torch.distributed.ReduceOp.MAX)
    n = max(float(totals[3]), 1.0)
    return {"loss": float(totals[0]) / n, "kd_loss": float(totals[1]) / n, "train_agreement": float(totals[2]) / n,
            "images": int(totals[3]), "images_per_s": float(totals[3]) / max(float(times[0]), 1e-9),
            "startup_s": float(times[1]), "epoch_seconds": float(times[0])}, step


def _bad_images_surface(batches):
    """Re-raise a bad image met upstream (data.on_bad_image: fail) as its own one-sentence error,
    not buried in Ray's wrapped task errors."""
    try:
        yield from batches
    except Exception as exc:
        found = re.search(r"BadImageError: (.* is not a readable image .*)", str(exc))
        if found is None:
            raise
        raise BadImageError(found.group(1).strip()) from None


def _teacher_scale(job: DistillJob, student, config: dict) -> float:
    return float(student.logit_scale) if job.loss.teacher_scale == "student" else config["teacher_logit_scale"]


@torch.no_grad()
def heldout_metrics(student, shard, class_vectors: torch.Tensor, teacher_scale: float) -> dict:
    """Label-free: % of held-out views where student and teacher agree on the top-1 class, and
    the mean KL(teacher ‖ student) at T = 1. Runs the unwrapped student (no DDP collectives)."""
    student.eval()
    agree = kl = count = 0.0
    for batch in shard.iter_torch_batches(batch_size=64):
        images = to_model_input(batch["image"].to(class_vectors.device))
        s_logits = student(images, class_vectors).float()
        t_logits = teacher_logits(batch["teacher_feature"].to(class_vectors.device), class_vectors, teacher_scale)
        agree += float((s_logits.argmax(-1) == t_logits.argmax(-1)).sum())
        kl += float(F.kl_div(F.log_softmax(s_logits, -1), F.softmax(t_logits, -1), reduction="sum"))
        count += images.shape[0]
    student.train()
    if not count:
        return {}
    return {"heldout_agreement": 100.0 * agree / count, "heldout_kl": kl / count, "heldout_images": int(count)}


def _report(metrics: dict, progress: dict, student, optimizer, scheduler, rank: int, tensorboard) -> None:
    """Every worker reports each epoch; rank 0 attaches the checkpoint and writes TensorBoard."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    epoch = metrics["epoch"]
    log.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
    tensorboard.scalars(metrics, step=epoch, prefix="distill/")
    tensorboard.flush()
    with tempfile.TemporaryDirectory() as tmp:
        save_train_state(tmp, student, optimizer, scheduler, progress)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"{CHECKPOINT_PREFIX}{epoch:03d}")


def _maybe_inject_fault(job: DistillJob, store: RunStore, step: int, rank: int) -> None:
    """Tests: the chosen worker exits hard before global step `kill_at_step`, once per run folder."""
    fault = job.fault_injection
    if not fault.kill_at_step or step != fault.kill_at_step or rank != fault.rank or store.exists(FAULT_MARKER):
        return
    store.write_text(FAULT_MARKER, f"worker rank {rank} exited before step {step}\n")
    log.warning("fault injection: worker rank %d exits before step %d", rank, step)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)
