"""Exact interop with the authors' released checkpoints (PromptKD students, PromptSRC teachers).

`load_official_student(path)` and `load_official_teacher(path, clip_weights, classnames)` build our
`Student` / `Teacher` from the authors' Dassl checkpoints, reading the architecture from tensor
shapes; `artifacts` turns them into our student / teacher / class-vector artifacts
(`promptkd-ray import`). See `checkpoint.py` for how the files are read without unpickling code.
"""

from .checkpoint import OfficialCheckpointError, VisionArch, checkpoint_kind, read_official_checkpoint
from .student import OfficialStudent, load_official_student
from .teacher import OfficialTeacher, TextArch, load_official_teacher, read_base_clip

__all__ = [
    "OfficialCheckpointError",
    "VisionArch",
    "TextArch",
    "checkpoint_kind",
    "read_official_checkpoint",
    "OfficialStudent",
    "load_official_student",
    "OfficialTeacher",
    "load_official_teacher",
    "read_base_clip",
]
