"""ComKD-CLIP's EduAttention: our reading's shapes, the α = 0 identity, training, the artifact, and
scoring through it (in-process and through Ray batch inference)."""

import csv

import pytest
import torch
from fakes import make_fake_dataset

from promptkd_ray.core.artifacts import ModelRef, StudentInfo, load_student, read_student_info, save_student
from promptkd_ray.core.classvectors import compute_class_vectors, save_class_vectors
from promptkd_ray.core.loss_config import LOSS_PRESETS
from promptkd_ray.core.models import EduAttention, build_student, build_teacher
from promptkd_ray.core.step import distill_step
from promptkd_ray.errors import ArtifactError

D = 48  # the tiny teacher's feature width


def test_each_image_attends_over_the_classes_for_any_batch_and_class_count():
    edu = EduAttention(D, width=16)
    for batch, classes in ((3, 7), (7, 3), (1, 1)):
        features = torch.nn.functional.normalize(torch.randn(batch, D), dim=-1)
        class_vectors = torch.nn.functional.normalize(torch.randn(classes, D), dim=-1)
        assert edu(features, class_vectors).shape == (batch, D)
    with pytest.raises(ValueError, match="width C ≥ 1"):
        EduAttention(D, width=0)


def test_alpha_zero_makes_a_comkd_student_start_bit_identical_to_a_promptkd_student():
    torch.manual_seed(4)
    plain = build_student("tiny-vit-student", teacher_dim=D, n_ctx=2, depth=2)
    torch.manual_seed(4)
    comkd = build_student("tiny-vit-student", teacher_dim=D, n_ctx=2, depth=2, edu_attention_width=D)
    assert comkd.edu_attention.alpha.item() == 0.0
    images, class_vectors = (
        torch.randn(5, 3, 32, 32),
        torch.nn.functional.normalize(torch.randn(9, D), dim=-1),
    )
    with torch.no_grad():
        assert torch.equal(comkd.eval()(images, class_vectors), plain.eval()(images, class_vectors))
    with torch.no_grad():
        comkd.edu_attention.alpha.fill_(0.5)
        assert not torch.equal(comkd(images, class_vectors), plain(images, class_vectors))


def test_training_reaches_the_attention_layers_and_alpha():
    torch.manual_seed(0)
    student = build_student("tiny-vit-student", teacher_dim=D, n_ctx=2, depth=2, edu_attention_width=16)
    edu_params = list(student.edu_attention.parameters())
    assert all(any(p is q for q in student.trainable_parameters()) for p in edu_params)
    before = {n: p.detach().clone() for n, p in student.edu_attention.named_parameters()}
    optimizer = torch.optim.SGD(student.trainable_parameters(), lr=0.5)
    images, w = torch.randn(8, 3, 32, 32), torch.nn.functional.normalize(torch.randn(6, D), dim=-1)
    teacher_features = torch.nn.functional.normalize(torch.randn(8, D), dim=-1)
    for _ in range(2):  # the first step moves α off 0; the second reaches the FC layers through α
        distill_step(student, images, teacher_features, w, optimizer, LOSS_PRESETS["comkd"], 50.0)
    after = dict(student.edu_attention.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert {"alpha", "query.weight", "key_value.weight", "out.weight"} <= moved


@pytest.fixture(scope="module")
def comkd_world(tmp_path_factory):
    """A fake dataset, zero-shot class vectors of the tiny teacher, and a ComKD student artifact
    whose EduAttention is far from the identity (α = 2)."""
    root = tmp_path_factory.mktemp("edu")
    make_fake_dataset("OxfordPets", root / "data", classes=6, per_class=3)
    from promptkd_ray.data.benchmarks import load_dataset

    dataset = load_dataset("OxfordPets", root / "data")
    torch.manual_seed(0)
    cv = compute_class_vectors(build_teacher("tiny-vit-teacher"), list(dataset.classnames))
    cv_path = save_class_vectors(cv, str(root / "cv"))
    from safetensors.torch import save_file

    from promptkd_ray.core.models import load_clip

    save_file(load_clip("tiny-vit-student").state_dict(), str(root / "backbone.safetensors"))
    spec = f"tiny-vit-student:{root / 'backbone.safetensors'}"  # the same frozen backbone in every process
    student = build_student(spec, teacher_dim=D, depth=2, edu_attention_width=24).eval()
    with torch.no_grad():
        student.edu_attention.alpha.fill_(2.0)
    path = save_student(
        student, StudentInfo(spec, D, 4, 2, "mlp2", cv.sha256, edu_attention_width=24), str(root / "student")
    )
    return {"root": root, "dataset": dataset, "cv": cv, "cv_path": cv_path, "path": path, "student": student}


def test_the_artifact_says_it_holds_an_edu_attention_and_round_trips(comkd_world):
    import json
    from pathlib import Path

    sidecar = json.loads(Path(comkd_world["path"].replace(".safetensors", ".json")).read_text())
    assert sidecar["edu_attention_width"] == 24
    loaded, info = load_student(comkd_world["path"])
    assert info.edu_attention_width == 24 and float(loaded.edu_attention.alpha) == 2.0
    original = comkd_world["student"].trainable_state_dict()
    assert any(k.startswith("edu_attention.") for k in original)
    assert all(torch.equal(loaded.trainable_state_dict()[k], v) for k, v in original.items())


def test_a_student_saved_without_one_still_loads_and_a_comkd_state_is_refused_by_a_plain_student(
    comkd_world, tmp_path
):
    import json
    from pathlib import Path

    plain = build_student("tiny-vit-student", teacher_dim=D, depth=2).eval()
    path = save_student(plain, StudentInfo("tiny-vit-student", D, 4, 2, "mlp2"), str(tmp_path / "plain"))
    sidecar = Path(path.replace(".safetensors", ".json"))
    old = json.loads(sidecar.read_text())
    del old["edu_attention_width"]  # an artifact written before EduAttention existed
    sidecar.write_text(json.dumps(old))
    assert read_student_info(path).edu_attention_width == 0 and load_student(path)[0].edu_attention is None
    with pytest.raises(
        ValueError,
        match=r"^The student state has an EduAttention of width 24 \(ComKD-CLIP\), "
        r"but this student has none\.$",
    ):
        plain.load_trainable_state_dict(comkd_world["student"].trainable_state_dict())
    tampered = json.loads(Path(comkd_world["path"].replace(".safetensors", ".json")).read_text())
    tampered["edu_attention_width"] = 0  # a ComKD student's tensors under a plain student's sidecar
    Path(tmp_path / "lying.json").write_text(json.dumps(tampered))
    Path(tmp_path / "lying.safetensors").write_bytes(Path(comkd_world["path"]).read_bytes())
    with pytest.raises(ArtifactError, match="has an EduAttention of width 24 .* but this student has none"):
        load_student(str(tmp_path / "lying"))


def _expected_accuracy(world) -> float:
    """Cross-dataset accuracy of the ComKD student, by hand: u_s → EduAttention(u_s, W) → argmax."""
    from PIL import Image
    from torchvision import transforms as T

    from promptkd_ray.data.transforms import CLIP_MEAN, CLIP_STD

    transform = T.Compose(
        [
            T.Resize(32, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(32),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )
    test = world["dataset"].test
    images = torch.stack([transform(Image.open(it.path).convert("RGB")) for it in test])
    student, w = world["student"], world["cv"].vectors
    with torch.no_grad():
        predicted = student(images, w).argmax(-1)
        plain = (student.encode_image(images) @ w.t()).argmax(-1)
    labels = torch.tensor([it.label for it in test])
    assert not torch.equal(predicted, plain)  # EduAttention changes the predictions here
    return 100.0 * float((predicted == labels).float().mean())


def test_eval_scores_a_comkd_student_through_its_edu_attention(comkd_world, tmp_path):
    from promptkd_ray.cli import main

    out = tmp_path / "r"
    assert (
        main(
            [
                "eval",
                "--protocol",
                "cross",
                "--dataset",
                "OxfordPets",
                "--root",
                str(comkd_world["root"] / "data"),
                "--student",
                comkd_world["path"],
                "--class-vectors",
                comkd_world["cv_path"],
                "--no-ray",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    row = next(csv.DictReader(open(out / "results.csv")))
    assert float(row["accuracy"]) == pytest.approx(_expected_accuracy(comkd_world), abs=0.01)


def test_predict_ranks_classes_through_the_edu_attention(comkd_world, tmp_path):
    import pyarrow.parquet as pq

    from promptkd_ray.cli import main

    out = tmp_path / "p.parquet"
    assert (
        main(
            [
                "predict",
                "--student",
                comkd_world["path"],
                "--class-vectors",
                comkd_world["cv_path"],
                "--images",
                str(comkd_world["root"] / "data"),
                "--out",
                str(out),
                "--no-ray",
            ]
        )
        == 0
    )
    table = pq.read_table(out).to_pydict()
    encoded_model = ModelRef("student", comkd_world["path"])
    from promptkd_ray.orchestration.inference import Encoding, encode_items

    encoded = encode_items(encoded_model, table["path"], [0] * len(table["path"]), Encoding(use_ray=False))
    expected = encoded_model.classifier()(encoded.features, comkd_world["cv"].vectors).argmax(-1).tolist()
    assert table["top1_label"] == expected


@pytest.mark.slow
def test_ray_batch_inference_scores_and_predicts_with_the_comkd_student_as_in_process(
    comkd_world, tmp_path, ray_cluster
):
    import pyarrow.parquet as pq

    from promptkd_ray.cli import main

    args = [
        "eval",
        "--protocol",
        "cross",
        "--dataset",
        "OxfordPets",
        "--root",
        str(comkd_world["root"] / "data"),
        "--student",
        comkd_world["path"],
        "--class-vectors",
        comkd_world["cv_path"],
    ]
    assert main(args + ["--out", str(tmp_path / "ray")]) == 0
    row = next(csv.DictReader(open(tmp_path / "ray" / "results.csv")))
    assert float(row["accuracy"]) == pytest.approx(_expected_accuracy(comkd_world), abs=0.01)
    predictions = {}
    for mode, extra in (("ray", []), ("local", ["--no-ray"])):
        out = tmp_path / f"{mode}.parquet"
        assert (
            main(
                [
                    "predict",
                    "--student",
                    comkd_world["path"],
                    "--class-vectors",
                    comkd_world["cv_path"],
                    "--images",
                    str(comkd_world["root"] / "data"),
                    "--out",
                    str(out),
                    *extra,
                ]
            )
            == 0
        )
        table = pq.read_table(out).to_pydict()
        predictions[mode] = dict(zip(table["path"], table["top1_label"]))
    assert predictions["ray"] == predictions["local"] and len(predictions["ray"]) > 20
