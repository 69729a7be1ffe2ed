"""Consistent mixup (`data.mixup_alpha`, `data.mixup_prob`): a mixed view is a pure function of (seed,
image id, slot), blends two rendered crops as stated, leaves every view as it was when off, is stored
in the soft-label cache and replayed exactly (pixels equal, the teacher's features within 1e-3), and
trains the same whether streamed, replayed or rendered by resident workers."""

import json
import re

import numpy as np
import pytest
import torch
from stage2_fakes import fixed_teacher, job_with, make_split_json, part_rows, step_losses, tiny_job

from promptkd_ray.config import distill_job_from_dict
from promptkd_ray.data.decode import decode_recorded, decode_views, read_image, render, render_view
from promptkd_ray.data.mixup import MIX_COLUMNS, Mixup, blend
from promptkd_ray.data.transforms import View
from promptkd_ray.errors import ConfigError

VIEW = ("view_top", "view_left", "view_height", "view_width", "view_flip")
SIZE = 32


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root, _ = make_split_json(tmp_path_factory.mktemp("mixup") / "data", per_class=4)
    return sorted(str(p) for p in root.rglob("train_*.png"))


def _decode(paths, mixup=Mixup(), slot=1, seed=5):
    rows, bad = decode_views({"id": paths}, SIZE, "train", seed, slot, 0.08, mixup=mixup)
    assert not bad
    return rows


def test_mixup_off_draws_every_view_exactly_as_before_and_on_keeps_each_views_own_crop(images):
    off = _decode(images)
    assert not set(MIX_COLUMNS) & set(off)
    on = _decode(images, Mixup(0.4, 1.0, images))
    for column in VIEW:
        assert np.array_equal(on[column], off[column])
    assert (on["mix_partner"] != "").all() and not np.array_equal(on["image"], off["image"])


def test_a_mixed_view_is_a_pure_function_of_seed_image_and_slot_and_never_its_own_partner(images):
    mixup = Mixup(0.4, 1.0, images)
    whole = _decode(images, mixup)
    for i in (0, 5, len(images) - 1):
        alone = _decode(images[i : i + 1], mixup)  # another batch: the same view
        for column in (*VIEW, *MIX_COLUMNS):
            assert alone[column][0] == whole[column][i]
        assert np.array_equal(alone["image"][0], whole["image"][i])
    assert all(p != i for p, i in zip(whole["mix_partner"], images))
    assert ((whole["mix_lambda"] > 0) & (whole["mix_lambda"] < 1)).all()
    assert whole["mix_lambda"].dtype == np.float32
    other_slot = _decode(images, mixup, slot=2)
    assert not np.array_equal(other_slot["mix_partner"], whole["mix_partner"])
    assert 0 < (_decode(images, Mixup(0.4, 0.5, images))["mix_partner"] != "").sum() < len(images)


def test_a_mixed_view_is_the_rounded_blend_of_its_crop_and_its_partners_crop(images):
    rows = _decode(images, Mixup(1.0, 1.0, images))
    for i in range(4):
        own = render_view(read_image(images[i]), View(*(rows[c][i] for c in VIEW)), SIZE)
        box = View(*(rows[f"mix_{n}"][i] for n in ("top", "left", "height", "width", "flip")))
        partner = render_view(read_image(rows["mix_partner"][i]), box, SIZE)
        lam = float(rows["mix_lambda"][i])
        expected = np.rint(lam * own.astype(np.float64) + (1 - lam) * partner.astype(np.float64))
        assert np.array_equal(rows["image"][i], expected.astype(np.uint8))
        assert np.array_equal(rows["image"][i], blend(own, partner, lam))
    assert np.array_equal(blend(np.full(3, 10, np.uint8), np.full(3, 20, np.uint8), 0.25), [18, 18, 18])


def test_recorded_mixed_views_rerender_pixel_for_pixel_and_an_unreadable_partner_is_a_bad_row(
    images, tmp_path
):
    rows = _decode(images, Mixup(0.4, 1.0, images))
    recorded = {k: v for k, v in rows.items() if k != "image"}
    recorded["teacher_feature"] = np.arange(len(images))[:, None].astype(np.float16)
    replayed, bad = decode_recorded(recorded, SIZE)
    assert not bad and np.array_equal(replayed["image"], rows["image"])
    gone = tmp_path / "gone.png"
    recorded["mix_partner"] = recorded["mix_partner"].copy()
    recorded["mix_partner"][2] = str(gone)
    replayed, bad = decode_recorded(recorded, SIZE)
    assert [i for i, _ in bad] == [images[2]] and str(gone) in bad[0][1]
    assert list(replayed["teacher_feature"][:, 0]) == [i for i in range(len(images)) if i != 2]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"mixup_alpha": -0.5}, "data.mixup_alpha must be ≥ 0 (0 = off), got -0.5."),
        ({"mixup_alpha": 0.4, "mixup_prob": 0}, "data.mixup_prob must be in (0, 1], got 0."),
    ],
)
def test_a_bad_mixup_setting_is_refused_in_one_sentence(tmp_path, data, message):
    root, _ = make_split_json(tmp_path / "data", per_class=2)
    with pytest.raises(ConfigError) as err:
        distill_job_from_dict(tiny_job(root, tmp_path / "runs", "mx", data=data))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_mixup_on_images_that_are_not_loose_files_is_refused_in_one_sentence(tmp_path, images):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from promptkd_ray.distill_setup import resolve

    blobs = [open(p, "rb").read() for p in images]
    pq.write_table(pa.table({"image": pa.array(blobs, pa.binary())}), str(tmp_path / "images.parquet"))
    raw = tiny_job(tmp_path, tmp_path / "runs", "mx", data={"mixup_alpha": 0.4})
    raw["data"] = {"source": "parquet", "parquet": str(tmp_path / "images.parquet"), "mixup_alpha": 0.4}
    with pytest.raises(ConfigError) as err:
        resolve(distill_job_from_dict(raw))
    assert str(err.value) == (
        "data.mixup_alpha mixes views with partner images read by path; data.source: parquet does not "
        "give loose image files, so set data.mixup_alpha: 0."
    )
    # a decode task handed rows that name no partner list (past that check) stops in one sentence too
    from promptkd_ray.orchestration.pipeline import DecodeSpec, decode_and_augment

    with pytest.raises(
        ConfigError, match=r"^Consistent mixup \(data.mixup_alpha\) draws .* folder source\.$"
    ):
        decode_and_augment({"id": images[:2]}, DecodeSpec(SIZE, mixup=Mixup(alpha=0.4)), "train")


# --- the cache (local Ray) ---------------------------------------------------------------------------------

VIEWS = 2


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_cluster):
    """A tiny teacher with fixed weights, 32 training images + 8 held out, and their mixup cache (K = 2)."""
    from promptkd_ray.distill import build_cache

    tmp = tmp_path_factory.mktemp("mixcache")
    root, _ = make_split_json(tmp / "data", per_class=10)
    raw = tiny_job(
        root,
        tmp / "runs",
        "mixed",
        teacher={"spec": fixed_teacher(tmp / "teacher.safetensors")},
        data={"preserve_order": True, "mixup_alpha": 0.4},
        train={"epochs": VIEWS, "log_every": 1},
        seed=11,
    )
    uri = f"file://{tmp / 'cache'}"
    build_cache(distill_job_from_dict(raw), out=uri, views=VIEWS)
    return {"raw": raw, "uri": uri, "dir": tmp / "cache", "tmp": tmp}


def _job(built, **changes):
    return job_with(built["raw"], **changes)


def _rows(built, part):
    return part_rows(built["dir"], part)


@pytest.mark.slow
def test_the_mixed_view_replayed_from_the_cache_equals_the_streamed_one(built, ray_cluster):
    """Streamed through the teacher pool vs the cache's rows re-rendered and run through the teacher:
    the same mixes, the same pixels, features within 1e-3."""
    from promptkd_ray.data.decode import row_view, to_model_input
    from promptkd_ray.distill_setup import resolve
    from promptkd_ray.orchestration.bookkeeping import Bookkeeping, start_clock
    from promptkd_ray.orchestration.epochs import set_epoch
    from promptkd_ray.orchestration.pipeline import image_dataset

    stream, _, _ = resolve(_job(built))
    model = stream.teacher.build()
    clock = start_clock()
    mixed = 0
    for slot in range(VIEWS):
        cached = {r["id"]: r for r in _rows(built, f"slot_{slot:04d}")}
        set_epoch(clock, slot)
        streamed = image_dataset(stream, "train", Bookkeeping(clock=clock)).take_all()
        assert {r["id"] for r in streamed} == set(cached) and len(cached) == 32
        for row in streamed:
            c = cached[row["id"]]
            assert all(np.asarray(row[k]).item() == c[k] for k in (*VIEW, *MIX_COLUMNS))
            pixels = render(read_image(c["id"]), row_view(c), stream.decode.size, read_image)
            assert np.array_equal(pixels, row["image"])
            replayed = model.encode_image(to_model_input(torch.from_numpy(pixels)[None]))[0]
            stored = torch.tensor(c["teacher_feature"], dtype=torch.float32)
            assert torch.allclose(replayed, stored, atol=1e-3)
            assert torch.allclose(
                torch.from_numpy(row["teacher_feature"].astype(np.float32)), stored, atol=1e-3
            )
            mixed += c["mix_partner"] != ""
    assert mixed == VIEWS * 32
    assert "mix_partner" not in _rows(built, "heldout")[0]  # the held-out slice's full views are not mixed


@pytest.mark.slow
def test_the_cache_records_the_mixup_setting_and_a_job_of_another_setting_is_refused(built):
    from promptkd_ray.distill_setup import resolve
    from promptkd_ray.orchestration.cache import open_cache

    manifest = json.loads((built["dir"] / "manifest.json").read_text())
    assert manifest["key"]["mixup"] == {"alpha": 0.4, "prob": 1.0}
    for data in ({"mixup_alpha": 0.0}, {"mixup_alpha": 0.4, "mixup_prob": 0.5}):
        stream, _, _ = resolve(_job(built, data=data))
        with pytest.raises(ConfigError) as err:
            open_cache(built["uri"], stream)
        assert "mixup setting" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_a_mixup_run_trains_alike_streamed_replayed_and_resident(built):
    """Per-step losses of the streaming run, the Ray Data replay of the cache, and resident workers
    streaming and replaying (one worker, preserved order): equal to 1e-4."""
    from promptkd_ray.distill import run_distillation

    streamed = run_distillation(_job(built, name="mix_streamed"))
    replayed = run_distillation(_job(built, name="mix_replayed", teacher={"cache": built["uri"]}))
    resident = run_distillation(
        _job(built, name="mix_resident", teacher={"cache": built["uri"]}, data={"in_memory": "always"})
    )
    resident_streamed = run_distillation(
        _job(built, name="mix_resident_streamed", data={"in_memory": "always"})
    )
    expected = step_losses(streamed.run_dir)
    assert len(expected) == VIEWS * 32 // 8
    for run in (replayed, resident, resident_streamed):
        assert step_losses(run.run_dir) == [(s, pytest.approx(loss, abs=1e-4)) for s, loss in expected]
    assert not re.search(r"nan", json.dumps(streamed.history))
