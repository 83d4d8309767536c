"""Tests for course_utils.small_cnn (notebook 01_why_finetune): the from-scratch baseline CNN."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from course_utils.blocks import HEAD_NAME, block_names
from course_utils.small_cnn import small_cnn


def test_small_cnn_shapes_blocks_and_one_training_step():
    model = small_cnn(32, 3, widths=(4, 8), seed=0)
    assert model.name == "small_cnn_3way" and model.output_shape == (None, 3)
    assert block_names(model) == ["stem", "block1", "block2", "top"]
    assert [l.name for l in model.layers] == [
        "input_layer", "rescaling", "block1_conv", "block1_bn", "block1_relu", "block1_pool",
        "block2_conv", "block2_bn", "block2_relu", "avg_pool", "head_dropout", HEAD_NAME]
    # conv 3*3*3*4 + bn 4*4 + conv 3*3*4*8 + bn 8*4 + dense 8*3+3
    assert model.count_params() == 108 + 16 + 288 + 32 + 27
    assert model.get_layer("block1_conv").strides == (2, 2) and model.get_layer(HEAD_NAME).units == 3
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    before = model.get_layer(HEAD_NAME).get_weights()[0].copy()
    model.fit(x, np.array([0, 1, 2, 0]), epochs=1, verbose=0)
    assert not np.array_equal(before, model.get_layer(HEAD_NAME).get_weights()[0])
    np.testing.assert_allclose(model.predict(x, verbose=0).sum(axis=1), 1.0, rtol=1e-5)


def test_rescaling_maps_0_255_to_minus_1_1():
    layer = small_cnn(16, 2, widths=(4,)).get_layer("rescaling")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(np.array([[0.0, 127.5, 255.0]]))), [[-1, 0, 1]])


def test_small_cnn_is_seeded_and_validates_arguments():
    a = small_cnn(32, 2, widths=(4,), seed=1).get_weights()
    b = small_cnn(32, 2, widths=(4,), seed=1).get_weights()
    c = small_cnn(32, 2, widths=(4,), seed=2).get_weights()
    for wa, wb in zip(a, b):
        np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(a[0], c[0])
    assert "head_dropout" not in [l.name for l in small_cnn(16, 2, widths=(4,), dropout=0.0).layers]
    with pytest.raises(ValueError, match="at least 2 classes, got num_classes=1"):
        small_cnn(32, 1)
    with pytest.raises(ValueError, match=r"widths must be a non-empty list of positive integers, got \[4, 0\]"):
        small_cnn(32, 2, widths=(4, 0))
    with pytest.raises(ValueError, match="input_size 8 is too small for 4 blocks .* use at least 16"):
        small_cnn(8, 2, widths=(4, 4, 4, 4))
