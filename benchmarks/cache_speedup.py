"""Benchmark: the frozen-topology grid of a sweep config with and without cached prefix activations.

    python benchmarks/cache_speedup.py [--config configs/quick.yaml] [--data SPEC] [--quick]

Runs the config's runs that have a frozen prefix twice in one process, through the one Runner
(``experiments.run_sweep``), first on cached activations, then
naive (``--no-cache``: every step runs the whole network), each into its own fresh results file and with a
fresh, empty activation cache (so the cached wall time includes loading the network and computing the
activations). Two groups are timed separately: the frozen-backbone grid (frozen head, extension layers,
SVM: Chu's F(1-7)R(8)) and the runs that train the top blocks on a frozen prefix (Maybury's last two).
Then checks that both paths give the same accuracies and measures images/s of the forward pass and of
training steps. Reports figures; it is not a timed test. The last line, ``speedup: N.Nx``, is the
frozen-backbone grid's. Explained in notebook
``07_experiments``; the figures measured for the course are in ``docs/findings.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=REPO / "configs" / "quick.yaml")
    p.add_argument("--data", default=None, help="dataset spec overriding the config's")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--steps", type=int, default=8, help="timed training steps per throughput figure")
    p.add_argument("--quick", action="store_true", help="one seed at 64 px: a fast check, not the course's figures")
    return p.parse_args(argv)


def frozen_runs(config) -> tuple[list, list]:
    """The config's runs with a frozen prefix: (whole backbone frozen, only the top blocks trained)."""
    from course_utils.runner import Runner
    from course_utils.runs import expand

    probe = Runner(config.backbone, config.weights, config.image_size, cache=True, disk_cache=False)
    cacheable = [run for run in expand(config) if probe.plan(run)[0] is not None]
    frozen = [run for run in cacheable if probe.train_last(run) == 0]
    return frozen, [run for run in cacheable if probe.train_last(run) > 0]


def timed_sweep(config, runs, cache: bool, workdir: Path, label: str) -> tuple[float, dict[str, dict], int]:
    """Wall time of ``run_sweep`` on ``runs`` (backbone loading, decoding and activations included),
    starting from an empty activation cache; the rows; the activation passes made."""
    from course_utils import experiments, results

    os.environ["COURSE_CACHE"] = str(workdir / f"cache-{label}-{'on' if cache else 'off'}")
    out = workdir / f"results-{label}-{'cached' if cache else 'naive'}.jsonl"
    start = time.perf_counter()
    result = experiments.run_sweep(config, out=out, cache=cache, runs=runs, progress=False)
    seconds = time.perf_counter() - start
    return seconds, {row["id"]: row for row in results.load_results(out)}, result.passes


def throughput(config, steps: int) -> dict[str, float]:
    """Images/s: forward pass of the whole network, naive training steps, cached training steps."""
    import numpy as np

    from course_utils import evaluation, surgery, training
    from course_utils.runner import Runner
    from course_utils.runs import make_run, parse_topology

    runner = Runner(config.backbone, config.weights, config.image_size, cache=True, disk_cache=False)
    size, batch = config.image_size, 16
    images = np.random.default_rng(0).integers(0, 256, (8 * batch, size, size, 3), dtype=np.uint8)
    labels = np.arange(len(images)) % 5
    features = surgery.cut(runner.base, surgery.boundary(runner.base, 0))[0]
    figures = {"forward": _rate(lambda: evaluation.predict(features, images, runner.preprocess), len(images))}
    order = training.batch_order(len(images), batch, steps + 1, 0)
    for label, topology in (("frozen_head", "frozen_head"), ("last2", {"kind": "finetune_last", "blocks": 2}),
                            ("all", "finetune_all")):
        run = make_run("bench", parse_topology(topology), 0, backbone=config.backbone, image_size=size,
                       lr=0.01, steps=steps, backbone_lr_factor=0.1, batch_size=batch)
        flat = runner.build(run, 5)
        surgery.freeze(flat, train_last=runner.train_last(run))
        boundary = surgery.boundary(runner.base, runner.train_last(run))
        training.compile_classifier(flat, 0.01, 0.001)
        figures[f"train_naive_{label}"] = _train_rate(flat, images, labels, order, runner.preprocess)
        if boundary is not None:
            suffix = surgery.cut(flat, boundary)[1]
            acts = evaluation.predict(surgery.cut(runner.base, boundary)[0], images, runner.preprocess)
            training.compile_classifier(suffix, 0.01, 0.001)
            figures[f"train_cached_{label}"] = _train_rate(suffix, acts, labels, order, None)
        runner.reset_weights()
    return figures


def _rate(fn, n_images: int) -> float:
    fn()  # warm-up (first call traces)
    start = time.perf_counter()
    fn()
    return n_images / (time.perf_counter() - start)


def _train_rate(model, x, y, order, preprocess) -> float:
    from course_utils.training import fit_steps

    fit_steps(model, x, y, order[:1], preprocess)  # warm-up: traces the train step
    start = time.perf_counter()
    fit_steps(model, x, y, order[1:], preprocess)
    return order[1:].size / (time.perf_counter() - start)


def compare(cached: dict[str, dict], naive: dict[str, dict]) -> dict[str, float]:
    """How many runs give identical accuracy on both paths, and the largest difference."""
    common = sorted(set(cached) & set(naive))
    diffs = [abs(cached[i]["accuracy"] - naive[i]["accuracy"]) for i in common]
    return {"runs": len(common), "identical": sum(d == 0 for d in diffs), "max_abs_diff": max(diffs or [0.0]),
            "mean_cached": sum(cached[i]["accuracy"] for i in common) / max(len(common), 1),
            "mean_naive": sum(naive[i]["accuracy"] for i in common) / max(len(common), 1)}


def measure(config, runs, label: str, workdir: Path) -> dict:
    """Cached and naive wall times of one group of runs, and whether their accuracies agree."""
    if not runs:
        return {"runs": 0}
    cached_s, cached, passes = timed_sweep(config, runs, True, workdir, label)
    naive_s, naive, _ = timed_sweep(config, runs, False, workdir, label)
    return {"runs": len(runs), "cached_s": round(cached_s, 1), "naive_s": round(naive_s, 1),
            "speedup": round(naive_s / cached_s, 2), "activation_passes": passes, "accuracy": compare(cached, naive)}


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from dataclasses import replace

    from course_utils.runs import load_config, resolve_dataset

    config = load_config(args.config, data=args.data)
    if args.quick:  # a small check of the same code: one seed, 64 px
        config = replace(config, seeds=config.seeds[:1], image_size=64)
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        os.environ["COURSE_CACHE"] = tmp
        frozen, top_blocks = frozen_runs(config)
        groups = {"frozen": measure(config, frozen, "frozen", Path(tmp)),
                  "top_blocks": measure(config, top_blocks, "top-blocks", Path(tmp))}
        figures = throughput(config, args.steps)
    import keras

    report = {"config": str(args.config), "dataset": resolve_dataset(config.dataset),
              "backend": keras.backend.backend(), "image_size": config.image_size, "cpus": os.cpu_count(),
              **groups, "images_per_s": {k: round(v, 1) for k, v in figures.items()}}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    for name, what in (("top_blocks", "runs that train the top blocks on a frozen prefix"),
                       ("frozen", "frozen-backbone grid (frozen head, extension, SVM)")):
        g = groups[name]
        if g["runs"]:
            same = g["accuracy"]
            print(f"{what}: {g['runs']} runs of {args.config.name}; cached {g['cached_s']:.1f} s, naive "
                  f"{g['naive_s']:.1f} s ({g['speedup']:.1f}x); identical accuracy in {same['identical']}/"
                  f"{same['runs']} runs (max diff {same['max_abs_diff']:.3f})")
    print(f"images/s at {config.image_size} px: forward {figures['forward']:.1f}; training, naive frozen head "
          f"{figures['train_naive_frozen_head']:.1f}, cached frozen head {figures['train_cached_frozen_head']:.1f}, "
          f"naive last-2 {figures['train_naive_last2']:.1f}, cached last-2 {figures['train_cached_last2']:.1f}, "
          f"fine-tune all {figures['train_naive_all']:.1f}")
    headline = groups["frozen"] if groups["frozen"]["runs"] else groups["top_blocks"]
    print(f"speedup: {headline['speedup']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
