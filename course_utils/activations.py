"""The one activation cache: a frozen network's outputs at some layers, per image, in memory and on disk.

Explained in notebooks ``04_freezing`` (training only what comes after a frozen prefix),
``05_bottleneck_features`` (pooled features) and ``07_experiments`` (sweeps). One forward pass of the images
fills every registered boundary at once; ``passes`` counts those passes (issue 12 reports it). Each
boundary's array for an exact list of image ids is one verified ``course_utils.cache`` file; its key covers
the architecture, a fingerprint of the weights, the preprocessing, the image size, the layer and the ids,
so a changed sample, layer or weight never reuses stale activations.

A boundary is a layer name; ``"gap:<layer>"`` is that layer's output global-average-pooled when it is
spatial (the pooled bottleneck features of notebook 05).
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable, Sequence

import numpy as np

from course_utils import cache as array_cache
from course_utils import evaluation
from course_utils.data import ImageSet
from course_utils.quiet import keras
from course_utils.settings import cache_dir

POOLED = "gap:"


def fingerprint(model: keras.Model) -> str:
    """A short hash of a model's weights (its architecture is named separately in the key)."""
    digest = hashlib.sha256()
    for value in model.get_weights():
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()[:16]


def boundary_output(model: keras.Model, boundary: str):
    """The tensor of ``boundary`` in ``model``'s graph (pooled for ``gap:`` names of spatial layers)."""
    name = boundary[len(POOLED):] if boundary.startswith(POOLED) else boundary
    out = model.get_layer(name).output
    if boundary.startswith(POOLED) and len(out.shape) == 4:
        out = keras.layers.GlobalAveragePooling2D(name=f"{name}_gap")(out)
    return out


def normalize_boundary(model: keras.Model, boundary: str) -> str:
    """``gap:<layer>`` becomes ``<layer>`` when that layer's output is not spatial (nothing to pool), so the
    pooled features and the frozen-head boundary are one cache entry."""
    if boundary.startswith(POOLED) and len(model.get_layer(boundary[len(POOLED):]).output.shape) != 4:
        return boundary[len(POOLED):]
    return boundary


class ActivationCache:
    """Outputs of ``model`` (kept frozen and pristine by the caller) at registered boundaries, per image id.

    ``get(images, boundary)`` answers from memory, then disk, then computes every registered boundary the
    images lack in ONE forward pass (``evaluation.predict_all``). ``passes`` counts forward passes over
    image sets, ``images_computed`` the images they covered (notebook ``07_experiments``).
    """

    def __init__(self, model: keras.Model, preprocess: Callable | None, name: str = "", weights: str = "",
                 image_size: int | None = None, disk: bool = True, preprocess_name: str = "") -> None:
        self.model, self.preprocess, self.disk = model, preprocess, disk
        self.name = name or model.name
        self.preprocess_name = preprocess_name or getattr(preprocess, "__qualname__", str(preprocess))
        self.image_size = image_size or int(model.inputs[0].shape[1] or 0)
        self._weights = str(weights)
        self._fingerprint: str | None = None
        self._memory: dict[str, dict[str, np.ndarray]] = {}
        self._extractors: dict[tuple[str, ...], keras.Model] = {}
        self.passes = 0
        self.images_computed = 0

    def register(self, *boundaries: str) -> list[str]:
        """Compute these boundaries too in the next forward pass; returns their normalised names."""
        names = [normalize_boundary(self.model, b) for b in boundaries]
        for name in names:
            self._memory.setdefault(name, {})
        return names

    def key(self, boundary: str, ids: Sequence[str]) -> str:
        """The disk key of ``boundary``'s activations for these image ids."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.model)
        blob = json.dumps({"model": self.name, "weights": self._weights, "fingerprint": self._fingerprint,
                           "preprocess": self.preprocess_name, "size": self.image_size, "boundary": boundary,
                           "ids": list(ids)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def _path(self, boundary: str, key: str):
        safe = boundary.replace(":", "-").replace("/", "-")
        return cache_dir("activations") / f"{self.name}-{safe}-{key}.npz"

    def _lacks(self, boundary: str, images: ImageSet) -> bool:
        memory = self._memory[boundary]
        return not all(i in memory for i in images.ids)

    def get(self, images: ImageSet, boundary: str) -> np.ndarray:
        """``boundary``'s output for every image of ``images``, stacked in their order (float32)."""
        (boundary,) = self.register(boundary)
        if self._lacks(boundary, images):
            self._fill(images)
        if not len(images.ids):
            return np.zeros((0, *boundary_output(self.model, boundary).shape[1:]), "float32")
        return np.stack([self._memory[boundary][i] for i in images.ids])

    def _fill(self, images: ImageSet) -> None:
        """Every registered boundary for ``images``: from disk where stored, the rest in one forward pass
        (then stored)."""
        missing = [b for b in sorted(self._memory) if self._lacks(b, images)]
        for boundary in missing if self.disk else ():
            key = self.key(boundary, images.ids)
            stored = array_cache.load(self._path(boundary, key), key)
            if stored is not None and len(stored) == len(images.ids):
                self._memory[boundary].update(zip(images.ids, stored))
        missing = [b for b in missing if self._lacks(b, images)]
        if not missing:
            return
        self._compute(images, tuple(missing))
        for boundary in missing if self.disk else ():
            key = self.key(boundary, images.ids)
            array_cache.save(self._path(boundary, key), np.stack([self._memory[boundary][i] for i in images.ids]), key)

    def _compute(self, images: ImageSet, names: tuple[str, ...]) -> None:
        """One forward pass of the images lacking any of ``names``, filling all of them."""
        memories = [self._memory[b] for b in names]
        todo = [i for i, image_id in enumerate(images.ids) if any(image_id not in m for m in memories)]
        if names not in self._extractors:  # one extractor per set of boundaries
            outputs = [boundary_output(self.model, b) for b in names]
            self._extractors = {names: keras.Model(self.model.inputs, outputs, name=f"{self.name}_boundaries")}
        values = evaluation.predict_all(self._extractors[names], images.images[todo], self.preprocess)
        self.passes += 1
        self.images_computed += len(todo)
        for memory, array in zip(memories, values):
            memory.update(zip((images.ids[i] for i in todo), array))
