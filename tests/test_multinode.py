"""Stage II on a Ray cluster of several raylets on 127.0.0.1 shaped like cluster.yaml: where things
run (Ray's state API), and a run that loses a teacher node or a trainer node mid-run.

The cluster and its driver live in a process of their own (`multinode_driver.py`): this pytest
process may already be connected to the session's local Ray, and a process talks to one cluster.
All resources are logical (everything runs on this machine's CPUs): the head advertises 0 CPUs,
teacher nodes `teacher`, trainer nodes `trainer`, decode nodes CPUs only — as in cluster.yaml, and
the job asks for them as jobs/imagenet_full.yaml does.

One cluster and one run serve the module (starting 7 raylets here takes a minute or more): two teacher
nodes, three trainer nodes, a decode node and the head. The run (3 epochs) shows where everything
runs, loses a teacher node right after epoch 0's checkpoint and a trainer node right after epoch 1's.
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


def run_on_cluster(tmp_path: Path, nodes: list, runs: list, timeout: float = 1500) -> list:
    """The driver's JSON reports of running each (job, kills) of `runs`, one after the other, on one
    cluster of `nodes` (killing each of `kills`' nodes during its run)."""
    from promptkd_ray.config import distill_job_from_dict

    for job, _ in runs:
        distill_job_from_dict(job)  # a bad job fails here, before a cluster starts
    temp_dir = tempfile.mkdtemp(prefix="raymn_", dir="/tmp")  # short: Ray's socket paths have a length limit
    spec, out = tmp_path / "spec.json", tmp_path / "out.json"
    spec.write_text(
        json.dumps(
            {
                "temp_dir": temp_dir,
                "nodes": nodes,
                "runs": [{"job": job, "kills": kills} for job, kills in runs],
            }
        )
    )
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
        pytest.fail(f"the multi-node runs did not end in {timeout} s: {log[-4000:]}")
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert driver.returncode == 0, log[-6000:]
    reports = json.loads(out.read_text())["runs"]
    print("\n" + "".join(line + "\n" for line in log.splitlines() if line.startswith("cluster of")), end="")
    for (job, _), report in zip(runs, reports):
        print(
            f"{job['name']}: {report['seconds']:.0f} s, epochs {[m['epoch'] for m in report['history']]}, "
            f"images {[m['images'] for m in report['history']]}, bad {report['summary']['bad_images']}, "
            f"resumes {report['summary']['resumes']}, killed {[k.get('node') for k in report['killed']]}"
        )
    return reports


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
    from promptkd_ray.orchestration.audit import recorded_ids
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


TEACHER_NODES = ("teacher_1", "teacher_2")
TRAINER_NODES = ("trainer_1", "trainer_2", "trainer_3")


def killed_node(report: dict, checkpoint: str) -> str:
    """The node the driver killed after `checkpoint` (fails if it killed none)."""
    (node,) = [k["node"] for k in report["killed"] if k.get("after_checkpoint") == checkpoint]
    return node


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    """The module's one cluster and its one run: (job, bad, report, tmp).

    A pool of 2 teacher actors on the two 2-slot teacher nodes, 2 Train workers on the three 1-slot
    trainer nodes, 3 epochs. Right after epoch 0's checkpoint the raylet of a teacher node holding a
    live teacher actor (and every process on it) is killed; right after epoch 1's, the raylet of a
    trainer node running a Train worker."""
    nodes = [HEAD, *map(teacher_node, TEACHER_NODES), *map(trainer_node, TRAINER_NODES), DECODE]
    tmp = tmp_path_factory.mktemp("nodes_lost")
    job, bad = shaped_job(tmp, "nodes_lost", per_class=6, pool=2, workers=2, epochs=3)
    kills = [
        {
            "nodes": list(TEACHER_NODES),
            "actor": "TeacherPredictor",
            "after_checkpoint": "checkpoint_epoch_000",
        },
        {"nodes": list(TRAINER_NODES), "actor": "RayTrainWorker", "after_checkpoint": "checkpoint_epoch_001"},
    ]
    (report,) = run_on_cluster(tmp_path_factory.mktemp("cluster"), nodes, [(job, kills)])
    return job, bad, report, tmp


def test_teachers_trainers_and_decode_run_only_where_cluster_yaml_puts_them(cluster_run):
    """Head (0 CPUs), teacher nodes, trainer nodes, a decode node: teacher actors only on teacher
    nodes (the one restarted after its node was lost included), Train workers only on trainer nodes,
    decode tasks never on the head, the run's bookkeeping actors on the driver's node, as Ray Data's
    split coordinator."""
    job, bad, report, tmp = cluster_run
    teachers, trainers = where(report, "TeacherPredictor"), where(report, "RayTrainWorker")
    decode = where(report, "decode_and_augment", kind="tasks")
    bookkeeping = {
        name: where(report, name)
        for name in ("EpochClock", "BadImageLedger", "ProgressBoard", "SplitCoordinator")
    }
    print(
        f"teacher actors {teachers}, Train workers {trainers}, decode tasks {decode}, bookkeeping {bookkeeping}"
    )
    assert set(teachers) <= set(TEACHER_NODES) and sum(teachers.values()) >= 2
    assert (
        set(trainers) <= set(TRAINER_NODES) and sum(trainers.values()) >= 2
    )  # (a restarted group adds some)
    assert decode and "head" not in decode
    driver_node = set(bookkeeping["SplitCoordinator"])  # Ray Data pins it to the driver's node
    assert len(driver_node) == 1 and all(set(on) == driver_node for on in bookkeeping.values()), bookkeeping
    assert_every_image_once_per_epoch(job, bad, report, tmp)


def test_losing_a_teacher_node_mid_epoch_still_trains_every_image_once_per_epoch(cluster_run):
    """Two teacher nodes (2 teacher slots each), a pool of 2 teacher actors; right after epoch 0's
    checkpoint the raylet of a teacher node holding a live teacher actor (and every process on it)
    is killed: the run goes on with the teacher node left, without going back to a checkpoint."""
    job, bad, report, tmp = cluster_run
    # the killed node held a live teacher actor (the kill's condition); where the state API last saw
    # that actor depends on whether its restart on the node left was done when the run ended (runs
    # here gave {'teacher_2': 2} and {'teacher_2': 1, 'teacher_1': 1}), so only the nodes are checked
    assert killed_node(report, "checkpoint_epoch_000") in set(TEACHER_NODES)
    assert set(where(report, "TeacherPredictor")) <= set(TEACHER_NODES)
    assert 1 not in report["summary"]["resumes"]  # no restart from epoch 0's checkpoint
    assert_every_image_once_per_epoch(job, bad, report, tmp)


def test_losing_a_trainer_node_resumes_from_the_last_checkpoint(cluster_run):
    """Three trainer nodes, two Train workers; the raylet of a node running a worker is killed
    after epoch 1's checkpoint: the worker group restarts on the two left and resumes after epoch 1."""
    job, bad, report, tmp = cluster_run
    assert killed_node(report, "checkpoint_epoch_001") in where(report, "RayTrainWorker")
    resumes = report["summary"]["resumes"]
    assert resumes == [2]  # the restarted group went on after epoch 1's checkpoint (the teacher loss: none)
    assert_every_image_once_per_epoch(job, bad, report, tmp)
    steps = [m["step"] for m in report["history"]]
    assert steps == [steps[0] * (e + 1) for e in range(3)]  # no step counted twice
