"""``sweep CONFIG --smoke``: a full config, proven runnable on a CPU in minutes (notebook ``07_experiments``).

Before anyone rents GPUs for ``configs/maybury.yaml``, ``--smoke`` runs every experiment of it end to end,
through the real code paths (``runs.expand``, the one ``Runner``, the store, either engine), but small:

* every experiment keeps all its topologies and the first and last value of each axis it varies (so at
  least two runs), each axis it does not vary at its first value, and the config's first seed;
* a few steps (``STEPS``), a few images per class (``PER_CLASS``), ``IMAGE_SIZE`` pixels, small batches;
* ``keras.applications`` backbones are built with ``weights=None`` (nothing is downloaded; their ImageNet
  tops only accept the full input size anyway); EfficientNet-Lite0 keeps its weights, which ship with the
  course;
* a ``tfds:NAME`` dataset that is not already on disk is replaced by ``tfds.testing.mock_data``: random
  images with the dataset's real features and classes, read through the same TFDS code;
* activations stay in memory (``disk_cache=False``) and rows go to a fresh store, so nothing a smoke run
  computes can be mistaken for a real result.

A config naming a missing key fails in ``load_config``; a topology or backbone that cannot be built fails
in its smoke run, here, not on the cluster.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

from course_utils.backbones import LITE0, canonical_name
from course_utils.runner import Runner
from course_utils.runs import SweepConfig
from course_utils.settings import tfds_data_dir

IMAGE_SIZE = 64
STEPS = (1, 2)  # the first and last value of a varied ``steps`` axis
PER_CLASS = (2, 3)  # the same for ``per_class``
HEAD_STEPS = (0, 1)
TEST_PER_CLASS = 2
BATCH_SIZE = 4
MOCK_EXAMPLES = 60  # random examples per split of a mocked TFDS dataset (about 12 per class for tf_flowers)
_SHRUNK = {"steps": STEPS, "per_class": PER_CLASS, "head_steps": HEAD_STEPS}


def _ends(values: list) -> list:
    return [values[0], values[-1]] if len(values) > 1 else values[:1]


def _smoke_axis(axis: str, values: list) -> list:
    """An axis of a smoke grid: every topology, else the first and last value, with small numbers."""
    if axis == "topologies":
        return list(values)
    if axis == "batch_size":
        return [min(BATCH_SIZE, int(v)) for v in _ends(values)]
    if axis in _SHRUNK:
        small = _SHRUNK[axis]
        return [small[0]] if len(values) == 1 else list(small)
    return _ends(values)


def smoke_config(cfg: SweepConfig) -> SweepConfig:
    """``cfg`` shrunk for ``--smoke`` (see the module docstring); its name gains ``-smoke``."""
    grids = {name: {axis: _smoke_axis(axis, list(values)) for axis, values in grid.items()}
             for name, grid in cfg.grids.items()}
    return replace(cfg, name=f"{cfg.name}-smoke", image_size=IMAGE_SIZE, test_per_class=TEST_PER_CLASS,
                   seeds=cfg.seeds[:1], grids=grids)


def fresh_store(cfg: SweepConfig) -> Path:
    """A results file in a new temporary folder, so a smoke sweep never skips a run."""
    return Path(tempfile.mkdtemp(prefix="course-smoke-")) / f"{cfg.name}.jsonl"


def _tfds_prepared(name: str, tfds: Any) -> bool:
    try:
        return bool(tfds.builder(name, data_dir=str(tfds_data_dir())).is_prepared())
    except Exception:  # noqa: BLE001 - an unknown name is reported by the real loader, in the run
        return True


def _mock_metadata(name: str, tfds: Any, root: Path) -> None:
    """Write ``name``'s dataset info (features from its code, one ``train`` split) under ``root``."""
    builder = tfds.builder(name, data_dir=str(root))
    Path(builder.data_dir).mkdir(parents=True, exist_ok=True)
    builder.info.set_splits(tfds.core.SplitDict([tfds.core.SplitInfo(
        name="train", shard_lengths=[MOCK_EXAMPLES], num_bytes=0, filename_template=None)]))
    builder.info.write_to_directory(builder.data_dir)


@contextlib.contextmanager
def _quiet_tfds() -> Iterator[None]:
    """TFDS and mock_data log warnings about missing metadata and deprecated calls: errors only, inside."""
    loggers = [logging.getLogger(name) for name in ("absl", "tensorflow")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextlib.contextmanager
def mocked_tfds(dataset: str) -> Iterator[bool]:
    """Inside, ``tfds:NAME`` reads ``tfds.testing.mock_data`` when NAME is not on disk; yields whether it
    is mocked. Other specs are left alone."""
    if not dataset.startswith("tfds:"):
        yield False
        return
    from course_utils.quiet import tensorflow_datasets as tfds  # lazy: optional, loads TensorFlow

    name = dataset[len("tfds:"):].strip()
    with _quiet_tfds():
        if _tfds_prepared(name, tfds):
            yield False
            return
        with tempfile.TemporaryDirectory(prefix="course-smoke-tfds-") as root:
            _mock_metadata(name, tfds, Path(root))
            with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES, policy=tfds.testing.MockPolicy.USE_FILES,
                                        data_dir=root):
                yield True


class SmokeRunner(Runner):
    """The ``Runner`` of a smoke sweep: random weights for ``keras.applications`` backbones, activations
    in memory only, TFDS mocked when the dataset is not on disk (``Runner(backbone, weights, image_size,
    cache)``, so it is also the Ray engine's ``runner_factory``)."""

    def __init__(self, backbone: str, weights: str, image_size: int, cache: bool = True) -> None:
        builds = weights if canonical_name(backbone) == LITE0 else None  # weights=None: nothing to download
        super().__init__(backbone, builds, image_size, cache=cache, disk_cache=False)
        self.weights = str(weights)  # the config's, so run_sweep reuses this runner

    def run(self, run, split=None, history: int = 0, measure: bool = False) -> dict:
        """``Runner.run`` with TFDS mocked when needed."""
        with mocked_tfds(run.dataset):
            return super().run(run, split=split, history=history, measure=measure)


def smoke_options(ray_options: dict | None) -> dict:
    """Ray options of a smoke sweep: the given ones, with ``SmokeRunner`` built in every worker."""
    return {**(ray_options or {}), "runner_factory": SmokeRunner}
