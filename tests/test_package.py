"""Package hygiene: importing has no side effects, the core never imports Ray (directly or through
anything it imports), and the CLI's help imports neither Ray nor a command's dependencies."""

import re
import subprocess
import sys
from pathlib import Path

import promptkd_ray
from promptkd_ray.cli import COMMANDS, MODULE_NAMES

PACKAGE = Path(promptkd_ray.__file__).parent
# Everything below the orchestration layer: the core, the data layer, configs, storage, errors, the
# toy world and interop. Only `orchestration/` may import Ray (and what sits on it imports Ray
# only when it runs, never at import).
RAY_FREE = ("core", "data", "config", "interop", "toyworld")


def _modules(subpackage: str = "") -> list[str]:
    """Every module below promptkd_ray/<subpackage>, as dotted names (packages included)."""
    found = []
    for path in sorted((PACKAGE / subpackage).rglob("*.py")):
        parts = ("promptkd_ray", *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] != "__main__":
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def _run(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_the_core_imports_no_ray_and_nothing_else_does_at_import():
    """In one fresh interpreter: the core and everything below orchestration import without Ray
    (directly or transitively); then every other module (recipes, orchestration, CLI) imports
    without importing Ray either: they import it inside the functions that use it."""
    ray_free = [m for sub in RAY_FREE for m in _modules(sub)] + [
        "promptkd_ray.storage",
        "promptkd_ray.errors",
    ]
    everything = _modules()
    assert len(ray_free) > 30 and len(everything) > len(ray_free) + 15  # the walks found the modules
    loaded = "sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))"
    code = (
        "import sys\n"
        + "\n".join(f"import {m}" for m in ray_free)
        + f"\nprint({loaded})\n"
        + "\n".join(f"import {m}" for m in everything)
        + f"\nprint({loaded})"
    )
    assert _run(code).splitlines() == ["[]", "[]"]


def test_no_core_module_mentions_ray_imports():
    """The same rule, read from the source (what the before-stop hook checks too)."""
    offenders = [
        str(p)
        for p in (PACKAGE / "core").rglob("*.py")
        if any(line.strip().startswith(("import ray", "from ray")) for line in p.read_text().splitlines())
    ]
    assert offenders == []


def test_importing_the_package_registers_nothing_with_open_clip():
    code = (
        "import open_clip\nbefore = set(open_clip.list_models())\n"
        "import promptkd_ray, promptkd_ray.core.models\n"
        "print(set(open_clip.list_models()) == before and 'tiny-vit-student' not in before)"
    )
    assert _run(code) == "True"


def test_cli_help_lists_every_command_without_importing_ray():
    """Every command of the CLI's registry (`COMMANDS`) is in the top-level help, and every module of
    promptkd_ray/cli that defines a command (`add_arguments` and `run`) is in the registry."""
    code = (
        "import sys\nfrom promptkd_ray.cli import main, COMMANDS\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('RAY', 'ray' in sys.modules, 'open_clip' in sys.modules, ' '.join(COMMANDS))"
    )
    out = _run(code)
    help_text, last = out.rsplit("\n", 1)
    assert last.startswith("RAY False False ")
    registered = last.split()[3:]
    assert registered == list(COMMANDS) and len(registered) >= 11
    for name in registered:
        assert re.search(rf"^\s+{name}\s", help_text, re.M), name
    modules = {
        path.stem
        for path in (PACKAGE / "cli").glob("*.py")
        if "def add_arguments(" in path.read_text() and "def run(" in path.read_text()
    }
    assert modules == {MODULE_NAMES.get(name, name) for name in COMMANDS}


def test_every_command_has_a_help_that_runs():
    """`promptkd-ray COMMAND --help` exits 0 and prints the command's usage, for every command of the
    registry (in one interpreter: each help imports its command's module and its argument helpers)."""
    code = (
        "import contextlib, io\nfrom promptkd_ray.cli import main, COMMANDS\n"
        "for name in COMMANDS:\n"
        "    out = io.StringIO()\n"
        "    try:\n"
        "        with contextlib.redirect_stdout(out):\n"
        "            main([name, '--help'])\n"
        "        code = 'no exit'\n"
        "    except SystemExit as exc:\n"
        "        code = exc.code\n"
        "    text = out.getvalue()\n"
        "    print(name, code, f'usage: promptkd-ray {name}' in text and '--help' in text)"
    )
    rows = [line.split() for line in _run(code).splitlines()]
    assert rows == [[name, "0", "True"] for name in COMMANDS]
