"""Shared test fixtures: ONE local Ray cluster per test session, started on first use.

Ray on this 2-core machine: an actor pool plus Train workers deadlock unless Ray is told it has
more logical CPUs than the machine (docs/architecture.md, "Running here"), hence `num_cpus=6`: 2 Train
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


# --- a real S3 API server (tests/s3_server.py) -------------------------------------------------------
# Ray workers inherit the environment of the process that starts Ray, so the endpoint and keys must be
# in os.environ before the session's `ray_cluster` starts: an autouse session fixture (set up before
# any fixture a test names) starts the server and sets them, and only in a session that holds a test
# using the `s3` fixture; every other session starts nothing.


@pytest.fixture(scope="session", autouse=True)
def _s3_server_before_ray(request):
    if not any("s3" in getattr(item, "fixturenames", ()) for item in request.session.items):
        yield None
        return
    from s3_server import S3Server

    server = S3Server.start()
    saved = {key: os.environ.get(key) for key in server.env}
    os.environ.update(server.env)
    try:
        yield server
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def s3(_s3_server_before_ray):
    """The session's S3 server (AWS_ENDPOINT_URL and keys already in os.environ)."""
    return _s3_server_before_ray
