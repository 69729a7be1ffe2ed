"""Real `ray job submit`s (a soft-label cache, a distill, a sweep) to a Ray head that this module starts on
127.0.0.1.

The head runs `ray start --head --block` in its own session with its own temp dir and free ports,
so it never touches another Ray on this machine; teardown ends exactly the processes it started
(the `ray start` process and its descendants, by pid) instead of `ray stop`, which would stop every
Ray on the machine.
"""

import csv
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from own_ray import descendants, free_ports_and_worker_range, stop_tree
from stage2_fakes import make_split_json, tiny_job

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))


WORKER_PORTS = 200  # width of the head's worker port range


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head with the job server on loopback; yields the job server's address, the environment
    to talk to it with, and the pid of the `ray start` process (the head's processes descend from it).
    One head serves the module's tests (each submits under its own submission ids and folders)."""
    (
        (gcs, dashboard, client, agent_http, agent_grpc, metrics, runtime_env, node_manager, object_manager),
        min_worker,
    ) = free_ports_and_worker_range(9, WORKER_PORTS)
    temp_dir = tempfile.mkdtemp(
        prefix="rayhead_", dir="/tmp"
    )  # short: Ray's socket paths have a length limit
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    cmd = [
        RAY,
        "start",
        "--head",
        "--block",
        f"--port={gcs}",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        "--include-dashboard=true",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--node-manager-port={node_manager}",
        f"--object-manager-port={object_manager}",
        f"--min-worker-port={min_worker}",
        f"--max-worker-port={min_worker + WORKER_PORTS}",
        "--num-cpus=6",
        "--object-store-memory=200000000",
        f"--temp-dir={temp_dir}",
    ]
    head = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 120
        while subprocess.run(
            [RAY, "job", "list", "--address", address], env=env, capture_output=True
        ).returncode:
            if head.poll() is not None or time.time() > deadline:
                pytest.fail(f"the Ray head did not start: {head.stdout.read().decode()[-2000:]}")
            time.sleep(2)
        yield address, env, head.pid
    finally:
        stop_tree(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit(address: str, env: dict, submission_id: str, *command: str) -> None:
    """`ray job submit --no-wait` of `promptkd-ray COMMAND …` to the head."""
    done = subprocess.run(
        [
            RAY,
            "job",
            "submit",
            "--address",
            address,
            "--submission-id",
            submission_id,
            "--no-wait",
            "--",
            sys.executable,
            "-m",
            "promptkd_ray.cli",
            *command,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def submit_and_wait(address: str, env: dict, submission_id: str, *command: str) -> str:
    """`ray job submit` of `promptkd-ray COMMAND …` to the head; waits for it to end, asserts it
    succeeded, returns its logs."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    submit(address, env, submission_id, *command)
    client = JobSubmissionClient(address)
    deadline = time.time() + 400
    while client.get_job_status(submission_id) not in (
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.STOPPED,
    ):
        assert time.time() < deadline, "the submitted job did not finish in time"
        time.sleep(3)
    logs = client.get_job_logs(submission_id)
    assert client.get_job_status(submission_id) == JobStatus.SUCCEEDED, logs[-3000:]
    return logs


def write_job(tmp_path: Path, name: str, epochs: int = 2) -> Path:
    """An `epochs`-epoch tiny distill job on 24 generated images, as a job file."""
    root, _ = make_split_json(tmp_path / "data", per_class=6)
    job_file = tmp_path / "submit.yaml"
    job_file.write_text(
        yaml.safe_dump(
            tiny_job(root, tmp_path / "runs", name, train={"epochs": epochs}, data={"heldout_images": 0})
        )
    )
    return job_file


def test_ray_job_submit_sweeps_two_teachers_on_s3_and_a_killed_sweep_resubmitted_reruns_no_finished_trial(
    tmp_path, s3, ray_head
):
    """A sweep over two teachers (a soft-label cache per teacher, not per trial; trials selected on
    labelled few-shot val images), data, caches, trials and outputs all on S3, submitted as a Ray job
    (one trial at a time) whose driver is SIGKILLed as soon as a trial has finished; the same command
    submitted again ends the sweep with its outputs, every trial completed, without training the
    finished trial again. Checked on the server's listing. (It was two sweeps: one over teachers on S3
    in the session's Ray, one submitted and killed here; one sweep checks both.)"""
    from ray.job_submission import JobStatus, JobSubmissionClient
    from stage2_fakes import two_teachers

    from promptkd_ray.storage import Storage

    address, env, head_pid = ray_head
    bucket = "submitted"
    base = s3.create_bucket(bucket)
    root, _ = make_split_json(tmp_path / "data", per_class=6, val_per_class=3)
    Storage(f"{base}/data").upload(root)
    job_file = tmp_path / "sweep_job.yaml"
    train = {"epochs": 1, "warmup_epochs": 0}
    job = tiny_job(f"{base}/data", f"{base}/runs", "swept", train=train, data={"heldout_images": 4})
    job_file.write_text(yaml.safe_dump(job))
    teachers = two_teachers(tmp_path)
    space = tmp_path / "sweep.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "kind": "space",
                "job": str(job_file),
                "metric": "val_accuracy",
                "search": {"max_concurrent": 1, "val_shots": 2},
                "scheduler": {"kind": "fifo"},
                "params": {"teacher": {"grid": teachers}},
            }
        )
    )
    command = ("tune", "--space", str(space))
    client = JobSubmissionClient(address)
    submit(address, env, "tune-killed", *command)
    folder, deadline = "runs/sweeps/sweep/", time.time() + 600

    def students() -> dict:
        found = s3.modified(bucket, folder + "trials/")
        return {k: v for k, v in found.items() if k.endswith("/student.safetensors")}

    while not students():
        assert client.get_job_status("tune-killed") in (JobStatus.PENDING, JobStatus.RUNNING), (
            "the sweep ended before it could be killed: " + client.get_job_logs("tune-killed")[-3000:]
        )
        assert time.time() < deadline
        time.sleep(1)
    drivers = descendants(head_pid, "promptkd_ray.cli", "tune")
    assert drivers
    for driver in drivers:
        driver.kill()
    while client.get_job_status("tune-killed") == JobStatus.RUNNING:
        assert time.time() < deadline
        time.sleep(1)
    assert client.get_job_status("tune-killed") == JobStatus.FAILED
    finished = students()
    assert len(finished) == 1
    (trial_dir,) = {k.rsplit("/", 1)[0] for k in finished}
    checkpoints = sorted(k for k in s3.keys(bucket, trial_dir + "/checkpoint_"))

    logs = submit_and_wait(address, env, "tune-resubmitted", *command)
    assert "sweep sweep: best trial" in logs and logs.count("soft-label cache for teacher t") == 2
    keys = set(s3.keys(bucket, folder))
    assert {f"{folder}caches/{t}/manifest.json" for t in teachers} <= keys
    assert {f"{folder}best_job.yaml", f"{folder}best/class_vectors.safetensors"} <= keys
    rows = list(csv.DictReader(io.StringIO(s3.read(bucket, folder + "trials.csv").decode())))
    assert sorted(r["teacher"] for r in rows) == ["t0", "t1"], rows
    assert all(r["status"] == "completed" and r["epochs"] == "1" for r in rows), rows
    assert all(0 <= float(r["val_accuracy"]) <= 100 for r in rows), rows
    assert len(students()) == 2
    for key, stamp in finished.items():  # the finished trial was not trained again
        assert students()[key] == stamp
    assert sorted(k for k in s3.keys(bucket, trial_dir + "/checkpoint_")) == checkpoints
    best = yaml.safe_load(s3.read(bucket, folder + "best_job.yaml"))
    top = max(float(r["val_accuracy"]) for r in rows)
    winners = {r["teacher"] for r in rows if float(r["val_accuracy"]) == top}  # a tie names either
    label = next(t for t in winners if teachers[t]["spec"] == best["teacher"]["spec"])
    assert best["teacher"]["cache"] == f"{base}/{folder}caches/{label}"


def test_a_cache_then_a_distill_from_it_killed_and_resubmitted_resumes_and_leaves_the_run_whole(
    tmp_path, ray_head
):
    """`ray job submit` builds a soft-label cache, then a distill job replaying it (no teacher actor).
    That job's driver is SIGKILLed once epoch 0's checkpoint is registered; its Train workers end with
    it; the same command submitted again resumes after the last checkpoint, and the run's history holds
    every epoch once, the first ones as the killed driver's checkpoint recorded them; the submitted run
    leaves its checkpoints, TensorBoard events, student and metrics. (One cached run serves what were
    two tests: a cache then a cached distill, and a killed driver resubmitted.)"""
    import json
    import re

    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_actors

    address, env, head_pid = ray_head
    # 5 epochs: a cached epoch after the first takes well under a second here, and the kill must land
    # before the last one
    epochs, run_dir, cache = 5, tmp_path / "runs" / "driver_killed", tmp_path / "cache"
    job_file = write_job(tmp_path, "driver_killed", epochs=epochs)
    logs = submit_and_wait(
        address, env, "cache-test", "cache", "--config", str(job_file), "--out", str(cache)
    )
    assert "5 views, 120 rows" in logs and (cache / "manifest.json").is_file()
    command = ("distill", "--config", str(job_file), f"teacher.cache={cache}")
    client = JobSubmissionClient(address)
    submit(address, env, "driver-killed", *command)
    deadline = time.time() + 400
    while "checkpoint_epoch_000" not in _read(run_dir / "checkpoint_manager_snapshot.json"):
        assert (
            client.get_job_status("driver-killed") in (JobStatus.PENDING, JobStatus.RUNNING)
            and time.time() < deadline
        ), client.get_job_logs("driver-killed")[-3000:]
        time.sleep(0.1)
    drivers = descendants(head_pid, "promptkd_ray.cli", "distill")
    assert drivers
    for driver in drivers:
        driver.kill()
    while client.get_job_status("driver-killed") == JobStatus.RUNNING:
        assert time.time() < deadline
        time.sleep(1)
    assert client.get_job_status("driver-killed") == JobStatus.FAILED
    registered = max(
        re.findall(r"checkpoint_epoch_\d{3}", _read(run_dir / "checkpoint_manager_snapshot.json"))
    )
    before = json.loads((run_dir / registered / "progress.json").read_text())
    assert before["epoch"] < epochs - 1  # killed before the last epoch
    orphans_gone = time.time() + 120
    while descendants(head_pid, "TeacherPredictor") + descendants(head_pid, "RayTrainWorker"):
        assert time.time() < orphans_gone, "the killed driver's teacher actors or Train workers outlived it"
        time.sleep(1)

    logs = submit_and_wait(address, env, "driver-resubmitted", *command)
    assert "replaying the soft-label cache" in logs and f"run driver_killed: {epochs} epochs" in logs
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert [m["epoch"] for m in summary["history"]] == list(range(epochs))
    assert summary["resumes"] == [before["epoch"] + 1]
    assert summary["history"][: before["epoch"] + 1] == before["history"]
    steps = [m["step"] for m in summary["history"]]
    assert steps == [steps[0] * (e + 1) for e in range(epochs)]
    assert f"checkpoint_epoch_{epochs - 1:03d}" in {p.name for p in run_dir.glob("checkpoint_epoch_*")}
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "student.safetensors").is_file()
    jobs = {
        sid: client.get_job_info(sid).job_id for sid in ("cache-test", "driver-killed", "driver-resubmitted")
    }
    teachers = {
        a.job_id for a in list_actors(address=address, limit=1000) if "TeacherPredictor" in a.class_name
    }
    assert jobs["cache-test"] in teachers  # the cache's build ran teachers, the distill runs none
    assert not teachers & {jobs["driver-killed"], jobs["driver-resubmitted"]}


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
