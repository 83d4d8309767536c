"""Benchmark: the quick config under ``--engine local`` and ``--engine ray`` on this machine (issue 12).

    python benchmarks/ray_vs_local.py [--config configs/quick.yaml] [--data SPEC] [--cpus 2] [--no-throughput]

Runs every run of the config twice, each time into a fresh results file and with a fresh, empty activation
cache (``COURSE_CACHE`` in a temporary folder, so neither engine reads what the other computed): first one
after another in this process (``engine="local"``), then on a local Ray cluster of ``--cpus`` CPUs, one run
per CPU (``engine="ray"``; the cluster's start-up is included). Prints both wall times, their ratio, the
activation passes each engine made (forward passes over image sets for the cached frozen prefixes) and
whether every run got the same accuracy. Then measures images/s of EfficientNet-Lite0 training steps at
224 px on this CPU (``cache_speedup.throughput``: ``train_naive_all`` is a forward+backward pass through the
whole network, what Maybury's ``all`` runs do every step) and derives the time one such run of
``configs/maybury.yaml`` takes here. Reports figures; it is not a timed test.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # cache_speedup.throughput: one way to measure images/s


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=REPO / "configs" / "quick.yaml")
    p.add_argument("--data", default=None, help="dataset spec overriding the config's")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster (one run per CPU)")
    p.add_argument("--steps", type=int, default=4, help="timed training steps per images/s figure")
    p.add_argument("--no-throughput", action="store_true", help="skip the images/s measurement at 224 px")
    return p.parse_args(argv)


def timed(config, engine: str, workdir: Path, cpus: int) -> tuple[float, object, dict[str, float | None]]:
    """Wall time, ``SweepResult`` and accuracies by run identity of one engine, from an empty cache."""
    from course_utils import experiments, results

    os.environ["COURSE_CACHE"] = str(workdir / f"cache-{engine}")  # read by the driver and sent to Ray workers
    out = workdir / f"results-{engine}.jsonl"
    options = {"num_cpus": cpus} if engine == "ray" else None
    start = time.perf_counter()
    result = experiments.run_sweep(config, out=out, progress=False, engine=engine, ray_options=options)
    seconds = time.perf_counter() - start
    return seconds, result, {row["id"]: row["accuracy"] for row in results.load_results(out)}


def images_per_second(config, steps: int) -> dict[str, float]:
    """``cache_speedup.throughput`` at 224 px: images/s of the forward pass and of training steps."""
    from cache_speedup import throughput

    return throughput(replace(config, image_size=224), steps)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("COURSE_PROGRESS", "0")
    from course_utils.runs import expand, load_config

    config = load_config(args.config, data=args.data)
    print(f"{config.name}: {len(expand(config))} runs at {config.image_size} px; {os.cpu_count()} CPUs here")
    with tempfile.TemporaryDirectory(prefix="ray-vs-local-") as tmp:
        local_s, local, local_acc = timed(config, "local", Path(tmp), args.cpus)
        ray_s, remote, ray_acc = timed(config, "ray", Path(tmp), args.cpus)
    same = sum(local_acc[key] == ray_acc.get(key) for key in local_acc)
    print(f"local: {local.ran} runs in {local_s:.1f} s, {local.passes} activation passes")
    print(f"ray:   {remote.ran} runs in {ray_s:.1f} s, {remote.passes} activation passes "
          f"({args.cpus} CPUs, start-up included)")
    print(f"same accuracy in {same} of {len(local_acc)} runs")
    print(f"wall-time ratio ray/local: {ray_s / local_s:.2f}")
    if not args.no_throughput:
        figures = images_per_second(config, args.steps)
        print("images/s at 224 px on this CPU: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()))
        rate = figures["train_naive_all"]
        print(f"one maybury 'all' run here (1000 steps x 32 images at {rate:.1f} images/s, forward+backward): "
              f"{1000 * 32 / rate / 3600:.1f} h")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
