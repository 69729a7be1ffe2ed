"""Student and teacher artifacts: small, inspectable files (safetensors + a JSON sidecar).

A student artifact holds only what trains (prompts, projector incl. BatchNorm running stats) and
the spec to rebuild the frozen backbone: `student.safetensors` + `student.json` with the student
model spec, n_ctx, depth, projector, teacher dim, logit scale and the sha256 of the class vectors
it was trained against. A teacher artifact holds its prompt tensors and its model spec.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

FORMAT_VERSION = 1


class ArtifactError(ValueError):
    """A missing or inconsistent student / teacher artifact."""


@dataclass(frozen=True)
class StudentInfo:
    spec: str  # student model spec MODEL[:PRETRAINED]
    teacher_dim: int  # projector output dimension = class-vector dimension
    n_ctx: int  # prompt tokens per layer
    depth: int  # prompted layers
    projector: str  # "mlp2" | "linear" | "identity"
    class_vectors_sha256: Optional[str] = None  # the class vectors it was distilled against
    extra: dict = field(default_factory=dict)  # provenance: job name, epochs, metrics


def _paths(path: "str | Path") -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def save_student(student, info: StudentInfo, path: "str | Path") -> Path:
    from safetensors.torch import save_file

    tensors_path, sidecar = _paths(path)
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in student.trainable_state_dict().items()}
    save_file(state, str(tensors_path))
    sidecar.write_text(json.dumps({"format_version": FORMAT_VERSION, "kind": "student", **asdict(info)},
                                  indent=2) + "\n")
    return tensors_path


def read_student_info(path: "str | Path") -> StudentInfo:
    tensors_path, sidecar = _paths(path)
    if not sidecar.is_file() or not tensors_path.is_file():
        raise ArtifactError(f"Student artifact {tensors_path} (with its .json sidecar) does not exist.")
    data = json.loads(sidecar.read_text())
    if data.get("kind") != "student":
        raise ArtifactError(f"{sidecar} is a {data.get('kind', 'unknown')!r} artifact, not a student.")
    fields = set(StudentInfo.__dataclass_fields__)
    return StudentInfo(**{k: v for k, v in data.items() if k in fields})


def load_student(path: "str | Path", device: str = "cpu"):
    """Rebuild a `Student` (frozen backbone from its spec + trained tensors), in eval mode."""
    from safetensors.torch import load_file

    from .models import build_student

    info = read_student_info(path)
    student = build_student(info.spec, teacher_dim=info.teacher_dim, n_ctx=info.n_ctx, depth=info.depth,
                            projector=info.projector, device=device)
    try:
        student.load_trainable_state_dict(load_file(str(_paths(path)[0])))
    except ValueError as exc:
        raise ArtifactError(f"Student artifact {path} does not fit its own spec: {exc}") from exc
    return student.eval(), info


@dataclass(frozen=True)
class TeacherInfo:
    spec: str  # teacher model spec MODEL[:PRETRAINED]
    vision_depth: int = 0  # prompted vision layers (0 = zero-shot image tower)
    text_depth: int = 0  # prompted text layers (0 = zero-shot text tower)
    n_ctx: int = 4  # prompt tokens per layer
    ctx_init: str = "a photo of a"  # initial words of the text context
    extra: dict = field(default_factory=dict)  # provenance


def save_teacher(teacher, info: TeacherInfo, path: "str | Path") -> Path:
    from safetensors.torch import save_file

    tensors_path, sidecar = _paths(path)
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous().cpu() for k, v in teacher.prompt_state_dict().items()}
    save_file(state or {"_empty": torch.zeros(0)}, str(tensors_path))
    sidecar.write_text(json.dumps({"format_version": FORMAT_VERSION, "kind": "teacher", **asdict(info)},
                                  indent=2) + "\n")
    return tensors_path


def load_teacher(path: "str | Path", device: str = "cpu"):
    """Rebuild a `Teacher` from its artifact (model spec + prompt tensors), in eval mode."""
    from safetensors.torch import load_file

    from .models import build_teacher

    tensors_path, sidecar = _paths(path)
    if not sidecar.is_file() or not tensors_path.is_file():
        raise ArtifactError(f"Teacher artifact {tensors_path} (with its .json sidecar) does not exist.")
    data = json.loads(sidecar.read_text())
    if data.get("kind") != "teacher":
        raise ArtifactError(f"{sidecar} is a {data.get('kind', 'unknown')!r} artifact, not a teacher.")
    info = TeacherInfo(**{k: v for k, v in data.items() if k in TeacherInfo.__dataclass_fields__})
    teacher = build_teacher(info.spec, vision_depth=info.vision_depth, text_depth=info.text_depth,
                            n_ctx=info.n_ctx, ctx_init=info.ctx_init, device=device)
    state = {k: v for k, v in load_file(str(tensors_path)).items() if k != "_empty"}
    expected = teacher.prompt_state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in state):
        raise ArtifactError(f"Teacher artifact {tensors_path} does not fit its own spec (prompt tensors differ).")
    teacher.load_state_dict(state, strict=False)
    return teacher.eval(), info
