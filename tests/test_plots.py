"""Tests for course_utils.plots (notebooks 00-08): the artists each plot draws, counted and labelled exactly."""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from course_utils import plots  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _image_set(per_class: tuple[int, ...] = (3, 3), size: int = 8) -> SimpleNamespace:
    """An ImageSet-like object: class i has per_class[i] images, all pixels equal to 10 * (image index)."""
    labels = np.repeat(np.arange(len(per_class)), per_class)
    images = (np.arange(len(labels), dtype=np.uint8)[:, None, None, None] * 10 * np.ones((1, size, size, 3), np.uint8))
    return SimpleNamespace(images=images, labels=labels, classes=[f"c{i}" for i in range(len(per_class))])


def test_image_grid_titles_colors_and_hidden_axes():
    images = np.zeros((5, 4, 4, 3), np.uint8)
    fig = plots.image_grid(images, titles=list("abcde"), cols=3, colors=["red", "black"] * 2 + ["green"])
    assert len(fig.axes) == 6
    assert [len(ax.get_images()) for ax in fig.axes] == [1, 1, 1, 1, 1, 0]
    assert [ax.get_title() for ax in fig.axes] == ["a", "b", "c", "d", "e", ""]
    assert fig.axes[0].title.get_color() == "red" and fig.axes[4].title.get_color() == "green"
    assert not any(ax.axison for ax in fig.axes)
    assert len(plots.image_grid(images[:2], cols=6).axes) == 6  # one row, never zero


def test_learning_curves_train_and_dashed_val_lines():
    histories = {"a": {"accuracy": [0.5, 0.6, 0.7], "val_accuracy": [0.4, 0.5, 0.6]}, "b": {"accuracy": [0.2, 0.3]}}
    ax = plots.learning_curves(histories)
    lines = ax.get_lines()
    assert [l.get_label() for l in lines] == ["a (train)", "a (val)", "b (train)"]
    assert [l.get_linestyle() for l in lines] == ["-", "--", "-"]
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()
    np.testing.assert_array_equal(lines[1].get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(lines[1].get_ydata(), [0.4, 0.5, 0.6])
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("epoch", "accuracy")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a (train)", "a (val)", "b (train)"]


def test_sweep_curve_means_stds_chance_and_log_axis():
    runs = {"frozen": [[0.5, 0.7], [0.8, 0.8]], "tuned": [[0.6], [0.9]]}
    ax = plots.sweep_curve([1, 10], runs, xlabel="images per class", logx=True, chance=0.25)
    assert len(ax.containers) == 2
    mean_line, _, (bars,) = ax.containers[0].lines
    np.testing.assert_allclose(np.asarray(mean_line.get_ydata(), float), [0.6, 0.8])
    segments = bars.get_segments()
    np.testing.assert_allclose([s[:, 1] for s in segments], [[0.5, 0.7], [0.8, 0.8]])
    chance = [l for l in ax.get_lines() if l.get_label() == "chance"]
    assert len(chance) == 1 and list(chance[0].get_ydata()) == [0.25, 0.25]
    assert ax.get_xscale() == "log" and (ax.get_xlabel(), ax.get_ylabel()) == ("images per class", "test accuracy")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["chance", "frozen", "tuned"]


def test_confusion_matrix_normalised_values_and_labels():
    report = {"confusion_matrix": [[3, 1], [0, 0]], "classes": ["a_very_long_name", "b"]}
    ax = plots.confusion_matrix(report, title="lite0")
    assert sorted(t.get_text() for t in ax.texts) == ["0.00", "0.00", "0.25", "0.75"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a_very_lon", "b"]
    assert ax.get_title() == "lite0"
    ax = plots.confusion_matrix(report, normalize=False)
    assert sorted(t.get_text() for t in ax.texts) == ["0", "0", "1", "3"]


def test_bar_compare_heights_and_error_bars():
    ax = plots.bar_compare({"svm": [0.6, 0.8], "head": 0.5}, ylabel="accuracy")
    np.testing.assert_allclose([p.get_height() for p in ax.patches], [0.7, 0.5])
    (segments,) = [c.get_segments() for c in ax.collections]
    np.testing.assert_allclose([s[:, 1] for s in segments], [[0.6, 0.8], [0.5, 0.5]])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["svm", "head"] and ax.get_ylabel() == "accuracy"


def test_class_grid_one_row_per_class():
    fig = plots.class_grid(_image_set((3, 1)), per_class=2)
    assert len(fig.axes) == 2 * 2
    assert [ax.get_ylabel() for ax in fig.axes[::2]] == ["c0\n(3)", "c1\n(1)"]
    assert [len(ax.get_images()) for ax in fig.axes] == [1, 1, 1, 0]  # c1 has one image only
    shown = {int(ax.get_images()[0].get_array()[0, 0, 0]) for ax in fig.axes[:2]}
    assert len(shown) == 2 and shown <= {0, 10, 20}  # two different images of c0
    assert int(fig.axes[2].get_images()[0].get_array()[0, 0, 0]) == 30


def test_freeze_depth_writes_the_noise_rule_verdict_of_each_setting():
    labels = [0] * 50 + [1] * 50

    def row(k, b, p, correct, seed):
        predictions = [y if i < correct else 1 - y for i, y in enumerate(labels)]
        report = {"predictions": predictions, "test_labels": labels, "test_ids": list(range(100))}
        return {"train_last": k, "first_trained": b, "trainable": p, "accuracy": correct / 100, "seed": seed,
                "report": report}

    rows = [row(0, "(new layers only)", 10, 70, 0), row(2, "block7a", 1000, 72, 0), row(4, "block6a", 5000, 95, 0)]
    ax = plots.freeze_depth(rows)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0\n(head only)", "2\n(block7a)", "4\n(block6a)"]
    np.testing.assert_allclose(np.asarray(ax.containers[0].lines[0].get_ydata(), float), [0.7, 0.72, 0.95])
    assert [t.get_text() for t in ax.texts] == ["within noise", "better"]  # 2 images vs 25 images (McNemar)
    assert ax.get_xlabel().endswith("verdicts against head only")
    (twin,) = [a for a in ax.figure.axes if a is not ax]
    assert [p.get_height() for p in twin.patches] == [10, 1000, 5000] and twin.get_yscale() == "log"
    plain = plots.freeze_depth([{k: v for k, v in r.items() if k != "report"} for r in rows], params=False)
    assert len(plain.texts) == 0  # no reports, no verdicts


def test_freeze_depth_widens_a_flat_axis_to_min_span():
    rows = [{"train_last": k, "first_trained": "x", "trainable": 1, "accuracy": 0.5} for k in (0, 1)]
    ax = plots.freeze_depth(rows, params=False)
    np.testing.assert_allclose(ax.get_ylim(), (0.39, 0.61))
    assert len(ax.figure.axes) == 1  # no parameter bars


def test_chu_grid_labels_every_cell_and_point():
    ax = plots.chu_grid({"flowers": (10, 0.3), "eurosat": (100, 0.6, 0.05)})
    assert len(ax.texts) == 3 * 3 + 2  # Chu's Table 3: three distance levels x three data levels, two points
    assert [t.get_text() for t in ax.texts[-2:]] == ["flowers", "eurosat"]
    assert len(ax.containers) == 2 and ax.get_xscale() == "log" and ax.get_ylim() == (0, 1)
    # Chu's Table 3 verbatim, rows L/M/H distance, columns L/M/H images per class
    cells = [t.get_text().replace("\n", " ") for t in ax.texts[:9]]
    assert cells == ["Freeze", "Try Freeze or Tune", "Tune", "Try Freeze or Tune", "Tune", "Tune",
                     "Try Freeze or Tune", "Tune", "Tune"]
    colours = [to_rgba(c.get_facecolor()[0][:3]) for c in ax.collections if len(c.get_facecolor())][:9]
    assert colours[:3] == [to_rgba("tab:blue"), to_rgba("tab:green"), to_rgba("tab:orange")]


def test_lr_sweep_curves_draws_one_line_per_rate_even_with_nan():
    result = SimpleNamespace(rates=[1.0, 0.01], histories=[{"loss": [5.0, float("nan")], "accuracy": [0.5, 0.5]},
                                                           {"loss": [1.0, 0.5], "accuracy": [0.6, 0.9]}])
    fig = plots.lr_sweep_curves(result, chance=0.5)
    left, right = fig.axes
    assert [l.get_label() for l in left.get_lines()] == ["lr 1", "lr 0.01"] and left.get_yscale() == "log"
    assert [l.get_label() for l in right.get_lines()] == ["lr 1", "lr 0.01", "chance"]
    np.testing.assert_array_equal(left.get_lines()[0].get_ydata(), [5.0, np.nan])
    assert to_rgba(left.get_lines()[1].get_color()) == to_rgba(right.get_lines()[1].get_color())
    assert right.get_ylim() == (0, 1.02)


def test_show_as_jpeg_displays_and_closes(capsys):
    fig = plots.class_grid(_image_set((2, 2)), per_class=2)
    plots.show_as_jpeg(fig, quality=70)
    assert not plt.fignum_exists(fig.number)
    assert "Image" in capsys.readouterr().out  # outside IPython, display() prints the object


def test_nb07_accuracy_heatmap_annotates_every_cell_and_marks_missing_ones():
    table = [{"topology": "svm", "per_class": 5, "mean": 0.6, "std": 0.01, "n": 2},
             {"topology": "svm", "per_class": 20, "mean": 0.7, "std": 0.0, "n": 2},
             {"topology": "all", "per_class": 20, "mean": 0.8, "std": 0.02, "n": 2}]
    ax = plots.accuracy_heatmap(table, row_order=["svm", "all"], xlabel="images per class")
    assert [t.get_text() for t in ax.texts] == ["0.600\n± 0.010", "0.700\n± 0.000", "not run", "0.800\n± 0.020"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["svm", "all"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["5", "20"]
    assert ax.get_xlabel() == "images per class"
    data = ax.images[0].get_array()
    assert data.mask.tolist() == [[False, False], [True, False]]
    assert data[1, 1] == 0.8 and ax.images[0].norm.vmin == 0.6 and ax.images[0].norm.vmax == 1.0


def test_nb04_two_phase_curves_joins_the_phases_and_marks_the_unfreeze():
    head = SimpleNamespace(history={"loss": [2.0, 1.0], "accuracy": [0.3, 0.6], "val_loss": [2.1, 1.2],
                                    "val_accuracy": [0.2, 0.5]})
    tune = {"loss": [0.5, 0.3, 0.2], "accuracy": [0.8, 0.9, 1.0], "val_loss": [1.0, 0.9, 0.95],
            "val_accuracy": [0.6, 0.65, 0.6]}
    fig = plots.two_phase_curves(head, tune, unfreeze_label="unfreeze")
    loss, acc = fig.axes
    train, val, mark = acc.get_lines()
    assert list(train.get_xdata()) == [1, 2, 3, 4, 5] and list(train.get_ydata()) == [0.3, 0.6, 0.8, 0.9, 1.0]
    assert list(val.get_ydata()) == [0.2, 0.5, 0.6, 0.65, 0.6] and val.get_linestyle() == "--"
    assert list(mark.get_xdata()) == [2.5, 2.5] and loss.get_lines()[2].get_xdata()[0] == 2.5
    assert [t.get_text() for t in acc.get_legend().get_texts()] == ["training", "validation", "unfreeze"]
    runner_history = {"step": [5, 10, 15], "loss": [1.0, 0.5, 0.4], "accuracy": [0.5, 0.8, 0.9], "unfreeze_step": 10}
    fig = plots.two_phase_curves(runner_history)
    lines = fig.axes[1].get_lines()
    assert len(lines) == 2 and list(lines[0].get_xdata()) == [5, 10, 15] and list(lines[1].get_xdata()) == [10, 10]
    assert fig.axes[0].get_xlabel() == "step"
    plt.close("all")


def test_nb04_per_layer_bars_draws_bars_not_lines():
    ax = plots.per_layer_bars({"a": {"l1": 1.0, "l2": 2.0}, "b": {"l1": 0.5, "l3": 3.0}}, ylabel="drift")
    assert not ax.get_lines()
    heights = [p.get_height() for p in ax.patches]  # run a's three layers, then run b's; a missing layer is nan
    assert heights[:2] == [1.0, 2.0] and np.isnan(heights[2]) and np.isnan(heights[4])
    assert heights[3] == 0.5 and heights[5] == 3.0
    assert [t.get_text() for t in ax.get_xticklabels()] == ["l1", "l2", "l3"]
    plt.close("all")
