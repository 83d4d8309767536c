"""The four ways to adapt a pretrained network that the command line's ``train`` offers, end to end.

``svm`` / ``logreg``: bottleneck features + a linear probe (notebook ``05_bottleneck_features``).
``head``: a new softmax head on the frozen network (notebook ``02_replace_softmax``).
``finetune``: the head first, then the last ``unfreeze`` blocks with a 10x lower rate for the pretrained
layers (notebooks ``03_learning_rate`` and ``04_freezing``).

Every method returns a report (accuracy, per-class accuracy, confusion matrix) and a complete Keras model
that maps the backbone's preprocessed images to class probabilities. ``save_model`` (``.keras``) and
``export_saved_model`` (SavedModel) put the preprocessing inside (``exportable``): the saved model takes raw
uint8 images and loads without ``course_utils`` (notebook ``09_capstone``).
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from course_utils import backbones, evaluation, features, surgery, training
from course_utils.blocks import block_names
from course_utils.data import Split
from course_utils.quiet import keras
from course_utils.settings import seed_everything

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
    evaluation.check_finite(history.history["loss"], f"the new head's training loss at --lr {recipe.lr:g}")
    return head.get_layer(surgery.HEAD_NAME).get_weights()


def check_unfreeze(base: keras.Model, recipe: Recipe) -> None:
    """``finetune`` trains the last ``unfreeze`` blocks: between 1 and the backbone's number of blocks
    (``train --unfreeze``); checked before any training."""
    if recipe.method != "finetune":
        return
    blocks = block_names(base)
    if not 1 <= recipe.unfreeze <= len(blocks):
        raise ValueError(f"--unfreeze must be between 1 and {len(blocks)} for {recipe.backbone} (its blocks: "
                         f"{blocks[0]} ... {blocks[-1]}), got {recipe.unfreeze}")


def run(split: Split, recipe: Recipe, verbose: int = 0, base: keras.Model | None = None) -> tuple[keras.Model, dict]:
    """Train ``recipe`` on ``split.train`` and evaluate on ``split.test``: (model, report).

    ``base``: the backbone, already loaded with ``load_backbone`` at the split's image size (else loaded
    here). A run whose loss or outputs become NaN or infinite gets ``evaluation.diverged_report`` (``diverged``
    true, no accuracy) instead of an accuracy.
    """
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
        report = evaluation.evaluate(model, split.test, preprocess)
    except evaluation.DivergedError as err:
        report = evaluation.diverged_report(split.test.classes, len(split.test.labels), str(err))
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
        evaluation.check_finite(history.history["loss"], f"the fine-tuning loss at --lr {recipe.lr:g}")


# --------------------------------------------------------------------------------------------------
# Saved models: ``train --save`` / ``--export`` write them, ``predict --model`` reads them


SAVED_INFO = "course_utils.json"  # inside the .keras archive (beside saved_model.pb): class names, backbone


class ModelFileError(ValueError):
    """A ``.keras`` file that cannot be loaded; the message names it and says what to do."""


def takes_uint8(model: keras.Model) -> bool:
    """True when ``model`` takes raw uint8 images and preprocesses them itself (``exportable``)."""
    return keras.backend.standardize_dtype(model.inputs[0].dtype) == "uint8"


def exportable(model: keras.Model, backbone: str) -> keras.Model:
    """A self-contained classifier: raw uint8 RGB images ``(N, S, S, 3)`` in, class probabilities out
    (notebook ``09_capstone``).

    ``backbones.preprocessing_layer(backbone)`` (standard Keras layers only) sits in front of ``model``,
    which takes ``backbone``'s preprocessed input; the layers and weights are shared, not copied. The new
    model is not compiled, so it saves without an optimizer (the course's own optimizers included) and
    loads with plain ``keras.saving.load_model`` in a program that never imports ``course_utils``.
    A model that already takes uint8 images is returned as it is.
    """
    if takes_uint8(model):
        return model
    plain = keras.Model(model.inputs, model.outputs, name=model.name)  # same layers, but not compiled
    inputs = keras.Input(tuple(model.input_shape[1:]), dtype="uint8", name="image")
    return keras.Model(inputs, plain(backbones.preprocessing_layer(backbone)(inputs)), name="classifier")


def _info(classes: list[str], backbone: str) -> str:
    return json.dumps({"classes": list(classes), "backbone": backbone, "input": "uint8 RGB 0..255"})


def save_model(model: keras.Model, path, classes: list[str], backbone: str) -> Path:
    """Save ``exportable(model, backbone)`` as ``.keras``, atomically, with its class names and backbone
    inside (``train --save``; notebook ``09_capstone``).

    Keras reads only its own members of the archive, so ``keras.saving.load_model`` loads it anywhere; the
    extra member lets ``load_model`` (``predict --model``) print the class names.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    try:
        exportable(model, backbone).save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(SAVED_INFO, _info(classes, backbone))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_saved_model(model: keras.Model, path, classes: list[str], backbone: str) -> Path:
    """Write ``exportable(model, backbone)`` as a TensorFlow SavedModel folder for serving (``train
    --export``; notebook ``09_capstone``): ``tf.saved_model.load(path).serve(uint8 images)`` returns the
    probabilities, with no Keras and no ``course_utils``; ``course_utils.json`` beside it names the classes.
    """
    path = Path(path)
    tf_log = logging.getLogger("tensorflow")  # TensorFlow logs "INFO:tensorflow:Assets written to ..." here
    level = tf_log.level
    tf_log.setLevel(logging.ERROR)
    try:
        exportable(model, backbone).export(str(path), format="tf_saved_model", verbose=False)
    finally:
        tf_log.setLevel(level)
    (path / SAVED_INFO).write_text(_info(classes, backbone), encoding="utf-8")
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


def predict_probabilities(model: keras.Model, images: np.ndarray, backbone: str) -> np.ndarray:
    """Class probabilities of uint8 images ``(N, S, S, 3)`` (``predict``): a model that takes uint8 images
    preprocesses them itself; any other gets ``backbone``'s preprocessing first (notebook ``09_capstone``)."""
    preprocess = None if takes_uint8(model) else backbones.get_preprocess(backbone)
    return np.asarray(evaluation.predict(model, images, preprocess), dtype="float32")
