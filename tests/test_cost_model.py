"""benchmarks/cost_model.py: its arithmetic on given inputs, and the script end to end."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import cost_model  # noqa: E402

GIVEN = [
    "images=3600",
    "epochs=2",
    "hours=1",
    "cache_views=1",
    "decode_per_core=0.5",
    "decode_source=given",
    "teacher_gflops=500",
    "student_step_gflops=250",
    "flops_source=given",
    "peak_tflops=1",
    "mfu_teacher=0.5",
    "mfu_student=0.25",
    "feature_bytes=1000",
    "network_gbytes_per_s=0.0001",
    "decode_cores=4",
    "teacher_gpus=1",
    "student_gpus=2",
    "nodes=3",
]


def test_the_stages_arithmetic_on_given_inputs():
    x = cost_model.load_inputs(overrides=GIVEN)
    plans = cost_model.compute(x)
    decode, teacher, student, transfer = plans["streaming"]
    assert teacher.rate == pytest.approx(1.0)  # 1e12 × 0.5 / 500e9 images/s per GPU
    assert student.rate == pytest.approx(1.0)  # 1e12 × 0.25 / 250e9
    assert decode.work == teacher.work == student.work == 7200  # images × epochs
    assert decode.devices_for(1) == 4 and teacher.devices_for(1) == 2 and student.devices_for(1) == 2
    assert decode.hours_with(4) == pytest.approx(1.0) and teacher.hours_with(1) == pytest.approx(2.0)
    view = 224 * 224 * 3
    assert transfer.work == pytest.approx(7200 * (2 * view + 1000) / 1e9)  # GB: view twice + the feature
    assert transfer.devices_for(1) == -(-7200 * (2 * view + 1000) // (1e5 * 3600))  # 0.0001 GB/s per node
    build = {s.name: s for s in plans["cache build (once)"]}
    assert build["teacher (ViT-L-14 image forward)"].work == 3600  # once per view slot, K = 1
    cached = plans["cached run (each)"]
    assert not any(s.name.startswith("teacher") for s in cached)
    assert cached[-1].work == pytest.approx(7200 * (view + 1000) / 1e9)


def test_the_table_names_sources_and_the_bottleneck():
    x = cost_model.load_inputs(overrides=GIVEN)
    table = cost_model.markdown(x, cost_model.compute(x))
    assert "MFU 0.5 (assumed)" in table and "| given |" in table
    transfer_hours = 7200 * (2 * 224 * 224 * 3 + 1000) / 1e9 / (0.0001 * 3 * 3600)
    assert transfer_hours > 2.0  # slower than the teacher's 2 h: the bottleneck
    assert "- streaming: bottleneck **object-store transfer" in table
    assert f"({transfer_hours:.2f} h with the shipped devices)" in table


def test_bad_inputs_are_refused_in_one_sentence():
    with pytest.raises(ValueError, match="Unknown cost-model input"):
        cost_model.load_inputs(overrides=["imagez=3"])
    with pytest.raises(ValueError, match="NAME=VALUE"):
        cost_model.load_inputs(overrides=["images"])


def test_the_script_prints_the_table_with_its_defaults(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "cost_model.py"), "--out", str(tmp_path / "t.md")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "| plan | stage |" in done.stdout and "bottleneck" in done.stdout
    assert (tmp_path / "t.md").read_text() in done.stdout
    bad = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "cost_model.py"), "--set", "nope=1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "Unknown cost-model input" in bad.stderr
