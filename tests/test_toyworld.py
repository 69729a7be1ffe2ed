"""The offline toy world: renderer, captions, contrastive pretraining, domains on disk, world cache.

Fast tests build tiny things in tmp_path. The tests marked slow share one "quick" world built in
the toy-world cache (`$PROMPTKD_RAY_CACHE/toyworld`, else `~/.cache/promptkd_ray/toyworld`), so
only the first run pays for pretraining (≈1.5 min on 2 cores); later runs reuse it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from promptkd_ray.toyworld import concepts, render, shapes
from promptkd_ray.toyworld.concepts import CAPTION_STYLES, COLOURS, SHAPES, STYLE_WORDS
from promptkd_ray.toyworld.corpus import CorpusSpec, sample_batch
from promptkd_ray.toyworld.domains import DomainSpec, write_domain
from promptkd_ray.toyworld.pretrain import (
    CLIP_MEAN,
    CLIP_STD,
    PretrainSpec,
    images_to_tensor,
    multi_positive_infonce,
    pretrain_clip,
)
from promptkd_ray.toyworld.styles import STYLES
from promptkd_ray.toyworld.world import build_world, default_cache_dir, world_path

TINY_DOMAIN = DomainSpec(
    name="ToyTiny",
    folder="toy_tiny",
    style="doodle",
    colours=("red", "blue"),
    shapes=("star", "circle", "cross"),
    train_per_class=3,
    val_per_class=1,
    test_per_class=2,
)


# --- renderer -------------------------------------------------------------------------------


def test_render_is_deterministic_uint8_hwc():
    a = render.render_image("red", "star", "photo", np.random.default_rng(7))
    b = render.render_image("red", "star", "photo", np.random.default_rng(7))
    c = render.render_image("red", "star", "photo", np.random.default_rng(8))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_every_style_draws_every_shape_visibly(style):
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        image = render.render_image("blue", shape, style, rng).astype(np.float32)
        assert image.std() > 5.0, f"{style} {shape} looks blank"


@pytest.mark.parametrize("style", sorted(STYLES))
def test_in_every_style_each_shape_and_each_colour_changes_the_pixels(style):
    """With the same draws (seed: placement, colour jitter, background), two shapes, or two colours,
    give different images in every style: every class of the world is its own picture, not noise.
    And no two styles draw the same picture. (Measured, closest pairs: shapes ≥ 2.3 grey levels apart on
    average, colours ≥ 1.5, styles ≥ 4.6 — photo and blurry.)"""

    def draw(colour: str, shape: str, in_style: str = style) -> np.ndarray:
        return render.render_image(colour, shape, in_style, np.random.default_rng(0)).astype(np.float32)

    shapes = {shape: draw("blue", shape) for shape in SHAPES}
    colours = {colour: draw(colour, "square") for colour in COLOURS}
    for images in (shapes, colours):
        names = sorted(images)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                assert np.abs(images[a] - images[b]).mean() > 1.0, f"{style}: {a} and {b} look alike"
    others = [other for other in sorted(STYLES) if other != style]
    assert all(np.abs(draw("blue", "star", other) - shapes["star"]).mean() > 2.0 for other in others)


def test_shapes_have_distinct_silhouettes():
    masks = {s: shapes.downsample(shapes.shape_mask(s, 32, 32, 24, 0.0, False, 64)) for s in SHAPES}
    for i, a in enumerate(SHAPES):
        assert 0.1 < masks[a].mean() < 0.9, f"{a} covers {masks[a].mean():.2f} of the canvas"
        for b in SHAPES[i + 1 :]:
            assert np.abs(masks[a] - masks[b]).mean() > 0.02, f"{a} and {b} look alike"


def test_colour_shows_in_the_shape_pixels():
    rng = np.random.default_rng(1)
    red = render.render_image("red", "square", "cartoon", rng).astype(int)
    blue = render.render_image("blue", "square", "cartoon", rng).astype(int)
    centre = (slice(12, 20), slice(12, 20))
    assert red[centre][..., 0].mean() > red[centre][..., 2].mean() + 60
    assert blue[centre][..., 2].mean() > blue[centre][..., 0].mean() + 60


def test_unknown_names_are_errors_that_list_the_known_ones():
    with pytest.raises(ValueError, match="known styles"):
        render.render_image("red", "star", "watercolour", np.random.default_rng(0))
    with pytest.raises(ValueError, match="known shapes"):
        render.render_image("red", "blob", "photo", np.random.default_rng(0))
    with pytest.raises(ValueError, match="known colours"):
        render.render_image("teal", "star", "photo", np.random.default_rng(0))


# --- captions and corpus ----------------------------------------------------------------------


def test_every_caption_names_its_concept_and_fits_the_context():
    from promptkd_ray.core.models import get_tokenizer

    tokenizer = get_tokenizer("toy-student")
    longest_colour = max(COLOURS, key=len)
    longest_shape = max(SHAPES, key=len)
    for templates in CAPTION_STYLES.values():
        for template in templates:
            for words in STYLE_WORDS.values():
                caption = template.format(c=longest_colour, s=longest_shape, w=max(words, key=len))
                ids = tokenizer([caption])[0]
                assert int(ids[-1]) == 0, f"{caption!r} fills the 16-token context and gets cut"
    rng = np.random.default_rng(0)
    caption = concepts.make_caption("purple", "hexagon", "sketch", {"plain": 1, "styled": 1}, rng)
    assert "purple" in caption and "hexagon" in caption


def test_corpus_batch_is_consistent_and_follows_its_styles():
    spec = CorpusSpec(styles={"photo": 1.0, "neon": 1.0}, colours=("red", "blue"), shapes=("star", "ring"))
    batch = sample_batch(spec, 40, np.random.default_rng(3))
    assert batch.images.shape == (40, 32, 32, 3)
    assert set(batch.styles) == {"photo", "neon"}
    for cid, caption in zip(batch.concept_ids, batch.captions):
        assert spec.colours[cid // 2] in caption and spec.shapes[cid % 2] in caption
    with pytest.raises(ValueError, match="unknown"):
        CorpusSpec(styles={"oil": 1.0})


# --- pretraining ------------------------------------------------------------------------------


def test_multi_positive_infonce_is_clip_loss_without_duplicates_and_rewards_alignment():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    ids = torch.arange(6)
    logits = 10.0 * img @ txt.t()
    clip = 0.5 * (
        torch.nn.functional.cross_entropy(logits, ids) + torch.nn.functional.cross_entropy(logits.t(), ids)
    )
    assert torch.allclose(multi_positive_infonce(img, txt, ids, torch.tensor(10.0)), clip)
    assert multi_positive_infonce(img, img, ids, torch.tensor(10.0)) < clip
    # two items of one concept: matching either caption is right, so the loss is lower than with ids distinct
    dup = torch.tensor([0, 0, 1, 2, 3, 4])
    txt_dup = torch.cat([img[1:2], img[0:1], img[2:]])
    assert multi_positive_infonce(img, txt_dup, dup, torch.tensor(10.0)) < multi_positive_infonce(
        img, txt_dup, ids, torch.tensor(10.0)
    )


def test_pretrain_writes_a_deterministic_checkpoint_that_load_clip_reads(tmp_path):
    from safetensors.torch import load_file

    from promptkd_ray.core.models import load_clip

    spec = PretrainSpec(
        "toy-student", CorpusSpec(), steps=2, batch_size=8, pool_size=16, warmup_steps=1, seed=3
    )
    first = pretrain_clip(spec, tmp_path / "a.safetensors", progress=False)
    second = pretrain_clip(spec, tmp_path / "b.safetensors", progress=False)
    a, b = load_file(str(first)), load_file(str(second))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model = load_clip(f"toy-student:{first}")
    assert torch.equal(model.state_dict()["visual.conv1.weight"], a["visual.conv1.weight"])
    untrained = load_clip("toy-student")
    assert not torch.equal(untrained.state_dict()["visual.conv1.weight"], a["visual.conv1.weight"])
    assert not list(tmp_path.glob(".*tmp"))


def test_style_warmup_must_name_styles_of_the_corpus():
    corpus = CorpusSpec(styles={"photo": 1.0, "sketch": 1.0})
    PretrainSpec("toy-student", corpus, warmup_styles=("photo",), style_warmup_steps=5)
    with pytest.raises(ValueError, match="warm-up"):
        PretrainSpec("toy-student", corpus, warmup_styles=("neon",), style_warmup_steps=5)
    with pytest.raises(ValueError, match="warm-up"):
        PretrainSpec("toy-student", corpus, style_warmup_steps=5)


def test_images_to_tensor_applies_clip_normalisation():
    x = images_to_tensor(np.full((2, 4, 4, 3), 255, dtype=np.uint8))
    assert x.shape == (2, 3, 4, 4)
    expected = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(x[0, :, 0, 0], expected)


# --- domains on disk --------------------------------------------------------------------------


def test_domain_is_written_in_the_coop_split_json_layout(tmp_path):
    split_file = write_domain(TINY_DOMAIN, tmp_path, seed=0, progress=False)
    assert split_file == tmp_path / "toy_tiny" / "split_zhou_ToyTiny.json"
    content = json.loads(split_file.read_text())
    assert set(content) == {"train", "val", "test"}
    names = TINY_DOMAIN.classnames
    assert names == sorted(names) and len(names) == 6
    for split, per_class in (("train", 3), ("val", 1), ("test", 2)):
        items = content[split]
        labels = [label for _, label, _ in items]
        assert sorted(set(labels)) == list(range(6))
        assert all(labels.count(k) == per_class for k in range(6))
        for rel, label, name in items:
            assert isinstance(rel, str) and not rel.startswith("/") and name == names[label]
            image = Image.open(tmp_path / "toy_tiny" / "images" / rel)
            assert image.size == (32, 32) and image.mode == "RGB"


def test_domain_is_readable_by_the_benchmark_split_reader(tmp_path):
    from promptkd_ray.data.benchmarks import load_split_json_dataset

    write_domain(TINY_DOMAIN, tmp_path, seed=0, progress=False)
    splits = load_split_json_dataset(
        tmp_path, "toy_tiny", "images", "split_zhou_ToyTiny.json", "ToyTiny", check_files="all"
    )
    assert list(splits.classnames) == TINY_DOMAIN.classnames
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 6, 12)


def test_domain_pixels_are_fixed_by_the_seed_and_rewriting_is_a_no_op(tmp_path):
    a = write_domain(TINY_DOMAIN, tmp_path / "a", seed=0, progress=False).parent / "images"
    b = write_domain(TINY_DOMAIN, tmp_path / "b", seed=0, progress=False).parent / "images"
    c = write_domain(TINY_DOMAIN, tmp_path / "c", seed=1, progress=False).parent / "images"
    rel = "red_star/test_0001.png"
    assert (a / rel).read_bytes() == (b / rel).read_bytes() != (c / rel).read_bytes()
    before = (a / rel).stat().st_mtime_ns
    write_domain(TINY_DOMAIN, tmp_path / "a", seed=0, progress=False)
    assert (a / rel).stat().st_mtime_ns == before
    assert not list((tmp_path / "a").glob(".*tmp*"))


# --- the world and its cache ------------------------------------------------------------------


@pytest.fixture()
def tiny_profile(monkeypatch):
    """A registered profile with 2-step pretraining and 2 images per class and split."""
    from promptkd_ray.toyworld import world

    tiny = world.WorldProfile(
        teacher=PretrainSpec(world.TEACHER_MODEL, world.TEACHER_CORPUS, steps=2, batch_size=8, pool_size=16),
        student=PretrainSpec(world.STUDENT_MODEL, world.STUDENT_CORPUS, steps=2, batch_size=8, pool_size=16),
        domain_scale=0.01,
    )
    monkeypatch.setitem(world.PROFILES, "tiny", tiny)
    return "tiny"


def test_build_world_makes_loadable_models_and_domains_then_hits_the_cache(tmp_path, tiny_profile):
    from promptkd_ray.core.models import load_clip

    built = build_world(tmp_path, seed=5, profile=tiny_profile, progress=False)
    assert built.path == world_path(tmp_path, tiny_profile, 5)
    teacher, student = load_clip(built.teacher_spec), load_clip(built.student_spec)
    assert teacher.text_projection.shape[1] == 64 and student.text_projection.shape[1] == 32
    assert sum(p.numel() for p in teacher.visual.parameters()) > 4 * sum(
        p.numel() for p in student.visual.parameters()
    )
    assert set(built.domains) == {"doodles", "neon"} and built.domain().key == "doodles"
    for domain in built.domains.values():
        assert domain.split_file.is_file() and domain.image_dir.is_dir()
        content = json.loads(domain.split_file.read_text())
        assert {name for _, _, name in content["test"]} == set(domain.classnames)
    doodles, neon = (json.loads(built.domains[k].split_file.read_text())["test"] for k in ("doodles", "neon"))
    rel = sorted(rel for rel, _, _ in doodles if rel in {r for r, _, _ in neon})[
        0
    ]  # same class, same file name
    pixels = [
        np.asarray(Image.open(built.domains[k].image_dir / rel), np.float32) for k in ("doodles", "neon")
    ]
    assert np.abs(pixels[0] - pixels[1]).mean() > 5.0  # the two domains draw their classes differently
    stamp = (built.path / "teacher.safetensors").stat().st_mtime_ns
    start = time.time()
    again = build_world(tmp_path, seed=5, profile=tiny_profile, progress=False)
    assert time.time() - start < 2.0
    assert again == built
    assert (built.path / "teacher.safetensors").stat().st_mtime_ns == stamp
    (built.path / "world.json").unlink()  # an interrupted build: the student and manifest are missing
    (built.path / "student.safetensors").unlink()
    assert build_world(tmp_path, seed=5, profile=tiny_profile, progress=False) == built
    assert (built.path / "teacher.safetensors").stat().st_mtime_ns == stamp
    assert (built.path / "student.safetensors").is_file()
    with pytest.raises(KeyError, match="doodles"):
        built.domain("imagenet")


def test_a_further_teacher_is_the_worlds_recipe_from_another_seed_kept_beside_it(tmp_path, tiny_profile):
    """An ensemble's second teacher: same architecture and corpus recipe, model seed 1000·i + 2·seed
    (the world's own teacher and student take 2·seed and 2·seed + 1), written once, then reused."""
    from safetensors import safe_open

    from promptkd_ray.core.models import load_clip
    from promptkd_ray.toyworld import further_teacher

    built = build_world(tmp_path, seed=5, profile=tiny_profile, progress=False)
    spec = further_teacher(built, 1, progress=False)
    assert spec == f"toy-teacher:{built.path / 'teacher-1.safetensors'}"
    seeds = {}
    for name in ("teacher", "teacher-1"):
        with safe_open(str(built.path / f"{name}.safetensors"), "pt") as f:
            seeds[name] = json.loads(f.metadata()["pretrain_spec"])["seed"]
    assert seeds == {"teacher": 10, "teacher-1": 1010}
    mine, other = load_clip(built.teacher_spec), load_clip(spec)
    assert other.text_projection.shape == mine.text_projection.shape
    assert not torch.equal(other.text_projection, mine.text_projection)
    stamp = (built.path / "teacher-1.safetensors").stat().st_mtime_ns
    assert further_teacher(built, 1, progress=False) == spec
    assert (built.path / "teacher-1.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match=r"index is ≥ 1 \(0 is the world's own teacher\), got 0\.$"):
        further_teacher(built, 0)


def test_module_entry_point_builds_and_reports_the_world(tmp_path, tiny_profile, capsys):
    from promptkd_ray.toyworld.__main__ import main

    main(["--profile", tiny_profile, "--cache-dir", str(tmp_path), "--seed", "2"])
    out = capsys.readouterr().out
    built = build_world(tmp_path, seed=2, profile=tiny_profile)
    assert built.teacher_spec in out and str(built.domain().split_file) in out


def test_world_folders_differ_by_profile_and_seed_and_the_cache_root_follows_the_env(tmp_path, monkeypatch):
    assert (
        world_path(tmp_path, "quick", 0)
        != world_path(tmp_path, "quick", 1)
        != world_path(tmp_path, "full", 0)
    )
    monkeypatch.setenv("PROMPTKD_RAY_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache" / "toyworld"
    monkeypatch.delenv("PROMPTKD_RAY_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "promptkd_ray" / "toyworld"
    with pytest.raises(ValueError, match="profile"):
        build_world(tmp_path, profile="huge")


def test_the_dialect_world_is_the_default_with_40_train_images_a_class_and_the_others_keep_theirs():
    from promptkd_ray.config.sections import TOYWORLD_PROFILES, ImagesConfig
    from promptkd_ray.toyworld.world import DEFAULT_PROFILE, DOMAINS, PROFILES, world_recipe

    assert set(TOYWORLD_PROFILES) == set(PROFILES) and TOYWORLD_PROFILES[0] == DEFAULT_PROFILE == "dialect"
    assert ImagesConfig().toyworld_profile == "dialect"
    dialect, full = world_recipe("dialect", 0)["domains"], world_recipe("full", 0)["domains"]
    for key, spec in DOMAINS.items():
        assert dialect[key]["train_per_class"] == 40 and full[key]["train_per_class"] == spec.train_per_class
        assert dialect[key]["test_per_class"] == spec.test_per_class  # same test images as the full world
    # a profile without its own train size writes no key, so the worlds built before it keep their folders
    assert "train_per_class" not in world_recipe("full", 0)["pretrain"]
    assert world_recipe("dialect", 0)["pretrain"]["train_per_class"] == 40


# --- the quick world (slow: pretrains once per cache) -----------------------------------------


@pytest.fixture(scope="module")
def quick_world():
    return build_world(profile="quick", seed=0, progress=False)


def _zero_shot_hm(spec: str, domain) -> float:
    from promptkd_ray.core.metrics import base_novel_accuracy
    from promptkd_ray.core.models import build_teacher

    content = json.loads(domain.split_file.read_text())["test"]
    images = np.stack(
        [np.asarray(Image.open(domain.image_dir / rel).convert("RGB")) for rel, _, _ in content]
    )
    labels = torch.tensor([label for _, label, _ in content])
    clip = build_teacher(spec)
    with torch.no_grad():
        features = clip.encode_image(images_to_tensor(images))
        class_vectors = clip.encode_text(list(domain.classnames))
    return base_novel_accuracy(features, labels, class_vectors, math.ceil(domain.num_classes / 2))["hm"]


@pytest.mark.slow
def test_quick_world_teacher_knows_the_default_domain_far_better_than_the_student(quick_world):
    domain = quick_world.domain()
    teacher_hm = _zero_shot_hm(quick_world.teacher_spec, domain)
    student_hm = _zero_shot_hm(quick_world.student_spec, domain)
    assert teacher_hm >= student_hm + 10.0, (teacher_hm, student_hm)


@pytest.mark.slow
def test_quick_world_is_a_cache_hit_the_second_time(quick_world):
    start = time.time()
    assert build_world(profile="quick", seed=0, progress=False) == quick_world
    assert time.time() - start < 5.0
