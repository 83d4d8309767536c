"""The self-contained export (course_utils.recipes, issue 11 item 7): a saved model takes raw uint8 images,
has no optimizer, loads with plain Keras in a process where ``course_utils`` cannot be imported, and gives the
probabilities ``python -m course_utils predict`` prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from course_utils import backbones, cli, evaluation, features, recipes
from course_utils.data import load_dataset
from course_utils.images import decode_image
from course_utils.quiet import keras

# Runs with `python -I` (no PYTHONPATH, no current folder) and a finder that refuses course_utils: the
# editable install would otherwise still find it.
WITHOUT_COURSE_UTILS = r"""
import importlib.abc, json, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "course_utils":
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Refuse())
import keras
import numpy as np

model = keras.saving.load_model(sys.argv[1])
probs = model.predict(np.load(sys.argv[2]), verbose=0)
try:
    import course_utils
    blocked = False
except ImportError:
    blocked = True
print(json.dumps({"probabilities": probs.tolist(), "blocked": blocked, "dtype": str(model.inputs[0].dtype),
                  "imported": sorted(m for m in sys.modules if m.startswith("course_utils"))}))
"""


def _without_course_utils(model_path, images_path) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([sys.executable, "-I", "-c", WITHOUT_COURSE_UTILS, str(model_path), str(images_path)],
                            capture_output=True, text=True, env=env, timeout=300, cwd="/")
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def tiny(image_tree):
    """Two classes of small JPEGs in train/ and test/."""
    return image_tree({"train/cat": 4, "train/dog": 4, "test/cat": 2, "test/dog": 2}, "tiny")


def test_a_saved_model_loads_without_course_utils_and_gives_the_cli_probabilities(tiny, tmp_path, capsys):
    """issue 11: fine-tuned with the course's per-layer SGD, saved, then loaded by plain Keras elsewhere."""
    saved, out = tmp_path / "m.keras", tmp_path / "p.json"
    assert cli.main(["train", "--data", str(tiny), "--method", "finetune", "--unfreeze", "1", "--size", "32",
                     "--steps", "2", "--save", str(saved)]) == 0
    photos = sorted(str(p) for p in (tiny / "test").rglob("*.jpg"))
    assert cli.main(["predict", "--model", str(saved), *photos, "--json", str(out)]) == 0
    printed = json.loads(out.read_text())
    assert printed["classes"] == ["cat", "dog"] and [p["image"] for p in printed["predictions"]] == photos
    images = np.stack([decode_image(p, 32) for p in photos])
    np.save(tmp_path / "images.npy", images)
    elsewhere = _without_course_utils(saved, tmp_path / "images.npy")
    assert (elsewhere["blocked"], elsewhere["imported"], elsewhere["dtype"]) == (True, [], "uint8")
    np.testing.assert_allclose(elsewhere["probabilities"], [p["probabilities"] for p in printed["predictions"]],
                               atol=1e-5, rtol=0)
    with zipfile.ZipFile(saved) as archive:
        config = archive.read("config.json").decode()
        info = json.loads(archive.read(recipes.SAVED_INFO))
    assert "LayerwiseSGD" not in config and "course_utils" not in config  # no optimizer, nothing custom
    assert info == {"classes": ["cat", "dog"], "backbone": "efficientnet_lite0", "input": "uint8 RGB 0..255"}


def _classifier(size: int = 8) -> keras.Model:
    """A small model on efficientnet_lite0's preprocessed input: (x - 127) / 128."""
    inputs = keras.Input((size, size, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="conv")(inputs))
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(x))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)


def test_exportable_puts_the_preprocessing_inside_and_shares_the_weights(images):
    model = _classifier()
    whole = recipes.exportable(model, "efficientnet_lite0")
    assert (recipes.takes_uint8(model), recipes.takes_uint8(whole)) == (False, True)
    assert recipes.exportable(whole, "efficientnet_lite0") is whole and not whole.compiled
    expected = evaluation.predict(model, images, backbones.get_preprocess("efficientnet_lite0"))
    np.testing.assert_allclose(evaluation.predict(whole, images), expected, atol=1e-6, rtol=0)
    model.get_layer("head").set_weights([w * 0 for w in model.get_layer("head").get_weights()])
    np.testing.assert_allclose(evaluation.predict(whole, images), np.full((5, 3), 1 / 3), atol=1e-7)


def test_predict_probabilities_preprocesses_only_a_model_that_does_not_itself(images):
    model = _classifier()
    whole = recipes.exportable(model, "efficientnet_lite0")
    by_model = recipes.predict_probabilities(model, images, "efficientnet_lite0")
    np.testing.assert_array_equal(by_model, evaluation.predict(model, images, backbones.get_preprocess(
        "efficientnet_lite0")))
    np.testing.assert_allclose(recipes.predict_probabilities(whole, images, "efficientnet_lite0"), by_model,
                               atol=1e-6, rtol=0)


def test_a_saved_model_round_trips_with_its_class_names(images, tmp_path):
    model = _classifier()
    path = recipes.save_model(model, tmp_path / "m.keras", ["a", "b", "c"], "efficientnet_lite0")
    loaded, info = recipes.load_model(path)
    assert info["classes"] == ["a", "b", "c"] and recipes.takes_uint8(loaded)
    np.testing.assert_allclose(evaluation.predict(loaded, images),
                               recipes.predict_probabilities(model, images, "efficientnet_lite0"), atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]  # no temporary file left behind


def test_a_saved_model_export_serves_uint8_images(images, tmp_path):
    """``model.export()``: a SavedModel that TensorFlow serves with no Keras model code at all."""
    import tensorflow as tf  # lazy: only this test loads a SavedModel

    model = _classifier()
    path = recipes.export_saved_model(model, tmp_path / "served", ["a", "b", "c"], "efficientnet_lite0")
    served = tf.saved_model.load(str(path))
    probs = served.serve(tf.constant(images)).numpy()
    np.testing.assert_allclose(probs, recipes.predict_probabilities(model, images, "efficientnet_lite0"), atol=1e-6)
    assert json.loads((path / recipes.SAVED_INFO).read_text())["classes"] == ["a", "b", "c"]


@pytest.mark.parametrize("content, reason", [(b"not a zip", "it is not a .keras archive"),
                                             (None, "it is not a complete .keras file")])
def test_a_broken_model_file_is_named(tmp_path, content, reason):
    path = tmp_path / "m.keras"
    if content is None:  # a zip archive, but without the model's weights
        recipes.save_model(_classifier(), path, ["a", "b", "c"], "efficientnet_lite0")
        with zipfile.ZipFile(path) as archive:
            kept = {name: archive.read(name) for name in archive.namelist() if not name.endswith(".h5")}
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in kept.items():
                archive.writestr(name, data)
    else:
        path.write_bytes(content)
    with pytest.raises(recipes.ModelFileError, match=f"cannot load the model {path}.*{reason}"):
        recipes.load_model(path)
    with pytest.raises(FileNotFoundError, match="no such model file"):
        recipes.load_model(tmp_path / "none.keras")


# ------------------------------------------------------------------ the methods (moved from test_training.py)


def test_recipe_rejects_unknown_method():
    with pytest.raises(ValueError, match="^Unknown method 'magic'; choose one of svm, logreg, head, finetune.$"):
        recipes.Recipe(method="magic")


@pytest.mark.parametrize("method, standardize", [("logreg", False), ("logreg", True), ("svm", False)])
def test_probe_folds_into_one_dense_layer(method, standardize):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype("float32") + np.repeat(np.eye(3, 8) * 3, 20, axis=0)
    y = np.repeat(np.arange(3), 20)
    probe = features.fit_probe(x, y, method, standardize=standardize)
    kernel, bias = recipes.probe_to_dense(probe, 3)
    logits = x @ kernel + bias
    np.testing.assert_array_equal(logits.argmax(1), probe.predict(x))
    if method == "logreg":
        probs = np.exp(logits - logits.max(1, keepdims=True))
        np.testing.assert_allclose(probs / probs.sum(1, keepdims=True), probe.predict_proba(x), atol=1e-4)


@pytest.mark.parametrize("method", ["logreg", "head", "finetune"])
def test_recipes_learn_flowers(flowers_dir, method):
    """Every method beats chance (0.2) clearly on 10 photos per class at 96 px."""
    split = load_dataset(str(flowers_dir), image_size=96, per_class=10, test_per_class=10, seed=0)
    model, report = recipes.run(split, recipes.Recipe(method=method, epochs=1 if method == "finetune" else None))
    assert report["n_train"] == 50 and report["n_test"] == 50
    assert report["accuracy"] > 0.5, report
    assert model.outputs[0].shape[-1] == 5
