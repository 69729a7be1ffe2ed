"""A cached sweep over teacher ensembles: a space names further teachers (`members:`) and sweeps
`teacher.ensemble` over lists of their names. The cache plan builds each named member's cache per view
setting (the same views, K = the most epochs), a trial replays its own cache and its members' in the
listed order, the refusals are one sentence each, and one small sweep on the session's Ray distils
from the ensemble it chose."""

import json
from pathlib import Path

import pytest
import yaml
from stage2_fakes import fixed_teacher, make_split_json, tiny_job

from promptkd_ray.config import distill_job_from_dict
from promptkd_ray.errors import ConfigError

MEMBERS = {"b": {"spec": "toy-teacher"}, "c": {"spec": "tiny-vit-teacher:openai"}}


def write_space(folder: Path, job: dict, **sections) -> Path:
    """A space over `job` (written beside it) choosing among ensembles of `MEMBERS`, on val_accuracy."""
    (folder / "job.yaml").write_text(yaml.safe_dump(job))
    space = {
        "kind": "space",
        "job": str(folder / "job.yaml"),
        "metric": "val_accuracy",
        "scheduler": {"kind": "fifo"},
        "members": MEMBERS,
        "params": {"teacher.ensemble": {"grid": [[], ["b"], ["b", "c"]]}},
    }
    space.update(sections)
    (folder / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    return folder / "space.yaml"


@pytest.fixture
def tiny(tmp_path):
    root, _ = make_split_json(tmp_path / "data", per_class=10, val_per_class=2)
    return tiny_job(
        root, tmp_path / "runs", "ens_sweep", train={"epochs": 2, "warmup_epochs": 0, "log_every": 1000}
    )


def _sweep(tmp_path, tiny, **sections):
    from promptkd_ray.tune import open_sweep

    return open_sweep(str(write_space(tmp_path, tiny, **sections)))


# --- the plan and each trial's caches (no Ray) ----------------------------------------------------------------


def test_the_plan_builds_each_named_member_per_view_setting_beside_each_teacher_choice(tmp_path, tiny):
    from promptkd_ray.tune import cache_plan

    params = {
        "teacher": {"grid": {"a": {"spec": "tiny-vit-teacher"}, "x": {"spec": "tiny-vit-teacher"}}},
        "data.mixup_alpha": {"grid": [0, 0.2]},
        "teacher.ensemble": {"grid": [[], ["c", "b"]]},
        "train.epochs": {"grid": [1, 3]},
    }
    sweep = _sweep(tmp_path, tiny, params=params)
    assert sweep.space.params["teacher.ensemble"] == {"grid": {"none": [], "c+b": ["c", "b"]}}
    views, plan = cache_plan(sweep.space, sweep.job)
    assert views == 3 and sorted(plan) == sorted(
        f"{who}-mixup_alpha{alpha}" for who in ("a", "x", "member-c", "member-b") for alpha in (0, 0.2)
    )
    assert plan["member-b-mixup_alpha0.2"] == {"member": "b", "data.mixup_alpha": 0.2}
    assert plan["x-mixup_alpha0"] == {"teacher": "x", "data.mixup_alpha": 0}


def test_the_plan_leaves_out_members_no_ensemble_names_and_keeps_one_cache_without_view_settings(
    tmp_path, tiny
):
    from promptkd_ray.tune import cache_plan

    sweep = _sweep(tmp_path, tiny, params={"teacher.ensemble": {"choice": {"solo": [], "duo": ["c"]}}})
    assert cache_plan(sweep.space, sweep.job) == (2, {"teacher": {}, "member-c": {"member": "c"}})


def test_each_trial_replays_its_own_cache_and_its_members_caches_of_its_view_setting_in_order(tmp_path, tiny):
    from promptkd_ray.tune import cache_plan

    params = {
        "data.mixup_alpha": {"grid": [0, 0.2]},
        "teacher.ensemble": {"grid": [[], ["b"], ["c", "b"]]},
        "teacher.combine": {"grid": ["mean", "confidence"]},
    }
    sweep = _sweep(tmp_path, tiny, params=params)
    caches = {label: f"/caches/{label}" for label in cache_plan(sweep.space, sweep.job)[1]}
    expected = {"none": (), "b": ("b",), "c+b": ("c", "b")}
    for alpha in (0, 0.2):
        for name, members in expected.items():
            point = {"data.mixup_alpha": alpha, "teacher.ensemble": name, "teacher.combine": "confidence"}
            job = distill_job_from_dict(sweep.trial_raw(point, "t_00001", caches))
            assert job.teacher.cache == f"/caches/teacher-mixup_alpha{alpha}"
            assert job.teacher.ensemble == tuple(f"/caches/member-{m}-mixup_alpha{alpha}" for m in members)
            assert (job.teacher.combine, job.data.mixup_alpha) == ("confidence", alpha)


# --- refusals, one sentence each ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sections, message",
    [
        (
            {"params": {"teacher.ensemble": {"grid": [[], ["z"]]}}},
            "params.teacher.ensemble names 'z', which is not one of the space's members (b, c).",
        ),
        (
            {"params": {"teacher": {"grid": {"a": {"spec": "toy-teacher"}, "b": {"spec": "toy-teacher"}}}}},
            "members.b has the name of a choice of params.teacher; give the member another name.",
        ),
        (
            {"params": {"teacher.ensemble": {"uniform": [0, 1]}}},
            "params.teacher.ensemble lists member names by grid or choice, {grid: [[], [b]]}, not by a "
            "uniform domain.",
        ),
        (
            {"search": {"cache": False}},
            "params.teacher.ensemble replays the soft-label caches the sweep builds for its members, so "
            "it needs search.cache: true.",
        ),
        (
            {"metric": "heldout_kl", "scheduler": {"kind": "asha"}},
            "a space over teacher.ensemble must select on metric: val_accuracy (the held-out agreement and "
            "KL are measured against the job's own teacher alone, so they do not compare ensembles), not "
            "heldout_kl.",
        ),
        (
            {"metric": "heldout_agreement", "params": {"teacher.combine": {"grid": ["mean", "confidence"]}}},
            "a space over teacher.combine must select on metric: val_accuracy (the held-out agreement and "
            "KL are measured against the job's own teacher alone, so they do not compare ensembles), not "
            "heldout_agreement.",
        ),
        (
            {"params": {"teacher.ensemble": {"grid": [["b"], ["b"]]}}},
            "params.teacher.ensemble lists 'b' twice (a listed ensemble is named by its members, \"none\" "
            "for []); list it once, or name them: {grid: {NAME: [b], …}}.",
        ),
        (
            {"members": {"b": {"spec": "toy-teacher", "class_vectors": "cv"}}},
            "members.b is a teacher given by spec or artifact alone (a member scores the job's classes "
            "with its own text tower), got {'class_vectors': 'cv', 'spec': 'toy-teacher'}.",
        ),
    ],
)
def test_a_space_an_ensemble_sweep_cannot_run_is_refused_in_one_sentence(tmp_path, tiny, sections, message):
    path = write_space(tmp_path, tiny, **sections)
    with pytest.raises(ConfigError) as err:
        _sweep(tmp_path, tiny, **sections)
    assert str(err.value) == f"{path}: {message}"


def test_a_job_that_names_its_own_ensemble_is_refused_before_the_sweep_builds_caches(tmp_path, tiny):
    tiny["teacher"]["ensemble"] = ["/some/cache"]
    path = write_space(tmp_path, tiny)
    with pytest.raises(ConfigError) as err:
        _sweep(tmp_path, tiny)
    assert str(err.value) == (
        f"{path}: the job already names teacher.ensemble; the sweep builds its own caches "
        "(search.cache: true), so drop it from the job or set search.cache: false."
    )


def test_a_member_is_checked_as_the_teacher_of_its_cache_build(tmp_path, tiny):
    with pytest.raises(ConfigError) as err:
        _sweep(tmp_path, tiny, members={**MEMBERS, "b": {"spec": "not a spec"}})
    assert "(members.b): teacher.spec must be MODEL[:PRETRAINED], got 'not a spec'." in str(err.value)


# --- a small sweep on Ray -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_sweep_over_no_ensemble_and_one_member_builds_both_caches_of_the_same_views(
    tmp_path, tiny, ray_cluster
):
    from promptkd_ray.config import load_distill_job
    from promptkd_ray.orchestration.cache_files import read_part_file
    from promptkd_ray.tune import open_sweep, run_sweep

    tiny["teacher"] = {"spec": fixed_teacher(tmp_path / "own.safetensors", "tiny-vit-teacher", 0)}
    tiny["train"]["epochs"] = 1
    tiny["data"].update(in_memory="always", mixup_alpha=0.3)  # mixed views: their partners must agree too
    member = {"spec": fixed_teacher(tmp_path / "b.safetensors", "toy-teacher", 1)}
    path = write_space(
        tmp_path,
        tiny,
        members={"b": member},
        search={"val_shots": 2},
        params={"teacher.ensemble": {"grid": [[], ["b"]]}},
    )
    report = run_sweep(open_sweep(str(path)))
    folder = Path(report.folder)
    caches = folder / "caches"
    assert sorted(p.name for p in caches.iterdir()) == ["member-b", "teacher"]
    own, other = (
        read_part_file(str(caches / n), "slot_0000/part-00000.parquet") for n in ("teacher", "member-b")
    )
    for column in (c for c in own if c != "teacher_feature"):  # ids, view boxes, flips, mixup partners and λ
        assert (own[column] == other[column]).all(), column
    assert "mix_partner" in own and (own["teacher_feature"].shape[1], other["teacher_feature"].shape[1]) == (
        48,
        64,
    )
    assert len(report.trials) == 2 and {t.status for t in report.trials} == {"completed"}
    for trial in report.trials:
        run = Path(trial.run_dir)
        metrics = json.loads((run / "metrics.json").read_text())
        student = json.loads((run / "student.json").read_text())
        assert yaml.safe_load((run / "job.yaml").read_text())["teacher"]["cache"] == str(caches / "teacher")
        if trial.params["teacher.ensemble"] == "b":
            assert metrics["teacher_ensemble"]["caches"] == [str(caches / "member-b")]
            assert str(caches / "member-b") in json.dumps(student)
        else:
            assert trial.params["teacher.ensemble"] == "none"
            assert "teacher_ensemble" not in metrics and "teacher_ensemble" not in json.dumps(student)
    rows = (folder / "trials.csv").read_text().splitlines()
    assert rows[0].startswith("trial,teacher.ensemble,status") and {r.split(",")[1] for r in rows[1:]} == {
        "none",
        "b",
    }
    assert "| b |" in (folder / "sweep.md").read_text() and "| none |" in (folder / "sweep.md").read_text()
    best = load_distill_job(folder / "best_job.yaml")  # runnable: its caches are the sweep's
    assert best.teacher.cache == str(caches / "teacher")
    expected = (str(caches / "member-b"),) if report.best.params["teacher.ensemble"] == "b" else ()
    assert best.teacher.ensemble == expected
    assert (
        f"# Its teacher ensemble: {report.best.params['teacher.ensemble']}"
        in (folder / "best_job.yaml").read_text()
    )
