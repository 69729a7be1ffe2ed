"""cluster.yaml is a valid Ray cluster-launcher config whose node types fit the shipped cluster job."""

import copy
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from promptkd_ray.config import load_job

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_rays_schema(cluster):
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads(Path(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)
    validate_config(prepare_config(copy.deepcopy(cluster)))  # as `ray up` fills and checks it


def test_node_types_cover_head_teachers_trainers_and_decoders(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("CPU") == 0  # the head schedules no decode, teacher or trainer work
    teachers = [t for t in types.values() if t["resources"].get("teacher", 0) > 0]
    trainers = [t for t in types.values() if t["resources"].get("trainer", 0) > 0]
    decoders = [name for name, t in types.items() if not t["resources"] and name != cluster["head_node_type"]]
    assert teachers and trainers and decoders
    assert all(t["max_workers"] >= 1 for t in teachers + trainers)


def test_every_node_installs_the_synced_package(cluster):
    mounted = [remote for remote, local in cluster["file_mounts"].items() if local == "."]
    assert mounted == ["~/promptkd_ray"]
    installs = [c for c in cluster["setup_commands"] if "pip install" in c and "promptkd_ray" in c]
    assert installs and "ray[default]" in installs[0]
    assert any("--dashboard-host=127.0.0.1" in c for c in cluster["head_start_ray_commands"])


def test_cluster_job_asks_only_for_resources_the_cluster_offers(cluster):
    job = load_job(REPO / "jobs" / "imagenet_full.yaml", check_paths_exist=False)
    offered = {name: t["resources"] for name, t in cluster["available_node_types"].items()}
    for wanted in (job.teacher_pool.resources, job.train.resources_per_worker):
        assert wanted and any(all(r.get(k, 0) >= v for k, v in wanted.items()) for r in offered.values())
    teacher_nodes = {n for n, r in offered.items() if "teacher" in r}
    trainer_nodes = {n for n, r in offered.items() if "trainer" in r}
    assert not teacher_nodes & trainer_nodes  # students never take a teacher's GPU
    assert job.storage_path.startswith("s3://") and job.data.root.startswith("s3://")


def test_cluster_keeps_token_auth_on_and_the_job_server_on_localhost(cluster):
    starts = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2 and all(c.startswith("RAY_AUTH_MODE=token ray start") for c in ray_starts)
    head = [c for c in cluster["head_start_ray_commands"] if "ray start" in c][0]
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in yaml.safe_dump(cluster)
    assert (
        cluster["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    )  # the same token on every node


def test_no_shipped_config_turns_auth_off():
    """Auth is off only for the local test cluster (tests/conftest.py, the Makefile's local targets)."""
    shipped = [
        REPO / "cluster.yaml",
        *sorted((REPO / "deploy").iterdir()),
        *sorted((REPO / "jobs").glob("*.yaml")),
    ]
    for path in shipped:
        text = path.read_text()
        assert not re.search(r"RAY_AUTH_MODE\W+disabled|mode:\s*disabled", text), path
    assert (
        'os.environ.setdefault("RAY_AUTH_MODE", "disabled")' in (REPO / "tests" / "conftest.py").read_text()
    )
