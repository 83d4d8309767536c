"""A verified on-disk array cache: bottleneck features (``features.extract_features``, notebook
``05_bottleneck_features``) and every frozen-prefix activation (``activations.ActivationCache``, notebook
``07_experiments``, ``python -m course_utils sweep``).

Each entry is one ``.npz`` file holding the array and a key: what it was computed from (the caller's
``key``, e.g. the backbone, layer and image ids), its shape, dtype and SHA-256. It is written to a temporary
file and moved into place (``os.replace``), so a killed run never leaves half a file under the real name.
Reading never unpickles (``allow_pickle=False``). A file that cannot be read, or whose key, shape, dtype or
checksum does not match (truncated, bit-flipped, another file copied over it), is reported in a
:class:`CacheWarning` naming it, deleted, and computed again: the cache heals itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from course_utils.checks import atomic_file

__all__ = ["CacheWarning", "cached", "load", "save"]

FORMAT = 1


class CacheWarning(UserWarning):
    """A cache file was unreadable or did not match its key; it was deleted and will be recomputed."""


def _digest(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


def _meta(values: np.ndarray, key: str) -> dict:
    return {"format": FORMAT, "key": key, "shape": list(values.shape), "dtype": values.dtype.str,
            "sha256": _digest(values)}


def save(path: str | os.PathLike, values: np.ndarray, key: str) -> Path:
    """Store ``values`` under ``path`` with its key, shape, dtype and checksum (atomic replace)."""
    values = np.ascontiguousarray(values)
    with atomic_file(path, "wb") as handle:
        np.savez(handle, values=values, meta=np.array(json.dumps(_meta(values, key))))
    return Path(path)


def _read(path: Path, key: str) -> np.ndarray:
    """The stored array, or ValueError saying what is wrong with the file."""
    with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as stored:  # closed even when damaged
        if set(stored.files) != {"values", "meta"}:
            raise ValueError(f"not a course cache file (it holds {sorted(stored.files)})")
        meta = json.loads(str(stored["meta"]))
        values = stored["values"]
    if meta.get("format") != FORMAT or meta.get("key") != key:
        raise ValueError("it was computed for other inputs (its key differs)")
    if list(values.shape) != meta.get("shape") or values.dtype.str != meta.get("dtype"):
        raise ValueError(f"shape/dtype {values.shape} {values.dtype} differ from its key")
    if _digest(values) != meta.get("sha256"):
        raise ValueError("its checksum does not match (the file was changed or damaged)")
    return values


def _reason(err: BaseException) -> str:
    """A short reason for the warning; never numpy's advice to load with pickling turned on."""
    text = (str(err).splitlines() or [""])[0]
    if "pickle" in text.lower():
        text = "not an array file written by course_utils"
    return f"{type(err).__name__}: {text}"[:200]


def load(path: str | os.PathLike, key: str) -> np.ndarray | None:
    """The array stored under ``path`` for ``key``; None when there is none or it failed verification
    (then the file is deleted, with a CacheWarning naming it)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return _read(path, key)
    except Exception as err:  # noqa: BLE001 - any damage (zip, zlib, header, JSON, OS) means: recompute
        warnings.warn(f"cache file {path} is unusable ({_reason(err)}); deleted it, recomputing",
                      CacheWarning, stacklevel=2)
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        return None


def cached(path: str | os.PathLike, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``load(path, key)``, else ``compute()`` stored with ``save``."""
    values = load(path, key)
    if values is None:
        values = np.asarray(compute())
        save(path, values, key)
    return values
