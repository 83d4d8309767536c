"""What each command of ``python -m course_utils`` does: a few lines over the library each (README).

``cli`` parses the arguments and turns expected errors into one ``error:`` line; the functions here call the
same library functions the notebooks call, so a grader or a student gets the same numbers from the shell as
from a notebook. The package modules are imported inside each command: they load TensorFlow and Keras,
which ``--help`` and a usage error should not wait for.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import skimage.data

from course_utils import checks, evaluation, release, site
from course_utils.settings import REPO_ROOT


def cmd_predict(args: argparse.Namespace) -> int:
    """Print the top-K classes with probabilities for each image (``recipes.predict_probabilities``); a file
    that cannot be read gets one ``error:`` line and the next one is processed (exit code 2 when any failed).
    ``--json`` also writes every class's probability per image."""
    # lazy: these load TensorFlow and Keras, which --help and a usage error should not wait for
    from course_utils import backbones, recipes
    from course_utils.images import decode_or_reason

    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"no such image file: {', '.join(missing)}. Check the path(s); "
                                "any JPEG, PNG, BMP, GIF or WebP photo works.")
    out = checks.output_path(args.json, "--json") if args.json is not None else None
    if args.model is not None:
        model, info = recipes.load_model(args.model)
        size, backbone = int(model.input_shape[1] or args.size), info.get("backbone", args.backbone)
        classes = _class_names(info, int(model.output_shape[-1]), args.model)
    else:
        model = backbones.load_backbone(args.backbone, weights=args.weights, input_size=args.size)
        size, backbone, classes = args.size, args.backbone, backbones.imagenet_classes()
    results, failed = [], 0
    for path in args.images:
        image, reason = decode_or_reason(path, size)
        if image is None:
            print(f"error: {path}: {reason}; skipped", file=sys.stderr, flush=True)
            failed += 1
            continue
        probs = recipes.predict_probabilities(model, image[None], backbone)[0]
        results.append({"image": str(path), "probabilities": [float(p) for p in probs]})
        print(path)
        for i in np.argsort(-probs)[:args.top]:
            print(f"  {probs[i]:6.1%}  {classes[i]}")
    if out:
        checks.write_json(out, {"classes": classes, "predictions": results})
    return 2 if failed else 0



def _class_names(info: dict, n_outputs: int, path: Path) -> list[str]:
    """The class names saved with a model (``recipes.save_model``), else ``class 0``, ``class 1``, ..."""
    classes = list(info.get("classes") or [])
    if len(classes) != n_outputs:
        print(f"note: {path} has no class names saved with it (not from train --save); numbering them",
              file=sys.stderr)
        classes = [f"class {i}" for i in range(n_outputs)]
    return classes



def cmd_train(args: argparse.Namespace) -> int:
    """Train with one of the four methods, print the report, save the model, then write the report.

    Everything is checked before the data are loaded: the numbers (argparse), the output paths (their
    folders are made and must be writable), the backbone and its weights, ``--unfreeze`` and, after the
    split, one training and one test image in every class. A diverged run writes its report (no accuracy),
    saves no model and ends with an ``error:`` line.
    """
    # lazy: these load TensorFlow and Keras, which --help and a usage error should not wait for
    from course_utils import backbones, data, recipes

    save = checks.output_path(args.save, "--save", ".keras", "model.keras") if args.save is not None else None
    export = checks.output_dir(args.export, "--export") if args.export is not None else None
    out = checks.output_path(args.json, "--json") if args.json is not None else None
    recipe = recipes.Recipe(method=args.method, backbone=args.backbone, weights=args.weights, lr=args.lr,
                            backbone_lr=args.backbone_lr, steps=args.steps, epochs=args.epochs,
                            unfreeze=args.unfreeze, augment=args.augment, seed=args.seed)
    base = backbones.load_backbone(args.backbone, weights=args.weights, input_size=args.size)
    recipes.check_unfreeze(base, recipe)
    split = data.load_dataset(args.data, image_size=args.size, per_class=args.per_class, seed=args.seed,
                              test_per_class=args.test_per_class)
    print(data.describe(split))
    model, report = recipes.run(split, recipe, verbose=1, base=base)
    report.update(data=args.data, seed=args.seed, per_class=args.per_class)
    print(evaluation.format_report(report))
    if save and not report.get("diverged"):
        recipes.save_model(model, save, split.train.classes, args.backbone)
        print(f"model saved to {save}")
    if export and not report.get("diverged"):
        recipes.export_saved_model(model, export, split.train.classes, args.backbone)
        print(f"SavedModel exported to {export}")
    if out:
        checks.write_json(out, report)
        print(f"results written to {out}")
    if report.get("diverged"):
        raise ValueError(report["reason"] + ("; no model was saved" if save or export else ""))
    return 0



def cmd_demo(args: argparse.Namespace) -> int:
    """Predict three photos that ship with scikit-image, then train on the quick-mode dataset."""
    # lazy: these load TensorFlow and Keras, which --help and a usage error should not wait for
    from course_utils import backbones, data, images, recipes, settings

    model = backbones.load_backbone("efficientnet_lite0")
    print("ImageNet predictions of photos that ship with scikit-image (EfficientNet-Lite0, offline weights):")
    for name in ("chelsea", "coffee", "rocket"):
        image = images.to_model_input(getattr(skimage.data, name)(), 224)
        probs = evaluation.predict(model, image[None], backbones.get_preprocess("efficientnet_lite0"))
        top = backbones.imagenet_top_k(probs, k=3)[0]
        print(f"  {name:8s} " + ", ".join(f"{label} {prob:.0%}" for label, prob in top))
    spec = args.data or settings.get_settings().data
    split = data.load_dataset(spec, image_size=160, per_class=args.per_class, test_per_class=20, seed=0)
    print(f"\nTraining a new head ({args.method}) on {data.describe(split)}")
    _, report = recipes.run(split, recipes.Recipe(method=args.method))
    print(evaluation.format_report(report))
    return 0



def cmd_release(args: argparse.Namespace) -> int:
    """Write the student release."""

    out_dir = checks.output_dir(args.out_dir, "the release folder")
    written = release.release(args.src or REPO_ROOT / "notebooks", out_dir)
    print(f"wrote {len(written)} student notebooks to {args.out_dir}")
    return 0



def cmd_grade(args: argparse.Namespace) -> int:
    """Grade every notebook in a folder, each in its own temporary copy and with the instructor's check
    cells put back (``release.grade``); one line per notebook as it ends.

    A notebook that cannot be read, times out or kills its kernel gets an error row and the batch goes on;
    the CSV is rewritten after each notebook.
    """

    out = checks.output_path(args.csv, "--csv", example="grades.csv") if args.csv is not None else None
    print(release.GRADING_WARNING, file=sys.stderr, flush=True)

    def show(row: dict) -> None:
        counts = f"{row['passed']}/{row['checks']} checks pass"
        if not row["error"]:
            tampered = f" (failed: {row['tampered']})" if row["tampered"] else ""
            print(f"{row['notebook']}: {counts}{tampered}", flush=True)
        else:
            before = f" ({counts.replace('pass', 'passed')} before that)" if row["checks"] else ""
            print(f"{row['notebook']}: ERROR {row['error']}{before}", flush=True)

    release.grade(args.folder, args.source or REPO_ROOT / "notebooks", out, timeout=args.timeout,
                  notebook_timeout=args.notebook_timeout, on_row=show)
    if out:
        print(f"grades written to {out}")
    return 0



def cmd_sweep(args: argparse.Namespace) -> int:
    """Run every run of the config not yet in the results file; print a summary per topology."""
    # lazy: these load TensorFlow and Keras, which --help and a usage error should not wait for
    from course_utils import experiments, results, runs, smoke

    out = checks.output_path(args.out, "--out", example="results.jsonl") if args.out is not None else None
    config = runs.load_config(args.config, data=args.data)
    ray_flags = {"address": args.address, "gpus_per_run": args.gpus_per_run, "cpus_per_run": args.cpus_per_run}
    ray_options = {key: value for key, value in ray_flags.items() if value is not None}
    if ray_options and args.engine != "ray":
        flags = " ".join(f"--{key.replace('_', '-')}" for key in ray_options)
        raise checks.UsageError(f"{flags}: only with --engine ray (add --engine ray)")
    runner = None
    if args.smoke:
        config = smoke.smoke_config(config)
        out = out or smoke.fresh_store(config)
        ray_options = smoke.smoke_options(ray_options)
        if args.engine == "local":
            runner = smoke.SmokeRunner(config.backbone, config.weights, config.image_size, cache=not args.no_cache)
    result = experiments.run_sweep(config, out=out, cache=not args.no_cache, runner=runner, engine=args.engine,
                                   ray_options=ray_options)
    print(result)
    print(results.report(config, results.load_results(result.path)))
    return 0



def cmd_recommend(args: argparse.Namespace) -> int:
    """Print images per class, the distance, Chu's Table 3 cell and the advice; optionally verify it.
    ``--json`` alone prints only the JSON (notebook 08_domain_distance)."""
    # lazy: these load TensorFlow and Keras, which --help and a usage error should not wait for
    from course_utils import advice, lite0

    to_stdout = str(args.json) == "-"
    out = checks.output_path(args.json, "--json") if args.json is not None and not to_stdout else None
    say = (lambda text: None) if to_stdout else print
    try:
        rec = advice.recommend(args.data, per_class=args.per_class, backbone=args.backbone,
                               image_size=args.size, sample_per_class=args.sample_per_class, seed=args.seed)
    except lite0.WeightsUnavailableError as err:
        raise ValueError(str(err)) from err
    say(rec.describe())
    result = rec.to_dict()
    if args.verify:
        check = advice.verify(args.data, rec, per_class=args.per_class, image_size=args.verify_size,
                              seeds=range(args.verify_seeds), test_per_class=args.test_per_class,
                              steps=args.verify_steps, lr=args.verify_lr,
                              schedule=args.verify_schedule)
        say(check.describe())
        result["verify"] = check.to_dict()
    if to_stdout:
        print(json.dumps(result, indent=2))
    elif out:
        checks.write_json(out, result)
        print(f"results written to {out}")
    return 0



def cmd_site(args: argparse.Namespace) -> int:
    """Build the website from the committed notebooks (course_utils.site)."""

    return site.main(args.out_dir)

