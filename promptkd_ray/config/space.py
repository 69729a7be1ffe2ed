"""Search spaces (`kind: space`, files in tune_spaces/): which job keys a sweep varies, over which
Tune domains, and how it searches, stops trials and selects the winner.

    kind: space
    job: jobs/toy_b2n.yaml            # the job it sweeps (`promptkd-ray tune --config` overrides it)
    metric: heldout_kl                # heldout_kl (min) | heldout_agreement (max) | val_accuracy (max)
    search: {algorithm: grid, samples: 1, seed: 0, max_concurrent: 0}
    scheduler: {kind: asha, grace_period: 1, reduction_factor: 2, max_epochs: 0}
    tracking: {mlflow_uri: "", experiment: ""}
    params:
      loss.temperature: {grid: [1, 2, 4, 8]}        # every value, crossed with the other grids
      student.depth: {choice: [3, 6, 9]}              # one of them per trial
      train.lr: {loguniform: [1.0e-4, 1.0e-2]}       # also uniform: [lo, hi]; randint: [lo, hi) (integers)
      teacher:                                        # named values of a whole section (grid: each one)
        grid: {zeroshot: {spec: "ViT-L-14:openai"}, promptsrc: {artifact: runs/t/teacher, class_vectors: …}}
      teacher.ensemble: {grid: [[], [b], [b, c]]}    # further teachers, named under members:
      teacher.combine: {grid: [mean, confidence]}
    members: {b: {spec: "ViT-B-16:openai"}, c: {artifact: runs/t2/teacher}}   # spec or artifact each

Design decisions:
- A value is checked by building the job with it, through the same strict loader as a job file:
  every grid/choice value and both ends of a range. So an unknown key, a value of the wrong type
  or outside a field's choices is one `ConfigError` naming the space file and the key.
- Values may be named (`{grid: {NAME: value, …}}`, or under choice): trials and tables show the
  name. A dict value sets keys of a section; under `teacher` it names the teacher completely
  (spec, artifact, class_vectors and cache start empty), so it never inherits the job's teacher.
- Temperature and depth trials are compared on a metric the swept values do not define: the
  held-out KL to the teacher at T = 1 or the held-out top-1 agreement — never the training loss
  at the swept T. Agreement with different teachers is not comparable, so a space over `teacher`
  must select on `val_accuracy` (labelled few-shot val images, never test), which is measured when
  a trial ends: it goes with `scheduler.kind: fifo`, as ASHA needs the metric every epoch.
- Ensembles (`teacher.ensemble`, with `search.cache: true` only): each value lists members by name,
  each a whole teacher (spec or artifact: a member scores the job's classes with its own text tower,
  so it takes no class vectors), named apart from the `teacher` choices. A listed value is named by
  its members ("b+c"; "none" for []), as trials and tables show it. The held-out agreement and KL
  are measured against the job's own teacher alone, so a space over teacher.ensemble or
  teacher.combine selects on `val_accuracy` too.
- A space file is read like a job file (`loader.read_yaml_file`: duplicate keys refused, every
  error one line), and its `job:` is read through `read_space_job`, so a missing or wrong job
  file is named as the space's `job` key.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import ConfigError
from .loader import (
    choice,
    convert,
    read_job_yaml,
    read_yaml_file,
    require_kind,
    set_dotted,
    show_key,
    show_value,
)
from .sections import SEED_MAX, folder_name_ok

METRICS = {"heldout_kl": "min", "heldout_agreement": "max", "val_accuracy": "max"}
DOMAINS = ("grid", "choice", "uniform", "loguniform", "randint")
TEACHER_IDENTITY = ("spec", "artifact", "class_vectors", "cache")
TRIAL_NAME_ROOM = 200  # bytes of a sweep name: its trials' run names append "-TRIAL_ID" to it
SPACE_KEYS = ("kind", "name", "job", "metric", "search", "scheduler", "tracking", "params", "members")
ENSEMBLE, COMBINE = "teacher.ensemble", "teacher.combine"
# what a member's cache is made with (its class vectors come from its own text tower, in the run)
MEMBER_FIELDS = ("spec", "artifact")


@dataclass(frozen=True)
class SearchConfig:
    algorithm: str = choice(
        "grid", "random", "optuna"
    )  # grid/random: Tune's variant generator; optuna: TPE (extra)
    samples: int = 1  # grid: repeats of the whole grid; random/optuna: trials drawn
    seed: int = 0  # seed of the random draws (random, optuna)
    max_concurrent: int = (
        0  # trials at once; 0 = as many as the cluster holds (a trial starts when all its workers fit)
    )
    cache: bool = (
        True  # one soft-label cache per teacher and view setting, built once (or reused), replayed by trials
    )
    val_shots: int = (
        16  # val_accuracy: labelled val images per base class (Stage I's few-shot val; never test)
    )


@dataclass(frozen=True)
class SchedulerConfig:
    kind: str = choice(
        "asha", "fifo"
    )  # asha: stop poor trials after any epoch; fifo: run every trial to the end
    grace_period: int = 1  # ASHA: epochs every trial runs before it can be stopped
    reduction_factor: float = 2.0  # ASHA: keep the best 1/η at each rung
    max_epochs: int = 0  # ASHA: the top rung (0 = the job's train.epochs)


@dataclass(frozen=True)
class TrackingConfig:
    mlflow_uri: str = ""  # MLflow tracking URI: http(s)://server, sqlite:///x.db, or file://folder (MLflow 3: MLFLOW_ALLOW_FILE_STORE=true); "" = none
    experiment: str = ""  # MLflow experiment name ("" = the sweep's name)


@dataclass(frozen=True)
class Space:
    kind: str = choice("space")  # a search space, run by `promptkd-ray tune`
    name: str = ""  # the sweep's name ("" = the file's name); its folder is storage_path/sweeps/NAME
    job: str = ""  # the job file it sweeps, relative to the working directory (`--config` overrides it)
    metric: str = choice(*METRICS)  # what selects the winner (see above)
    search: SearchConfig = field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    params: dict = field(default_factory=dict)  # dotted job key → {domain: values}, as read
    members: dict = field(default_factory=dict)  # ensemble member name → its teacher fields, as read
    source: str = ""  # the file it came from (for messages)

    @property
    def mode(self) -> str:
        return METRICS[self.metric]

    @property
    def grid_size(self) -> int:
        size = 1
        for domain in self.params.values():
            kind, values = domain_parts(domain)
            size *= len(values) if kind == "grid" else 1
        return size


def read_space(path: "str | os.PathLike") -> Space:
    """A space file, read and checked on its own (its values are checked against a job by `check_space`)."""
    source = str(path)
    if not os.path.isfile(path):
        raise ConfigError(f"{source}: no such space file.")
    raw = read_yaml_file(path)
    if not isinstance(raw, dict) or raw.get("kind") != "space":
        raise ConfigError(f"{source}: a space file starts with `kind: space`.")
    raw = dict(raw)
    params, members = raw.pop("params", None), raw.pop("members", None) or {}
    if not isinstance(params, dict) or not params:
        raise ConfigError(
            f"{source}: params must map at least one job key to a domain (e.g. "
            "loss.temperature: {grid: [1, 2, 4]})."
        )
    for key in raw:
        if key not in SPACE_KEYS:
            raise ConfigError(
                f"{source}: unknown key {show_key(key)} (known keys here: {', '.join(SPACE_KEYS)})."
            )
    sections = {"search": SearchConfig, "scheduler": SchedulerConfig, "tracking": TrackingConfig}
    values = {k: convert(sections[k], raw.pop(k), k, source) for k in list(raw) if k in sections}
    base = Space(**values, params=params, members=members, source=source)
    space = convert(Space, raw, "", source, base=base)
    if space.name and not folder_name_ok(space.name, TRIAL_NAME_ROOM):
        raise ConfigError(
            f"{source}: name must be a folder name (no '/', not '.' or '..', at most "
            f"{TRIAL_NAME_ROOM} bytes: trials add their ids), got {show_value(space.name)}."
        )
    for key, domain in params.items():
        if not (isinstance(key, str) and key.strip() and all(part.strip() for part in key.split("."))):
            raise ConfigError(
                f"{source}: params.{show_key(key)} is not a job key (a dotted key such as train.lr)."
            )
        _check_domain(space, key, domain)
    _check_rules(space)
    _check_members(space)
    return _check_ensemble(space) if ENSEMBLE in params else space


def read_space_job(space: Space, job_path: str = "") -> tuple[str, dict]:
    """The job file a space sweeps (`job_path`, else the space's `job:`) and its mapping, a distill job."""
    if not job_path:
        if not space.job:
            raise ConfigError(
                f"{space.source}: no job to sweep; give --config jobs/X.yaml or `job:` in the space file."
            )
        if not os.path.isfile(space.job):
            raise ConfigError(f"{space.source}: job names {show_value(space.job)}, which is not a job file.")
        job_path = space.job
    raw = read_job_yaml(job_path)
    require_kind(raw, job_path, ("distill",))
    return job_path, raw


def domain_parts(domain) -> tuple[str, Any]:
    ((kind, values),) = domain.items()
    return kind, values


def _check_domain(space: Space, key: str, domain) -> None:
    where = f"{space.source}: params.{show_key(key)}"
    if not isinstance(domain, dict) or len(domain) != 1 or next(iter(domain)) not in DOMAINS:
        raise ConfigError(
            f"{where} must be one domain, {{{'|'.join(DOMAINS)}: values}}, got {show_value(domain)}."
        )
    kind, values = domain_parts(domain)
    if kind in ("grid", "choice"):
        if not isinstance(values, (list, dict)) or not values:
            raise ConfigError(
                f"{where}: {kind} is empty; give at least one value (a list, or names → values)."
            )
        names = values if isinstance(values, dict) else {}
        bad = [name for name in names if not (isinstance(name, str) and name.strip())]
        if bad:
            raise ConfigError(
                f"{where}: {kind} value names must be non-empty strings, got {show_value(bad[0])}."
            )
        return
    if not (isinstance(values, list) and len(values) == 2 and all(_number(v) for v in values)):
        raise ConfigError(f"{where}: {kind} takes [low, high], two finite numbers, got {show_value(values)}.")
    low, high = values
    if (
        not low < high
        or (kind == "loguniform" and low <= 0)
        or (kind == "randint" and not all(float(v).is_integer() for v in values))
    ):
        raise ConfigError(
            f"{where}: {kind} needs low < high"
            + (" and low > 0" if kind == "loguniform" else "")
            + (", both integers" if kind == "randint" else "")
            + f", got {show_value(values)}."
        )


def _check_rules(space: Space) -> None:
    src, kinds = space.source, {domain_parts(d)[0] for d in space.params.values()}
    if "teacher" in space.params and not isinstance(domain_parts(space.params["teacher"])[1], dict):
        raise ConfigError(
            f"{src}: params.teacher takes named values, {{grid: {{NAME: {{spec: …, class_vectors: …}}, "
            "…}}}}, so trials and tables can name their teacher."
        )
    if "teacher" in space.params and space.metric != "val_accuracy":
        raise ConfigError(
            f"{src}: a space over teacher must select on metric: val_accuracy (agreement and KL "
            f"with different teachers are not comparable), not {space.metric}."
        )
    swept = [key for key in (ENSEMBLE, COMBINE) if key in space.params]
    if swept and space.metric != "val_accuracy":
        raise ConfigError(
            f"{src}: a space over {swept[0]} must select on metric: val_accuracy (the held-out agreement "
            f"and KL are measured against the job's own teacher alone, so they do not compare "
            f"ensembles), not {space.metric}."
        )
    if space.metric == "val_accuracy" and space.scheduler.kind == "asha":
        raise ConfigError(
            f"{src}: metric val_accuracy is measured when a trial ends, so ASHA cannot stop on it; "
            "use scheduler.kind: fifo."
        )
    if space.search.algorithm == "optuna" and "grid" in kinds:
        raise ConfigError(f"{src}: search.algorithm optuna draws its trials; use choice instead of grid.")
    if not 0 <= space.search.seed <= SEED_MAX:
        raise ConfigError(f"{src}: search.seed must be in 0 … {SEED_MAX}, got {space.search.seed}.")
    if (
        space.search.samples < 1
        or space.search.val_shots < 1
        or space.search.max_concurrent < 0
        or space.scheduler.grace_period < 1
        or space.scheduler.reduction_factor <= 1
        or space.scheduler.max_epochs < 0
    ):
        raise ConfigError(
            f"{src}: search.samples, search.val_shots and scheduler.grace_period must be ≥ 1, "
            "scheduler.reduction_factor > 1, max_concurrent and max_epochs ≥ 0."
        )


def _check_members(space: Space) -> None:
    """`members:` maps names to whole teachers (spec or artifact), named apart from the teacher choices."""
    src, members = space.source, space.members
    if not isinstance(members, dict) or not all(isinstance(n, str) and n.strip() for n in members):
        raise ConfigError(
            f"{src}: members maps names to teachers, {{NAME: {{spec: …}}}}, got {show_value(members)}."
        )
    teachers = domain_parts(space.params["teacher"])[1] if "teacher" in space.params else {}
    for name, fields in members.items():
        if not isinstance(fields, dict) or any(key not in MEMBER_FIELDS for key in fields):
            raise ConfigError(
                f"{src}: members.{show_key(name)} is a teacher given by spec or artifact alone (a member "
                f"scores the job's classes with its own text tower), got {show_value(fields)}."
            )
        if name in teachers:
            raise ConfigError(
                f"{src}: members.{show_key(name)} has the name of a choice of params.teacher; give the "
                "member another name."
            )


def _check_ensemble(space: Space) -> Space:
    """`teacher.ensemble` lists member names by grid or choice, with the sweep's caches; → the space
    with a listed domain named by members ("b+c", "none" for [])."""
    src, (kind, values) = space.source, domain_parts(space.params[ENSEMBLE])
    if kind not in ("grid", "choice"):
        raise ConfigError(
            f"{src}: params.teacher.ensemble lists member names by grid or choice, {{grid: [[], [b]]}}, "
            f"not by a {kind} domain."
        )
    if not space.search.cache:
        raise ConfigError(
            f"{src}: params.teacher.ensemble replays the soft-label caches the sweep builds for its "
            "members, so it needs search.cache: true."
        )
    for value in values.values() if isinstance(values, dict) else values:
        if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
            raise ConfigError(
                f"{src}: params.teacher.ensemble takes lists of member names, got {show_value(value)}."
            )
        unknown = [name for name in value if name not in space.members]
        if unknown:
            raise ConfigError(
                f"{src}: params.teacher.ensemble names {show_value(unknown[0])}, which is not one of the "
                f"space's members ({', '.join(space.members) or 'it names none under members:'})."
            )
    if isinstance(values, dict):
        return space
    names = [ensemble_name(value) for value in values]
    twice = [name for i, name in enumerate(names) if name in names[:i]]
    if twice:
        raise ConfigError(
            f"{src}: params.teacher.ensemble lists {show_value(twice[0])} twice (a listed ensemble is "
            f'named by its members, "none" for []); list it once, or name them: {{grid: {{NAME: [b], …}}}}.'
        )
    return replace(space, params={**space.params, ENSEMBLE: {kind: dict(zip(names, values))}})


def ensemble_name(members: list) -> str:
    """How trials and tables name a listed teacher ensemble: its members joined by "+" ("none": [])."""
    return "+".join(members) or "none"


def _number(value) -> bool:
    """A finite int or float (a range's ends; Tune draws floats between them)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 1e300


def candidate_values(domain) -> list:
    """The values a domain can give that the job must accept: every listed one, both ends of a range."""
    kind, values = domain_parts(domain)
    if kind in ("grid", "choice"):
        return list(values.values()) if isinstance(values, dict) else list(values)
    return [int(values[0]), int(values[1]) - 1] if kind == "randint" else [float(v) for v in values]


def apply_params(raw: dict, params: dict, source: str) -> dict:
    """A copy of job mapping `raw` with a trial's `params` (dotted key → value) set."""
    out = copy.deepcopy(raw)
    for key, value in params.items():
        value = copy.deepcopy(value)
        if isinstance(value, dict):
            section = out.get(key)
            section = out[key] = {} if section is None else section
            if not isinstance(section, dict):
                raise ConfigError(
                    f"{source}: params.{show_key(key)} sets keys of a section, and "
                    f"{show_key(key)} is not one."
                )
            if key == "teacher":
                for name in TEACHER_IDENTITY:
                    section.pop(name, None)
            section.update(value)
        else:
            set_dotted(out, key.split("."), value, source, f"params.{show_key(key)}")
    return out


def check_space(space: Space, raw_job: dict, build_job) -> Any:
    """Build the job once with each candidate value of each key (`build_job(raw, source)` → job);
    → the job with every key at its first value. Errors name the space file and the key."""
    first = {}
    for key, domain in space.params.items():
        values = candidate_values(domain)
        first[key] = values[0]
        for value in values:
            build_job(
                apply_params(raw_job, {key: value}, space.source),
                f"{space.source} (params.{key} = {_short(value)})",
            )
    return build_job(apply_params(raw_job, first, space.source), space.source)


def _short(value) -> str:
    return show_value(value)
