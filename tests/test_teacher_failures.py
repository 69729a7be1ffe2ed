"""A teacher actor killed mid-epoch (its process SIGKILLed from outside): Ray restarts it, the call
that was in flight runs again on the restarted actor, and the epoch completes — every image
reaches the trainers exactly once, without a Train restart (the job allows none), with the
bad-image count and the metrics right, and without Ray's error about restarting actors whose
constructor arguments live in the object store (Ray issue 53727)."""

import math
import os
import threading
import time
from pathlib import Path

import pytest
from own_ray import descendants
from stage2_fakes import make_split_json, tiny_job

from promptkd_ray.config import distill_job_from_dict

EPOCHS = 3
RAY_ISSUE = "53727"


def teacher_processes() -> list:
    """The teacher actor processes among this test process's descendants (this session's cluster
    only: other Ray clusters on the machine are left alone)."""
    return descendants(os.getpid(), "TeacherPredictor")


def _calls_submitted_since(actor_id: str, since_ns: int) -> list:
    """The method calls of actor `actor_id` (hex) created after `since_ns` (wall clock), from the task
    events in Ray's GCS (the caller records a call's creation, so it shows while the actor itself is
    stopped): [(method, attempt number, set of states reached)], one row per attempt. Read straight
    from the GCS: the state API needs the dashboard, which the test cluster does not start."""
    import grpc
    from ray._private.worker import _global_node
    from ray.core.generated import common_pb2, gcs_service_pb2, gcs_service_pb2_grpc

    filters = gcs_service_pb2.GetTaskEventsRequest.Filters
    request = gcs_service_pb2.GetTaskEventsRequest(
        filters=filters(
            actor_filters=[
                filters.ActorIdFilter(actor_id=bytes.fromhex(actor_id), predicate=gcs_service_pb2.EQUAL)
            ]
        )
    )
    with grpc.insecure_channel(_global_node.gcs_address) as channel:
        reply = gcs_service_pb2_grpc.TaskInfoGcsServiceStub(channel).GetTaskEvents(request, timeout=30)
    calls = []
    for event in reply.events_by_task:
        stamps = dict(event.state_updates.state_ts_ns)
        if event.task_info.type == common_pb2.ACTOR_TASK and stamps and min(stamps.values()) > since_ns:
            calls.append(
                (
                    event.task_info.name.rsplit(".", 1)[-1],
                    event.attempt_number,
                    {common_pb2.TaskStatus.Name(k) for k in stamps},
                )
            )
    return calls


def _actor_id(pid: int) -> str:
    """The id (hex) of the live TeacherPredictor actor in process `pid` (from the GCS's actor table)."""
    import ray._private.state

    (found,) = [
        actor_id
        for actor_id, info in ray._private.state.actors().items()
        if info["ActorClassName"] == "TeacherPredictor" and info["State"] == "ALIVE" and info["Pid"] == pid
    ]
    return found


def kill_a_teacher_mid_epoch(
    run_dir: Path, epoch: int = 1, timeout: float = 900.0
) -> tuple[dict, threading.Thread]:
    """In the background, deterministically on a fast machine or a slow one: as soon as checkpoint
    `epoch` − 1 is being written (its folder appears: rank 0 is reporting, epoch `epoch` cannot have
    started), SIGSTOP the run's teacher actor; wait until the epoch's first calls have been submitted
    to it (they wait, unanswered), then SIGKILL it and wait for Ray to restart it. Returns (the dict
    that receives what happened, the thread)."""
    seen: dict = {}

    def watch() -> None:
        deadline = time.time() + timeout
        while not (run_dir / f"checkpoint_epoch_{epoch - 1:03d}").exists() and time.time() < deadline:
            time.sleep(0.005)
        (teacher,) = teacher_processes()  # the run's one teacher actor, alive since before epoch 0
        teacher.suspend()
        try:
            kill_when_calls_wait(teacher)
        except Exception as exc:  # never leave the run's teacher stopped: the run would hang
            seen["error"] = repr(exc)
            teacher.resume()

    def kill_when_calls_wait(teacher) -> None:
        stopped_ns = time.time_ns()
        actor_id = seen["actor_id"] = _actor_id(teacher.pid)
        seen["stopped_ns"], deadline = stopped_ns, time.time() + 300
        while not _calls_submitted_since(actor_id, stopped_ns) and time.time() < deadline:
            time.sleep(0.5)
        seen["waiting_calls"] = len(_calls_submitted_since(actor_id, stopped_ns))
        seen["next_checkpoint_before_kill"] = (run_dir / f"checkpoint_epoch_{epoch:03d}").exists()
        teacher.kill()
        seen["killed"], deadline = teacher.pid, time.time() + 120
        while time.time() < deadline and not [p for p in teacher_processes() if p.pid != teacher.pid]:
            time.sleep(0.05)
        seen["restarted"] = [p.pid for p in teacher_processes() if p.pid != teacher.pid]

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return seen, thread


def _log_lines(logs: Path, words: tuple = (RAY_ISSUE, "TeacherPredictor")) -> set:
    """Lines of the cluster's log files that hold one of `words` (by default: that cite Ray issue
    53727, or that name the teacher actor's class)."""
    lines = set()
    for path in logs.rglob("*"):
        if path.is_file():
            try:
                lines |= {
                    f"{path.name}: {line}"
                    for line in path.read_text(errors="replace").splitlines()
                    if any(word in line for word in words)
                }
            except OSError:
                pass
    return lines


def test_teacher_actors_restart_and_retry_their_calls_and_an_autoscaled_pool_starts_none_for_the_run():
    from promptkd_ray.config.distill import TeacherPoolConfig
    from promptkd_ray.orchestration.teacher_pool import RESTARTS, pool_options, teacher_actors

    fixed, autoscaled = TeacherPoolConfig(size=2), TeacherPoolConfig(size=1, max_size=4)
    for pool in (fixed, autoscaled):
        options = pool_options(pool, cluster_has_gpus=False)
        assert (options["max_restarts"], options["max_task_retries"]) == (RESTARTS, -1) and RESTARTS > 0
    with teacher_actors(None, autoscaled, cluster_has_gpus=False) as actors:  # Ray Data's pool, per epoch
        assert actors == []


@pytest.fixture(scope="module")
def teacher_killed_run(tmp_path_factory, ray_cluster):
    """2 DDP workers, 3 epochs, 3 unreadable files, small teacher batches (many calls per epoch);
    the teacher actor killed during epoch 1; no Train restart allowed (`max_failures: 0`)."""
    from ray._private.worker import _global_node

    from promptkd_ray.distill import run_distillation

    tmp = tmp_path_factory.mktemp("teacher_killed")
    root, bad = make_split_json(tmp / "data", per_class=24, bad_per_kind=1)
    raw = tiny_job(
        root,
        tmp / "runs",
        "teacher_killed",
        teacher_pool={"size": 1, "batch_size": 4},
        data={"decode_batch_size": 4},
        train={"num_workers": 2, "epochs": EPOCHS, "max_failures": 0, "record_ids": True},
    )
    logs = Path(_global_node.get_logs_dir_path())
    before = _log_lines(logs)
    seen, watcher = kill_a_teacher_mid_epoch(tmp / "runs" / "teacher_killed")
    result = run_distillation(distill_job_from_dict(raw))
    watcher.join(timeout=10)
    time.sleep(2)  # Ray's log monitor and task events flush
    if "stopped_ns" in seen:
        import ray._private.state

        seen["calls"] = _calls_submitted_since(seen["actor_id"], seen["stopped_ns"])
        seen["restarts"] = ray._private.state.actors()[seen["actor_id"]]["NumRestarts"]
    return result, raw, bad, tmp / "runs" / "teacher_killed", seen, _log_lines(logs) - before


@pytest.mark.slow
def test_the_teacher_was_killed_mid_epoch_and_restarted_without_a_train_restart(teacher_killed_run):
    result, _, _, _, seen, _ = teacher_killed_run
    print(
        {
            k: seen.get(k)
            for k in (
                "killed",
                "restarted",
                "restarts",
                "waiting_calls",
                "next_checkpoint_before_kill",
                "error",
            )
        }
    )
    assert seen.get("killed") and not seen["next_checkpoint_before_kill"]  # killed during epoch 1 …
    assert seen["waiting_calls"] >= 1  # … with epoch 1's calls submitted to it and unanswered
    assert len(seen["restarted"]) == 1 and seen["restarts"] == 1  # Ray restarted the actor: a new process
    retried = [c for c in seen["calls"] if c[1] >= 1]
    print("calls since the stop:", len(seen["calls"]), "retried:", len(retried), sorted(retried)[:3])
    assert retried and all(name == "features" and "FINISHED" in states for name, _, states in retried)  # the
    # calls that waited on the stopped actor ran again on the restarted one and finished
    assert result.summary["resumes"] == []  # the run never went back to a checkpoint
    assert [m["epoch"] for m in result.history] == list(range(EPOCHS))


@pytest.mark.slow
def test_every_image_reaches_the_trainers_exactly_once_in_every_epoch(teacher_killed_run):
    from promptkd_ray.data.sources import resolve_source
    from promptkd_ray.orchestration.audit import recorded_ids
    from promptkd_ray.storage import Storage

    result, raw, bad, run_dir, _, _ = teacher_killed_run
    job = distill_job_from_dict(raw)
    source = resolve_source(job.data, job.seed)
    expected = sorted(set(source.train_paths) - set(bad))
    steps = len(expected) // 8
    for epoch in range(EPOCHS):
        ids = recorded_ids(Storage(str(run_dir)), epoch)
        assert sorted(ids["trained"] + ids["dropped"]) == expected, epoch  # none lost, none twice
        assert len(ids["trained"]) == result.history[epoch]["images"] == steps * 8
    assert [m["step"] for m in result.history] == [steps * (e + 1) for e in range(EPOCHS)]


@pytest.mark.slow
def test_bad_images_and_metrics_stay_right(teacher_killed_run):
    result, _, bad, _, _, _ = teacher_killed_run
    assert [m["bad_images"] for m in result.history] == [3] * EPOCHS
    assert sorted(result.summary["bad_image_examples"]) == sorted(bad)
    for m in result.history:
        assert 0.0 <= m["train_agreement"] <= 100.0 and math.isfinite(m["loss"]) and "heldout_agreement" in m


@pytest.mark.slow
def test_no_teacher_actor_was_created_with_constructor_arguments_in_the_object_store(teacher_killed_run):
    """Ray's error names the actor's class; Ray Train's own actors (its PreemptionWatcher) may
    still be cited, the teacher actors must not. The run's log lines that name the teacher actor's
    class were read (the teacher processes' own logs among them), so the error would have been seen."""
    *_, new_lines = teacher_killed_run
    teacher_lines = [line for line in new_lines if "TeacherPredictor" in line]
    print(len(teacher_lines), "new log lines name TeacherPredictor, e.g.", sorted(teacher_lines)[:3])
    assert teacher_lines, "no log line of this run names the teacher actor: the logs were not read"
    issue_lines = [line for line in teacher_lines if RAY_ISSUE in line]
    assert not issue_lines, sorted(issue_lines)[:3]
