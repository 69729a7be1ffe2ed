"""Class vectors: computed by a teacher, saved, loaded with verification."""

import json
from pathlib import Path

import pytest
import torch

from promptkd_ray.core.classvectors import (
    ClassVectorsError,
    artifact_paths,
    compute_class_vectors,
    load_class_vectors,
    save_class_vectors,
)
from promptkd_ray.core.models import build_teacher

NAMES = ["red circle", "blue_square", "green triangle", "yellow star", "grey ring"]


@pytest.fixture(scope="module")
def teacher():
    return build_teacher("tiny-vit-teacher")


@pytest.fixture(scope="module")
def class_vectors(teacher):
    return compute_class_vectors(teacher, NAMES, templates="imagenet60", batch_size=2)


def test_computed_vectors_are_normalised_batched_and_in_order(class_vectors, teacher):
    assert class_vectors.vectors.shape == (5, 48)
    assert torch.allclose(class_vectors.vectors.norm(dim=-1), torch.ones(5), atol=1e-6)
    one_batch = compute_class_vectors(teacher, NAMES, templates="imagenet60", batch_size=100)
    assert torch.allclose(one_batch.vectors, class_vectors.vectors, atol=1e-6)
    assert class_vectors.classnames == tuple(NAMES)
    assert len(class_vectors.templates) == 60


def test_round_trip_is_exact(class_vectors, tmp_path):
    path = save_class_vectors(class_vectors, tmp_path / "cv")
    loaded = load_class_vectors(path, expected_classnames=NAMES, expected_dim=48)
    assert torch.equal(loaded.vectors, class_vectors.vectors)
    assert loaded.classnames == class_vectors.classnames
    assert loaded.logit_scale == class_vectors.logit_scale
    assert loaded.templates == class_vectors.templates
    assert loaded.sha256 == class_vectors.sha256
    assert json.loads(Path(artifact_paths(path)[1]).read_text())["teacher"] == "tiny-vit-teacher"


def test_tampered_tensor_file_is_refused(class_vectors, tmp_path):
    from safetensors.torch import save_file

    path = save_class_vectors(class_vectors, tmp_path / "cv")
    tampered = class_vectors.vectors.clone()
    tampered[0, 0] += 1e-3
    save_file({"class_vectors": tampered}, str(path))
    with pytest.raises(ClassVectorsError, match="do not match the sha256"):
        load_class_vectors(path)


def test_tampered_class_names_are_refused(class_vectors, tmp_path):
    path = save_class_vectors(class_vectors, tmp_path / "cv")
    sidecar = Path(artifact_paths(path)[1])
    data = json.loads(sidecar.read_text())
    data["classnames"][0], data["classnames"][1] = data["classnames"][1], data["classnames"][0]
    sidecar.write_text(json.dumps(data))
    with pytest.raises(ClassVectorsError, match="do not match the sha256"):
        load_class_vectors(path)


def test_class_count_and_name_and_dim_mismatches_are_refused(class_vectors, tmp_path):
    path = save_class_vectors(class_vectors, tmp_path / "cv")
    with pytest.raises(ClassVectorsError, match="hold 5 classes, but the dataset has 6"):
        load_class_vectors(path, expected_num_classes=6)
    with pytest.raises(ClassVectorsError, match="first at label 1"):
        load_class_vectors(path, expected_classnames=["red circle", "pink square", *NAMES[2:]])
    with pytest.raises(ClassVectorsError, match="have dim 48, but the model expects 32"):
        load_class_vectors(path, expected_dim=32)


def test_missing_file_is_one_sentence(tmp_path):
    with pytest.raises(ClassVectorsError, match="does not exist"):
        load_class_vectors(tmp_path / "nothing")
