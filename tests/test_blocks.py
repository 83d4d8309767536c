"""Tests for course_utils.blocks (notebooks 02_replace_softmax, 04_freezing): which block each layer is in."""

from __future__ import annotations

import keras
import pytest

from course_utils import blocks
from course_utils.backbones import load_backbone, preprocessing_layer

LITE0_BLOCKS = ["stem", "block1a", "block2a", "block2b", "block3a", "block3b", "block4a", "block4b",
                "block4c", "block5a", "block5b", "block5c", "block6a", "block6b", "block6c", "block6d",
                "block7a", "top"]


@pytest.fixture(scope="module")
def lite0() -> keras.Model:
    return load_backbone("efficientnet_lite0", weights=None, input_size=32)


@pytest.mark.parametrize("layer, block", [
    ("stem_conv", "stem"), ("rescaling_1", "stem"), ("normalization", "stem"), ("preprocessing", "stem"),
    ("block2a_expand_conv", "block2a"), ("block7a_project_bn", "block7a"), ("top_conv", "top"),
    ("conv1_conv", "conv1"), ("pool1_pad", "conv1"), ("conv3_block2_1_relu", "conv3_block2"), ("post_bn", "top"),
    ("Conv1", "stem"), ("bn_Conv1", "stem"), ("expanded_conv_project", "expanded_conv"),
    ("block_16_project_BN", "block_16"), ("Conv_1_bn", "top"), ("out_relu", "top"),
    ("block3_conv2", "block3"), ("flatten", "fc"), ("fc2", "fc"),
    ("avg_pool", "top"), ("global_average_pooling2d_3", "top"), ("dropout_1", "top"), ("predictions", "top"),
    ("top_dropout", "top"),
])
def test_block_of_rules(layer, block):
    assert blocks.block_of(layer) == block


def test_block_of_unknown_names_and_head_name():
    assert blocks.HEAD_NAME == "head"
    for name in ("mixed3", "preprocessing_2", "head"):
        with pytest.raises(ValueError, match=f"cannot tell the block of layer '{name}'"):
            blocks.block_of(name)


def test_lite0_blocks_and_feature_layer(lite0):
    assert blocks.block_names(lite0) == LITE0_BLOCKS
    assert blocks.feature_layer(lite0) == "avg_pool"
    by_layer = blocks.layer_blocks(lite0)
    assert len(by_layer) == len(lite0.layers) - 1 and "input_layer" not in by_layer
    assert by_layer["block2b_add"] == "block2b" and by_layer["predictions"] == "top"
    assert [n for n, b in by_layer.items() if b == "stem"] == ["stem_conv", "stem_bn", "stem_activation"]


def _toy(names: list[str], name: str = "toy") -> keras.Model:
    inputs = keras.Input((4,), name="input_layer")
    x = inputs
    for layer in names:
        x = keras.layers.Dense(4, name=layer)(x)
    return keras.Model(inputs, x, name=name)


def test_unknown_layers_join_the_block_before_them():
    model = _toy(["mixed0", "block1_conv", "mixed1", "block2_conv", "predictions"])
    assert blocks.layer_blocks(model) == {"mixed0": "stem", "block1_conv": "block1", "mixed1": "block1",
                                          "block2_conv": "block2", "predictions": "top"}
    assert blocks.block_names(model) == ["stem", "block1", "block2", "top"]


def test_non_contiguous_blocks_are_an_error():
    with pytest.raises(ValueError, match="block 'block1' of model 'toy' is not contiguous"):
        blocks.block_names(_toy(["block1_a", "block2_a", "block1_b"]))


def test_feature_layer_falls_back_to_pooling_then_the_layer_before_the_classifier():
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.GlobalAveragePooling2D(name="gap")(inputs)
    x = keras.layers.Dropout(0.1)(x)
    assert blocks.feature_layer(keras.Model(inputs, keras.layers.Dense(2)(x))) == "gap"
    assert blocks.feature_layer(_toy(["fc1", "fc2", "predictions"])) == "fc2"
    with pytest.raises(ValueError, match="has no layer before its classifier"):
        blocks.feature_layer(_toy(["predictions"]))


def test_a_preprocessing_layer_in_front_is_part_of_the_stem(lite0):
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    model = keras.Model(inputs, lite0(preprocessing_layer("efficientnet_lite0")(inputs)))
    assert blocks.layer_blocks(model) == {"preprocessing": "stem", "efficientnet_lite0": "stem"}


@pytest.mark.slow
@pytest.mark.parametrize("name, feature, first, last", [
    ("ResNet50", "avg_pool", ["conv1", "conv2_block1", "conv2_block2"], ["conv5_block3", "top"]),
    ("mobilenet_v2", None, ["stem", "expanded_conv", "block_1"], ["block_16", "top"]),
    ("EfficientNetB0", "avg_pool", LITE0_BLOCKS[:3], LITE0_BLOCKS[-2:]),
    ("VGG16", "fc2", ["block1", "block2", "block3"], ["block5", "fc", "top"]),
])
def test_keras_applications_blocks_and_features(name, feature, first, last):
    model = load_backbone(name, weights=None)
    names = blocks.block_names(model)
    assert names[:len(first)] == first and names[-len(last):] == last
    layer = blocks.feature_layer(model)
    if feature is None:  # MobileNetV2's pooling layer has an auto-generated name
        assert isinstance(model.get_layer(layer), keras.layers.GlobalAveragePooling2D)
    else:
        assert layer == feature
    assert len(model.get_layer(layer).output.shape) == 2
