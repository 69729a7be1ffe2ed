"""`promptkd-ray` command line: one sub-command per module of this package.

Each command module defines `add_arguments(parser)` and `run(args) -> int`; its one-line help is
written once, in `COMMANDS`. Modules are imported only when their command runs, so
`promptkd-ray --help` stays fast and no command pays for another's imports (Ray, open_clip).
Every error a user can fix is a `PromptKDError`: caught here, once, and printed as one line
(`error: …`, exit status 2). Ctrl-C is one line too, not a traceback: where the run was (the epoch
after the last epoch line the console printed) and that the same command resumes it (exit status
130, as a shell reports an interrupted command).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys

from ..errors import PromptKDError

# command → its one-line help; the command's module in promptkd_ray.cli has the command's name
COMMANDS = {
    "demo": "Build the offline toy world, distil a student on it and write the report.",
    "distill": "Stage II: distil a student from a teacher on unlabeled images (Ray Data + Ray Train).",
    "teacher": "Stage I: train a PromptSRC-style teacher (or make a zero-shot one) and its class vectors.",
    "cache": "Run the teacher once over K seeded views per image and store its features (the soft-label cache).",
    "pack": "Pack a dataset's images into Parquet shards with a manifest, for Stage II and eval to stream.",
    "tune": "Sweep a Stage II job's hyper-parameters on Ray Tune (ASHA, label-free selection).",
    "validate": "Check job files and search spaces without running them.",
    "classvectors": "Compute class vectors for a dataset's class names with a teacher.",
    "eval": "Evaluate students / teachers: base-to-novel, cross-dataset or domain generalisation.",
    "predict": "Top-k predictions of a student for a folder or URI of images.",
    "import": "Import the authors' official PromptKD / PromptSRC checkpoints as our artifacts.",
}
MODULE_NAMES = {"import": "importer"}  # where a command's name is a Python keyword


def build_parser(wanted: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promptkd-ray", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and Ray's own output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        if name in wanted:
            _module(name).add_arguments(p)
    return parser


def _module(command: str):
    return importlib.import_module(f"promptkd_ray.cli.{MODULE_NAMES.get(command, command)}")


class _Format(logging.Formatter):
    """`12:03:04 message`; warnings and errors say their level."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else text.replace(" ", f" {record.levelname}: ", 1)


def _configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        _Format(
            "%(asctime)s %(name)s: %(message)s" if verbose else "%(asctime)s %(message)s", datefmt="%H:%M:%S"
        )
    )
    root = logging.getLogger()
    if not root.handlers:  # in-process callers (tests) keep their own handlers
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


class _LastEpoch(logging.Handler):
    """Remembers the last epoch line the console printed (`epoch 3/8: loss …`, from
    `orchestration.progress`), so an interrupted run can say which epoch it was in."""

    LINE = re.compile(r"epoch (\d+)/(\d+): ")

    def __init__(self):
        super().__init__(logging.INFO)
        self.done, self.total = 0, 0

    def emit(self, record: logging.LogRecord) -> None:
        found = self.LINE.match(record.getMessage())
        if found:
            self.done, self.total = int(found[1]), int(found[2])

    def interrupted(self) -> str:
        if not self.total:
            where = "interrupted"
        elif self.done < self.total:
            where = f"interrupted at epoch {self.done + 1}/{self.total}"
        else:
            where = f"interrupted after the last epoch ({self.total}/{self.total})"
        return f"{where}; run the same command again to resume"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    wanted = [a for a in argv if a in COMMANDS][:1]
    args = build_parser(wanted).parse_args(argv)
    _configure_logging(args.verbose)
    epochs = _LastEpoch()
    console = logging.getLogger("promptkd_ray")
    console.addHandler(epochs)
    try:
        return int(_module(args.command).run(args) or 0)
    except PromptKDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(epochs.interrupted(), file=sys.stderr)
        return 130
    finally:
        console.removeHandler(epochs)


if __name__ == "__main__":
    sys.exit(main())
