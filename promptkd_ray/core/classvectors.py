"""Class vectors: the teacher's L2-normalised text features W [N, d], computed once and stored.

The student never runs a text encoder: its classifier is W. An artifact is two files beside each
other (local or on a URI, written like every artifact: `artifacts.write_artifact`),
`NAME.safetensors` (one tensor, "class_vectors", float32) and `NAME.json`, the sidecar: class
names, teacher spec, templates, logit scale, dim, and a sha256 over the tensor's bytes and the
class names. Loading verifies all of it; every mismatch is a `ClassVectorsError` sentence.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import torch

from ..errors import ClassVectorsError
from .artifacts import artifact_paths, read_sidecar, read_tensors, write_artifact

FORMAT_VERSION = 1
TENSOR_KEY = "class_vectors"


@dataclass(frozen=True)
class ClassVectors:
    vectors: torch.Tensor  # [N, d] float32, rows L2-normalised
    classnames: tuple[str, ...]  # index = label
    teacher: str  # teacher spec that made them
    templates: tuple[str, ...]  # templates used, or ("prompted",) for a prompted text tower
    logit_scale: float  # the teacher's exp(logit_scale)
    meta: dict = field(default_factory=dict)  # free-form provenance (e.g. teacher artifact path)

    @property
    def num_classes(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def sha256(self) -> str:
        return content_hash(self.vectors, self.classnames)

    def subset(self, labels: Sequence[int]) -> "ClassVectors":
        labels = list(labels)
        return replace(
            self, vectors=self.vectors[labels], classnames=tuple(self.classnames[i] for i in labels)
        )


def content_hash(vectors: torch.Tensor, classnames: Sequence[str]) -> str:
    h = hashlib.sha256()
    h.update(vectors.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    h.update(json.dumps(list(classnames)).encode("utf-8"))
    return h.hexdigest()


@torch.no_grad()
def compute_class_vectors(
    teacher,
    classnames: Sequence[str],
    templates="single",
    batch_size: int = 256,
    teacher_spec: Optional[str] = None,
) -> ClassVectors:
    """Class vectors of `classnames` (in order) from a `Teacher`, batched over classes, no grad."""
    from .templates import resolve_templates

    if not classnames:
        raise ClassVectorsError("Class vectors need at least one class name, got none.")
    was_training = teacher.training
    teacher.eval()
    chunks = [
        teacher.encode_text(list(classnames[i : i + batch_size]), templates=templates)
        for i in range(0, len(classnames), batch_size)
    ]
    teacher.train(was_training)
    vectors = torch.nn.functional.normalize(torch.cat(chunks).float(), dim=-1).cpu()
    used = ("prompted",) if teacher.text_encoder.depth > 0 else resolve_templates(templates)
    return ClassVectors(
        vectors=vectors,
        classnames=tuple(classnames),
        teacher=teacher_spec or getattr(teacher, "spec", "unknown"),
        templates=tuple(used),
        logit_scale=float(teacher.logit_scale),
    )


def save_class_vectors(cv: ClassVectors, path: str) -> str:
    """Write NAME.safetensors + NAME.json (local path or URI); returns the safetensors path."""
    sidecar = {
        "format_version": FORMAT_VERSION,
        "classnames": list(cv.classnames),
        "num_classes": cv.num_classes,
        "dim": cv.dim,
        "teacher": cv.teacher,
        "templates": list(cv.templates),
        "logit_scale": cv.logit_scale,
        "sha256": cv.sha256,
        "meta": cv.meta,
    }
    return write_artifact({TENSOR_KEY: cv.vectors.to(torch.float32)}, sidecar, str(path))


def load_class_vectors(
    path: str,
    expected_classnames: Optional[Sequence[str]] = None,
    expected_num_classes: Optional[int] = None,
    expected_dim: Optional[int] = None,
) -> ClassVectors:
    """Load and verify a class-vectors artifact (hash, shapes, and optionally the classes and dim it
    must have for the dataset / teacher it is used with)."""
    tensor_path, sidecar_path = artifact_paths(str(path))
    sidecar = read_sidecar(str(path), "class vectors", ClassVectorsError)
    tensors = read_tensors(str(path), "class vectors", ClassVectorsError)
    try:
        cv = ClassVectors(
            vectors=tensors[TENSOR_KEY].float(),
            classnames=tuple(sidecar["classnames"]),
            teacher=sidecar["teacher"],
            templates=tuple(sidecar["templates"]),
            logit_scale=float(sidecar["logit_scale"]),
            meta=dict(sidecar.get("meta", {})),
        )
        dim, sha = sidecar["dim"], sidecar["sha256"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ClassVectorsError(
            f"Class vectors {tensor_path} lack a field or tensor ({type(exc).__name__}: {exc})."
        ) from None
    if cv.vectors.dim() != 2 or cv.num_classes != len(cv.classnames) or cv.dim != dim:
        raise ClassVectorsError(
            f"Class vectors {tensor_path} have shape {tuple(cv.vectors.shape)}, but the sidecar says "
            f"{len(cv.classnames)} classes of dim {dim}."
        )
    if cv.sha256 != sha:
        raise ClassVectorsError(
            f"Class vectors {tensor_path} do not match the sha256 in {sidecar_path.rsplit('/', 1)[-1]} "
            f"(expected {sha[:12]}…, found {cv.sha256[:12]}…): the files were changed or mixed up."
        )
    check_class_vectors(cv, expected_classnames, expected_num_classes, expected_dim, source=str(tensor_path))
    return cv


def check_class_vectors(
    cv: ClassVectors,
    expected_classnames=None,
    expected_num_classes=None,
    expected_dim=None,
    source: str = "class vectors",
) -> None:
    """Refuse class vectors that do not fit a dataset (classes) or a student/teacher (dim)."""
    if expected_num_classes is not None and cv.num_classes != expected_num_classes:
        raise ClassVectorsError(
            f"{source} hold {cv.num_classes} classes, but the dataset has {expected_num_classes}."
        )
    if expected_classnames is not None:
        expected = tuple(expected_classnames)
        if len(expected) != cv.num_classes:
            raise ClassVectorsError(
                f"{source} hold {cv.num_classes} classes, but the dataset has {len(expected)}."
            )
        diff = [i for i, (a, b) in enumerate(zip(cv.classnames, expected)) if a != b]
        if diff:
            i = diff[0]
            raise ClassVectorsError(
                f"{source} do not match the dataset's classes: {len(diff)} differ, first at label {i} "
                f"({cv.classnames[i]!r} vs {expected[i]!r})."
            )
    if expected_dim is not None and cv.dim != expected_dim:
        raise ClassVectorsError(f"{source} have dim {cv.dim}, but the model expects {expected_dim}.")
