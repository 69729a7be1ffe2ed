"""ComKD-CLIP's EduAttention under the demo job's SGD, in one process: where it diverges, and what keeps it finite.

Per variant, the `comkd` preset on jobs/toy_b2n.yaml (seed 0 by default), trained in this process the
way `benchmarks/ceiling.py` trains its labelled rows — the job's student, optimiser, schedule, epoch
order and seeded views, one process taking the global batch of 8 — but distilling: each batch's teacher
features come from the job's teacher over the same views, and the step is `core.step.distill_step` with
the job's loss. Variants:

    raw           the preset as it is (f_e = u_s + α·f_att, not re-normalised)
    cosine        f_e re-normalised before the logits (rejected: see docs/protocol.md)
    clip          train.grad_clip_norm=1
    no_edu        loss.edu_attention=false (ComKD without EduAttention), for reference

It prints α, the loss and its terms for the first steps, then per epoch the mean loss, the student's
top-1 agreement with the teacher on its train views, and α; a diverged variant prints its
`DivergedError`. No test data is read.

    .venv/bin/python benchmarks/edu_attention_sgd.py --variants raw cosine clip no_edu --epochs 8
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from ceiling import parse_args as ceiling_args
from ceiling import seed_setup, seeded_batches

VARIANTS = {
    "raw": [],
    "cosine": [],
    "clip": ["train.grad_clip_norm=1"],
    "no_edu": ["loss.edu_attention=false"],
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--first-steps", type=int, default=12, help="print every one of the first N steps")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default="runs/edu_attention_sgd", help="where the runs' class vectors go")
    return p.parse_args(argv)


@dataclass
class Training:
    """One variant's student in training, with what its steps read."""

    student: torch.nn.Module
    edu: torch.nn.Module  # the student's EduAttention (None without), for its α
    teacher: object  # an `ImageEncoder` of the job's teacher
    optimizer: torch.optim.Optimizer
    job: object
    setup: object
    paths: np.ndarray  # the job's train images


class CosineEdu(torch.nn.Module):
    """An EduAttention whose output f_e is re-normalised (the rejected reading)."""

    def __init__(self, edu):
        super().__init__()
        self.edu = edu

    def forward(self, features, class_vectors):
        return F.normalize(self.edu(features, class_vectors), dim=-1)


def run_variant(name: str, args) -> None:
    from promptkd_ray.core.schedule import build_optimizer, build_scheduler
    from promptkd_ray.distill_setup import new_student
    from promptkd_ray.errors import DivergedError
    from promptkd_ray.orchestration.encoder import ImageEncoder

    given = ceiling_args(["--seeds", str(args.seed), "--epochs", str(args.epochs), "--out", args.out])
    job, setup, _, images = seed_setup(given, args.seed, ["loss.preset=comkd", *VARIANTS[name]])
    teacher, cv = ImageEncoder(setup.stream.teacher, "fp32"), setup.class_vectors
    torch.manual_seed(job.seed)
    student = new_student(job, setup.student_spec, cv.dim)
    edu = student.edu_attention
    if name == "cosine":
        student.edu_attention = CosineEdu(edu)
    optimizer = build_optimizer(student.trainable_parameters(), job.train)
    scheduler = build_scheduler(optimizer, job.train)
    run = Training(student, edu, teacher, optimizer, job, setup, np.asarray(images.paths, dtype=object))
    print(f"\n== {name}: {job.train.optimizer} lr {job.train.lr}, batch {job.train.batch_size}", flush=True)
    try:
        for epoch in range(job.train.epochs):
            loss, agreement = epoch_steps(run, epoch, args.first_steps if epoch == 0 else 0)
            scheduler.step()
            print(
                f"{name} epoch {epoch + 1}: mean loss {loss:.4g}, agreement {agreement:.2f} %, α {_alpha(edu)}"
            )
    except DivergedError as exc:
        print(f"{name}: {exc}", flush=True)


def epoch_steps(run: Training, epoch: int, first_steps: int) -> tuple:
    """One epoch of distillation steps (the job's order and views); → (mean loss, mean agreement %)."""
    from promptkd_ray.core.step import distill_step

    spec, batch, cv = run.setup.stream.decode, run.job.train.batch_size, run.setup.class_vectors
    sums = []
    for k, (_, x, views) in enumerate(seeded_batches(run.paths, spec, epoch, batch)):
        out = distill_step(
            run.student,
            x,
            run.teacher.encode(views),
            cv.vectors.float(),
            run.optimizer,
            run.job.loss,
            cv.logit_scale,
        )
        sums.append((out["loss"], out["agreement"]))
        if k < first_steps:
            terms = ", ".join(f"{t} {v:.4g}" for t, v in out.items() if t not in ("loss", "agreement"))
            print(f"  step {k + 1}: loss {out['loss']:.4g} ({terms}), α {_alpha(run.edu)}", flush=True)
    return tuple(np.mean(sums, axis=0))


def _alpha(edu) -> str:
    return "—" if edu is None else f"{float(edu.alpha.detach()):.4g}"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.variants:
        run_variant(name, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
