"""Build students and teachers from model specs (`MODEL[:PRETRAINED]`)."""

from __future__ import annotations

from .loading import ModelSpec, load_clip, quiet_open_clip, register_model_configs
from .prompted_text import DEFAULT_CTX_INIT
from .student import Student, clip_logit_scale
from .teacher import Teacher


def get_tokenizer(model_name: str):
    import open_clip

    register_model_configs()
    with quiet_open_clip():
        return open_clip.get_tokenizer(model_name)


def build_teacher(
    spec: "str | ModelSpec",
    vision_depth: int = 0,
    text_depth: int = 0,
    n_ctx: int = 4,
    ctx_init: str = DEFAULT_CTX_INIT,
    device: str = "cpu",
) -> Teacher:
    spec = ModelSpec.parse(spec) if isinstance(spec, str) else spec
    clip = load_clip(spec, device=device)
    teacher = Teacher(
        clip,
        get_tokenizer(spec.name),
        vision_depth=vision_depth,
        text_depth=text_depth,
        n_ctx=n_ctx,
        ctx_init=ctx_init,
    )
    teacher.spec = str(spec)
    return teacher.eval()


def build_student(
    spec: "str | ModelSpec",
    teacher_dim: int,
    n_ctx: int = 4,
    depth: int = 9,
    projector: str = "mlp2",
    device: str = "cpu",
    edu_attention_width: int = 0,
) -> Student:
    spec = ModelSpec.parse(spec) if isinstance(spec, str) else spec
    clip = load_clip(spec, device=device)
    student = Student(
        clip.visual,
        teacher_dim=teacher_dim,
        n_ctx=n_ctx,
        depth=depth,
        projector=projector,
        logit_scale=clip_logit_scale(clip),
        edu_attention_width=edu_attention_width,
    ).to(device)
    student.spec = str(spec)
    return student
