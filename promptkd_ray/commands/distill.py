"""`promptkd-ray distill --config JOB.yaml [KEY=VALUE …]`: run or resume a Stage II job.

Locally it starts Ray in-process; under `ray job submit` it joins the cluster (RAY_ADDRESS).
Re-running the same job (same `name` and `storage_path`) resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import logging

HELP = "Stage II: distil a student from a teacher on unlabeled images (Ray Data + Ray Train)."
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="JOB.yaml", help="job file (see jobs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="override job fields with dotted keys, e.g. train.epochs=2 data.root=/data")


def run(args) -> int:
    from ..cli import UserError
    from ..config import load_job
    from ..distill import run_distillation

    job = load_job(args.config, args.overrides)
    try:
        result = run_distillation(job)
    except Exception as exc:
        reason = _user_reason(exc)
        if reason:
            raise UserError(reason) from exc
        raise
    final = result.summary["final"]
    print(f"run {job.name}: {result.summary['epochs']} epochs, held-out agreement "
          f"{final.get('heldout_agreement', float('nan')):.1f}%, {result.summary['bad_images']} unreadable "
          f"image(s) skipped; student {result.student_artifact}")
    return 0


def _user_reason(exc: BaseException) -> str:
    """The one-sentence cause of a failed run when a user can fix it (a bad image with
    on_bad_image=fail, a checkpoint of another student), found inside Ray's wrapped errors."""
    import re

    found = re.search(r"(?:BadImageError|CheckpointMismatchError): (.*)", str(exc))
    return found.group(1).strip() if found else ""
