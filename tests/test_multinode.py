"""Stage II on a Ray cluster of several raylets on 127.0.0.1 shaped like cluster.yaml: where things
run (Ray's state API), and a run that loses a teacher node or a trainer node mid-run.

The cluster and its driver live in a process of their own (`multinode_driver.py`): this pytest
process may already be connected to the session's local Ray, and a process talks to one cluster.
All resources are logical (everything runs on this machine's CPUs): the head advertises 0 CPUs,
teacher nodes `teacher`, trainer nodes `trainer`, decode nodes CPUs only — as in cluster.yaml, and
the job asks for them as jobs/imagenet_full.yaml does.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from stage2_fakes import make_split_json, tiny_job

pytestmark = [pytest.mark.slow, pytest.mark.multinode]

DRIVER = Path(__file__).with_name("multinode_driver.py")
HEAD = {"name": "head", "num_cpus": 0}
DECODE = {"name": "decode", "num_cpus": 3}


def teacher_node(name: str, slots: int = 2) -> dict:
    return {"name": name, "num_cpus": 2, "resources": {"teacher": slots}}


def trainer_node(name: str, slots: int = 1) -> dict:
    return {"name": name, "num_cpus": 2, "resources": {"trainer": slots}}


def shaped_job(
    tmp_path: Path, name: str, per_class: int, pool: int, workers: int, epochs: int
) -> tuple[dict, list]:
    """A tiny distill job with imagenet_full.yaml's resource keys, ids recorded; 3 unreadable files."""
    root, bad = make_split_json(tmp_path / "data", per_class=per_class, bad_per_kind=1)
    job = tiny_job(
        root,
        tmp_path / "runs",
        name,
        data={"heldout_images": 4},
        teacher_pool={"size": pool, "resources": {"teacher": 1}},
        train={
            "num_workers": workers,
            "epochs": epochs,
            "resources_per_worker": {"trainer": 1},
            "batch_size": 8,
            "warmup_epochs": 0,
            "max_failures": 2,
            "record_ids": True,
        },
    )
    return job, bad


def run_on_cluster(tmp_path: Path, nodes: list, job: dict, kill: dict = None, timeout: float = 900) -> dict:
    """The driver's JSON report of running `job` on a cluster of `nodes` (killing `kill`'s node)."""
    from promptkd_ray.config import distill_job_from_dict

    distill_job_from_dict(job)  # a bad job fails here, before a cluster starts
    temp_dir = tempfile.mkdtemp(prefix="raymn_", dir="/tmp")  # short: Ray's socket paths have a length limit
    spec, out = tmp_path / "spec.json", tmp_path / "out.json"
    spec.write_text(json.dumps({"temp_dir": temp_dir, "nodes": nodes, "job": job, "kill": kill}))
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen(
        [sys.executable, str(DRIVER), str(spec), str(out)],
        env=env,
        cwd=DRIVER.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        log, _ = driver.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        driver.terminate()  # the driver ends its cluster's nodes on SIGTERM
        log, _ = driver.communicate()
        pytest.fail(f"the multi-node run did not end in {timeout} s: {log[-4000:]}")
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert driver.returncode == 0, log[-6000:]
    report = json.loads(out.read_text())
    print(
        f"\n{job['name']}: {report['seconds']:.0f} s, epochs {[m['epoch'] for m in report['history']]}, "
        f"images {[m['images'] for m in report['history']]}, bad {report['summary']['bad_images']}, "
        f"resumes {report['summary']['resumes']}, killed {report['killed']}"
    )
    return report


def where(report: dict, part: str, kind: str = "actors") -> dict:
    """{node name: count} of the actors (or tasks) whose class (or task) name contains `part`."""
    out: dict = {}
    for row in report[kind]:
        if part in (row["class_name"] if kind == "actors" else row["name"]):
            out[row["node"]] = out.get(row["node"], 0) + 1
    return out


def expected_ids(job: dict, bad: list) -> list:
    from promptkd_ray.config import distill_job_from_dict
    from promptkd_ray.data.sources import resolve_source

    parsed = distill_job_from_dict(job)
    return sorted(set(resolve_source(parsed.data, parsed.seed).train_paths) - set(bad))


def assert_every_image_once_per_epoch(job: dict, bad: list, report: dict, tmp_path: Path) -> None:
    """Per epoch, the ids all Train workers received (an epoch run again after a failure included)
    are every readable train image, each once; history and bad-image count stay right."""
    from promptkd_ray.distill import recorded_ids
    from promptkd_ray.storage import Storage

    expected, epochs = expected_ids(job, bad), job["train"]["epochs"]
    assert [m["epoch"] for m in report["history"]] == list(range(epochs))
    for epoch in range(epochs):
        ids = recorded_ids(Storage(str(tmp_path / "runs" / job["name"])), epoch)
        assert sorted(ids["trained"] + ids["dropped"]) == expected, epoch  # none lost, none twice
        assert len(ids["trained"]) == report["history"][epoch]["images"]
    assert [m["bad_images"] for m in report["history"]] == [len(bad)] * epochs
    assert report["summary"]["bad_images"] == len(bad)
    assert sorted(report["summary"]["bad_image_examples"]) == sorted(bad)


def test_teachers_trainers_and_decode_run_only_where_cluster_yaml_puts_them(tmp_path):
    """Head (0 CPUs), a teacher node, a trainer node, a decode node: teacher actors only on the
    teacher node, Train workers only on the trainer node, decode tasks never on the head, the run's
    bookkeeping actors on the driver's node, as Ray Data's split coordinator."""
    nodes = [HEAD, teacher_node("teacher_1"), trainer_node("trainer_1", slots=2), DECODE]
    job, bad = shaped_job(tmp_path, "placed", per_class=6, pool=2, workers=2, epochs=1)
    report = run_on_cluster(tmp_path, nodes, job)
    teachers, trainers = where(report, "TeacherPredictor"), where(report, "RayTrainWorker")
    decode = where(report, "decode_and_augment", kind="tasks")
    bookkeeping = {
        name: where(report, name)
        for name in ("EpochClock", "BadImageLedger", "ProgressBoard", "SplitCoordinator")
    }
    print(
        f"teacher actors {teachers}, Train workers {trainers}, decode tasks {decode}, bookkeeping {bookkeeping}"
    )
    assert set(teachers) == {"teacher_1"} and sum(teachers.values()) >= 2
    assert set(trainers) == {"trainer_1"} and sum(trainers.values()) >= 2  # (a restarted group adds some)
    assert decode and "head" not in decode
    driver_node = set(bookkeeping["SplitCoordinator"])  # Ray Data pins it to the driver's node
    assert len(driver_node) == 1 and all(set(on) == driver_node for on in bookkeeping.values()), bookkeeping
    assert_every_image_once_per_epoch(job, bad, report, tmp_path)


def test_losing_a_teacher_node_mid_epoch_still_trains_every_image_once_per_epoch(tmp_path):
    """Two teacher nodes (2 teacher slots each), a pool of 2 teacher actors; right after epoch 0's
    checkpoint the raylet of a teacher node holding a live teacher actor (and every process on it)
    is killed: the run goes on with the teacher node left."""
    nodes = [
        HEAD,
        teacher_node("teacher_1"),
        teacher_node("teacher_2"),
        trainer_node("trainer_1", slots=2),
        DECODE,
    ]
    job, bad = shaped_job(tmp_path, "teacher_lost", per_class=6, pool=2, workers=2, epochs=2)
    kill = {
        "nodes": ["teacher_1", "teacher_2"],
        "actor": "TeacherPredictor",
        "after_checkpoint": "checkpoint_epoch_000",
    }
    report = run_on_cluster(tmp_path, nodes, job, kill)
    # the killed node held a live teacher actor (the kill's condition); where the state API last saw
    # that actor depends on whether its restart on the node left was done when the run ended (runs
    # here gave {'teacher_2': 2} and {'teacher_2': 1, 'teacher_1': 1}), so only the nodes are checked
    assert report["killed"] and report["killed"]["node"] in {"teacher_1", "teacher_2"}
    assert set(where(report, "TeacherPredictor")) <= {"teacher_1", "teacher_2"}
    assert_every_image_once_per_epoch(job, bad, report, tmp_path)


def test_losing_a_trainer_node_resumes_from_the_last_checkpoint(tmp_path):
    """Three trainer nodes, two Train workers; the raylet of a node running a worker is killed
    after epoch 0's checkpoint: the worker group restarts on the two left and resumes after epoch 0."""
    nodes = [
        HEAD,
        teacher_node("teacher_1"),
        trainer_node("trainer_1"),
        trainer_node("trainer_2"),
        trainer_node("trainer_3"),
        DECODE,
    ]
    job, bad = shaped_job(tmp_path, "trainer_lost", per_class=6, pool=1, workers=2, epochs=2)
    kill = {
        "nodes": ["trainer_1", "trainer_2", "trainer_3"],
        "actor": "RayTrainWorker",
        "after_checkpoint": "checkpoint_epoch_000",
    }
    report = run_on_cluster(tmp_path, nodes, job, kill)
    assert report["killed"] and report["killed"]["node"] in where(report, "RayTrainWorker")
    resumes = report["summary"]["resumes"]
    assert resumes == [1]  # the restarted group went on after epoch 0's checkpoint
    assert_every_image_once_per_epoch(job, bad, report, tmp_path)
    steps = [m["step"] for m in report["history"]]
    assert steps == [steps[0] * (e + 1) for e in range(2)]  # no step counted twice
