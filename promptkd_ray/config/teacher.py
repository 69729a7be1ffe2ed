"""Stage I jobs (`kind: teacher`): the teacher recipe's settings.

Defaults are PromptKD's ViT-L/14 teacher recipe: PromptSRC with vision and text depth 9, n_ctx 4,
16 shots of the base classes, SGD lr 0.005 at batch 8, 20 epochs (1 warm-up at 1e-5), cosine,
GPA N(15, 1), L_SCL weights 25 (text) and 10 (image). The optimisation, workers and images keys
are the ones Stage II jobs have (`config.sections`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .loader import choice, section, show_value, spec_field
from .sections import (
    ImagesConfig,
    JobBase,
    OptimConfig,
    Problems,
    RayConfig,
    WorkersConfig,
    templates_ok,
    training_job_checks,
)

TEACHER_MODES = ("promptsrc", "zeroshot")


@dataclass(frozen=True)
class TeacherModelConfig:
    spec: str = (
        spec_field()
    )  # base CLIP as MODEL[:PRETRAINED], e.g. ViT-L-14-quickgelu:/data/clip/ViT-L-14.pt
    mode: str = choice(*TEACHER_MODES)  # promptsrc = learn IVLP prompts; zeroshot = no training, templates
    vision_depth: int = 9  # prompted image-tower layers (promptsrc)
    text_depth: int = 9  # prompted text-tower layers (promptsrc; ≥ 1)
    n_ctx: int = 4  # prompt tokens per layer, both towers
    ctx_init: str = "a photo of a"  # initial words of the text context (its token count should be n_ctx)
    scl_templates: str = "imagenet60"  # templates of the frozen text targets of L_SCL (authors: the 60)
    zeroshot_templates: str = "single"  # zeroshot mode: templates of the class vectors (single | imagenet60)


@dataclass(frozen=True)
class FewShotDataConfig(ImagesConfig):
    source: str = choice("benchmark", "split_json", "toyworld")  # how to find the labelled images
    shots: int = 16  # labelled images per training class (authors: 16)
    classes: str = choice("base", "all")  # base = the first ⌈N/2⌉ labels (base-to-novel); all = cross-dataset
    eval_test: bool = True  # score the final teacher on the test images of its training classes


@dataclass(frozen=True)
class TeacherTrainConfig(WorkersConfig, OptimConfig):
    log_every: int = 20  # TensorBoard gets the step loss/accuracy every this many global steps (rank 0)
    gpa_mean: float = 15.0  # Gaussian Prompt Aggregation: mean epoch μ (1-based)
    gpa_std: float = 1.0  # GPA: standard deviation σ in epochs
    text_loss_weight: float = 25.0  # L_SCL: L1(prompted text, frozen text) weight
    image_loss_weight: float = 10.0  # L_SCL: L1(prompted image, frozen image) weight


@dataclass(frozen=True)
class TeacherJob(JobBase):
    kind: str = choice("teacher")  # Stage I, run by `promptkd-ray teacher`
    seed: int = 1  # seed of the k-shot sample, the prompt init and the batch order (authors: 1, 2, 3)
    teacher: TeacherModelConfig = section(TeacherModelConfig)  # model and prompts
    data: FewShotDataConfig = section(FewShotDataConfig)  # labelled few-shot data
    train: TeacherTrainConfig = section(TeacherTrainConfig)  # optimiser, schedule, GPA, workers
    ray: RayConfig = section(RayConfig)  # where Ray runs


def teacher_checks(job: TeacherJob) -> Problems:
    m = job.teacher
    problems = Problems()
    training_job_checks(job, problems)
    problems.need(
        bool(m.spec or job.data.source == "toyworld"), "teacher.spec", "must be set (MODEL[:PRETRAINED])."
    )
    if m.mode == "promptsrc":  # PromptSRC prompts both towers
        problems.at_least("teacher", m, text_depth=1, vision_depth=0, n_ctx=1)
    problems.at_least("data", job.data, shots=1)
    problems.need(job.train.gpa_std > 0, "train.gpa_std", f"must be > 0, got {job.train.gpa_std}.")
    problems.at_least("train", job.train, text_loss_weight=0, image_loss_weight=0)
    for name in ("scl_templates", "zeroshot_templates"):
        value = getattr(m, name)
        problems.need(
            templates_ok(value),
            f"teacher.{name}",
            f"must be single, imagenet60 or one template with one '{{}}', got {show_value(value)}.",
        )
    return problems
