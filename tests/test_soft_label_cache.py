"""The soft-label cache: built once through the teacher pool (here at a file:// URI, so every read
and write goes through the remote-storage code), replayed by Stage II without a teacher — the same
(image, view) pairs as the streaming run, the same features to fp16 rounding, the same losses —
and refused, in one sentence, whenever it was not made for the job or is not whole."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from stage2_fakes import fixed_teacher, job_with, make_split_json, part_rows, step_losses, tiny_job

from promptkd_ray.config import distill_job_from_dict
from promptkd_ray.errors import ConfigError

pytestmark = pytest.mark.slow
VIEWS = 2


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_cluster):
    """A tiny teacher with fixed weights, 32 training images + 8 held out, and their cache (K = 2)."""
    from promptkd_ray.distill import build_cache

    tmp = tmp_path_factory.mktemp("cache")
    root, _ = make_split_json(tmp / "data", per_class=10)  # 40 images: 32 to distil on, 8 held out
    raw = tiny_job(
        root,
        tmp / "runs",
        "cached",
        teacher={"spec": fixed_teacher(tmp / "teacher.safetensors")},
        data={"preserve_order": True},
        train={"epochs": 3},
        seed=11,
    )
    uri = f"file://{tmp / 'cache'}"
    cache = build_cache(distill_job_from_dict(raw), out=uri, views=VIEWS)
    return {"raw": raw, "uri": uri, "dir": tmp / "cache", "cache": cache, "tmp": tmp}


def _job(built, **changes):
    return job_with(built["raw"], **changes)


def _rows(built, part):
    return part_rows(built["dir"], part)


def test_a_slot_is_stored_in_its_epochs_streaming_order(built):
    from promptkd_ray.data.sources import resolve_source
    from promptkd_ray.orchestration.epochs import epoch_order

    job = _job(built)
    paths = resolve_source(job.data, job.seed).train_paths
    for slot in range(VIEWS):
        order = [paths[i] for i in epoch_order(job.seed, slot, len(paths))]
        assert [r["id"] for r in _rows(built, f"slot_{slot:04d}")] == order


def test_the_manifest_names_what_made_the_cache_and_lists_every_file(built):
    m = json.loads((built["dir"] / "manifest.json").read_text())
    assert m["views"] == VIEWS and set(m["parts"]) == {"slot_0000", "slot_0001", "heldout"}
    assert m["key"]["seed"] == 11 and m["key"]["image_size"] == 32 and m["key"]["crop_scale_min"] == 0.08
    assert m["key"]["teacher"]["weights_sha256"] and m["key"]["train_images"] == 32
    assert [m["parts"][p]["rows"] for p in ("slot_0000", "slot_0001", "heldout")] == [32, 32, 8]
    assert m["rows"] == 72 and m["bytes"] == sum(f.stat().st_size for f in built["dir"].rglob("*.parquet"))
    for part, info in m["parts"].items():
        assert sorted(p.name for p in (built["dir"] / part).glob("*.parquet")) == sorted(info["files"])


def test_slot_e_holds_the_views_a_streaming_run_draws_in_epoch_e_with_their_features(built, ray_cluster):
    from promptkd_ray.distill_setup import resolve
    from promptkd_ray.orchestration.bookkeeping import Bookkeeping, start_clock
    from promptkd_ray.orchestration.epochs import set_epoch
    from promptkd_ray.orchestration.pipeline import image_dataset

    job = _job(built)
    stream, _, _ = resolve(job)
    clock = start_clock()
    for slot in range(VIEWS):
        cached = {r["id"]: r for r in _rows(built, f"slot_{slot:04d}")}
        set_epoch(clock, slot)
        streamed = image_dataset(stream, "train", Bookkeeping(clock=clock)).take_all()
        assert {r["id"] for r in streamed} == set(cached)
        for row in streamed:
            c = cached[row["id"]]
            assert all(
                int(row[k]) == int(c[k]) for k in ("view_top", "view_left", "view_height", "view_width")
            )
            assert bool(row["view_flip"]) == bool(c["view_flip"])
            np.testing.assert_allclose(
                np.asarray(c["teacher_feature"], np.float32),
                row["teacher_feature"].astype(np.float32),
                atol=1e-3,
            )


def test_a_replayed_view_through_the_teacher_reproduces_the_stored_feature(built):
    from promptkd_ray.data.decode import read_image, render_view, row_view, to_model_input
    from promptkd_ray.distill_setup import resolve

    stream, _, _ = resolve(_job(built))
    teacher, size = stream.teacher, stream.decode.size
    model = teacher.build()
    rows = _rows(built, "slot_0001")
    for i in np.random.default_rng(0).choice(len(rows), 6, replace=False):
        row = rows[i]
        pixels = render_view(read_image(row["id"]), row_view(row), size)
        feature = model.encode_image(to_model_input(torch.from_numpy(pixels)[None]))[0]
        assert torch.allclose(feature, torch.tensor(row["teacher_feature"], dtype=torch.float32), atol=1e-3)


@pytest.fixture(scope="module")
def runs(built):
    """The streaming run (2 epochs) and the cached run (3: epoch 2 rereads slot 0, reordered)."""
    from promptkd_ray.distill import run_distillation

    return {
        "streamed": run_distillation(_job(built, name="streamed", train={"epochs": VIEWS, "log_every": 1})),
        "replayed": run_distillation(
            _job(built, name="replayed", teacher={"cache": built["uri"]}, train={"epochs": 3, "log_every": 1})
        ),
    }


def test_a_cached_run_trains_as_the_streaming_run_without_a_teacher(runs):
    streamed, cached = runs["streamed"].history, runs["replayed"].history[:VIEWS]
    steps = step_losses(runs["streamed"].run_dir)
    assert [s for s, _ in steps] == list(range(1, 2 * 32 // 8 + 1))  # every step of both epochs, one worker
    assert step_losses(runs["replayed"].run_dir)[: len(steps)] == [
        (s, pytest.approx(loss, abs=1e-4)) for s, loss in steps
    ]
    assert [e["images"] for e in cached] == [e["images"] for e in streamed] == [32, 32]
    assert [e["loss"] for e in cached] == pytest.approx([e["loss"] for e in streamed], abs=1e-4)
    assert [e["heldout_kl"] for e in cached] == pytest.approx([e["heldout_kl"] for e in streamed], abs=1e-4)


@pytest.mark.parametrize("mode", ["streamed", "replayed"])
def test_resident_images_train_on_the_same_batches_as_the_stream_and_the_replay(built, runs, mode):
    """data.in_memory=always: the images decoded once into the worker, the views rendered there — the
    same per-step losses as the streaming (or replayed) run, every image once per epoch (the audit)."""
    from promptkd_ray.distill import run_distillation
    from promptkd_ray.orchestration.audit import recorded_ids
    from promptkd_ray.storage import Storage

    epochs = len(runs[mode].history)
    teacher = {"cache": built["uri"]} if mode == "replayed" else {}
    job = _job(
        built,
        name=f"resident_{mode}",
        teacher=teacher,
        data={"in_memory": "always"},
        train={"epochs": epochs, "log_every": 1, "record_ids": True},
    )
    resident = run_distillation(job)
    expected = step_losses(runs[mode].run_dir)
    assert len(expected) == epochs * 32 // 8
    assert step_losses(resident.run_dir) == [(s, pytest.approx(loss, abs=1e-4)) for s, loss in expected]
    kl = [e["heldout_kl"] for e in runs[mode].history]  # rank 0 scores its own held-out slice: the same
    assert [e["heldout_kl"] for e in resident.history] == pytest.approx(kl, abs=1e-4)
    assert [e["heldout_images"] for e in resident.history] == [8] * epochs
    paths = {str(p) for p in (built["tmp"] / "data").rglob("*.png")}
    for epoch in range(epochs):
        ids = recorded_ids(Storage(resident.run_dir), epoch)
        assert sorted(ids["trained"]) == sorted(set(ids["trained"])) and not ids["dropped"]
        assert len(ids["trained"]) == 32 and set(ids["trained"]) <= paths


def test_resident_images_on_two_workers_train_every_image_once_per_epoch(built):
    """Each worker keeps the images at positions ≡ rank (mod 2) and both take the same full batches;
    the rest is recorded as dropped, as the stream's short last batch."""
    from promptkd_ray.distill import run_distillation
    from promptkd_ray.orchestration.audit import recorded_ids
    from promptkd_ray.storage import Storage

    train = {"epochs": 2, "num_workers": 2, "record_ids": True, "batch_size": 6}
    run = run_distillation(_job(built, name="resident_2w", data={"in_memory": "always"}, train=train))
    for epoch in range(2):
        ids = recorded_ids(Storage(run.run_dir), epoch)
        assert len(ids["trained"]) == 30 and len(ids["dropped"]) == 2  # 16 each: 5 batches of 3, 1 left
        assert len(set(ids["trained"]) | set(ids["dropped"])) == 32
    assert [e["images"] for e in run.history] == [30, 30]


def test_a_workers_share_is_decoded_once_skipping_and_counting_unreadable_files(tmp_path):
    from stage2_fakes import make_split_json as make

    from promptkd_ray.errors import BadImageError
    from promptkd_ray.orchestration.pipeline import DecodeSpec
    from promptkd_ray.orchestration.resident import ResidentPlan, decode_share

    root, bad = make(tmp_path, per_class=2, bad_per_kind=1)
    paths = tuple(sorted(str(p) for p in (root / "toy" / "images").rglob("*.png")))
    plan = ResidentPlan(DecodeSpec(32), paths, threads=2)
    shares = [decode_share(plan, rank, 2) for rank in (0, 1)]
    assert all(p % 2 == rank for rank, share in enumerate(shares) for p in share)
    held = {ident for share in shares for ident, _ in share.values()}
    assert held == set(paths) - set(bad) and bad
    assert all(image.mode == "RGB" for share in shares for _, image in share.values())
    with pytest.raises(BadImageError, match="is not a readable image"):
        decode_share(ResidentPlan(DecodeSpec(32, on_bad_image="fail"), paths), 0, 1)


def test_in_memory_always_refuses_what_it_cannot_hold_in_one_sentence_and_auto_streams_it(built, caplog):
    from types import SimpleNamespace

    from promptkd_ray.distill import run_distillation
    from promptkd_ray.distill_setup import resolve
    from promptkd_ray.orchestration.bookkeeping import Bookkeeping
    from promptkd_ray.orchestration.resident import resident_plan

    job = _job(built, name="too_big")
    stream = resolve(job)[0]
    stream = stream.__class__(**{**stream.__dict__, "teachers": ("an actor",)})
    small = SimpleNamespace(in_memory="always", in_memory_mb=0.001)  # the 32 tiny PNGs need ~0.1 MB
    with pytest.raises(ConfigError, match=r"cannot hold this run's images in memory: .* MB per worker, over"):
        resident_plan(small, stream, job.train, Bookkeeping())
    with caplog.at_level("INFO"):
        assert (
            resident_plan(SimpleNamespace(in_memory="auto", in_memory_mb=0.001), stream, job.train, None)
            is None
        )
    assert "data.in_memory=auto: streaming, since its decoded images need about" in caplog.text
    assert resident_plan(SimpleNamespace(in_memory="auto", in_memory_mb=1), stream, job.train, Bookkeeping())
    job = _job(built, name="autoscaled", data={"in_memory": "always"}, teacher_pool={"max_size": 2})
    with pytest.raises(ConfigError, match="its teacher pool autoscales"):
        run_distillation(job)
    assert not (built["tmp"] / "runs" / "autoscaled" / "checkpoint_epoch_000").exists()


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"seed": 12}, "another seed (11 in the cache, 12 in the job)"),
        ({"data": {"crop_scale_min": 0.5}}, "another crop setting"),
        ({"data": {"limit": 20}}, "another image list"),
        ({"teacher": {"spec": "tiny-vit-teacher"}}, "another teacher"),
    ],
)
def test_a_cache_made_for_another_job_is_refused(built, changes, words):
    from promptkd_ray.distill import run_distillation

    job = _job(built, **{**changes, "teacher": {"cache": built["uri"], **changes.get("teacher", {})}})
    with pytest.raises(ConfigError, match=re.escape(words)):
        run_distillation(job)


def _copy(built, tmp_path) -> Path:
    copy = tmp_path / "cache"
    shutil.copytree(built["dir"], copy)
    return copy


def test_a_tampered_a_missing_file_a_cut_manifest_and_a_half_written_cache_are_refused_in_one_sentence(
    built, tmp_path, capsys
):
    from promptkd_ray.cli import main

    copy = _copy(built, tmp_path)
    args = ["distill", "--config", str(tmp_path / "job.yaml"), f"teacher.cache={copy}"]
    import yaml

    (tmp_path / "job.yaml").write_text(yaml.safe_dump(built["raw"]))
    part = next((copy / "slot_0001").glob("*.parquet"))
    part.write_bytes(part.read_bytes()[:-1] + b"\0")
    assert main(args) == 2
    assert "does not match the sha256 its manifest records" in capsys.readouterr().err
    part.unlink()
    assert main(args) == 2 and f"is missing slot_0001/{part.name}" in capsys.readouterr().err
    (copy / "manifest.json").write_text('{"format": 1, "views": 2')  # cut short
    assert main(args) == 2 and "has an unreadable manifest.json" in capsys.readouterr().err
    (copy / "manifest.json").unlink()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "an unfinished cache build (no manifest.json yet" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "cached").exists()  # refused before anything was written


def test_an_interrupted_build_resumes_at_the_first_unfinished_slot(built, tmp_path, caplog):
    from promptkd_ray.distill import build_cache

    copy = _copy(built, tmp_path)
    kept = sorted(p.name for p in (copy / "slot_0000").glob("*.parquet"))
    for name in ("manifest.json", "slot_0001.json", "heldout.json"):
        (copy / name).unlink()
    shutil.rmtree(copy / "heldout")
    with caplog.at_level("INFO"):
        cache = build_cache(_job(built), out=str(copy), views=VIEWS)
    assert "slot_0000: written by an earlier attempt, reused" in caplog.text
    assert (
        "slot_0001: 32 views written (2/3 parts; 64/72 views in" in caplog.text
    )  # progress counts reused views
    assert "heldout: 8 views written (3/3 parts; 72/72 views in" in caplog.text
    assert sorted(p.name for p in (copy / "slot_0000").glob("*.parquet")) == kept
    assert (
        cache.manifest["rows"] == 72
        and cache.manifest["parts"]["slot_0000"] == built["cache"].manifest["parts"]["slot_0000"]
    )
    with pytest.raises(ConfigError, match="2 views, not 3"):
        build_cache(_job(built), out=str(copy), views=3)
