"""promptkd_ray: PromptKD, KDPL and ComKD-CLIP prompt distillation on Ray.

Importing the package has no side effects: model configs are registered with open_clip only
when a model is first created, and Ray is imported only by the modules that orchestrate it
(`pipeline`, `distill`, `tune`, `evaluate`, `cli`).
"""

__version__ = "0.1.0"
