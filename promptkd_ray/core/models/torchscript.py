"""The weights of a TorchScript archive (OpenAI's released `ViT-B-16.pt`, …) without running it.

`torch.jit.load` runs code stored in the archive while loading it (a scripted `__setstate__` can,
for one, create files through `torch.from_file`), so it is never called on a file a user names.
An archive is a zip: `ROOT/data.pkl` pickles the module tree, `ROOT/data/N` holds the raw storage
bytes, and `ROOT/code/…` the TorchScript source of each module class, which declares its
`__parameters__` and `__buffers__`. This module reads exactly those pieces.

Design decisions:
- The pickle is read by a `pickle.Unpickler` whose `find_class` allows only the tensor rebuild
  function (our own implementation), storage types (mapped to dtypes), `collections.OrderedDict`
  and TorchScript's list helpers; every `__torch__.*` class becomes an inert record that keeps its
  attribute dict. Any other global is refused, so nothing named by the file is ever called.
- The state dict is what `torch.jit.load(path).state_dict()` returns: for each module, the tensors
  its class declares as parameters or buffers, then its sub-modules, dotted. Other tensor
  attributes (OpenAI's `attn_mask`) are left out, as `state_dict` leaves them out.
- The code files are only searched with regular expressions for the two declaration lists; they
  are never compiled or run.
- Failures are `ValueError`s with one sentence; callers wrap them in their own error type.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
import zipfile

import torch

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_DECLARATION = re.compile(r"^\s+__(parameters|buffers)__ = \[(.*)\]\s*$", re.M)
_CLASS = re.compile(r"^class (\w+)\(", re.M)


def torchscript_root(path: "str | os.PathLike") -> str | None:
    """The folder name inside a zip that holds a TorchScript archive (`ROOT/constants.pkl` or
    `ROOT/code/`), or None when `path` is not one."""
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                root, _, rest = name.partition("/")
                if rest == "constants.pkl" or rest.startswith("code/"):
                    return root
    except (OSError, zipfile.BadZipFile):
        return None
    return None


def is_torchscript(path: "str | os.PathLike") -> bool:
    """`path` is a TorchScript archive (whatever its name): never hand it to `torch.jit.load` or,
    before torch 2.6, to `torch.load`, which would pass it on."""
    return torchscript_root(path) is not None


class _Record:
    """An instance of a TorchScript class, as an inert record of its pickled state."""

    qualname = ""

    def __init__(self, *args, **kwargs):
        self.state = None

    def __setstate__(self, state):
        self.state = state


class _StorageKind:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    if not isinstance(storage, torch.Tensor):
        raise ValueError("a tensor refers to something that is not a storage")
    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset))


_HELPERS = {  # torch.jit._pickle: how TorchScript pickles typed lists and type tags
    "build_intlist": lambda x: x,
    "build_doublelist": lambda x: x,
    "build_boollist": lambda x: x,
    "build_tensorlist": lambda x: x,
    "build_tensor_from_id": None,
    "restore_type_tag": lambda value, _: value,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.root, self.classes = archive, root, {}

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            if qualname not in self.classes:
                self.classes[qualname] = type(name, (_Record,), {"qualname": qualname})
            return self.classes[qualname]
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return lambda data, requires_grad=False, hooks=None: data
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageKind(_STORAGE_DTYPES[name])
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch.jit._pickle" and _HELPERS.get(name) is not None:
            return _HELPERS[name]
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a weights file never needs")

    def persistent_load(self, pid):
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageKind)
        ):
            raise pickle.UnpicklingError(f"it has an unknown persistent id {str(pid)[:60]}")
        data = bytearray(self.archive.read(f"{self.root}/data/{pid[2]}"))
        if not data:
            return torch.empty(0, dtype=pid[1].dtype)
        return torch.frombuffer(data, dtype=pid[1].dtype)


def _declarations(archive: zipfile.ZipFile, root: str) -> dict[str, set[str]]:
    """Qualified class name → the names it declares as parameters or buffers."""
    found: dict[str, set[str]] = {}
    head = f"{root}/code/"
    for name in archive.namelist():
        if not (name.startswith(head) and name.endswith(".py")):
            continue
        module = name[len(head) : -len(".py")].replace("/", ".")
        text = archive.read(name).decode("utf-8", errors="replace")
        starts = [(m.start(), m.group(1)) for m in _CLASS.finditer(text)] + [(len(text), "")]
        for (start, cls), (end, _) in zip(starts, starts[1:]):
            names = found.setdefault(f"{module}.{cls}", set())
            for match in _DECLARATION.finditer(text, start, end):
                names.update(re.findall(r'"([^"]*)"', match.group(2)))
    return found


def _flatten(record: _Record, declared: dict[str, set[str]], prefix: str, out: dict) -> None:
    if not isinstance(record.state, dict):
        raise ValueError(f"its module {record.qualname} stores its state in a custom form")
    names = declared.get(record.qualname)
    if names is None:
        raise ValueError(f"it has no source for module class {record.qualname}")
    for key, value in record.state.items():
        if isinstance(value, torch.Tensor) and key in names:
            out[prefix + key] = value
        elif isinstance(value, _Record):
            _flatten(value, declared, f"{prefix}{key}.", out)


def read_torchscript_weights(path: "str | os.PathLike") -> dict[str, torch.Tensor]:
    """The state dict of a TorchScript archive, read without running any of it (`ValueError` with
    one sentence when the file is not an archive this reader understands)."""
    root = torchscript_root(path)
    if root is None:
        raise ValueError(f"{path} is not a TorchScript archive")
    try:
        with zipfile.ZipFile(path) as archive:
            obj = _Unpickler(archive.read(f"{root}/data.pkl"), archive, root).load()
            if not isinstance(obj, _Record):
                raise ValueError("its data.pkl does not hold a module")
            out: dict[str, torch.Tensor] = {}
            _flatten(obj, _declarations(archive, root), "", out)
    except Exception as exc:  # refused globals, missing entries, truncated zips, bad shapes: nothing ran
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ValueError(f"TorchScript archive {path} is not readable as weights ({first})") from None
    return out
