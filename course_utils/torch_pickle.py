"""A safe reader for legacy (non-zip) PyTorch checkpoints, without torch.

Explained in notebook ``02_replace_softmax``: the EfficientNet-Lite0 ImageNet weights ship as a
PyTorch ``.pth`` file, and ``torch.load`` on an untrusted file can run arbitrary code, because a
pickle may name any importable function and call it. This module reads the file with a
:class:`pickle.Unpickler` whose ``find_class`` only hands out ``collections.OrderedDict``,
``torch._utils._rebuild_tensor(_v2)`` (replaced by a numpy re-implementation) and the plain
``torch.<X>Storage`` types. Anything else is refused *before* it is called, so no code from the
file ever runs.

Legacy file layout (``torch.save(..., _use_new_zipfile_serialization=False)``), all pickles:

1. magic number ``0x1950a86a20f9469cfc6c``, 2. protocol version ``1001``, 3. system info
   (``little_endian``, ``type_sizes``), 4. the object itself, whose persistent ids are
   ``('storage', storage_type, key, location, numel, view_metadata)``, 5. the list of storage keys,
6. for each key: an 8-byte little-endian element count, then the raw little-endian bytes.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["UnsafeCheckpointError", "load_legacy_state_dict", "read_legacy_state_dict"]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
_ZIP_SIGNATURE = b"PK\x03\x04"

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """The file asks to import something other than plain tensors; refused, nothing ran (notebook 00_setup)."""


@dataclass(frozen=True)
class _StorageType:
    """Stands in for ``torch.FloatStorage`` etc.: only carries the numpy dtype (not callable)."""

    name: str
    dtype: np.dtype


@dataclass
class _Storage:
    """A storage announced by a persistent id; ``data`` is filled from the raw section later."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass(frozen=True)
class _StorageView:
    """An old-style view into a root storage (``view_metadata`` in the persistent id)."""

    root: _Storage
    offset: int
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    """A tensor whose storage bytes have not been read yet (they follow the object pickle)."""

    storage: _Storage | _StorageView
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self) -> np.ndarray:
        """Rebuild the tensor as a C-contiguous numpy copy of (offset, size, stride)."""
        storage = self.storage
        base_offset = 0
        if isinstance(storage, _StorageView):
            base_offset, storage = storage.offset, storage.root
        if storage.data is None:
            raise ValueError(f"storage {storage.key!r} has no data in the file")
        flat = storage.data[base_offset + self.offset :]
        if 0 in self.size:
            return np.zeros(self.size, dtype=storage.dtype)
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat, shape=self.size, strides=tuple(s * item for s in self.stride), writeable=False
        )
        return np.array(view, copy=True, order="C")


def _check_int_tuple(value: Any, what: str) -> tuple[int, ...]:
    """Return ``value`` as a tuple of non-negative ints, or raise ValueError."""
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise ValueError(f"tensor {what} must be a tuple of non-negative ints, got {value!r}")
    return tuple(value)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> _TensorRef:
    """numpy stand-in for ``torch._utils._rebuild_tensor``; checks every index stays in bounds."""
    if not isinstance(storage, (_Storage, _StorageView)):
        raise ValueError(f"tensor storage must come from a persistent id, got {type(storage).__name__}")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise ValueError(f"tensor storage offset must be a non-negative int, got {storage_offset!r}")
    size_t = _check_int_tuple(size, "size")
    stride_t = _check_int_tuple(stride, "stride")
    if len(size_t) != len(stride_t):
        raise ValueError(f"tensor size {size_t} and stride {stride_t} differ in length")
    if 0 not in size_t:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size_t, stride_t))
        if last >= storage.numel:
            raise ValueError(
                f"tensor (offset {storage_offset}, size {size_t}, stride {stride_t}) reads past "
                f"the end of its storage ({storage.numel} elements)"
            )
    return _TensorRef(storage, storage_offset, size_t, stride_t)


def _rebuild_tensor_v2(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
    backward_hooks: Any = None, metadata: Any = None,
) -> _TensorRef:
    """numpy stand-in for ``torch._utils._rebuild_tensor_v2`` (grad flags and hooks ignored)."""
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only (module, name) pairs a checkpoint may name, and what they are replaced by."""
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    }
    for name, dtype in _STORAGE_DTYPES.items():
        allowed[("torch", name)] = _StorageType(name, dtype)
    return allowed


_ALLOWED = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the whitelisted globals and ``('storage', ...)`` ids."""

    def __init__(self, file: io.BytesIO, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        """Return the stand-in for an allowed global; refuse everything else before it runs."""
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"refused: the checkpoint asks to run `{module}.{name}`; only plain PyTorch state "
                "dicts (tensors, storages, OrderedDict) are accepted. Nothing from the file was run."
            ) from None

    def persistent_load(self, pid: Any) -> _Storage | _StorageView:
        """Turn ``('storage', type, key, location, numel[, view_metadata])`` into a storage."""
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage":
            raise ValueError(f"unsupported persistent id {pid!r}; expected a ('storage', ...) tuple")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, _StorageType):
            raise ValueError(f"persistent id names {storage_type!r}, not a torch storage type")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise ValueError(f"malformed storage persistent id {pid!r}")
        storage = self._storages.setdefault(key, _Storage(key, storage_type.dtype, numel))
        if storage.dtype != storage_type.dtype or storage.numel != numel:
            raise ValueError(f"storage {key!r} is declared twice with different types or sizes")
        return storage if view is None else _make_view(storage, view)


def _make_view(root: _Storage, view: Any) -> _StorageView:
    """Validate ``view_metadata = (view_key, offset, view_size)`` of an old storage view."""
    if not (isinstance(view, tuple) and len(view) == 3 and all(isinstance(v, int) for v in view[1:])):
        raise ValueError(f"malformed storage view metadata {view!r}")
    _key, offset, numel = view
    if offset < 0 or numel < 0 or offset + numel > root.numel:
        raise ValueError(f"storage view {view!r} lies outside its storage ({root.numel} elements)")
    return _StorageView(root, offset, numel)


def _load_plain(stream: io.BytesIO) -> Any:
    """Unpickle one header object (no globals or persistent ids are valid here)."""
    return _RestrictedUnpickler(stream, {}).load()


def _check_header(stream: io.BytesIO) -> None:
    """Check magic number, protocol version and byte order of a legacy checkpoint."""
    if _load_plain(stream) != MAGIC_NUMBER:
        raise ValueError("not a legacy PyTorch checkpoint (wrong magic number)")
    version = _load_plain(stream)
    if version != PROTOCOL_VERSION:
        raise ValueError(f"unsupported legacy protocol version {version!r} (expected {PROTOCOL_VERSION})")
    sys_info = _load_plain(stream)
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise ValueError("only checkpoints saved on a little-endian machine are supported")


def _read_storages(stream: io.BytesIO, storages: dict[str, _Storage]) -> None:
    """Read the storage key list and each storage's raw little-endian bytes."""
    keys = _load_plain(stream)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ValueError("malformed storage key list")
    if sorted(keys) != sorted(storages):
        raise ValueError(f"storage key list does not match the storages used by the tensors")
    for key in keys:
        storage = storages[key]
        header = stream.read(8)
        if len(header) != 8:
            raise ValueError(f"file ends before the data of storage {key!r}")
        (count,) = struct.unpack("<q", header)
        if count != storage.numel:
            raise ValueError(f"storage {key!r} has {count} elements, the pickle said {storage.numel}")
        raw = stream.read(count * storage.dtype.itemsize)
        if len(raw) != count * storage.dtype.itemsize:
            raise ValueError(f"file ends inside the data of storage {key!r}")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)
    if stream.read(1):
        raise ValueError("unexpected bytes after the last storage")


def _as_state_dict(obj: Any) -> OrderedDict[str, np.ndarray]:
    """Materialize a ``{name: tensor}`` mapping (also accepts ``{"state_dict": {...}}``)."""
    if isinstance(obj, dict) and set(obj) == {"state_dict"}:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, _TensorRef) for k, v in obj.items()
    ):
        raise ValueError("the checkpoint is not a state dict (a mapping of names to tensors)")
    return OrderedDict((k, v.materialize()) for k, v in obj.items())


def read_legacy_state_dict(data: bytes) -> OrderedDict[str, np.ndarray]:
    """Parse the bytes of a legacy checkpoint; see :func:`load_legacy_state_dict` (notebook 02_replace_softmax)."""
    if data[:4] == _ZIP_SIGNATURE:
        raise ValueError(
            "this is a zip-format PyTorch checkpoint (torch >= 1.6 default); only the legacy "
            "format is supported here. Re-save it with torch.save(state_dict, path, "
            "_use_new_zipfile_serialization=False)"
        )
    stream = io.BytesIO(data)
    storages: dict[str, _Storage] = {}
    _check_header(stream)
    obj = _RestrictedUnpickler(stream, storages).load()
    _read_storages(stream, storages)
    return _as_state_dict(obj)


_PARSE_ERRORS: tuple[type[BaseException], ...] = (
    pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
    AttributeError, struct.error, OverflowError, MemoryError, RecursionError,
)


def load_legacy_state_dict(path: str | Path) -> OrderedDict[str, np.ndarray]:
    """Read a legacy (non-zip) PyTorch state dict into ``{name: np.ndarray}``, without torch.

    Notebook ``02_replace_softmax`` uses it to load the EfficientNet-Lite0 ImageNet weights. No code
    from the file runs: any global other than ``collections.OrderedDict``, the tensor rebuild
    functions and the plain storage types raises :class:`UnsafeCheckpointError` (a ``ValueError``).
    Truncated, corrupt or zip-format files raise ``ValueError`` naming ``path``.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        return read_legacy_state_dict(data)
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(f"{path}: {err}") from None
    except _PARSE_ERRORS as err:
        raise ValueError(
            f"{path}: cannot read it as a legacy PyTorch checkpoint ({type(err).__name__}: {err})"
        ) from err
