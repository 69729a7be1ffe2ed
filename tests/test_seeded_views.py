"""Seeded views: an image's view is a function of (job seed, image id, view slot = epoch) and an
epoch's order one of (seed, epoch), so a re-run of a job draws the same (image, view) pairs epoch by
epoch — and, with one worker and `data.preserve_order`, trains on the same batches and reports the
same losses."""

import numpy as np
import pytest
import torch
from stage2_fakes import make_split_json, png_bytes, tiny_job

from promptkd_ray.config import distill_job_from_dict
from promptkd_ray.data.decode import decode_views, row_view
from promptkd_ray.data.sources import resolve_source


def _views(ids, seed, slot, order=None):
    rng = np.random.default_rng(0)
    blobs = {i: png_bytes(rng, 40 + 3 * k, 30 + 2 * k) for k, i in enumerate(ids)}
    order = order or ids
    batch = {
        "id": np.asarray(order, dtype=object),
        "bytes": np.asarray([blobs[i] for i in order], dtype=object),
    }
    rows, bad = decode_views(batch, 16, "train", seed=seed, slot=slot)
    assert not bad
    return {rows["id"][k]: row_view({c: v[k] for c, v in rows.items()}) for k in range(len(rows["id"]))}


def test_a_view_is_a_function_of_the_seed_the_image_and_the_slot():
    ids = [f"img_{k}" for k in range(8)]
    first = _views(ids, seed=3, slot=0)
    assert _views(ids, seed=3, slot=0, order=ids[::-1][:5]) == {
        i: first[i] for i in ids[::-1][:5]
    }  # any batch
    assert sum(_views(ids, seed=3, slot=1)[i] != first[i] for i in ids) >= 6  # another epoch: other views
    assert sum(_views(ids, seed=4, slot=0)[i] != first[i] for i in ids) >= 6  # another seed: other views
    assert sum(_views(ids, None, 0)[i] != _views(ids, None, 0)[i] for i in ids) >= 6  # unseeded: fresh draws


def test_an_epochs_order_is_a_permutation_of_the_seed_and_the_epoch():
    from promptkd_ray.orchestration.epochs import epoch_order

    first = epoch_order(3, 0, 200)
    assert sorted(first) == list(range(200)) and list(first) != list(range(200))
    assert list(epoch_order(3, 0, 200)) == list(first)
    assert list(epoch_order(3, 1, 200)) != list(first) and list(epoch_order(4, 0, 200)) != list(first)
    assert list(epoch_order(3, 1, 200, shuffle=False)) == list(range(200))


@pytest.mark.slow
def test_every_epoch_stream_draws_its_own_views_again_on_a_rerun(tmp_path, ray_cluster):
    from promptkd_ray.core.artifacts import ModelRef
    from promptkd_ray.orchestration.bookkeeping import Bookkeeping, start_clock
    from promptkd_ray.orchestration.epochs import set_epoch
    from promptkd_ray.orchestration.pipeline import DecodeSpec, Stream, image_dataset

    root, _ = make_split_json(tmp_path, per_class=6)
    job = distill_job_from_dict(tiny_job(root, tmp_path / "runs", "v", data={"heldout_images": 0}, seed=7))
    source = resolve_source(job.data, job.seed)
    teacher = ModelRef("zeroshot", "tiny-vit-teacher")

    stream = Stream(source, teacher, job.teacher_pool, DecodeSpec.of(job, 32))
    clock = start_clock()

    def pairs(epoch):
        set_epoch(clock, epoch)
        rows = image_dataset(stream, "train", Bookkeeping(clock=clock)).take_all()
        return {(r["id"], row_view(r)) for r in rows}

    epoch0, epoch1 = pairs(0), pairs(1)
    assert len(epoch0) == len(epoch1) == 24 and {i for i, _ in epoch0} == {i for i, _ in epoch1}
    assert pairs(0) == epoch0 and len(epoch0 & epoch1) < 4


@pytest.mark.slow
def test_a_rerun_with_one_worker_and_preserved_order_reports_the_same_losses(tmp_path, ray_cluster):
    from safetensors.torch import save_file

    from promptkd_ray.core.models import load_clip
    from promptkd_ray.distill import run_distillation

    torch.manual_seed(0)  # a teacher with fixed weights: every actor of both runs builds the same one
    weights = tmp_path / "teacher.safetensors"
    save_file(
        {k: v.contiguous() for k, v in load_clip("tiny-vit-teacher").state_dict().items()}, str(weights)
    )
    root, _ = make_split_json(tmp_path / "data", per_class=8)
    histories = []
    for name in ("first", "second"):
        raw = tiny_job(
            root,
            tmp_path / "runs",
            name,
            teacher={"spec": f"tiny-vit-teacher:{weights}"},
            data={"heldout_images": 0, "preserve_order": True},
            train={"epochs": 2},
            seed=5,
        )
        histories.append(run_distillation(distill_job_from_dict(raw)).history)
    losses = [[epoch["loss"] for epoch in history] for history in histories]
    assert len(losses[0]) == 2 and losses[0][0] != losses[0][1]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    assert [h["train_agreement"] for h in histories[0]] == [h["train_agreement"] for h in histories[1]]
