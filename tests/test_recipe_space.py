"""Sweeping a distillation recipe over shared soft-label caches: `teacher.cache_views` (replay only
a cache's first K view slots; refused in one sentence when negative, without a cache or above the
cache's K; a cut K = 1 run trains as a run on a K = 1 cache), the sweep's cache plan (one cache per
teacher and view setting, K = the most epochs; which cache each trial replays), ranges over view
keys refused, and one small sweep over mixup × epochs on the session's Ray."""

import json
from pathlib import Path

import pytest
import yaml
from stage2_fakes import fixed_teacher, make_split_json, tiny_job

from promptkd_ray.cli import main
from promptkd_ray.config import distill_job_from_dict
from promptkd_ray.errors import ConfigError


def write_space(folder: Path, job: dict, **sections) -> Path:
    """A space file over `job` (written beside it): loss.temperature unless `sections` say otherwise."""
    (folder / "job.yaml").write_text(yaml.safe_dump(job))
    space = {"kind": "space", "job": str(folder / "job.yaml"), "metric": "heldout_kl"}
    space["params"] = {"loss.temperature": {"grid": [1, 4]}}
    space.update(sections)
    (folder / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    return folder / "space.yaml"


@pytest.fixture
def tiny(tmp_path):
    root, _ = make_split_json(tmp_path / "data", per_class=10)
    return tiny_job(
        root, tmp_path / "runs", "recipe", train={"epochs": 2, "warmup_epochs": 0, "log_every": 1000}
    )


# --- teacher.cache_views ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "teacher, message",
    [
        (
            {"cache": "/c", "cache_views": -1},
            "job.yaml: teacher.cache_views must be ≥ 0 (0 = every view slot of the cache), got -1.",
        ),
        (
            {"cache_views": 2},
            "job.yaml: teacher.cache_views replays the first K view slots of a soft-label cache, so it "
            "needs teacher.cache.",
        ),
    ],
)
def test_a_bad_cache_views_is_refused_in_one_sentence(tiny, teacher, message):
    tiny["teacher"].update(teacher)
    with pytest.raises(ConfigError) as err:
        distill_job_from_dict(tiny, "job.yaml")
    assert str(err.value) == message


def test_a_cache_cut_to_its_first_k_slots_keeps_them_and_the_heldout_slice_and_refuses_more(tmp_path):
    from promptkd_ray.orchestration.cache import Cache
    from promptkd_ray.storage import Storage

    parts = {f"slot_{s:04d}": {"files": {f"part-{s}": "x"}, "rows": 4} for s in range(3)}
    cache = Cache(Storage(str(tmp_path)), {"views": 3, "parts": {**parts, "heldout": {"rows": 2}}, "key": {}})
    assert cache.first(0) is cache and cache.first(3) is cache
    cut = cache.first(2)
    assert cut.views == 2 and set(cut.manifest["parts"]) == {"slot_0000", "slot_0001", "heldout"}
    assert cut.manifest["key"] is cache.manifest["key"] and cache.views == 3  # the opened cache is unchanged
    with pytest.raises(ConfigError) as err:
        cache.first(5)
    assert str(err.value) == (
        f"teacher.cache_views is 5, but the soft-label cache {tmp_path} holds 3 views per image; set it "
        "to at most 3 (0 = all of them)."
    )


def test_resuming_with_another_cache_views_is_refused_as_another_run(tmp_path, tiny):
    """A checkpoint records K, the view slots its epochs replayed (epoch e reads slot e mod K), or that
    its views were streamed: a job that would replay another K, or a cache after streaming, is refused by
    the fingerprint check; the same K resumes, and so does a checkpoint made before K was recorded."""
    from types import SimpleNamespace

    from promptkd_ray.distill_setup import Setup
    from promptkd_ray.errors import CheckpointMismatchError
    from promptkd_ray.orchestration.cache import Cache
    from promptkd_ray.orchestration.checkpoints import check_fingerprint, new_progress
    from promptkd_ray.storage import Storage

    parts = {f"slot_{s:04d}": {"rows": 4} for s in range(3)}
    cache = Cache(Storage(str(tmp_path)), {"views": 3, "parts": parts, "key": {}})
    job = distill_job_from_dict(tiny)
    vectors = SimpleNamespace(dim=16, sha256="ab")

    def fingerprint(k: int) -> dict:
        return Setup(None, "teacher", "student", vectors, cache.first(k)).fingerprint(job)

    streamed = Setup(None, "teacher", "student", vectors).fingerprint(job)
    assert fingerprint(3)["views_replayed"] == 3 and streamed["views_replayed"] == "streamed"
    check_fingerprint(new_progress(fingerprint(0)), fingerprint(3), "epoch 1")  # all 3 slots = K of 3
    older = {k: v for k, v in fingerprint(3).items() if k != "views_replayed"}
    check_fingerprint(new_progress(older), fingerprint(2), "epoch 1")  # made before K was recorded
    with pytest.raises(CheckpointMismatchError, match=r"made with views_replayed=3, but the job now has 2;"):
        check_fingerprint(new_progress(fingerprint(3)), fingerprint(2), "epoch 1")
    with pytest.raises(
        CheckpointMismatchError, match=r"made with views_replayed='streamed', but the job now has 3;"
    ):
        check_fingerprint(new_progress(streamed), fingerprint(3), "epoch 1")
    other = dict(older, depth=older["depth"] + 1)  # a key every checkpoint records is still checked
    with pytest.raises(CheckpointMismatchError, match=r"made with depth="):
        check_fingerprint(new_progress(other), fingerprint(3), "epoch 1")


# --- the sweep's cache plan (no Ray) --------------------------------------------------------------------------


def _sweep(tmp_path, tiny, **sections):
    from promptkd_ray.tune import open_sweep

    return open_sweep(str(write_space(tmp_path, tiny, **sections)))


def test_a_space_over_no_view_setting_keeps_one_cache_at_caches_teacher(tmp_path, tiny):
    from promptkd_ray.tune import cache_plan

    sweep = _sweep(tmp_path, tiny)  # loss.temperature only
    assert cache_plan(sweep.space, sweep.job) == (2, {"teacher": {}})
    raw = sweep.trial_raw({"loss.temperature": 4}, "t_00001", {"teacher": "/c"})
    assert raw["teacher"]["cache"] == "/c"


def test_the_plan_builds_a_cache_per_mixup_value_of_the_most_epochs_and_each_trial_gets_its_own(
    tmp_path, tiny
):
    from promptkd_ray.tune import cache_plan

    params = {
        "train.epochs": {"grid": [2, 5]},
        "data.mixup_alpha": {"grid": [0, 0.2]},
        "teacher.cache_views": {"choice": [0, 1]},
        "loss.temperature": {"grid": [1, 4]},
    }
    sweep = _sweep(tmp_path, tiny, params=params)
    views, plan = cache_plan(sweep.space, sweep.job)
    assert views == 5 and plan == {
        "teacher-mixup_alpha0": {"data.mixup_alpha": 0},
        "teacher-mixup_alpha0.2": {"data.mixup_alpha": 0.2},
    }
    caches = {label: f"/caches/{label}" for label in plan}
    for alpha in (0, 0.2):
        point = {
            "train.epochs": 2,
            "data.mixup_alpha": alpha,
            "teacher.cache_views": 1,
            "loss.temperature": 4,
        }
        job = distill_job_from_dict(sweep.trial_raw(point, "t_00001", caches))
        assert job.teacher.cache == f"/caches/teacher-mixup_alpha{alpha}"
        assert (job.data.mixup_alpha, job.train.epochs, job.teacher.cache_views) == (alpha, 2, 1)


def test_teachers_crops_and_mixup_cross_and_mixup_prob_shares_a_cache_while_mixup_is_off(tmp_path, tiny):
    from promptkd_ray.tune import cache_label, cache_plan

    params = {
        "teacher": {"grid": {"a": {"spec": "tiny-vit-teacher"}, "b/x": {"spec": "tiny-vit-teacher"}}},
        "data.crop_scale_min": {"choice": {"wide": 0.08, "tight": 0.5}},
        "data.mixup_alpha": {"grid": [0, 0.4]},
        "data.mixup_prob": {"grid": [0.5, 1.0]},
    }
    sweep = _sweep(tmp_path, tiny, metric="val_accuracy", scheduler={"kind": "fifo"}, params=params)
    views, plan = cache_plan(sweep.space, sweep.job)
    assert views == 2 and len(plan) == 2 * 2 * 3  # mixup off: one cache for both mixup_prob values
    assert plan["b_x-crop_scale_min0.5-mixup_alpha0.4-mixup_prob0.5"] == {
        "teacher": "b/x",
        "data.crop_scale_min": "tight",
        "data.mixup_alpha": 0.4,
        "data.mixup_prob": 0.5,
    }
    off = {"teacher": "a", "data.crop_scale_min": "wide", "data.mixup_alpha": 0}
    assert {cache_label(sweep.space, sweep.job, {**off, "data.mixup_prob": p}) for p in (0.5, 1.0)} == {
        "a-crop_scale_min0.08-mixup_alpha0"
    }
    assert all("/" not in label for label in plan)  # one folder each, whatever the teacher's name


@pytest.mark.parametrize(
    "params, words",
    [
        ({"data.mixup_alpha": {"uniform": [0.1, 0.5]}}, "params.data.mixup_alpha takes a uniform domain"),
        (
            {"data.crop_scale_min": {"loguniform": [0.1, 0.5]}},
            "params.data.crop_scale_min takes a loguniform",
        ),
        ({"train.epochs": {"randint": [1, 4]}}, "params.train.epochs takes a randint domain"),
        ({"seed": {"grid": [0, 1]}}, "params.seed changes what the teacher sees"),
        ({"train": {"grid": [{"epochs": 2}, {"epochs": 3}]}}, "params.train changes what the teacher sees"),
        (
            {"train.epochs": {"grid": [2, 3]}, "teacher.cache_views": {"grid": [0, 4]}},
            "teacher.cache_views reaches 4, but the sweep's caches hold 3 views per image",
        ),
    ],
)
def test_a_space_the_shared_caches_cannot_serve_is_refused_in_one_sentence(
    tmp_path, tiny, capsys, params, words
):
    path = write_space(tmp_path, tiny, params=params)
    assert main(["tune", "--space", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and words in err, err
    if "takes a" in words:
        assert "list them with grid or choice" in err


def test_cache_views_without_the_sweeps_caches_is_refused_as_the_trial_would_be(tmp_path, tiny, capsys):
    path = write_space(
        tmp_path, tiny, search={"cache": False}, params={"teacher.cache_views": {"grid": [0, 1]}}
    )
    assert main(["tune", "--space", str(path)]) == 2
    err = capsys.readouterr().err
    assert "params.teacher.cache_views = 1" in err and "needs teacher.cache" in err


# --- on Ray ---------------------------------------------------------------------------------------------------


def _step_losses(run_dir) -> list:
    """(global step, loss) of every step, from the run's TensorBoard files (train.log_every = 1)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(run_dir) / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    return [(e.step, e.value) for e in events.Scalars("distill/step/loss")]


@pytest.mark.slow
def test_a_run_cut_to_one_view_slot_trains_epoch_1_on_slot_0_as_a_one_view_cache_does(tmp_path, ray_cluster):
    """Over a K = 2 cache, teacher.cache_views=1 replays slot 0 in epoch 1 (reordered, as epoch e ≥ K
    is): step for step the run on a cache built with K = 1; resident workers get the same slots."""
    from types import SimpleNamespace

    from promptkd_ray.distill import build_cache, run_distillation
    from promptkd_ray.distill_setup import resolve
    from promptkd_ray.orchestration.bookkeeping import Bookkeeping
    from promptkd_ray.orchestration.resident import resident_plan

    root, _ = make_split_json(tmp_path / "data", per_class=10)
    raw = tiny_job(
        root,
        tmp_path / "runs",
        "base",
        teacher={"spec": fixed_teacher(tmp_path / "teacher.safetensors")},  # both caches: the same features
        data={"preserve_order": True},
        train={"epochs": 2, "log_every": 1},
    )
    two = build_cache(distill_job_from_dict(raw), out=str(tmp_path / "k2"), views=2)
    build_cache(distill_job_from_dict(raw), out=str(tmp_path / "k1"), views=1)

    def run(name, cache, **teacher):
        job = json.loads(json.dumps(raw))
        job["name"] = name
        job["teacher"].update(cache=str(tmp_path / cache), **teacher)
        return run_distillation(distill_job_from_dict(job))

    reference = run("k1", "k1")
    cut = run("k2_cut", "k2", cache_views=1)
    expected = _step_losses(reference.run_dir)
    assert len(expected) == 2 * 32 // 8 and two.views == 2
    assert _step_losses(cut.run_dir) == [(s, pytest.approx(loss, abs=1e-4)) for s, loss in expected]
    metrics = json.loads((Path(cut.run_dir) / "metrics.json").read_text())
    student = json.loads((Path(cut.run_dir) / "student.json").read_text())
    assert metrics["cache_views"] == 1 and "cache_views" not in json.loads(
        (Path(reference.run_dir) / "metrics.json").read_text()
    )
    assert '"cache_views": 1' in json.dumps(student)  # the student's JSON records it too
    # resident workers take the cut cache's slots from their plan, as the replay does (no rule of theirs)
    always, workers = SimpleNamespace(in_memory="always", in_memory_mb=64), distill_job_from_dict(raw).train
    stream = resolve(distill_job_from_dict(raw))[0]
    plan = resident_plan(always, stream, workers, Bookkeeping(), two.first(1))
    assert [name for name, _ in plan.cache_slots] == ["slot_0000", "heldout"]
    with pytest.raises(
        ConfigError, match="teacher.cache_views is 3, but the soft-label cache .* holds 2 views"
    ):
        run("k2_over", "k2", cache_views=3)
    assert not (tmp_path / "runs" / "k2_over" / "checkpoint_epoch_000").exists()


@pytest.mark.slow
def test_a_sweep_over_mixup_and_epochs_builds_a_cache_per_mixup_value_and_each_trial_replays_its_own(
    tmp_path, tiny, ray_cluster
):
    from promptkd_ray.tune import open_sweep, run_sweep

    params = {"data.mixup_alpha": {"grid": [0, 0.3]}, "train.epochs": {"grid": [1, 2]}}
    tiny["data"]["in_memory"] = "always"  # trials decode the 32 images once (no Ray Data plan per epoch)
    path = write_space(tmp_path, tiny, scheduler={"kind": "fifo"}, params=params)
    report = run_sweep(open_sweep(str(path)))
    caches = Path(report.folder) / "caches"
    assert sorted(p.name for p in caches.iterdir()) == ["teacher-mixup_alpha0", "teacher-mixup_alpha0.3"]
    manifests = {p.name: json.loads((p / "manifest.json").read_text()) for p in caches.iterdir()}
    assert all(m["views"] == 2 for m in manifests.values())  # the most epochs
    assert manifests["teacher-mixup_alpha0.3"]["key"]["mixup"]["alpha"] == 0.3
    assert "mixup" not in manifests["teacher-mixup_alpha0"]["key"]
    assert len(report.trials) == 4 and {t.status for t in report.trials} == {"completed"}
    seen = set()
    for trial in report.trials:
        run = Path(trial.run_dir)
        job = yaml.safe_load((run / "job.yaml").read_text())
        alpha, epochs = trial.params["data.mixup_alpha"], trial.params["train.epochs"]
        assert (job["data"]["mixup_alpha"], job["train"]["epochs"]) == (alpha, epochs)
        assert job["teacher"]["cache"] == str(caches / f"teacher-mixup_alpha{alpha}")
        assert json.loads((run / "metrics.json").read_text())["epochs"] == epochs == trial.epochs
        seen.add((alpha, epochs))
    assert seen == {(0, 1), (0, 2), (0.3, 1), (0.3, 2)}
