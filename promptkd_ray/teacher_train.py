"""Stage I: the PromptSRC teacher recipe (or a zero-shot teacher) → teacher artifact + class vectors.

The recipe, top to bottom:
    open_data              k-shot items of the training classes (seeded `sample_k_shot`), all class names
    train_prompts          plain PyTorch epochs of `promptsrc_step`, lr schedule, GPA (`promptsrc.py`);
                           it runs inside each Ray Train worker, and directly in tests
    train_loop_per_worker  Ray Train V2 worker: device, gradient all-reduce, per-epoch checkpoints,
                           and at the end the GPA teacher's artifact + class vectors for ALL classes
    run_teacher_job        driver: TorchTrainer.fit → copy the artifacts to storage_path/name/

Design decisions:
- Workers average the prompt gradients with one all_reduce per tensor after backward
  (`grad_hook`) instead of wrapping the teacher in DDP: only a few prompt tensors train, the
  frozen towers stay outside any wrapper, and one worker needs no process group at all.
- Every worker draws the same seeded permutation of the items per epoch and takes its strided
  share; crops/flips come from a generator seeded by (seed, epoch, rank): runs are reproducible.
- Few-shot data is small (16 × classes), so workers decode images themselves; no Ray Data.
- Rank 0 checkpoints each epoch: `prompts.safetensors` + `train_state.pt` (optimizer, GPA sums,
  epoch; tensor-only, read with weights_only=True). Re-running the job with the same name resumes.
- The final checkpoint carries `teacher.*` and `class_vectors.*` (computed on the worker's GPU);
  the driver copies them into the run folder. The zero-shot mode trains nothing and needs no Ray.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .promptsrc import GaussianPromptAggregator, SCLWeights, frozen_text_targets, lr_at_epoch, promptsrc_step
from .teacher_job import TeacherJob

log = logging.getLogger(__name__)

PROMPTS_FILE = "prompts.safetensors"
TRAIN_STATE_FILE = "train_state.pt"
ARTIFACT_FILES = ("teacher.safetensors", "teacher.json", "class_vectors.safetensors", "class_vectors.json")


@dataclass(frozen=True)
class TeacherResult:
    teacher: str  # teacher artifact (path or URI of teacher.safetensors)
    class_vectors: str  # class vectors of all classes (class_vectors.safetensors)
    metrics: dict  # final metrics (train loss/accuracy, test base accuracy when evaluated)


# --- data -------------------------------------------------------------------------------------------

def open_data(job: TeacherJob):
    """→ (DatasetSplits, k-shot training items, training class names in label order)."""
    from .data.benchmarks import load_dataset, load_split_json_dataset
    from .data.fewshot import sample_k_shot
    from .data.splits import num_base_classes

    d = job.data
    if d.source == "benchmark":
        dataset = load_dataset(d.dataset, d.root)
    else:
        dataset = load_split_json_dataset(d.root, d.dataset, d.image_folder, d.split_file, d.dataset)
    n = num_base_classes(dataset.num_classes) if d.classes == "base" else dataset.num_classes
    items = list(sample_k_shot(dataset.train, d.shots, job.seed, labels=range(n)))
    if not items:
        raise ValueError(f"{dataset.name} has no training images of its first {n} classes to learn from.")
    log.info("%s: %d-shot, %d training classes, %d images", dataset.summary(), d.shots, n, len(items))
    return dataset, items, list(dataset.classnames[:n])


def load_view(path: str, size: int, rng: Optional[np.random.Generator], crop_scale_min: float = 0.08) -> torch.Tensor:
    """A random resized crop of `crop_scale_min` … 1 of the area + flip (train, `rng` given) or the
    test transform → [3, size, size]."""
    from .data.transforms import CROP_SCALE, apply_view, load_rgb, sample_view, test_transform
    from .decode import read_bytes

    image = load_rgb(read_bytes(path))  # local file or URI (s3://, gs://, …)
    if rng is None:
        return test_transform(image, size)
    return apply_view(image, sample_view(image.width, image.height, rng, scale=(crop_scale_min, CROP_SCALE[1])), size)


def iter_batches(items: Sequence, batch_size: int, epoch: int, seed: int, size: int, rank: int = 0, world: int = 1,
                 crop_scale_min: float = 0.08):
    """This worker's (images [b, 3, size, size], labels [b]) batches of one epoch; drop_last when
    there is at least one full global batch, else one smaller batch."""
    order = np.random.default_rng([seed, epoch]).permutation(len(items))
    mine, per_worker = order[rank::world], batch_size // world
    rng = np.random.default_rng([seed, epoch, rank, 7])
    for b in range(max(len(order) // batch_size, 1)):
        chunk = [items[i] for i in mine[b * per_worker:(b + 1) * per_worker]]
        if not chunk:
            return
        images = torch.stack([load_view(item.path, size, rng, crop_scale_min) for item in chunk])
        yield images, torch.tensor([item.label for item in chunk])


# --- recipe (plain PyTorch) ----------------------------------------------------------------------

def build_job_teacher(job: TeacherJob, device: str = "cpu"):
    """The job's Teacher with freshly initialised prompts (seeded: identical on every worker)."""
    from .models import build_teacher

    m = job.teacher
    torch.manual_seed(job.seed)
    prompted = m.mode == "promptsrc"
    return build_teacher(m.spec, vision_depth=m.vision_depth if prompted else 0,
                         text_depth=m.text_depth if prompted else 0, n_ctx=m.n_ctx, ctx_init=m.ctx_init,
                         device=device)


def image_size(job: TeacherJob, teacher) -> int:
    return job.data.image_size or int(teacher.image_encoder.visual.image_size[0])


def train_prompts(teacher, items: Sequence, train_classnames: Sequence[str], job: TeacherJob, device="cpu",
                  rank: int = 0, world: int = 1, grad_hook: Optional[Callable] = None,
                  resume: Optional[dict] = None, on_epoch_end: Optional[Callable] = None,
                  state_out: Optional[dict] = None) -> dict:
    """Run the remaining epochs of PromptSRC on `items`; returns the GPA prompts (CPU tensors).
    `on_epoch_end(metrics, teacher, optimizer, gpa)` runs after each epoch (reporting, checkpoints);
    `state_out`, when given, receives the optimizer and the aggregator (for the final checkpoint)."""
    from .templates import resolve_templates

    t = job.train
    optimizer = torch.optim.SGD(teacher.prompt_parameters(), lr=t.lr, momentum=t.momentum,
                                weight_decay=t.weight_decay)
    gpa = GaussianPromptAggregator(t.epochs, t.gpa_mean, t.gpa_std)
    start = restore_train_state(resume, teacher, optimizer, gpa) if resume else 0
    if state_out is not None:
        state_out.update(optimizer=optimizer, gpa=gpa)
    frozen_text = frozen_text_targets(teacher.text_encoder, train_classnames,
                                      resolve_templates(job.teacher.scl_templates)).to(device)
    weights = SCLWeights(text=t.text_loss_weight, image=t.image_loss_weight)
    size = image_size(job, teacher)
    for epoch in range(start, t.epochs):
        lr = lr_at_epoch(epoch, t.lr, t.epochs, t.warmup_epochs, t.warmup_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sums, steps = defaultdict(float), 0
        for images, labels in iter_batches(items, t.batch_size, epoch, job.seed, size, rank, world,
                                           job.data.crop_scale_min):
            out = promptsrc_step(teacher, images.to(device), labels.to(device), train_classnames, frozen_text,
                                 optimizer, weights, grad_hook)
            steps += 1
            for key, value in out.items():
                sums[key] += value
            if rank == 0 and steps % t.log_every == 0:
                log.info("epoch %d step %d: loss %.4f", epoch + 1, steps, out["loss"])
        gpa.add(epoch + 1, teacher.prompt_state_dict())
        metrics = {"epoch": epoch + 1, "lr": lr, **{k: v / max(steps, 1) for k, v in sums.items()}}
        if rank == 0:
            log.info("epoch %d/%d: %s", epoch + 1, t.epochs, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        if on_epoch_end is not None:
            on_epoch_end(metrics, teacher, optimizer, gpa)
    return gpa.result()


@torch.no_grad()
def test_accuracy(teacher, items: Sequence, class_vectors: torch.Tensor, size: int, device="cpu",
                  batch_size: int = 64) -> float:
    """Top-1 accuracy (percent) of the teacher on `items` against `class_vectors` [N, d]."""
    teacher.eval()
    correct = 0
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        images = torch.stack([load_view(item.path, size, None) for item in chunk]).to(device)
        predicted = (teacher.encode_image(images) @ class_vectors.to(device).t()).argmax(-1).cpu()
        correct += int((predicted == torch.tensor([item.label for item in chunk])).sum())
    return 100.0 * correct / max(len(items), 1)


def save_train_state(directory: Path, teacher, optimizer, gpa: GaussianPromptAggregator, epoch: int) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous().cpu() for k, v in teacher.prompt_state_dict().items()}, str(directory / PROMPTS_FILE))
    torch.save({"optimizer": optimizer.state_dict(), "gpa": gpa.state_dict(), "epoch": epoch},
               directory / TRAIN_STATE_FILE)


def restore_train_state(directory: dict, teacher, optimizer, gpa: GaussianPromptAggregator) -> int:
    """Load prompts, optimizer and GPA sums from a checkpoint folder ({"dir": path}); → next epoch."""
    from safetensors.torch import load_file

    path = Path(directory["dir"])
    teacher.load_state_dict(load_file(str(path / PROMPTS_FILE)), strict=False)
    state = torch.load(path / TRAIN_STATE_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    gpa.load_state_dict(state["gpa"])
    log.info("resuming after epoch %d", state["epoch"])
    return int(state["epoch"])


def write_teacher_outputs(teacher, job: TeacherJob, classnames: Sequence[str], directory: Path, metrics: dict,
                          evaluate: Optional[Callable] = None):
    """teacher.{safetensors,json} + class_vectors.{safetensors,json} (all classes) into `directory`.
    `evaluate(class_vectors) -> dict`, when given, runs before teacher.json is written and its results
    are added to `metrics`, so the sidecar records them."""
    from .artifacts import TeacherInfo, save_teacher
    from .classvectors import compute_class_vectors, save_class_vectors

    m, d = job.teacher, job.data
    templates = m.zeroshot_templates if m.mode == "zeroshot" else "single"
    cv = compute_class_vectors(teacher, list(classnames), templates=templates, teacher_spec=m.spec)
    cv = dataclasses.replace(cv, meta={"teacher_artifact": "teacher", "job": job.name})
    if evaluate is not None:
        metrics.update(evaluate(cv))
    info = TeacherInfo(spec=m.spec, vision_depth=teacher.image_encoder.depth, text_depth=teacher.text_encoder.depth,
                       n_ctx=m.n_ctx, ctx_init=m.ctx_init,
                       extra={"recipe": m.mode, "job": job.name, "dataset": d.dataset, "shots": d.shots,
                              "classes": d.classes, "seed": job.seed, "epochs": job.train.epochs, "metrics": metrics})
    save_teacher(teacher, info, directory / "teacher")
    save_class_vectors(cv, directory / "class_vectors")
    return cv


def _test_evaluator(teacher, test_items: list, n: int, size: int, device="cpu") -> Optional[Callable]:
    """→ evaluate(cv) giving {"test_accuracy_train_classes": …} on the first n classes, or None without test items."""
    if not test_items:
        return None

    def evaluate(cv) -> dict:
        accuracy = test_accuracy(teacher, test_items, cv.vectors[:n], size, device)
        log.info("test accuracy on the %d training classes: %.2f", n, accuracy)
        return {"test_accuracy_train_classes": accuracy}
    return evaluate


# --- Ray Train ----------------------------------------------------------------------------------------

def _allreduce_hook(params: list, world: int) -> Callable[[], None]:
    import torch.distributed as dist

    def hook() -> None:
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(world)
    return hook


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: PromptSRC epochs with per-epoch checkpoints, then the final artifacts."""
    import ray.train
    import ray.train.torch

    job: TeacherJob = config["job"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    teacher = build_job_teacher(job).to(device)
    hook = _allreduce_hook(teacher.prompt_parameters(), world) if world > 1 else None
    checkpoint, state = ray.train.get_checkpoint(), {}
    with (checkpoint.as_directory() if checkpoint else tempfile.TemporaryDirectory()) as resume_dir:
        resume = {"dir": resume_dir} if checkpoint else None
        prompts = train_prompts(teacher, config["items"], config["train_classnames"], job, device, rank, world,
                                hook, resume, on_epoch_end=lambda *a: _report_epoch(*a, rank=rank), state_out=state)
    teacher.load_state_dict({k: v.to(device) for k, v in prompts.items()}, strict=False)
    _report_final(teacher, job, config, rank, device, state)


def _report_epoch(metrics: dict, teacher, optimizer, gpa, rank: int) -> None:
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_train_state(Path(tmp), teacher, optimizer, gpa, metrics["epoch"])
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _report_final(teacher, job: TeacherJob, config: dict, rank: int, device, state: dict) -> None:
    """Rank 0: evaluate (optional) and put teacher.* + class_vectors.* in the final checkpoint,
    beside the train state (so re-running a finished job only rewrites the outputs)."""
    import ray.train

    if rank != 0:
        ray.train.report({})
        return
    metrics = {"epoch": job.train.epochs, "final": 1}
    with tempfile.TemporaryDirectory() as tmp:
        save_train_state(Path(tmp), teacher, state["optimizer"], state["gpa"], job.train.epochs)
        recorded: dict = {}  # what teacher.json records (the test accuracy), also reported
        write_teacher_outputs(teacher, job, config["classnames"], Path(tmp), recorded, _test_evaluator(
            teacher, config.get("test_items"), len(config["train_classnames"]), image_size(job, teacher), device))
        metrics.update(recorded)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def connect_ray(job: TeacherJob) -> None:
    import os

    import ray

    if ray.is_initialized():
        return
    address = job.ray.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address)
        return
    need = int(job.train.num_workers * job.train.cpus_per_worker + 2.999)
    ray.init(address="local", num_cpus=job.ray.num_cpus or max(os.cpu_count() or 1, need),
             object_store_memory=job.ray.object_store_mb * 1024**2 or None, include_dashboard=False)


def run_teacher_job(job: TeacherJob) -> TeacherResult:
    """Run (or resume) a Stage I job; artifacts go to storage_path/name/."""
    from .runstore import RunStore

    store = RunStore(job.storage_path, job.name)
    dataset, items, train_classnames = open_data(job)
    n = len(train_classnames)
    test_items = [i for i in dataset.test if i.label < n] if job.data.eval_test else []
    if job.teacher.mode == "zeroshot":
        return _zeroshot(job, dataset, test_items, n, store)
    connect_ray(job)
    result = _build_trainer(job, store, {"job": job, "items": items, "train_classnames": train_classnames,
                                         "classnames": list(dataset.classnames), "test_items": test_items}).fit()
    if result.error is not None:
        raise result.error
    with result.checkpoint.as_directory() as directory, tempfile.TemporaryDirectory() as tmp:
        for name in ARTIFACT_FILES:
            Path(tmp, name).write_bytes(Path(directory, name).read_bytes())
        store.upload(tmp, "")
    return TeacherResult(store.uri("teacher.safetensors"), store.uri("class_vectors.safetensors"), dict(result.metrics))


def _build_trainer(job: TeacherJob, store, loop_config: dict):
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t = job.train
    use_gpu = t.use_gpu if t.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0
    return TorchTrainer(
        train_loop_per_worker, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker}),
        run_config=RunConfig(name=job.name, storage_path=store.storage_path,
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)))


def _zeroshot(job: TeacherJob, dataset, test_items: list, n: int, store) -> TeacherResult:
    """No training: a depth-0 teacher whose class vectors come from templates."""
    teacher = build_job_teacher(job)
    metrics: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_teacher_outputs(teacher, job, dataset.classnames, Path(tmp), metrics,
                              _test_evaluator(teacher, test_items, n, image_size(job, teacher)))
        store.upload(tmp, "")
    return TeacherResult(store.uri("teacher.safetensors"), store.uri("class_vectors.safetensors"), metrics)
