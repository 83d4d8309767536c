"""The command line: ``python -m course_utils COMMAND ...`` (the README lists every command).

Each command is a thin layer over the modules the notebooks use, so a grader or a student gets the same
numbers from the shell as from a notebook.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

from course_utils import checks
from course_utils.commands import (cmd_demo, cmd_grade, cmd_predict, cmd_recommend, cmd_release, cmd_site,
                                   cmd_sweep, cmd_train)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="top-K classes of one or more images: ImageNet, or a model from train --save")
    p.add_argument("images", nargs="+", help="image files (jpg, png, ...)")
    p.add_argument("--model", type=Path, default=None,
                   help="a .keras model saved by train --save: print its own classes (--backbone/--weights unused)")
    p.add_argument("--backbone", default="efficientnet_lite0", help="efficientnet_lite0 (offline) or a keras.applications name")
    p.add_argument("--weights", default="imagenet", help="'imagenet' or a weights file (.pth for efficientnet_lite0, .keras/.h5)")
    p.add_argument("--top", type=checks.number("--top", 1, integer=True), default=5,
                   help="how many classes to print per image (at least 1)")
    p.add_argument("--size", type=checks.number("--size", *checks.IMAGE_SIZE, integer=True), default=224,
                   help="input size in pixels, 32-1024 (with --model: the model's own)")
    p.add_argument("--json", type=Path, default=None, help="also write every class's probability per image here")
    p.set_defaults(func=cmd_predict)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="adapt a pretrained network to a dataset and evaluate it")
    p.add_argument("--data", required=True, help="dataset spec: a folder, tfds:NAME or sklearn:digits")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--method", default="logreg", choices=["svm", "logreg", "head", "finetune"])
    p.add_argument("--unfreeze", type=checks.number("--unfreeze", 1, integer=True), default=2,
                   help="finetune: how many of the last blocks to train (1 to the backbone's number of blocks)")
    p.add_argument("--per-class", type=checks.number("--per-class", 1, integer=True), default=None,
                   help="training images per class (stratified sample)")
    p.add_argument("--test-per-class", type=checks.number("--test-per-class", 1, integer=True), default=None,
                   help="test images per class")
    p.add_argument("--size", type=checks.number("--size", *checks.IMAGE_SIZE, integer=True), default=224,
                   help="image size in pixels, 32-1024")
    p.add_argument("--lr", type=checks.number("--lr", 0, checks.LR_MAX, low_open=True), default=0.01,
                   help="base learning rate (new layers), 0 < --lr <= 10")
    p.add_argument("--backbone-lr", type=checks.number("--backbone-lr", 0, checks.LR_MAX), default=None,
                   help="rate for pretrained layers, 0-10 (default lr/10)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--steps", type=checks.number("--steps", 1, 10**6, integer=True), default=None,
                       help="training iterations")
    group.add_argument("--epochs", type=checks.number("--epochs", 1, 10**4, integer=True), default=None,
                       help="training epochs")
    p.add_argument("--augment", action="store_true", help="random flips and crops while fine-tuning")
    p.add_argument("--seed", type=checks.number("--seed", 0, checks.SEED_MAX, integer=True), default=0)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--save", type=Path, default=None,
                   help="save the trained model (.keras): it takes raw images and loads without course_utils")
    p.add_argument("--export", type=Path, default=None, help="also export it as a TensorFlow SavedModel folder, "
                                                             "for serving (model.export())")
    p.set_defaults(func=cmd_train)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="offline tour: ImageNet predictions of bundled photos, then a short "
                                    "fine-tuning run with its test accuracy")
    p.add_argument("--data", default=None, help="dataset spec (default: COURSE_DATA, else tfds:tf_flowers "
                                                "online, else sample:eurosat)")
    p.add_argument("--method", default="logreg", choices=["svm", "logreg", "head", "finetune"])
    p.add_argument("--per-class", type=checks.number("--per-class", 1, integer=True), default=30,
                   help="training images per class")
    p.set_defaults(func=cmd_demo)


def _add_release(sub) -> None:
    p = sub.add_parser("release", help="write the student notebooks (solutions replaced by NotImplementedError)")
    p.add_argument("out_dir", type=Path, help="where the student notebooks go")
    p.add_argument("--src", type=Path, default=None, help="notebooks folder or file (default: the course's notebooks/)")
    p.set_defaults(func=cmd_release)


def _add_grade(sub) -> None:
    p = sub.add_parser("grade", help="execute a folder of submitted notebooks and count passing checks "
                                     "(WARNING: runs the students' code)")
    p.add_argument("folder", type=Path, help="folder of submitted .ipynb files")
    p.add_argument("--source", type=Path, default=None,
                   help="the instructor's notebooks whose check cells are run (a folder, or one notebook every "
                        "submission answers; default: the course's notebooks/)")
    p.add_argument("--csv", type=Path, default=None, help="write one row per notebook here")
    p.add_argument("--timeout", type=checks.number("--timeout", 1, integer=True), default=900,
                   help="seconds per cell")
    p.add_argument("--notebook-timeout", type=checks.number("--notebook-timeout", 1), default=3600,
                   help="seconds per notebook; a notebook still running then gets an error row")
    p.set_defaults(func=cmd_grade)


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="run an experiment config's grid (resumable; see configs/ and notebook 07)")
    p.add_argument("config", type=Path, help="experiment config, YAML or JSON (e.g. configs/quick.yaml)")
    p.add_argument("--data", default=None, help="dataset spec overriding the config's (folder, tfds:NAME, sklearn:digits)")
    p.add_argument("--out", type=Path, default=None, help="results file, JSONL (default: <cache>/results/<name>.jsonl)")
    p.add_argument("--no-cache", action="store_true", help="naive path: no cached frozen-prefix activations")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: one run after another here; ray: fan out over a Ray cluster (pip install -e \".[cluster]\")")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join: auto (started here with `ray start`) or HOST:PORT; default: a local one")
    p.add_argument("--gpus-per-run", type=checks.number("--gpus-per-run", 0, 64), default=None,
                   help="GPUs each run holds under --engine ray (1 on a GPU cluster; 0.5: two runs per GPU)")
    p.add_argument("--cpus-per-run", type=checks.number("--cpus-per-run", 0, 1024, low_open=True), default=None,
                   help="CPUs each run holds under --engine ray (default 1)")
    p.add_argument("--smoke", action="store_true",
                   help="every experiment end to end on CPU, tiny (2+ runs each, few steps, 64 px), into a fresh store")
    p.set_defaults(func=cmd_sweep)


def _add_recommend(sub) -> None:
    p = sub.add_parser("recommend", help="distance from ImageNet and Chu et al.'s freeze / fine-tune advice")
    p.add_argument("--data", required=True, help="dataset spec: a folder, tfds:NAME or sklearn:digits")
    p.add_argument("--backbone", default="efficientnet_lite0", help="efficientnet_lite0, MobileNetV2 or EfficientNetB*")
    p.add_argument("--per-class", type=checks.number("--per-class", 1, integer=True), default=None,
                   help="training images per class you will use (default: all of the train split)")
    p.add_argument("--size", type=checks.number("--size", *checks.IMAGE_SIZE, integer=True), default=224,
                   help="image size for the distance (the network's own: 224)")
    p.add_argument("--sample-per-class", type=checks.number("--sample-per-class", 1, integer=True), default=20,
                   help="images per class sampled for the distance")
    p.add_argument("--seed", type=checks.number("--seed", 0, checks.SEED_MAX, integer=True), default=0,
                   help="seed of the sample and of the train/test split")
    p.add_argument("--json", type=Path, nargs="?", const="-", default=None,
                   help="print the recommendation (and verification) as JSON, or write it to this file")
    p.add_argument("--verify", action="store_true", help="also train Chu's Freeze and Tune and compare them with "
                                                         "the noise rule (offered when his advice is 'try both')")
    for flag, low, high, default, what in (("--verify-size", *checks.IMAGE_SIZE, 128, "image size (small budget)"),
                                           ("--verify-seeds", 1, 100, 2, "training seeds per method"),
                                           ("--test-per-class", 1, None, 20, "test images per class")):
        p.add_argument(flag, type=checks.number(flag, low, high, integer=True), default=default,
                       help=f"--verify: {what}")
    p.add_argument("--verify-steps", type=checks.number("--verify-steps", 1, 10**6, integer=True), nargs="+",
                   default=[40, 120], help="--verify: the budgets (SGD updates) validation chooses from")
    p.add_argument("--verify-lr", type=checks.number("--verify-lr", 0, checks.LR_MAX, low_open=True), nargs="+",
                   default=[0.01, 0.001], help="--verify: the new classifier's rates validation chooses from "
                                               "(Tune's copied layers train at 0.2x)")
    p.add_argument("--verify-schedule", choices=("constant", "step", "cosine"), nargs="+", default=["step"],
                   help="--verify: the learning-rate schedules validation chooses from")
    p.set_defaults(func=cmd_recommend)


def _add_site(sub) -> None:
    p = sub.add_parser("site", help="build the course as a static website (needs pip install -e \".[site]\")")
    p.add_argument("out_dir", type=Path, help="where the site goes (OUT_DIR/index.html)")
    p.set_defaults(func=cmd_site)


COMMANDS: list[Callable] = [_add_demo, _add_predict, _add_train, _add_release, _add_grade, _add_sweep, _add_recommend,
                            _add_site]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise ``checks.UsageError`` (one ``error:`` line from ``main``),
    naming the flag and pointing to ``--help``, instead of printing the usage and exiting."""

    def error(self, message: str):
        raise checks.UsageError(f"{message} (see: {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m course_utils",
                     description="Fine-tuning CNNs for image classification: course tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def _expected(err: BaseException) -> bool:
    """Errors that come from the input or the machine, not from a bug: bad values (ValueError), files and
    folders (OSError) and missing weights (``lite0.WeightsUnavailableError``)."""
    if isinstance(err, (ValueError, OSError)):
        return True
    loaded = sys.modules.get("course_utils.lite0")  # not imported yet: it cannot be that error
    return loaded is not None and isinstance(err, loaded.WeightsUnavailableError)


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one ``warning:`` line (a terminal user needs the message, not our source line)."""
    print(f"warning: {message}", file=file or sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command. Every expected error (see ``_expected``) becomes one ``error:``
    line naming the flag or the file, and exit code 2; a traceback means a bug. Warnings are one line each."""
    with warnings.catch_warnings():
        warnings.showwarning = _warning_line
        try:
            args = build_parser().parse_args(argv)
            return args.func(args)
        except Exception as err:  # noqa: BLE001 - sorted by _expected; anything else is re-raised
            if not _expected(err):
                raise
            print(f"error: {err}", file=sys.stderr)
            return 2
