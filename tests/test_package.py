"""Package hygiene: importing has no side effects, and the core never imports Ray."""

import subprocess
import sys

CORE = ["promptkd_ray", "promptkd_ray.models", "promptkd_ray.losses", "promptkd_ray.step",
        "promptkd_ray.classvectors", "promptkd_ray.metrics", "promptkd_ray.data.transforms",
        "promptkd_ray.data.splits", "promptkd_ray.templates"]


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def test_core_modules_do_not_import_ray():
    code = "import sys\n" + "\n".join(f"import {m}" for m in CORE) + "\nprint('ray' in sys.modules)"
    assert _run(code) == "False"


def test_importing_the_package_registers_nothing_with_open_clip():
    code = ("import open_clip\nbefore = set(open_clip.list_models())\n"
            "import promptkd_ray, promptkd_ray.models\n"
            "print(set(open_clip.list_models()) == before and 'tiny-vit-student' not in before)")
    assert _run(code) == "True"


def test_cli_help_lists_commands_without_importing_ray():
    out = subprocess.run([sys.executable, "-m", "promptkd_ray.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "distill" in out.stdout
