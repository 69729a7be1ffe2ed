"""Configs and spaces, fuzzed: every mutant of a shipped job or space file is a valid job or one
`ConfigError` line naming the file and the key — never a traceback.

The mutation engine is benchmarks/fuzz_configs.py (which runs many more mutants); here a fixed seed
runs a fixed sample, and the holes it found are pinned one by one below.
"""

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import yaml

from promptkd_ray.cli.validate import check_file
from promptkd_ray.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
N_MUTANTS = 800


def _engine():
    spec = importlib.util.spec_from_file_location("fuzz_configs", REPO / "benchmarks" / "fuzz_configs.py")
    module = sys.modules["fuzz_configs"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


fuzz = _engine()


@pytest.mark.parametrize("rel", fuzz.SHIPPED)
def test_every_shipped_file_validates_as_it_is(rel, monkeypatch):
    monkeypatch.chdir(REPO)
    assert check_file(rel, check_paths=False).startswith(f"ok: {rel} (")


def test_fuzzed_mutants_are_valid_jobs_or_one_config_error_line():
    report = fuzz.run_fuzz(N_MUTANTS, seed=0)
    print("\n" + "\n".join(report.lines()))  # pytest -s shows the counts
    assert report.tried == N_MUTANTS and set(report.ops) == {"tree", "text", "overrides"}
    assert report.failures == 0, "\n".join(report.lines())
    assert report.outcomes["valid"] > 0 and report.outcomes["refused"] > 0


def _refusal(path: Path, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        check_file(str(path), list(overrides), check_paths=False)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and len(message) < 1000 and str(path) in message, message
    return message


def _mutated(tmp_path, rel: str, change) -> Path:
    tree = yaml.safe_load((REPO / rel).read_text())
    change(tree)
    path = tmp_path / Path(rel).name
    path.write_text(yaml.safe_dump(tree, allow_unicode=True, width=10**9))
    return path


def _set(dotted: str, value):
    def change(tree):
        *sections, last = dotted.split(".")
        node = tree
        for key in sections:
            node = node.setdefault(key, {})
        node[last] = value

    return change


@pytest.mark.parametrize(
    "rel, dotted, value, words",
    [
        ("jobs/b2n.yaml", "train.lr", math.nan, ["train.lr must be a number (finite)", "nan"]),
        ("jobs/b2n.yaml", "loss.temperature", math.inf, ["loss.temperature must be a number (finite)"]),
        ("jobs/b2n.yaml", "train.momentum", math.nan, ["train.momentum"]),
        ("jobs/b2n.yaml", "train.epochs", 2**64, ["train.epochs must be an integer from"]),
        ("jobs/b2n.yaml", "train.num_workers", True, ["train.num_workers must be an integer", "True"]),
        ("jobs/b2n.yaml", "name", "a" * (1 << 20), ["name must be a string of at most 4096 characters"]),
        ("jobs/b2n.yaml", "name", "runs/../x", ["name must be one folder name"]),
        ("jobs/b2n.yaml", "name", "line\nbreak", ["name must be a string without control characters"]),
        ("jobs/b2n.yaml", "seed", -1, ["seed must be in 0 … 4294967295"]),
        ("jobs/b2n.yaml", "kind", ["distill"], ["kind must be one of"]),
        ("jobs/b2n.yaml", "loss.preset", ["kdpl"], ["loss.preset must be one of"]),
        ("jobs/b2n.yaml", "teacher_pool.resources", {"teacher": -1}, ["teacher_pool.resources", "≥ 0"]),
        ("jobs/b2n.yaml", "teacher_pool.resources", {"": 1}, ["teacher_pool.resources"]),
        ("jobs/b2n.yaml", "teacher_pool.num_cpus", -2, ["teacher_pool.num_cpus must be ≥ 0"]),
        (
            "jobs/b2n.yaml",
            "storage_path",
            "bogus://bucket/runs",
            ["storage_path must be a local path or a URI of"],
        ),
        ("jobs/b2n.yaml", "storage_path", "file://runs", ["storage_path must be file:///ABSOLUTE/PATH"]),
        ("jobs/b2n.yaml", "data.root", "x" * 300, ["data.root has a path part over 255 bytes"]),
        ("jobs/b2n.yaml", "student.spec", "\u2028", ["student.spec must be MODEL[:PRETRAINED]"]),
        (
            "jobs/toy_b2n.yaml",
            "teacher.templates",
            "a {x} photo",
            ["teacher.templates must be single, imagenet60"],
        ),
        ("jobs/toy_teacher.yaml", "teacher.scl_templates", "{}{}", ["teacher.scl_templates"]),
        ("jobs/b2n.yaml", "x" * (1 << 20), 1, ["unknown key 'xxxxx"]),
    ],
)
def test_a_hole_the_fuzzer_found_is_one_sentence_naming_file_and_key(tmp_path, rel, dotted, value, words):
    message = _refusal(_mutated(tmp_path, rel, _set(dotted, value)))
    assert all(w in message for w in words), message


@pytest.mark.parametrize(
    "text, words",
    [
        ("\ntrain:\n  epochs: 3\n", ["key 'train' appears twice", "line"]),
        ("\nloop: &a [*a]\n", ["unknown key loop"]),
        ("\ndeep: " + "[" * 1000 + "]" * 1000 + "\n", ["nest too deeply"]),
        ("\nx: !!python/object/apply:os.system [true]\n", ["is not valid YAML"]),
    ],
)
def test_yaml_text_that_breaks_the_loader_is_one_sentence(tmp_path, text, words):
    path = tmp_path / "b2n.yaml"
    path.write_text((REPO / "jobs/b2n.yaml").read_text() + text)
    message = _refusal(path)
    assert all(w in message for w in words), message


def test_bytes_that_are_not_utf8_are_one_sentence(tmp_path):
    path = tmp_path / "b2n.yaml"
    # not b"\xff\xfe…": that is a UTF-16 BOM, which PyYAML honours (the rest then decodes as UTF-16
    # junk whenever the file's length is even, a different refusal)
    path.write_bytes(b"\xfd\xff\xfe" + (REPO / "jobs/b2n.yaml").read_bytes())
    assert "is not valid YAML" in _refusal(path)


def test_a_billion_laughs_file_is_refused_quickly(tmp_path):
    bomb = "l0: &l0 [x]\n" + "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 12))
    path = tmp_path / "b2n.yaml"
    path.write_text((REPO / "jobs/b2n.yaml").read_text() + bomb)
    with fuzz.time_limit(20):
        assert "unknown key l0" in _refusal(path)


@pytest.mark.parametrize(
    "override, words",
    [
        ("train..lr=1", ["KEY=VALUE with a dotted KEY"]),
        ("train.lr.x=1", ["goes inside train.lr, which is not a section"]),
        ("train.lr=.nan", ["train.lr must be a number (finite)"]),
        ("train.epochs={a: 1, a: 2}", ["train.epochs must be an integer"]),
    ],
)
def test_bad_overrides_are_one_sentence(override, words):
    message = _refusal(REPO / "jobs/b2n.yaml", [override])
    assert all(w in message for w in words), message


@pytest.mark.parametrize(
    "dotted, value, words",
    [
        ("job", "jobs/no_such_job.yaml", ["job names 'jobs/no_such_job.yaml', which is not a job file"]),
        ("job", "x" * 5000, ["job must be a string of at most 4096"]),
        ("params", {1: {"grid": [1]}}, ["params.1 is not a job key"]),
        ("params", {"loss.temperature": {"grid": {1: 2}}}, ["params.loss.temperature: grid value names"]),
        (
            "params",
            {"loss.temperature": {"uniform": [1, math.inf]}},
            ["params.loss.temperature: uniform takes"],
        ),
        ("params", {"loss": {"grid": [None]}}, None),  # a whole section reset to its defaults: valid
        (
            "params",
            {"loss.temperature": {"grid": [float("nan")]}},
            ["params.loss.temperature", "must be a number"],
        ),
        ("search.seed", 2**40, ["search.seed must be in 0"]),
        ("source", "elsewhere.yaml", ["unknown key source"]),
    ],
)
def test_space_holes_are_one_sentence_naming_the_space_and_key(tmp_path, monkeypatch, dotted, value, words):
    monkeypatch.chdir(REPO)
    path = _mutated(tmp_path, "tune_spaces/toy.yaml", _set(dotted, value))
    if words is None:
        assert check_file(str(path), check_paths=False).startswith("ok: ")
        return
    message = _refusal(path)
    assert all(w in message for w in words), message
