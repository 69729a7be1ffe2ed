"""The strict loader every job file goes through: YAML → `key=value` overrides → frozen dataclasses.

Design decisions:
- A job YAML maps one to one onto a frozen dataclass: every section is a dataclass, every key a
  field whose comment says what it means. Loading is strict: an unknown key, a value of the wrong
  type or outside its choices ends in a `ConfigError`, one sentence that names the file and the
  dotted key (`jobs/x.yaml: train.epochs must be an integer, got '20 epochs'.`).
- Overrides (`train.epochs=2 data.root=/data`) are applied to the raw mapping before it is
  checked, so they obey the same rules; their values are parsed as YAML (`2` is an int, `null` is
  None, `{teacher: 1}` is a mapping; `1e-5` is a number although YAML 1.1 reads it as a string).
- Field metadata carries the rules a type cannot: `choice(...)` (allowed strings), `path_field()`
  (a local path or URI that must exist when set and local), `spec_field()` (a `MODEL[:WEIGHTS]`
  whose weights file must exist), and `presets` (a section whose `preset` key picks defaults that
  its other keys override, e.g. `loss: {preset: kdpl}`).
- Cross-field rules are each job kind's `checks(job)`: a list of (dotted key, message) pairs, the
  first of which is raised.
- Nothing here imports torch or Ray; PyYAML is imported when a file is read.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Callable, Dict, Sequence

from ..errors import ConfigError

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".tar")

Checks = Callable[[Any], "list[tuple[str, str]]"]


def choice(default: str, *others: str):
    """A string field that accepts only `default` and `others`."""
    return field(default=default, metadata={"choices": (default, *others)})


def path_field(default: str = "", artifact: bool = False):
    """A local path or URI that must exist when set and local (`artifact`: NAME.safetensors + NAME.json)."""
    return field(default=default, metadata={"path": "artifact" if artifact else "file"})


def spec_field(default: str = ""):
    """A model spec MODEL[:PRETRAINED] whose PRETRAINED, when it names a local file, must exist."""
    return field(default=default, metadata={"spec": True})


def section(cls, presets: "dict | None" = None):
    """A nested section; with `presets`, its `preset` key picks the defaults."""
    return field(default_factory=cls, metadata={"presets": presets} if presets else {})


def read_job_yaml(path: "str | os.PathLike") -> dict:
    """The mapping of sections in a job YAML file, or a one-sentence ConfigError."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Job file {path} does not exist.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({str(exc).splitlines()[0]}).") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, found a {type(raw).__name__}.")
    return raw


JOB_KINDS = {"distill": "Stage II, `promptkd-ray distill`", "teacher": "Stage I, `promptkd-ray teacher`"}


def require_kind(raw: dict, source: str, kinds: Sequence[str] = tuple(JOB_KINDS)) -> str:
    """The job file's `kind:` when it is one of `kinds`, else a ConfigError that says what to do."""
    found = raw.get("kind")
    if found in kinds:
        return found
    if found is None:
        choices = " or ".join(f"`kind: {k}` ({JOB_KINDS[k]})" for k in kinds)
        raise ConfigError(f"{source}: kind must be set: {choices}.")
    if found in JOB_KINDS:
        raise ConfigError(f"{source} is a {found} job ({JOB_KINDS[found]}), but this command runs "
                          f"{' or '.join(kinds)} jobs.")
    raise ConfigError(f"{source}: kind must be one of {', '.join(JOB_KINDS)}, got {_show(found)}.")


def build(cls, raw: dict, source: str, overrides: Sequence[str] = (), checks: "Checks | None" = None):
    """Apply `key=value` overrides to a copy of `raw`, convert it strictly into the frozen
    dataclass `cls`, and raise the first of `checks(job)`'s (dotted key, message) problems."""
    raw = _deepcopy(raw)
    for text in overrides:
        apply_override(raw, text, source)
    job = convert(cls, raw, "", source)
    for key, message in (checks(job) if checks else []):
        raise ConfigError(f"{source}: {key} {message}")
    return job


def to_dict(job) -> dict:
    """A job as plain nested dicts (YAML-ready; preset sections written out in full)."""
    return dataclasses.asdict(job)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` → (["a", "b"], YAML-parsed value)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected an override as KEY=VALUE (e.g. train.epochs=2), got {text!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def apply_override(raw: dict, text: str, source: str) -> None:
    try:
        keys, value = parse_override(text)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}.") from None
    node = raw
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: override {text!r} goes inside {'.'.join(keys[:i + 1])}, which is not a section.")
        node = child
    node[keys[-1]] = value


def _deepcopy(value):
    if isinstance(value, dict):
        return {k: _deepcopy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deepcopy(v) for v in value]
    return value


def convert(cls, raw, prefix: str, source: str, base=None):
    """Build dataclass `cls` from mapping `raw` (on top of `base`, default `cls()`), naming
    `prefix.key` in every error."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix or 'the top level'} must be a mapping of keys, got {_show(raw)}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{source}: unknown key {_dotted(prefix, key)} (known keys here: {', '.join(fields)}).")
    values = {}
    for name in raw:
        f, key = fields[name], _dotted(prefix, name)
        if dataclasses.is_dataclass(hints[name]):
            values[name] = _convert_section(hints[name], raw[name], key, source, f.metadata.get("presets"))
        else:
            values[name] = check_value(raw[name], hints[name], key, source)
        allowed = f.metadata.get("choices")
        if allowed and values[name] not in allowed:
            raise ConfigError(f"{source}: {key} must be one of {', '.join(allowed)}, got {_show(values[name])}.")
    try:
        return dataclasses.replace(base if base is not None else cls(), **values)
    except ValueError as exc:  # __post_init__ checks (e.g. LossConfig)
        raise ConfigError(f"{source}: {exc}") from None


def _convert_section(cls, raw, key: str, source: str, presets: "dict | None"):
    if not presets or not isinstance(raw, dict) or "preset" not in raw:
        return convert(cls, raw, key, source)
    raw = dict(raw)
    preset = raw.pop("preset")
    if preset not in presets:
        raise ConfigError(f"{source}: {key}.preset must be one of {sorted(presets)}, got {_show(preset)}.")
    return convert(cls, raw, key, source, base=presets[preset])


def check_value(value, hint, key: str, source: str):
    """`value` as the type `hint` (bool, int, float, str, Optional, Dict[str, float]),
    or a ConfigError naming `key`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union and type(None) in args:
        if value is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return check_value(value, hint, key, source)
    checks = {
        bool: (lambda v: isinstance(v, bool), lambda v: v, "true or false"),
        int: (lambda v: isinstance(v, int) and not isinstance(v, bool), lambda v: v, "an integer"),
        float: (_is_number, lambda v: float(v), "a number"),
        str: (lambda v: isinstance(v, str), lambda v: v, "a string"),
    }
    if hint in checks:
        ok, cast, what = checks[hint]
        if ok(value):
            return cast(value)
        raise ConfigError(f"{source}: {key} must be {what}, got {_show(value)}.")
    if origin in (dict, Dict):
        if isinstance(value, dict) and all(isinstance(k, str) and _is_number(v) and not isinstance(v, str)
                                           for k, v in value.items()):
            return {k: float(v) for k, v in value.items()}
        raise ConfigError(f"{source}: {key} must be a mapping of names to numbers, got {_show(value)}.")
    raise TypeError(f"config field {key} has an unsupported type {hint}")  # a bug in a config module


def _is_number(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, str) and bool(_FLOAT.fullmatch(value.strip()))  # YAML 1.1 reads 1e-5 as a string


def _dotted(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
