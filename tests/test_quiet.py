"""course_utils.quiet: Keras and TensorFlow import without TensorFlow's C++ start-up lines."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from course_utils import quiet

NOISE = ("absl", "cuInit", "cudart", "oneDNN", "cpu_feature_guard", "retracing")


def test_keras_import_and_first_op_print_nothing():
    code = ("from course_utils.quiet import keras\n"
            "print(float(keras.ops.sum(keras.ops.ones((2, 2)))))\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "4.0"
    assert not [word for word in NOISE if word in done.stderr], done.stderr


def test_errors_still_reach_the_user_and_stderr_comes_back(capfd):
    with pytest.raises(ModuleNotFoundError):
        quiet.import_quietly("a_module_that_does_not_exist")
    os.write(2, b"stderr works\n")
    assert "stderr works" in capfd.readouterr().err


def test_only_known_modules_are_offered():
    with pytest.raises(AttributeError):
        quiet.numpy  # noqa: B018
