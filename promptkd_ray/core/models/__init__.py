"""Models: prompted open_clip towers, the PromptKD student and the teacher, and spec loading."""

from .builders import build_student, build_teacher, get_tokenizer
from .loading import ModelSpec, ModelSpecError, load_clip, read_weights_file, register_model_configs
from .prompted_text import PromptedTextEncoder
from .prompted_vit import PromptedVisionTransformer
from .student import ConvMLPProjector, Student, build_projector
from .teacher import Teacher

__all__ = [
    "ModelSpec", "ModelSpecError", "load_clip", "read_weights_file", "register_model_configs",
    "PromptedVisionTransformer", "PromptedTextEncoder", "Student", "ConvMLPProjector", "build_projector",
    "Teacher", "build_student", "build_teacher", "get_tokenizer",
]
