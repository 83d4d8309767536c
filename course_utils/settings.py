"""Quick or full mode, the dataset, and where files go: chosen in one place, from the environment.

Explained in notebook ``00_setup``. Environment variables:

- ``COURSE_QUICK``: ``1`` (default) for quick mode: 2 CPU cores, small images, a few minutes a notebook;
  ``0`` for full mode: real tfds datasets, 224-px images, a GPU.
- ``COURSE_DATA``: a dataset spec (a folder, ``tfds:NAME``, ``sample:eurosat`` or ``sklearn:digits``). Unset,
  quick mode uses ``tfds:tf_flowers`` when the machine is online (downloaded once, then sampled with a fixed
  seed) and ``sample:eurosat`` (real satellite photos that ship with the course) when it is offline; full mode
  uses ``tfds:tf_flowers``.
- ``COURSE_CACHE``: where features and results are cached (default ``<repo>/data``).
- ``COURSE_DATA_DIR``: where ``tfds:`` datasets are downloaded (default ``<repo>/data/tfds``).
- ``COURSE_PROGRESS``: ``0`` hides progress bars (the committed notebooks are run that way).
- ``COURSE_REPO_URL``: the git repository that the Colab setup cells clone (default ``REPO_URL``).

This module imports nothing from the package (``environment`` reports on the machine, ``data`` loads the
dataset spec chosen here). It probes the network (``is_online``) because the quick-mode default dataset
depends on it; the probe lives here so that ``get_settings`` needs no later module.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
REPO_URL = "https://github.com/finetune-course/finetune-cnn-course"  # the one place the repository is named
DOWNLOAD_HOST = ("storage.googleapis.com", 443)  # keras.applications weights and tfds data come from here
OFFLINE_SPEC = "sample:eurosat"
ONLINE_SPEC = "tfds:tf_flowers"
FULL_DEFAULT_SPEC = "tfds:tf_flowers"


def repo_url() -> str:
    """The repository that badges and Colab setup cells point to: ``COURSE_REPO_URL``, else ``REPO_URL``."""
    return os.environ.get("COURSE_REPO_URL", "").strip() or REPO_URL


def is_quick() -> bool:
    """True unless ``COURSE_QUICK`` is set to 0/false/no."""
    return os.environ.get("COURSE_QUICK", "1").strip().lower() not in {"0", "false", "no", "off"}


def tfds_data_dir() -> Path:
    """Where ``tfds:`` datasets are downloaded: ``COURSE_DATA_DIR``, else ``<repo>/data/tfds`` (notebook 00_setup)."""
    return Path(os.environ.get("COURSE_DATA_DIR") or REPO_ROOT / "data" / "tfds").expanduser()


def progress_enabled() -> bool:
    """False when ``COURSE_PROGRESS`` is 0/false/no/off (the committed notebooks are executed that way)."""
    return os.environ.get("COURSE_PROGRESS", "1").strip().lower() not in {"0", "false", "no", "off"}


def progress_bar(iterable: Iterable | None = None, **kwargs: Any) -> Any:
    """The course's one progress bar: ``tqdm.auto`` (a widget in Jupyter, plain text in a terminal), hidden
    when ``COURSE_PROGRESS=0`` or when ``disable=True`` is passed. Keyword arguments go to tqdm."""
    from tqdm.auto import tqdm  # lazy: tqdm.auto looks for Jupyter widgets, which only a bar needs

    kwargs["disable"] = bool(kwargs.get("disable")) or not progress_enabled()
    return tqdm(iterable, **kwargs)


def cache_dir(sub: str = "") -> Path:
    """A writable cache folder (``COURSE_CACHE``, else ``<repo>/data``, else ``~/.cache/finetune-course``)."""
    base = os.environ.get("COURSE_CACHE")
    root = Path(base) if base else REPO_ROOT / "data"
    if not base and not os.access(REPO_ROOT, os.W_OK):
        root = Path.home() / ".cache" / "finetune-course"
    path = root / sub if sub else root
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_online(timeout: float = 2.0, host: tuple[str, int] = DOWNLOAD_HOST) -> bool:
    """True when a TCP connection to ``host`` (default: where Keras weights and tfds data are downloaded
    from) opens within ``timeout`` seconds. Name lookup and connection run in a background thread that is
    abandoned after ``timeout``, so the check never hangs (notebook ``00_setup``).

    A quick hint, not a guarantee: behind an HTTP proxy it may say offline although downloads through the
    proxy work.
    """
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection(host, timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True, name="course-online-check")
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


@dataclass
class Settings:
    """Everything a notebook needs to know about the mode it runs in.

    ``describe()`` prints it, so every notebook says up front where its data comes from.
    """

    quick: bool
    data: str
    data_note: str
    image_size: int
    per_class: int | None
    test_per_class: int | None
    seeds: list[int] = field(default_factory=lambda: [0])
    batch_size: int = 32

    def describe(self) -> str:
        mode = "quick (offline, CPU)" if self.quick else "full (real datasets, GPU recommended)"
        sizes = f"{self.per_class or 'all'} train / {self.test_per_class or 'all'} test images per class"
        return (f"mode: {mode}\ndata: {self.data}  ({self.data_note})\n"
                f"images: {self.image_size}x{self.image_size} px, {sizes}; seeds {self.seeds}")


def choose_data(quick: bool, full_default: str, online: bool | None = None) -> tuple[str, str]:
    """(spec, where it came from, in words): ``COURSE_DATA``, else the mode's default (notebook ``00_setup``).

    ``online`` None probes the network (``is_online``) only when the answer matters: quick mode without
    ``COURSE_DATA``.
    """
    spec = os.environ.get("COURSE_DATA", "").strip()
    if spec:
        return spec, "from COURSE_DATA"
    if not quick:
        return full_default, "full-mode default; set COURSE_DATA to change it"
    if online if online is not None else is_online():
        return ONLINE_SPEC, ("online: tf_flowers from TensorFlow Datasets, downloaded once into the cache and "
                             "sampled with a fixed seed; set COURSE_DATA to change it")
    return OFFLINE_SPEC, ("offline and no COURSE_DATA: real EuroSAT satellite photos that ship with the course "
                          "(MIT licence; satellite views, unlike ImageNet's photos, so numbers differ from the flowers run shown)")


def get_settings(full_default: str = FULL_DEFAULT_SPEC, quick_image_size: int = 160,
                 quick_per_class: int | None = 40, quick_test_per_class: int | None = 20,
                 seeds: list[int] | None = None) -> Settings:
    """Read the mode and dataset from the environment (notebook ``00_setup``).

    Quick mode shrinks images and samples per class so that a notebook runs in under two minutes on
    2 CPU cores; full mode uses 224-px images and all the data.
    """
    quick = is_quick()
    spec, note = choose_data(quick, full_default)
    if quick:
        return Settings(True, spec, note, quick_image_size, quick_per_class, quick_test_per_class,
                        seeds or [0])
    return Settings(False, spec, note, 224, None, None, seeds or [0, 1, 2])


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and the Keras backend with one call to
    ``keras.utils.set_random_seed`` (notebook ``01_why_finetune``). Raises ValueError for a negative seed."""
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    from course_utils.quiet import keras  # lazy: importing settings must not load TensorFlow (quiet is a leaf)

    keras.utils.set_random_seed(int(seed))

