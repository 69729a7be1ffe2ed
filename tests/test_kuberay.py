"""deploy/rayjob.yaml is a KubeRay RayJob whose node groups offer what the shipped cluster job asks for."""

import json
import re
from pathlib import Path

import pytest
import yaml

from promptkd_ray.config import load_job

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return yaml.safe_load((REPO / "deploy" / "rayjob.yaml").read_text())


def group_resources(group: dict) -> dict:
    """What one pod of a head or worker group advertises to Ray: CPUs and GPUs from its container's
    limits (as KubeRay derives them) unless rayStartParams set them, plus the custom resources."""
    params = group.get("rayStartParams") or {}
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    offered = {
        "CPU": float(params.get("num-cpus", limits.get("cpu", 0))),
        "GPU": float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0))),
    }
    if "resources" in params:  # KubeRay's form: a quoted JSON string, e.g. '"{\"teacher\": 8}"'
        custom = json.loads(params["resources"])
        offered.update(json.loads(custom) if isinstance(custom, str) else custom)
    return offered


def test_rayjob_parses_as_a_kuberay_rayjob_running_the_distill_command(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    command = spec["entrypoint"].split()
    assert command[:2] == ["promptkd-ray", "distill"]
    config = Path(command[command.index("--config") + 1])
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    copied_to = re.search(r"^COPY\s+(?:--\S+\s+)*\.\s+(\S+)$", dockerfile, re.M).group(1)
    assert (REPO / config.relative_to(copied_to)) == REPO / "jobs" / "imagenet_full.yaml"
    assert spec["rayClusterSpec"]["rayVersion"].startswith("2.60")


def test_rayjob_has_the_node_groups_of_cluster_yaml(rayjob):
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    spec = rayjob["spec"]["rayClusterSpec"]
    assert group_resources(spec["headGroupSpec"])["CPU"] == 0  # as cluster.yaml's head: no work lands there
    groups = {g["groupName"].replace("-", "_"): g for g in spec["workerGroupSpecs"]}
    launcher = {n: t for n, t in cluster["available_node_types"].items() if n != cluster["head_node_type"]}
    assert set(groups) == set(launcher)
    for name, node_type in launcher.items():
        custom = {k: v for k, v in group_resources(groups[name]).items() if k not in ("CPU", "GPU")}
        assert custom == node_type["resources"], name
        assert groups[name]["maxReplicas"] == node_type["max_workers"], name


def test_rayjob_offers_what_the_cluster_job_asks_for(rayjob):
    job = load_job(REPO / "jobs" / "imagenet_full.yaml", check_paths_exist=False)
    pods = [(g, group_resources(g)) for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]]
    pool, train = job.teacher_pool, job.train
    actor = {"CPU": pool.num_cpus, "GPU": pool.num_gpus, **pool.resources}
    worker = {
        "CPU": train.cpus_per_worker,
        "GPU": 1.0 if train.use_gpu else 0.0,
        **train.resources_per_worker,
    }
    for wanted, count in ((actor, max(pool.size, pool.max_size)), (worker, train.num_workers)):
        fits = [(g, r) for g, r in pods if all(r.get(k, 0) >= v for k, v in wanted.items())]
        assert fits, wanted
        # enough of them at the groups' maximum size: per pod as many as every resource allows
        capacity = sum(
            g["maxReplicas"] * min(int(r[k] // v) for k, v in wanted.items() if v) for g, r in fits
        )
        assert capacity >= count, (wanted, capacity, count)
    teacher_groups = {g["groupName"] for g, r in pods if r.get("teacher")}
    trainer_groups = {g["groupName"] for g, r in pods if r.get("trainer")}
    assert teacher_groups and trainer_groups and not teacher_groups & trainer_groups


def test_rayjob_keeps_token_auth_on_and_the_job_server_on_localhost(rayjob):
    spec = rayjob["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    assert (
        spec["submissionMode"] == "SidecarMode"
    )  # the submitter reaches the job server on the head's localhost
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env.get("RAY_AUTH_MODE", "token") == "token"
