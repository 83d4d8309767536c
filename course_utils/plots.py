"""Plots the notebooks share: image grids, learning curves, sweep curves, confusion matrices.

Every function draws on a matplotlib ``Axes`` (made for you when ``ax`` is None) and returns it, so
notebooks can combine them. Used from notebook ``01_why_finetune`` on.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def _axes(ax=None, figsize=(5, 3.5)):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def image_grid(images: np.ndarray, titles: Sequence[str] | None = None, cols: int = 6,
               colors: Sequence[str] | None = None, size: float = 1.8):
    """A grid of uint8 images with optional titles (e.g. "pred / true", red when wrong)."""
    import matplotlib.pyplot as plt

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
    from sklearn.metrics import ConfusionMatrixDisplay

    cm = np.asarray(report["confusion_matrix"], dtype=float)
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
    import matplotlib.pyplot as plt

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
