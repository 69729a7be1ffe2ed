"""Dataset readers on miniature fakes of every layout (tests/fakes.py); no Ray, no decoding."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from fakes import (  # tests/fakes.py (tests/ is on sys.path under pytest)
    FAKE_DATASETS,
    fake_expectations,
    make_all_fake_datasets,
    make_fake_dataset,
    make_image_folder,
    make_parquet_images,
    write_image,
)

from promptkd_ray.data.benchmarks import (
    BASE_TO_NOVEL_DATASETS,
    DG_DATASETS,
    DatasetLayoutError,
    base_novel_split,
    canonical_name,
    classnames,
    load_dataset,
    load_split_json_dataset,
)
from promptkd_ray.data.fewshot import sample_k_shot
from promptkd_ray.data.folders import list_images, load_image_folder
from promptkd_ray.data.layout import Item
from promptkd_ray.data.parquet import load_parquet_images


def assert_one_sentence(message: str) -> None:
    assert "\n" not in message and message.endswith("."), message
    assert not re.search(r"[.!?]\s+[A-Z]", message[:-1]), f"more than one sentence: {message}"


@pytest.fixture(scope="module")
def fake_folders(tmp_path_factory) -> dict:
    """{name: dataset folder} of all 15 fakes under one root (4 classes, 3 images per class)."""
    return make_all_fake_datasets(tmp_path_factory.mktemp("data"), classes=4, per_class=3)


@pytest.fixture(scope="module")
def fake_root(fake_folders) -> Path:
    return next(iter(fake_folders.values())).parent


def test_registry_covers_the_eleven_benchmarks_and_four_dg_sets():
    assert len(BASE_TO_NOVEL_DATASETS) == 11 and len(DG_DATASETS) == 4
    assert set(BASE_TO_NOVEL_DATASETS) | set(DG_DATASETS) == set(FAKE_DATASETS)


@pytest.mark.parametrize("name", FAKE_DATASETS)
def test_layout_reads_with_expected_classes_order_and_split_sizes(fake_root, name):
    splits = load_dataset(name, fake_root, check_files="all")
    expected = fake_expectations(name, classes=4, per_class=3)
    assert splits.name == name
    assert splits.classnames == expected.classnames
    assert (len(splits.train), len(splits.val), len(splits.test)) == (
        expected.train,
        expected.val,
        expected.test,
    )
    for split in (splits.train, splits.val, splits.test):
        assert {item.label for item in split} <= set(range(4))
        assert all(Path(item.path).is_absolute() and Path(item.path).is_file() for item in split)
    assert {item.label for item in splits.test} == set(range(4))
    assert classnames(name, fake_root) == splits.classnames


def test_class_name_text_and_order_follow_the_source(fake_root):
    assert classnames("Caltech101", fake_root) == ("face", "leopard", "motorbike", "accordion")
    assert classnames("EuroSAT", fake_root)[0] == "Annual Crop Land"
    assert classnames("UCF101", fake_root)[:2] == ("Apply_Eye_Makeup", "Apply_Lipstick")
    assert classnames("SUN397", fake_root)[2] == "apartment_building outdoor"
    assert classnames("FGVCAircraft", fake_root) == ("707-320", "A300B4", "737-200", "Cessna 172")
    # ImageNet: labels follow sorted wnid folders although classnames.txt is in reverse order.
    assert classnames("ImageNet", fake_root) == ("tench", "goldfish", "great white shark", "tiger shark")
    # ImageNet-A: only the present folders (every other wnid of classnames.txt), sorted.
    assert classnames("ImageNetA", fake_root) == ("goldfish", "tiger shark", "extra class 5", "extra class 7")


@pytest.mark.parametrize("name", sorted(set(BASE_TO_NOVEL_DATASETS) - {"ImageNet", "FGVCAircraft"}))
def test_split_json_items_keep_the_label_and_class_name_of_their_row(fake_folders, name):
    splits = load_dataset(name, fake_folders[name].parent)
    content = json.loads(next(fake_folders[name].glob("split_zhou_*.json")).read_text())
    for split in ("train", "val", "test"):
        rows = {row[0]: row for row in content[split]}
        items = getattr(splits, split)
        assert len(items) == len(rows)
        for item in items:
            rel = next(key for key in rows if item.path.endswith("/" + key))
            assert (item.label, splits.classnames[item.label]) == (rows[rel][1], rows[rel][2])


def test_fgvc_items_carry_the_variant_of_their_split_line(fake_root):
    splits = load_dataset("FGVCAircraft", fake_root)
    lines = (fake_root / "fgvc_aircraft" / "images_variant_test.txt").read_text().splitlines()
    variant_of = {f"{line.split(' ', 1)[0]}.jpg": line.split(" ", 1)[1] for line in lines}
    assert len(splits.test) == len(variant_of)
    for item in splits.test:
        assert splits.classnames[item.label] == variant_of[Path(item.path).name]


def test_folder_listed_sets_label_items_by_their_folder(fake_root):
    imagenet = load_dataset("ImageNet", fake_root)
    assert {Path(i.path).parent.name for i in imagenet.train if i.label == 0} == {"n01440764"}
    assert imagenet.val == imagenet.test
    v2 = load_dataset("ImageNetV2", fake_root)
    assert all(Path(i.path).parent.name == str(i.label) for i in v2.test)
    subset = load_dataset("ImageNetR", fake_root)
    assert {Path(i.path).parent.name for i in subset.test if i.label == 0} == {"n01443537"}
    for name in DG_DATASETS:
        assert load_dataset(name, fake_root).train == ()


@pytest.mark.parametrize(
    "alias, name",
    [
        ("oxford_pets", "OxfordPets"),
        ("OXFORDPETS", "OxfordPets"),
        ("pets", "OxfordPets"),
        ("caltech-101", "Caltech101"),
        ("fgvc_aircraft", "FGVCAircraft"),
        ("flowers", "Flowers102"),
        ("oxford_flowers", "Flowers102"),
        ("DescribableTextures", "DTD"),
        ("food-101", "Food101"),
        ("imagenet-a", "ImageNetA"),
        ("imagenet_rendition", "ImageNetR"),
        ("ImageNet-Sketch", "ImageNetSketch"),
        ("imagenet_v2", "ImageNetV2"),
        ("imagenet", "ImageNet"),
    ],
)
def test_names_are_case_insensitive_and_accept_aliases(alias, name):
    assert canonical_name(alias) == name


def test_unknown_dataset_name_is_a_value_error_naming_the_choices():
    with pytest.raises(ValueError, match="OxfordPets") as info:
        load_dataset("oxford_cats", "/nonexistent")
    assert_one_sentence(str(info.value))


def test_file_uri_root_lists_the_same_items_as_the_local_folder(fake_root):
    for name in ("OxfordPets", "ImageNetA"):
        local = load_dataset(name, fake_root)
        remote = load_dataset(name, f"file://{fake_root}")
        assert remote.classnames == local.classnames
        assert [i.path for i in remote.test] == [f"file://{i.path}" for i in local.test]


def test_generic_split_json_reader_serves_any_folder_names(tmp_path):
    folder = make_fake_dataset("DTD", tmp_path)
    folder.rename(tmp_path / "toy_domain")
    splits = load_split_json_dataset(
        tmp_path, "toy_domain", "images", "split_zhou_DescribableTextures.json", "Toy"
    )
    assert splits.name == "Toy" and splits.classnames[:2] == ("banded", "blotchy")
    assert len(splits.train) == 12


# --- wrong layouts: each mutation must end in one DatasetLayoutError sentence ---------------


def _drop_first_line(path: Path) -> None:
    path.write_text("".join(path.read_text().splitlines(keepends=True)[1:]))


def _edit_json(path: Path, edit) -> None:
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content))


def _shift_labels_from(content, first):  # leaves a gap at `first`
    for rows in content.values():
        for row in rows:
            row[1] += 1 if row[1] >= first else 0


BROKEN_LAYOUTS = {
    "missing dataset folder": ("OxfordPets", lambda f: shutil.rmtree(f), "oxford_pets"),
    "missing split file": (
        "OxfordPets",
        lambda f: (f / "split_zhou_OxfordPets.json").unlink(),
        "split_zhou_OxfordPets.json",
    ),
    "renamed split file": (
        "Food101",
        lambda f: (f / "split_zhou_Food101.json").rename(f / "split_food101.json"),
        "split_food101.json",
    ),
    "renamed image folder": (
        "Caltech101",
        lambda f: (f / "101_ObjectCategories").rename(f / "101_objectcategories"),
        "101_objectcategories",
    ),
    "label gap": (
        "DTD",
        lambda f: _edit_json(f / "split_zhou_DescribableTextures.json", lambda c: _shift_labels_from(c, 2)),
        "label 2",
    ),
    "two names for a label": (
        "EuroSAT",
        lambda f: _edit_json(f / "split_zhou_EuroSAT.json", lambda c: c["test"][0].__setitem__(2, "Lake")),
        "Lake",
    ),
    "malformed split entry": (
        "UCF101",
        lambda f: _edit_json(f / "split_zhou_UCF101.json", lambda c: c["val"][0].pop()),
        "index 0",
    ),
    "invalid JSON": ("SUN397", lambda f: (f / "split_zhou_SUN397.json").write_text('{"train": ['), "JSON"),
    "split file without test": (
        "StanfordCars",
        lambda f: _edit_json(f / "split_zhou_StanfordCars.json", lambda c: c.pop("test")),
        "'test'",
    ),
    "image path prefix off": (
        "Flowers102",
        lambda f: _edit_json(
            f / "split_zhou_OxfordFlowers.json",
            lambda c: [row.__setitem__(0, "jpg/" + row[0]) for v in c.values() for row in v],
        ),
        "jpg/jpg/",
    ),
    "missing classnames.txt": ("ImageNet", lambda f: (f / "classnames.txt").unlink(), "classnames.txt"),
    "folder without classnames.txt line": (
        "ImageNet",
        lambda f: _drop_first_line(f / "classnames.txt"),
        "n01491361",
    ),
    "classnames.txt wnid without folder": (
        "ImageNet",
        lambda f: shutil.rmtree(f / "images" / "train" / "n01443537"),
        "n01443537",
    ),
    "val folders differ": (
        "ImageNet",
        lambda f: shutil.rmtree(f / "images" / "val" / "n01484850"),
        "n01484850",
    ),
    "empty class folder": (
        "ImageNet",
        lambda f: [p.unlink() for p in (f / "images" / "train" / "n01440764").iterdir()],
        "n01440764",
    ),
    "malformed classnames line": (
        "ImageNetSketch",
        lambda f: (f / "classnames.txt").write_text("n01440764\n"),
        "line 1",
    ),
    "sketch class without folder": (
        "ImageNetSketch",
        lambda f: shutil.rmtree(f / "images" / "n01491361"),
        "n01491361",
    ),
    "subset folder unknown": (
        "ImageNetA",
        lambda f: write_image(f / "imagenet-a" / "n77777777" / "x.jpg"),
        "n77777777",
    ),
    "v2 folder missing": (
        "ImageNetV2",
        lambda f: shutil.rmtree(f / "imagenetv2-matched-frequency-format-val" / "2"),
        "missing 2",
    ),
    "unknown variant": (
        "FGVCAircraft",
        lambda f: (f / "images_variant_train.txt").write_text("1000000 Boeing 797\n"),
        "Boeing 797",
    ),
    "missing variant list": (
        "FGVCAircraft",
        lambda f: (f / "images_variant_test.txt").unlink(),
        "images_variant_test.txt",
    ),
    "duplicate variant": (
        "FGVCAircraft",
        lambda f: (f / "variants.txt").write_text("707-320\n707-320\n"),
        "distinct",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_LAYOUTS))
def test_wrong_layout_fails_with_one_sentence(tmp_path, case):
    name, mutate, expected_text = BROKEN_LAYOUTS[case]
    mutate(make_fake_dataset(name, tmp_path))
    with pytest.raises(DatasetLayoutError) as info:
        load_dataset(name, tmp_path)
    assert isinstance(info.value, ValueError)
    assert expected_text in str(info.value)
    assert_one_sentence(str(info.value))


def test_check_files_modes_control_the_image_existence_check(tmp_path):
    folder = make_fake_dataset("OxfordPets", tmp_path, classes=3, per_class=40)
    content = json.loads((folder / "split_zhou_OxfordPets.json").read_text())
    victim = sorted(content["train"])[7][0]
    (folder / "images" / victim).unlink()
    assert len(load_dataset("OxfordPets", tmp_path, check_files="none").train) == 120
    with pytest.raises(DatasetLayoutError, match=re.escape(victim)):
        load_dataset("OxfordPets", tmp_path, check_files="all")
    with pytest.raises(ValueError, match="check_files"):
        load_dataset("OxfordPets", tmp_path, check_files="some")


# --- base / novel, k-shot ------------------------------------------------------------------


@pytest.mark.parametrize("n, base_count", [(2, 1), (10, 5), (37, 19), (397, 199)])
def test_base_is_the_first_ceil_half_of_the_labels(n, base_count):
    base, novel = base_novel_split(n)
    assert list(base) == list(range(base_count)) and list(novel) == list(range(base_count, n))


def test_base_novel_split_rejects_fewer_than_two_classes():
    for n in (0, 1):
        with pytest.raises(ValueError):
            base_novel_split(n)


def _items(classes=5, per_class=20):
    return [Item(f"/d/{c}/{i:03d}.jpg", c) for c in range(classes) for i in range(per_class)]


def test_k_shot_is_deterministic_per_seed_and_takes_k_per_class():
    items = _items()
    first = sample_k_shot(items, 4, seed=1)
    assert first == sample_k_shot(list(reversed(items)), 4, seed=1)
    assert first != sample_k_shot(items, 4, seed=2)
    assert [sum(i.label == c for i in first) for c in range(5)] == [4] * 5
    assert len(set(first)) == 20 and set(first) <= set(items)


def test_k_shot_restricted_to_labels_matches_the_unrestricted_subset():
    items = _items()
    base, _ = base_novel_split(5)
    restricted = sample_k_shot(items, 3, seed=7, labels=base)
    assert {i.label for i in restricted} == set(base)
    assert restricted == tuple(i for i in sample_k_shot(items, 3, seed=7) if i.label in base)


def test_k_shot_takes_all_items_of_small_classes_and_rejects_bad_k():
    items = _items(classes=2, per_class=2)
    assert sample_k_shot(items, 16, seed=0) == tuple(sorted(items, key=lambda i: i.path))
    for k in (0, -1, 1.5):
        with pytest.raises(ValueError):
            sample_k_shot(items, k, seed=0)


# --- a user's own domain ----------------------------------------------------------------


def test_image_folder_sorts_classes_and_finds_nested_images_only(tmp_path):
    make_image_folder(tmp_path / "domain", classnames=("dog", "cat", "fishing_boat"), per_class=3)
    splits = load_image_folder(tmp_path / "domain")
    assert splits.name == "domain" and splits.classnames == ("cat", "dog", "fishing_boat")
    assert len(splits.train) == 9 and splits.test == ()
    assert all(i.path.endswith(".png") and "/." not in i.path for i in splits.train)
    assert {Path(i.path).parts[-2] for i in splits.train if i.label == 0} == {"cat", "extra"}
    assert len(load_image_folder(tmp_path / "domain", split="test").test) == 9
    assert len(list_images(tmp_path / "domain")) == 9


def test_image_folder_without_class_folders_fails_with_one_sentence(tmp_path):
    write_image(tmp_path / "flat" / "a.png")
    with pytest.raises(DatasetLayoutError, match="sub-folder per class") as info:
        load_image_folder(tmp_path / "flat")
    assert_one_sentence(str(info.value))


@pytest.mark.parametrize(
    "labels, struct, names", [("int", False, ()), ("str", True, ("ant", "moth", "zebra")), (None, False, ())]
)
def test_parquet_descriptor_reads_schema_and_row_count(tmp_path, labels, struct, names):
    path = make_parquet_images(tmp_path / "x.parquet", rows=6, labels=labels, struct=struct)
    label_column = "label" if labels else None
    described = load_parquet_images(path, "image", label_column)
    assert described.num_rows == 6 and described.classnames == names
    assert described.image_field == ("bytes" if struct else None)


@pytest.mark.parametrize(
    "image_column, label_column, text",
    [("img", None, "'img'"), ("label", None, "image bytes"), ("image", "nope", "'nope'")],
)
def test_parquet_schema_errors_are_one_sentence(tmp_path, image_column, label_column, text):
    path = make_parquet_images(tmp_path / "x.parquet")
    with pytest.raises(DatasetLayoutError) as info:
        load_parquet_images(path, image_column, label_column)
    assert text in str(info.value)
    assert_one_sentence(str(info.value))
