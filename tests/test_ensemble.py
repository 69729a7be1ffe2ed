"""Teacher ensembles over soft-label caches (`teacher.ensemble`, `teacher.combine`): an ensemble of one
teacher is that teacher bit for bit, the combined targets match values worked out by hand, caches of
other views are refused in one sentence, and a cached run distils from two different teachers."""

import copy
import dataclasses
import json
import math
import re
import shutil

import pytest
import torch
from stage2_fakes import fixed_teacher, make_split_json, tiny_job

from promptkd_ray.config import distill_job_from_dict, to_dict
from promptkd_ray.core import losses
from promptkd_ray.core.ensemble import EnsembleLogits, Teacher
from promptkd_ray.core.loss_config import LOSS_PRESETS
from promptkd_ray.core.losses import compute_loss
from promptkd_ray.errors import ConfigError

PRESETS = {
    "promptkd": LOSS_PRESETS["promptkd"],
    "promptkd_T4_batchmean": dataclasses.replace(
        LOSS_PRESETS["promptkd"], temperature=4.0, normalization="batchmean"
    ),
    "kdpl": LOSS_PRESETS["kdpl"],
    "kdpl_ca": dataclasses.replace(LOSS_PRESETS["kdpl_ca"], class_agnostic_k=3),
    "comkd_terms": dataclasses.replace(LOSS_PRESETS["promptkd"], feature="l1", ifalign_weight=1.0),
}


def _logits(seed: int, b: int = 4, n: int = 6) -> torch.Tensor:
    return 5 * torch.randn(b, n, generator=torch.Generator().manual_seed(seed))


def _loss_and_grad(teacher, cfg):
    s = _logits(0).requires_grad_(True)
    sf = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    sf.requires_grad_(True)
    tf = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(2)), dim=-1)
    loss, parts = compute_loss(s, teacher, sf, tf, cfg)
    loss.backward()
    return loss.detach(), s.grad, sf.grad, parts


# --- the combination, pure ----------------------------------------------------------------------------------


@pytest.mark.parametrize("combine", ["mean", "confidence"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_an_ensemble_of_one_teacher_gives_the_single_teacher_loss_and_gradients_bit_for_bit(preset, combine):
    t = _logits(3)
    single = _loss_and_grad(t, PRESETS[preset])
    one = _loss_and_grad(EnsembleLogits((t,), combine), PRESETS[preset])
    assert torch.equal(one[0], single[0]) and torch.equal(one[1], single[1])
    assert (one[2] is None and single[2] is None) or torch.equal(one[2], single[2])
    assert one[3] == single[3]


@pytest.mark.parametrize("combine", ["mean", "confidence"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_two_identical_teachers_give_the_single_teacher_loss(preset, combine):
    t = _logits(3)
    single = _loss_and_grad(t, PRESETS[preset])
    two = _loss_and_grad(EnsembleLogits((t, t.clone()), combine), PRESETS[preset])
    assert float(two[0]) == pytest.approx(float(single[0]), abs=1e-6, rel=1e-6)
    assert torch.allclose(two[1], single[1], atol=1e-6)


def _softmax(row, temp=1.0):
    e = [math.exp(v / temp) for v in row]
    return [x / sum(e) for x in e]


T1 = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
T2 = torch.tensor([[0.0, 3.0, 0.0], [1.0, -1.0, 2.0]])


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_the_mean_and_the_confidence_weighted_targets_match_values_worked_out_by_hand(temp):
    for b in range(2):
        p1, p2 = _softmax(T1[b].tolist(), temp), _softmax(T2[b].tolist(), temp)
        mean = [(x + y) / 2 for x, y in zip(p1, p2)]
        c1, c2 = max(p1), max(p2)
        weighted = [(c1 * x + c2 * y) / (c1 + c2) for x, y in zip(p1, p2)]
        got_mean = EnsembleLogits((T1, T2), "mean").probs(temp)[b].tolist()
        got_weighted = EnsembleLogits((T1, T2), "confidence").probs(temp)[b].tolist()
        assert got_mean == pytest.approx(mean, abs=1e-6)
        assert got_weighted == pytest.approx(weighted, abs=1e-6)
        assert weighted != pytest.approx(mean, abs=1e-3)  # the rules differ on these rows
        log_p = EnsembleLogits((T1, T2), "confidence").log_probs()[b].tolist()  # symmetric KL's, T = 1
        p1, p2 = _softmax(T1[b].tolist()), _softmax(T2[b].tolist())
        c1, c2 = max(p1), max(p2)
        assert log_p == pytest.approx(
            [math.log((c1 * x + c2 * y) / (c1 + c2)) for x, y in zip(p1, p2)], abs=1e-6
        )


def test_the_kd_term_distils_towards_the_combined_distribution():
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    temp = 2.0
    by_hand = 0.0
    for b in range(2):
        p = [(x + y) / 2 for x, y in zip(_softmax(T1[b].tolist(), temp), _softmax(T2[b].tolist(), temp))]
        q = _softmax(s[b].tolist(), temp)
        by_hand += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    got = losses.kd_kl(s, EnsembleLogits((T1, T2), "mean"), temp, "authors", weight=3.0)
    assert float(got) == pytest.approx(3.0 * temp * temp * by_hand / s.numel(), rel=1e-5)


def test_kdpl_ca_picks_its_classes_from_the_combined_distribution():
    t1 = torch.tensor([[4.0, 3.9, 0.0, 0.0], [4.0, 3.9, 0.0, 0.0]])  # alone: classes 0 and 1
    t2 = torch.tensor([[0.0, 0.0, 0.0, 9.0], [0.0, 0.0, 0.0, 9.0]])  # confident in class 3
    ensemble = EnsembleLogits((t1, t2), "mean")
    assert sorted(losses.class_agnostic_topk(t1, 2).tolist()) == [0, 1]
    assert sorted(losses.class_agnostic_topk(ensemble, 2).tolist()) == [0, 3]
    s = _logits(5, b=2, n=4)
    cfg = dataclasses.replace(LOSS_PRESETS["kdpl_ca"], class_agnostic_k=2)
    keep = [0, 3]
    by_hand = losses.symmetric_kl(s[:, keep], EnsembleLogits((t1[:, keep], t2[:, keep]), "mean"))
    assert float(compute_loss(s, ensemble, s, s, cfg)[0]) == pytest.approx(float(by_hand), rel=1e-6)


def _step_setup(seed=0):
    from promptkd_ray.core.models import build_student

    torch.manual_seed(seed)
    student = build_student("tiny-vit-student", teacher_dim=48, n_ctx=2, depth=2).train()
    g = torch.Generator().manual_seed(seed + 1)
    images = torch.randn(4, 3, 32, 32, generator=g)
    w = torch.nn.functional.normalize(torch.randn(6, 48, generator=g), dim=-1)
    u_t = torch.nn.functional.normalize(torch.randn(4, 48, generator=g), dim=-1)
    return student, images, w, u_t


def _grads(student) -> list:
    return [p.grad.clone() for p in student.trainable_parameters() if p.grad is not None]


@pytest.mark.parametrize("preset", ["promptkd", "kdpl"])
def test_ensemble_step_of_one_teacher_is_distill_step_bit_for_bit(preset):
    from promptkd_ray.core.step import distill_step, ensemble_step

    cfg = LOSS_PRESETS[preset]
    student, images, w, u_t = _step_setup()
    twin = copy.deepcopy(student)
    out = distill_step(
        student, images, u_t, w, torch.optim.SGD(student.trainable_parameters(), lr=0.1), cfg, 7.0
    )
    optimizer = torch.optim.SGD(twin.trainable_parameters(), lr=0.1)
    for combine in ("mean", "confidence"):
        one = ensemble_step(twin, images, [Teacher(u_t, w, 7.0)], combine, w, optimizer, cfg)
        assert one == out
        assert all(torch.equal(a, b) for a, b in zip(_grads(twin), _grads(student)))
        twin = copy.deepcopy(_step_setup()[0])
        optimizer = torch.optim.SGD(twin.trainable_parameters(), lr=0.1)
    assert len(_grads(student)) > 0


def test_each_member_scores_with_its_own_class_vectors_and_logit_scale_in_its_own_dim():
    from promptkd_ray.core.step import ensemble_step

    student, images, w, u_t = _step_setup()
    g = torch.Generator().manual_seed(9)
    w2 = torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=-1)  # another teacher: dim 16
    u2 = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=-1)
    with torch.no_grad():
        s_logits = copy.deepcopy(student)(images, w).float()
    cfg = LOSS_PRESETS["promptkd"]
    out = ensemble_step(
        student,
        images,
        [Teacher(u_t, w, 7.0), Teacher(u2, w2, 30.0)],
        "confidence",
        w,
        torch.optim.SGD(student.trainable_parameters(), lr=0.0),
        cfg,
    )
    target = EnsembleLogits((7.0 * u_t @ w.t(), 30.0 * u2 @ w2.t()), "confidence")
    assert out["loss"] == pytest.approx(float(losses.kd_kl(s_logits, target, weight=cfg.kd_weight)), rel=1e-5)
    alone = float(losses.kd_kl(s_logits, 7.0 * u_t @ w.t(), weight=cfg.kd_weight))
    assert abs(out["loss"] - alone) > 1e-3 * alone


# --- the job's keys ------------------------------------------------------------------------------------------


def _raw(tmp_path, **teacher):
    root, _ = make_split_json(tmp_path / "data", per_class=2)
    return tiny_job(root, tmp_path / "runs", "ens", teacher=teacher)


def test_the_ensemble_keys_default_to_one_teacher_and_read_a_list_of_caches(tmp_path):
    import yaml

    job = distill_job_from_dict(_raw(tmp_path))
    assert job.teacher.ensemble == () and job.teacher.combine == "mean"
    raw = _raw(tmp_path, cache="c0", ensemble=["c1", "s3://bucket/c2"], combine="confidence")
    job = distill_job_from_dict(raw)
    assert job.teacher.ensemble == ("c1", "s3://bucket/c2") and job.teacher.combine == "confidence"
    dumped = yaml.safe_load(yaml.safe_dump(to_dict(job)))
    assert dumped["teacher"]["ensemble"] == ["c1", "s3://bucket/c2"]
    assert distill_job_from_dict(dumped).teacher == job.teacher


@pytest.mark.parametrize(
    "teacher, message",
    [
        (
            {"ensemble": ["c1"]},
            "<dict>: teacher.ensemble needs teacher.cache: an ensemble replays soft-label caches, so build "
            "one per teacher with `promptkd-ray cache` and set the job's own as teacher.cache.",
        ),
        (
            {"cache": "c0", "ensemble": ["c1", "c0"]},
            "<dict>: teacher.ensemble names the cache 'c0' twice (teacher.cache counts).",
        ),
        (
            {"cache": "c0", "ensemble": "c1"},
            "<dict>: teacher.ensemble must be a list of non-empty strings, got 'c1'.",
        ),
        (
            {"cache": "c0", "ensemble": ["c1"], "combine": "median"},
            "<dict>: teacher.combine must be one of mean, confidence",
        ),
    ],
)
def test_a_streaming_ensemble_and_malformed_ensemble_keys_are_refused_in_one_sentence(
    tmp_path, teacher, message
):
    with pytest.raises(ConfigError) as err:
        distill_job_from_dict(_raw(tmp_path, **teacher))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


# --- caches of two teachers (local Ray) -----------------------------------------------------------------------

VIEWS = 2


@pytest.fixture(scope="module")
def caches(tmp_path_factory, ray_cluster):
    """32 + 8 images; the job's cache (tiny-vit-teacher, dim 48) and a member made by another teacher
    (toy-teacher, another size: dim 64), both K = 2; and members of other views: another seed (K = 1,
    built), K = 1 (the member's first slot alone: what a build with K = 1 writes)."""
    from promptkd_ray.distill import build_cache

    tmp = tmp_path_factory.mktemp("ensemble")
    root, _ = make_split_json(tmp / "data", per_class=10)
    teachers = {"own": fixed_teacher(tmp / "t0.safetensors", "tiny-vit-teacher", 0)}
    teachers["other"] = fixed_teacher(tmp / "t1.safetensors", "toy-teacher", 1)

    def job(teacher: str, name: str = "ens", **sections) -> dict:
        base = {"data": {"preserve_order": True}, "train": {"epochs": VIEWS, "log_every": 1}, "seed": 11}
        for key, value in sections.items():
            base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
        return tiny_job(root, tmp / "runs", name, teacher={"spec": teachers[teacher]}, **base)

    out = {"job": job, "tmp": tmp}
    for name, teacher, views, changes in (
        ("own", "own", VIEWS, {}),
        ("other", "other", VIEWS, {}),
        ("other_seed", "other", 1, {"seed": 12}),
    ):
        out[name] = f"file://{tmp / name}"
        build_cache(distill_job_from_dict(job(teacher, **changes)), out=out[name], views=views)
    k1 = tmp / "other_k1"
    shutil.copytree(tmp / "other", k1)
    shutil.rmtree(k1 / "slot_0001")
    (k1 / "slot_0001.json").unlink()
    manifest = json.loads((k1 / "manifest.json").read_text())
    dropped = manifest["parts"].pop("slot_0001")
    manifest.update(views=1, rows=manifest["rows"] - dropped["rows"])
    (k1 / "manifest.json").write_text(json.dumps(manifest))
    out["other_k1"] = f"file://{k1}"
    return out


def _ensemble_job(caches, name, members, combine="mean", **sections):
    raw = caches["job"]("own", name=name, **sections)
    raw["teacher"].update(cache=caches["own"], ensemble=members, combine=combine)
    return distill_job_from_dict(raw)


@pytest.mark.slow
@pytest.mark.parametrize(
    "member, words",
    [
        (
            "other_seed",
            "was made with seed 12, the job's cache with seed 11; an ensemble's caches must hold the same views.",
        ),
        (
            "other_k1",
            "was made with K = 1 views per image, the job's cache with K = 2; an ensemble's caches must hold the same views.",
        ),
        (
            "crop",
            "was made with crop setting 0.5, the job's cache with crop setting 0.08; an ensemble's caches",
        ),
        ("own", "was made by the job's own teacher (tiny-vit-teacher:"),
    ],
)
def test_an_ensemble_of_caches_of_other_views_is_refused_in_one_sentence_naming_the_difference(
    caches, member, words
):
    from promptkd_ray.distill import run_distillation

    if member == "crop":  # a copy of the member whose manifest says another crop setting
        crop = caches["tmp"] / "other_crop"
        if not crop.exists():
            shutil.copytree(caches["tmp"] / "other", crop)
            manifest = json.loads((crop / "manifest.json").read_text())
            manifest["key"]["crop_scale_min"] = 0.5
            (crop / "manifest.json").write_text(json.dumps(manifest))
        uri = f"file://{crop}"
    elif member == "own":  # another copy of the job's own cache
        uri = f"file://{caches['tmp'] / 'own_again'}"
        if not (caches["tmp"] / "own_again").exists():
            shutil.copytree(caches["tmp"] / "own", caches["tmp"] / "own_again")
    else:
        uri = caches[member]
    with pytest.raises(ConfigError) as err:
        run_distillation(_ensemble_job(caches, f"refused_{member}", [uri]))
    message = str(err.value)
    assert message.startswith(f"teacher.ensemble cache {uri} ") and words in message
    assert "\n" not in message and message.count("; ") == 1


@pytest.mark.slow
def test_a_member_file_with_other_rows_is_refused_when_it_is_read(caches, tmp_path):
    import numpy as np
    import pyarrow.parquet as pq

    from promptkd_ray.orchestration.cache_files import read_part_file, with_members

    member = tmp_path / "shuffled"
    shutil.copytree(caches["tmp"] / "other", member)
    rel = "slot_0001/part-00000.parquet"
    table = pq.read_table(member / rel)
    pq.write_table(table.take(np.arange(len(table))[::-1].copy()), member / rel)  # the same rows, reversed
    rows = read_part_file(caches["own"], rel)
    assert with_members(dict(rows), (caches["other"],), rel)["teacher_feature_1"].shape == (32, 64)
    with pytest.raises(
        ConfigError, match=re.escape(f"teacher.ensemble cache {member}: {rel} holds other images")
    ):
        with_members(dict(rows), (str(member),), rel)


def _step_losses(run_dir) -> list:
    from pathlib import Path

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(run_dir) / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    return [e.value for e in events.Scalars("distill/step/loss")]


@pytest.mark.slow
def test_a_cached_run_distils_from_an_ensemble_of_two_different_teachers(caches, caplog):
    from promptkd_ray.core.classvectors import load_class_vectors
    from promptkd_ray.distill import run_distillation

    job = _ensemble_job(caches, "ensemble", [caches["other"]], "confidence")
    with caplog.at_level("INFO"):
        result = run_distillation(job)
    assert "teacher ensemble (combine: confidence): the job's teacher tiny-vit-teacher:" in caplog.text
    assert [e["images"] for e in result.history] == [32, 32]
    assert all(math.isfinite(e["loss"]) for e in result.history)
    summary = json.loads((caches["tmp"] / "runs" / "ensemble" / "metrics.json").read_text())
    assert summary["teacher_ensemble"]["caches"] == [caches["other"]]
    assert summary["teacher_ensemble"]["combine"] == "confidence"
    member_cv = load_class_vectors(caches["tmp"] / "runs" / "ensemble" / "class_vectors_ensemble_1")
    assert member_cv.dim == 64 and member_cv.teacher.startswith("toy-teacher:")
    alone = run_distillation(_ensemble_job(caches, "alone", [], train={"epochs": 1, "warmup_epochs": 0}))
    ensemble_steps, alone_steps = _step_losses(result.run_dir), _step_losses(alone.run_dir)
    assert len(ensemble_steps) == 2 * 32 // 8 and len(alone_steps) == 32 // 8
    assert abs(ensemble_steps[0] - alone_steps[0]) > 1e-3  # the same student and batch: the member counts
    resident = run_distillation(
        _ensemble_job(caches, "resident", [caches["other"]], "confidence", data={"in_memory": "always"})
    )
    assert _step_losses(resident.run_dir) == pytest.approx(ensemble_steps, abs=1e-4)
