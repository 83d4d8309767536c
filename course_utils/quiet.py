"""Keras and TensorFlow, imported without TensorFlow's C++ start-up log lines (notebook ``00_setup``).

TensorFlow writes its start-up lines (``absl::InitializeLog``, oneDNN, CUDA-driver probes, ``cuInit``) from C++
straight to file descriptor 2, some of them before its log level is read, so ``TF_CPP_MIN_LOG_LEVEL`` alone
cannot stop them. Every module of the course imports Keras through here: ``from course_utils.quiet import
keras``. The first such import points descriptor 2 at ``/dev/null`` while TensorFlow loads and finds its
devices, then puts it back; errors still raise as usual, and nothing is filtered afterwards.
Set ``TF_CPP_MIN_LOG_LEVEL=0`` to see TensorFlow's later C++ messages again.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from types import ModuleType

QUIET_MODULES = ("keras", "tensorflow", "tensorflow_datasets")


@contextlib.contextmanager
def stderr_to_devnull() -> Iterator[None]:
    """Send file descriptor 2 (what C++ libraries write to) to ``/dev/null`` for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_quietly(name: str) -> ModuleType:
    """``importlib.import_module(name)``; the first import of TensorFlow (or of what loads it) is silenced."""
    if name in sys.modules:
        return sys.modules[name]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's later C++ INFO and WARNING lines
    with stderr_to_devnull():
        module = importlib.import_module(name)
        if "tensorflow" in sys.modules:
            # Finding the devices is when TensorFlow probes CUDA (``cuInit`` errors on machines without a GPU).
            sys.modules["tensorflow"].config.list_physical_devices()
    return module


def __getattr__(name: str) -> ModuleType:
    """``from course_utils.quiet import keras`` (or ``tensorflow``, ``tensorflow_datasets``)."""
    if name in QUIET_MODULES:
        return import_quietly(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
