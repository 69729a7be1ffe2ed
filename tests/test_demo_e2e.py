"""End to end: the demo command on the quick toy world gives a real distillation gain.

One demo run serves the module. The second test is the control that shows the bound has teeth: the
run's student as it started (fresh prompts and projector, nothing learnt), scored by the demo's own
evaluation, must fail the bound the first test asserts. (The control was a second demo with the KD
term multiplied by zero, whose student ends where it started, at ≈ 80 s of the suite.)
"""

import contextlib
import io
import re
from pathlib import Path

import pytest

from promptkd_ray.cli import main

DEMO_JOB = Path(__file__).resolve().parents[1] / "jobs" / "toy_b2n.yaml"

# A student that learnt nothing stays at chance (its projector is random), ≈ 5 HM on this world
# (a demo with the KD loss multiplied by zero ends there too); these bounds need the teacher to be clearly better than the student and the
# distilled student to have learnt from it.
MIN_TEACHER_GAP = 10.0
MIN_DISTILL_GAIN = 5.0


def run_demo(out: Path) -> tuple[float, float, float]:
    """The demo's RESULT line (its stdout captured here: a module fixture has no capsys)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(
            [
                "demo",
                "--config",
                str(DEMO_JOB),
                "--profile",
                "quick",
                "--epochs",
                "2",
                "--out",
                str(out),
            ]
        )
    lines = printed.getvalue().strip().splitlines()
    assert rc == 0
    m = re.fullmatch(
        r"RESULT teacher_hm=(\d+\.\d\d) student_zero_shot_hm=(\d+\.\d\d) "
        r"student_distilled_hm=(\d+\.\d\d)",
        lines[-1],
    )
    assert m, lines[-1]
    for name in ("report.md", "results.csv", "report.png"):
        assert (out / "report" / name).is_file()
    return tuple(map(float, m.groups()))


@pytest.fixture(scope="module")
def demo(ray_cluster, toy_world, tmp_path_factory):
    """The module's one demo run: (teacher HM, student zero-shot HM, distilled HM, --out folder)."""
    out = tmp_path_factory.mktemp("demo")
    return (*run_demo(out), out)


@pytest.mark.slow
def test_demo_distils_a_real_gain_and_writes_the_report(demo):
    teacher, zero_shot, distilled, _ = demo
    assert teacher >= zero_shot + MIN_TEACHER_GAP
    assert distilled >= zero_shot + MIN_DISTILL_GAIN


@pytest.mark.slow
def test_the_gain_bound_fails_for_the_runs_student_before_it_learnt(demo, tmp_path):
    from types import SimpleNamespace

    import torch

    from promptkd_ray.cli.demo import evaluate_demo
    from promptkd_ray.config import load_distill_job
    from promptkd_ray.core.artifacts import read_student_info, save_student
    from promptkd_ray.data.sources import open_world
    from promptkd_ray.distill_setup import new_student

    teacher, zero_shot, _, out = demo
    (run_dir,) = [p.parent for p in out.glob("*/job.yaml")]
    assert run_dir.name == "demo-quick-seed0"  # the run's folder names the world the demo ran on
    job = load_distill_job(run_dir / "job.yaml")
    info = read_student_info(str(run_dir / "student"))
    torch.manual_seed(job.seed)
    untrained = new_student(job, info.spec, info.teacher_dim)  # as distill builds it before epoch 0
    artifact = save_student(untrained, info, str(tmp_path / "student"))
    result = SimpleNamespace(run_dir=str(run_dir), student_artifact=artifact)
    hm = {s.model: s.metrics["hm"] for s in evaluate_demo(open_world(job.data), job, result)}
    print(
        f"demo HM: teacher {teacher}, student zero-shot {zero_shot}; re-scored: {hm} (distilled: untrained)"
    )
    assert (hm["teacher zero-shot"], hm["student zero-shot"]) == pytest.approx((teacher, zero_shot), abs=0.01)
    assert teacher >= zero_shot + MIN_TEACHER_GAP  # same world, same teacher
    assert hm["student distilled"] < zero_shot + MIN_DISTILL_GAIN, (
        "the gain bound does not detect a student that learnt nothing"
    )
