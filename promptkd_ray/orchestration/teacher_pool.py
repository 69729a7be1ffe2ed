"""The teacher pool: actors, one teacher each, that add the teacher's image feature of every row's own view.

    with teacher_actors(teacher, pool, gpus) as actors:   a fixed pool (`size`): its actors, started
        add_teacher_features(ds, teacher, pool, gpus,       once for the whole run; a light Ray Data
                             actors)                        task sends each batch to one of them
    add_teacher_features(ds, teacher, pool, gpus)         Ray Data's own actor pool (`size` … `max_size`,
                                                          or any stream made without running actors):
        ds.map_batches(TeacherPredictor, compute=ActorPoolStrategy(…), num_gpus=1 where GPUs exist,
                       resources={"teacher": 1} on a cluster, batch_size=B, max_restarts, max_task_retries)

Design decisions:
- The teacher emits features, not logits (docs/architecture.md): logits are a matmul on the trainer, so the
  class set and the temperature never reach the pool.
- An actor receives a `ModelRef` (a few bytes: an artifact path or a model spec) and builds its
  teacher once, on its own device (`encoder.ImageEncoder`); bf16 autocast on GPU by default
  (`teacher_pool.precision`).
- A fixed pool lives as long as the run: Ray Data re-executes the stream every epoch and would
  start its actor pool again each time (a process, its imports and the teacher's build: seconds
  per epoch). The run's actors serve the held-out slice and every epoch; each epoch's stream
  reaches them through a Ray Data task (0 CPUs, at most 2 in flight per actor, so each actor has
  the next batch queued) that sends its batch's views to one actor, picked by a hash of the
  batch's first image id. The driver owns the actors: they end with the run, or with the driver.
- An autoscaled pool (`max_size` > `size`) is Ray Data's (it grows and shrinks the pool within an
  epoch); it starts again every epoch, negligible on the long epochs where autoscaling matters.
- Fault tolerance, both pools: an actor that dies is restarted by Ray up to `RESTARTS` times
  (`max_restarts`), and a call that was in flight on it runs again on the restarted actor
  (`max_task_retries=-1`: for as long as the actor can be restarted), so its batch reaches the
  trainers once, the epoch goes on, and a teacher that keeps dying ends the run. The fixed pool's
  actors get their constructor arguments inline (the ModelRef and the precision), so Ray can
  always restart them. Ray Data's own actors get their arguments (Ray Data's pickled map function
  and context) through the object store, for which Ray logs an error at their creation when
  `max_restarts` > 0 (Ray issue 53727: a restart fails once those objects are gone); the
  operator holds those objects for the whole epoch, so a restart within the epoch finds them.
- Decode tasks never run inside the teacher actors (pipeline.py): the teacher's GPU waits on no JPEG.
"""

from __future__ import annotations

import contextlib
import logging
import zlib
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from ..core.artifacts import ModelRef
from .encoder import ImageEncoder

log = logging.getLogger(__name__)

RESTARTS = 3  # restarts per teacher actor before the run fails (Ray's max_restarts)
CALLS_IN_FLIGHT = 2  # per actor of a fixed pool: one computing, one queued


class TeacherPredictor(ImageEncoder):
    """One teacher: a Ray Data callable class (adds `teacher_feature` to a batch) and, in a fixed
    pool, a Ray actor (`features` of a batch of views)."""

    def features(self, images: np.ndarray) -> np.ndarray:
        """uint8 views [B, H, W, 3] → normalised teacher image features, fp16 [B, d]."""
        return self.encode(images).to(torch.float16).numpy()

    def __call__(self, batch: dict) -> dict:
        batch["teacher_feature"] = self.features(batch["image"])
        return batch


def is_fixed(pool) -> bool:
    """The pool has a fixed size (`max_size` 0): its actors can serve the whole run."""
    return not pool.max_size


def placement(pool, cluster_has_gpus: bool) -> dict:
    """Ray options that place one teacher actor (`TeacherPoolConfig`) and say how it recovers."""
    num_gpus = pool.num_gpus if pool.num_gpus >= 0 else (1.0 if cluster_has_gpus else 0.0)
    options = {
        "num_cpus": pool.num_cpus,
        "num_gpus": num_gpus,
        "max_restarts": RESTARTS,
        "max_task_retries": -1,
    }
    if pool.resources:
        options["resources"] = dict(pool.resources)
    return options


def pool_options(pool, cluster_has_gpus: bool) -> dict:
    """map_batches keyword arguments of Ray Data's actor pool (`TeacherPoolConfig`)."""
    import ray

    if pool.max_size:
        compute = ray.data.ActorPoolStrategy(min_size=pool.size, max_size=pool.max_size)
    else:
        compute = ray.data.ActorPoolStrategy(size=pool.size)
    return {"compute": compute, "batch_size": pool.batch_size, **placement(pool, cluster_has_gpus)}


@contextlib.contextmanager
def teacher_actors(teacher: ModelRef, pool, cluster_has_gpus: bool) -> Iterator[list]:
    """The run's teacher actors (a fixed pool), started and built before this returns, killed at
    exit; an autoscaled pool has none here (Ray Data starts its own each epoch)."""
    import ray

    if not is_fixed(pool):
        yield []
        return
    log.info("starting %d teacher actor(s) for the run", pool.size)
    remote = ray.remote(TeacherPredictor).options(**placement(pool, cluster_has_gpus))
    actors = [remote.remote(teacher, pool.precision) for _ in range(pool.size)]
    try:
        ray.get([a.ready.remote() for a in actors])
        yield actors
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)


def with_teacher_features(batch: dict, actors: Sequence) -> dict:
    """Ray Data task: the batch with the `teacher_feature` of its views, computed by one of the
    run's teacher actors (the same one for the same first image id)."""
    import ray

    first = str(batch["id"][0]) if len(batch["id"]) else ""
    actor = actors[zlib.crc32(first.encode("utf-8")) % len(actors)]
    batch["teacher_feature"] = ray.get(actor.features.remote(batch["image"]))
    return batch


def add_teacher_features(
    ds, teacher: ModelRef, pool, cluster_has_gpus: bool, actors: Optional[Sequence] = None
):
    """`ds` (rows with a uint8 `image` view and an `id`) with the teacher's `teacher_feature` added:
    by the run's `actors` when given, else by a Ray Data actor pool of this stream's own."""
    import ray

    if actors:
        return ds.map_batches(
            with_teacher_features,
            batch_format="numpy",
            batch_size=pool.batch_size,
            num_cpus=0,
            compute=ray.data.TaskPoolStrategy(size=CALLS_IN_FLIGHT * len(actors)),
            fn_kwargs={"actors": list(actors)},
        )
    return ds.map_batches(
        TeacherPredictor,
        batch_format="numpy",
        fn_constructor_kwargs={"model": teacher, "precision": pool.precision},
        **pool_options(pool, cluster_has_gpus),
    )
