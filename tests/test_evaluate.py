"""`eval` and `predict` on a fake benchmark: report files, protocol numbers, refusals, agreement,
URIs, unreadable test images, and one-line errors."""

import csv
import logging
import shutil
from pathlib import Path

import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import torch
from fakes import make_fake_dataset
from PIL import Image
from torchvision import transforms as T

from promptkd_ray.cli import main
from promptkd_ray.core.artifacts import StudentInfo, load_student, save_student
from promptkd_ray.core.classvectors import compute_class_vectors, save_class_vectors
from promptkd_ray.core.metrics import base_novel_accuracy
from promptkd_ray.core.models import build_student, build_teacher
from promptkd_ray.data.benchmarks import load_dataset
from promptkd_ray.data.transforms import CLIP_MEAN, CLIP_STD


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_fake_dataset("OxfordPets", root, classes=6, per_class=3)
    dataset = load_dataset("OxfordPets", root)
    torch.manual_seed(0)
    teacher = build_teacher("tiny-vit-teacher")
    cv = compute_class_vectors(teacher, list(dataset.classnames))
    cv_path = save_class_vectors(cv, str(root / "artifacts" / "cv"))
    from safetensors.torch import save_file

    from promptkd_ray.core.models import load_clip

    weights = root / "artifacts" / "student_clip.safetensors"
    save_file(load_clip("tiny-vit-student").state_dict(), str(weights))
    spec = f"tiny-vit-student:{weights}"
    student = build_student(spec, teacher_dim=cv.dim, depth=2).eval()
    with torch.no_grad():  # trained-looking tensors, so that a round trip that drops them shows
        for p in student.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.1)
    student_path = save_student(
        student, StudentInfo(spec, cv.dim, 4, 2, "mlp2", cv.sha256), str(root / "artifacts" / "student")
    )
    return {
        "root": root,
        "dataset": dataset,
        "cv": cv,
        "cv_path": cv_path,
        "student_path": student_path,
        "student": student,
    }


def _direct_features(student_path, items):
    """The student's features with the authors' test transform written with torchvision alone."""
    student, _ = load_student(student_path)
    transform = T.Compose(
        [
            T.Resize(32, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(32),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )
    images = torch.stack([transform(Image.open(it.path).convert("RGB")) for it in items])
    with torch.no_grad():
        return student.encode_image(images)


def test_student_artifact_round_trips_every_tensor_and_the_features(world):
    loaded, info = load_student(world["student_path"])
    assert info.class_vectors_sha256 == world["cv"].sha256
    original = world["student"].trainable_state_dict()
    restored = loaded.trainable_state_dict()
    assert set(restored) == set(original) and len(original) > 4
    assert all(torch.equal(restored[k], original[k]) for k in original)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), world["student"].eval().encode_image(images))


def test_eval_base2novel_writes_report_with_protocol_numbers(world, tmp_path):
    out = tmp_path / "report"
    rc = main(
        [
            "eval",
            "--protocol",
            "base2novel",
            "--dataset",
            "OxfordPets",
            "--root",
            str(world["root"]),
            "--student",
            str(world["student_path"]),
            "--class-vectors",
            str(world["cv_path"]),
            "--zeroshot",
            "tiny-vit-teacher",
            "--out",
            str(out),
            "--no-ray",
        ]
    )
    assert rc == 0
    for name in ("report.md", "results.csv", "summary.csv", "report.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    student_row = next(r for r in rows if r["model"] == "student")
    test = world["dataset"].test
    feats = _direct_features(world["student_path"], test)
    expected = base_novel_accuracy(feats, torch.tensor([it.label for it in test]), world["cv"].vectors, 3)
    assert float(student_row["hm"]) == pytest.approx(expected["hm"], abs=0.01)
    md = (out / "report.md").read_text()
    assert "| OxfordPets | student | 1 |" in md and "96.30" in md  # ours beside the published numbers
    assert "unreadable" not in rows[0]


def test_eval_and_predict_read_images_and_artifacts_from_file_uris(world, tmp_path):
    """Data root, student and class vectors given as file:// URIs go through the storage layer
    (pyarrow), and score exactly as the local paths do."""
    local, remote = tmp_path / "local", tmp_path / "uri"
    common = [
        "--student",
        f"file://{world['student_path']}",
        "--class-vectors",
        f"file://{world['cv_path']}",
        "--no-ray",
    ]
    assert (
        main(
            [
                "eval",
                "--protocol",
                "cross",
                "--dataset",
                "OxfordPets",
                "--root",
                str(world["root"]),
                "--student",
                str(world["student_path"]),
                "--class-vectors",
                str(world["cv_path"]),
                "--no-ray",
                "--out",
                str(local),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "eval",
                "--protocol",
                "cross",
                "--dataset",
                "OxfordPets",
                "--root",
                f"file://{world['root']}",
                *common,
                "--out",
                str(remote),
            ]
        )
        == 0
    )
    assert list(csv.DictReader(open(remote / "results.csv"))) == list(
        csv.DictReader(open(local / "results.csv"))
    )
    accuracy = float(next(csv.DictReader(open(remote / "results.csv")))["accuracy"])
    assert accuracy > 0  # the images were read: an unread test set cannot score
    out = tmp_path / "pred.parquet"
    images = f"file://{world['root']}/oxford_pets/images"
    assert main(["predict", *common, "--images", images, "--out", str(out)]) == 0
    paths = pq.read_table(out).column("path").to_pylist()
    assert len(paths) == len(list((world["root"] / "oxford_pets" / "images").rglob("*.jpg")))
    assert all(p.startswith("file://") for p in paths)


def test_an_unreadable_test_image_fails_eval_in_one_sentence_or_is_reported_when_skipped(
    world, tmp_path, capsys
):
    root = tmp_path / "data"
    shutil.copytree(world["root"] / "oxford_pets", root / "oxford_pets")
    victim = next(it.path for it in world["dataset"].test).replace(str(world["root"]), str(root))
    with open(victim, "wb") as f:
        f.write(b"<html>not an image</html>")
    args = [
        "eval",
        "--protocol",
        "cross",
        "--dataset",
        "OxfordPets",
        "--root",
        str(root),
        "--student",
        str(world["student_path"]),
        "--class-vectors",
        str(world["cv_path"]),
        "--no-ray",
    ]
    assert main(args + ["--out", str(tmp_path / "failed")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.count("\n") == 0
        and err.startswith("error: 1 of ")
        and victim in err
        and "--skip-unreadable" in err
    )
    assert not (tmp_path / "failed" / "report.md").exists()
    assert main(args + ["--out", str(tmp_path / "skipped"), "--skip-unreadable"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "skipped" / "results.csv")))
    assert rows[0]["unreadable"] == "1"
    assert "unreadable test images" in (tmp_path / "skipped" / "report.md").read_text()


def test_a_missing_student_is_one_line_with_exit_status_2(world, tmp_path, capsys):
    rc = main(
        [
            "predict",
            "--student",
            str(tmp_path / "missing"),
            "--class-vectors",
            str(world["cv_path"]),
            "--images",
            str(world["root"]),
            "--out",
            str(tmp_path / "p.csv"),
            "--no-ray",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0
    assert (
        err
        == f"error: Student artifact {tmp_path / 'missing'}.safetensors (with its .json sidecar) does not exist."
    )


def test_eval_refuses_class_vectors_of_other_classes(world, tmp_path, capsys):
    other = compute_class_vectors(build_teacher("tiny-vit-teacher"), ["a", "b", "c", "d", "e", "f"])
    path = save_class_vectors(other, str(tmp_path / "other"))
    rc = main(
        [
            "eval",
            "--dataset",
            "OxfordPets",
            "--root",
            str(world["root"]),
            "--student",
            str(world["student_path"]),
            "--class-vectors",
            str(path),
            "--out",
            str(tmp_path / "r"),
            "--no-ray",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0
    assert err.startswith("error: No class vectors given hold the 6 classes of OxfordPets, and the student ")
    assert "records no teacher to compute them with" in err
    assert not (tmp_path / "r" / "report.md").exists()


def test_cross_dataset_eval_of_one_student_over_several_datasets(world, tmp_path):
    """A student distilled on OxfordPets, scored on OxfordPets (its own class vectors) and on DTD and
    Caltech101, whose class vectors come from the teacher its artifact records, with its templates."""
    from promptkd_ray.core.models import load_clip

    root = world["root"]
    for name in ("DTD", "Caltech101"):
        make_fake_dataset(name, root, classes=4, per_class=2)
    teacher_weights = root / "artifacts" / "teacher_clip.safetensors"
    from safetensors.torch import save_file

    torch.manual_seed(11)
    save_file(load_clip("tiny-vit-teacher").state_dict(), str(teacher_weights))
    teacher_spec = f"tiny-vit-teacher:{teacher_weights}"
    student, info = load_student(world["student_path"])
    recorded = save_student(
        student,
        StudentInfo(
            info.spec,
            info.teacher_dim,
            info.n_ctx,
            info.depth,
            info.projector,
            extra={
                "teacher_ref": {"kind": "zeroshot", "source": teacher_spec},
                "class_vectors_templates": ["a photo of a {}."],
            },
        ),
        str(tmp_path / "student"),
    )
    own = compute_class_vectors(build_teacher(teacher_spec), list(world["dataset"].classnames))
    own_path = save_class_vectors(own, str(tmp_path / "cv_pets"))
    out = tmp_path / "cross"
    assert (
        main(
            [
                "eval",
                "--protocol",
                "cross",
                "--dataset",
                "OxfordPets",
                "DTD",
                "Caltech101",
                "--root",
                str(root),
                "--student",
                recorded,
                "--class-vectors",
                own_path,
                "--no-ray",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = {r["dataset"]: float(r["accuracy"]) for r in csv.DictReader(open(out / "results.csv"))}
    assert set(rows) == {"OxfordPets", "DTD", "Caltech101"}
    dtd = load_dataset("DTD", root)
    cv = compute_class_vectors(build_teacher(teacher_spec), list(dtd.classnames))
    feats = _direct_features(recorded, dtd.test)
    labels = torch.tensor([it.label for it in dtd.test])
    assert rows["DTD"] == pytest.approx(
        100.0 * float(((feats @ cv.vectors.t()).argmax(-1) == labels).float().mean()), abs=0.01
    )


def test_domain_generalisation_scores_against_the_class_vectors_restricted_by_name(world):
    """DG: a variant with fewer classes, in another order, is scored against exactly its classes'
    vectors, picked by name from the source dataset's."""
    import dataclasses

    from promptkd_ray.core.metrics import accuracy
    from promptkd_ray.errors import ClassVectorsError
    from promptkd_ray.evaluate import restrict_by_name

    cv = world["cv"]
    names = [cv.classnames[4], cv.classnames[1], cv.classnames[2]]
    picked = restrict_by_name(cv, names)
    assert picked.classnames == tuple(names)
    assert torch.equal(picked.vectors, cv.vectors[[4, 1, 2]])
    features = cv.vectors[[1, 4, 2, 4]] + 0.01  # images that look like their class's text
    labels = torch.tensor([1, 0, 2, 0])  # labels in the variant's own order
    assert accuracy(features @ picked.vectors.t(), labels) == 100.0
    with pytest.raises(ClassVectorsError, match="lack 1 of the dataset's classes"):
        restrict_by_name(dataclasses.replace(cv), [*names, "a class nobody has"])


def test_predict_top1_agrees_with_eval_accuracy(world, tmp_path):
    images = world["root"] / "oxford_pets" / "images"
    out = tmp_path / "pred.parquet"
    assert (
        main(
            [
                "predict",
                "--student",
                str(world["student_path"]),
                "--class-vectors",
                str(world["cv_path"]),
                "--images",
                str(images),
                "--top-k",
                "3",
                "--out",
                str(out),
                "--no-ray",
            ]
        )
        == 0
    )
    table = pq.read_table(out).to_pydict()
    items = {it.path: it for it in world["dataset"].test}
    rows = [(p, label) for p, label in zip(table["path"], table["top1_label"]) if p in items]
    assert len(rows) == len(items)
    feats = _direct_features(world["student_path"], [items[p] for p, _ in rows])
    direct = (feats @ world["cv"].vectors.t()).argmax(-1).tolist()
    assert [label for _, label in rows] == direct
    assert all(table["top1_prob"][i] >= table["top2_prob"][i] for i in range(len(table["path"])))


def test_predict_applies_the_decoders_pixel_limit_and_refuses_one_out_of_range(world, tmp_path, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "small.png")
    Image.new("RGB", (400, 300), (10, 200, 10)).save(folder / "large.png")  # 120,000 pixels
    common = [
        "predict",
        "--student",
        str(world["student_path"]),
        "--class-vectors",
        str(world["cv_path"]),
        "--images",
        str(folder),
        "--no-ray",
    ]
    with caplog.at_level(logging.INFO):
        assert main(common + ["--out", str(tmp_path / "p.csv"), "--max-image-pixels", "100000"]) == 0
    assert [Path(p).name for p in pcsv.read_csv(tmp_path / "p.csv").column("path").to_pylist()] == [
        "small.png"
    ]
    assert "1 unreadable images skipped, first: " in caplog.text and "large.png" in caplog.text
    assert main(common + ["--out", str(tmp_path / "all.csv")]) == 0  # the default limit decodes both
    assert len(pcsv.read_csv(tmp_path / "all.csv").column("path")) == 2
    assert main(common + ["--out", str(tmp_path / "x.csv"), "--max-image-pixels", "0"]) == 2
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.slow
def test_eval_through_ray_data_equals_in_process(world, tmp_path, ray_cluster):
    common = [
        "eval",
        "--protocol",
        "cross",
        "--dataset",
        "OxfordPets",
        "--root",
        str(world["root"]),
        "--student",
        str(world["student_path"]),
        "--class-vectors",
        str(world["cv_path"]),
    ]
    assert main(common + ["--out", str(tmp_path / "ray")]) == 0
    assert main(common + ["--out", str(tmp_path / "local"), "--no-ray"]) == 0
    ray_rows = list(csv.DictReader(open(tmp_path / "ray" / "results.csv")))
    local_rows = list(csv.DictReader(open(tmp_path / "local" / "results.csv")))
    assert ray_rows == local_rows


@pytest.mark.slow
def test_ray_batch_inference_counts_unreadable_test_images(world, tmp_path, ray_cluster):
    from promptkd_ray.core.artifacts import ModelRef
    from promptkd_ray.orchestration.inference import Encoding, encode_items

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff truncated")
    items = [it.path for it in world["dataset"].test[:3]] + [str(bad)]
    encoded = encode_items(
        ModelRef("student", world["student_path"]), items, [0, 1, 2, 3], Encoding(use_ray=True)
    )
    assert encoded.paths == items[:3] and list(encoded.unreadable) == [str(bad)]


def test_eval_warns_when_class_vectors_come_from_another_teacher(world, tmp_path, caplog):
    import dataclasses

    from promptkd_ray.cli.eval import warn_if_other_teacher

    cv = world["cv"]
    student, _ = load_student(world["student_path"])
    path = save_student(
        student.eval(),
        StudentInfo(
            f"tiny-vit-student:{world['root']}/artifacts/student_clip.safetensors",
            cv.dim,
            4,
            2,
            "mlp2",
            cv.sha256,
            extra={"teacher": cv.teacher},
        ),
        str(tmp_path / "student"),
    )
    with caplog.at_level("WARNING"):
        warn_if_other_teacher(str(path), cv)
    assert "distilled from teacher" not in caplog.text
    with caplog.at_level("WARNING"):
        warn_if_other_teacher(str(path), dataclasses.replace(cv, teacher="another-teacher:w.pt"))
    assert (
        f"distilled from teacher {cv.teacher} but the class vectors come from another-teacher:w.pt"
        in caplog.text
    )
