"""`eval` and `predict` on a fake benchmark: report files, protocol numbers, refusals, agreement."""

import csv

import pyarrow.parquet as pq
import pytest
import torch

from promptkd_ray.artifacts import StudentInfo, load_student, save_student
from promptkd_ray.classvectors import compute_class_vectors, save_class_vectors
from promptkd_ray.cli import main
from promptkd_ray.data.benchmarks import load_dataset
from promptkd_ray.data.transforms import load_rgb
from promptkd_ray.data.transforms import test_transform as eval_transform
from promptkd_ray.metrics import accuracy, base_novel_accuracy
from promptkd_ray.models import build_student, build_teacher

from fakes import make_fake_dataset


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_fake_dataset("OxfordPets", root, classes=6, per_class=3)
    dataset = load_dataset("OxfordPets", root)
    torch.manual_seed(0)
    teacher = build_teacher("tiny-vit-teacher")
    cv = compute_class_vectors(teacher, list(dataset.classnames))
    cv_path = save_class_vectors(cv, root / "artifacts" / "cv")
    from safetensors.torch import save_file

    from promptkd_ray.models import load_clip

    weights = root / "artifacts" / "student_clip.safetensors"
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file(load_clip("tiny-vit-student").state_dict(), str(weights))
    spec = f"tiny-vit-student:{weights}"
    student = build_student(spec, teacher_dim=cv.dim, depth=2).eval()
    student_path = save_student(student, StudentInfo(spec, cv.dim, 4, 2, "mlp2", cv.sha256),
                                root / "artifacts" / "student")
    return {"root": root, "dataset": dataset, "cv": cv, "cv_path": cv_path, "student_path": student_path}


def _direct_features(student_path, items):
    student, _ = load_student(student_path)
    images = torch.stack([eval_transform(load_rgb(it.path), 32) for it in items])
    with torch.no_grad():
        return student.encode_image(images)


def test_student_artifact_round_trips(world):
    a, info = load_student(world["student_path"])
    assert info.class_vectors_sha256 == world["cv"].sha256
    assert set(a.trainable_state_dict()) == set(build_student("tiny-vit-student", 48, depth=2).trainable_state_dict())


def test_eval_base2novel_writes_report_with_protocol_numbers(world, tmp_path):
    out = tmp_path / "report"
    rc = main(["eval", "--protocol", "base2novel", "--dataset", "OxfordPets", "--root", str(world["root"]),
               "--student", str(world["student_path"]), "--class-vectors", str(world["cv_path"]),
               "--zeroshot", "tiny-vit-teacher", "--out", str(out), "--no-ray"])
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


def test_eval_refuses_class_vectors_of_other_classes(world, tmp_path, capsys):
    other = compute_class_vectors(build_teacher("tiny-vit-teacher"), ["a", "b", "c", "d", "e", "f"])
    path = save_class_vectors(other, tmp_path / "other")
    rc = main(["eval", "--dataset", "OxfordPets", "--root", str(world["root"]), "--student",
               str(world["student_path"]), "--class-vectors", str(path), "--out", str(tmp_path / "r"), "--no-ray"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error: class vectors do not match the dataset's classes") and err.count("\n") == 0
    assert not (tmp_path / "r" / "report.md").exists()


def test_predict_top1_agrees_with_eval_accuracy(world, tmp_path):
    images = world["root"] / "oxford_pets" / "images"
    out = tmp_path / "pred.parquet"
    assert main(["predict", "--student", str(world["student_path"]), "--class-vectors", str(world["cv_path"]),
                 "--images", str(images), "--top-k", "3", "--out", str(out), "--no-ray"]) == 0
    table = pq.read_table(out).to_pydict()
    items = {it.path: it for it in world["dataset"].test}
    rows = [(p, l) for p, l in zip(table["path"], table["top1_label"]) if p in items]
    assert len(rows) == len(items)
    feats = _direct_features(world["student_path"], [items[p] for p, _ in rows])
    direct = (feats @ world["cv"].vectors.t()).argmax(-1).tolist()
    assert [l for _, l in rows] == direct
    assert all(table["top1_prob"][i] >= table["top2_prob"][i] for i in range(len(table["path"])))


@pytest.mark.slow
def test_eval_through_ray_data_equals_in_process(world, tmp_path, ray_cluster):
    common = ["eval", "--protocol", "cross", "--dataset", "OxfordPets", "--root", str(world["root"]),
              "--student", str(world["student_path"]), "--class-vectors", str(world["cv_path"])]
    assert main(common + ["--out", str(tmp_path / "ray")]) == 0
    assert main(common + ["--out", str(tmp_path / "local"), "--no-ray"]) == 0
    ray_rows = list(csv.DictReader(open(tmp_path / "ray" / "results.csv")))
    local_rows = list(csv.DictReader(open(tmp_path / "local" / "results.csv")))
    assert ray_rows == local_rows


def test_eval_warns_when_class_vectors_come_from_another_teacher(world, tmp_path, caplog):
    import dataclasses

    from promptkd_ray.commands.eval import warn_if_other_teacher

    cv = world["cv"]
    student, _ = load_student(world["student_path"])
    path = save_student(student.eval(), StudentInfo(f"tiny-vit-student:{world['root']}/artifacts/student_clip.safetensors",
                                                   cv.dim, 4, 2, "mlp2", cv.sha256, extra={"teacher": cv.teacher}),
                        tmp_path / "student")
    with caplog.at_level("WARNING"):
        warn_if_other_teacher(str(path), cv)
    assert "distilled from teacher" not in caplog.text
    with caplog.at_level("WARNING"):
        warn_if_other_teacher(str(path), dataclasses.replace(cv, teacher="another-teacher:w.pt"))
    assert f"distilled from teacher {cv.teacher} but the class vectors come from another-teacher:w.pt" in caplog.text
