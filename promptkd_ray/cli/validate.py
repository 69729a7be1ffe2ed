"""`promptkd-ray validate FILE.yaml … [KEY=VALUE …]`: check job files and search spaces without running them.

Each file is loaded exactly as its command would load it (its `kind:` says which: types, choices,
cross-field rules, local paths) and its model names are looked up in open_clip's registry. A
search space (`kind: space`) is checked against its job (`job:`): every value of every key is
built into that job. Jobs meant for a cluster, whose data lives elsewhere, are checked with
`--no-path-check`.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "items",
        nargs="+",
        metavar="JOB.yaml|KEY=VALUE",
        help="job files to check, and overrides applied to each of them",
    )
    p.add_argument(
        "--no-path-check",
        action="store_true",
        help="do not require local paths to exist (jobs for another machine)",
    )


def run(args) -> int:
    from ..errors import ConfigError

    files = [item for item in args.items if "=" not in item]
    overrides = [item for item in args.items if "=" in item]
    failed = 0
    for path in files:
        try:
            print(check_file(path, overrides, check_paths=not args.no_path_check))
        except ConfigError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
    return 1 if failed else 0


def check_file(path: str, overrides=(), check_paths: bool = True) -> str:
    """Check a job or space file as `validate` does; → its "ok: …" line, or a ConfigError."""
    if is_space_file(path):
        return check_space_file(path, overrides, check_paths)
    return describe(check_job_file(path, overrides, check_paths=check_paths), path)


def describe(job, path: str) -> str:
    return (
        f"ok: {path} ({job.kind} job {job.name!r}: {job.data.source} data, {job.train.epochs} epochs, "
        f"{job.train.num_workers} worker(s))"
    )


def is_space_file(path: str) -> bool:
    from ..config.loader import read_yaml_file
    from ..errors import ConfigError

    try:
        raw = read_yaml_file(path)
    except ConfigError:
        return False  # the job loader says what is wrong with it
    return isinstance(raw, dict) and raw.get("kind") == "space"


def check_space_file(path: str, overrides=(), check_paths: bool = True) -> str:
    from ..tune import open_sweep

    sweep = open_sweep(path, "", overrides, check_paths=check_paths)
    space = sweep.space
    return (
        f"ok: {path} (space over {', '.join(space.params)} for {space.job}: {space.search.algorithm} search, "
        f"{space.scheduler.kind}, metric {space.metric})"
    )


def check_job_file(path: str, overrides=(), check_paths: bool = True):
    """Load a job of any kind as its command would, then check that its model names exist."""
    from ..config import load_job
    from ..config.loader import show_value
    from ..core.models.loading import ModelSpec, model_config
    from ..errors import ConfigError, ModelSpecError

    job = load_job(path, overrides, check_paths_exist=check_paths)
    for name in ("teacher", "student"):
        spec = getattr(getattr(job, name, None), "spec", "")
        if spec:
            model = ModelSpec.parse(spec).name
            if len(model) > 200:  # no open_clip name is this long; keep the message one short line
                raise ConfigError(f"{path}: {name}.spec names no open_clip model ({show_value(model)}).")
            try:
                model_config(model)
            except ModelSpecError as exc:
                raise ConfigError(f"{path}: {name}.spec: {exc}") from None
    return job
