"""Per-epoch checkpoints of both stages: what trains, the optimiser and the progress; resume;
fingerprints (TensorBoard's event files: `tensorboard.py`).

Layout of a run folder `storage_path/name/` (local or a URI; Ray Train writes the checkpoints):

    checkpoint_epoch_000/ …        trainable.safetensors (student prompts + projector incl. BatchNorm
                                   statistics, or the teacher's prompts), train_state.pt (optimiser,
                                   scheduler, GPA sums), progress.json (epoch, step, metric history,
                                   resumes, fingerprint), manifest.json (sha256 of every other file)
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
- Ray Train copies a checkpoint folder file by file, in no set order, so a folder is only trusted
  through its manifest: `manifest.json` names every file with its sha256, and a checkpoint whose
  files are missing, truncated or differ from it is corrupt (`CheckpointCorruptError`). Resuming
  from a corrupt latest checkpoint falls back to the newest good older one with a warning (Ray
  keeps `checkpoints_to_keep` of them); with none left it stops with one sentence. Checkpoints
  written before the manifest are trusted when their files load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, ContextManager, Iterable, Optional

import torch

from ..errors import CheckpointCorruptError, CheckpointMismatchError
from ..storage import Storage, absolute

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint_epoch_"
TRAINABLE_FILE = "trainable.safetensors"
TRAIN_STATE_FILE = "train_state.pt"
PROGRESS_FILE = "progress.json"
MANIFEST_FILE = "manifest.json"


def run_storage(job) -> Storage:
    """The run folder `storage_path/name` of a job."""
    return Storage(job.storage_path).child(job.name)


def anchored(job):
    """The job with its storage_path made absolute on the driver, before any worker sees it: a
    worker resolving `runs` from its own working directory would write somewhere else."""
    return dataclasses.replace(job, storage_path=absolute(job.storage_path))


def new_progress(fingerprint: dict) -> dict:
    return {"epoch": -1, "step": 0, "history": [], "resumes": [], "fingerprint": fingerprint}


# fingerprint keys that checkpoints made before them do not record: such a checkpoint is not checked on them
RECORDED_LATER = ("views_replayed",)


def check_fingerprint(progress: dict, fingerprint: dict, where: str) -> None:
    """Refuse to resume from a checkpoint made with another model, data or class vectors."""
    theirs = progress.get("fingerprint", {})
    diff = {
        k: (theirs.get(k), v)
        for k, v in fingerprint.items()
        if theirs.get(k) != v and (k in theirs or k not in RECORDED_LATER)
    }
    if diff:
        key, (old, new) = next(iter(diff.items()))
        raise CheckpointMismatchError(
            f"The checkpoint {where} of this run was made with {key}={old!r}, but the job now has "
            f"{new!r}; use another job name or storage_path to start a new run."
        )


def latest_progress(run: Storage, whole: bool = True) -> Optional[dict]:
    """progress.json of the newest `checkpoint_epoch_*` folder of a run, or None for a new run. With
    `whole`, a corrupt or half-copied folder is skipped with a warning; without, any readable
    progress.json counts (enough to know which job made the run)."""
    for name in reversed([d for d in run.list_dir("")[0] if d.startswith(CHECKPOINT_PREFIX)]):
        if not run.exists(f"{name}/{PROGRESS_FILE}"):
            continue
        try:
            if whole:
                verify_checkpoint(run.child(name))
            return _parse_progress(run.read_bytes(f"{name}/{PROGRESS_FILE}"), run.path(name))
        except CheckpointCorruptError as exc:
            log.warning("%s; looking at the checkpoint before it", str(exc).rstrip("."))
    return None


def check_resumable(run: Storage, fingerprint: dict) -> Optional[dict]:
    """Driver side, before any worker starts: the previous progress of this run (None for a new
    run), refused with one sentence when it was made with another fingerprint (any checkpoint
    folder of the run tells that, whole or not)."""
    made_by = latest_progress(run, whole=False)
    if made_by is None:
        return None
    check_fingerprint(made_by, fingerprint, run.root)
    previous = latest_progress(run)
    if previous is not None:
        log.info("run %s has a checkpoint after epoch %d: resuming", run.root, previous["epoch"] + 1)
    return previous


def save_checkpoint(directory: "str | Path", tensors: dict, state: dict, progress: dict) -> None:
    """Write a checkpoint folder: trainable tensors, optimiser-like state (tensors and numbers),
    progress, and last the manifest."""
    from safetensors.torch import save

    buffer = io.BytesIO()
    torch.save(state, buffer)
    Storage(directory).write_files(
        {
            TRAINABLE_FILE: save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}),
            TRAIN_STATE_FILE: buffer.getvalue(),
            PROGRESS_FILE: (json.dumps(progress, indent=1) + "\n").encode("utf-8"),
        }
    )
    seal_checkpoint(directory)


def seal_checkpoint(directory: "str | Path") -> None:
    """(Re)write the manifest of a local checkpoint folder: the sha256 of every other file in it."""
    root = Path(directory)
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.name != MANIFEST_FILE
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    manifest = {"files": {p.relative_to(root).as_posix(): _sha256(p.read_bytes()) for p in files}}
    Storage(directory).write_text(MANIFEST_FILE, json.dumps(manifest, indent=1) + "\n")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify_checkpoint(folder: Storage) -> None:
    """Refuse (`CheckpointCorruptError`) a checkpoint folder whose files are missing or differ from
    its manifest; a folder without a manifest (older runs) must at least hold every file."""
    names = (
        [MANIFEST_FILE]
        if folder.is_file(MANIFEST_FILE)
        else [TRAINABLE_FILE, TRAIN_STATE_FILE, PROGRESS_FILE]
    )
    missing = [n for n in names if not folder.is_file(n)]
    if missing:
        raise CheckpointCorruptError(f"The checkpoint {folder.root} is incomplete: it lacks {missing[0]}.")
    if names != [MANIFEST_FILE]:
        return
    try:
        listed = json.loads(folder.read_bytes(MANIFEST_FILE))["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointCorruptError(
            f"The manifest of checkpoint {folder.root} is unreadable ({exc})."
        ) from None
    for name in [TRAINABLE_FILE, TRAIN_STATE_FILE, PROGRESS_FILE, *listed]:
        if name not in listed or not folder.is_file(name):
            raise CheckpointCorruptError(f"The checkpoint {folder.root} is incomplete: it lacks {name}.")
        if _sha256(folder.read_bytes(name)) != listed[name]:
            raise CheckpointCorruptError(
                f"The checkpoint {folder.root} is corrupt: {name} does not match the sha256 in its manifest."
            )


def load_checkpoint(directory: "str | Path", fingerprint: dict) -> tuple[dict, dict, dict]:
    """(tensors, state, progress) of a local checkpoint folder, after checking its files against
    its manifest (`CheckpointCorruptError`) and its fingerprint (`CheckpointMismatchError`)."""
    from safetensors.torch import load

    from ..core.models.torchscript import is_torchscript

    directory = Path(directory)
    folder = Storage(directory)
    verify_checkpoint(folder)
    progress = read_progress(directory)
    check_fingerprint(progress, fingerprint, directory.name)
    if is_torchscript(directory / TRAIN_STATE_FILE):  # torch < 2.6 would hand it to torch.jit.load
        raise CheckpointCorruptError(
            f"The checkpoint {directory} is corrupt: its {TRAIN_STATE_FILE} is TorchScript."
        )
    try:
        tensors = load(folder.read_bytes(TRAINABLE_FILE))
        state = torch.load(directory / TRAIN_STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors, zip and unpickling errors of a damaged file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointCorruptError(
            f"The checkpoint {directory} is corrupt: its files do not load ({first})."
        ) from exc
    return tensors, state, progress


def read_progress(directory: "str | Path") -> dict:
    return _parse_progress(Storage(directory).read_bytes(PROGRESS_FILE), str(directory))


def _parse_progress(data: bytes, where: str) -> dict:
    try:
        progress = json.loads(data)
        int(progress["epoch"])
        return progress
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointCorruptError(
            f"The checkpoint {where} is corrupt: its {PROGRESS_FILE} is unreadable ({exc})."
        ) from None


def load_newest_good(
    checkpoints: Iterable[tuple[str, Callable[[], ContextManager]]],
    fingerprint: dict,
) -> tuple[dict, dict, dict, str]:
    """(tensors, state, progress, name) of the first checkpoint in `checkpoints` (newest first;
    each a name and a function that opens it as a local folder) that is whole. A corrupt one is
    skipped with a warning; a fingerprint mismatch stops at once; none whole: one sentence."""
    corrupt: list[str] = []
    for name, open_folder in checkpoints:
        try:
            with open_folder() as directory:
                tensors, state, progress = load_checkpoint(directory, fingerprint)
        except CheckpointCorruptError as exc:
            log.warning("%s; resuming from the checkpoint before it instead", str(exc).rstrip("."))
            corrupt.append(name)
            continue
        if corrupt:
            log.warning("resuming from %s: the newer checkpoint(s) %s are corrupt", name, ", ".join(corrupt))
        return tensors, state, progress, name
    raise CheckpointCorruptError(
        f"Every checkpoint of this run is corrupt or incomplete ({', '.join(corrupt)}); delete them or use "
        f"another job name or storage_path to start a new run."
    )


def _ray_checkpoints_newest_first(checkpoint) -> list[tuple[str, Callable[[], ContextManager]]]:
    """Ray Train's checkpoint, then the older `checkpoint_epoch_*` folders beside it (same file system)."""
    import ray.train
    from pyarrow.fs import FileSelector, FileType

    parent, _, latest = checkpoint.path.rstrip("/").rpartition("/")
    infos = checkpoint.filesystem.get_file_info(FileSelector(parent, allow_not_found=True))
    older = sorted(
        (
            i.base_name
            for i in infos
            if i.type == FileType.Directory
            and i.base_name.startswith(CHECKPOINT_PREFIX)
            and i.base_name < latest
        ),
        reverse=True,
    )
    found = [(checkpoint.path, checkpoint.as_directory)]
    for name in older:
        sibling = ray.train.Checkpoint(path=f"{parent}/{name}", filesystem=checkpoint.filesystem)
        found.append((sibling.path, sibling.as_directory))
    return found


def restore(fingerprint: dict, rank: int) -> tuple[Optional[dict], Optional[dict], dict]:
    """Worker side: (tensors, state, progress) of the checkpoint Ray Train hands this worker group
    (or, when that one is corrupt, of the newest whole one before it), or (None, None, a new
    progress); a resume is recorded in `progress["resumes"]`."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None, None, new_progress(fingerprint)
    tensors, state, progress, source = load_newest_good(
        _ray_checkpoints_newest_first(checkpoint), fingerprint
    )
    progress["resumes"] = progress["resumes"] + [progress["epoch"] + 1]
    if rank == 0:
        log.info("resuming after epoch %d from %s", progress["epoch"] + 1, source)
    return tensors, state, progress


def report(metrics: dict, progress: dict, tensors: dict, state: dict, rank: int) -> None:
    """Every worker reports the epoch; rank 0 attaches the checkpoint."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(tmp, tensors, state, progress)
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"{CHECKPOINT_PREFIX}{progress['epoch']:03d}",
        )


@contextmanager
def final_checkpoint(result):
    """The last checkpoint of a finished Ray Train run, as a local folder."""
    if result.checkpoint is None:
        raise RuntimeError(f"The run ended without a checkpoint in {result.path}.")
    with result.checkpoint.as_directory() as directory:
        yield Path(directory)
