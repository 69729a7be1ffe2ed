"""Job files: strict YAML loading (`loader`), the shared sections (`sections`), one module per job
kind (`distill`: Stage II, `teacher`: Stage I). A job file names its kind (`kind: distill`); the
loaders below read a file of the kind a command runs, or of any kind (`load_job`). Nothing here
imports Ray; validating a job needs no cluster.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..errors import ConfigError
from .distill import DistillJob, distill_checks
from .loader import JOB_KINDS, build, read_job_yaml, require_kind, to_dict
from .sections import check_paths
from .teacher import TeacherJob, teacher_checks

__all__ = [
    "ConfigError",
    "DistillJob",
    "TeacherJob",
    "job_from_dict",
    "load_job",
    "distill_job_from_dict",
    "load_distill_job",
    "teacher_job_from_dict",
    "load_teacher_job",
    "to_dict",
    "read_job_yaml",
]

KINDS = {"distill": (DistillJob, distill_checks), "teacher": (TeacherJob, teacher_checks)}
assert set(KINDS) == set(JOB_KINDS)


def job_from_dict(
    raw: dict,
    kind: str,
    source: str = "<dict>",
    overrides: Sequence[str] = (),
    check_paths_exist: bool = True,
):
    """A job of `kind` from a mapping (a parsed YAML file): overrides applied, converted, validated."""
    cls, checks = KINDS[kind]
    job = build(cls, raw, source, overrides, checks)
    if check_paths_exist:
        check_paths(job, source)
    return job


def load_job(
    path, overrides: Sequence[str] = (), check_paths_exist: bool = True, kinds: Optional[Sequence[str]] = None
):
    """Read a job file whose `kind:` is one of `kinds` (default: any), apply `key=value` overrides,
    convert and validate it."""
    raw = read_job_yaml(path)
    kind = require_kind(raw, str(path), tuple(kinds or KINDS))
    return job_from_dict(raw, kind, str(path), overrides, check_paths_exist)


def distill_job_from_dict(
    raw: dict, source: str = "<dict>", overrides: Sequence[str] = (), check_paths_exist: bool = True
) -> DistillJob:
    return job_from_dict(raw, "distill", source, overrides, check_paths_exist)


def teacher_job_from_dict(
    raw: dict, source: str = "<dict>", overrides: Sequence[str] = (), check_paths_exist: bool = True
) -> TeacherJob:
    return job_from_dict(raw, "teacher", source, overrides, check_paths_exist)


def load_distill_job(path, overrides: Sequence[str] = (), check_paths_exist: bool = True) -> DistillJob:
    """A `kind: distill` job file (Stage II)."""
    return load_job(path, overrides, check_paths_exist, ("distill",))


def load_teacher_job(path, overrides: Sequence[str] = (), check_paths_exist: bool = True) -> TeacherJob:
    """A `kind: teacher` job file (Stage I)."""
    return load_job(path, overrides, check_paths_exist, ("teacher",))
