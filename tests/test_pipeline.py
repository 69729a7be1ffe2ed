"""Stage II pipeline: replayable views, the teacher pool's features, bad images, readers."""

import numpy as np
import pytest
import torch
from stage2_fakes import bad_bytes, make_split_json, png_bytes, tiny_job
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from promptkd_ray.config import distill_job_from_dict
from promptkd_ray.core.artifacts import ModelRef
from promptkd_ray.core.step import autocast_dtype
from promptkd_ray.data.decode import decode_views, read_image, render_view, row_view, to_model_input
from promptkd_ray.data.sources import ParquetSource, resolve_source, split_heldout
from promptkd_ray.data.transforms import CLIP_MEAN, CLIP_STD
from promptkd_ray.errors import BadImageError
from promptkd_ray.orchestration.bookkeeping import BadImageLedger, Bookkeeping
from promptkd_ray.orchestration.pipeline import DecodeSpec, Stream, decode_and_augment, image_dataset
from promptkd_ray.orchestration.teacher_pool import TeacherPredictor, pool_options


def _stream(job, source, teacher, size=32):
    """A Stage II stream of `job`'s images at `size` px, labelled by `teacher` (no GPU)."""
    return Stream(source, teacher, job.teacher_pool, DecodeSpec.of(job, size))


def authors_view(image, view, size):
    """The authors' train transform with the view's parameters, written with torchvision alone:
    RandomResizedCrop's resized_crop (bicubic) + horizontal flip + ToTensor + Normalize."""
    crop = TF.resized_crop(
        image,
        view.top,
        view.left,
        view.height,
        view.width,
        [size, size],
        interpolation=InterpolationMode.BICUBIC,
    )
    if view.flip:
        crop = TF.hflip(crop)
    return TF.normalize(TF.to_tensor(crop), CLIP_MEAN, CLIP_STD)


@pytest.fixture(scope="module")
def teacher_source(tmp_path_factory) -> ModelRef:
    """A tiny teacher with fixed weights in a file, so that every process builds the same one."""
    from safetensors.torch import save_file

    from promptkd_ray.core.models import load_clip

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny_teacher.safetensors"
    save_file({k: v.contiguous() for k, v in load_clip("tiny-vit-teacher").state_dict().items()}, str(path))
    return ModelRef("zeroshot", f"tiny-vit-teacher:{path}")


def test_rendered_view_replays_the_authors_transform_exactly():
    rng = np.random.default_rng(0)
    image = read_image(png_bytes(rng, 50, 37))
    batch = {
        "id": np.asarray(["a"], dtype=object),
        "bytes": np.asarray([png_bytes(np.random.default_rng(0), 50, 37)], dtype=object),
    }
    rows, bad = decode_views(batch, size=32, mode="train", seed=3)
    assert not bad and rows["image"].shape == (1, 32, 32, 3) and rows["image"].dtype == np.uint8
    view = row_view({k: v[0] for k, v in rows.items()})
    assert 0 <= view.left and view.left + view.width <= 50 and 0 <= view.top and view.top + view.height <= 37
    ours = to_model_input(torch.from_numpy(rows["image"]))[0]
    assert torch.equal(ours, authors_view(image, view, 32))
    assert torch.equal(to_model_input(torch.from_numpy(render_view(image, view, 32))[None])[0], ours)


def test_views_differ_between_draws_and_heldout_uses_the_full_image():
    rng = np.random.default_rng(1)
    batch = {
        "id": np.asarray(["x"] * 6, dtype=object),
        "bytes": np.asarray([png_bytes(rng)] * 6, dtype=object),
    }
    rows, _ = decode_views(batch, 32, "train")
    boxes = {
        tuple(int(rows[k][i]) for k in ("view_top", "view_left", "view_height", "view_width"))
        for i in range(6)
    }
    assert len(boxes) > 1
    rows, _ = decode_views(batch, 32, "heldout")
    assert (
        set(rows["view_height"]) == {36} and set(rows["view_width"]) == {40} and not rows["view_flip"].any()
    )


def test_crop_scale_min_bounds_the_train_crop_area():
    rng = np.random.default_rng(4)
    batch = {
        "id": np.asarray([f"x{k}" for k in range(40)], dtype=object),
        "bytes": np.asarray([png_bytes(rng)] * 40, dtype=object),
    }
    area = 36 * 40
    small, _ = decode_views(batch, 32, "train", seed=5)
    large, _ = decode_views(batch, 32, "train", seed=5, crop_scale_min=0.6)
    small_areas = small["view_height"] * small["view_width"] / area
    large_areas = large["view_height"] * large["view_width"] / area
    assert small_areas.min() < 0.5  # the authors' scale (0.08, 1) draws small crops
    assert large_areas.min() >= 0.6 * 0.95  # integer rounding of the box


def test_unreadable_files_are_dropped_with_their_reason(tmp_path):
    rng = np.random.default_rng(2)
    good = tmp_path / "good.png"
    good.write_bytes(png_bytes(rng))
    paths = [str(good)]
    for kind in ("corrupt", "truncated", "not_image"):
        (tmp_path / f"{kind}.png").write_bytes(bad_bytes(kind, rng))
        paths.append(str(tmp_path / f"{kind}.png"))
    paths.append(str(tmp_path / "vanished.png"))
    rows, bad = decode_views({"id": np.asarray(paths, dtype=object)}, 32)
    assert list(rows["id"]) == [str(good)] and len(rows["image"]) == 1
    assert [b[0] for b in bad] == paths[1:]
    assert "truncated" in dict(bad)[str(tmp_path / "truncated.png")]


def test_bad_image_policy_fail_raises_one_sentence_and_skip_records_ids(tmp_path):
    rng = np.random.default_rng(3)
    (tmp_path / "bad.jpg").write_bytes(bad_bytes("corrupt", rng))
    batch = {"id": np.asarray([str(tmp_path / "bad.jpg")], dtype=object)}
    with pytest.raises(BadImageError, match=r"bad.jpg is not a readable image .*data.on_bad_image=skip"):
        decode_and_augment(batch, DecodeSpec(32, on_bad_image="fail"), "train")
    assert len(decode_and_augment(batch, DecodeSpec(32, on_bad_image="skip"), "train")["image"]) == 0
    ledger = BadImageLedger()
    assert (
        ledger.record([("a", "x"), ("b", "y")]) == 2
        and ledger.record([("a", "x")]) == 2
        and ledger.count() == 2
    )


def test_teacher_predictor_emits_the_normalised_fp16_feature_of_each_rows_view(teacher_source):
    rng = np.random.default_rng(4)
    blobs = [png_bytes(rng) for _ in range(5)]
    rows, _ = decode_views(
        {"id": np.asarray(list("abcde"), dtype=object), "bytes": np.asarray(blobs, dtype=object)}, 32, "train"
    )
    out = TeacherPredictor(teacher_source)(dict(rows))
    assert out["teacher_feature"].dtype == np.float16 and out["teacher_feature"].shape == (5, 48)
    teacher = teacher_source.build()
    for i, blob in enumerate(blobs):
        view = row_view({k: v[i] for k, v in rows.items()})
        expected = teacher.encode_image(authors_view(read_image(blob), view, 32)[None])[0]
        got = torch.from_numpy(out["teacher_feature"][i].astype(np.float32))
        assert torch.allclose(got, expected, atol=2e-3)
        assert got.norm().item() == pytest.approx(1.0, abs=2e-3)


def test_precision_and_pool_placement_options():
    assert autocast_dtype("auto", "cpu") is None and autocast_dtype("auto", "cuda") == torch.bfloat16
    assert autocast_dtype("fp16", "cuda") == torch.float16
    job = distill_job_from_dict(
        {
            "name": "x",
            "teacher": {"spec": "a"},
            "student": {"spec": "b"},
            "data": {"source": "parquet", "parquet": "s3://b/p"},
            "teacher_pool": {"size": 2, "max_size": 6, "resources": {"teacher": 1}},
        },
        check_paths_exist=False,
    )
    with_gpus = pool_options(job.teacher_pool, cluster_has_gpus=True)
    assert with_gpus["num_gpus"] == 1.0 and with_gpus["resources"] == {"teacher": 1.0}
    assert (with_gpus["compute"].min_size, with_gpus["compute"].max_size) == (2, 6)
    assert pool_options(job.teacher_pool, cluster_has_gpus=False)["num_gpus"] == 0.0


def test_heldout_slice_is_seeded_disjoint_and_bounded():
    paths = [f"p{i}" for i in range(100)]
    train, heldout = split_heldout(paths, 50, np.random.default_rng(0))
    assert len(heldout) == 20 and not set(train) & set(heldout) and len(train) + len(heldout) == 100
    assert split_heldout(paths, 50, np.random.default_rng(0)) == (train, heldout)


def test_heldout_from_another_split_keeps_the_whole_training_split(tmp_path):
    root, _ = make_split_json(tmp_path, per_class=5)
    job = distill_job_from_dict(
        tiny_job(root, tmp_path / "runs", "s", data={"heldout_split": "test", "heldout_images": 4})
    )
    source = resolve_source(job.data, job.seed)
    assert len(source.train_paths) == 20 and len(source.heldout_paths) == 4
    assert all("/test_" in p for p in source.heldout_paths) and source.classnames == (
        "red",
        "green",
        "blue",
        "yellow",
    )


@pytest.mark.slow
def test_pipeline_streams_teacher_features_and_counts_bad_images_exactly(
    tmp_path, ray_cluster, teacher_source
):
    from promptkd_ray.orchestration.bookkeeping import start_ledger
    from promptkd_ray.orchestration.pipeline import train_feed

    root, bad = make_split_json(tmp_path, per_class=10, bad_per_kind=1)  # 40 good + 3 bad in train
    job = distill_job_from_dict(tiny_job(root, tmp_path / "runs", "p", data={"heldout_images": 0}))
    source = resolve_source(job.data, job.seed)
    ledger = start_ledger()
    rows = image_dataset(_stream(job, source, teacher_source), "train", Bookkeeping(ledger)).take_all()
    assert len(rows) == 40 and ray_cluster.get(ledger.count.remote()) == 3
    assert sorted(ray_cluster.get(ledger.items.remote())) == sorted(bad)
    teacher = teacher_source.build()
    for row in rows[:4]:  # each row's feature is the teacher's feature of that row's own view
        view = row_view(row)
        expected = teacher.encode_image(authors_view(read_image(row["id"]), view, 32)[None])[0]
        assert torch.allclose(
            torch.from_numpy(row["teacher_feature"].astype(np.float32)), expected, atol=2e-3
        )
    assert set(train_feed(ray_cluster.data.from_items(rows[:2])).take(1)[0]) == {"image", "teacher_feature"}


@pytest.mark.slow
def test_pipeline_fails_on_a_bad_image_when_asked(tmp_path, ray_cluster, teacher_source):
    root, _ = make_split_json(tmp_path, per_class=3, bad_per_kind=1)
    job = distill_job_from_dict(
        tiny_job(root, tmp_path / "runs", "f", data={"heldout_images": 0, "on_bad_image": "fail"})
    )
    source = resolve_source(job.data, job.seed)
    with pytest.raises(Exception, match="is not a readable image"):
        image_dataset(_stream(job, source, teacher_source), "train").take_all()


@pytest.mark.slow
def test_parquet_source_holds_out_rows_by_hash_and_skips_bad_bytes(tmp_path, ray_cluster, teacher_source):
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    from promptkd_ray.data.sources import is_heldout_bytes
    from promptkd_ray.orchestration.bookkeeping import start_ledger

    rng = np.random.default_rng(5)
    good = [png_bytes(rng) for _ in range(60)]
    blobs = good + [bad_bytes("truncated", rng), bad_bytes("not_image", rng)]
    pq.write_table(pa.table({"image": pa.array(blobs, pa.binary())}), tmp_path / "images.parquet")
    job = distill_job_from_dict(
        {
            "name": "pq",
            "teacher": {"spec": "tiny-vit-teacher"},
            "student": {"spec": "tiny-vit-student"},
            "data": {
                "source": "parquet",
                "parquet": str(tmp_path / "images.parquet"),
                "heldout_images": 10,
                "decode_batch_size": 16,
            },
        }
    )
    source = resolve_source(job.data, job.seed)
    assert (
        isinstance(source, ParquetSource) and source.parquet_rows == 62 and 0 < source.heldout_fraction <= 0.2
    )
    ledger = start_ledger()
    train = image_dataset(_stream(job, source, teacher_source), "train", Bookkeeping(ledger)).take_all()
    expected = {
        f"parquet:{hashlib.sha1(b).hexdigest()[:16]}"
        for b in good
        if not is_heldout_bytes(b, source.heldout_fraction)
    }
    assert {r["id"] for r in train} == expected and 0 < 60 - len(
        expected
    ) < 25  # some rows held out, never trained
    bad_in_train = sum(not is_heldout_bytes(b, source.heldout_fraction) for b in blobs[60:])
    assert ray_cluster.get(ledger.count.remote()) == bad_in_train
