"""`promptkd-ray validate JOB.yaml … [KEY=VALUE …]`: check job files without running them.

Each file is loaded exactly as `distill` would load it (types, choices, cross-field rules, local
paths) and its model names are looked up in open_clip's registry. Jobs meant for a cluster, whose
data lives elsewhere, are checked with `--no-path-check`.
"""

from __future__ import annotations

import argparse
import sys

HELP = "Check job YAML files without running them."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("items", nargs="+", metavar="JOB.yaml|KEY=VALUE",
                   help="job files to check, and overrides applied to each of them")
    p.add_argument("--no-path-check", action="store_true",
                   help="do not require local paths to exist (jobs for another machine)")


def run(args) -> int:
    from ..config import ConfigError

    files = [item for item in args.items if "=" not in item]
    overrides = [item for item in args.items if "=" in item]
    failed = 0
    for path in files:
        try:
            job = check_job_file(path, overrides, check_paths=not args.no_path_check)
        except ConfigError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
            continue
        print(f"ok: {path} (run {job.name!r}: {job.data.source} data, {job.train.epochs} epochs, "
              f"{job.train.num_workers} worker(s))")
    return 1 if failed else 0


def check_job_file(path: str, overrides=(), check_paths: bool = True):
    """Load a job as `distill` would (or as `teacher` would: a Stage I job has no `student` section), then
    check that its model names exist."""
    from ..config import ConfigError, load_job
    from ..models.loading import ModelSpec, ModelSpecError, model_config

    if _is_teacher_job(path):
        from ..teacher_job import load_teacher_job

        job = load_teacher_job(path, overrides)
        specs = [("teacher.spec", job.teacher.spec)]
    else:
        job = load_job(path, overrides, check_paths=check_paths)
        specs = [("teacher.spec", job.teacher.spec), ("student.spec", job.student.spec)]
    for key, spec in specs:
        if spec:
            try:
                model_config(ModelSpec.parse(spec).name)
            except ModelSpecError as exc:
                raise ConfigError(f"{path}: {key}: {exc}") from None
    return job


def _is_teacher_job(path: str) -> bool:
    import yaml

    try:
        raw = yaml.safe_load(open(path).read())
    except (OSError, yaml.YAMLError):
        return False  # load_job reports it
    return isinstance(raw, dict) and "student" not in raw
