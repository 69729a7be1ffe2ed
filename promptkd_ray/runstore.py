"""A run's files: the run folder on local disk or an object store, TensorBoard, checkpoint state.

Layout of `storage_path/name/` (Ray Train writes its checkpoints there; we add the rest):

    checkpoint_epoch_000/ …        Ray Train checkpoints: student.safetensors (prompts + projector,
                                   BatchNorm stats included), train_state.pt (optimiser, scheduler),
                                   progress.json (epoch, step, metric history, resumes, fingerprint)
    tensorboard/                   event files (rank 0), synced after every epoch
    class_vectors.{safetensors,json}   when the job computed them
    student.{safetensors,json}     the student artifact, written at the end
    metrics.csv, metrics.json      one row per epoch + the run summary
    job.yaml                       the job as it ran (overrides applied)

Design decisions:
- Storage is a URI or a local folder; every write goes through pyarrow file systems, so the same
  code writes to `s3://…` on a cluster and to `runs/` here. TensorBoard writes to a local folder
  that is uploaded after each epoch when the storage is remote.
- Checkpoints hold only what trains. The optimiser state is a tensor-only state dict, loaded with
  `torch.load(weights_only=True)`; everything else is safetensors or JSON.
- A checkpoint carries a fingerprint (student spec, prompts, projector, class-vectors hash);
  resuming a run with a different one is refused with one sentence.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch

from .config import ConfigError

log = logging.getLogger(__name__)

STUDENT_FILE = "student.safetensors"
TRAIN_STATE_FILE = "train_state.pt"
PROGRESS_FILE = "progress.json"
CHECKPOINT_PREFIX = "checkpoint_epoch_"


class CheckpointMismatchError(ConfigError):
    """A run's checkpoint that was made by another student or against other class vectors."""


def resolve_storage_path(storage_path: str) -> str:
    """URIs unchanged; local paths made absolute (Ray Train needs absolute local paths)."""
    return storage_path if "://" in storage_path else os.path.abspath(os.path.expanduser(storage_path))


class RunStore:
    """The run folder `storage_path/name`, on any pyarrow file system."""

    def __init__(self, storage_path: str, name: str):
        from pyarrow import fs as pafs

        self.storage_path = resolve_storage_path(storage_path)
        self.name = name
        if "://" in self.storage_path:
            self.fs, base = pafs.FileSystem.from_uri(self.storage_path)
            self._local_root = None
        else:
            self.fs, base = pafs.LocalFileSystem(), self.storage_path
            self._local_root = os.path.join(self.storage_path, name)
        self._base = f"{base.rstrip('/')}/{name}"

    def uri(self, rel: str = "") -> str:
        """Where `rel` is, for people: a local path or a URI."""
        root = self._local_root or f"{self.storage_path.rstrip('/')}/{self.name}"
        return f"{root}/{rel}" if rel else root

    def local_path(self, rel: str = "") -> Optional[str]:
        """The local path of `rel`, or None when the storage is remote."""
        if self._local_root is None:
            return None
        return os.path.join(self._local_root, rel) if rel else self._local_root

    def _path(self, rel: str) -> str:
        return f"{self._base}/{rel}" if rel else self._base

    def exists(self, rel: str) -> bool:
        from pyarrow.fs import FileType

        return self.fs.get_file_info(self._path(rel)).type != FileType.NotFound

    def write_bytes(self, rel: str, data: bytes) -> None:
        self.fs.create_dir(self._path(rel).rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(self._path(rel)) as f:
            f.write(data)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self._path(rel)) as f:
            return f.read()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def list_dirs(self, prefix: str = "") -> list[str]:
        """Names of the sub-folders of the run folder that start with `prefix`, sorted."""
        from pyarrow.fs import FileSelector, FileType

        infos = self.fs.get_file_info(FileSelector(self._base, allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == FileType.Directory and i.base_name.startswith(prefix))

    def latest_progress(self) -> Optional[dict]:
        """progress.json of the newest `checkpoint_epoch_*` folder, or None for a new run."""
        for name in reversed(self.list_dirs(CHECKPOINT_PREFIX)):
            if self.exists(f"{name}/{PROGRESS_FILE}"):
                return json.loads(self.read_text(f"{name}/{PROGRESS_FILE}"))
        return None

    def upload(self, local_dir: "str | Path", rel: str) -> None:
        """Copy a local folder's files into `rel` (overwriting)."""
        from pyarrow import fs as pafs

        self.fs.create_dir(self._path(rel), recursive=True)
        pafs.copy_files(str(local_dir), self._path(rel), source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)


class TensorBoardLog:
    """Scalars to TensorBoard event files under the run's `tensorboard/` (rank 0 only)."""

    def __init__(self, store: RunStore, rel: str = "tensorboard"):
        from torch.utils.tensorboard import SummaryWriter

        self.store, self.rel = store, rel
        local = store.local_path(rel)
        self._staging = None if local else tempfile.mkdtemp(prefix="promptkd_tb_")
        self.log_dir = local or self._staging
        self.writer = SummaryWriter(self.log_dir)

    def scalars(self, metrics: dict, step: int, prefix: str = "") -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}{key}", value, step)

    def flush(self) -> None:
        self.writer.flush()
        if self._staging:
            self.store.upload(self._staging, self.rel)

    def close(self) -> None:
        self.flush()
        self.writer.close()
        if self._staging:
            shutil.rmtree(self._staging, ignore_errors=True)


def localize_artifact(path: str) -> str:
    """An artifact `NAME` (NAME.safetensors + NAME.json) on a URI → a local copy's `NAME`; local
    paths are returned unchanged (suffixes stripped)."""
    stem = path.removesuffix(".safetensors").removesuffix(".json")
    if "://" not in stem:
        return stem
    from pyarrow import fs as pafs

    filesystem, inner = pafs.FileSystem.from_uri(stem)
    local = os.path.join(tempfile.mkdtemp(prefix="promptkd_artifact_"), inner.rsplit("/", 1)[-1])
    for suffix in (".safetensors", ".json"):
        with filesystem.open_input_stream(inner + suffix) as src, open(local + suffix, "wb") as dst:
            dst.write(src.read())
    return local


def check_fingerprint(progress: dict, fingerprint: dict, where: str) -> None:
    """Refuse to resume from a checkpoint made by another student or against other class vectors."""
    theirs = progress.get("fingerprint", {})
    diff = {k: (theirs.get(k), v) for k, v in fingerprint.items() if theirs.get(k) != v}
    if diff:
        key, (old, new) = next(iter(diff.items()))
        raise CheckpointMismatchError(
            f"The checkpoint {where} of this run was made with {key}={old!r}, but the job now has "
            f"{new!r}; use another job name or storage_path to start a new run.")


def save_train_state(directory: "str | Path", student, optimizer, scheduler, progress: dict) -> None:
    """Write a checkpoint folder: trainable tensors, optimiser + scheduler state, progress JSON."""
    from safetensors.torch import save_file

    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in student.trainable_state_dict().items()}
    save_file(state, str(directory / STUDENT_FILE))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
               directory / TRAIN_STATE_FILE)
    (directory / PROGRESS_FILE).write_text(json.dumps(progress, indent=1) + "\n")


def read_progress(directory: "str | Path") -> dict:
    return json.loads((Path(directory) / PROGRESS_FILE).read_text())


def load_train_state(directory: "str | Path", student, optimizer, scheduler, fingerprint: dict) -> dict:
    """Restore a checkpoint folder into the (unwrapped) student, optimiser and scheduler; → progress."""
    from safetensors.torch import load_file

    directory = Path(directory)
    progress = read_progress(directory)
    check_fingerprint(progress, fingerprint, directory.name)
    student.load_trainable_state_dict(load_file(str(directory / STUDENT_FILE)))
    state = torch.load(directory / TRAIN_STATE_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return progress
