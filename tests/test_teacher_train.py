"""Stage I: PromptSRC losses by hand, GPA weights, the schedule, learning on tiny data, resuming,
artifacts, and (slow) the Ray Train job."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from promptkd_ray.core.promptsrc import (
    GaussianPromptAggregator,
    SCLWeights,
    frozen_text_targets,
    gpa_weights,
    promptsrc_forward,
    promptsrc_loss,
    promptsrc_step,
    scl_kl,
)
from promptkd_ray.core.templates import IMAGENET_TEMPLATES

NAMES = ["red star", "blue circle", "green square"]


@pytest.fixture(autouse=True)
def one_thread():
    """Two shared cores: more threads only oversubscribe them (measured 90× slower steps)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def test_promptsrc_loss_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    zs = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    labels = torch.tensor([0, 2])
    text, frozen_text = (
        torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]]),
        torch.tensor([[0.8, 0.6], [1.0, 0.0], [0.6, 0.8]]),
    )
    image, frozen_image = torch.tensor([[0.0, 1.0], [0.6, 0.8]]), torch.tensor([[0.6, 0.8], [0.6, 0.8]])
    loss, parts = promptsrc_loss(logits, labels, text, frozen_text, image, frozen_image, zs)

    ce = -(math.log(_softmax([2.0, 0.5, -1.0])[0]) + math.log(_softmax([0.1, 0.2, 0.3])[2])) / 2
    l1_text = (0.2 + 0.2 + 0 + 0 + 0.6 + 0.2) / 6
    l1_image = (0.6 + 0.2 + 0 + 0) / 4
    kl = 0.0
    for s_row, t_row in zip(logits.tolist(), zs.tolist()):
        p, q = _softmax(s_row), _softmax(t_row)
        kl += sum(qi * (math.log(qi) - math.log(pi)) for pi, qi in zip(p, q))  # KL(zero-shot ‖ prompted)
    kl /= 6  # / numel
    assert parts["ce"] == pytest.approx(ce, rel=1e-5)
    assert parts["scl_text"] == pytest.approx(25 * l1_text, rel=1e-5)
    assert parts["scl_image"] == pytest.approx(10 * l1_image, rel=1e-5)
    assert parts["scl_logits"] == pytest.approx(kl, rel=1e-5)
    assert float(loss) == pytest.approx(ce + 25 * l1_text + 10 * l1_image + kl, rel=1e-5)
    _, weighted = promptsrc_loss(
        logits, labels, text, frozen_text, image, frozen_image, zs, SCLWeights(1.0, 2.0, 3.0)
    )
    assert weighted["scl_text"] == pytest.approx(l1_text, rel=1e-5) and weighted[
        "scl_logits"
    ] == pytest.approx(3 * kl, rel=1e-5)


def test_scl_kl_is_zero_for_equal_logits_and_has_no_gradient_into_the_zero_shot_side():
    logits = torch.randn(4, 5, requires_grad=True)
    zs = torch.randn(4, 5, requires_grad=True)
    assert float(scl_kl(logits.detach(), logits.detach())) == pytest.approx(0.0, abs=1e-7)
    scl_kl(logits, zs).backward()
    assert logits.grad is not None and zs.grad is None


def test_gpa_weights_are_the_authors_normalised_gaussian():
    def authors(epochs, mu, sigma):  # trainers/promptsrc.py: get_gauss, then / sum
        g = [
            (1 / (sigma * math.sqrt(2 * math.pi))) * math.exp(-0.5 * ((e - mu) / sigma) ** 2)
            for e in range(1, epochs + 1)
        ]
        return [v / sum(g) for v in g]

    for epochs, mu, sigma in ((20, 15, 1), (5, 15, 1), (10, 6, 2.5)):
        ours = gpa_weights(epochs, mu, sigma)
        assert ours == pytest.approx(authors(epochs, mu, sigma), rel=1e-9, abs=1e-300)
        assert sum(ours) == pytest.approx(1.0)
    w = gpa_weights(20, 15, 1)
    assert max(range(20), key=w.__getitem__) == 14 and w[13] == pytest.approx(w[15])
    with pytest.raises(ValueError):
        gpa_weights(0)


def test_gaussian_prompt_aggregator_sums_weighted_epochs_and_round_trips():
    gpa = GaussianPromptAggregator(3, mean=2, std=1)
    states = [{"p": torch.full((2, 2), float(e))} for e in (1, 2, 3)]
    for e, state in enumerate(states[:2], start=1):
        gpa.add(e, state)
    with pytest.raises(RuntimeError):
        gpa.result()
    resumed = GaussianPromptAggregator(3, mean=2, std=1)
    resumed.load_state_dict(gpa.state_dict())
    resumed.add(3, states[2])
    w = gpa_weights(3, 2, 1)
    assert torch.allclose(resumed.result()["p"], torch.full((2, 2), w[0] * 1 + w[1] * 2 + w[2] * 3))
    with pytest.raises(ValueError):
        resumed.add(3, states[2])


def test_lr_schedule_is_constant_warmup_then_dassl_cosine():
    from promptkd_ray.config.teacher import TeacherTrainConfig
    from promptkd_ray.core.schedule import lr_at_epoch

    authors = TeacherTrainConfig()  # Stage I uses Stage II's optimiser and schedule (core/schedule.py)
    assert (authors.epochs, authors.lr, authors.optimizer) == (20, 0.005, "sgd")
    assert lr_at_epoch(0, authors) == 1e-5
    assert lr_at_epoch(1, authors) == pytest.approx(0.005)
    assert lr_at_epoch(11, authors) == pytest.approx(0.0025)
    assert lr_at_epoch(19, authors) == pytest.approx(0.0025 * (1 + math.cos(math.pi * 18 / 20)))
    assert lr_at_epoch(0, TeacherTrainConfig(epochs=4, lr=0.1, warmup_epochs=0)) == pytest.approx(0.1)


@pytest.fixture(scope="module")
def tiny_teacher():
    from promptkd_ray.core.models import Teacher, get_tokenizer, load_clip

    torch.manual_seed(0)
    clip = load_clip("tiny-vit-teacher")
    return Teacher(clip, get_tokenizer("tiny-vit-teacher"), vision_depth=3, text_depth=2, n_ctx=4), clip


def test_frozen_text_targets_average_raw_template_features_then_normalise(tiny_teacher):
    teacher, clip = tiny_teacher
    tokenizer = teacher.text_encoder.tokenizer
    templates = IMAGENET_TEMPLATES[:5]
    with torch.no_grad():
        raw = torch.stack([clip.encode_text(tokenizer([t.format(n) for n in NAMES])) for t in templates])
        expected = F.normalize(raw.mean(0), dim=-1)  # the authors' fixed_embeddings
        per_template_normalised = F.normalize(F.normalize(raw, dim=-1).mean(0), dim=-1)
    ours = frozen_text_targets(teacher.text_encoder, ["red_star", "blue circle", "green square"], templates)
    assert (ours - expected).abs().max().item() < 1e-5
    assert (ours - per_template_normalised).abs().max().item() > 1e-4  # the other order would be caught


def test_frozen_image_features_are_the_unprompted_tower(tiny_teacher):
    teacher, clip = tiny_teacher
    images = torch.randn(2, 3, 32, 32)
    out = promptsrc_forward(teacher.eval(), images, NAMES, F.normalize(torch.randn(3, 48), dim=-1))
    with torch.no_grad():
        vanilla = F.normalize(clip.encode_image(images), dim=-1)
    assert (out["frozen_image"] - vanilla).abs().max().item() < 1e-6
    assert (out["image_features"] - vanilla).abs().max().item() > 1e-3


def test_a_few_steps_raise_base_accuracy_on_tiny_data():
    from promptkd_ray.core.models import build_teacher
    from promptkd_ray.core.templates import resolve_templates

    torch.manual_seed(0)
    teacher = build_teacher("tiny-vit-teacher", vision_depth=3, text_depth=2, n_ctx=4)
    gen = torch.Generator().manual_seed(0)
    colours = torch.tensor([[1.0, -1, -1], [-1, -1, 1], [-1, 1, -1]])
    labels = torch.arange(3).repeat_interleave(8)
    images = colours[labels][:, :, None, None] * 0.8 + torch.randn(24, 3, 32, 32, generator=gen) * 0.7
    frozen_text = frozen_text_targets(teacher.text_encoder, NAMES, resolve_templates("imagenet60"))
    optimizer = torch.optim.SGD(teacher.prompt_parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def accuracy():
        with torch.no_grad():
            logits = promptsrc_forward(teacher.eval(), images, NAMES, frozen_text)["logits"]
        return 100.0 * (logits.argmax(-1) == labels).float().mean().item()

    before, losses = accuracy(), []
    for _ in range(30):
        idx = torch.randperm(24, generator=gen)[:8]
        losses.append(
            promptsrc_step(teacher, images[idx], labels[idx], NAMES, frozen_text, optimizer)["loss"]
        )
    after = accuracy()
    assert after >= before + 30, (before, after)
    assert sum(losses[-5:]) < sum(losses[:5])


# ----------------------------------------------------------------------------- the recipe on files
@pytest.fixture(scope="module")
def fake_job(tmp_path_factory):
    """A tiny Stage I job on a fake OxfordPets (4 classes → 2 base) with a saved tiny base CLIP."""
    from fakes import make_fake_dataset

    from promptkd_ray.config import teacher_job_from_dict
    from promptkd_ray.core.models import load_clip

    root = tmp_path_factory.mktemp("stage1")
    make_fake_dataset("OxfordPets", root / "data", classes=4, per_class=4)
    torch.manual_seed(5)
    torch.save(load_clip("tiny-vit-teacher").state_dict(), root / "tiny-base.pt")
    raw = {
        "name": "stage1",
        "storage_path": str(root / "runs"),
        "seed": 2,
        "teacher": {
            "spec": f"tiny-vit-teacher:{root / 'tiny-base.pt'}",
            "vision_depth": 2,
            "text_depth": 2,
            "scl_templates": "single",
        },
        "data": {"source": "benchmark", "root": str(root / "data"), "dataset": "OxfordPets", "shots": 3},
        "train": {"epochs": 3, "batch_size": 2, "lr": 0.05, "gpa_mean": 2.0},
    }
    return teacher_job_from_dict(raw, "fake.yaml")


def test_open_data_takes_k_shots_of_the_base_classes(fake_job):
    from promptkd_ray.teacher_setup import open_data

    data = open_data(fake_job)
    assert len(data.classnames) == 4 and data.train_classnames == data.classnames[:2]
    assert sorted(i.label for i in data.items) == [0, 0, 0, 1, 1, 1]
    assert data.test_items and all(i.label < 2 for i in data.test_items)


def _train(training, batches, epochs, checkpoints=None) -> list[dict]:
    """The Ray Train worker's epoch loop in one process (no gradient averaging, no reports): → each
    epoch's metrics; `checkpoints` gets each epoch's (prompts, state) as its checkpoint would."""
    from promptkd_ray.core.promptsrc import EpochMeans

    history = []
    for epoch in epochs:
        lr, meter = training.lr, EpochMeans()
        for images, labels in batches.epoch(epoch):
            meter.add(training.backward(images, labels))
            training.step()
        prompts = training.end_epoch(epoch)
        history.append({"epoch": epoch, "lr": lr, **meter.means()})
        if checkpoints is not None:
            checkpoints.append(copy.deepcopy((prompts, training.state_dict())))  # as saved then
    return history


def _start(job):
    from promptkd_ray.teacher_setup import image_size, kshot_batches, new_training, open_data

    data = open_data(job)
    training = new_training(job, data)
    return training, kshot_batches(job, data, image_size(job, training.teacher))


def test_stage1_epochs_aggregate_prompts_with_gpa_and_resume_exactly(fake_job, tmp_path):
    from promptkd_ray.orchestration.checkpoints import load_checkpoint, new_progress, save_checkpoint

    training, batches = _start(fake_job)
    initial = {k: v.clone() for k, v in training.teacher.prompt_state_dict().items()}
    seen, saved = [], tmp_path / "after_epoch_2"
    _train(training, batches, range(3), seen)
    final = training.gpa.result()
    save_checkpoint(saved, *seen[1], dict(new_progress({"job": "x"}), epoch=1))  # the second of three epochs
    w = gpa_weights(3, 2.0, 1.0)
    assert len(seen) == 3
    for key, value in final.items():
        assert torch.allclose(value, sum(wi * s[0][key] for wi, s in zip(w, seen)), atol=1e-7)
        assert not torch.equal(value, initial[key])
    resumed, batches = _start(fake_job)
    tensors, state, progress = load_checkpoint(saved, {"job": "x"})
    resumed.load_state_dict(tensors, state)
    _train(resumed, batches, range(progress["epoch"] + 1, 3))
    for key, value in final.items():
        assert torch.equal(resumed.gpa.result()[key], value), key


# A fixed-seed tiny Stage I run (fake_job: seed 2, 3 epochs of 3 steps), measured before the
# worker's loop moved out of `teacher.train_prompts`: the same batches, steps, schedule and GPA give
# the same numbers. Per epoch (lr, loss, ce, scl_text, scl_image, scl_logits, accuracy), then per
# GPA prompt tensor (Σ value, Σ |value|).
REFERENCE_EPOCHS = [
    (
        1e-05,
        2.25435733795166,
        0.9412166277567545,
        1.0616427262624104,
        0.1660799632469813,
        0.085418033413589,
        50.0,
    ),
    (
        0.05,
        3.5176729361216226,
        0.76569002866745,
        2.3127039273579917,
        0.32180893421173096,
        0.11747015019257863,
        50.0,
    ),
    (
        0.0375,
        3.8967798550923667,
        0.528069943189621,
        2.810285965601603,
        0.38378023107846576,
        0.17464376365145048,
        50.0,
    ),
]
REFERENCE_PROMPTS = {
    "image_encoder.deep_prompts.0": (0.762481642770581, 21.022746291360818),
    "image_encoder.shallow_prompt": (0.18006796156987548, 16.78988508787006),
    "text_encoder.ctx": (0.5409643484745175, 134.66714103077538),
    "text_encoder.deep_prompts.0": (-0.052491290494799614, 117.0671602692455),
}


def test_a_fixed_seed_stage1_run_gives_the_reference_numbers(fake_job):
    training, batches = _start(fake_job)
    history = _train(training, batches, range(3))
    keys = ("lr", "loss", "ce", "scl_text", "scl_image", "scl_logits", "accuracy")
    assert [tuple(m[k] for k in keys) for m in history] == [
        pytest.approx(row, rel=1e-5) for row in REFERENCE_EPOCHS
    ]
    prompts = training.gpa.result()
    assert sorted(prompts) == sorted(REFERENCE_PROMPTS)
    for key, (total, size) in REFERENCE_PROMPTS.items():
        value = prompts[key].double()
        # A signed sum can cancel (text_encoder.deep_prompts.0: −0.05 of 117 in magnitude), where float32
        # rounding, ~1e-7 of the magnitude, exceeds rel 1e-5: CPUs with other vector units moved it by 2.8e-6.
        assert float(value.abs().sum()) == pytest.approx(size, rel=1e-5), key
        assert float(value.sum()) == pytest.approx(total, rel=1e-5, abs=1e-7 * size), key


def test_outputs_round_trip_through_the_teacher_artifact(fake_job, tmp_path):
    from promptkd_ray.core.artifacts import load_teacher
    from promptkd_ray.core.classvectors import load_class_vectors
    from promptkd_ray.storage import Storage
    from promptkd_ray.teacher import write_teacher_outputs
    from promptkd_ray.teacher_setup import build_job_teacher, open_data

    data = open_data(fake_job)
    teacher = build_job_teacher(fake_job)
    with torch.no_grad():
        for p in teacher.prompt_parameters():
            p.add_(0.1)
    metrics = write_teacher_outputs(teacher, fake_job, data, Storage(tmp_path))
    loaded, info = load_teacher(str(tmp_path / "teacher"))
    stored = load_class_vectors(str(tmp_path / "class_vectors"), expected_classnames=data.classnames)
    assert (info.vision_depth, info.text_depth, info.extra["recipe"]) == (2, 2, "promptsrc")
    assert info.extra["metrics"] == metrics and 0.0 <= metrics["test_accuracy_train_classes"] <= 100.0
    assert stored.templates == ("prompted",)
    with torch.no_grad():
        again = F.normalize(loaded.text_encoder.encode_prompted(list(data.classnames)), dim=-1)
    assert (again - stored.vectors).abs().max().item() < 1e-6


def test_zeroshot_job_writes_template_class_vectors_without_training(fake_job):
    import dataclasses

    from promptkd_ray.core.classvectors import load_class_vectors
    from promptkd_ray.teacher import run_teacher_job

    job = dataclasses.replace(
        fake_job, name="zeroshot", teacher=dataclasses.replace(fake_job.teacher, mode="zeroshot")
    )
    result = run_teacher_job(job)
    cv = load_class_vectors(result.teacher.replace("teacher.safetensors", "class_vectors"))
    assert cv.num_classes == 4 and cv.templates == ("a photo of a {}.",)
    assert 0.0 <= result.metrics["test_accuracy_train_classes"] <= 100.0


def test_stage1_refuses_to_resume_a_run_made_by_another_job(fake_job, tmp_path):
    """A checkpoint of another dataset sample (here: another seed) or other base weights is refused
    with one sentence before anything trains; the old checkpoint is left as it was."""
    import dataclasses

    from promptkd_ray.errors import CheckpointMismatchError
    from promptkd_ray.orchestration.checkpoints import (
        CHECKPOINT_PREFIX,
        PROGRESS_FILE,
        new_progress,
        run_storage,
    )
    from promptkd_ray.teacher import run_teacher_job
    from promptkd_ray.teacher_setup import open_data

    job = dataclasses.replace(fake_job, storage_path=str(tmp_path), name="refused")
    checkpoint = run_storage(job).child(f"{CHECKPOINT_PREFIX}000")
    checkpoint.write_text(
        PROGRESS_FILE, json.dumps(dict(new_progress(open_data(job).fingerprint(job)), epoch=0))
    )
    before = checkpoint.read_text(PROGRESS_FILE)
    with pytest.raises(
        CheckpointMismatchError, match=r"was made with items_sha256='[0-9a-f]+', but the job now has"
    ):
        run_teacher_job(dataclasses.replace(job, seed=3))
    other_weights = dataclasses.replace(job.teacher, spec="tiny-vit-teacher")
    with pytest.raises(
        CheckpointMismatchError,
        match=r"was made with teacher='tiny-vit-teacher:.*tiny-base.pt', "
        r"but the job now has 'tiny-vit-teacher'",
    ):
        run_teacher_job(dataclasses.replace(job, teacher=other_weights))
    assert checkpoint.read_text(PROGRESS_FILE) == before and not run_storage(job).exists("job.yaml")


def test_job_file_errors_name_the_key(tmp_path):
    from promptkd_ray.config import ConfigError, load_teacher_job

    path = tmp_path / "job.yaml"
    path.write_text(
        "kind: teacher\nname: t\nteacher: {spec: tiny-vit-teacher, mode: promptsrc}\n"
        "data: {source: benchmark, root: /x, dataset: DTD, shots: 16}\ntrain: {epoch: 3}\n"
    )
    with pytest.raises(ConfigError, match=r"unknown key train\.epoch"):
        load_teacher_job(path)
    with pytest.raises(ConfigError, match=r"teacher\.mode must be one of"):
        load_teacher_job(path, ["train={}", "teacher.mode=fewshot"])
    with pytest.raises(ConfigError, match=r"data\.crop_scale_min must be in \(0, 1\], got 0"):
        load_teacher_job(path, ["train={}", "data.crop_scale_min=0"])


def test_crop_scale_min_bounds_the_stage1_train_crops(tmp_path):
    """Crops of the whole area (min 1) are the test view up to a flip; the authors' 0.08 gives
    crops that are not; the k-shot batches pass the option through."""
    import numpy as np
    from PIL import Image

    from promptkd_ray.data.decode import load_view
    from promptkd_ray.data.kshot import KShotBatches
    from promptkd_ray.data.layout import Item

    ramp = np.add.outer(np.arange(24), 3 * np.arange(24)).astype(np.uint8)
    path = str(tmp_path / "ramp.png")
    Image.fromarray(np.stack([ramp, ramp.T, 255 - ramp], -1)).save(path)
    size = 16
    test_view = load_view(path, size, None)

    def is_test_view(view):
        return torch.equal(view, test_view) or torch.equal(view, test_view.flip(-1))

    assert all(is_test_view(load_view(path, size, np.random.default_rng(i), 1.0)) for i in range(8))
    assert not any(is_test_view(load_view(path, size, np.random.default_rng(i), 0.08)) for i in range(8))
    batch = {
        m: next(KShotBatches((Item(path, 0),), 1, 0, size, crop_scale_min=m).epoch(0))[0][0]
        for m in (1.0, 0.08)
    }
    assert is_test_view(batch[1.0]) and not is_test_view(batch[0.08])


@pytest.mark.slow
def test_ray_train_job_writes_artifacts_and_a_rerun_resumes(fake_job, ray_cluster, tmp_path, monkeypatch):
    import dataclasses

    from promptkd_ray.core.artifacts import load_teacher
    from promptkd_ray.core.classvectors import load_class_vectors
    from promptkd_ray.teacher import run_teacher_job

    monkeypatch.chdir(tmp_path)  # a relative storage_path means the same on the driver and the Train workers
    job = dataclasses.replace(
        fake_job,
        name="ray-stage1",
        storage_path="runs",
        train=dataclasses.replace(fake_job.train, epochs=2, num_workers=2, log_every=1),
    )
    result = run_teacher_job(job)
    assert result.teacher == str(tmp_path / "runs" / "ray-stage1" / "teacher.safetensors")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(result.teacher).parent / "tensorboard")).Reload()
    steps = [e.step for e in events.Scalars("teacher/step/loss")]
    assert steps and steps == list(range(1, len(steps) + 1)) and len(steps) % 2 == 0  # every step of 2 epochs
    assert [e.step for e in events.Scalars("teacher/loss")] == [0, 1]
    teacher, info = load_teacher(result.teacher)
    cv = load_class_vectors(result.class_vectors)
    assert info.text_depth == 2 and info.extra["dataset"] == "OxfordPets" and cv.num_classes == 4
    assert cv.templates == ("prompted",) and "test_accuracy_train_classes" in result.metrics
    with torch.no_grad():
        again = F.normalize(teacher.text_encoder.encode_prompted(list(cv.classnames)), dim=-1)
    assert (again - cv.vectors).abs().max().item() < 1e-6
    rerun = run_teacher_job(job)  # same name and storage: resumes from the final checkpoint, no epochs left
    assert torch.equal(load_class_vectors(rerun.class_vectors).vectors, cv.vectors)


def test_stage1_and_interop_modules_import_without_ray():
    import subprocess
    import sys

    code = (
        "import sys\nimport promptkd_ray.core.promptsrc, promptkd_ray.teacher, promptkd_ray.teacher_setup\n"
        "import promptkd_ray.config, promptkd_ray.data.kshot\n"
        "import promptkd_ray.interop, promptkd_ray.interop.export\nprint('ray' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert out == "False"


def test_every_shipped_stage1_job_loads_and_says_how_to_run_it():
    from pathlib import Path

    import yaml

    from promptkd_ray.config import load_teacher_job

    jobs = sorted(
        p
        for p in (Path(__file__).parents[1] / "jobs").glob("*.yaml")
        if yaml.safe_load(p.read_text()).get("kind") == "teacher"
    )
    assert {"teacher_b2n.yaml", "teacher_zeroshot.yaml"} <= {p.name for p in jobs}
    for path in jobs:
        job = load_teacher_job(path, check_paths_exist=False)
        header = path.read_text().split("\nname:")[0]
        assert f"promptkd-ray teacher --config jobs/{path.name}" in header and job.name
