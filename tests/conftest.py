"""Shared test fixtures: ONE local Ray cluster per test session, started on first use.

Ray on this 2-core machine: an actor pool plus Train workers deadlock unless Ray is told it has
more logical CPUs than the machine (DESIGN.md, "Running here"), hence `num_cpus=6`: 2 Train
workers + 1 teacher actor + decode tasks + Ray's own actors. Tests that use it are marked `slow`.
"""

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster (6 logical CPUs, 200 MB object store, no dashboard) for the session."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=6,
            object_store_memory=200 * 1024**2,
            include_dashboard=False,
            log_to_driver=True,
        )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def toy_world():
    """The quick toy world (tiny pretrained CLIPs + domains), built once into the user's cache."""
    from promptkd_ray.toyworld import build_world

    return build_world(profile="quick", progress=False)
