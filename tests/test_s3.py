"""Every command against a real S3 API server (moto's, on loopback; tests/s3_server.py), configured
the way AWS tools take it (AWS_ENDPOINT_URL, keys, region in the environment). One flow on the quick
toy world, each command's output feeding the next: `pack` to S3; `distill` from the S3 pack into S3
runs, its driver killed once epoch 0's checkpoint is registered and the same command run again
resuming from that S3 checkpoint; `cache` to S3 and a run replaying it; `teacher`; `eval` and `predict`
reading artifacts and images from S3 and writing their outputs there. Every claim is checked on the
server (its object listing), not only by exit codes. `tune` over two teachers on S3 is submitted as a
Ray job in tests/test_job_submit.py (one sweep serves that test and the killed-and-resubmitted sweep's)."""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from own_ray import descendants

from promptkd_ray.cli import main

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BUCKET = "promptkd"
S3 = f"s3://{BUCKET}"


@pytest.fixture(scope="module")
def flow(s3, ray_cluster, toy_world, tmp_path_factory):
    """The bucket, and what each step leaves for the next ones."""
    s3.create_bucket(BUCKET)
    common = [
        f"teacher.spec={toy_world.teacher_spec}",
        f"student.spec={toy_world.student_spec}",
        "data.toyworld_profile=quick",
        "data.limit=64",
        "data.heldout_images=16",
        "train.num_workers=1",
        f"storage_path={S3}/runs",
        "ray.progress_bars=false",
    ]
    return {"s3": s3, "world": toy_world, "tmp": tmp_path_factory.mktemp("s3"), "common": common}


def _keys(flow, prefix: str) -> list[str]:
    return flow["s3"].keys(BUCKET, prefix)


def _json(flow, key: str):
    return json.loads(flow["s3"].read(BUCKET, key))


def test_ray_workers_see_the_endpoint_and_keys_and_reach_the_server_through_pyarrow(flow, ray_cluster):
    @ray_cluster.remote
    def probe():
        from pyarrow import fs

        s3fs, path = fs.FileSystem.from_uri(f"{S3}/probe.txt")
        with s3fs.open_output_stream(path) as f:
            f.write(b"from a Ray worker")
        return os.environ.get("AWS_ENDPOINT_URL"), os.environ.get("AWS_ACCESS_KEY_ID")

    assert ray_cluster.get(probe.remote()) == (flow["s3"].endpoint, flow["s3"].env["AWS_ACCESS_KEY_ID"])
    assert flow["s3"].read(BUCKET, "probe.txt") == b"from a Ray worker"


def test_pack_writes_its_shards_and_manifest_to_s3(flow, capsys):
    assert main(["pack", "--toyworld", "quick", "--out", f"{S3}/pack", "--shard-mb", "1"]) == 0
    assert f"data.root={S3}/pack" in capsys.readouterr().out
    manifest = _json(flow, "pack/manifest.json")
    shards = [s["path"] for split in manifest["splits"].values() for s in split["shards"]]
    assert len(manifest["splits"]["train"]["shards"]) > 1
    assert {f"pack/{p}" for p in shards} <= set(_keys(flow, "pack/"))


def _distill_command(flow, name: str, *extra: str) -> list[str]:
    return [
        "distill",
        "--config",
        str(REPO / "jobs" / "toy_b2n.yaml"),
        *flow["common"],
        f"name={name}",
        "data.source=packed",
        f"data.root={S3}/pack",
        *extra,
    ]


def test_distill_from_the_s3_pack_into_s3_runs_killed_mid_run_resumes_from_its_s3_checkpoint(flow, capfd):
    """The driver is SIGKILLed once Ray Train registered epoch 0's checkpoint on S3; the same
    command run again resumes at epoch 1 with epoch 0's history as the checkpoint recorded it."""
    command = _distill_command(flow, "killed", "train.epochs=2")
    driver = subprocess.Popen(
        [sys.executable, "-m", "promptkd_ray.cli", *command],
        env={**os.environ, "RAY_ADDRESS": _gcs(), "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 400
    while "checkpoint_epoch_000" not in _snapshot(flow, "runs/killed"):
        assert driver.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.3)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert "checkpoint_epoch_001" not in _snapshot(flow, "runs/killed")
    before = _json(flow, "runs/killed/checkpoint_epoch_000/progress.json")
    assert before["epoch"] == 0 and "runs/killed/metrics.json" not in _keys(flow, "runs/killed/")
    gone = time.time() + 120
    while descendants(os.getpid(), "RayTrainWorker") + descendants(os.getpid(), "TeacherPredictor"):
        assert time.time() < gone, "the killed driver's Train workers or teacher actors outlived it"
        time.sleep(1)

    capfd.readouterr()
    assert main(command) == 0
    assert "run killed: 2 epochs" in capfd.readouterr().out
    summary = _json(flow, "runs/killed/metrics.json")
    assert [m["epoch"] for m in summary["history"]] == [0, 1] and summary["resumes"] == [1]
    assert summary["history"][:1] == before["history"]
    assert {
        "runs/killed/student.safetensors",
        "runs/killed/class_vectors.safetensors",
        "runs/killed/checkpoint_epoch_001/progress.json",
    } <= set(_keys(flow, "runs/killed/"))
    assert any(
        k.startswith("runs/killed/tensorboard/events.out.tfevents.") for k in _keys(flow, "runs/killed/")
    )


def _gcs() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def _snapshot(flow, run: str) -> str:
    try:
        return flow["s3"].read(BUCKET, f"{run}/checkpoint_manager_snapshot.json").decode()
    except Exception:  # not written yet (NoSuchKey)
        return ""


def test_cache_writes_a_soft_label_cache_to_s3_and_a_run_replays_it_without_a_teacher(flow, caplog):
    """The cache replays views from image files, so this job reads loose files from S3 (a small
    split-JSON dataset uploaded there) with the tiny test models."""
    from stage2_fakes import make_split_json, tiny_job

    from promptkd_ray.storage import Storage

    root, _ = make_split_json(flow["tmp"] / "data", per_class=6, val_per_class=3)
    Storage(f"{S3}/data").upload(root)
    job = tiny_job(
        f"{S3}/data",
        f"{S3}/runs",
        "cached",
        train={"epochs": 1, "warmup_epochs": 0},
        data={"heldout_images": 4},
    )
    flow["job"] = flow["tmp"] / "loose_job.yaml"
    flow["job"].write_text(yaml.safe_dump(job))
    assert main(["cache", "--config", str(flow["job"]), "--views", "1", "--out", f"{S3}/cache"]) == 0
    listed = set(_keys(flow, "cache/"))
    files = {k for k in listed if not k.endswith("/")} - {"cache/manifest.json"}
    assert "cache/manifest.json" in listed and files
    assert all(name in flow["s3"].read(BUCKET, "cache/manifest.json").decode() for name in _names(files))
    caplog.clear()
    with caplog.at_level("INFO"):
        assert main(["distill", "--config", str(flow["job"]), f"teacher.cache={S3}/cache"]) == 0
    assert f"replaying the soft-label cache {S3}/cache" in caplog.text
    assert "starting 1 teacher actor" not in caplog.text
    (epoch,) = _json(flow, "runs/cached/metrics.json")["history"]
    # 20 train images (24 less 4 held out) at batch 8: two full batches trained, the short one audited only
    assert epoch["images"] == 16 and "runs/cached/student.safetensors" in _keys(flow, "runs/cached/")


def _names(keys: set) -> list[str]:
    """The data files' names (the manifest lists every one of them)."""
    return [k.rsplit("/", 1)[-1] for k in keys if not k.endswith(".json")]


def test_teacher_trains_prompts_and_writes_its_artifacts_to_s3(flow, capsys):
    command = ["teacher", "--config", str(REPO / "jobs" / "toy_teacher.yaml"), "data.toyworld_profile=quick"]
    command += ["train.epochs=1", "data.shots=2", "train.num_workers=1", f"storage_path={S3}/runs"]
    assert main(command) == 0
    assert f"teacher {S3}/runs/toy_teacher/teacher.safetensors" in capsys.readouterr().out
    keys = set(_keys(flow, "runs/toy_teacher/"))
    assert {"runs/toy_teacher/teacher.safetensors", "runs/toy_teacher/class_vectors.safetensors"} <= keys
    assert any("checkpoint_epoch_000/" in k for k in keys)


def test_eval_reads_the_pack_and_the_student_from_s3_and_writes_its_report_there(flow, capsys):
    run = f"{S3}/runs/killed"
    command = ["eval", "--pack", f"{S3}/pack", "--student", f"{run}/student.safetensors"]
    command += ["--class-vectors", f"{run}/class_vectors", "--out", f"{S3}/eval"]
    assert main(command) == 0
    assert "| " in capsys.readouterr().out  # the report's table, read back from S3
    assert {"eval/report.md", "eval/results.csv", "eval/summary.csv", "eval/report.png"} <= set(
        _keys(flow, "eval/")
    )
    (row,) = list(csv.DictReader(io.StringIO(flow["s3"].read(BUCKET, "eval/results.csv").decode())))
    assert float(row["hm"]) > 0
    assert not Path("s3:").exists()  # nothing written to a local folder named after the URI


def test_predict_reads_images_from_s3_and_writes_its_predictions_there(flow):
    from promptkd_ray.storage import Storage

    images = sorted(Path(flow["world"].domain().split_file).parent.joinpath("images").rglob("*.png"))[:12]
    folder = flow["tmp"] / "images"
    for image in images:
        (folder / image.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / image.parent.name / image.name).write_bytes(image.read_bytes())
    Storage(f"{S3}/images").upload(folder)
    run = f"{S3}/runs/killed"
    command = [
        "predict",
        "--student",
        f"{run}/student.safetensors",
        "--class-vectors",
        f"{run}/class_vectors",
    ]
    assert main([*command, "--images", f"{S3}/images", "--out", f"{S3}/predictions.parquet"]) == 0
    table = pq.read_table(io.BytesIO(flow["s3"].read(BUCKET, "predictions.parquet")))
    paths = table.column("path").to_pylist()
    assert len(paths) == 12 and all(p.startswith(f"{S3}/images/") for p in paths)
