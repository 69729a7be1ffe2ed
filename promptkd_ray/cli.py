"""`promptkd-ray` command line: one sub-command per module in `promptkd_ray/commands/`.

Each command module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
Modules are imported only when their command runs, so `promptkd-ray --help` stays fast and no
command pays for another's imports (Ray, open_clip).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = {
    "demo": "Build the offline toy world, distil a student on it and write the report.",
    "distill": "Stage II: distil a student from a teacher on unlabeled images (Ray Data + Ray Train).",
    "validate": "Check job YAML files without running them.",
    "teacher": "Stage I: train a PromptSRC-style teacher (or make a zero-shot one) and its class vectors.",
    "classvectors": "Compute class vectors for a dataset's class names with a teacher.",
    "eval": "Evaluate a student or teacher: base-to-novel, cross-dataset, domain generalisation.",
    "predict": "Top-k predictions of a student for a folder or URI of images.",
    "import": "Import the authors' official PromptKD / PromptSRC checkpoints as our artifacts.",
    "tune": "Ray Tune sweep over distillation hyper-parameters.",
}


class UserError(Exception):
    """An error the user can fix; printed as one line without a traceback."""


def _command_module(name: str):
    return importlib.import_module(f"promptkd_ray.commands.{name}")


def build_parser(available: dict[str, object]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promptkd-ray", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in available.items():
        p = sub.add_parser(name, help=COMMANDS[name], description=COMMANDS[name])
        module.add_arguments(p)
    return parser


def _available_commands(argv: list[str]) -> dict[str, object]:
    """Import only the requested command (or all, for --help)."""
    wanted = [a for a in argv if a in COMMANDS][:1] or list(COMMANDS)
    available = {}
    for name in wanted:
        try:
            available[name] = _command_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != f"promptkd_ray.commands.{name}":
                raise
    return available


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    available = _available_commands(argv)
    args = build_parser(available).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(available[args.command].run(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        from .errors import is_user_error

        if not is_user_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
