"""The method in plain PyTorch: no Ray, no YAML, nothing at import.

    models/         prompted open_clip towers, the student (prompts + projector), the teacher
    losses.py       every loss term, LossConfig, the method presets (promptkd, kdpl, kdpl_ca, comkd)
    step.py         one distillation step from stored teacher features
    ensemble.py     a teacher ensemble's combined target (mean or confidence-weighted)
    schedule.py     the optimiser and learning-rate rule of both stages
    promptsrc.py    Stage I's PromptSRC loss and Gaussian Prompt Aggregation
    classvectors.py the teacher's text features W, computed once and stored
    artifacts.py    student / teacher artifacts and `ModelRef`
    metrics.py      accuracy, HM, base-to-novel scoring
    templates.py    CLIP's prompt templates

The orchestration layer (`promptkd_ray.orchestration`) runs these on Ray; a test imports this
package in a fresh interpreter and checks that Ray was not imported.
"""
