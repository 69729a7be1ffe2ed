"""A command's Ray session: the local Ray a command starts inside `ray_session()` is shut down when the
block ends; a Ray that was already up (a test's, a cluster's driver) is left as it was."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def ray_session():
    import ray

    started_here = not ray.is_initialized()
    yield
    if started_here and ray.is_initialized():
        ray.shutdown()
