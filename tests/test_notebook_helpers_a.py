"""Package functions added for notebooks 00-03: environment report, small CNN, head learning curves,
learning-rate sweeps, per-block parameter counts, their plots and grading checks."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from course_utils import grading, models, plots, settings, surgery, training
from course_utils.backbones import block_names
from course_utils.data import ImageSet, Split


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _image_split(n_per_class: int = 6, size: int = 16, classes: int = 2, seed: int = 0) -> Split:
    """Two easy classes: dark images vs bright images."""
    rng = np.random.default_rng(seed)

    def part(n: int, offset: int) -> ImageSet:
        labels = np.repeat(np.arange(classes), n)
        base = (labels * 200 + 20).astype("float32")[:, None, None, None]
        images = np.clip(base + rng.normal(0, 10, (len(labels), size, size, 3)), 0, 255).astype("uint8")
        return ImageSet(images, labels.astype("int64"), [f"c{i}" for i in range(classes)],
                        [f"img{offset + i}" for i in range(len(labels))])

    return Split(part(n_per_class, 0), part(3, 1000), "synthetic", [])


# ---------------------------------------------------------------------------------------------- settings (00)


def test_is_online_false_for_unresolvable_host_and_fast():
    start = time.perf_counter()
    assert settings.is_online(timeout=0.5, host=("nonexistent.invalid", 443)) is False
    assert time.perf_counter() - start < 2.0


def test_is_online_true_for_a_listening_socket():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        assert settings.is_online(timeout=1.0, host=server.getsockname()) is True
    finally:
        server.close()


def test_environment_report_has_every_section_and_formats():
    report = settings.environment_report(check_online=False)
    for key in ("python", "packages", "keras_backend", "backends_installed", "accelerators", "cpu_cores",
                "online", "mode", "data", "cache", "tfds_dir", "weights"):
        assert key in report
    assert report["online"] is None
    assert report["keras_backend"] == keras.backend.backend()
    assert report["packages"]["keras"] == keras.__version__
    assert "efficientnet_lite0" in report["weights"]
    text = settings.format_environment(report)
    assert "keras backend" in text and "not checked" in text and "ImageNet weights" in text


# ---------------------------------------------------------------------------------------------- models (01)


def test_small_cnn_shapes_blocks_and_one_training_step():
    model = models.small_cnn(32, 3, widths=(4, 8), seed=0)
    assert model.output_shape == (None, 3)
    assert block_names(model) == ["stem", "block1", "block2", "top"]
    assert model.get_layer(surgery.HEAD_NAME).units == 3
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("float32")
    training.compile_classifier(model, 0.01)
    model.fit(x, np.array([0, 1, 2, 0]), epochs=1, verbose=0)
    probs = model.predict(x, verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_small_cnn_is_seeded_and_validates_arguments():
    a = models.small_cnn(32, 2, widths=(4,), seed=1).get_weights()
    b = models.small_cnn(32, 2, widths=(4,), seed=1).get_weights()
    for wa, wb in zip(a, b):
        np.testing.assert_array_equal(wa, wb)
    with pytest.raises(ValueError, match="2 classes"):
        models.small_cnn(32, 1)
    with pytest.raises(ValueError, match="too small"):
        models.small_cnn(8, 2, widths=(4, 4, 4, 4))


# ---------------------------------------------------------------------------------------------- surgery (02)


def test_params_by_block_sums_to_model_and_reports_new_head():
    backbone = models.small_cnn(32, 3, widths=(4, 8), seed=0)
    model = surgery.replace_head(backbone, 5)
    surgery.freeze(model)
    rows = surgery.params_by_block(model)
    assert sum(r["params"] for r in rows) == model.count_params()
    assert [r["block"] for r in rows][-1] == "new head"
    assert rows[-1]["trainable"] == 8 * 5 + 5
    assert sum(r["trainable"] for r in rows) == surgery.count_params(model)["trainable"]


# ---------------------------------------------------------------------------------------------- training (01, 03)


def test_fit_head_with_history_learns_separable_features():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    feats = (rng.normal(0, 0.1, (40, 8)) + labels[:, None] * 2).astype("float32")
    head, history = training.fit_head_with_history(feats, labels, feats, labels, 2, lr=0.1, epochs=5,
                                                   batch_size=8)
    assert set(history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(history["val_accuracy"]) == 5
    assert history["val_accuracy"][-1] > 0.9
    assert head.output_shape == (None, 2)


def test_relative_change():
    before = [np.ones((2, 2)), np.zeros(3)]
    assert training.relative_change(before, before) == 0.0
    after = [np.ones((2, 2)) * 2, np.zeros(3)]
    assert training.relative_change(before, after) == pytest.approx(1.0)


def test_lr_sweep_restores_weights_and_flags_divergence():
    split = _image_split()
    model = models.small_cnn(16, 2, widths=(4, 8), dropout=0.0, seed=0)
    start = [w.copy() for w in model.get_weights()]
    sweep = training.lr_sweep(model, split, lambda x: x, [1e4, 1e-2], train_last=2, epochs=2,
                              variants={"one": None, "tenth": 0.1}, seeds=[0, 1], batch_size=4)
    assert list(sweep) == ["one", "tenth"]
    result = sweep["one"]
    assert result.rates == [1e4, 1e-2]
    assert len(result.accuracy) == 2 and len(result.accuracy[0]) == 2
    assert len(result.histories) == 2 and len(result.histories[0]["loss"]) == 2
    assert any(result.diverged[0]) and not any(result.diverged[1])
    assert result.weight_change[0][0] > result.weight_change[1][0]
    assert 0.0 <= result.start_accuracy <= 1.0
    assert result.best_rate() in result.rates
    assert "diverged" in result.table()
    for w, w0 in zip(model.get_weights(), start):
        np.testing.assert_array_equal(w, w0)
    with pytest.raises(ValueError, match="positive"):
        training.lr_sweep(model, split, lambda x: x, [0.0], train_last=2)


# ---------------------------------------------------------------------------------------------- plots (00, 03)


def test_class_grid_one_row_per_class():
    split = _image_split(n_per_class=3)
    fig = plots.class_grid(split.train, per_class=2)
    assert len(fig.axes) == 2 * 2
    assert "c0" in fig.axes[0].get_ylabel()


def test_lr_sweep_curves_draws_one_line_per_rate_even_with_nan():
    result = SimpleNamespace(rates=[1.0, 0.01], histories=[{"loss": [5.0, float("nan")], "accuracy": [0.5, 0.5]},
                                                           {"loss": [1.0, 0.5], "accuracy": [0.6, 0.9]}])
    fig = plots.lr_sweep_curves(result, chance=0.5)
    left, right = fig.axes
    assert len(left.get_lines()) == 2 and left.get_yscale() == "log"
    assert len(right.get_lines()) == 3  # two rates + chance


# ---------------------------------------------------------------------------------------------- grading (02, 03)


def test_check_in_set(capsys):
    grading.check_in_set("tabby", ["tabby", "tiger cat"], "top-1")
    assert "ok" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="expected one of"):
        grading.check_in_set("dog", ["tabby"], "top-1")
    with pytest.raises(AssertionError, match="not set"):
        grading.check_in_set(None, ["tabby"], "top-1")


def _pretrained_and_head():
    inputs = keras.Input((3,))
    x = keras.layers.Dense(4, name="stem_conv")(inputs)
    x = keras.layers.Dropout(0.1, name="head_dropout")(x)
    out = keras.layers.Dense(2, name="head")(x)
    return keras.Model(inputs, out)


def test_check_layerwise_rates_accepts_right_optimizer_and_rejects_wrong_ones():
    model = _pretrained_and_head()
    grading.check_layerwise_rates(training.make_optimizer(model, 0.01, backbone_lr=0.001), model, 0.01, 0.001)
    training.compile_classifier(model, 0.01, backbone_lr=0.001)
    grading.check_layerwise_rates(model, model, 0.01, 0.001)  # a compiled model works too
    with pytest.raises(AssertionError, match="one rate for every layer"):
        grading.check_layerwise_rates(training.make_optimizer(model, 0.01), model, 0.01, 0.001)
    with pytest.raises(AssertionError, match="stem_conv"):
        grading.check_layerwise_rates(training.make_optimizer(model, 0.01, backbone_lr=0.005), model, 0.01, 0.001)
    with pytest.raises(AssertionError, match="base learning rate"):
        grading.check_layerwise_rates(training.make_optimizer(model, 0.1, backbone_lr=0.001), model, 0.01, 0.001)
    with pytest.raises(AssertionError, match="not set"):
        grading.check_layerwise_rates(None, model, 0.01, 0.001)


def test_show_as_jpeg_displays_and_closes(capsys):
    import matplotlib.pyplot as plt

    fig = plots.class_grid(_image_split(n_per_class=2).train, per_class=2)
    plots.show_as_jpeg(fig, quality=70)
    assert not plt.fignum_exists(fig.number)
    assert "Image" in capsys.readouterr().out  # outside IPython, display() prints the object


def test_lr_sweep_later_rates_match_a_fresh_compile():
    """Runs after the first reuse the compiled optimizer with a fresh state; the result equals a fresh sweep."""
    split = _image_split()
    model = models.small_cnn(16, 2, widths=(4, 8), dropout=0.0, seed=0)
    both = training.lr_sweep(model, split, lambda x: x, [0.05, 0.01], train_last=2, epochs=2, batch_size=4)
    alone = training.lr_sweep(model, split, lambda x: x, [0.01], train_last=2, epochs=2, batch_size=4)
    np.testing.assert_allclose(both["one rate"].histories[1]["loss"], alone["one rate"].histories[0]["loss"],
                               rtol=1e-4)
    assert both["one rate"].accuracy[1] == alone["one rate"].accuracy[0]
