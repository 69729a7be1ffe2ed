"""Stage I's setup, the same on the driver, every Ray Train worker and in tests (no Ray):

    open_data(job)                 k-shot items of the training classes (seeded), all class names
    build_job_teacher(job, spec)   the job's teacher with freshly initialised prompts (seeded)
    new_training(job, data)        its PromptSRC training (`core.promptsrc.PromptSRCTraining`)
    kshot_batches(job, data, size) the batches of its epochs (`data.kshot.KShotBatches`)

Design decisions:
- The driver decodes the k-shot sample once before training: unreadable images (corrupt,
  truncated, not images, over `data.max_image_pixels`) are left out of it — their class trains on
  fewer shots — and counted exactly (`bad_images` in the metrics and teacher.json).
- A checkpoint is resumed only by a job with the same model, prompts, data, shots, seed, epochs
  and GPA (`TeacherData.fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import torch

from .config import TeacherJob
from .core.models import build_teacher
from .core.promptsrc import GaussianPromptAggregator, PromptSRCTraining, SCLWeights, frozen_text_targets
from .core.schedule import build_optimizer, build_scheduler
from .core.templates import resolve_templates
from .data.decode import DecodeOptions
from .data.fewshot import sample_k_shot
from .data.kshot import KShotBatches, readable_items
from .data.sources import open_splits, open_world
from .data.splits import num_base_classes
from .errors import ConfigError

log = logging.getLogger(__name__)


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


def build_job_teacher(job: TeacherJob, spec: str = "", device: str = "cpu"):
    """The job's Teacher with freshly initialised prompts (seeded: identical on every worker)."""
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


def new_training(job: TeacherJob, data: TeacherData, device="cpu") -> PromptSRCTraining:
    """PromptSRC for the job's freshly built teacher on `device`, at its first epoch."""
    t = job.train
    teacher = build_job_teacher(job, data.spec).to(device)
    optimizer = build_optimizer(teacher.prompt_parameters(), t)
    frozen_text = frozen_text_targets(
        teacher.text_encoder, data.train_classnames, resolve_templates(job.teacher.scl_templates)
    )
    return PromptSRCTraining(
        teacher,
        data.train_classnames,
        frozen_text.to(device),
        optimizer,
        build_scheduler(optimizer, t),
        GaussianPromptAggregator(t.epochs, t.gpa_mean, t.gpa_std),
        SCLWeights(text=t.text_loss_weight, image=t.image_loss_weight),
    )


def kshot_batches(job: TeacherJob, data: TeacherData, size: int) -> KShotBatches:
    """The job's batches of the k-shot items at `size` pixels."""
    return KShotBatches(
        data.items, job.train.batch_size, job.seed, size, job.data.crop_scale_min, DecodeOptions.of(job.data)
    )
