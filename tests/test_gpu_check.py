"""benchmarks/gpu_check.py: its tiny mode runs every part on the CPU and reports it (the pipeline
part, a Ray job on a local cluster of its own, as a slow test); its real mode refuses a machine
without a GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def test_tiny_mode_runs_the_model_parts(tmp_path):
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--tiny",
            "--seconds",
            "0.5",
            "--parts",
            "teacher",
            "student",
            "authors",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    r = json.loads((tmp_path / "results.json").read_text())
    assert "pipeline" not in r
    for part in ("teacher", "student", "authors"):
        assert "error" not in r[part] and r[part]["images_per_s"] > 0, part
    f = r["gflops"]
    assert 0 < f["teacher"] and 0 < f["student_step"] < f["authors_step"]
    assert f["authors_step"] > f["teacher"] + f["student_step"]  # + the text tower over all classes
    assert 0 < r["authors"]["text_share"] < 1
    report = (tmp_path / "report.md").read_text()
    assert report in done.stdout
    for row in ("| teacher image forward | 16 |", "| student step | 16 |", "| authors'-style loop | 8 |"):
        assert row in report


@pytest.mark.slow
def test_tiny_mode_runs_the_pipeline_part_as_a_ray_job(tmp_path, ray_cluster):
    # its two runs join the session's Ray (through RAY_ADDRESS, as under `ray job submit`): starting a
    # local cluster for each cost ≈ 20 s here
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env["RAY_ADDRESS"] = ray_cluster.get_runtime_context().gcs_address
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--parts", "teacher", "student", "pipeline", "dtd"]
        + ["--seconds", "0.5", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    r = json.loads((tmp_path / "results.json").read_text())
    p, d = r["pipeline"], r["dtd"]
    assert "error" not in p and p["epochs"] >= 2 and p["images_per_epoch"] == 256, p
    assert 0 < p["images_per_s"] <= p["after_first_batch_images_per_s"] and p["startup_s"] >= 0
    assert "| pipeline: 1 teacher actor + 1 Train worker |" in done.stdout
    # the DTD-sized part: images held in the worker's memory, no per-epoch stream start
    assert "error" not in d and d["epochs"] >= 2 and d["images_per_epoch"] == 64, d
    assert d["startup_s"] < p["startup_s"] and d["epoch_s"] == pytest.approx(64 / d["images_per_s"])
    assert "| DTD-sized epoch, images in memory |" in done.stdout
    assert "DTD-sized epoch (64 images, best after the first):" in done.stdout and "its limit" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_real_mode_needs_a_gpu(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, RAY_AUTH_MODE="disabled"),
    )
    assert done.returncode == 2 and "no GPU is visible; use --tiny" in done.stderr
