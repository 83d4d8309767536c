"""The four ways to adapt a pretrained network that the command line's ``train`` offers, end to end.

``svm`` / ``logreg``: bottleneck features + a linear probe (notebook ``05_bottleneck_features``).
``head``: a new softmax head on the frozen network (notebook ``02_replace_softmax``).
``finetune``: the head first, then the last ``unfreeze`` blocks with a 10x lower rate for the pretrained
layers (notebooks ``03_learning_rate`` and ``04_freezing``).

Every method returns a report (accuracy, per-class accuracy, confusion matrix) and a complete Keras model
that maps uint8 images (after the backbone's preprocessing) to class probabilities, so every method can be
saved as ``.keras`` and used the same way.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from course_utils.quiet import keras
import numpy as np

from course_utils import backbones, features, surgery, training
from course_utils.data import Split

METHODS = ("svm", "logreg", "head", "finetune")


@dataclass
class Recipe:
    """What to train: the command line's ``train`` options."""

    method: str = "logreg"
    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"
    lr: float = 0.01
    backbone_lr: float | None = None
    steps: int | None = None
    epochs: int | None = None
    unfreeze: int = 2
    augment: bool = False
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"Unknown method {self.method!r}; choose one of {', '.join(METHODS)}.")
        if self.steps is None and self.epochs is None:
            self.epochs = 10 if self.method == "head" else 3


def probe_to_dense(probe, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Fold a fitted (optional StandardScaler +) linear classifier into one Dense layer's (kernel, bias).

    For logistic regression, softmax of that layer is exactly the probe's ``predict_proba``; for the SVM
    the arg-max is the same prediction.
    """
    clf = probe[-1]
    coef, intercept = np.atleast_2d(clf.coef_), np.atleast_1d(clf.intercept_)
    if coef.shape[0] == 1 and num_classes == 2:
        coef, intercept = np.vstack([-coef, coef]) / 2, np.array([-intercept[0], intercept[0]]) / 2
    mean, scale = 0.0, 1.0
    if len(probe) > 1:  # a StandardScaler in front
        mean, scale = probe[0].mean_, probe[0].scale_
    kernel = (coef / scale).T
    bias = intercept - (coef * mean / scale).sum(axis=1)
    return kernel.astype("float32"), bias.astype("float32")


def fit_head_on_features(feats: np.ndarray, labels: np.ndarray, num_classes: int, recipe: Recipe) -> list:
    """Train the new head on cached features (exactly a frozen backbone without augmentation); its weights."""
    head = surgery.head_model(feats.shape[1], num_classes, seed=recipe.seed)
    epochs, steps = recipe.epochs, recipe.steps
    if recipe.method == "finetune":  # warm start before fine-tuning: ten passes over the features
        epochs, steps = 10, None
    history = training.fit_arrays(head, feats, labels, recipe.lr, epochs=epochs, steps=steps,
                                  batch_size=recipe.batch_size)
    training.check_finite(history.history["loss"], f"the new head's training loss at --lr {recipe.lr:g}")
    return head.get_layer(surgery.HEAD_NAME).get_weights()


def check_unfreeze(base: keras.Model, recipe: Recipe) -> None:
    """``finetune`` trains the last ``unfreeze`` blocks: between 1 and the backbone's number of blocks
    (``train --unfreeze``); checked before any training."""
    if recipe.method != "finetune":
        return
    blocks = backbones.block_names(base)
    if not 1 <= recipe.unfreeze <= len(blocks):
        raise ValueError(f"--unfreeze must be between 1 and {len(blocks)} for {recipe.backbone} (its blocks: "
                         f"{blocks[0]} ... {blocks[-1]}), got {recipe.unfreeze}")


def run(split: Split, recipe: Recipe, verbose: int = 0, base: keras.Model | None = None) -> tuple[keras.Model, dict]:
    """Train ``recipe`` on ``split.train`` and evaluate on ``split.test``: (model, report).

    ``base``: the backbone, already loaded with ``load_backbone`` at the split's image size (else loaded
    here). A run whose loss or outputs become NaN or infinite gets ``training.diverged_report`` (``diverged``
    true, no accuracy) instead of an accuracy.
    """
    from course_utils.settings import seed_everything

    seed_everything(recipe.seed)
    size = int(split.train.images.shape[1])
    base = base or backbones.load_backbone(recipe.backbone, weights=recipe.weights, input_size=size)
    check_unfreeze(base, recipe)
    model = surgery.replace_head(base, len(split.train.classes), seed=recipe.seed)
    surgery.freeze(model)
    preprocess = backbones.get_preprocess(recipe.backbone)
    try:
        with training.Timer() as timer:
            _train(model, base, split, recipe, preprocess, verbose)
        report = training.evaluate(model, split.test, preprocess)
    except training.DivergedError as err:
        report = training.diverged_report(split.test.classes, len(split.test.labels), str(err))
    report.update(n_train=int(len(split.train.labels)), seconds=round(timer.seconds, 2),
                  method=recipe.method, backbone=recipe.backbone, trainable_params=surgery.count_params(model))
    return model, report


def _train(model: keras.Model, base: keras.Model, split: Split, recipe: Recipe, preprocess, verbose: int) -> None:
    """The head (probe or SGD on features), then for ``finetune`` the last blocks (``run``)."""
    ftr = features.extract_features(split.train, recipe.backbone, weights=recipe.weights, model=base)
    if recipe.method in ("svm", "logreg"):
        probe = features.fit_probe(ftr, split.train.labels, recipe.method, seed=recipe.seed)
        weights = list(probe_to_dense(probe, len(split.train.classes)))
    else:
        weights = fit_head_on_features(ftr, split.train.labels, len(split.train.classes), recipe)
    model.get_layer(surgery.HEAD_NAME).set_weights(weights)
    if recipe.method == "finetune":
        surgery.freeze(model, train_last=recipe.unfreeze)
        history = training.train(model, split.train, preprocess, lr=recipe.lr,
                                 backbone_lr=recipe.backbone_lr if recipe.backbone_lr is not None else recipe.lr / 10,
                                 steps=recipe.steps, epochs=recipe.epochs, batch_size=recipe.batch_size,
                                 augment=recipe.augment, seed=recipe.seed, verbose=verbose)
        training.check_finite(history.history["loss"], f"the fine-tuning loss at --lr {recipe.lr:g}")


# --------------------------------------------------------------------------------------------------
# Saved models: ``train --save`` writes one, ``predict --model`` reads it


SAVED_INFO = "course_utils.json"  # inside the .keras archive: class names and backbone


class ModelFileError(ValueError):
    """A ``.keras`` file that cannot be loaded; the message names it and says what to do."""


def save_model(model: keras.Model, path, classes: list[str], backbone: str) -> Path:
    """Save ``model`` as ``.keras`` with its class names and backbone inside (``train --save``), atomically.

    Keras reads only its own members of the archive, so ``keras.saving.load_model`` still loads it; the
    extra member lets ``load_model`` (``predict --model``) print class names and preprocess the images.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    try:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(SAVED_INFO, json.dumps({"classes": list(classes), "backbone": backbone}))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_model(path) -> tuple[keras.Model, dict]:
    """(model, info) of a ``.keras`` file from ``save_model``; info has ``classes`` and ``backbone`` (empty
    for other ``.keras`` files). ModelFileError names the file when it cannot be read."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no such model file: {path} (train --save PATH.keras writes one)")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"cannot load the model {path}: it is not a .keras archive (truncated, or another "
                             "kind of file); save it again with train --save")
    try:
        model = keras.saving.load_model(path, compile=False)
        with zipfile.ZipFile(path) as archive:
            info = json.loads(archive.read(SAVED_INFO)) if SAVED_INFO in archive.namelist() else {}
    except Exception as err:  # noqa: BLE001 - truncated, not a zip, wrong layers: all say the same
        reason = (str(err).splitlines() or [""])[0][:200]
        raise ModelFileError(f"cannot load the model {path} ({type(err).__name__}: {reason}); it is not a "
                             "complete .keras file: save it again with train --save") from None
    return model, info
