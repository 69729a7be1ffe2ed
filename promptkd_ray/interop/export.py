"""Official checkpoints → our artifacts (`promptkd-ray import`), verified by a round trip.

Design decisions:
- Our artifacts store only what trains and rebuild the frozen backbone from a model spec
  `MODEL:BASE_CLIP_FILE` (`promptkd_ray.core.artifacts`). The official checkpoints do hold the whole
  frozen towers, but those are exactly the base OpenAI CLIP the authors started from (their
  `./clip/ViT-B-16.pt`, `ViT-L-14.pt`). So an import takes that base file, checks that the
  checkpoint's towers equal it (fp16 rounding allowed) — a user cannot silently pair prompts with
  the wrong backbone — and writes the standard artifacts. No 300 MB copy of a backbone is made.
- MODEL is the open_clip config whose shapes equal the base file's (e.g. `ViT-B-16-quickgelu`,
  `ViT-L-14-quickgelu`), found among the registered configs, or given by the user and checked.
- After writing, the artifact is loaded the way every consumer loads it and compared with the
  official module on random images (and the class texts): max |Δ| must stay ≤ 1e-4.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..core.artifacts import StudentInfo, TeacherInfo, load_student, load_teacher, save_student, save_teacher
from ..core.classvectors import ClassVectors, save_class_vectors
from ..core.models.loading import ModelSpec, register_model_configs
from .checkpoint import OfficialCheckpointError, vision_arch
from .student import load_official_student
from .teacher import AUTHORS_CTX_INIT, load_official_teacher, model_config, read_base_clip, text_arch

log = logging.getLogger(__name__)
ROUND_TRIP_TOL = 1e-4


def split_clip_argument(value: str) -> tuple[Optional[str], Path]:
    """ "PATH" or "MODEL:PATH" → (MODEL or None, absolute PATH)."""
    if os.path.isfile(value):
        return None, Path(value).resolve()
    spec = ModelSpec.parse(value)
    if spec.pretrained is None or not os.path.isfile(spec.pretrained):
        raise OfficialCheckpointError(
            f"Base CLIP {value!r} is neither a file nor MODEL:FILE with an existing file."
        )
    return spec.name, Path(spec.pretrained).resolve()


def base_clip_config(base: dict, source, head_width: int) -> dict:
    """open_clip config dict of a full OpenAI-format CLIP state dict."""
    vision = vision_arch(base, "visual.", source, head_width)
    vocab = int(base["token_embedding.weight"].shape[0]) if "token_embedding.weight" in base else 0
    text = text_arch(base, source, head_width, prefix="", ctx_key="prompt_learner.ctx", vocab_size=vocab)
    return model_config(vision, text)


def _same_config(a: dict, b: dict) -> bool:
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    if set(a) - {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg"}:
        return False
    try:
        return (
            a["embed_dim"] == b["embed_dim"]
            and bool(a.get("quick_gelu")) == bool(b.get("quick_gelu"))
            and CLIPVisionCfg(**a["vision_cfg"]) == CLIPVisionCfg(**b["vision_cfg"])
            and CLIPTextCfg(**a["text_cfg"]) == CLIPTextCfg(**b["text_cfg"])
        )
    except (KeyError, TypeError):
        return False


def resolve_model_name(given: Optional[str], config: dict, clip_path) -> str:
    """The registered open_clip model whose config equals `config` (checked when given)."""
    import open_clip

    register_model_configs()
    if given is not None:
        if not _same_config(open_clip.get_model_config(given) or {}, config):
            raise OfficialCheckpointError(
                f"The open_clip config {given!r} does not match the shapes of {clip_path}."
            )
        return given
    for name in sorted(open_clip.list_models()):
        if _same_config(open_clip.get_model_config(name), config):
            return name
    raise OfficialCheckpointError(
        f"No registered open_clip config matches {clip_path} ({config['vision_cfg']}); "
        "pass MODEL:FILE with a config that does."
    )


def check_same_weights(ours: dict, base: dict, what: str, source, clip_path) -> None:
    """Every tensor of `ours` must equal the base file's (fp16 rounding allowed)."""
    for key, value in ours.items():
        other = base.get(key)
        if (
            other is None
            or other.shape != value.shape
            or not torch.allclose(value.float(), other.float(), rtol=1e-3, atol=1e-5)
        ):
            raise OfficialCheckpointError(
                f"The {what} of {source} differs from base CLIP {clip_path} at {key}; "
                "pass the CLIP file it was trained from."
            )


def import_student(
    checkpoint, student_clip: str, out, head_width: int = 64, class_vectors_sha256: Optional[str] = None
) -> Path:
    """Official PromptKD student → our student artifact `out`(.safetensors/.json)."""
    official = load_official_student(checkpoint, head_width=head_width)
    model, clip_path = split_clip_argument(student_clip)
    base = read_base_clip(clip_path)
    model = resolve_model_name(model, base_clip_config(base, clip_path, head_width), clip_path)
    visual = {"visual." + k: v for k, v in official.student.image_encoder.visual.state_dict().items()}
    check_same_weights(visual, base, "image tower", checkpoint, clip_path)
    arch = official.arch
    info = StudentInfo(
        spec=f"{model}:{clip_path}",
        teacher_dim=official.teacher_dim,
        n_ctx=arch.n_ctx or 4,
        depth=arch.depth,
        projector="mlp2",
        class_vectors_sha256=class_vectors_sha256,
        extra={
            "imported_from": str(checkpoint),
            "logit_scale": official.logit_scale,
            "vision_arch": arch.as_dict(),
        },
    )
    path = save_student(official.student, info, out)
    student, _ = load_student(path)
    images = torch.randn(2, 3, arch.image_size, arch.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        delta = (student.encode_image(images) - official.encode_image(images)).abs().max().item()
    _check_round_trip(delta, path)
    return path


def import_teacher(
    checkpoint,
    clip_weights: str,
    classnames: Sequence[str],
    out_dir,
    head_width: int = 64,
) -> tuple[Path, Path]:
    """Official PromptSRC teacher → our teacher artifact and its class vectors for `classnames`
    (OUT_DIR/teacher.* and OUT_DIR/class_vectors.*)."""
    model, clip_path = split_clip_argument(clip_weights)
    base = read_base_clip(clip_path)
    official = load_official_teacher(
        checkpoint, base, classnames, head_width=head_width, clip_source=str(clip_path)
    )
    teacher = official.teacher
    if teacher.text_encoder.n_ctx < len(AUTHORS_CTX_INIT.split()):
        raise OfficialCheckpointError(
            f"{checkpoint} has {teacher.text_encoder.n_ctx} text prompt tokens; "
            "importing teachers with fewer than 4 is not supported."
        )
    model = resolve_model_name(model, base_clip_config(base, clip_path, head_width), clip_path)
    towers = {"visual." + k: v for k, v in teacher.image_encoder.visual.state_dict().items()}
    towers.update(
        {
            k: v
            for k, v in teacher.text_encoder.state_dict().items()
            if not k.startswith(("ctx", "deep_prompts"))
        }
    )
    check_same_weights(towers, base, "frozen towers", checkpoint, clip_path)
    info = TeacherInfo(
        spec=f"{model}:{clip_path}",
        vision_depth=teacher.image_encoder.depth,
        text_depth=teacher.text_encoder.depth,
        n_ctx=teacher.text_encoder.n_ctx,
        ctx_init=AUTHORS_CTX_INIT,
        extra={"imported_from": str(checkpoint), "logit_scale": official.logit_scale},
    )
    out_dir = Path(out_dir)
    teacher_path = save_teacher(teacher, info, out_dir / "teacher")
    vectors = official.class_vectors()
    cv = ClassVectors(
        vectors=vectors,
        classnames=tuple(classnames),
        teacher=info.spec,
        templates=("prompted",),
        logit_scale=official.logit_scale,
        meta={"teacher_artifact": str(teacher_path), "imported_from": str(checkpoint)},
    )
    cv_path = save_class_vectors(cv, out_dir / "class_vectors")
    _verify_teacher(teacher_path, official, vectors)
    return teacher_path, cv_path


def _verify_teacher(teacher_path: Path, official, vectors: torch.Tensor) -> None:
    from ..core.classvectors import compute_class_vectors

    loaded, _ = load_teacher(teacher_path)
    size = loaded.image_encoder.visual.image_size[0]
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        delta = (loaded.encode_image(images) - official.encode_image(images)).abs().max().item()
    recomputed = compute_class_vectors(loaded, list(official.classnames)).vectors
    _check_round_trip(max(delta, (recomputed - vectors).abs().max().item()), teacher_path)


def _check_round_trip(delta: float, path) -> None:
    if delta > ROUND_TRIP_TOL:
        raise OfficialCheckpointError(
            f"The artifact {path} does not reproduce the official model (max |Δ| {delta:.2e})."
        )
    log.info("%s reproduces the official model: max |Δ| = %.2e", path, delta)
