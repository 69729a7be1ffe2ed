"""Fuzz the shipped job and space files: every mutant is a valid job or one ConfigError line.

Each mutant starts from one shipped file (jobs/*.yaml, tune_spaces/*.yaml) and is checked exactly as
`promptkd-ray validate` checks it (`cli.validate.check_file`: the strict loader, the cross-field
rules, the model names; a space builds every candidate value into its job). Path existence is
checked for one mutant in four only, as the shipped jobs name datasets and s3:// paths that are not
here. Mutations:

    tree       on the parsed YAML: a key deleted (any depth), a value of another type (int, float,
               str, bool, null, list, mapping, date, bytes, set), an unknown key (odd names, 1 MB
               names), out-of-range numbers (negative, 0, 2^63, 10^100, NaN, ±inf, floats for
               ints, bools for numbers), huge (64 KiB, 1 MiB) and odd strings (control characters,
               '{x}', '../', URIs), emptied sections, a renamed key, a non-mapping document;
               1–3 of these at once
    text       on the YAML text: a duplicated line (a key given twice), truncation, inserted
               characters, a deleted line, non-UTF-8 bytes, deep nesting, recursive anchors,
               Python tags
    overrides  the file as shipped plus 1–2 `key=value` command-line overrides, mutated the same way

The verdict of each mutant is one of: valid (validate prints its "ok:" line); refused (a
ConfigError whose message is one line, names the file and the mutated key, or for text mutants the
file); traceback (any other exception); bad message (a ConfigError that breaks those rules); hang
(over 20 s of CPU time). Mutants are drawn from a seeded generator, so a run is reproducible.

    .venv/bin/python benchmarks/fuzz_configs.py --n 5000 --seed 0
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import math
import os
import random
import re
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(str(p.relative_to(ROOT)) for d in ("jobs", "tune_spaces") for p in (ROOT / d).glob("*.yaml"))
TIMEOUT_S = 20
MAX_MESSAGE = 1000  # a refusal longer than this is a bad message

HUGE = "a" * (1 << 20)
BIG = "é/ x" * (1 << 14)
INTS = [0, 1, -1, 7, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, 10**100, -(10**100)]
FLOATS = [0.0, -0.0, 0.5, -1.5, 3.0, 1e-320, 1e308, math.inf, -math.inf, math.nan]
STRINGS = [
    "",
    " ",
    "x",
    "1e-5",
    "1.0e+400",
    "null",
    "true",
    "\n",
    "a\nb",
    "\t",
    "\x00",
    "\x07",
    "\x85",
    "\u2028",
    "../../etc",
    "/",
    ".",
    "..",
    "s3://",
    "bogus://x",
    "file://",
    "file://rel/x",
    "file:///tmp/x",
    "://x",
    "S3://x",
    "a/b://c",
    "~",
    "${HOME}",
    "{}",
    "{0}",
    "{x}",
    "{}{}",
    "a {} b",
    "%s",
    "💥" * 10,
    "\u202e",
    "x:y",
    "ViT-B-16:",
    ":openai",
    "ViT-B-16-quickgelu:/no/such.pt",
    "hf-hub:x",
    "local-dir:/x",
    "C:\\x",
    "CPU",
    "single",
    "imagenet60",
    "distill",
    "teacher",
    "space",
    "grid",
    "=",
    "a=b",
    "x" * 300,
    "é" * 200,
]
OTHERS = [
    True,
    False,
    None,
    [],
    [1],
    ["a", "b"],
    [[]],
    [{}],
    [None],
    {},
    {"a": 1},
    {"teacher": 1},
    {"x": -1},
    {"": 1},
    {"a": math.nan},
    {1: 2},
    {"a": {"b": 1}},
    {"grid": [1]},
    {"grid": []},
    {"uniform": [1, 0]},
    datetime.date(2020, 1, 1),
    datetime.datetime(2020, 1, 1, 12, 0),
    b"\x00\xff",
    {"a", "b"},
]
KEYS = [
    "x",
    "",
    " ",
    "Name",
    "name ",
    "kind ",
    "train.lr",
    "lr",
    "<<",
    "\n",
    "💥",
    "a" * 300,
    1,
    0,
    True,
    None,
    3.5,
    "preset",
    "source",
    "params",
    "grid",
]
JUNK_OVERRIDES = [
    "=",
    "=1",
    "x",
    ".=1",
    "train.=1",
    ".train=1",
    "train..lr=1",
    "train.lr.x=1",
    "kind=space",
    "teacher=null",
    "train=[1]",
    "train={a: 1}",
    "loss={preset: [1]}",
    "name=",
    "a.b.c.d=1",
    "train.lr={{",
    "train.lr=&a [*a]",
    "train.epochs=" + "[" * 400 + "]" * 400,
    "x" * 5000 + "=1",
    "train.lr=1e-3",
    "train.epochs=2",
    "storage_path=bogus://x",
    "name=a/b",
    "seed=-1",
]
TEXT_JUNK = [
    "\t",
    ":",
    "[",
    "{",
    "&",
    "*",
    "!",
    "%",
    "@",
    "`",
    "|",
    ">",
    "\x00",
    "\x85",
    "\ufeff",
    "'",
    '"',
    "- ",
    "\n  ",
    "? ",
    "#",
    ",",
    "]",
    "}",
    "!!python/object:os.system ",
    "&x ",
    "*nope ",
]


@dataclass
class Mutant:
    source: str  # shipped file it came from, relative to the repository
    op: str  # mutation family: tree:KIND, text:KIND or overrides
    data: bytes  # the file as written
    key: "tuple | None" = None  # mapping keys down to the mutated one (None: nothing to name but the file)
    other_key: "tuple | None" = None  # a renamed key's old name: naming either is right
    overrides: list = field(default_factory=list)
    check_paths: bool = False

    def describe(self) -> str:
        key = ".".join(map(str, self.key)) if self.key else "-"
        extra = f" overrides={[o[:80] for o in self.overrides]}" if self.overrides else ""
        return f"{self.source} [{self.op}] key={key[:80]!r}{extra} paths={self.check_paths}"


@dataclass
class Report:
    tried: int = 0
    outcomes: Counter = field(default_factory=Counter)  # valid / refused / traceback / bad_message / hang
    ops: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)  # outcome → [(mutant description, detail)]
    seconds: float = 0.0

    @property
    def failures(self) -> int:
        return self.outcomes["traceback"] + self.outcomes["bad_message"] + self.outcomes["hang"]

    def lines(self) -> list[str]:
        out = [
            f"mutants tried: {self.tried} ({', '.join(f'{k} {v}' for k, v in sorted(self.ops.items()))})",
            f"valid: {self.outcomes['valid']}",
            f"refused (ConfigError, one line naming file and key): {self.outcomes['refused']}",
            f"tracebacks (other exceptions): {self.outcomes['traceback']}",
            f"bad messages (ConfigError not one line, too long, or not naming file and key): "
            f"{self.outcomes['bad_message']}",
            f"hangs (over {TIMEOUT_S} s of CPU time): {self.outcomes['hang']}",
            f"time: {self.seconds:.1f} s",
        ]
        for outcome in ("traceback", "bad_message", "hang"):
            for what, detail in self.examples.get(outcome, [])[:10]:
                out.append(f"  {outcome}: {what}\n    {detail}")
        return out


# ---- mutations ---------------------------------------------------------------------------------


def node_paths(tree, prefix=()) -> list[tuple]:
    """Paths (key or index sequences) of every node under `tree`, itself excluded."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else []
    out = []
    for k, v in items:
        out.append(prefix + (k,))
        out += node_paths(v, prefix + (k,))
    return out


def get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def keys_only(tree, path) -> tuple:
    """`path` without its list indices: the keys a message can name."""
    out = []
    for i, k in enumerate(path):
        if isinstance(get(tree, path[:i]), dict):
            out.append(k)
    return tuple(out)


def random_value(rng: random.Random, huge_every: int):
    kind = rng.choice(["int", "float", "str", "str", "other", "other"])
    if kind == "int":
        return rng.choice(INTS)
    if kind == "float":
        return rng.choice(FLOATS)
    if kind == "str":
        return huge_string(rng, huge_every) if rng.random() < 0.1 else rng.choice(STRINGS)
    return rng.choice(OTHERS)


def huge_string(rng: random.Random, huge_every: int) -> str:
    return HUGE if rng.randrange(huge_every) == 0 else BIG


def out_of_range(value, rng: random.Random):
    if isinstance(value, bool):
        return rng.choice([0, 1, 2, "yes", None])
    if isinstance(value, (int, float)):
        return rng.choice(
            [
                -value - 1,
                0,
                -1,
                value + 0.5,
                float(value),
                True,
                False,
                str(value),
                f" {value} ",
                *INTS[5:],
                *FLOATS[5:],
            ]
        )
    return rng.choice(INTS + FLOATS)


def mutate_tree(tree, rng: random.Random, huge_every: int):
    """One random tree mutation in place; → (tree, op, keys down to the mutated one, a renamed key's old keys)."""
    paths = node_paths(tree)
    if not paths or rng.random() < 0.02:
        return rng.choice([[], "kind: distill", 3, None, [tree], HUGE[:100]]), "top", None, None
    path = rng.choice(paths)
    parent, last = get(tree, path[:-1]), path[-1]
    key, old_key = keys_only(tree, path), None
    op = rng.choice(["delete", "retype", "retype", "unknown", "number", "string", "empty", "rename"])
    if op == "delete":
        del parent[last]
    elif op == "retype":
        old = parent[last]
        new = random_value(rng, huge_every)
        while type(new) is type(old) and new == old:
            new = random_value(rng, huge_every)
        parent[last] = new
    elif op == "unknown":
        node = get(tree, path) if isinstance(get(tree, path), dict) else parent
        key = rng.choice(KEYS + [HUGE]) if rng.random() < 0.05 else rng.choice(KEYS)
        if not isinstance(node, dict):
            return mutate_tree(tree, rng, huge_every)
        node[key] = random_value(rng, huge_every)
        key = keys_only(tree, path if node is not parent else path[:-1]) + (key,)
    elif op == "number":
        parent[last] = out_of_range(parent[last], rng)
    elif op == "string":
        parent[last] = huge_string(rng, huge_every) if rng.random() < 0.3 else rng.choice(STRINGS)
    elif op == "empty":
        parent[last] = rng.choice([{}, None, [], ""])
    elif op == "rename":
        if not isinstance(parent, dict) or not isinstance(last, str):
            return mutate_tree(tree, rng, huge_every)
        new = rng.choice(
            [last.upper(), last + "s", last[:-1], last + " ", last.replace("_", "-"), "_" + last]
        )
        parent[new] = parent.pop(last)
        key, old_key = key[:-1] + (new,), key
    return tree, op, key, old_key


def dump(tree) -> bytes:
    return yaml.safe_dump(tree, sort_keys=False, allow_unicode=True, width=10**9).encode("utf-8")


def mutate_text(text: str, rng: random.Random) -> tuple[bytes, str]:
    lines = text.splitlines(keepends=True)
    op = rng.choice(["duplicate", "truncate", "insert", "delete_line", "bytes", "nesting", "anchor", "tag"])
    if op == "duplicate":
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i])
        return "".join(lines).encode(), op
    if op == "truncate":
        return text[: rng.randrange(len(text))].encode(), op
    if op == "insert":
        at = rng.randrange(len(text) + 1)
        return (text[:at] + rng.choice(TEXT_JUNK) + text[at:]).encode(), op
    if op == "delete_line":
        del lines[rng.randrange(len(lines))]
        return "".join(lines).encode(), op
    if op == "bytes":
        at = rng.randrange(len(text) + 1)
        junk = rng.choice([b"\xff\xfe\xfd", b"\xc3", b"\x00\x00", b"\xef\xbb\xbf", b"\x80abc"])
        return text[:at].encode() + junk + text[at:].encode(), op
    if op == "nesting":
        depth = rng.choice([50, 300, 1000])
        return (text + f"\ndeep: {'[' * depth}{']' * depth}\n").encode(), op
    if op == "anchor":
        bomb = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 12))
        return (
            text + rng.choice(["\nloop: &a [*a]\n", "\nloop: &a {x: *a}\n", "\nl0: &l0 [x]\n" + bomb])
        ).encode(), op
    return (
        text
        + rng.choice(
            [
                "\nx: !!python/object/apply:os.system [true]\n",
                "\nx: !!binary '%%%'\n",
                "\nx: !custom 1\n",
                "\n<<: 3\n",
                "\n<<: *nope\n",
            ]
        )
    ).encode(), op


def render(value) -> str:
    """`value` as the text of a `key=value` override (YAML flow style, one document)."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10**9)
    return text.removesuffix("\n").removesuffix("\n...").removesuffix("...")


def mutate_overrides(tree, rng: random.Random, huge_every: int) -> tuple[list, "tuple | None"]:
    paths = [
        p
        for p in node_paths(tree)
        if all(isinstance(k, str) and k and "." not in k and "=" not in k for k in p)
    ]
    overrides, key = [], None
    for _ in range(rng.choice([1, 1, 2])):
        if rng.random() < 0.25 or not paths:
            overrides.append(rng.choice(JUNK_OVERRIDES))
            continue
        path = rng.choice(paths)
        if rng.random() < 0.2:
            path = path[:-1] + (rng.choice(["x", "Lr", "epochz"]),)
        value = get(tree, path) if path in paths else None
        new = out_of_range(value, rng) if rng.random() < 0.4 else random_value(rng, huge_every)
        overrides.append(f"{'.'.join(path)}={render(new)}")
        key = path
    return overrides, key if len(overrides) == 1 and overrides[0] not in JUNK_OVERRIDES else None


def mutants(n: int, seed: int, huge_every: int = 40):
    """`n` mutants of the shipped files, drawn from `random.Random(seed)`."""
    rng = random.Random(seed)
    texts = {rel: (ROOT / rel).read_text() for rel in SHIPPED}
    for i in range(n):
        rel = SHIPPED[i % len(SHIPPED)]
        family = rng.choices(["tree", "text", "overrides"], weights=[6, 2, 2])[0]
        tree = yaml.safe_load(texts[rel])
        check_paths = rng.randrange(4) == 0
        if family == "tree":
            ops, key, old_key = [], None, None
            for _ in range(rng.choice([1, 1, 1, 2, 3])):
                tree, op, key, old_key = mutate_tree(tree, rng, huge_every)
                ops.append(op)
                if op == "top":
                    break
            one = len(ops) == 1
            yield Mutant(
                rel,
                f"tree:{ops[0] if one else 'multi'}",
                dump(tree),
                key if one else None,
                other_key=old_key if one else None,
                check_paths=check_paths,
            )
        elif family == "text":
            data, op = mutate_text(texts[rel], rng)
            yield Mutant(rel, f"text:{op}", data, check_paths=check_paths)
        else:
            overrides, key = mutate_overrides(tree, rng, huge_every)
            yield Mutant(
                rel, "overrides", texts[rel].encode(), key, overrides=overrides, check_paths=check_paths
            )


# ---- verdicts ----------------------------------------------------------------------------------


@contextlib.contextmanager
def time_limit(seconds: int):
    """TimeoutError after `seconds` of this process's CPU time (not wall time: other work on the
    machine does not make a mutant hang)."""

    def stop(signum, frame):
        raise TimeoutError(f"over {seconds} s of CPU time")

    previous = signal.signal(signal.SIGVTALRM, stop)
    signal.setitimer(signal.ITIMER_VIRTUAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, previous)


def names(message: str, word: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(word)}(?![\w])", message) is not None


def message_problem(message: str, path: str, mutant: Mutant) -> str:
    """Why a ConfigError message breaks the rules ("" when it keeps them)."""
    from promptkd_ray.config.loader import show_key

    if len(message.splitlines()) != 1 or "\n" in message or "\r" in message:
        return "more than one line"
    if len(message) > MAX_MESSAGE:
        return f"{len(message)} characters"
    files = [path] + (
        [str(v) for v in [yaml.safe_load((ROOT / mutant.source).read_text()).get("job")] if v]
        if mutant.source.startswith("tune_spaces/")
        else []
    )
    if not any(f in message for f in files):
        return "does not name the file"
    wanted = [
        ".".join(show_key(k) for k in keys[:i])
        for keys in (mutant.key, mutant.other_key)
        if keys
        for i in range(1, len(keys) + 1)
    ]
    if wanted and not any(names(message, w) for w in wanted):
        return f"does not name the key (any of {[w[:60] for w in wanted]})"
    return ""


def path_refusal(message: str, mutant: Mutant, folder: Path) -> bool:
    """Whether a refusal is the path check's (which runs first and names its own key), on a mutant
    that is valid or rightly refused without it."""
    if not mutant.check_paths or not re.search(r"\b[a-z_]+\.[a-z_]+ names .*does not exist", message):
        return False
    return verdict(dataclasses.replace(mutant, check_paths=False), folder)[0] in ("valid", "refused")


def verdict(mutant: Mutant, folder: Path) -> tuple[str, str]:
    """(outcome, detail) of one mutant, checked as `promptkd-ray validate` checks it."""
    from promptkd_ray.cli.validate import check_file
    from promptkd_ray.errors import ConfigError

    path = folder / mutant.source
    path.write_bytes(mutant.data)
    try:
        with time_limit(TIMEOUT_S):
            line = check_file(str(path), mutant.overrides, check_paths=mutant.check_paths)
    except TimeoutError as exc:
        return "hang", str(exc)
    except ConfigError as exc:
        problem = message_problem(str(exc), str(path), mutant)
        if problem.startswith("does not name the key") and path_refusal(str(exc), mutant, folder):
            problem = ""
        return ("bad_message", f"{problem}: {str(exc)[:300]!r}") if problem else ("refused", str(exc))
    except Exception as exc:  # noqa: BLE001 - any other exception is what this fuzzer looks for
        frames = traceback.extract_tb(exc.__traceback__)[-2:]
        where = "; ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames)
        return "traceback", f"{type(exc).__name__}: {str(exc)[:200]} ({where})"
    return ("valid", line) if line.startswith("ok: ") else ("bad_message", f"validate printed {line[:200]!r}")


def run_fuzz(n: int, seed: int = 0, huge_every: int = 40, progress: bool = False) -> Report:
    """Check `n` mutants from the repository root (spaces name their jobs relative to it)."""
    from promptkd_ray.cli.validate import check_file

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        for rel in SHIPPED:  # imports torch, open_clip and Tune's side once, outside the time limit
            check_file(rel, check_paths=False)
        report, start = Report(), time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="fuzz_configs_") as tmp:
            for sub in ("jobs", "tune_spaces"):
                (Path(tmp) / sub).mkdir()
            for i, mutant in enumerate(mutants(n, seed, huge_every)):
                outcome, detail = verdict(mutant, Path(tmp))
                report.tried += 1
                report.outcomes[outcome] += 1
                report.ops[mutant.op.split(":")[0]] += 1
                report.examples.setdefault(outcome, []).append((mutant.describe(), detail))
                if progress and (i + 1) % 500 == 0:
                    print(f"  {i + 1} mutants, {dict(report.outcomes)}", file=sys.stderr, flush=True)
    finally:
        os.chdir(cwd)
    report.seconds = time.perf_counter() - start
    for outcome in ("valid", "refused"):
        report.examples[outcome] = report.examples.get(outcome, [])[:20]
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5000, help="mutants to try")
    p.add_argument("--seed", type=int, default=0, help="seed of the mutations")
    p.add_argument(
        "--huge-every", type=int, default=40, help="one huge string in this many is 1 MiB (else 64 KiB)"
    )
    p.add_argument("--show-refusals", type=int, default=0, help="print this many refusal messages")
    args = p.parse_args(argv)
    report = run_fuzz(args.n, args.seed, args.huge_every, progress=True)
    print("\n".join(report.lines()))
    for what, detail in report.examples.get("refused", [])[: args.show_refusals]:
        print(f"  refused: {what}\n    {detail[:300]}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
