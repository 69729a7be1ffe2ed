"""One file system for every read and write: a local folder or a URI (`s3://`, `gs://`, `file://`, …).

    Storage("runs").child("toy_b2n").write_text("job.yaml", text)     # runs/toy_b2n/job.yaml
    Storage("s3://bucket/data").list_dir("oxford_pets/images")        # through pyarrow.fs
    read_bytes("s3://bucket/data/x.jpg")                              # one file, any scheme

Design decisions:
- A path is a URI when it contains "://" (`is_uri`); every other string is a local path. URIs go
  through `pyarrow.fs` (the file systems Ray Data and Ray Train use); local paths through `os`,
  whose `scandir` lists ImageNet's 1.28 M files without a `stat` per file. `file://` URIs take the
  pyarrow path, which is how tests exercise the remote code on local disk.
- Writes are atomic, and this is the one place that writes: bytes go to a hidden temporary name
  beside the target (flushed to disk), which is then moved over it; a reader never sees a
  half-written file under the real name (on object stores the final PUT is atomic by itself). A
  writer killed half-way leaves at most a hidden `.NAME.*.tmp`, which listings skip and no reader
  opens; a writer that fails with an exception removes it.
- Several files that belong together (an artifact and its sidecar, a report) go through
  `write_files`: every one is first written under its temporary name, and only when all of them
  are complete are they moved into place, in the given order (the sidecar or manifest last).
  A writer killed while writing leaves the previous version whole; between the moves
  (microseconds) the readers' hashes (`artifacts`, the soft-label manifest) refuse a mixed pair.
- Listings skip hidden entries (names starting with ".") and are sorted: every reader is
  deterministic whatever the file system's order.
- Every failure a user can cause is a `StorageError`, one sentence naming the path.
- Nothing here imports torch or Ray.
"""

from __future__ import annotations

import functools
import os
import shutil
import uuid
from pathlib import Path
from typing import Optional

from .errors import StorageError


def is_uri(path: "str | os.PathLike") -> bool:
    return "://" in str(path)


def absolute(path: "str | os.PathLike") -> str:
    """URIs unchanged (no trailing '/'); local paths made absolute (`~` expanded)."""
    text = str(path)
    return text.rstrip("/") if is_uri(text) else os.path.abspath(os.path.expanduser(text))


def join(*parts: str) -> str:
    """Join '/'-separated relative path parts, dropping empty ones."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


@functools.lru_cache(maxsize=4096)  # one file system per folder URI and process, not one per file
def _pyarrow_fs(uri: str):
    from pyarrow import fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises several types for a bad or unsupported URI
        raise StorageError(
            f"Expected a local path or a URI that pyarrow can open, found {uri!r} ({exc})."
        ) from exc


class Storage:
    """A folder on local disk or behind a URI; every method takes a '/'-separated path relative to
    it ("" is the folder itself)."""

    def __init__(self, root: "str | os.PathLike"):
        self.root = absolute(root)  # for people: an absolute local path or a URI
        if is_uri(self.root):
            self._fs, base = _pyarrow_fs(self.root)
            self._base = base.rstrip("/")
        else:
            self._fs, self._base = None, self.root

    @property
    def is_local(self) -> bool:
        return self._fs is None

    def child(self, rel: str) -> "Storage":
        return Storage(self.path(rel))

    def path(self, rel: str = "") -> str:
        """The absolute local path or the URI of `rel`."""
        if not rel:
            return self.root
        return os.path.join(self.root, *rel.split("/")) if self.is_local else f"{self.root}/{rel.strip('/')}"

    def local_path(self, rel: str = "") -> Optional[str]:
        """The local path of `rel`, or None when the storage is remote."""
        return self.path(rel) if self.is_local else None

    def _fs_path(self, rel: str) -> str:
        return f"{self._base}/{rel.strip('/')}" if rel else self._base

    def _kind(self, rel: str) -> Optional[str]:
        if self.is_local:
            local = self.path(rel)
            return "dir" if os.path.isdir(local) else "file" if os.path.isfile(local) else None
        from pyarrow.fs import FileType

        kind = self._fs.get_file_info(self._fs_path(rel)).type
        return {FileType.Directory: "dir", FileType.File: "file"}.get(kind)

    def exists(self, rel: str = "") -> bool:
        return self._kind(rel) is not None

    def is_dir(self, rel: str = "") -> bool:
        return self._kind(rel) == "dir"

    def is_file(self, rel: str = "") -> bool:
        return self._kind(rel) == "file"

    def list_dir(self, rel: str = "") -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Sorted names of the non-hidden sub-folders and files directly inside `rel` (none when
        `rel` does not exist)."""
        dirs: list[str] = []
        files: list[str] = []
        if self.is_local:
            if not os.path.isdir(self.path(rel)):
                return (), ()
            with os.scandir(self.path(rel)) as entries:
                for entry in entries:
                    if not entry.name.startswith("."):
                        (dirs if entry.is_dir() else files if entry.is_file() else []).append(entry.name)
        else:
            from pyarrow.fs import FileSelector, FileType

            for info in self._fs.get_file_info(FileSelector(self._fs_path(rel), allow_not_found=True)):
                if not info.base_name.startswith("."):
                    kind = {FileType.Directory: dirs, FileType.File: files}.get(info.type, [])
                    kind.append(info.base_name)
        return tuple(sorted(dirs)), tuple(sorted(files))

    def read_bytes(self, rel: str) -> bytes:
        try:
            if self.is_local:
                with open(self.path(rel), "rb") as f:
                    return f.read()
            with self._fs.open_input_stream(self._fs_path(rel)) as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise StorageError(
                f"Expected a file at {self.path(rel)}, found none ({type(exc).__name__})."
            ) from exc

    def read_text(self, rel: str) -> str:
        data = self.read_bytes(rel)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StorageError(
                f"Expected UTF-8 text in {self.path(rel)}, found undecodable bytes ({exc})."
            ) from None

    def open_input_file(self, rel: str):
        """`rel` for a reader that seeks (Parquet's row groups): its local path, or a random-access
        file of this storage's file system (made once per folder and process)."""
        return self.path(rel) if self.is_local else self._fs.open_input_file(self._fs_path(rel))

    def write_bytes(self, rel: str, data: bytes) -> str:
        """Write `data` to `rel` atomically (temporary name, then a move); → its path or URI."""
        return self.write_files({rel: data})[0]

    def write_files(self, files: "dict[str, bytes]") -> list[str]:
        """Write several files as one: each to a temporary name first, then all moved into place in
        the order given (put a sidecar or manifest last); → their paths or URIs."""
        temps: dict[str, str] = {}
        try:
            for rel, data in files.items():
                temps[rel] = self._write_temporary(rel, data)
            for rel, temp in list(temps.items()):
                self._move(temp, rel)
                del temps[rel]
        finally:
            for temp in temps.values():  # an exception before every file was in place
                self._remove_quietly(temp)
        return [self.path(rel) for rel in files]

    def _write_temporary(self, rel: str, data: bytes) -> str:
        parent, _, name = rel.strip("/").rpartition("/")
        temp = join(parent, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        if self.is_local:
            os.makedirs(self.path(parent), exist_ok=True)
            with open(self.path(temp), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        else:
            self._fs.create_dir(self._fs_path(parent), recursive=True)
            with self._fs.open_output_stream(self._fs_path(temp)) as f:
                f.write(data)
        return temp

    def _move(self, temp: str, rel: str) -> None:
        if self.is_local:
            os.replace(self.path(temp), self.path(rel))
        else:
            self._fs.move(self._fs_path(temp), self._fs_path(rel))

    def _remove_quietly(self, temp: str) -> None:
        try:
            if self.is_local:
                os.remove(self.path(temp))
            else:
                self._fs.delete_file(self._fs_path(temp))
        except OSError:
            pass

    def write_text(self, rel: str, text: str) -> str:
        return self.write_bytes(rel, text.encode("utf-8"))

    def delete(self, rel: str) -> None:
        """Remove the file or folder `rel` (nothing when it does not exist)."""
        kind = self._kind(rel)
        if kind is None:
            return
        if self.is_local and kind == "dir":
            shutil.rmtree(self.path(rel))
        elif self.is_local:
            os.remove(self.path(rel))
        elif kind == "dir":
            self._fs.delete_dir(self._fs_path(rel))
        else:
            self._fs.delete_file(self._fs_path(rel))

    def upload(self, local_dir: "str | Path", rel: str = "") -> None:
        """Copy the files of a local folder into `rel`, each written atomically."""
        local_dir = Path(local_dir)
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            self.write_bytes(join(rel, path.relative_to(local_dir).as_posix()), path.read_bytes())


def _parent_and_name(path: "str | os.PathLike") -> tuple[Storage, str]:
    text = absolute(path)
    parent, name = text.rpartition("/")[::2] if is_uri(text) else os.path.split(text)
    return Storage(parent), name


def read_bytes(path: "str | os.PathLike") -> bytes:
    """The bytes of one local file or URI."""
    storage, name = _parent_and_name(path)
    return storage.read_bytes(name)


def open_input_file(path: "str | os.PathLike"):
    """`Storage.open_input_file` of one local file or URI."""
    storage, name = _parent_and_name(path)
    return storage.open_input_file(name)


def write_bytes(path: "str | os.PathLike", data: bytes) -> str:
    """Write one local file or URI atomically; → its absolute path or URI."""
    storage, name = _parent_and_name(path)
    return storage.write_bytes(name, data)


def write_files(paths: "dict[str, bytes]") -> list[str]:
    """`Storage.write_files` for files given by full path or URI, all in one folder."""
    parents = {_parent_and_name(p)[0].root for p in paths}
    if len(parents) != 1:
        raise StorageError(f"Files written together must share one folder, found {sorted(parents)}.")
    storage = _parent_and_name(next(iter(paths)))[0]
    return storage.write_files({_parent_and_name(p)[1]: data for p, data in paths.items()})


def exists(path: "str | os.PathLike") -> bool:
    storage, name = _parent_and_name(path)
    return storage.exists(name)
