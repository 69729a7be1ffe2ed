"""Models: prompted open_clip towers, the PromptKD student and the teacher, and spec loading."""

from .builders import build_student, build_teacher, get_tokenizer
from .edu_attention import EduAttention
from .loading import ModelSpec, ModelSpecError, load_clip, read_weights_file, register_model_configs
from .prompted_text import PromptedTextEncoder
from .prompted_vit import PromptedVisionTransformer
from .student import ConvMLPProjector, Student, build_projector
from .teacher import Teacher

__all__ = [
    "ModelSpec",
    "ModelSpecError",
    "load_clip",
    "read_weights_file",
    "register_model_configs",
    "PromptedVisionTransformer",
    "PromptedTextEncoder",
    "Student",
    "ConvMLPProjector",
    "build_projector",
    "Teacher",
    "EduAttention",
    "build_student",
    "build_teacher",
    "get_tokenizer",
]
