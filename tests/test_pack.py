"""Packs (`promptkd-ray pack`): shards + manifest written last, ids that name the loose files, resume,
refusals, the optional re-encode; then Stage II and eval reading the shards (one Ray test: a pack of
the quick toy world, a short distillation from it, and eval from the shards equal to eval from the
loose files)."""

import csv
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from stage2_fakes import make_split_json

from promptkd_ray.data import pack as packing
from promptkd_ray.data import pack_writer
from promptkd_ray.data.benchmarks import load_split_json_dataset
from promptkd_ray.data.pack import open_pack, row_filter
from promptkd_ray.data.pack_writer import PackOptions, write_pack
from promptkd_ray.errors import DatasetLayoutError, UsageError

SOURCE = {"kind": "split_json", "test": True}


def _dataset(tmp_path, **kwargs):
    root, bad = make_split_json(tmp_path / "data", **kwargs)
    return load_split_json_dataset(root, "toy", "images", "split.json", "toy"), bad


def test_a_pack_holds_every_image_as_its_bytes_under_its_relative_path_in_the_sources_order(tmp_path):
    splits, _ = _dataset(tmp_path, per_class=6, val_per_class=1)
    pack = write_pack(splits, str(tmp_path / "pack"), SOURCE, PackOptions(shard_images=5, progress=False))
    m = pack.manifest
    assert m["base"] == str(tmp_path / "data" / "toy" / "images") and m["classnames"] == list(
        splits.classnames
    )
    for split in ("train", "val", "test"):
        items, entry = getattr(splits, split), m["splits"][split]
        assert entry["images"] == len(items) and sum(s["rows"] for s in entry["shards"]) == len(items)
        assert [s["rows"] for s in entry["shards"]][:-1] == [5] * (len(entry["shards"]) - 1)
        for shard in entry["shards"]:
            data = (tmp_path / "pack" / shard["path"]).read_bytes()
            assert (shard["bytes"], shard["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
        blobs = packing.read_pack_bytes(pack.root, split)
        packed = getattr(pack.splits(), split)
        assert [os.path.join(m["base"], it.path) for it in packed] == [it.path for it in items]
        assert [it.label for it in packed] == [it.label for it in items]
        assert all(blobs[p.path] == Path(it.path).read_bytes() for p, it in zip(packed, items))
    assert pack.splits().pack == pack.root and m["reencode"] is None


def test_the_row_group_reader_reads_a_pack_on_disk_and_behind_a_uri_alike(tmp_path):
    from promptkd_ray.orchestration.packs import _read_row_groups

    splits, _ = _dataset(tmp_path, per_class=6)
    for root in (str(tmp_path / "pack"), (tmp_path / "pack").as_uri()):
        pack = (
            open_pack(root)
            if (tmp_path / "pack").exists()
            else write_pack(splits, root, SOURCE, PackOptions(progress=False))
        )
        groups = pack.row_groups("train")
        assert groups[0][0].startswith("file://") == root.startswith("file://")
        rows = _read_row_groups(
            {"path": [g[0] for g in groups], "group": [g[1] for g in groups]}, labels=True
        )
        blobs = packing.read_pack_bytes(str(tmp_path / "pack"), "train")
        assert list(rows["id"]) == list(blobs) and [bytes(b) for b in rows["bytes"]] == list(blobs.values())
        assert list(rows["label"]) == [it.label for it in splits.train]


def test_a_pack_without_its_manifest_is_refused_in_one_sentence(tmp_path):
    splits, _ = _dataset(tmp_path, per_class=3)
    with pytest.raises(DatasetLayoutError, match=r"found no pack manifest\.$"):
        open_pack(str(tmp_path / "nothing"))
    write_pack(splits, str(tmp_path / "pack"), SOURCE, PackOptions(progress=False))
    (tmp_path / "pack" / packing.MANIFEST).unlink()
    (tmp_path / "pack" / packing.PLAN).write_text("{}")  # as left by an interrupted pack
    with pytest.raises(DatasetLayoutError, match=r"found a partial pack \(its manifest is written last"):
        open_pack(str(tmp_path / "pack"))


def test_an_interrupted_pack_resumes_after_its_last_complete_shard_and_equals_an_uninterrupted_one(
    tmp_path, monkeypatch
):
    splits, _ = _dataset(tmp_path, per_class=6)
    reference = write_pack(
        splits, str(tmp_path / "whole"), SOURCE, PackOptions(shard_images=4, progress=False)
    )
    flush, written = pack_writer._flush, []

    def crash_after_three(*args):
        if len(written) == 3:
            raise KeyboardInterrupt
        written.append(flush(*args))
        return written[-1]

    monkeypatch.setattr(pack_writer, "_flush", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        write_pack(splits, str(tmp_path / "pack"), SOURCE, PackOptions(shard_images=4, progress=False))
    monkeypatch.setattr(pack_writer, "_flush", flush)
    with pytest.raises(DatasetLayoutError, match="partial pack"):
        open_pack(str(tmp_path / "pack"))
    with pytest.raises(
        UsageError, match=r"partial pack of another source or settings \(shard_images differ\)"
    ):
        write_pack(splits, str(tmp_path / "pack"), SOURCE, PackOptions(shard_images=5, progress=False))
    resumed = write_pack(splits, str(tmp_path / "pack"), SOURCE, PackOptions(shard_images=4, progress=False))
    assert resumed.manifest["splits"] == reference.manifest["splits"]
    assert not (tmp_path / "pack" / packing.PLAN).exists()


def test_a_complete_pack_or_a_foreign_folder_is_never_overwritten_silently(tmp_path):
    splits, _ = _dataset(tmp_path, per_class=2)
    write_pack(splits, str(tmp_path / "pack"), SOURCE, PackOptions(progress=False))
    with pytest.raises(UsageError, match="already holds a complete pack; pass --overwrite"):
        write_pack(splits, str(tmp_path / "pack"), SOURCE, PackOptions(progress=False))
    assert write_pack(
        splits, str(tmp_path / "pack"), SOURCE, PackOptions(overwrite=True, progress=False)
    ).manifest
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="is not empty and holds no pack"):
        write_pack(splits, str(tmp_path / "other"), SOURCE, PackOptions(progress=False))


def test_unreadable_files_are_stored_as_read_so_the_decoder_reports_them_by_pack_id(tmp_path):
    from promptkd_ray.data.decode import decode_views

    splits, bad = _dataset(tmp_path, per_class=2, bad_per_kind=1)
    pack = write_pack(splits, str(tmp_path / "pack"), SOURCE, PackOptions(max_short_side=16, progress=False))
    assert pack.manifest["splits"]["train"]["unreadable_at_pack"] == 3
    blobs = packing.read_pack_bytes(pack.root, "train")
    ids = list(blobs)
    rows, unreadable = decode_views(
        {"id": np.asarray(ids, object), "bytes": np.asarray(list(blobs.values()), object)}, 8, "test"
    )
    base = pack.manifest["base"]
    assert (
        sorted(os.path.join(base, i) for i, _ in unreadable) == sorted(bad)
        and len(rows["id"]) == len(ids) - 3
    )


def test_max_short_side_re_encodes_only_larger_images_as_jpeg():
    big, small = io.BytesIO(), io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(big, "PNG")
    Image.new("RGB", (20, 30)).save(small, "PNG")
    data, ok = pack_writer.encode_image(big.getvalue(), 40)
    with Image.open(io.BytesIO(data)) as img:
        assert ok and (img.format, img.size) == ("JPEG", (60, 40))
    assert pack_writer.encode_image(small.getvalue(), 40) == (small.getvalue(), True)
    assert pack_writer.encode_image(big.getvalue(), 0) == (big.getvalue(), True)
    assert pack_writer.encode_image(b"not an image", 40) == (b"not an image", False)


def test_row_filter_tests_the_fewest_ids():
    assert row_filter(4, ["a", "b", "c", "d"], []) == ("all", frozenset())
    assert row_filter(4, ["a", "b", "c"], ["d"]) == ("exclude", frozenset({"d"}))
    assert row_filter(4, ["a", "b"], []) == ("include", frozenset({"a", "b"}))
    assert row_filter(4, ["d"], ["a", "b", "c"]) == ("include", frozenset({"d"}))


def test_a_packed_job_holds_out_and_limits_the_same_images_as_the_loose_one(tmp_path):
    from stage2_fakes import tiny_job

    from promptkd_ray.config import distill_job_from_dict
    from promptkd_ray.data.sources import PackSource, resolve_source

    splits, _ = _dataset(tmp_path, per_class=10, val_per_class=3)
    pack = write_pack(splits, str(tmp_path / "pack"), SOURCE, PackOptions(progress=False))
    base = pack.manifest["base"]
    for data in ({"heldout_images": 6}, {"heldout_images": 5, "heldout_split": "val", "limit": 12}):
        loose = tiny_job(tmp_path / "data", tmp_path / "runs", "loose", data=data)
        packed = tiny_job(
            tmp_path / "data", tmp_path / "runs", "packed", data=dict(data, source="packed", root=pack.root)
        )
        a = resolve_source(distill_job_from_dict(loose).data, seed=3)
        b = resolve_source(distill_job_from_dict(packed).data, seed=3)
        assert [os.path.join(base, i) for i in b.train_paths] == list(a.train_paths)
        assert [os.path.join(base, i) for i in b.heldout_paths] == list(a.heldout_paths)
        assert b.classnames == a.classnames and b.num_train == a.num_train and isinstance(b, PackSource)
        assert b.pack_splits == ("train", data.get("heldout_split") or "train")


def test_the_pack_command_packs_a_split_json_dataset_and_eval_arguments_open_it(tmp_path, capsys):
    from promptkd_ray.cli import build_parser, main
    from promptkd_ray.cli.args import open_datasets

    root, _ = make_split_json(tmp_path / "data", per_class=3)
    out = tmp_path / "pack"
    assert (
        main(
            [
                "pack",
                "--split-json",
                str(root / "toy" / "split.json"),
                "--out",
                str(out),
                "--splits",
                "train",
                "test",
            ]
        )
        == 0
    )
    assert f"distil from it with data.source=packed data.root={out}" in capsys.readouterr().out
    assert set(json.loads((out / "manifest.json").read_text())["splits"]) == {"train", "test"}
    assert main(["pack", "--split-json", str(root / "toy" / "split.json"), "--out", str(out)]) == 2
    assert "already holds a complete pack" in capsys.readouterr().err
    (dataset,) = open_datasets(build_parser(["eval"]).parse_args(["eval", "--pack", str(out), "--out", "x"]))
    assert dataset.name == "toy" and len(dataset.test) == 8 and dataset.pack == str(out)


# --- on Ray: distil and evaluate from the shards ---------------------------------------------------


def _report_rows(out: Path) -> list:
    return list(csv.DictReader((out / "results.csv").open()))


@pytest.mark.slow
def test_distill_and_eval_from_a_pack_of_the_quick_toy_world(ray_cluster, toy_world, tmp_path, capsys):
    """Pack the toy domain; distil one short epoch from the shards (held-out slice from the packed
    val split); eval from the shards scores exactly as eval from the loose files."""
    from promptkd_ray.cli import main
    from promptkd_ray.config import load_distill_job
    from promptkd_ray.distill import run_distillation

    domain = toy_world.domain()
    pack = tmp_path / "pack"
    assert main(["pack", "--toyworld", "quick", "--out", str(pack), "--shard-mb", "1"]) == 0
    shards = json.loads((pack / "manifest.json").read_text())["splits"]["train"]["shards"]
    assert len(shards) > 1
    job = load_distill_job(
        str(Path(__file__).resolve().parents[1] / "jobs" / "toy_b2n.yaml"),
        [
            "data.source=packed",
            f"data.root={pack}",
            "data.toyworld_profile=quick",
            "data.limit=128",
            "data.heldout_images=32",
            f"teacher.spec={toy_world.teacher_spec}",
            f"student.spec={toy_world.student_spec}",
            "train.epochs=1",
            "train.num_workers=1",
            f"storage_path={tmp_path / 'runs'}",
            "ray.progress_bars=false",
        ],
    )
    result = run_distillation(job)
    (epoch,) = result.history
    assert epoch["images"] == 128 and epoch["bad_images"] == 0
    assert np.isfinite(epoch["heldout_agreement"]) and epoch["heldout_images"] == 32
    reports = {}
    for name, where in (
        ("loose", ["--split-json", str(domain.split_file), "--dataset", domain.name]),
        ("packed", ["--pack", str(pack)]),
    ):
        reports[name] = tmp_path / name
        assert (
            main(
                [
                    "eval",
                    *where,
                    "--student",
                    result.student_artifact,
                    "--class-vectors",
                    f"{result.run_dir}/class_vectors",
                    "--out",
                    str(reports[name]),
                ]
            )
            == 0
        )
    loose, packed = _report_rows(reports["loose"]), _report_rows(reports["packed"])
    assert len(loose) == 1 and packed == loose
