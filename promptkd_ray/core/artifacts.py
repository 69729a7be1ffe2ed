"""Student and teacher artifacts: small, inspectable files (safetensors + a JSON sidecar), and
`ModelRef`, the one way to name a model that a process (a Ray actor, a worker) can build.

A student artifact holds only what trains (prompts, projector incl. BatchNorm running stats) and
the spec to rebuild the frozen backbone: `student.safetensors` + `student.json` with the student
model spec, n_ctx, depth, projector, teacher dim and the sha256 of the class vectors it was trained
against. A teacher artifact holds its prompt tensors and its model spec. Class vectors
(`classvectors.py`) use the same two-file layout and the same reader and writer.

Design decisions:
- Artifacts live on any storage (`promptkd_ray.storage`): a local path or a URI. Both files are
  written as one (`storage.write_files`): each goes to a temporary name, and only when both are
  complete are they moved into place, the tensors first and the sidecar last. A writer killed
  half-way leaves the previous artifact whole.
- The sidecar records the sha256 of the tensor file (`tensors_sha256`); a reader refuses a pair
  that does not match (changed by hand, mixed up, or caught between the two moves) with one
  sentence, so a mixed pair is never loaded. Sidecars written before this field are not checked.
- Loading never unpickles: safetensors and JSON only. A missing or foreign file is an
  `ArtifactError` sentence.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

from .. import storage
from ..errors import ArtifactError

FORMAT_VERSION = 1
MODEL_KINDS = ("student", "teacher", "zeroshot")
TENSORS_SHA256 = "tensors_sha256"  # sidecar field: sha256 of the tensor file's bytes


def artifact_paths(path: str) -> tuple[str, str]:
    """`NAME`, `NAME.safetensors` or `NAME.json` (local path or URI) → (NAME.safetensors, NAME.json)."""
    stem = str(path).removesuffix(".safetensors").removesuffix(".json")
    return stem + ".safetensors", stem + ".json"


def write_artifact(tensors: dict, sidecar: dict, path: str) -> str:
    """Write NAME.safetensors, then NAME.json (atomically each); → the safetensors path or URI."""
    from safetensors.torch import save

    tensors_path, sidecar_path = artifact_paths(path)
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    sidecar = {**sidecar, TENSORS_SHA256: hashlib.sha256(data).hexdigest()}
    text = json.dumps(sidecar, indent=2) + "\n"
    return storage.write_files({tensors_path: data, sidecar_path: text.encode("utf-8")})[0]


def read_sidecar(path: str, what: str, error=ArtifactError) -> dict:
    """The JSON sidecar of an artifact (both of its files must exist), or `error`."""
    tensors_path, sidecar_path = artifact_paths(path)
    if not (storage.exists(sidecar_path) and storage.exists(tensors_path)):
        raise error(f"{what.capitalize()} artifact {tensors_path} (with its .json sidecar) does not exist.")
    try:
        return json.loads(storage.read_bytes(sidecar_path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(
            f"The sidecar {sidecar_path} of {what} artifact {tensors_path} is not JSON ({exc})."
        ) from None


def read_tensors(path: str, what: str, error=ArtifactError) -> dict:
    """The tensors of an artifact's safetensors file, or `error`."""
    from safetensors.torch import load

    tensors_path, sidecar_path = artifact_paths(path)
    data = storage.read_bytes(tensors_path)
    expected = read_sidecar(path, what, error).get(TENSORS_SHA256)
    found = hashlib.sha256(data).hexdigest()
    if expected is not None and found != expected:
        raise error(
            f"{what.capitalize()} tensors {tensors_path} do not match the sha256 in {sidecar_path.rsplit('/', 1)[-1]} "
            f"(expected {str(expected)[:12]}…, found {found[:12]}…): the pair was changed, mixed up or not "
            f"completely written."
        )
    try:
        return load(data)
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise error(
            f"{what.capitalize()} tensors {tensors_path} are not readable ({type(exc).__name__}: {exc})."
        ) from exc


def _read_info(path: str, kind: str, info_cls):
    data = read_sidecar(path, kind)
    if data.get("kind") != kind:
        raise ArtifactError(
            f"{artifact_paths(path)[1]} is a {data.get('kind', 'unknown')!r} artifact, not a {kind}."
        )
    return info_cls(**{k: v for k, v in data.items() if k in info_cls.__dataclass_fields__})


@dataclass(frozen=True)
class StudentInfo:
    spec: str  # student model spec MODEL[:PRETRAINED]
    teacher_dim: int  # projector output dimension = class-vector dimension
    n_ctx: int  # prompt tokens per layer
    depth: int  # prompted layers
    projector: str  # "mlp2" | "linear" | "identity"
    class_vectors_sha256: Optional[str] = None  # the class vectors it was distilled against
    edu_attention_width: int = 0  # C of its ComKD-CLIP EduAttention (0 = none; older artifacts: none)
    extra: dict = field(default_factory=dict)  # provenance: job name, teacher, epochs, metrics


def save_student(student, info: StudentInfo, path: str) -> str:
    sidecar = {"format_version": FORMAT_VERSION, "kind": "student", **asdict(info)}
    return write_artifact(student.trainable_state_dict(), sidecar, str(path))


def read_student_info(path: str) -> StudentInfo:
    return _read_info(str(path), "student", StudentInfo)


def load_student(path: str, device: str = "cpu"):
    """Rebuild a `Student` (frozen backbone from its spec + trained tensors), in eval mode."""
    from .models import build_student

    info = read_student_info(path)
    student = build_student(
        info.spec,
        teacher_dim=info.teacher_dim,
        n_ctx=info.n_ctx,
        depth=info.depth,
        projector=info.projector,
        device=device,
        edu_attention_width=info.edu_attention_width,
    )
    try:
        student.load_trainable_state_dict(read_tensors(str(path), "student"))
    except ValueError as exc:
        raise ArtifactError(f"Student artifact {path} does not fit its own spec: {exc}") from exc
    return student.eval(), info


def load_edu_attention(path: str):
    """The EduAttention of a ComKD student artifact (eval mode, no gradients), from its tensors alone."""
    from .models.edu_attention import EduAttention

    info, prefix = read_student_info(path), "edu_attention."
    module = EduAttention(info.teacher_dim, info.edu_attention_width)
    state = {
        k[len(prefix) :]: v for k, v in read_tensors(str(path), "student").items() if k.startswith(prefix)
    }
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ArtifactError(
            f"Student artifact {path} lacks a fitting EduAttention ({str(exc).splitlines()[0]})."
        ) from None
    return module.eval().requires_grad_(False)


@dataclass(frozen=True)
class TeacherInfo:
    spec: str  # teacher model spec MODEL[:PRETRAINED]
    vision_depth: int = 0  # prompted vision layers (0 = zero-shot image tower)
    text_depth: int = 0  # prompted text layers (0 = zero-shot text tower)
    n_ctx: int = 4  # prompt tokens per layer
    ctx_init: str = "a photo of a"  # initial words of the text context
    extra: dict = field(default_factory=dict)  # provenance


def save_teacher(teacher, info: TeacherInfo, path: str) -> str:
    sidecar = {"format_version": FORMAT_VERSION, "kind": "teacher", **asdict(info)}
    return write_artifact(teacher.prompt_state_dict() or {"_empty": torch.zeros(0)}, sidecar, str(path))


def read_teacher_info(path: str) -> TeacherInfo:
    return _read_info(str(path), "teacher", TeacherInfo)


def load_teacher(path: str, device: str = "cpu"):
    """Rebuild a `Teacher` from its artifact (model spec + prompt tensors), in eval mode."""
    from .models import build_teacher

    info = read_teacher_info(path)
    teacher = build_teacher(
        info.spec,
        vision_depth=info.vision_depth,
        text_depth=info.text_depth,
        n_ctx=info.n_ctx,
        ctx_init=info.ctx_init,
        device=device,
    )
    state = {k: v for k, v in read_tensors(str(path), "teacher").items() if k != "_empty"}
    expected = teacher.prompt_state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in state):
        raise ArtifactError(
            f"Teacher artifact {artifact_paths(path)[0]} does not fit its own spec (prompt tensors differ)."
        )
    teacher.load_state_dict(state, strict=False)
    return teacher.eval(), info


@dataclass(frozen=True)
class ModelRef:
    """A model named so that any process can build it: a student artifact, a teacher artifact, or a
    zero-shot CLIP spec. Small and picklable: Ray actors receive this, never a model."""

    kind: str  # "student" (artifact path or URI), "teacher" (artifact path or URI) or "zeroshot" (spec)
    source: str  # the artifact, or MODEL[:PRETRAINED]

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model kind must be one of {MODEL_KINDS}, got {self.kind!r}.")

    def build(self, device: str = "cpu"):
        """The model (eval mode, with `.encode_image` giving normalised features)."""
        if self.kind == "student":
            return load_student(self.source, device=device)[0]
        if self.kind == "teacher":
            return load_teacher(self.source, device=device)[0]
        from .models import build_teacher

        return build_teacher(self.source, device=device)

    @property
    def spec(self) -> str:
        """The model spec MODEL[:PRETRAINED] (read from the artifact's sidecar)."""
        if self.kind == "student":
            return read_student_info(self.source).spec
        if self.kind == "teacher":
            return read_teacher_info(self.source).spec
        return self.source

    def classifier(self):
        """`logits(features, class_vectors)` of this model's features (what `build(...).encode_image`
        returns): cosine similarity, through the student's EduAttention when it has one (ComKD-CLIP).
        Only that small module is loaded, not the model."""
        from .metrics import cosine_logits

        if self.kind != "student" or not read_student_info(self.source).edu_attention_width:
            return cosine_logits
        edu = load_edu_attention(self.source)
        return lambda features, class_vectors: cosine_logits(edu(features, class_vectors), class_vectors)

    def image_size(self) -> int:
        """Input resolution from the model config, without building the model."""
        from .models.loading import vision_setting

        return vision_setting(self.spec, "image_size")
