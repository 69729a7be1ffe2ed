"""End to end: the demo command on the quick toy world gives a real distillation gain."""

import re

import pytest

from promptkd_ray.cli import main

# A broken KD loss (replaced by zero) leaves the student at chance, ≈ 5 HM on this world; these
# bounds need the teacher to be clearly better and the distilled student to learn from it.
MIN_TEACHER_GAP = 10.0
MIN_DISTILL_GAIN = 5.0


@pytest.mark.slow
def test_demo_distils_a_real_gain_and_writes_the_report(ray_cluster, toy_world, tmp_path, capsys):
    rc = main(["demo", "--profile", "quick", "--epochs", "2", "--out", str(tmp_path)])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    last = out[-1]
    m = re.fullmatch(r"RESULT teacher_hm=(\d+\.\d\d) student_zero_shot_hm=(\d+\.\d\d) "
                     r"student_distilled_hm=(\d+\.\d\d)", last)
    assert m, last
    teacher, zero_shot, distilled = map(float, m.groups())
    assert teacher >= zero_shot + MIN_TEACHER_GAP
    assert distilled >= zero_shot + MIN_DISTILL_GAIN
    for name in ("report.md", "results.csv", "report.png"):
        assert (tmp_path / "report" / name).is_file()
