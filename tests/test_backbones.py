"""Tests for course_utils.backbones (notebook 02_replace_softmax): Lite0 in Keras, keras.applications by name."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import keras
import numpy as np
import pytest
import skimage.data
from sklearn.datasets import load_sample_image

from course_utils import backbones as bb
from course_utils.torch_pickle import load_legacy_state_dict

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}
LITE0_BLOCKS = ["stem", "block1a", "block2a", "block2b", "block3a", "block3b", "block4a", "block4b",
                "block4c", "block5a", "block5b", "block5c", "block6a", "block6b", "block6c", "block6d",
                "block7a", "top"]


@pytest.fixture(scope="module")
def lite0() -> keras.Model:
    return bb.load_backbone()


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return load_legacy_state_dict(bb.efficientnet_lite0_checkpoint())


@pytest.fixture(scope="module")
def photo_top5(lite0) -> dict[str, list[str]]:
    """Top-5 class names of Lite0 for photos that ship with scikit-image and scikit-learn."""
    photos = {
        "chelsea": skimage.data.chelsea(), "coffee": skimage.data.coffee(), "rocket": skimage.data.rocket(),
        "china": load_sample_image("china.jpg"), "flower": load_sample_image("flower.jpg"),
    }
    batch = np.stack([bb.to_model_input(image, 224) for image in photos.values()])
    tops = bb.predict_top_k(lite0, "efficientnet_lite0", batch, k=5)
    for name, top in zip(photos, tops):
        print(name, [(c, round(p, 3)) for c, p in top])
    return {name: [c for c, _ in top] for name, top in zip(photos, tops)}


# ----------------------------------------------------------------------------- EfficientNet-Lite0


def test_lite0_parameter_count_and_layer_names(lite0):
    assert lite0.count_params() == 4_694_024
    names = {layer.name for layer in lite0.layers}
    assert {"stem_conv", "stem_bn", "stem_activation", "block1a_dwconv", "block1a_bn", "block2a_expand_conv",
            "block2a_expand_bn", "block2a_project_conv", "block2b_add", "top_conv", "top_bn",
            "top_activation", "avg_pool", "top_dropout", "predictions"} <= names
    assert "block1a_expand_conv" not in names and "block2a_add" not in names
    assert lite0.get_layer("top_dropout").rate == pytest.approx(0.2)
    assert all(l.epsilon == pytest.approx(1e-3) for l in lite0.layers
               if isinstance(l, keras.layers.BatchNormalization))
    assert not any("se_" in n for n in names)


def test_every_checkpoint_tensor_used_once_and_transposed(lite0, state):
    weights = sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert weights == lite0.count_params()
    get = lambda layer: lite0.get_layer(layer).get_weights()  # noqa: E731
    np.testing.assert_array_equal(get("stem_conv")[0], state["_conv_stem.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(get("block2a_dwconv")[0], state["_blocks.1._depthwise_conv.weight"].transpose(2, 3, 0, 1))
    np.testing.assert_array_equal(get("block7a_project_conv")[0], state["_blocks.15._project_conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(get("predictions")[0], state["_fc.weight"].T)
    np.testing.assert_array_equal(get("predictions")[1], state["_fc.bias"])
    np.testing.assert_array_equal(get("top_bn")[3], state["_bn1.running_var"])
    np.testing.assert_array_equal(get("block2a_expand_bn")[0], state["_blocks.1._bn0.weight"])


def test_unused_or_missing_checkpoint_keys_are_listed(state):
    model = bb.build_efficientnet_lite0(64)
    extra = dict(state, **{"_blocks.16._bn0.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=r"unused keys \['_blocks.16._bn0.weight'\]"):
        bb.load_lite0_state_dict(model, extra)
    missing = {k: v for k, v in state.items() if k != "_blocks.3._bn1.bias"}
    with pytest.raises(ValueError, match=r"missing keys \['_blocks.3._bn1.bias'\]"):
        bb.load_lite0_state_dict(model, missing)
    wrong = dict(state, **{"_fc.bias": np.zeros(10, np.float32)})
    with pytest.raises(ValueError, match="do not fit layer predictions"):
        bb.load_lite0_state_dict(model, wrong)


@pytest.mark.slow
def test_lite0_recognises_photos(photo_top5):
    assert CAT_CLASSES & set(photo_top5["chelsea"]), photo_top5["chelsea"]
    assert {"espresso", "cup"} & set(photo_top5["coffee"]), photo_top5["coffee"]
    assert {"missile", "projectile"} & set(photo_top5["rocket"]), photo_top5["rocket"]
    assert "daisy" in photo_top5["flower"], photo_top5["flower"]
    assert {"palace", "monastery", "bell cote", "castle", "pagoda"} & set(photo_top5["china"][:3])


def test_predict_top_k_format_and_order(lite0):
    image = bb.to_model_input(skimage.data.coffee(), 224)
    (top,) = bb.predict_top_k(lite0, "efficientnet_lite0", image[None], k=3)
    assert len(top) == 3 and top[0][0] == "espresso" and top[0][1] > 0.5
    probs = [p for _, p in top]
    assert probs == sorted(probs, reverse=True) and all(isinstance(p, float) for p in probs)
    with pytest.raises(ValueError, match="to_model_input"):
        bb.predict_top_k(lite0, "efficientnet_lite0", np.zeros((1, 100, 100, 3), np.uint8))


@pytest.mark.slow
def test_lite0_other_input_size():
    model = bb.load_backbone("efficientnet_lite0", input_size=160)
    assert model.input_shape == (None, 160, 160, 3) and model.count_params() == 4_694_024
    (top,) = bb.predict_top_k(model, "efficientnet-lite0", bb.to_model_input(skimage.data.coffee(), 160)[None])
    assert "espresso" in [c for c, _ in top]


def test_lite0_weights_none_and_weights_path(lite0, tmp_path):
    random = bb.load_backbone(weights=None, input_size=96)
    assert not np.array_equal(random.get_layer("predictions").get_weights()[1],
                              lite0.get_layer("predictions").get_weights()[1])
    path = tmp_path / "lite0.weights.h5"
    lite0.save_weights(path)
    reloaded = bb.load_backbone("efficientnet_lite0", weights=str(path), input_size=96)
    np.testing.assert_array_equal(reloaded.get_layer("block3b_dwconv").get_weights()[0],
                                  lite0.get_layer("block3b_dwconv").get_weights()[0])
    with pytest.raises(FileNotFoundError):
        bb.load_backbone(weights=str(tmp_path / "nope.pth"))
    bad = tmp_path / "weights.npz"
    bad.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"\.pth, \.keras or \.weights\.h5"):
        bb.load_backbone(weights=bad)


def test_lite0_blocks_and_feature_layer(lite0):
    assert bb.block_names(lite0) == LITE0_BLOCKS
    assert bb.feature_layer(lite0) == "avg_pool"
    blocks = bb.layer_blocks(lite0)
    assert blocks["block2b_add"] == "block2b" and blocks["predictions"] == "top"
    assert blocks["stem_activation"] == "stem" and "input_layer" not in blocks


# ----------------------------------------------------------------------------- names, preprocessing, images


@pytest.mark.parametrize("alias, canonical", [
    ("efficientnet_lite0", "efficientnet_lite0"), ("EfficientNet-Lite0", "efficientnet_lite0"),
    ("ResNet50", "ResNet50"), ("resnet50", "ResNet50"), ("mobilenet_v2", "MobileNetV2"),
    ("EfficientNetB0", "EfficientNetB0"), ("efficientnet_b0", "EfficientNetB0"), ("vgg16", "VGG16"),
])
def test_canonical_names(alias, canonical):
    assert bb.canonical_name(alias) == canonical


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone 'resnet51'.*efficientnet_lite0"):
        bb.load_backbone("resnet51")


def test_preprocess_values_and_no_input_mutation():
    images = np.array([[[[0, 127, 255]]]], dtype=np.uint8)
    np.testing.assert_allclose(bb.preprocess("efficientnet_lite0", images)[0, 0, 0], [-127 / 128, 0, 1])
    np.testing.assert_allclose(bb.preprocess("mobilenet_v2", images)[0, 0, 0], [-1, 127 / 127.5 - 1, 1])
    np.testing.assert_allclose(bb.preprocess("EfficientNetB0", images)[0, 0, 0], [0, 127, 255])
    # caffe mode: RGB -> BGR, minus the ImageNet mean
    np.testing.assert_allclose(bb.preprocess("resnet50", images)[0, 0, 0], [255 - 103.939, 127 - 116.779, -123.68])
    floats = images.astype(np.float32)
    bb.get_preprocess("resnet50")(floats)
    np.testing.assert_array_equal(floats, images)
    assert bb.preprocess("vgg16", images[0]).shape == (1, 1, 1, 3) and bb.preprocess("vgg16", images).dtype == np.float32
    assert bb.preprocessing_name("resnet50") == bb.preprocessing_name("ResNet50") != bb.preprocessing_name("vgg16")
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        bb.preprocess("efficientnet_lite0", np.zeros((2, 8, 8, 4), np.uint8))


def test_to_model_input_center_crops():
    image = np.zeros((100, 300, 3), np.uint8)
    image[:, 100:200] = 255  # only the central square is white
    out = bb.to_model_input(image, 32, crop_fraction=1.0)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8 and out.min() == 255
    assert bb.to_model_input(np.zeros((50, 40), np.uint8), 16).shape == (16, 16, 3)  # grayscale -> RGB


def test_imagenet_classes():
    classes = bb.imagenet_classes()
    assert len(classes) == 1000 and classes[0] == "tench" and classes[281] == "tabby"
    assert classes[967] == "espresso"


def test_available_backbones():
    table = bb.available_backbones()
    assert table["efficientnet_lite0"] == {"input_size": 224, "offline": True, "weights_cached": True}
    assert {"ResNet50", "MobileNetV2", "EfficientNetB0", "VGG16"} <= set(table)
    assert all(bb.canonical_name(name) == name for name in bb.BACKBONES)


# ----------------------------------------------------------------------------- keras.applications


@pytest.mark.slow
@pytest.mark.parametrize("name, feature, first, last", [
    ("ResNet50", "avg_pool", ["conv1", "conv2_block1", "conv2_block2"], ["conv5_block3", "top"]),
    ("mobilenet_v2", None, ["stem", "expanded_conv", "block_1"], ["block_16", "top"]),
    ("EfficientNetB0", "avg_pool", LITE0_BLOCKS[:3], LITE0_BLOCKS[-2:]),
    ("VGG16", "fc2", ["block1", "block2", "block3"], ["block5", "fc", "top"]),
])
def test_keras_applications_blocks_and_features(name, feature, first, last):
    model = bb.load_backbone(name, weights=None)
    blocks = bb.block_names(model)
    assert blocks[:len(first)] == first and blocks[-len(last):] == last
    layer = bb.feature_layer(model)
    if feature is None:  # MobileNetV2's pooling layer has an auto-generated name
        assert isinstance(model.get_layer(layer), keras.layers.GlobalAveragePooling2D)
    else:
        assert layer == feature
    assert len(model.get_layer(layer).output.shape) == 2
    assert model.output_shape == (None, 1000)
    assert model.layers[-1].name == "predictions"


@pytest.fixture
def offline_keras(monkeypatch, tmp_path):
    """An empty Keras cache in tmp_path and a network that always fails (records the URLs asked for)."""
    import keras.src.backend.config as keras_config
    import keras.src.utils.file_utils as file_utils

    asked: list[str] = []

    def no_network(url, *args, **kwargs):
        asked.append(url)
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path / "keras_home"))
    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    return tmp_path / "keras_home" / "models", asked


@pytest.mark.slow
def test_offline_without_cached_weights_explains_what_to_do(offline_keras):
    cache, asked = offline_keras
    assert bb.available_backbones()["MobileNetV2"]["weights_cached"] is False
    with pytest.raises(bb.WeightsUnavailableError) as info:
        bb.load_backbone("mobilenet_v2")
    assert len(asked) == 1, "the download was attempted once"
    message = str(info.value)
    expected = cache / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
    assert str(expected) in message and "efficientnet_lite0" in message and "weights=PATH" in message
    assert isinstance(info.value.__cause__, Exception)


@pytest.mark.slow
def test_keras_weights_from_a_path(tmp_path, offline_keras):
    model = bb.load_backbone("MobileNetV2", weights=None, input_size=96)
    path = tmp_path / "mnv2.weights.h5"
    model.save_weights(path)
    again = bb.load_backbone("mobilenet_v2", weights=path, input_size=96)
    np.testing.assert_array_equal(again.get_layer("Conv1").get_weights()[0], model.get_layer("Conv1").get_weights()[0])
    assert offline_keras[1] == []  # no download attempted


# ----------------------------------------------------------------------------- other Keras backends


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_lite0_on_the_jax_backend(lite0, tmp_path):
    """Same probabilities from the Keras model on JAX (a subprocess: the backend is fixed per process)."""
    out = tmp_path / "probs.npy"
    code = (
        "import sys, keras, numpy as np, skimage.data\n"
        "from course_utils import backbones as bb\n"
        "assert keras.backend.backend() == 'jax'\n"
        "x = bb.preprocess('efficientnet_lite0', bb.to_model_input(skimage.data.coffee()))\n"
        "np.save(sys.argv[1], np.asarray(bb.load_backbone().predict(x, verbose=0)))\n"
    )
    root = str(Path(bb.__file__).resolve().parents[1])
    env = dict(os.environ, KERAS_BACKEND="jax",
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    result = subprocess.run([sys.executable, "-c", code, str(out)], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    x = bb.preprocess("efficientnet_lite0", bb.to_model_input(skimage.data.coffee()))
    np.testing.assert_allclose(np.load(out), lite0.predict(x, verbose=0), atol=1e-4)
