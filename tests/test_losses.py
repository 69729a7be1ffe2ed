"""Losses against values computed by hand on small tensors (no Ray, no models)."""

import dataclasses
import math

import pytest
import torch

from promptkd_ray.core import losses
from promptkd_ray.core.loss_config import LOSS_PRESETS, LossConfig
from promptkd_ray.core.losses import compute_loss

S = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
T = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])


def _softmax(row):
    e = [math.exp(v) for v in row]
    return [x / sum(e) for x in e]


def _kl(p, q):  # KL(p ‖ q)
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def _kl_sum(s, t, temp):
    return sum(
        _kl(_softmax([v / temp for v in tr]), _softmax([v / temp for v in sr]))
        for sr, tr in zip(s.tolist(), t.tolist())
    )


@pytest.mark.parametrize("temp", [1.0, 2.5])
def test_kd_kl_authors_normalisation_is_sum_over_b_times_n(temp):
    expected = 7.0 * _kl_sum(S, T, temp) * temp**2 / (2 * 3)
    got = losses.kd_kl(S, T, temperature=temp, normalization="authors", weight=7.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("temp", [1.0, 2.5])
def test_kd_kl_batchmean_normalisation_is_sum_over_b(temp):
    expected = _kl_sum(S, T, temp) * temp**2 / 2
    got = losses.kd_kl(S, T, temperature=temp, normalization="batchmean")
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kd_kl_is_zero_for_equal_logits_and_rejects_bad_args():
    assert losses.kd_kl(S, S).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="normalization"):
        losses.kd_kl(S, T, normalization="mean")
    with pytest.raises(ValueError, match="same shape"):
        losses.kd_kl(S, T[:, :2])


def test_symmetric_kl_matches_hand_value_and_is_symmetric():
    expected = (
        sum(
            0.5 * _kl(_softmax(t), _softmax(s)) + 0.5 * _kl(_softmax(s), _softmax(t))
            for s, t in zip(S.tolist(), T.tolist())
        )
        / 2
    )
    assert losses.symmetric_kl(S, T).item() == pytest.approx(expected, rel=1e-5)
    assert losses.symmetric_kl(S, T).item() == pytest.approx(losses.symmetric_kl(T, S).item(), rel=1e-6)


def test_feature_losses_match_hand_values():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([[0.0, 2.0], [5.0, 1.0]])
    assert losses.feature_loss(a, b, "l1").item() == pytest.approx((1 + 0 + 2 + 3) / 4)
    assert losses.feature_loss(a, b, "mse").item() == pytest.approx((1 + 0 + 4 + 9) / 4)


def test_ifalign_is_zero_for_equal_statistics_and_matches_hand_value():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    permuted = a[[1, 0]]  # same batch statistics, different rows
    assert losses.ifalign(a, permuted).item() == pytest.approx(0.0, abs=1e-7)
    b = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    # μ_a = (2, 3), μ_b = (1, 0); σ²_a = (1, 1), σ²_b = (1, 0)
    assert losses.ifalign(a, b).item() == pytest.approx((1 + 3) + (0 + 1))


def test_class_agnostic_topk_picks_highest_mean_teacher_probabilities():
    t = torch.tensor([[5.0, 0.0, 4.0, -1.0], [5.0, 0.0, 4.5, -2.0]])
    assert sorted(losses.class_agnostic_topk(t, 2).tolist()) == [0, 2]


def test_loss_config_composes_terms_and_validates():
    total, parts = compute_loss(S, T, torch.randn(2, 4), torch.randn(2, 4), LOSS_PRESETS["comkd"])
    assert set(parts) == {"kd", "ifalign"}
    assert total.item() == pytest.approx(parts["kd"] + parts["ifalign"], rel=1e-5)
    with pytest.raises(ValueError, match="loss.kd must be one of"):
        LossConfig(kd="l2")
    with pytest.raises(ValueError, match="enables no term"):
        compute_loss(S, T, S, T, LossConfig(kd="none"))


# ----------------------------------------------------------------------------- one distillation step
def _step_setup(seed: int = 3):
    from promptkd_ray.core.models import build_student

    torch.manual_seed(seed)
    student = build_student("tiny-vit-student", teacher_dim=48, n_ctx=2, depth=2).train()
    images = torch.randn(4, 3, 32, 32)
    class_vectors = torch.nn.functional.normalize(torch.randn(6, 48), dim=-1)
    teacher_features = torch.nn.functional.normalize(torch.randn(4, 48), dim=-1)
    with torch.no_grad():  # the logits the step sees: BatchNorm in training mode, as in the step
        s_logits = student(images, class_vectors).float()
    torch.manual_seed(seed)
    student = build_student("tiny-vit-student", teacher_dim=48, n_ctx=2, depth=2)  # same init again
    return student, images, class_vectors, teacher_features, s_logits


def test_distill_step_kdpl_uses_the_students_logit_scale_for_the_teacher():
    from promptkd_ray.core.step import distill_step

    student, images, w, u_t, s_logits = _step_setup()
    scale_s = float(student.logit_scale)
    assert scale_s != 7.0
    cfg = LOSS_PRESETS["kdpl"]
    out = distill_step(
        student,
        images,
        u_t,
        w,
        torch.optim.SGD(student.trainable_parameters(), lr=0.0),
        cfg,
        teacher_logit_scale=7.0,
    )
    by_hand = losses.symmetric_kl(s_logits, scale_s * u_t @ w.t())
    assert out["loss"] == pytest.approx(float(by_hand), rel=1e-4)
    with_teachers = losses.symmetric_kl(s_logits, 7.0 * u_t @ w.t())
    assert abs(float(with_teachers) - float(by_hand)) > 1e-3  # the scale rule is what the test sees


def test_distill_step_class_agnostic_k_restricts_both_logit_sets_to_the_teachers_top_k():
    from promptkd_ray.core.step import distill_step

    student, images, w, u_t, s_logits = _step_setup()
    scale_s = float(student.logit_scale)
    cfg = dataclasses.replace(LOSS_PRESETS["kdpl_ca"], class_agnostic_k=2)
    out = distill_step(
        student,
        images,
        u_t,
        w,
        torch.optim.SGD(student.trainable_parameters(), lr=0.0),
        cfg,
        teacher_logit_scale=7.0,
    )
    t_logits = scale_s * u_t @ w.t()
    mean_prob = torch.softmax(t_logits, -1).mean(0)
    keep = sorted(range(6), key=lambda c: -float(mean_prob[c]))[:2]
    by_hand = losses.symmetric_kl(s_logits[:, keep], t_logits[:, keep])
    assert out["loss"] == pytest.approx(float(by_hand), rel=1e-4)
    assert abs(out["loss"] - float(losses.symmetric_kl(s_logits, t_logits))) > 1e-3


def test_distill_step_stops_on_a_non_finite_loss_in_one_sentence_naming_its_terms():
    """A diverged student (here: a teacher feature that is NaN) ends the step with a DivergedError that
    names the loss and its terms, instead of returning a NaN that a run would train on at chance."""
    from promptkd_ray.core.step import distill_step
    from promptkd_ray.errors import DivergedError, PromptKDError

    def step(nan_feature: bool) -> dict:
        student, images, w, u_t, _ = _step_setup()  # a fresh student each time: a NaN step spoils it
        if nan_feature:
            u_t = u_t.clone()
            u_t[1, 0] = float("nan")
        optimizer = torch.optim.SGD(student.trainable_parameters(), lr=0.0)
        return distill_step(student, images, u_t, w, optimizer, LOSS_PRESETS["promptkd"], 7.0)

    with pytest.raises(
        DivergedError, match=r"^The training loss became nan \(kd nan\): the student diverged"
    ) as err:
        step(nan_feature=True)
    assert isinstance(err.value, PromptKDError) and "lower train.lr or set train.grad_clip_norm" in str(
        err.value
    )
    assert str(err.value).count(". ") == 0 and str(err.value).endswith(".")
    assert math.isfinite(step(nan_feature=False)["loss"])
