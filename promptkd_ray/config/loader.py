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
- Whatever a file holds, reading it ends in a job or in one `ConfigError` line, never a traceback
  (`tests/test_config_fuzz.py` mutates the shipped files to hold it): YAML is read as bytes with
  duplicate keys refused (a silent "last one wins" would change a job); anchors may be recursive or
  shared, so copies keep their sharing and every value shown in a message is cut to 60 characters;
  numbers must be finite and integers fit 64 bits; strings hold no control characters and at most
  `MAX_STRING` characters, so a value is always one line of a message and a usable path part.
- Nothing here imports torch or Ray; PyYAML is imported when a file is read.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
import re
import reprlib
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Callable, Dict, Sequence, Tuple

from ..errors import ConfigError

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".tar")
MAX_STRING = 4096  # longest string value (PATH_MAX on Linux): longer ones are refused, not cut
INT_RANGE = (-(2**63), 2**63 - 1)  # integers go to torch, numpy and Arrow as int64
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SHOW = reprlib.Repr()
_SHOW.maxstring, _SHOW.maxother, _SHOW.maxlevel = 60, 60, 3

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
    if not os.path.isfile(path):
        raise ConfigError(f"Job file {path} does not exist.")
    raw = read_yaml_file(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, found a {type(raw).__name__}.")
    return raw


def read_yaml_file(path: "str | os.PathLike"):
    """The document of a YAML file (bytes in: PyYAML detects UTF-8/16), or a one-sentence ConfigError."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read ({exc.strerror or type(exc).__name__}).") from None
    return load_yaml(data, str(path))


def load_yaml(data: "bytes | str", source: str):
    """Parse one YAML document with duplicate keys refused; a ConfigError naming `source` and the line."""
    import yaml

    try:
        return yaml.load(data, Loader=_strict_loader())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{source} is not valid YAML ({_one_line(exc.problem or exc.context)}{where})."
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML ({_one_line(str(exc))}).") from None
    except RecursionError:
        raise ConfigError(f"{source} is not a usable YAML file (its values nest too deeply).") from None


@functools.lru_cache(maxsize=1)
def _strict_loader():
    """yaml.SafeLoader that refuses a key given twice in one mapping (merge keys `<<` excepted)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen = set()
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=True)
                    if key_node.tag == "tag:yaml.org,2002:merge" or not _hashable(key):
                        continue  # unhashable keys: SafeLoader's own error
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None,
                            None,
                            f"key {show_value(key)} appears twice in one mapping",
                            key_node.start_mark,
                        )
                    seen.add(key)
            return super().construct_mapping(node, deep)

    return StrictLoader


def _hashable(value) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


JOB_KINDS = {"distill": "Stage II, `promptkd-ray distill`", "teacher": "Stage I, `promptkd-ray teacher`"}


def require_kind(raw: dict, source: str, kinds: Sequence[str] = tuple(JOB_KINDS)) -> str:
    """The job file's `kind:` when it is one of `kinds`, else a ConfigError that says what to do."""
    found = raw.get("kind")
    if not isinstance(found, (str, type(None))):
        raise ConfigError(f"{source}: kind must be one of {', '.join(JOB_KINDS)}, got {show_value(found)}.")
    if found in kinds:
        return found
    if found is None:
        choices = " or ".join(f"`kind: {k}` ({JOB_KINDS[k]})" for k in kinds)
        raise ConfigError(f"{source}: kind must be set: {choices}.")
    if found in JOB_KINDS:
        raise ConfigError(
            f"{source} is a {found} job ({JOB_KINDS[found]}), but this command runs "
            f"{' or '.join(kinds)} jobs."
        )
    raise ConfigError(f"{source}: kind must be one of {', '.join(JOB_KINDS)}, got {show_value(found)}.")


def build(cls, raw: dict, source: str, overrides: Sequence[str] = (), checks: "Checks | None" = None):
    """Apply `key=value` overrides to a copy of `raw`, convert it strictly into the frozen
    dataclass `cls`, and raise the first of `checks(job)`'s (dotted key, message) problems."""
    raw = copy.deepcopy(raw)  # keeps shared (and recursive) YAML anchors shared: no blow-up
    for text in overrides:
        apply_override(raw, text, source)
    job = convert(cls, raw, "", source)
    for key, message in checks(job) if checks else []:
        raise ConfigError(f"{source}: {key} {message}")
    return job


def to_dict(job) -> dict:
    """A job as plain nested dicts (YAML-ready: lists, not tuples; preset sections written out in full)."""
    return _plain(dataclasses.asdict(job))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` → (["a", "b"], YAML-parsed value)."""
    import yaml

    key, sep, value = text.partition("=")
    keys = key.strip().split(".")
    if not sep or not all(k.strip() for k in keys):
        raise ValueError(
            "expected an override as KEY=VALUE with a dotted KEY (e.g. train.epochs=2), "
            f"got {show_value(text)}"
        )
    try:
        parsed = yaml.load(value, Loader=_strict_loader()) if value.strip() else ""
    except (yaml.YAMLError, RecursionError):
        parsed = value
    return keys, parsed


def apply_override(raw: dict, text: str, source: str) -> None:
    try:
        keys, value = parse_override(text)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}.") from None
    set_dotted(raw, keys, value, source, f"override {show_value(text)}")


def set_dotted(raw: dict, keys: Sequence[str], value, source: str, what: str) -> None:
    """raw[k1][k2]…[kn] = value, creating sections on the way (an empty one, `null`, included);
    `what` names the setting in the error when a key on the way is not a section."""
    node = raw
    for i, key in enumerate(keys[:-1]):
        if node.get(key) is None:
            node[key] = {}
        if not isinstance(node[key], dict):
            raise ConfigError(
                f"{source}: {what} goes inside {show_key('.'.join(keys[: i + 1]))}, which is not a section."
            )
        node = node[key]
    node[keys[-1]] = value


def convert(cls, raw, prefix: str, source: str, base=None):
    """Build dataclass `cls` from mapping `raw` (on top of `base`, default `cls()`), naming
    `prefix.key` in every error."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: {prefix or 'the top level'} must be a mapping of keys, got {show_value(raw)}."
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(
                f"{source}: unknown key {_dotted(prefix, show_key(key))} "
                f"(known keys here: {', '.join(fields)})."
            )
    values = {}
    for name in raw:
        f, key = fields[name], _dotted(prefix, name)
        if dataclasses.is_dataclass(hints[name]):
            values[name] = _convert_section(hints[name], raw[name], key, source, f.metadata.get("presets"))
        else:
            values[name] = check_value(raw[name], hints[name], key, source)
        allowed = f.metadata.get("choices")
        if allowed and values[name] not in allowed:
            raise ConfigError(
                f"{source}: {key} must be one of {', '.join(allowed)}, got {show_value(values[name])}."
            )
    try:
        return dataclasses.replace(base if base is not None else cls(), **values)
    except ValueError as exc:  # __post_init__ checks (e.g. LossConfig)
        raise ConfigError(f"{source}: {exc}") from None


def _convert_section(cls, raw, key: str, source: str, presets: "dict | None"):
    if not presets or not isinstance(raw, dict) or "preset" not in raw:
        return convert(cls, raw, key, source)
    raw = dict(raw)
    preset = raw.pop("preset")
    if not isinstance(preset, str) or preset not in presets:
        raise ConfigError(
            f"{source}: {key}.preset must be one of {sorted(presets)}, got {show_value(preset)}."
        )
    return convert(cls, raw, key, source, base=presets[preset])


def check_value(value, hint, key: str, source: str):
    """`value` as the type `hint` (bool, int, float, str, Optional, Dict[str, float], Tuple[str, ...]
    from a list of strings), or a ConfigError naming `key`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union and type(None) in args:
        if value is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return check_value(value, hint, key, source)
    checks = {
        bool: (lambda v: isinstance(v, bool), lambda v: v, "true or false"),
        int: (_is_int, lambda v: v, "an integer"),
        float: (_is_number, lambda v: float(v), "a number"),
        str: (_is_text, lambda v: v, "a string"),
    }
    if hint in checks:
        ok, cast, what = checks[hint]
        if ok(value):
            return cast(value)
        raise ConfigError(f"{source}: {key} must be {what}{_why_not(value, hint)}, got {show_value(value)}.")
    if origin in (dict, Dict):
        if isinstance(value, dict) and all(
            _is_text(k) and k.strip() and _is_number(v) and not isinstance(v, str) for k, v in value.items()
        ):
            return {k: float(v) for k, v in value.items()}
        raise ConfigError(f"{source}: {key} must be a mapping of names to numbers, got {show_value(value)}.")
    if origin in (tuple, Tuple) and args == (str, Ellipsis):
        if isinstance(value, list) and all(_is_text(v) and v.strip() for v in value):
            return tuple(value)
        raise ConfigError(f"{source}: {key} must be a list of non-empty strings, got {show_value(value)}.")
    raise TypeError(f"config field {key} has an unsupported type {hint}")  # a bug in a config module


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and INT_RANGE[0] <= value <= INT_RANGE[1]


def _is_number(value) -> bool:
    """A finite int or float, or a string that reads as one (YAML 1.1 reads 1e-5 as a string)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) < 2**1023  # converts to a finite float
    if isinstance(value, float):
        return math.isfinite(value)
    return (
        isinstance(value, str)
        and len(value) <= 100
        and bool(_FLOAT.fullmatch(value.strip()))
        and math.isfinite(float(value))
    )


def _why_not(value, hint) -> str:
    """What else a value of the right Python type breaks ("" when its type is the problem)."""
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return f" from {INT_RANGE[0]} to {INT_RANGE[1]}"
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return " (finite)"
    if hint is str and isinstance(value, str):
        return (
            f" of at most {MAX_STRING} characters ({len(value)} given)"
            if len(value) > MAX_STRING
            else " without control characters (newline, tab, NUL, …)"
        )
    return ""


def _is_text(value) -> bool:
    return isinstance(value, str) and len(value) <= MAX_STRING and not _CONTROL.search(value)


def _dotted(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def show_key(key) -> str:
    """A mapping key as a message shows it: plain when it is a short printable string, else its repr."""
    return (
        key
        if isinstance(key, str) and key.strip() and len(key) <= 60 and key.isprintable()
        else show_value(key)
    )


def show_value(value) -> str:
    """repr(value) in at most about 60 characters, whatever its size or depth (recursion included)."""
    text = _SHOW.repr(value)
    return text if len(text) <= 64 else text[:57] + "..."
