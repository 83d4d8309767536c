"""Plots the notebooks share: image grids, learning curves, sweep curves, confusion matrices.

Every function draws on a matplotlib ``Axes`` (made for you when ``ax`` is None) and returns it, so
notebooks can combine them. Used from notebook ``01_why_finetune`` on.
"""

from __future__ import annotations

import io
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display
from sklearn.metrics import ConfusionMatrixDisplay

from course_utils import evaluation, results
from course_utils.advice import CHU_ADVICE, CHU_TABLE3, DATA_LEVELS
from course_utils.domain import DISTANCE_LEVELS

_ADVICE_COLOURS = {"freeze": "tab:blue", "try both": "tab:green", "tune": "tab:orange"}


def _axes(ax=None, figsize=(5, 3.5)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def image_grid(images: np.ndarray, titles: Sequence[str] | None = None, cols: int = 6,
               colors: Sequence[str] | None = None, size: float = 1.8):
    """A grid of uint8 images with optional titles (e.g. "pred / true", red when wrong)."""
    n = len(images)
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size * 1.1))
    for i, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i])
            if titles is not None:
                ax.set_title(titles[i], fontsize=8, color=(colors[i] if colors else "black"))
    fig.tight_layout()
    return fig


def learning_curves(histories: Mapping[str, Mapping[str, Sequence[float]]], metric: str = "accuracy", ax=None):
    """One line per run for ``metric`` (solid) and ``val_<metric>`` when present (dashed), per epoch."""
    ax = _axes(ax)
    for label, hist in histories.items():
        values = hist.get(metric, [])
        line, = ax.plot(range(1, len(values) + 1), values, label=f"{label} (train)")
        if f"val_{metric}" in hist:
            ax.plot(range(1, len(values) + 1), hist[f"val_{metric}"], "--", color=line.get_color(),
                    label=f"{label} (val)")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return ax


def sweep_curve(x: Sequence[float], runs: Mapping[str, Sequence[Sequence[float]]], xlabel: str,
                ylabel: str = "test accuracy", logx: bool = False, ax=None, chance: float | None = None):
    """Mean ± std over seeds: ``runs[label][i]`` holds the seeds' values at ``x[i]``."""
    ax = _axes(ax)
    for label, values in runs.items():
        mean = np.array([np.mean(v) for v in values])
        std = np.array([np.std(v) for v in values])
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=label)
    if chance is not None:
        ax.axhline(chance, color="gray", ls=":", label="chance")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return ax


def confusion_matrix(report: Mapping, ax=None, normalize: bool = True, title: str | None = None):
    """Draw ``report["confusion_matrix"]`` (from ``training.evaluate``) with scikit-learn's display."""

    cm = np.asarray(report["confusion_matrix"])  # counts stay integers: values_format "d" needs them
    if normalize:
        cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax = _axes(ax, figsize=(4.5, 4))
    disp = ConfusionMatrixDisplay(cm, display_labels=[c[:10] for c in report["classes"]])
    disp.plot(ax=ax, colorbar=False, values_format=".2f" if normalize else "d", cmap="Blues")
    ax.tick_params(axis="x", labelrotation=45)
    if title:
        ax.set_title(title)
    return ax


def bar_compare(values: Mapping[str, float | Sequence[float]], ylabel: str = "test accuracy", ax=None):
    """Bars with error bars: a number, or the seeds' numbers, per label."""
    ax = _axes(ax)
    labels = list(values)
    data = [np.atleast_1d(values[k]) for k in labels]
    ax.bar(labels, [d.mean() for d in data], yerr=[d.std() for d in data], capsize=4, color="tab:blue")
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelrotation=20)
    ax.grid(alpha=0.3, axis="y")
    return ax


def class_grid(image_set, per_class: int = 4, seed: int = 0, size: float = 1.6):
    """One row per class: ``per_class`` randomly chosen images of that class, the class name on the left.

    ``image_set`` is a ``data.ImageSet``; a class with fewer images shows what it has. Notebook ``00_setup``
    uses it to show what the data look like. Returns the figure.
    """
    classes = list(image_set.classes)
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * size, len(classes) * size),
                             squeeze=False)
    for row, name in enumerate(classes):
        members = np.flatnonzero(np.asarray(image_set.labels) == row)
        chosen = rng.permutation(members)[:per_class]
        for col, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col < len(chosen):
                ax.imshow(image_set.images[chosen[col]])
        axes[row][0].set_ylabel(f"{name}\n({len(members)})", fontsize=9, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return fig


def freeze_depth(rows: Sequence[Mapping], ax=None, label: str = "test accuracy", params: bool = True,
                 min_span: float = 0.2):
    """Accuracy against how many blocks train (rows of ``studies.freeze_depth_sweep``), notebook ``04_freezing``.

    Rows with the same ``train_last`` (several seeds) give mean ± std. The x axis is categorical (0, 1, 2,
    4, all), and with ``params`` the trainable parameter count is drawn as gray bars on a log axis behind.
    When the rows carry the Runner's reports, each setting is compared with the first by the course's noise
    rule (``evaluation.compare``: the same test images, seeds paired) and its verdict is written above it.
    The accuracy axis spans at least ``min_span``, so that a test image or two does not look like a trend.
    """
    ax = _axes(ax, figsize=(6, 3.8))
    ks = sorted({int(r["train_last"]) for r in rows})
    groups = [sorted((r for r in rows if int(r["train_last"]) == k), key=lambda r: r.get("seed", 0)) for k in ks]
    pos = np.arange(len(ks))
    if params:
        twin = ax.twinx()
        twin.bar(pos, [g[0]["trainable"] for g in groups], color="lightgray", width=0.5, zorder=0)
        twin.set_yscale("log")
        twin.set_ylabel("trainable parameters (bars)", color="gray")
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
    acc = [[r["accuracy"] for r in g] for g in groups]
    means = [float(np.mean(a)) for a in acc]
    ax.errorbar(pos, means, yerr=[np.std(a) for a in acc], marker="o", capsize=3, label=label)
    if all("report" in r for r in rows):
        first = results.correct([r["report"] for r in groups[0]])
        for x, group, mean in zip(pos[1:], groups[1:], means[1:]):
            verdict = evaluation.compare(results.correct([r["report"] for r in group]), first, names=("a", "b"))
            text = "within noise" if not verdict.significant else ("better" if verdict.diff > 0 else "worse")
            ax.annotate(text, (x, mean), textcoords="offset points", xytext=(0, 9), ha="center", fontsize=7)
    low, high = min(means), max(means)
    if high - low < min_span:
        middle = (high + low) / 2
        low, high = middle - min_span / 2, middle + min_span / 2
    ax.set_ylim(max(0.0, low - 0.01), min(1.0, high + 0.01))
    names = [f"{k}\n({g[0]['first_trained']})" if k else "0\n(head only)" for k, g in zip(ks, groups)]
    ax.set_xticks(pos, names, fontsize=7)
    ax.set_xlabel(f"blocks trained (first trained block); verdicts against {_first_label(ks)}")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return ax


def _first_label(ks: Sequence[int]) -> str:
    """Label of the first setting of a freeze-depth plot ("head only" for 0 blocks)."""
    return "head only" if ks and ks[0] == 0 else f"{ks[0]} blocks"


def chu_grid(points: Mapping[str, Sequence[float]], ax=None):
    """Datasets on Chu et al.'s Table 3 grid (notebook ``08_domain_distance``).

    ``points[label] = (images per class, distance)`` or ``(images per class, distance, std over seeds)``.
    x: images per class (log scale), y: calibrated distance from ImageNet (``domain.calibrated_distance``);
    each cell is labelled with Table 3's entry, verbatim, and coloured by it (freeze, try both, tune).
    """

    ax = _axes(ax, figsize=(6.5, 4.2))
    x_max = max([1000.0] + [2.0 * float(p[0]) for p in points.values()])
    x_edges = [1.0] + [upper + 0.5 for _, upper in DATA_LEVELS[:-1]] + [x_max]
    y_edges = [0.0] + [upper for _, upper in DISTANCE_LEVELS[:-1]] + [1.0]
    for i, (d_level, _) in enumerate(DISTANCE_LEVELS):
        for j, (n_level, _) in enumerate(DATA_LEVELS):
            entry = CHU_TABLE3[(d_level, n_level)]
            ax.fill_between(x_edges[j:j + 2], y_edges[i], y_edges[i + 1], alpha=0.12, lw=0,
                            color=_ADVICE_COLOURS[CHU_ADVICE[entry]])
            ax.text(np.sqrt(x_edges[j] * x_edges[j + 1]), y_edges[i + 1] - 0.02, entry.replace(" or ", " or\n"),
                    ha="center", va="top", fontsize=7, color="dimgray")
    for label, point in points.items():
        n, d = float(point[0]), float(point[1])
        ax.errorbar([n], [d], yerr=[float(point[2])] if len(point) > 2 else None, fmt="o", capsize=3)
        ax.annotate(label, (n, d), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(x_edges[0], x_edges[-1])
    ax.set_ylim(0, 1)
    for x in x_edges[1:-1]:
        ax.axvline(x, color="gray", lw=0.8)
    for y in y_edges[1:-1]:
        ax.axhline(y, color="gray", lw=0.8)
    ax.set_xlabel("training images per class")
    ax.set_ylabel("distance from ImageNet (1 - cos)")
    return ax


def lr_sweep_curves(result, chance: float | None = None, figsize=(11, 3.6)):
    """Two panels for one ``training.lr_sweep`` result (notebook ``03_learning_rate``): training loss per
    epoch (log scale; a diverged run climbs off the top or stops where the loss became nan) and training
    accuracy per epoch, one line per base learning rate (the first seed's run). Returns the figure.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=figsize)
    for rate, hist in zip(result.rates, result.histories):
        loss = np.asarray(hist.get("loss", []), dtype=float)
        epochs = np.arange(1, len(loss) + 1)
        line, = left.plot(epochs, np.where(np.isfinite(loss), loss, np.nan), marker=".", label=f"lr {rate:g}")
        right.plot(epochs, hist.get("accuracy", [np.nan] * len(loss)), marker=".", color=line.get_color(),
                   label=f"lr {rate:g}")
    left.set_yscale("log")
    left.set_ylabel("training loss (log scale)")
    right.set_ylabel("training accuracy")
    right.set_ylim(0, 1.02)
    if chance is not None:
        right.axhline(chance, color="gray", ls=":", label="chance")
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def show_as_jpeg(fig, quality: int = 85) -> None:
    """Display ``fig`` as a JPEG image and close it (notebooks ``00_setup`` and ``02_replace_softmax``).

    Grids of photos are several times smaller as JPEG than as the inline backend's PNG, which keeps the
    committed notebooks (outputs included) small; use it for photo grids, not for line plots.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="jpeg", dpi=fig.dpi, bbox_inches="tight", pil_kwargs={"quality": int(quality)})
    plt.close(fig)
    display(Image(data=buffer.getvalue(), format="jpeg"))


# ----------------------------------------------------------------------------------------------------
# Notebook 04_freezing: the two-phase learning curve, and values per layer drawn as bars


def _history_dict(history) -> dict:
    """A Keras ``History``'s ``.history``, or the mapping itself."""
    return dict(getattr(history, "history", history))


def _two_phase_series(head, tune) -> tuple[dict, np.ndarray, float | None, str]:
    """(metric -> values, x, where the backbone was unfrozen or None, x label) of ``two_phase_curves``."""
    first = _history_dict(head)
    if tune is None:  # a Runner history: points every few steps, unfreeze_step where the head phase ended
        x = np.asarray(first.get("step") or np.arange(1, len(first["loss"]) + 1), dtype=float)
        boundary = first.get("unfreeze_step") or None
        return first, x, boundary, "step"
    second = _history_dict(tune)
    keys = [k for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in first or k in second]
    joined = {k: list(first.get(k, [np.nan] * len(first["loss"]))) + list(second.get(k, [np.nan] * len(second["loss"])))
              for k in keys}
    n_head = len(first["loss"])
    return joined, np.arange(1, n_head + len(second["loss"]) + 1, dtype=float), n_head + 0.5, "epoch"


def two_phase_curves(head, tune=None, unfreeze_label: str = "unfreeze + recompile", figsize=(10, 3.4)):
    """The two-phase learning curve (notebook ``04_freezing``): loss (left) and accuracy (right), training
    solid and validation dashed, a vertical line where the top blocks were unfrozen.

    ``head``, ``tune``: the Keras ``History`` (or its ``.history`` dict) of ``fit`` with the backbone frozen
    and of ``fit`` after unfreezing, one point per epoch; or ``head`` alone, a Runner history (``step``,
    ``loss``, ``accuracy``, ``val_*``, ``unfreeze_step``), one point every few steps. Returns the figure.
    """
    series, x, boundary, x_label = _two_phase_series(head, tune)
    fig, axes = plt.subplots(1, 2, figsize=figsize)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(x, series[metric], marker=".", color="tab:blue", label="training")
        if f"val_{metric}" in series:
            ax.plot(x, series[f"val_{metric}"], "--", marker=".", color="tab:orange", label="validation")
        if boundary:
            ax.axvline(boundary, color="gray", ls=":", lw=1.5, label=unfreeze_label)
        ax.set_xlabel(x_label)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[1].set_ylim(0, 1.02)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def per_layer_bars(values: Mapping[str, Mapping[str, float]], ylabel: str, ax=None):
    """Grouped bars of a number per layer (e.g. ``surgery.batchnorm_drift``), one colour per run, layers in
    model order on the x axis (notebook ``04_freezing``). Layers are categories: bars, no lines between them."""
    names: list[str] = []
    for layer_values in values.values():
        names += [n for n in layer_values if n not in names]
    ax = _axes(ax, figsize=(max(5.0, 1.1 * len(names) + 2), 3.5))
    width = 0.8 / max(1, len(values))
    pos = np.arange(len(names))
    for i, (label, layer_values) in enumerate(values.items()):
        ax.bar(pos + (i - (len(values) - 1) / 2) * width, [layer_values.get(n, np.nan) for n in names], width,
               label=label)
    ax.set_xticks(pos, names, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    return ax


def accuracy_heatmap(table: Sequence[Mapping], rows: str = "topology", cols: str = "per_class", ax=None,
                     row_order: Sequence[str] | None = None, xlabel: str | None = None, title: str | None = None):
    """Mean accuracy of ``results.summarize``'s table as a ``rows`` x ``cols`` grid, each cell annotated
    "mean ± std"; a combination with no runs is grey and says so (notebook ``07_experiments``: topology x
    samples per class)."""
    row_labels = list(row_order) if row_order else sorted({str(r[rows]) for r in table})
    col_values = sorted({r[cols] for r in table}, key=lambda v: (v is None, v if v is not None else 0))
    means = np.full((len(row_labels), len(col_values)), np.nan)
    stds = np.full_like(means, np.nan)
    for r in table:
        if str(r[rows]) in row_labels:
            i, j = row_labels.index(str(r[rows])), col_values.index(r[cols])
            means[i, j], stds[i, j] = r["mean"], r["std"]
    ax = _axes(ax, figsize=(1.2 + 1.3 * len(col_values), 0.9 + 0.55 * len(row_labels)))
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(means), cmap=cmap, aspect="auto",
                      vmin=np.nanmin(means) if np.isfinite(means).any() else 0, vmax=1.0)
    for (i, j), mean in np.ndenumerate(means):
        text = "not run" if np.isnan(mean) else f"{mean:.3f}\n± {stds[i, j]:.3f}"
        dark = np.isnan(mean) or mean > image.norm.vmin + 0.6 * (image.norm.vmax - image.norm.vmin)
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if dark else "white")
    ax.set_xticks(range(len(col_values)), [str(v) for v in col_values])
    ax.set_yticks(range(len(row_labels)), row_labels)
    ax.set_xlabel(xlabel or cols)
    ax.figure.colorbar(image, ax=ax, label="mean test accuracy", fraction=0.05)
    if title:
        ax.set_title(title, fontsize=10)
    return ax
