"""The command line: ``python -m course_utils COMMAND ...`` (the README lists every command).

Each command is a thin layer over the modules the notebooks use, so a grader or a student gets the same
numbers from the shell as from a notebook.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="top-K ImageNet classes of one or more images")
    p.add_argument("images", nargs="+", help="image files (jpg, png, ...)")
    p.add_argument("--backbone", default="efficientnet_lite0", help="efficientnet_lite0 (offline) or a keras.applications name")
    p.add_argument("--weights", default="imagenet", help="'imagenet' or a weights file (.pth for efficientnet_lite0, .keras/.h5)")
    p.add_argument("--top", type=int, default=5, help="how many classes to print per image")
    p.add_argument("--size", type=int, default=224, help="input size in pixels")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    """Print the top-K ImageNet classes with probabilities for each image."""
    import numpy as np

    from course_utils import backbones
    from course_utils.data import decode_image

    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"no such image file: {', '.join(missing)}. Check the path(s); "
                                "any JPEG, PNG, BMP, GIF or WebP photo works.")
    model = backbones.load_backbone(args.backbone, weights=args.weights, input_size=args.size)
    for path in args.images:
        image = decode_image(path, args.size)
        top = backbones.predict_top_k(model, args.backbone, np.stack([image]), k=args.top)[0]
        print(path)
        for name, prob in top:
            print(f"  {prob:6.1%}  {name}")
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="adapt a pretrained network to a dataset and evaluate it")
    p.add_argument("--data", required=True, help="dataset spec: a folder, tfds:NAME or sklearn:digits")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--method", default="logreg", choices=["svm", "logreg", "head", "finetune"])
    p.add_argument("--unfreeze", type=int, default=2, help="finetune: how many of the last blocks to train")
    p.add_argument("--per-class", type=int, default=None, help="training images per class (stratified sample)")
    p.add_argument("--test-per-class", type=int, default=None, help="test images per class")
    p.add_argument("--size", type=int, default=224, help="image size in pixels")
    p.add_argument("--lr", type=float, default=0.01, help="base learning rate (new layers)")
    p.add_argument("--backbone-lr", type=float, default=None, help="rate for pretrained layers (default lr/10)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--steps", type=int, default=None, help="training iterations")
    group.add_argument("--epochs", type=int, default=None, help="training epochs")
    p.add_argument("--augment", action="store_true", help="random flips and crops while fine-tuning")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--save", type=Path, default=None, help="save the trained model (.keras)")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """Train with one of the four methods, print and save the report."""
    from course_utils import data, recipes

    if args.save is not None and args.save.suffix != ".keras":
        raise ValueError(f"--save must end in .keras (got {args.save}); Keras 3 saves models in that format.")
    split = data.load_dataset(args.data, image_size=args.size, per_class=args.per_class, seed=args.seed,
                              test_per_class=args.test_per_class)
    print(data.describe(split))
    recipe = recipes.Recipe(method=args.method, backbone=args.backbone, weights=args.weights, lr=args.lr,
                            backbone_lr=args.backbone_lr, steps=args.steps, epochs=args.epochs,
                            unfreeze=args.unfreeze, augment=args.augment, seed=args.seed)
    model, report = recipes.run(split, recipe, verbose=1)
    report.update(data=args.data, seed=args.seed, per_class=args.per_class)
    print(format_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"results written to {args.json}")
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        model.save(args.save)
        print(f"model saved to {args.save}")
    return 0


def format_report(report: dict) -> str:
    """Accuracy, per-class accuracy and the confusion matrix as text."""
    classes = report["classes"]
    width = max(len(c) for c in classes)
    lines = [f"test accuracy: {report['accuracy']:.3f}  ({report['n_test']} test images, "
             f"{report.get('n_train', '?')} train, {report.get('seconds', '?')} s)", "per-class accuracy:"]
    lines += [f"  {c:<{width}}  {acc:.3f}" for c, acc in report["per_class_accuracy"].items()]
    lines.append("confusion matrix (rows: true, columns: predicted):")
    lines.append("  " + " " * width + "  " + " ".join(f"{c[:5]:>5}" for c in classes))
    lines += [f"  {c:<{width}}  " + " ".join(f"{v:>5}" for v in row)
              for c, row in zip(classes, report["confusion_matrix"])]
    return "\n".join(lines)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="offline tour: ImageNet predictions of bundled photos, then a short "
                                    "fine-tuning run with its test accuracy")
    p.add_argument("--data", default=None, help="dataset spec (default: COURSE_DATA, ../shared/data/flowers, "
                                                "else sklearn:digits)")
    p.add_argument("--method", default="logreg", choices=["svm", "logreg", "head", "finetune"])
    p.add_argument("--per-class", type=int, default=30, help="training images per class")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """Predict three photos that ship with scikit-image, then train on the quick-mode dataset."""
    import numpy as np
    import skimage.data

    from course_utils import backbones, data, recipes, settings

    model = backbones.load_backbone("efficientnet_lite0")
    print("ImageNet predictions of photos that ship with scikit-image (EfficientNet-Lite0, offline weights):")
    for name in ("chelsea", "coffee", "rocket"):
        image = backbones.to_model_input(getattr(skimage.data, name)(), 224)
        top = backbones.predict_top_k(model, "efficientnet_lite0", np.stack([image]), k=3)[0]
        print(f"  {name:8s} " + ", ".join(f"{label} {prob:.0%}" for label, prob in top))
    spec = args.data or settings.get_settings().data
    split = data.load_dataset(spec, image_size=160, per_class=args.per_class, test_per_class=20, seed=0)
    print(f"\nTraining a new head ({args.method}) on {data.describe(split)}")
    _, report = recipes.run(split, recipes.Recipe(method=args.method))
    print(format_report(report))
    return 0


def _add_release(sub) -> None:
    p = sub.add_parser("release", help="write the student notebooks (solutions replaced by NotImplementedError)")
    p.add_argument("out_dir", type=Path, help="where the student notebooks go")
    p.add_argument("--src", type=Path, default=None, help="notebooks folder or file (default: the course's notebooks/)")
    p.set_defaults(func=cmd_release)


def cmd_release(args: argparse.Namespace) -> int:
    """Write the student release."""
    from course_utils import release
    from course_utils.settings import REPO_ROOT

    written = release.release(args.src or REPO_ROOT / "notebooks", args.out_dir)
    print(f"wrote {len(written)} student notebooks to {args.out_dir}")
    return 0


def _add_grade(sub) -> None:
    p = sub.add_parser("grade", help="execute a folder of submitted notebooks and count passing checks "
                                     "(WARNING: runs the students' code)")
    p.add_argument("folder", type=Path, help="folder of submitted .ipynb files")
    p.add_argument("--csv", type=Path, default=None, help="write one row per notebook here")
    p.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    p.set_defaults(func=cmd_grade)


def cmd_grade(args: argparse.Namespace) -> int:
    """Grade every notebook in a folder."""
    from course_utils import release

    rows = release.grade(args.folder, args.csv, timeout=args.timeout)
    for row in rows:
        print(f"{row['notebook']}: {row['passed']}/{row['checks']} checks pass")
    return 0


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="run an experiment config's grid (resumable; see configs/ and notebook 07)")
    p.add_argument("config", type=Path, help="experiment config, YAML or JSON (e.g. configs/quick.yaml)")
    p.add_argument("--data", default=None, help="dataset spec overriding the config's (folder, tfds:NAME, sklearn:digits)")
    p.add_argument("--out", type=Path, default=None, help="results file, JSONL (default: <cache>/results/<name>.jsonl)")
    p.add_argument("--no-cache", action="store_true", help="naive path: no cached frozen-prefix activations")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run every run of the config not yet in the results file; print a summary per topology."""
    from course_utils import experiments

    config = experiments.load_config(args.config, data=args.data)
    result = experiments.run_sweep(config, out=args.out, cache=not args.no_cache)
    print(result)
    print(experiments.report(config, experiments.load_results(result.path)))
    return 0


def _add_recommend(sub) -> None:
    p = sub.add_parser("recommend", help="distance from ImageNet and Chu et al.'s freeze / fine-tune advice")
    p.add_argument("--data", required=True, help="dataset spec: a folder, tfds:NAME or sklearn:digits")
    p.add_argument("--backbone", default="efficientnet_lite0", help="efficientnet_lite0, MobileNetV2 or EfficientNetB*")
    p.add_argument("--per-class", type=int, default=None,
                   help="training images per class you will use (default: all of the train split)")
    p.add_argument("--size", type=int, default=224, help="image size for the distance (the network's own: 224)")
    p.add_argument("--sample-per-class", type=int, default=20, help="images per class sampled for the distance")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and of the train/test split")
    p.add_argument("--json", type=Path, default=None, help="write the recommendation (and verification) here")
    p.add_argument("--verify", action="store_true", help="also train freeze and fine-tune and say if the advice held")
    p.add_argument("--verify-size", type=int, default=128, help="--verify: image size (small budget)")
    p.add_argument("--verify-seeds", type=int, default=2, help="--verify: training seeds per method")
    p.add_argument("--verify-steps", type=int, default=40, help="--verify: SGD updates for each method")
    p.add_argument("--test-per-class", type=int, default=20, help="--verify: test images per class")
    p.set_defaults(func=cmd_recommend)


def cmd_recommend(args: argparse.Namespace) -> int:
    """Print images per class, the distance, Chu's Table 3 cell and the advice; optionally verify it."""
    from course_utils import backbones, domain

    if args.verify_seeds < 1 or args.verify_steps < 1:
        raise ValueError(f"--verify-seeds and --verify-steps must be at least 1, got {args.verify_seeds} "
                         f"and {args.verify_steps}")
    try:
        rec = domain.recommend(args.data, per_class=args.per_class, backbone=args.backbone,
                               image_size=args.size, sample_per_class=args.sample_per_class, seed=args.seed)
    except backbones.WeightsUnavailableError as err:
        raise ValueError(str(err)) from err
    print(rec.describe())
    result = rec.to_dict()
    if args.verify:
        check = domain.verify(args.data, rec, per_class=args.per_class, image_size=args.verify_size,
                              seeds=range(args.verify_seeds), test_per_class=args.test_per_class,
                              data_seed=args.seed, steps=args.verify_steps)
        print(check.describe())
        result["verify"] = check.to_dict()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"results written to {args.json}")
    return 0


COMMANDS: list[Callable] = [_add_demo, _add_predict, _add_train, _add_release, _add_grade, _add_sweep, _add_recommend]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m course_utils",
                                     description="Fine-tuning CNNs for image classification: course tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; a ValueError becomes a one-line error and exit code 2."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off the terminal
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
