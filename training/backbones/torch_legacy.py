"""Read a PyTorch state dict saved in the legacy (pre-zip) format, with pickle and numpy only: no torch needed.

The legacy file is a sequence of pickles: the magic number, the protocol version, system info, then the object
itself, whose tensors are persistent ids `('storage', <storage class>, key, location, numel, view)` rebuilt by
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`; then a pickled list of the storage keys,
then for each key an int64 little-endian element count and the raw bytes.
"""

from __future__ import annotations

import collections
import pickle
from pathlib import Path

import numpy as np

from services.core.errors import ConfigError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _Storage:
    def __init__(self, dtype, key: str, numel: int):
        self.dtype, self.key, self.numel = dtype, key, numel
        self.data: np.ndarray | None = None


class _Tensor:
    """A view into a storage, resolved once the raw bytes have been read."""

    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)

    def resolve(self) -> np.ndarray:
        data = self.storage.data
        if not self.size:
            return np.array(data[self.offset], dtype=data.dtype)
        itemsize = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], shape=self.size, strides=tuple(s * itemsize for s in self.stride))
        return np.ascontiguousarray(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *_rest):
    return _Tensor(storage, storage_offset, size, stride)


class _StorageType:
    def __init__(self, name: str):
        self.name = name


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict[str, _Storage]):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module, name):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unexpected global {module}.{name} in a state dict")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid[:5]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {kind!r}")
        name = storage_type.name if isinstance(storage_type, _StorageType) else str(storage_type)
        if key not in self.storages:
            self.storages[key] = _Storage(_STORAGE_DTYPES[name], key, int(numel))
        return self.storages[key]


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """name -> numpy array of a legacy-format `.pth` state dict."""
    path = Path(path)
    storages: dict[str, _Storage] = {}
    try:
        with path.open("rb") as file:
            magic = pickle.load(file)
            if magic != LEGACY_MAGIC:
                raise ConfigError(f"{path}: not a legacy PyTorch file (a zip-format file needs torch)")
            pickle.load(file)  # protocol version
            pickle.load(file)  # system info
            state = _Unpickler(file, storages).load()
            keys = pickle.load(file)
            for key in keys:
                storage = storages[key]
                count = int(np.frombuffer(file.read(8), dtype="<i8")[0])
                raw = file.read(count * np.dtype(storage.dtype).itemsize)
                storage.data = np.frombuffer(raw, dtype=storage.dtype).copy()
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError) as exc:
        raise ConfigError(f"cannot read PyTorch weights {path}: {type(exc).__name__}: {exc}") from None
    return {name: value.resolve() if isinstance(value, _Tensor) else np.asarray(value)
            for name, value in state.items()}
