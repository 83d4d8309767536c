"""The checks that recompute an answer from the data (course_utils.grading_answers): known wrong answers fail,
alternative right answers pass, and no message shows the answer."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from course_utils import grading_answers
from course_utils.quiet import keras



def _fails(message: str):
    return pytest.raises(AssertionError, match=f"^{re.escape(message)}$")


def test_nb08_check_cosine_distance_fails_on_similarity_and_euclid_and_passes_scipy(capsys):
    """08 Ex2 (issue 11): the check computes the answer itself; the similarity, a Euclidean distance or a
    made-up number fail; scipy's cosine distance (another correct answer) passes."""
    import numpy as np
    from scipy.spatial.distance import cosine

    s, t = np.array([1.0, 2.0, 0.5, 0.0]), np.array([0.5, 1.0, 2.0, 1.0])
    right = 1 - s @ t / (np.linalg.norm(s) * np.linalg.norm(t))
    grading_answers.check_cosine_distance(right, s, t)
    grading_answers.check_cosine_distance(cosine(s, t), s, t)
    assert capsys.readouterr().out == f"ok: your cosine distance {right:.4f} is Chu's cosine distance\n" * 2
    for wrong in (1 - right, float(np.linalg.norm(s - t)), 0.3):
        with pytest.raises(AssertionError, match="is not 1 - cos"):
            grading_answers.check_cosine_distance(wrong, s, t)
    with _fails("your cosine distance should be a number, got str"):
        grading_answers.check_cosine_distance("svm", s, t)
    with _fails("your cosine distance is not set yet: replace the placeholder with your answer."):
        grading_answers.check_cosine_distance(..., s, t)


def test_nb08_check_chu_advice_fails_on_constant_answers_and_the_old_grid(capsys):
    """08 Ex3 (predict, then run; issue 11): hard-coding one answer ("svm", "tune") or the course's old grid
    (freeze at medium distance x little data) fails, without giving the answers away; Table 3's own words pass
    as well as the short names."""
    cases = {"photos, 10/class": (0.01, 10), "photos, 50/class": (0.01, 50), "flowers, 10/class": (0.36, 10),
             "flowers, 300/class": (0.36, 300), "EuroSAT, 50/class": (0.46, 50)}
    right = {"photos, 10/class": "freeze", "photos, 50/class": "try both", "flowers, 10/class": "try both",
             "flowers, 300/class": "tune", "EuroSAT, 50/class": "tune"}
    verbatim = {"photos, 10/class": "Freeze", "photos, 50/class": "Try Freeze or Tune",
                "flowers, 10/class": "try freeze or  tune", "flowers, 300/class": "Tune", "EuroSAT, 50/class": "TUNE"}
    grading_answers.check_chu_advice(right, cases)
    grading_answers.check_chu_advice(verbatim, cases)
    assert capsys.readouterr().out == "ok: all 5 predictions match Chu's Table 3\n" * 2
    with pytest.raises(AssertionError, match="not understood for"):
        grading_answers.check_chu_advice(dict.fromkeys(cases, "svm"), cases)
    with _fails("3 of 5 predictions disagree with Chu's Table 3: ['flowers, 10/class', 'photos, 10/class', "
                "'photos, 50/class']. Find each case's row (distance 0-0.2 / 0.2-0.4 / 0.4-1) and column "
                "(1-20 / 21-99 / >=100 images per class)."):
        grading_answers.check_chu_advice(dict.fromkeys(cases, "tune"), cases)
    with pytest.raises(AssertionError, match=r"^1 of 5 predictions disagree .*\['flowers, 10/class'\]"):
        grading_answers.check_chu_advice({**right, "flowers, 10/class": "freeze"}, cases)
    with pytest.raises(AssertionError, match="one entry per case"):
        grading_answers.check_chu_advice({"photos, 10/class": "freeze"}, cases)


def _nb05_probe_data():
    import numpy as np

    rng = np.random.default_rng(3)
    y_train, y_test = np.repeat([0, 1, 2], 20), np.repeat([0, 1, 2], 30)
    centres = rng.normal(size=(3, 6))
    f_train = centres[y_train] + 1.5 * rng.normal(size=(60, 6))
    f_test = centres[y_test] + 1.5 * rng.normal(size=(90, 6))
    return f_train, y_train, f_test, y_test


def test_nb05_check_probe_sample_fails_on_typed_numbers_other_images_and_logreg_and_passes_plain_sklearn(capsys):
    import numpy as np
    from sklearn.svm import LinearSVC

    from course_utils import features
    from course_utils.data import stratified_sample

    f_train, y_train, f_test, y_test = _nb05_probe_data()
    idx = stratified_sample(y_train, 5, seed=0)
    probe = features.fit_probe(f_train[idx], y_train[idx], method="svm")
    acc = float(np.mean(probe.predict(f_test) == y_test))
    grading_answers.check_probe_sample(probe, idx, f_train, y_train, f_test, y_test, acc, per_class=5)
    other = stratified_sample(y_train, 5, seed=4)  # an alternative right answer: plain sklearn, another draw
    mine = LinearSVC(C=0.5, max_iter=5000).fit(f_train[other], y_train[other])
    grading_answers.check_probe_sample(mine, other, f_train, y_train, f_test, y_test,
                               float(np.mean(mine.predict(f_test) == y_test)), per_class=5)
    assert capsys.readouterr().out == "ok: a linear SVM on 5 images per class, and its own test accuracy\n" * 2
    with pytest.raises(AssertionError, match="^the accuracy you stored is not your probe's"):
        grading_answers.check_probe_sample(probe, idx, f_train, y_train, f_test, y_test, 0.9, per_class=5)  # typed in
    everything = features.fit_probe(f_train, y_train, method="svm")  # trained on all the photos
    with pytest.raises(AssertionError, match="^refitted on your sample, the probe predicts differently"):
        grading_answers.check_probe_sample(everything, idx, f_train, y_train, f_test, y_test,
                                   float(np.mean(everything.predict(f_test) == y_test)), per_class=5)
    with pytest.raises(AssertionError, match="^the probe is a LogisticRegression; the exercise asks for a linear SVM"):
        grading_answers.check_probe_sample(features.fit_probe(f_train[idx], y_train[idx]), idx, f_train, y_train,
                                   f_test, y_test, acc, per_class=5)
    with pytest.raises(AssertionError, match="^the sample should hold 5 distinct training images of every class"):
        grading_answers.check_probe_sample(probe, stratified_sample(y_train, 6, seed=0), f_train, y_train, f_test, y_test,
                                   acc, per_class=5)


def test_nb05_check_late_fusion_fails_on_early_fusion_one_layer_and_sums_and_passes_hand_made_sklearn(capsys):
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from course_utils import features

    rng = np.random.default_rng(5)
    y_train = np.repeat([0, 1, 2], 12)
    train = [rng.normal(size=(36, d)) + y_train[:, None] * s for d, s in ((5, 0.8), (9, 0.3), (4, 1.2))]
    test = [rng.normal(size=(15, p.shape[1])) + np.repeat([0, 1, 2], 5)[:, None] for p in train]
    by_hand = [LogisticRegression(max_iter=1000).fit(tr, y_train).predict_proba(te)
               for tr, te in reversed(list(zip(train, test)))]  # another order, plain sklearn
    grading_answers.check_late_fusion(sum(by_hand) / 3, train, y_train, test)
    assert capsys.readouterr().out == "ok: late fusion of 3 per-layer logistic regressions\n"
    early = features.fit_probe(np.concatenate(train, 1), y_train).predict_proba(np.concatenate(test, 1))
    with pytest.raises(AssertionError, match="^these are not the mean of the per-layer classifiers' probabilities"):
        grading_answers.check_late_fusion(early, train, y_train, test)
    with pytest.raises(AssertionError, match="^these are one layer's probabilities"):
        grading_answers.check_late_fusion(by_hand[0], train, y_train, test)
    with pytest.raises(AssertionError, match="^each row should sum to 1"):
        grading_answers.check_late_fusion(sum(by_hand), train, y_train, test)
    with pytest.raises(AssertionError, match=r"^the fused probabilities have shape \(15,\)"):
        grading_answers.check_late_fusion(sum(by_hand).argmax(1), train, y_train, test)


def test_nb02_check_mirrored_top1_checks_the_flip_and_asks_the_network(capsys):
    """02 Ex3 known wrong answer: the old check never looked at the flip. The photo itself, upside down, with
    BGR channels, and the original's top-1 class for the mirrored photo fail; the mirror and its top-1 pass."""
    import numpy as np

    from course_utils import backbones, evaluation

    inputs = keras.Input((8, 8, 3))
    flat = keras.layers.Flatten()(inputs)  # not mirror-invariant, unlike global pooling
    net = keras.Model(inputs, keras.layers.Dense(1000, activation="softmax",
                                                 kernel_initializer=keras.initializers.RandomNormal(0, 1, seed=0))(flat))
    photo = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    prep = lambda x: x / 255.0  # noqa: E731
    top1 = lambda image: backbones.imagenet_top_k(evaluation.predict(net, image[None], prep), k=1)[0][0][0]  # noqa: E731
    mirrored = photo[:, ::-1]
    assert top1(mirrored) != top1(photo)
    for image, text in ((photo, "is the photo itself"), (photo[::-1], "is upside down"),
                        (photo[..., ::-1], "has its colour channels reversed"), (np.rot90(photo).copy(), "is something else")):
        with pytest.raises(AssertionError, match=f"^your mirrored photo {text}"):
            grading_answers.check_mirrored_top1(image, photo, top1(image), net, prep)
    with pytest.raises(AssertionError, match="is not the network's most probable class for the mirrored photo"):
        grading_answers.check_mirrored_top1(mirrored, photo, top1(photo), net, prep)
    with pytest.raises(AssertionError, match="flip it, do not crop"):
        grading_answers.check_mirrored_top1(mirrored[:4], photo, top1(mirrored), net, prep)
    capsys.readouterr()
    grading_answers.check_mirrored_top1(mirrored.copy(), photo, top1(mirrored), net, prep)
    assert capsys.readouterr().out == f"ok: the mirrored photo's top-1 class is {top1(mirrored)!r}\n"


def _nb09_advice(chu_advice: str):
    """What 09 Ex1's check reads from ``advice.recommend``: the advice, Table 3's entry, the blocks."""
    from course_utils import advice
    entry = {v: k for k, v in advice.CHU_ADVICE.items()}[chu_advice]
    return SimpleNamespace(chu_advice=chu_advice, chu_table3_entry=entry, n_blocks=7)


def test_nb09_check_capstone_recipe_passes_head_without_augmentation_and_chus_tune(capsys):
    """09 Ex1 alternative correct answers: the advice Freeze answered with a head and no augmentation (the old
    check demanded augment=True); Chu's Tune taken literally (every block at 0.2x); "try both" with a head."""
    from course_utils.recipes import Recipe
    grading_answers.check_capstone_recipe(Recipe(method="head", lr=0.01, augment=False), _nb09_advice("freeze"))
    grading_answers.check_capstone_recipe(Recipe(method="finetune", unfreeze=7, lr=0.01, backbone_lr=0.002, augment=True),
                                  _nb09_advice("tune"))
    grading_answers.check_capstone_recipe(Recipe(method="finetune", unfreeze=2, lr=0.01, backbone_lr=0.001, augment=True),
                                  _nb09_advice("tune"))
    grading_answers.check_capstone_recipe(Recipe(method="head", lr=0.01), _nb09_advice("try both"))
    assert capsys.readouterr().out.splitlines() == [
        "ok: method 'head' for Chu's 'Freeze': the pretrained layers stay frozen",
        "ok: method 'finetune' for Chu's 'Tune': the last 7 blocks at 0.2x the head's rate, with augmentation",
        "ok: method 'finetune' for Chu's 'Tune': the last 2 blocks at 0.1x the head's rate, with augmentation",
        "ok: method 'head' for Chu's 'Try Freeze or Tune': the pretrained layers stay frozen"]


def test_nb09_check_capstone_recipe_fails_the_known_wrong_answers():
    """09 Ex1 known wrong answers: a head where Chu says Tune, fine-tuning where he says Freeze, one rate for
    everything, no backbone rate, no block or more blocks than exist, no augmentation, a probe, no recipe."""
    from course_utils.recipes import Recipe
    tune, freeze = _nb09_advice("tune"), _nb09_advice("freeze")
    good = dict(method="finetune", unfreeze=2, lr=0.01, backbone_lr=0.001, augment=True)
    with _fails("my_recipe is not set yet: replace the placeholder with your answer."):
        grading_answers.check_capstone_recipe(None, tune)
    with pytest.raises(AssertionError, match=r"^method 'head' does not follow Chu's Table 3 entry .*\('Tune'\)"):
        grading_answers.check_capstone_recipe(Recipe(method="head"), tune)
    with pytest.raises(AssertionError, match=r"^method 'finetune' does not follow .*\('Freeze'\)"):
        grading_answers.check_capstone_recipe(Recipe(**good), freeze)
    with pytest.raises(AssertionError, match=r"^method 'logreg' does not follow"):
        grading_answers.check_capstone_recipe(Recipe(method="logreg"), freeze)
    for backbone_lr in (0.01, None, 0.0001):
        with pytest.raises(AssertionError, match=rf"^backbone_lr={backbone_lr!r} with lr=0.01: the pretrained"):
            grading_answers.check_capstone_recipe(Recipe(**{**good, "backbone_lr": backbone_lr}), tune)
    for unfreeze in (0, 8):
        with pytest.raises(AssertionError, match=rf"^unfreeze={unfreeze}: fine-tune between 1 block and all 7"):
            grading_answers.check_capstone_recipe(Recipe(**{**good, "unfreeze": unfreeze}), tune)
    with pytest.raises(AssertionError, match="^augment: fine-tuning on few images"):
        grading_answers.check_capstone_recipe(Recipe(**{**good, "augment": False}), tune)
    with pytest.raises(AssertionError, match=r"^the new head's rate lr=0.1 is far from"):
        grading_answers.check_capstone_recipe(Recipe(**{**good, "lr": 0.1, "backbone_lr": 0.01}), tune)


def _nb09_exported():
    """A trained float-input 3-way model, its preprocessing, and the uint8-input model that wraps both (what
    ``recipes.save_model`` writes), saved and loaded back with plain Keras."""
    import tempfile

    import numpy as np
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="new_head")(x))
    model.get_layer("new_head").set_weights([np.array([[3.0, -2, 0], [-1, 4, 0], [0, 0, 1]], "float32"),
                                             np.zeros(3, "float32")])
    raw = keras.Input((4, 4, 3), dtype="uint8")
    wrapped = keras.Model(raw, model(keras.layers.Rescaling(1 / 128, offset=-1.0)(raw)))
    path = f"{tempfile.mkdtemp()}/m.keras"
    wrapped.save(path)
    image = np.zeros((4, 4, 3), "uint8")
    image[..., 0] = 250  # red: class "a" from raw pixels, another class if preprocessed twice
    return keras.saving.load_model(path), image, ["a", "b", "c"], model, (lambda x: x / 128 - 1.0)


def test_nb09_check_exported_prediction_passes_a_plain_keras_answer_and_fails_the_wrong_ones(capsys):
    """09 Ex3: the class name from the loaded model on the raw image passes; a class index, the class of a
    twice-preprocessed image, the float model instead of the loaded file, and no answer fail, never showing
    the right class."""
    import numpy as np
    loaded, image, classes, model, preprocess = _nb09_exported()
    right = classes[int(np.argmax(loaded.predict(image[None], verbose=0)[0]))]
    twice = classes[int(np.argmax(loaded.predict(preprocess(image[None].astype("float32")), verbose=0)[0]))]
    assert (right, twice) == ("a", "b")
    grading_answers.check_exported_prediction(right, loaded, image, classes, model, preprocess)
    assert capsys.readouterr().out.splitlines()[-1] == (
        "ok: the loaded model takes raw images, matches the trained model, and new_prediction is its top class")
    with _fails("new_prediction is 0; store the class name (an entry of classes), not an index."):
        grading_answers.check_exported_prediction(0, loaded, image, classes, model, preprocess)
    with _fails("new_prediction ('b') is not the class the loaded model gives the highest probability: give it "
                "the raw uint8 image (it preprocesses itself) and take classes[argmax]."):
        grading_answers.check_exported_prediction(twice, loaded, image, classes, model, preprocess)
    with _fails("loaded takes float input: load the file recipes.save_model wrote, which takes raw uint8 images."):
        grading_answers.check_exported_prediction(right, model, image, classes, model, preprocess)
    with _fails("new_prediction is not set yet: replace the placeholder with your answer."):
        grading_answers.check_exported_prediction(None, loaded, image, classes, model, preprocess)

