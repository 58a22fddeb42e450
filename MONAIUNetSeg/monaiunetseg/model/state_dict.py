"""Reading PyTorch state_dict files (``torch.save`` zip format) as numpy arrays, without importing torch.

Why: ``import torch`` alone takes 1.4-1.6 s on a 2-core machine, twice the start-up budget of the lean (ONNX
Runtime) inference path, which only needs the weights' numbers. As safe as ``torch.load(weights_only=True)``:
the unpickler resolves only an allow-list of names (OrderedDict, torch's tensor/parameter rebuild functions and
storage types), so a file can never run code. Anything else (legacy non-zip files, other objects) raises
:class:`StateDictError`, and the caller falls back to torch, which then gives the usual error for a bad file.
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16, "LongStorage": np.int64,
    "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


# What a weights archive may inflate to: a few hundred MiB for any network the bundle builds. Torch stores entries
# uncompressed, so a high ratio means a zip crafted (or broken) to fill the memory on load.
MAX_ARCHIVE_BYTES = 2 * 2**30
MAX_RATIO, RATIO_FROM_BYTES = 20, 64 * 2**20


class StateDictError(ValueError):
    """The file is not a state_dict this reader can read without torch."""


def archive_problem(path: str | os.PathLike) -> str | None:
    """Why the zip at ``path`` is not loaded (it would inflate beyond :data:`MAX_ARCHIVE_BYTES`, or more than
    :data:`MAX_RATIO` times its size), from the sizes its directory declares, which readers hold entries to;
    None for a sane archive or a file that is no zip (the loader then says what it is)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    inflated = sum(i.file_size for i in infos)
    packed = max(os.path.getsize(path), 1)
    if inflated > MAX_ARCHIVE_BYTES or (inflated > RATIO_FROM_BYTES and inflated > MAX_RATIO * packed):
        return (f"{path}: weights archive would inflate to {inflated / 2**30:.2f} GiB from {packed / 2**20:.1f} MiB "
                f"(limit {MAX_ARCHIVE_BYTES / 2**30:.0f} GiB, or {MAX_RATIO}x the file); not loaded")
    return None


class _StorageType:
    def __init__(self, name: str) -> None:
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_args) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2``: a strided view of the storage, copied out."""
    if not size:
        return np.array(storage[offset])
    itemsize = storage.dtype.itemsize
    if offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.size:
        raise StateDictError("tensor extends past its storage")
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride))
    return np.array(view)


def _rebuild_parameter(data: np.ndarray, *_args) -> np.ndarray:
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(file)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise StateDictError(f"refusing to load {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise StateDictError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        raw = self.archive.read(f"{self.prefix}/data/{key}")
        return np.frombuffer(raw, dtype=storage_type.dtype.newbyteorder("<"), count=int(numel))


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state_dict in ``path`` as ``{name: array}`` (a training checkpoint's ``network`` entry if it is one)."""
    problem = archive_problem(path)
    if problem:
        raise StateDictError(problem)
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise StateDictError("no single data.pkl in the archive")
            prefix = pickles[0][: -len("/data.pkl")]
            if f"{prefix}/byteorder" in archive.namelist() and archive.read(f"{prefix}/byteorder") != b"little":
                raise StateDictError("big-endian archive")
            with archive.open(pickles[0]) as fh:
                state = _Unpickler(fh, archive, prefix).load()
    except StateDictError:
        raise
    except Exception as exc:  # not a zip, truncated, pickle errors of any kind
        raise StateDictError(f"{path}: {exc.__class__.__name__}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("network"), dict):
        state = state["network"]
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise StateDictError(f"{path}: not a plain state_dict of tensors")
    return dict(state)
