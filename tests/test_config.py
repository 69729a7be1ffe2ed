"""Stage II jobs: strict YAML loading, overrides, validation, job kinds, shipped jobs, the lr schedule."""

import logging
from pathlib import Path

import pytest
import yaml

from promptkd_ray.cli import main
from promptkd_ray.config import ConfigError, DistillJob, distill_job_from_dict, load_job, to_dict
from promptkd_ray.core.loss_config import LOSS_PRESETS
from promptkd_ray.core.schedule import lr_at_epoch

REPO = Path(__file__).resolve().parents[1]
STAGE2_JOBS = sorted(
    p for p in (REPO / "jobs").glob("*.yaml") if yaml.safe_load(p.read_text()).get("kind") == "distill"
)


def write_job(tmp_path, content: dict, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(content))
    return path


def minimal(tmp_path, **extra) -> dict:
    data_root = tmp_path / "data"
    data_root.mkdir(exist_ok=True)
    job = {
        "kind": "distill",
        "name": "t",
        "teacher": {"spec": "tiny-vit-teacher"},
        "student": {"spec": "tiny-vit-student"},
        "data": {"source": "imagefolder", "root": str(data_root)},
    }
    job.update(extra)
    return job


def test_minimal_job_gets_the_authors_defaults(tmp_path):
    job = load_job(write_job(tmp_path, minimal(tmp_path)))
    assert isinstance(job, DistillJob)
    t = job.train
    assert (t.optimizer, t.lr, t.momentum, t.weight_decay, t.batch_size, t.epochs) == (
        "sgd",
        0.005,
        0.9,
        5e-4,
        8,
        20,
    )
    assert (t.schedule, t.warmup_epochs, t.warmup_lr) == ("cosine", 1, 1e-5)
    assert job.loss == LOSS_PRESETS["promptkd"] and job.student.depth == 9 and job.student.n_ctx == 4
    assert job.data.on_bad_image == "skip"


@pytest.mark.parametrize(
    "section, key, value, words",
    [
        ("train", "epochz", 3, ["unknown key train.epochz"]),
        ("train", "epochs", "20 epochs", ["train.epochs", "integer", "'20 epochs'"]),
        ("train", "lr", True, ["train.lr", "number"]),
        ("data", "shuffle", "yes", ["data.shuffle", "true or false"]),
        ("data", "on_bad_image", "ignore", ["data.on_bad_image", "skip, fail", "'ignore'"]),
        (
            "teacher_pool",
            "resources",
            {"teacher": "one"},
            ["teacher_pool.resources", "mapping of names to numbers"],
        ),
        ("loss", "preset", "nope", ["loss.preset", "promptkd"]),
        ("loss", "kd", "l2", ["loss.kd", "'l2'"]),
    ],
)
def test_bad_value_is_one_sentence_naming_file_and_key(tmp_path, section, key, value, words):
    content = minimal(tmp_path)
    content.setdefault(section, {})[key] = value
    path = write_job(tmp_path, content, "bad.yaml")
    with pytest.raises(ConfigError) as info:
        load_job(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    for word in words:
        assert word in message


def test_unknown_top_level_section_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key trainer \(known keys here: kind, name, storage_path"):
        load_job(write_job(tmp_path, minimal(tmp_path, trainer={"epochs": 1})))


def test_missing_local_path_is_named_but_uris_are_not_checked(tmp_path):
    content = minimal(tmp_path)
    content["data"]["root"] = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"data.root names .*nowhere, which does not exist"):
        load_job(write_job(tmp_path, content))
    content["data"]["root"] = "s3://bucket/datasets"
    assert load_job(write_job(tmp_path, content)).data.root == "s3://bucket/datasets"
    content["teacher"]["class_vectors"] = str(tmp_path / "cv")
    with pytest.raises(
        ConfigError, match=r"teacher.class_vectors names .*cv, but .*cv.safetensors does not exist"
    ):
        load_job(write_job(tmp_path, content))


def test_missing_weights_file_in_a_model_spec_is_named(tmp_path):
    content = minimal(tmp_path)
    content["student"]["spec"] = f"tiny-vit-student:{tmp_path}/weights.safetensors"
    with pytest.raises(ConfigError, match="student.spec names the weights file"):
        load_job(write_job(tmp_path, content))


def test_overrides_use_dotted_keys_and_yaml_values(tmp_path):
    path = write_job(tmp_path, minimal(tmp_path))
    job = load_job(
        path,
        [
            "train.epochs=3",
            "train.use_gpu=null",
            "teacher_pool.resources={teacher: 1}",
            "loss.preset=kdpl",
            "train.lr=1e-3",
            "name=other",
        ],
    )
    assert (
        job.train.epochs == 3 and job.train.use_gpu is None and job.teacher_pool.resources == {"teacher": 1.0}
    )
    assert job.loss == LOSS_PRESETS["kdpl"] and job.train.lr == 1e-3 and job.name == "other"
    with pytest.raises(ConfigError, match="unknown key train.epoch "):
        load_job(path, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_job(path, ["train.epochs"])


def test_loss_preset_then_fields_override_it(tmp_path):
    job = load_job(write_job(tmp_path, minimal(tmp_path, loss={"preset": "kdpl", "kd_weight": 2.0})))
    assert job.loss.kd == "symmetric_kl" and job.loss.teacher_scale == "student" and job.loss.kd_weight == 2.0


@pytest.mark.parametrize(
    "changes, words",
    [
        (
            {"train": {"batch_size": 9, "num_workers": 2}},
            "train.batch_size (9) must be divisible by train.num_workers",
        ),
        (
            {"train": {"warmup_epochs": 5, "epochs": 5}},
            "train.warmup_epochs must be ≥ 0 and less than train.epochs",
        ),
        ({"name": ""}, "name must be set"),
        ({"data": {"crop_scale_min": 0.0}}, "data.crop_scale_min must be in (0, 1], got 0.0"),
        ({"data": {"source": "benchmark"}}, "data.dataset must be set when data.source is benchmark"),
        ({"train": {"checkpoints_to_keep": 0}}, "train.checkpoints_to_keep must be ≥ 1, got 0"),
        ({"train": {"grad_clip_norm": -1.0}}, "train.grad_clip_norm must be ≥ 0, got -1.0"),
    ],
)
def test_cross_field_rules(tmp_path, changes, words):
    content = minimal(tmp_path)
    for key, value in changes.items():
        if isinstance(value, dict):
            content.setdefault(key, {}).update(value)
        else:
            content[key] = value
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_job(write_job(tmp_path, content))


def test_linear_lr_scaling_reproduces_the_authors_large_batch_lr(tmp_path):
    job = load_job(write_job(tmp_path, minimal(tmp_path, train={"batch_size": 256, "lr_scaling": "linear"})))
    assert job.effective_lr == pytest.approx(0.16)
    assert load_job(write_job(tmp_path, minimal(tmp_path, train={"batch_size": 256}))).effective_lr == 0.005


def test_job_round_trips_through_a_dict(tmp_path):
    job = load_job(write_job(tmp_path, minimal(tmp_path, loss={"preset": "comkd"}, train={"epochs": 4})))
    assert distill_job_from_dict(to_dict(job)) == job


def test_authors_schedule_warmup_then_cosine_per_epoch(tmp_path):
    train = load_job(write_job(tmp_path, minimal(tmp_path))).train
    lrs = [lr_at_epoch(e, train) for e in range(train.epochs)]
    assert lrs[0] == 1e-5 and lrs[1] == pytest.approx(0.005)
    assert lrs[2] == pytest.approx(0.5 * 0.005 * (1 + __import__("math").cos(__import__("math").pi / 20)))
    assert all(a > b for a, b in zip(lrs[1:], lrs[2:])) and lrs[-1] > 0


def test_grad_clip_norm_caps_the_steps_gradient_norm_and_is_off_by_default(tmp_path):
    """SGD's first step moves the parameters by lr × gradient: with train.grad_clip_norm: 1 that
    displacement has norm lr × 1 for a gradient of norm 50; with the default (0) it is lr × 50."""
    import dataclasses

    import torch

    from promptkd_ray.core.schedule import build_optimizer

    train = load_job(write_job(tmp_path, minimal(tmp_path))).train
    assert train.grad_clip_norm == 0.0
    moved = {}
    for clip in (0.0, 1.0):
        weights = torch.nn.Parameter(torch.zeros(3, 4))
        optimizer = build_optimizer(
            [weights], dataclasses.replace(train, grad_clip_norm=clip, warmup_epochs=0)
        )
        (weights * torch.full((3, 4), 50.0 / 12**0.5)).sum().backward()  # gradient norm 50
        optimizer.step()
        moved[clip] = float(weights.detach().norm())
    assert moved[0.0] == pytest.approx(train.lr * 50.0, rel=1e-4)
    assert moved[1.0] == pytest.approx(train.lr * 1.0, rel=1e-4)


@pytest.mark.parametrize("path", STAGE2_JOBS, ids=lambda p: p.name)
def test_every_shipped_job_loads_and_says_how_to_run_it(path):
    job = load_job(path, check_paths_exist=False)
    lines = path.read_text().splitlines()
    header = "\n".join(lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))])
    assert f"promptkd-ray distill --config jobs/{path.name}" in header
    assert "ray job submit --address" in header
    assert job.name


def test_real_data_jobs_exist():
    names = {p.name for p in STAGE2_JOBS}
    assert {"b2n.yaml", "cross_dataset.yaml", "imagenet_full.yaml"} <= names


def test_validate_command_reports_each_file(tmp_path, capsys):
    good = write_job(tmp_path, minimal(tmp_path), "good.yaml")
    bad = write_job(tmp_path, minimal(tmp_path, train={"epochs": "many"}), "bad.yaml")
    filters_before = [list(h.filters) for h in logging.getLogger().handlers]
    assert main(["validate", str(good)]) == 0
    assert "ok: " in capsys.readouterr().out
    # in-process runs leave the caller's log handlers as they were (open_clip's records too)
    assert [list(h.filters) for h in logging.getLogger().handlers] == filters_before
    assert main(["validate", str(good), str(bad)]) == 1
    captured = capsys.readouterr()
    assert "ok: " in captured.out and "bad.yaml: train.epochs must be an integer" in captured.err


def test_validate_command_checks_model_names(tmp_path, capsys):
    content = minimal(tmp_path)
    content["student"]["spec"] = "ViT-Q-99"
    assert main(["validate", str(write_job(tmp_path, content))]) == 1
    assert "student.spec" in capsys.readouterr().err


def test_distill_command_refuses_a_bad_job_in_one_line(tmp_path, capsys):
    path = write_job(tmp_path, minimal(tmp_path, train={"optimizer": "lion"}))
    assert main(["distill", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.optimizer must be one of sgd, adamw, got 'lion'" in err
