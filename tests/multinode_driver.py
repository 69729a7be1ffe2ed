"""Driver for tests/test_multinode.py, run in its own process: starts a Ray cluster of several
raylets on 127.0.0.1 shaped like cluster.yaml (one `ray start --block` per node), runs a distill job on
it, optionally kills nodes' raylets (and their workers) mid-run, and writes what happened as JSON.

    python multinode_driver.py SPEC.json OUT.json

SPEC: {"temp_dir": short folder for Ray's sockets and logs,
       "nodes": [{"name": "head", "num_cpus": 0, "resources": {}}, ...]   (the first one is the head),
       "runs": [{"job": a distill job dict,
                 "kills": [{"nodes": [candidate names], "actor": part of the class name of an actor
                            that must be ALIVE on the node killed,
                            "after_checkpoint": "checkpoint_epoch_000"}, ...]}, ...]}
       The runs go one after the other on the same cluster (a node killed by one stays dead for the next);
       a run's kills each wait for their own checkpoint (give them different ones).
OUT: {"nodes": {name: node id},
      "runs": [{"actors": [...], "tasks": [...], "history": [...], "summary": {...},
                "killed": [{"node": ..., "after_checkpoint": ...}, ...], "seconds": float}, ...]}
      (a run's actors and tasks: those that were not listed after the runs before it)

Design decisions:
- A pytest process can be connected to one Ray cluster only, and the test session already has its
  own local one: this cluster and its driver live in this process, which the test starts.
- The nodes are `ray start` processes, not `ray.cluster_utils.Cluster` (a driver in the process that
  started the head with it hung connecting to the GCS). Every port is picked free (other Ray clusters
  may run on the same machine); teardown ends each node's process tree, this cluster's only (never
  `ray stop`). A node whose raylet does not come up is started again.
- Placement comes from Ray's state API (the head runs the dashboard): every actor and every
  normal task with the node it ran on, by the node's name in SPEC.
- The kill is SIGKILL of the node's whole process tree (raylet, object store, agents, workers), as
  when a machine disappears.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from own_ray import free_ports_and_worker_range, registered, stop_tree

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Every raylet's memory monitor watches the whole machine (all nodes here share it, and so does
# whatever else runs on it) and would kill this run's workers for memory others use.
os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")

OBJECT_STORE = 150 * 1024**2
WORKER_PORTS = 100  # width of each node's worker port range
RAY = str(Path(sys.executable).with_name("ray"))


class LocalCluster:
    """Raylets on 127.0.0.1, one `ray start --block` process each (its own session, so that the
    node's processes can be ended, or killed, as a tree)."""

    def __init__(self, temp_dir: str):
        self.temp_dir, self.address, self.dashboard = temp_dir, "", ""
        self.starting = None  # the `ray start` process of the node being started
        self.processes: dict = {}  # name → Popen of `ray start --block`
        self.manager_ports: dict = {}  # name → node manager port (how the node is found in ray.nodes())

    def start(self, nodes: list, attempts: int = 6) -> None:
        for i, spec in enumerate(nodes):
            for attempt in range(1, attempts + 1):
                if self._start_node(spec, head=i == 0):
                    break
                print(f"node {spec['name']} did not start (attempt {attempt})", file=sys.stderr, flush=True)
            else:
                raise RuntimeError(f"node {spec['name']} did not start in {attempts} attempts")

    def _start_node(self, spec: dict, head: bool, timeout: float = 180.0) -> bool:
        """A raylet gives its dashboard agent a fixed 15 s to report its ports and aborts otherwise,
        which a machine loaded by other work can miss: then False (the caller starts it again)."""
        (gcs, dashboard, client, agent_http, agent_grpc, metrics, runtime_env, manager, objects), low = (
            free_ports_and_worker_range(9, WORKER_PORTS)
        )
        cmd = [
            RAY,
            "start",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={spec['num_cpus']}",
            f"--resources={json.dumps(spec.get('resources', {}))}",
            f"--object-store-memory={OBJECT_STORE}",
            f"--node-manager-port={manager}",
            f"--object-manager-port={objects}",
            f"--min-worker-port={low}",
            f"--max-worker-port={low + WORKER_PORTS}",
            f"--dashboard-agent-listen-port={agent_http}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={runtime_env}",
        ]
        if head:
            self.address = f"127.0.0.1:{gcs}"
            cmd += [
                "--head",
                f"--port={gcs}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard}",
                f"--ray-client-server-port={client}",
                f"--temp-dir={self.temp_dir}",
            ]
        else:
            cmd += [f"--address={self.address}"]
        log = Path(self.temp_dir) / f"start_{spec['name']}.log"
        # Ray's own code in the workers that looks for "the" cluster (Ray Train's placement-group
        # cleaner, through the state API) finds this one and not another on the machine.
        env = dict(os.environ, RAY_ADDRESS=self.address)
        with log.open("w") as out:
            process = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        self.starting = process  # ended by `shutdown` too, should the driver stop meanwhile
        deadline = time.time() + timeout
        while time.time() < deadline and process.poll() is None:
            if "Ray runtime started" in log.read_text():
                self.processes[spec["name"]], self.manager_ports[spec["name"]] = process, manager
                if head:  # the dashboard's modules load for a while: let them, before more agents start
                    self.dashboard = f"http://127.0.0.1:{dashboard}"
                    wait_for_url(f"{self.dashboard}/api/version", deadline)
                return True
            time.sleep(0.5)
        stop_tree(process)
        return False

    def node_ids(self) -> dict:
        """{name: node id} (after `ray.init`)."""
        import ray

        by_port = {n["NodeManagerPort"]: n["NodeID"] for n in ray.nodes()}
        return {name: by_port[port] for name, port in self.manager_ports.items()}

    def kill(self, name: str) -> None:
        """SIGKILL every process of the node (raylet, object store, agents, workers)."""
        stop_tree(self.processes.pop(name), kill=True)

    def shutdown(self) -> None:
        if self.starting is not None:
            stop_tree(self.starting)
        for name in reversed(list(self.processes)):
            stop_tree(self.processes.pop(name))


def wait_for_url(url: str, deadline: float) -> None:
    import urllib.request

    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return
        except OSError:
            time.sleep(1)


def alive_actor_on(dashboard: str, node_id: str, class_part: str) -> bool:
    from ray.util.state import list_actors

    try:
        actors = list_actors(
            address=dashboard, filters=[("state", "=", "ALIVE")], limit=10_000, raise_on_missing_output=False
        )
    except Exception:  # the state API timed out on a busy machine: ask again
        return False
    return any(class_part in a.class_name and a.node_id == node_id for a in actors)


def kill_later(
    cluster: LocalCluster, nodes: dict, run_dir: Path, kill: dict, killed: dict, timeout: float = 600.0
) -> threading.Event:
    """In the background: once `after_checkpoint` is registered, SIGKILL every process of the first
    node of `kill["nodes"]` on which an actor of class `kill["actor"]` is alive. Returns the event
    that stops the watch (set when the run has ended: a later run on the cluster is never hit)."""
    stop = threading.Event()

    def watch() -> None:
        deadline = time.time() + timeout
        while not registered(run_dir, kill["after_checkpoint"]) and time.time() < deadline:
            if stop.wait(0.1):
                return
        while time.time() < deadline and not stop.is_set():
            victims = [
                name
                for name in kill["nodes"]
                if alive_actor_on(cluster.dashboard, nodes[name], kill["actor"])
            ]
            if victims:
                ids_before = sorted(p.name for p in (run_dir / "ids").glob("epoch_*"))
                cluster.kill(victims[0])
                killed.update(
                    node=victims[0],
                    after_checkpoint=kill["after_checkpoint"],
                    id_epochs_written_before=ids_before,
                )
                return
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()
    return stop


def placement(dashboard: str, names: dict) -> tuple[list, list]:
    """Every actor and every normal task of the cluster, with the name of the node it ran on (the
    dashboard's address given: with several Ray clusters on the machine, "auto" finds none)."""
    from ray.util.state import list_actors, list_tasks

    by_id = {node_id: name for name, node_id in names.items()}
    actors = [
        {
            "id": a.actor_id,
            "class_name": a.class_name,
            "node": by_id.get(a.node_id, a.node_id),
            "state": a.state,
        }
        for a in list_actors(address=dashboard, limit=10_000, raise_on_missing_output=False)
    ]
    tasks = [
        {
            "id": f"{t.task_id}/{t.attempt_number}",
            "name": t.name,
            "node": by_id.get(t.node_id, t.node_id),
            "state": t.state,
        }
        for t in list_tasks(
            address=dashboard,
            filters=[("type", "=", "NORMAL_TASK")],
            limit=10_000,
            raise_on_missing_output=False,
        )
    ]
    return actors, tasks


def run_one(cluster: LocalCluster, names: dict, run: dict, listed: set) -> dict:
    """Run one job of SPEC (killing the nodes it says); its report, with the actors and tasks
    not in `listed` (the ids listed after the runs before; this run's are added)."""
    from promptkd_ray.config import distill_job_from_dict
    from promptkd_ray.distill import run_distillation
    from promptkd_ray.storage import Storage

    job = distill_job_from_dict(run["job"])
    run_dir = Path(Storage(job.storage_path).path(job.name))
    killed: list = [{} for _ in run.get("kills", [])]
    stops = [kill_later(cluster, names, run_dir, *pair) for pair in zip(run.get("kills", []), killed)]
    start = time.time()
    try:
        result = run_distillation(job)
    finally:
        for stop in stops:
            stop.set()
    seconds = time.time() - start
    actors, tasks = placement(cluster.dashboard, names)
    actors, tasks = ([row for row in rows if row["id"] not in listed] for rows in (actors, tasks))
    listed.update(row["id"] for row in actors + tasks)
    return {
        "actors": actors,
        "tasks": tasks,
        "history": result.history,
        "summary": {k: v for k, v in result.summary.items() if k != "history"},
        "killed": killed,
        "seconds": seconds,
    }


def main(spec_path: str, out_path: str) -> None:
    import ray

    spec = json.loads(Path(spec_path).read_text())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))  # ends the cluster too (finally below)
    cluster = LocalCluster(spec["temp_dir"])
    try:
        start = time.time()
        cluster.start(spec["nodes"])
        ray.init(address=cluster.address, log_to_driver=False)
        names = cluster.node_ids()
        print(f"cluster of {len(names)} nodes up in {time.time() - start:.0f} s", flush=True)
        listed: set = set()
        runs = [run_one(cluster, names, run, listed) for run in spec["runs"]]
        Path(out_path).write_text(json.dumps({"nodes": names, "runs": runs}, default=str))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:3])
