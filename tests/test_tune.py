"""Sweeps: space files (checked value by value against their job, one sentence when wrong), a tiny
sweep under ASHA on the session's Ray (outputs, one shared soft-label cache, nothing left held; its
trials drawn by Optuna and tracked in MLflow). The sweep over teachers (a cache per teacher, selected on
val_accuracy, on S3) is the one submitted as a Ray job in tests/test_job_submit.py, whose driver is killed
and which resumes without re-running finished trials."""

import os
import time
from pathlib import Path

import pytest
import yaml
from stage2_fakes import make_split_json, tiny_job

from promptkd_ray.cli import main
from promptkd_ray.config.space import apply_params, read_space
from promptkd_ray.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write_space(folder: Path, job: "dict | Path", name: str = "space", **sections) -> Path:
    """A space file over `job` (a job mapping is written beside it); `sections` are its keys."""
    if isinstance(job, dict):
        job_path = folder / f"{name}_job.yaml"
        job_path.write_text(yaml.safe_dump(job))
    else:
        job_path = job
    space = {
        "kind": "space",
        "job": str(job_path),
        "metric": "heldout_kl",
        "params": {"loss.temperature": {"grid": [1, 4]}},
        **sections,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


@pytest.fixture
def tiny(tmp_path):
    root, _ = make_split_json(tmp_path / "data", per_class=10)
    return tiny_job(
        root, tmp_path / "runs", "sweepme", train={"epochs": 3, "batch_size": 8, "log_every": 1000}
    )


# --- space files ---------------------------------------------------------------------------------------


def test_every_shipped_space_validates_and_its_header_gives_the_command(capsys):
    spaces = sorted((REPO / "tune_spaces").glob("*.yaml"))
    assert {p.stem for p in spaces} >= {
        "toy",
        "toy_teachers",
        "temperature",
        "prompt_depth",
        "teacher_choice",
        "promptkd_joint",
        "toy_recipe",
        "teacher_ensemble",
    }
    cwd = os.getcwd()
    os.chdir(REPO)  # a space's job: is relative to where the command runs
    try:
        for path in spaces:
            assert f"promptkd-ray tune --space tune_spaces/{path.name}" in path.read_text(), path.name
            assert main(["validate", "--no-path-check", f"tune_spaces/{path.name}"]) == 0, (
                capsys.readouterr().err
            )
    finally:
        os.chdir(cwd)
    assert capsys.readouterr().out.count("ok: tune_spaces/") == len(spaces)


@pytest.mark.parametrize(
    "sections, words",
    [
        ({"params": {"loss.tempreature": {"grid": [1, 2]}}}, "unknown key loss.tempreature"),
        ({"params": {"student.depth": {"choice": []}}}, "params.student.depth: choice is empty"),
        ({"params": {"student.projector": {"choice": ["mlp2", "conv"]}}}, "student.projector must be one of"),
        ({"params": {"train.lr": {"grid": ["fast"]}}}, "train.lr must be a number"),
        (
            {"params": {"train.lr": {"loguniform": [0, 0.1]}}},
            "params.train.lr: loguniform needs low < high and low > 0",
        ),
        ({"params": {"loss.temperature": [1, 2]}}, "params.loss.temperature must be one domain"),
        ({"params": {}}, "params must map at least one job key"),
        ({"search": {"algorithm": "hyperband"}}, "search.algorithm must be one of grid, random, optuna"),
        (
            {"search": {"samples": 0}},
            "search.samples, search.val_shots and scheduler.grace_period must be ≥ 1",
        ),
        ({"scheduler": {"grace": 1}}, "unknown key scheduler.grace"),
        ({"metric": "loss"}, "metric must be one of heldout_kl, heldout_agreement, val_accuracy"),
        ({"metric": "val_accuracy"}, "ASHA cannot stop on it"),
        (
            {"params": {"teacher": {"choice": {"a": {"spec": "tiny-vit-teacher"}}}}},
            "must select on metric: val_accuracy",
        ),
        (
            {"params": {"teacher": {"grid": [{"spec": "tiny-vit-teacher"}]}}},
            "params.teacher takes named values",
        ),
        ({"search": {"algorithm": "optuna"}}, "optuna draws its trials; use choice instead of grid"),
        (
            {"params": {"data.image_size": {"grid": [32, 64]}}},
            "params.data.image_size changes what the teacher",
        ),
        ({"params": {"train.epochs": {"randint": [2, 4]}}}, "params.train.epochs takes a randint domain"),
    ],
)
def test_a_bad_space_is_one_sentence_naming_the_file_and_the_key_exit_2(
    tmp_path, tiny, capsys, sections, words
):
    path = write_space(tmp_path, tiny, **sections)
    assert main(["tune", "--space", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and words in err, err
    assert not (tmp_path / "runs").exists()  # nothing was started or written


def test_a_missing_job_or_a_space_that_is_not_one_is_refused(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("kind: distill\n")
    with pytest.raises(ConfigError, match="starts with `kind: space`"):
        read_space(path)
    path.write_text("kind: space\nparams: {loss.temperature: {grid: [1]}}\n")
    assert main(["tune", "--space", str(path)]) == 2
    assert "no job to sweep; give --config" in capsys.readouterr().err


def test_a_teacher_choice_names_the_whole_teacher_and_keeps_the_rest():
    raw = {"teacher": {"artifact": "runs/t/teacher", "class_vectors": "runs/t/cv", "templates": "imagenet60"}}
    out = apply_params(raw, {"teacher": {"spec": "ViT-L-14:openai"}, "loss.temperature": 2}, "s.yaml")
    assert out["teacher"] == {"spec": "ViT-L-14:openai", "templates": "imagenet60"}
    assert out["loss"] == {"temperature": 2} and raw["teacher"]["artifact"] == "runs/t/teacher"


def test_named_choices_reach_the_trial_as_their_values(tmp_path, tiny):
    from promptkd_ray.config import distill_job_from_dict
    from promptkd_ray.tune import open_sweep

    path = write_space(
        tmp_path,
        tiny,
        params={
            "student": {"choice": {"shallow": {"depth": 1, "n_ctx": 2}, "deep": {"depth": 2, "n_ctx": 4}}}
        },
    )
    sweep = open_sweep(str(path))
    job = distill_job_from_dict(sweep.trial_raw({"student": "deep"}, "x_00001", {"teacher": "/c"}))
    assert (job.student.depth, job.student.n_ctx, job.name, job.teacher.cache) == (
        2,
        4,
        "space-x_00001",
        "/c",
    )
    assert job.storage_path == str(tmp_path / "runs" / "sweeps" / "space" / "trials")


def test_the_space_becomes_tune_domains(tmp_path, tiny):
    from ray import tune

    from promptkd_ray.orchestration.tuning import tune_param_space

    space = read_space(
        write_space(
            tmp_path,
            tiny,
            search={"algorithm": "random", "samples": 4},
            params={
                "loss.temperature": {"choice": [1, 2]},
                "train.lr": {"loguniform": [1e-4, 1e-2]},
                "student.n_ctx": {"randint": [2, 5]},
                "student.depth": {"grid": [1, 2]},
            },
        )
    )
    domains = tune_param_space(space)
    assert isinstance(domains["loss.temperature"], tune.search.sample.Categorical)
    assert isinstance(domains["train.lr"].get_sampler(), tune.search.sample.LogUniform)
    assert (domains["student.n_ctx"].lower, domains["student.n_ctx"].upper) == (2, 5)
    assert domains["student.depth"] == {"grid_search": [1, 2]} and space.grid_size == 2


# --- sweeps on Ray -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_sweep_under_asha_writes_its_outputs_shares_one_cache_and_leaves_the_cluster_whole(
    tmp_path, tiny, ray_cluster, caplog, monkeypatch
):
    """Also the test that Optuna draws the trials (from a log-uniform domain too) and that MLflow gets
    their results: one sweep for both (each sweep builds a soft-label cache and starts trials)."""
    from mlflow.tracking import MlflowClient
    from ray.util import placement_group_table

    from promptkd_ray.config import load_distill_job
    from promptkd_ray.distill import run_distillation
    from promptkd_ray.tune import open_sweep, run_sweep

    monkeypatch.setenv(
        "MLFLOW_ALLOW_FILE_STORE", "true"
    )  # MLflow 3 wants a database; a folder is enough here
    uri = f"file://{tmp_path / 'mlruns'}"
    path = write_space(
        tmp_path,
        tiny,
        search={"algorithm": "optuna", "samples": 4, "seed": 0},
        scheduler={"kind": "asha", "grace_period": 1, "reduction_factor": 2},
        tracking={"mlflow_uri": uri, "experiment": "toy-sweep"},
        params={
            "loss.temperature": {"choice": [1, 4]},
            "student.depth": {"choice": [1, 2]},
            "train.lr": {"loguniform": [0.001, 0.05]},
        },
    )
    teachers_before = _teacher_actors(ray_cluster)
    with caplog.at_level("INFO"):
        report = run_sweep(open_sweep(str(path)))
    folder = Path(report.folder)
    assert (
        caplog.text.count("soft-label cache for teacher") == 1
        and (folder / "caches/teacher/manifest.json").exists()
    )
    # the build's pools only (one actor per view slot + the held-out slice); trials replay the cache
    assert _teacher_actors(ray_cluster) - teachers_before <= 3 + 1
    for job_file in (folder / "trials").glob("*/job.yaml"):
        assert yaml.safe_load(job_file.read_text())["teacher"]["cache"] == str(folder / "caches" / "teacher")
    assert len(report.trials) == 4 and {t.status for t in report.trials} <= {"completed", "stopped early"}
    assert report.best is not None and report.best.status == "completed" and report.best.epochs == 3
    finals = [t.final for t in report.trials if t.status == "completed"]
    assert report.best.final == min(finals)  # heldout_kl: lower is better
    rows = (folder / "trials.csv").read_text().splitlines()
    assert (
        rows[0].startswith("trial,loss.temperature,student.depth,train.lr,status,epochs,heldout_kl")
        and len(rows) == 5
    )
    assert "| rank | trial |" in (folder / "sweep.md").read_text()
    assert (folder / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert (folder / "best" / "student.safetensors").exists()
    # Optuna drew the trials from the space's domains; MLflow has one run per trial with its result
    assert all(
        t.params["loss.temperature"] in (1, 4)
        and t.params["student.depth"] in (1, 2)
        and 0.001 <= t.params["train.lr"] <= 0.05
        for t in report.trials
    )
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("toy-sweep").experiment_id])
    assert len(runs) == 4 and all("heldout_kl" in r.data.metrics for r in runs)
    assert {round(float(r.data.params["train.lr"]), 6) for r in runs} == {
        round(t.params["train.lr"], 6) for t in report.trials
    }
    deadline = time.monotonic() + 30  # a stopped trial's controller may take a moment to die
    while ray_cluster.available_resources().get("CPU") != ray_cluster.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, ray_cluster.available_resources()
        time.sleep(0.5)
    assert all(pg["state"] == "REMOVED" for pg in placement_group_table().values())
    best = load_distill_job(folder / "best_job.yaml")
    assert best.teacher.cache and best.name == "space-best"
    assert [e["images"] for e in run_distillation(best).history] == [
        32
    ] * 3  # the winner's job runs as written


def _teacher_actors(ray_cluster) -> int:
    """Teacher actors started on the session's cluster so far, alive or not (from the GCS: this
    cluster has no dashboard for the state API)."""
    from ray._private.state import actors

    return sum("TeacherPredictor" in a["ActorClassName"] for a in actors().values())


def test_concurrency_is_what_the_cluster_holds_in_cpus_gpus_and_custom_resources(tmp_path, tiny, monkeypatch):
    import ray

    from promptkd_ray.config import distill_job_from_dict
    from promptkd_ray.orchestration.tuning import trials_the_cluster_holds

    tiny["train"].update(num_workers=2, batch_size=8, use_gpu=True, resources_per_worker={"trainer": 1})
    job = distill_job_from_dict(tiny)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 64, "GPU": 8, "trainer": 4})
    assert trials_the_cluster_holds(job) == 2  # 4 trainer slots / 2 workers (GPUs would allow 4, CPUs 20)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 7, "GPU": 8, "trainer": 40})
    assert trials_the_cluster_holds(job) == 2  # 7 CPUs / (2 workers + 1 for reads + 0.1)


def test_a_restored_trial_counts_each_epoch_once_under_its_own_id(tmp_path, tiny):
    """Tune keeps a killed sweep's results and the restarted trial reports its epochs again; the
    restored trial's folder may carry a suffix (trial_X_00001_71aa) while its results say X_00001."""
    from types import SimpleNamespace

    import pandas as pd

    from promptkd_ray.sweep_report import collect_trials
    from promptkd_ray.tune import open_sweep

    sweep = open_sweep(str(write_space(tmp_path, tiny, scheduler={"kind": "fifo"})))
    rows = [
        {"trial_id": "ab123_00001", "epoch": e, "heldout_kl": kl, "time_total_s": t}
        for e, kl, t in ((0, 0.9, 5.0), (1, 0.7, 9.0), (0, 0.9, 2.0), (1, 0.7, 3.0), (2, 0.6, 8.0))
    ]
    result = SimpleNamespace(
        metrics=rows[-1],
        metrics_dataframe=pd.DataFrame(rows),
        error=None,
        path=str(tmp_path / "tune" / "trial_ab123_00001_71aa"),
        config={"loss.temperature": 1},
    )
    (trial,) = collect_trials(sweep, [result])
    assert (trial.trial_id, trial.epochs, trial.curve, trial.status) == (
        "ab123_00001",
        3,
        [0.9, 0.7, 0.6],
        "completed",
    )
    assert trial.run_dir.endswith("trials/space-ab123_00001")
