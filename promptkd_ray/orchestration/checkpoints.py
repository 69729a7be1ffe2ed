"""Per-epoch checkpoints of both stages: what trains, the optimiser and the progress; resume;
fingerprints; TensorBoard.

Layout of a run folder `storage_path/name/` (local or a URI; Ray Train writes the checkpoints):

    checkpoint_epoch_000/ …        trainable.safetensors (student prompts + projector incl. BatchNorm
                                   statistics, or the teacher's prompts), train_state.pt (optimiser,
                                   scheduler, GPA sums), progress.json (epoch, step, metric history,
                                   resumes, fingerprint)
    tensorboard/                   event files (rank 0), synced after every epoch
    job.yaml                       the job as it ran (overrides applied)
    + each stage's outputs         Stage II: class_vectors.*, student.*, metrics.csv / metrics.json;
                                   Stage I: teacher.*, class_vectors.*

Design decisions:
- Checkpoints hold only what trains. The optimiser state is a tensor-only dict, loaded with
  `torch.load(weights_only=True)`; everything else is safetensors or JSON.
- A checkpoint carries a fingerprint of what it was made with (models, prompts, data, class
  vectors); resuming with a different one is refused with one sentence, on the driver before any
  worker starts (`check_resumable`) and again in each worker (`restore`).
- Every worker reports each epoch (Ray Train needs all of them); rank 0 attaches the checkpoint,
  so a restarted worker group or a re-run of the job resumes after the last reported epoch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

import torch

from ..errors import CheckpointMismatchError
from ..storage import Storage, absolute

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint_epoch_"
TRAINABLE_FILE = "trainable.safetensors"
TRAIN_STATE_FILE = "train_state.pt"
PROGRESS_FILE = "progress.json"


def run_storage(job) -> Storage:
    """The run folder `storage_path/name` of a job."""
    return Storage(job.storage_path).child(job.name)


def anchored(job):
    """The job with its storage_path made absolute on the driver, before any worker sees it: a
    worker resolving `runs` from its own working directory would write somewhere else."""
    return dataclasses.replace(job, storage_path=absolute(job.storage_path))


def new_progress(fingerprint: dict) -> dict:
    return {"epoch": -1, "step": 0, "history": [], "resumes": [], "fingerprint": fingerprint}


def check_fingerprint(progress: dict, fingerprint: dict, where: str) -> None:
    """Refuse to resume from a checkpoint made with another model, data or class vectors."""
    theirs = progress.get("fingerprint", {})
    diff = {k: (theirs.get(k), v) for k, v in fingerprint.items() if theirs.get(k) != v}
    if diff:
        key, (old, new) = next(iter(diff.items()))
        raise CheckpointMismatchError(
            f"The checkpoint {where} of this run was made with {key}={old!r}, but the job now has "
            f"{new!r}; use another job name or storage_path to start a new run.")


def latest_progress(run: Storage) -> Optional[dict]:
    """progress.json of the newest `checkpoint_epoch_*` folder of a run, or None for a new run."""
    for name in reversed([d for d in run.list_dir("")[0] if d.startswith(CHECKPOINT_PREFIX)]):
        if run.exists(f"{name}/{PROGRESS_FILE}"):
            return json.loads(run.read_text(f"{name}/{PROGRESS_FILE}"))
    return None


def check_resumable(run: Storage, fingerprint: dict) -> Optional[dict]:
    """Driver side, before any worker starts: the previous progress of this run (None for a new
    run), refused with one sentence when it was made with another fingerprint."""
    previous = latest_progress(run)
    if previous is not None:
        check_fingerprint(previous, fingerprint, run.root)
        log.info("run %s has a checkpoint after epoch %d: resuming", run.root, previous["epoch"] + 1)
    return previous


def save_checkpoint(directory: "str | Path", tensors: dict, state: dict, progress: dict) -> None:
    """Write a checkpoint folder: trainable tensors, optimiser-like state (tensors and numbers), progress."""
    from safetensors.torch import save_file

    directory = Path(directory)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(directory / TRAINABLE_FILE))
    torch.save(state, directory / TRAIN_STATE_FILE)
    (directory / PROGRESS_FILE).write_text(json.dumps(progress, indent=1) + "\n")


def load_checkpoint(directory: "str | Path", fingerprint: dict) -> tuple[dict, dict, dict]:
    """(tensors, state, progress) of a checkpoint folder, after checking its fingerprint."""
    from safetensors.torch import load_file

    directory = Path(directory)
    progress = read_progress(directory)
    check_fingerprint(progress, fingerprint, directory.name)
    state = torch.load(directory / TRAIN_STATE_FILE, map_location="cpu", weights_only=True)
    return load_file(str(directory / TRAINABLE_FILE)), state, progress


def read_progress(directory: "str | Path") -> dict:
    return json.loads((Path(directory) / PROGRESS_FILE).read_text())


def restore(fingerprint: dict, rank: int) -> tuple[Optional[dict], Optional[dict], dict]:
    """Worker side: (tensors, state, progress) of the checkpoint Ray Train hands this worker group,
    or (None, None, a new progress); a resume is recorded in `progress["resumes"]`."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None, None, new_progress(fingerprint)
    with checkpoint.as_directory() as directory:
        tensors, state, progress = load_checkpoint(directory, fingerprint)
    progress["resumes"] = progress["resumes"] + [progress["epoch"] + 1]
    if rank == 0:
        log.info("resuming after epoch %d from %s", progress["epoch"] + 1, checkpoint.path)
    return tensors, state, progress


def report(metrics: dict, progress: dict, tensors: dict, state: dict, rank: int,
           add_files: Optional[Callable[[Path], None]] = None, name: Optional[str] = None) -> None:
    """Every worker reports the epoch; rank 0 attaches the checkpoint (plus `add_files(dir)`'s files)
    and names its worker group's placement group (`placement_group`, in the report only: a sweep
    releases a stopped trial's group with it)."""
    import ray.train
    from ray.util import get_current_placement_group

    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    group = get_current_placement_group()
    metrics = {**metrics, "placement_group": group.id.hex() if group is not None else ""}
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(tmp, tensors, state, progress)
        if add_files is not None:
            add_files(Path(tmp))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=name or f"{CHECKPOINT_PREFIX}{progress['epoch']:03d}")


@contextmanager
def final_checkpoint(result):
    """The last checkpoint of a finished Ray Train run, as a local folder."""
    if result.checkpoint is None:
        raise RuntimeError(f"The run ended without a checkpoint in {result.path}.")
    with result.checkpoint.as_directory() as directory:
        yield Path(directory)


class TensorBoardLog:
    """Scalars to TensorBoard event files under the run's `tensorboard/` (rank 0 only); written to a
    local staging folder and copied to the run folder after each epoch when the run is remote."""

    def __init__(self, run: Storage, rel: str = "tensorboard"):
        from torch.utils.tensorboard import SummaryWriter

        self.run, self.rel = run, rel
        local = run.local_path(rel)
        self._staging = None if local else tempfile.mkdtemp(prefix="promptkd_tb_")
        self.writer = SummaryWriter(local or self._staging)

    def scalars(self, metrics: dict, step: int, prefix: str = "", flush: bool = True) -> None:
        """Numeric values of `metrics` at `step`; `flush` also syncs the files (each epoch's end)."""
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}{key}", value, step)
        if not flush:
            return
        self.writer.flush()
        if self._staging:
            self.run.upload(self._staging, self.rel)

    def close(self) -> None:
        self.writer.close()
        if self._staging:
            self.run.upload(self._staging, self.rel)
            shutil.rmtree(self._staging, ignore_errors=True)
