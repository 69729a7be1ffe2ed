"""Images as crawls deliver them: a corpus written by the tests (every readable oddity, every kind of
unreadable file, a decompression bomb) through the one decoder and each path that uses it —
`decode_views` / `read_image`, Stage I's k-shot check, `eval`, and (slow) a Stage II run whose
bad-image count must be exact; the bomb's peak memory is measured in a fresh process."""

import csv
import functools
import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from promptkd_ray.data.decode import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DecodeOptions,
    ImageTooLargeError,
    decode_views,
    read_image,
)

BOMB_SIDE = 40_000


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.lru_cache(maxsize=None)
def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A complete, valid 1-bit PNG of side × side black pixels: a few hundred KB on disk, 1.6 GB
    once decoded (PIL holds bilevel images one byte per pixel) and 4.8 GB as RGB."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


@functools.lru_cache(maxsize=None)
def readable_corpus() -> dict:
    """file name → (bytes, expected decoded size (w, h)) of every readable oddity."""
    rgba = np.zeros((8, 10, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)  # fully transparent, but these are the colours stored under the alpha
    palette = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8)).convert("P")
    wide = np.array(
        [[0, 32768, 65535, 1000]] * 3, dtype=np.uint16
    )  # 16-bit gray: black, mid-gray, white, dark
    frames = [Image.new("RGB", (12, 9), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to view upright
    return {
        "rgba.png": (_save(Image.fromarray(rgba, "RGBA"), "PNG"), (10, 8)),
        "gray_alpha.png": (_save(Image.new("LA", (7, 5), (200, 0)), "PNG"), (7, 5)),
        "palette.png": (_save(palette, "PNG"), (8, 6)),
        "palette_transparent.gif": (_save(palette, "GIF", transparency=0), (8, 6)),
        "cmyk.jpg": (_save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"), (16, 16)),
        "gray16.png": (_save(Image.fromarray(wide), "PNG"), (4, 3)),
        "gray.png": (_save(Image.new("L", (9, 9), 77), "PNG"), (9, 9)),
        "bilevel.png": (_save(Image.new("1", (9, 4), 1), "PNG"), (9, 4)),
        "animated.gif": (animated.getvalue(), (12, 9)),
        "photo.webp": (_save(_noise(20, 14), "WEBP", quality=90), (20, 14)),
        "photo.tiff": (_save(_noise(13, 11), "TIFF"), (13, 11)),
        "jpeg_named.png": (_save(_noise(24, 18), "JPEG"), (24, 18)),
        "one_pixel.png": (_save(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"), (1, 1)),
        "sliver_600x2.png": (_save(_noise(600, 2), "PNG"), (600, 2)),
        "exif_rotated.jpg": (_save(_noise(30, 20), "JPEG", exif=exif), (30, 20)),
    }


@functools.lru_cache(maxsize=None)
def unreadable_corpus() -> dict:
    """file name → bytes of every unreadable kind: what a crawl saves when a download goes wrong."""
    jpeg, png = _save(_noise(64, 64, 1), "JPEG", quality=95), _save(_noise(64, 64, 2), "PNG")
    return {
        "zero_bytes.jpg": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated.png": png[: len(png) // 2],
        "html_page.jpg": b"<!DOCTYPE html><html><head><title>403 Forbidden</title></head><body></body></html>\n",
        "notes.png": b"this is a text file, not an image\n",
        "random_bytes.jpg": bytes(np.random.default_rng(3).integers(0, 255, 500, dtype=np.uint8)),
        "bomb.png": bomb_png(),
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The corpus as files in one folder."""
    folder = tmp_path_factory.mktemp("corpus")
    for name, (data, _) in readable_corpus().items():
        (folder / name).write_bytes(data)
    for name, data in unreadable_corpus().items():
        (folder / name).write_bytes(data)
    return folder


def _batch(folder: Path, names) -> dict:
    return {"id": np.asarray([str(folder / n) for n in names], dtype=object)}


def test_the_bomb_file_is_tiny_but_declares_forty_thousand_squared_pixels():
    data = bomb_png()
    assert len(data) < 300_000
    assert data[12:16] == b"IHDR" and struct.unpack(">II", data[16:24]) == (BOMB_SIDE, BOMB_SIDE)


@pytest.mark.parametrize("name", sorted(readable_corpus()))
def test_each_readable_oddity_decodes_to_rgb_at_its_size(corpus, name):
    image = read_image(str(corpus / name))
    assert image.mode == "RGB" and image.size == readable_corpus()[name][1]


def test_oddities_decode_as_the_authors_convert_except_wide_integers(corpus):
    """Alpha is dropped (the colour under it stays), a GIF gives its first frame, CMYK converts,
    and 16-bit gray is scaled to 8 bits where convert("RGB") would clip it to white."""
    pixel = lambda name, xy=(0, 0): read_image(str(corpus / name)).getpixel(xy)  # noqa: E731
    assert pixel("rgba.png") == (10, 20, 30)
    assert pixel("gray_alpha.png") == (200, 200, 200)
    assert pixel("animated.gif") == (255, 0, 0)
    red, green, blue = pixel("cmyk.jpg")
    assert red > 200 and green < 60 and blue < 60
    gray16 = np.asarray(read_image(str(corpus / "gray16.png")))[0, :, 0]
    assert gray16.tolist() == [0, 128, 255, 4]
    clipped = np.asarray(Image.open(corpus / "gray16.png").convert("RGB"))[0, :, 0]
    assert clipped.tolist() == [0, 255, 255, 255]  # what the plain convert would have given
    assert pixel("one_pixel.png") == (1, 2, 3) and pixel("bilevel.png") == (255, 255, 255)


def test_exif_orientation_is_ignored_by_default_and_applied_when_asked(corpus):
    path = str(corpus / "exif_rotated.jpg")
    assert read_image(path).size == (30, 20)  # the authors' code: PIL does not rotate
    upright = read_image(path, DecodeOptions(exif_orientation="apply"))
    assert upright.size == (20, 30)
    assert np.array_equal(
        np.asarray(upright), np.asarray(read_image(path).transpose(Image.Transpose.ROTATE_270))
    )


@pytest.mark.parametrize("mode", ["train", "heldout", "test"])
def test_decode_views_keeps_every_oddity_and_drops_exactly_the_unreadable_files(corpus, mode):
    names = sorted(readable_corpus()) + sorted(unreadable_corpus())
    rows, bad = decode_views(_batch(corpus, names), size=16, mode=mode, seed=0)
    assert rows["image"].shape == (len(readable_corpus()), 16, 16, 3) and rows["image"].dtype == np.uint8
    assert [Path(i).name for i in rows["id"]] == sorted(readable_corpus())
    assert sorted(Path(ident).name for ident, _ in bad) == sorted(unreadable_corpus())
    reasons = {Path(ident).name: reason for ident, reason in bad}
    print({name: reasons[name] for name in sorted(reasons)})
    assert reasons["bomb.png"] == (
        "ImageTooLargeError: Image size (1600000000 pixels) exceeds limit of 178956970 "
        "pixels, could be decompression bomb DOS attack (PIL), over the limit of "
        f"{DEFAULT_MAX_IMAGE_PIXELS:,} (data.max_image_pixels); refused before decoding"
    )
    assert "truncated" in reasons["truncated.jpg"] and "truncated" in reasons["truncated.png"]
    assert (
        reasons["zero_bytes.jpg"]
        == "UnidentifiedImageError: not an image format PIL can read (an empty file)"
    )
    assert reasons["html_page.jpg"] == (
        "UnidentifiedImageError: not an image format PIL can read (83 bytes, starting b'<!DOCTYPE html><')"
    )
    for name in ("notes.png", "random_bytes.jpg"):
        assert reasons[name].startswith("UnidentifiedImageError: not an image format PIL can read (")


def test_the_pixel_limit_is_the_callers_and_never_touches_pils_global(corpus):
    before = Image.MAX_IMAGE_PIXELS
    small = DecodeOptions(max_pixels=1_000)
    rows, bad = decode_views(_batch(corpus, ["sliver_600x2.png", "photo.webp"]), 16, "test", options=small)
    assert [Path(i).name for i in rows["id"]] == ["photo.webp"]
    assert bad[0][1].startswith(
        "ImageTooLargeError: declares 600 × 2 = 1,200 pixels, over the limit of 1,000"
    )
    assert Image.MAX_IMAGE_PIXELS == before
    with pytest.raises(ValueError, match="max_pixels must be in 1"):
        DecodeOptions(max_pixels=0)


def test_a_sliver_the_test_transform_would_blow_up_is_refused_in_test_mode_only():
    """20,000 × 1 is 20,000 pixels, but Resize(224) would make it 4,480,000 × 224 (3 GB as RGB)."""
    batch = {
        "id": np.asarray(["sliver"], dtype=object),
        "bytes": np.asarray([_save(_noise(20_000, 1), "PNG")], dtype=object),
    }
    rows, bad = decode_views(batch, 224, "test")
    assert len(rows["id"]) == 0 and bad == [
        (
            "sliver",
            "ImageTooLargeError: 20000 × 1 pixels: the test transform "
            "would resize it to 4480000 × 224 = 1,003,520,000, over the limit of "
            "89,478,485 (data.max_image_pixels, at least PIL's default)",
        )
    ]
    rows, bad = decode_views(batch, 224, "train", seed=0)
    assert not bad and rows["image"].shape == (1, 224, 224, 3)


def test_the_decoders_own_check_refuses_the_bomb_when_pils_guard_is_off(corpus, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # e.g. a library that disabled it process-wide
    with pytest.raises(
        ImageTooLargeError,
        match=r"^declares 40000 × 40000 = 1,600,000,000 pixels, over the limit "
        r"of 89,478,485 \(data.max_image_pixels\); refused before decoding$",
    ):
        read_image(str(corpus / "bomb.png"))


BOMB_PROBE = """
import sys
from PIL import Image
from promptkd_ray.data.decode import DecodeOptions, read_image
Image.MAX_IMAGE_PIXELS = None  # PIL's own guard off: only the decoder's limit stands between us and the bomb

def status_kb(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

for path, limit in zip(sys.argv[1::2], sys.argv[2::2]):
    data = open(path, "rb").read()
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the resident size now
        f.write("5")
    before = status_kb("VmRSS:")
    try:
        read_image(data, DecodeOptions(max_pixels=int(limit)))
        outcome = "decoded"
    except Exception as exc:
        outcome = type(exc).__name__
    print(outcome, (status_kb("VmHWM:") - before) // 1024, flush=True)
"""


def test_the_bomb_is_refused_undecoded_with_bounded_peak_memory(corpus, tmp_path):
    """Peak resident memory growth (Linux's VmHWM, reset before each case, minus the resident size
    then) measured in one fresh process with PIL's global guard off:
    the bomb, then a real 8000 × 8000 image over a 10,000,000-pixel limit (refused), then the same
    image under the default limit — the control that shows the probe sees a decode when there is one."""
    big = tmp_path / "big.png"
    Image.new("L", (8000, 8000), 0).save(big)
    runs = [
        (corpus / "bomb.png", DEFAULT_MAX_IMAGE_PIXELS),
        (big, 10_000_000),
        (big, DEFAULT_MAX_IMAGE_PIXELS),
    ]
    argv = [str(a) for run in runs for a in run]
    lines = subprocess.run(
        [sys.executable, "-c", BOMB_PROBE, *argv], capture_output=True, text=True, timeout=300, check=True
    ).stdout.splitlines()
    (bomb, bomb_mb), (refused, refused_mb), (decoded, decoded_mb) = [
        (o, int(mb)) for o, mb in map(str.split, lines)
    ]
    print(
        f"bomb {BOMB_SIDE}×{BOMB_SIDE} ({(corpus / 'bomb.png').stat().st_size} bytes): {bomb}, peak memory "
        f"growth {bomb_mb} MB; 8000×8000 over a 10,000,000-pixel limit: {refused}, {refused_mb} MB; "
        f"8000×8000 under the default limit: {decoded}, {decoded_mb} MB"
    )
    assert bomb == refused == "ImageTooLargeError" and bomb_mb < 100 and refused_mb < 100
    assert decoded == "decoded" and decoded_mb > 100


def test_stage_one_leaves_unreadable_k_shot_images_out_and_fails_on_an_unreadable_test_image(corpus):
    from promptkd_ray.data.kshot import readable_items
    from promptkd_ray.data.layout import Item
    from promptkd_ray.errors import BadImageError
    from promptkd_ray.teacher import load_test_view

    names = sorted(readable_corpus()) + sorted(unreadable_corpus())
    items = [Item(str(corpus / n), i % 3) for i, n in enumerate(names)]
    kept, bad = readable_items(items, DecodeOptions())
    assert kept == [it for it in items if Path(it.path).name in readable_corpus()]
    assert sorted(Path(p).name for p, _ in bad) == sorted(unreadable_corpus())
    with pytest.raises(BadImageError, match=r"test image .*truncated.png is not a readable image \("):
        load_test_view(str(corpus / "truncated.png"), 16, DecodeOptions())


def _split_json_dataset(root: Path, corpus: Path, names) -> Path:
    """A split-JSON dataset whose test split is `names` of the corpus (two classes)."""
    images = root / "odd" / "images"
    images.mkdir(parents=True)
    for name in names:
        (images / name).write_bytes((corpus / name).read_bytes())
    split = {"train": [], "val": [], "test": [[n, i % 2, ("cat", "dog")[i % 2]] for i, n in enumerate(names)]}
    (root / "odd" / "split.json").write_text(json.dumps(split))
    return root / "odd" / "split.json"


def test_eval_refuses_an_unreadable_test_image_or_names_each_beside_the_score(corpus, tmp_path, capsys):
    from promptkd_ray.cli import main

    bad = ["bomb.png", "html_page.jpg", "truncated.jpg"]
    split = _split_json_dataset(tmp_path / "data", corpus, sorted(readable_corpus()) + bad)
    args = [
        "eval",
        "--protocol",
        "cross",
        "--split-json",
        str(split),
        "--zeroshot",
        "tiny-vit-teacher",
        "--no-ray",
        "--batch-size",
        "8",
    ]
    assert main(args + ["--out", str(tmp_path / "failed")]) == 2
    err = capsys.readouterr().err.strip()
    print(err)
    assert err.count("\n") == 0 and err.startswith(
        "error: 3 of 18 test images of odd are unreadable (first: "
    )
    assert (
        "bomb.png: ImageTooLargeError: Image size (1600000000 pixels)" in err and "--skip-unreadable" in err
    )
    assert not (tmp_path / "failed" / "report.md").exists()

    out = tmp_path / "reported"
    assert main(args + ["--out", str(out), "--skip-unreadable"]) == 0
    assert [r["unreadable"] for r in csv.DictReader(open(out / "results.csv"))] == ["3"]
    listed = list(csv.DictReader(open(out / "unreadable.csv")))
    assert sorted(Path(r["path"]).name for r in listed) == bad and all(r["dataset"] == "odd" for r in listed)
    report = (out / "report.md").read_text()
    assert "Unreadable test images left out (3; all in unreadable.csv)" in report
    assert all(name in report for name in bad)

    tight = tmp_path / "tight"  # the pixel limit is eval's too: the 600 × 2 sliver is over 1,000 pixels
    assert main(args + ["--out", str(tight), "--skip-unreadable", "--max-image-pixels", "1000"]) == 0
    assert sorted(Path(r["path"]).name for r in csv.DictReader(open(tight / "unreadable.csv"))) == sorted(
        bad + ["sliver_600x2.png"]
    )
    capsys.readouterr()
    only_bad = _split_json_dataset(tmp_path / "bad_only", corpus, bad)
    assert (
        main([*args[:4], str(only_bad), *args[5:], "--out", str(tmp_path / "none"), "--skip-unreadable"]) == 2
    )
    assert capsys.readouterr().err.startswith("error: All 3 test images of odd are unreadable (first: ")


@pytest.mark.slow
def test_stage_two_trains_on_every_readable_oddity_and_counts_the_unreadable_exactly(
    corpus, tmp_path, ray_cluster
):
    """A one-epoch distillation over a folder of the corpus (plus plain images to fill batches),
    with the job's pixel limit set below one legal image: the run's bad-image count is exactly the
    unreadable files + that image, and every other image is trained on."""
    from stage2_fakes import png_bytes, tiny_job

    from promptkd_ray.config import distill_job_from_dict
    from promptkd_ray.distill import run_distillation

    files = {
        name: (corpus / name).read_bytes() for name in list(readable_corpus()) + list(unreadable_corpus())
    }
    rng = np.random.default_rng(0)
    files.update(
        {f"plain_{i}.png": png_bytes(rng) for i in range(9)}
    )  # 15 oddities + 9 plain = 24 = 6 batches of 4
    files["over_the_jobs_limit.png"] = _save(
        _noise(400, 300), "PNG"
    )  # legal, but over this job's pixel limit
    paths = {}
    for i, (name, data) in enumerate(
        sorted(files.items())
    ):  # two classes, so that the KD loss is not trivially 0
        folder = tmp_path / "data" / ("cats", "dogs")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        paths[name] = str(folder / name)
    expected_bad = sorted(paths[n] for n in list(unreadable_corpus()) + ["over_the_jobs_limit.png"])

    raw = tiny_job(
        tmp_path / "data",
        tmp_path / "runs",
        "corpus",
        data={
            "source": "imagefolder",
            "root": str(tmp_path / "data"),
            "dataset": "",
            "image_folder": "",
            "split_file": "",
            "heldout_images": 0,
            "decode_batch_size": 8,
            "max_image_pixels": 100_000,
        },
        train={"epochs": 1, "warmup_epochs": 0, "batch_size": 4, "num_workers": 1},
    )
    result = run_distillation(distill_job_from_dict(raw))
    print(result.summary["bad_images"], result.history[-1]["images"])
    assert result.summary["bad_images"] == len(expected_bad) == 8
    assert sorted(result.summary["bad_image_examples"]) == expected_bad
    assert result.history[-1]["images"] == 24  # every readable image, oddities included, was trained on
    assert result.history[-1]["kd_loss"] > 0


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpegs_decode_through_torchvision_to_pils_very_pixels(mode):
    """Colour and grey JPEGs take torchvision's libjpeg-turbo path: pixel for pixel what the authors'
    `Image.open(path).convert("RGB")` gives; a truncated one is unreadable there too."""
    from promptkd_ray.data import decode

    pixels = np.random.default_rng(3).integers(0, 255, (375, 500, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(2)).convert(mode)
    data = _save(image, "JPEG", quality=90)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(np.asarray(decode.read_image(data)), expected)
    assert np.array_equal(np.asarray(decode.decode_jpeg(data)), expected)  # the path read_image took
    with pytest.raises(OSError, match="not a readable JPEG"):
        decode.read_image(data[: len(data) // 2])
