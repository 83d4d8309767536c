"""Write docs/findings.md from the two findings sweeps: the papers' own words and numbers beside ours.

    python -m course_utils sweep configs/findings_near.yaml --data ../shared/data/flowers_large
    python -m course_utils sweep configs/findings_far.yaml --data ../shared/data/eurosat
    python tools/findings.py [--near FILE] [--far FILE] [--measured FILE] [--out docs/findings.md]

The stores the committed page was written from are in docs/findings_data/ (gzipped JSONL, per-image test
predictions included), so the page can be checked and rewritten without training:

    python tools/findings.py --near docs/findings_data/findings_near.jsonl.gz \
        --far docs/findings_data/findings_far.jsonl.gz --measured docs/findings_data/findings_measured.json

Every choice (the learning rate of each topology, per data size and domain; for Chu's Freeze and Tune also the
number of steps and the schedule) is made on the validation split (`val_accuracy`, the mean over seeds); the
test set is read once, for the chosen run. Every verdict is the
course's one noise rule, `evaluation.compare`, on the same test images with the seeds paired.
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the file backend

from course_utils import evaluation, results, runs, settings  # noqa: E402
from course_utils.runner import Runner  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = {"near": "findings_near", "far": "findings_far"}
FREEZE, TUNE, LAST2, SVM = "Freeze F(1-7)R(8)", "Tune T(1-7)R(8)", "last2", "svm"
SIZES = (10, 50, 300)
CHU = ("chu", "chu_budget_freeze", "chu_budget_tune")  # Freeze and Tune: rate, steps and schedule on validation
CHU_CELLS = {  # Chu et al. 2016, Table 3, verbatim; our near domain is "medium" distance, far is "high"
    ("near", 10): "Try Freeze or Tune", ("near", 50): "Tune", ("near", 300): "Tune",
    ("far", 10): "Try Freeze or Tune", ("far", 50): "Tune", ("far", 300): "Tune",
}


class NotRun(LookupError):
    """A setting the stores do not hold yet: its row reads "not run yet"."""


class Store:
    """One domain's rows, by experiment (``runs.experiment_runs``), with validation-chosen runs."""

    def __init__(self, domain: str, path: Path) -> None:
        self.domain, self.rows = domain, read_rows(path)
        if not self.rows:
            raise SystemExit(f"error: no results in {path}. Run `python -m course_utils sweep "
                             f"configs/{DOMAINS[domain]}.yaml --data ...` first, or pass --{domain} "
                             f"docs/findings_data/{DOMAINS[domain]}.jsonl.gz (the committed store).")
        dataset = self.rows[0]["run"]["dataset"]  # the sweep's --data
        config = runs.load_config(ROOT / "configs" / f"{DOMAINS[domain]}.yaml", data=dataset)
        ids = {row["id"] for row in self.rows}
        self.experiments = {name: [r for r in self.rows if r["id"] in {run.identity for run in members}]
                            for name, members in runs.experiment_runs(config).items()}
        self.missing = sum(run.identity not in ids for run in runs.expand(config))
        self.seeds = set(config.seeds)

    def rows_of(self, experiments: str | tuple[str, ...]) -> list[dict]:
        """The rows of one experiment, or of several (each row once)."""
        names = (experiments,) if isinstance(experiments, str) else experiments
        unique = {row["id"]: row for name in names for row in self.experiments.get(name, [])}
        return list(unique.values())

    def by_setting(self, experiments: str | tuple[str, ...], topology: str, **fixed: Any) -> dict[tuple, list[dict]]:
        """The seeds' rows of each (lr, steps, schedule) that ``topology`` was run at with every seed."""
        groups: dict[tuple, list[dict]] = {}
        for row in results.select(self.rows_of(experiments), topology=topology, **fixed):
            run = row["run"]
            groups.setdefault((run["lr"], run["steps"], (run.get("schedule") or {}).get("kind")), []).append(row)
        return {key: rows for key, rows in groups.items() if {r["run"]["seed"] for r in rows} == self.seeds}

    def pick(self, experiments: str | tuple[str, ...], topology: str, **fixed: Any) -> list[dict]:
        """The seeds' rows of the setting with the best mean validation accuracy over every rate, number of
        steps and schedule tried; a tie goes to the smaller rate, then to the shorter run."""
        groups = self.by_setting(experiments, topology, **fixed)
        if not groups:
            raise NotRun(f"{self.domain}: no {topology} runs in {experiments} {fixed}")
        val = {key: val_mean(group) for key, group in groups.items()}
        return groups[max(val, key=lambda key: (val[key], -(key[0] or 0), -(key[1] or 0)))]

    def compare(self, a: list[dict], b: list[dict], names: tuple[str, str]) -> evaluation.Comparison:
        return evaluation.compare(results.correct(a), results.correct(b), names=names)


def read_rows(path: Path) -> list[dict]:
    """A store's rows; a ``.jsonl.gz`` (the stores in docs/findings_data/) is read through a plain copy."""
    if path.suffix != ".gz":
        return results.load_results(path)
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / path.stem
        plain.write_bytes(gzip.decompress(path.read_bytes()))
        return results.load_results(plain)


def val_mean(rows: list[dict]) -> float:
    """Mean validation accuracy over the seeds' rows (what every choice on this page maximises)."""
    return float(np.mean([r.get("val_accuracy") or 0.0 for r in rows]))


def reproduce(domain: str, experiment: str | tuple[str, ...]) -> str:
    """Which sweep and experiment(s) a row comes from (the commands are at the top of the page)."""
    names = (experiment,) if isinstance(experiment, str) else experiment
    shown = ("chu", "chu_budget_*") if names == CHU else names
    return f"`{DOMAINS[domain]}.yaml`, " + " + ".join(f"`{name}`" for name in shown)


def describe(run: dict, steps: bool = False) -> str:
    """A run's rate, and with ``steps`` its number of steps and schedule: "lr 0.001, 1000 steps, cosine"."""
    if run["lr"] is None:
        return ""
    text = f"lr {run['lr']:g}"
    return text + (f", {run['steps']} steps, {(run.get('schedule') or {}).get('kind', 'constant')}" if steps else "")


def acc(rows: list[dict], steps: bool = False) -> str:
    """Mean test accuracy of the chosen rows and what was chosen on validation."""
    values = [r["accuracy"] if r["accuracy"] is not None else 0.0 for r in rows]
    chosen = describe(rows[0]["run"], steps)
    return f"{np.mean(values):.3f}" + (f" ({chosen})" if chosen else "")


def verdict(c: evaluation.Comparison) -> str:
    return f"{c.verdict} (diff {c.diff:+.3f}, 95% CI [{c.ci_low:+.3f}, {c.ci_high:+.3f}], p = {c.p_value:.2g})"


def chu_rows(stores: dict[str, Store]) -> list[list[str]]:
    """Freeze vs Tune in each of the six cells we can fill (near = medium distance, far = high)."""
    out = []
    for (domain, n), entry in CHU_CELLS.items():
        if domain not in stores:
            continue
        s = stores[domain]
        try:
            freeze, tune = s.pick(CHU, FREEZE, per_class=n), s.pick(CHU, TUNE, per_class=n)
        except NotRun:
            out.append([f"Chu Table 3, {domain} x {n}/class", f"**{entry}**", "not run yet", "", "", reproduce(domain, CHU)])
            continue
        c = s.compare(tune, freeze, ("Tune", "Freeze"))
        agrees = {"Tune": c.verdict == "Tune better", "Freeze": c.verdict != "Tune better"}.get(entry, True)
        out.append([f"Chu Table 3, {domain} x {n}/class", f"**{entry}**",
                    f"Freeze {acc(freeze, steps=True)}; Tune {acc(tune, steps=True)}", verdict(c),
                    "agrees" if agrees else ("not shown (within noise)" if not c.significant else "differs"),
                    reproduce(domain, CHU)])
    return out


class Budget(NamedTuple):
    """One side in one Chu cell: every (rate, steps, schedule) tried, the chosen run, and what 1000 steps added
    over 300 on validation at the chosen rate and schedule (None when one of the two was not run)."""

    groups: dict[tuple, list[dict]]
    chosen: dict
    gain: float | None


def budgets(stores: dict[str, Store]) -> dict[tuple[str, int, str], Budget | None]:
    """Each (domain, images per class, side) of the Chu grids: its ``Budget``, or None when not run yet."""
    out: dict[tuple[str, int, str], Budget | None] = {}
    for domain, s in stores.items():
        for n in SIZES:
            for name in (FREEZE, TUNE):
                groups = s.by_setting(CHU, name, per_class=n)
                if not groups:
                    out[domain, n, name] = None
                    continue
                run = s.pick(CHU, name, per_class=n)[0]["run"]
                short, long_ = (groups.get((run["lr"], steps, run["schedule"]["kind"])) for steps in (300, 1000))
                out[domain, n, name] = Budget(groups, run, val_mean(long_) - val_mean(short) if short and long_ else None)
    return out


def budget_rows(found: dict[tuple[str, int, str], Budget | None]) -> list[list[str]]:
    """Freeze and Tune in each Chu cell: validation accuracy at every (rate, steps, schedule) tried, the
    setting validation chose, and how much the longer run (1000 steps) added on validation at that rate and
    schedule: the convergence check, made without the test set. ``found``: ``budgets(stores)``."""
    out = []
    for (domain, n, name), b in found.items():
        where = [f"{domain} x {n}/class", name.split()[0]]
        if b is None:
            out.append(where + ["not run yet", "", "", reproduce(domain, CHU)])
            continue
        tried = "; ".join(f"{lr:g}/{steps}/{kind}: {val_mean(rows):.3f}"
                          for (lr, steps, kind), rows in sorted(b.groups.items(), key=lambda kv: (-kv[0][0], kv[0][1:])))
        out.append(where + [tried, describe(b.chosen, steps=True), "-" if b.gain is None else f"{b.gain:+.3f}",
                            reproduce(domain, CHU)])
    return out


def pair_rows(stores, label, experiment, a, b, sizes=SIZES, **fixed) -> list[list[str]]:
    """One row per domain and data size: ``a`` vs ``b``, each at its validation-chosen rate."""
    out = []
    for domain, s in stores.items():
        for n in sizes:
            try:
                ra, rb = s.pick(experiment, a, per_class=n, **fixed), s.pick(experiment, b, per_class=n, **fixed)
            except NotRun:
                out.append([f"{label}, {domain} x {n}/class", "not run yet", "", "", reproduce(domain, experiment)])
                continue
            steps = experiment == CHU  # the Chu grids also choose steps and schedule: say which
            out.append([f"{label}, {domain} x {n}/class", f"{a} {acc(ra, steps)}", f"{b} {acc(rb, steps)}",
                        verdict(s.compare(ra, rb, (a, b))), reproduce(domain, experiment)])
    return out


def budget_summary(budgets_: dict[tuple[str, int, str], Budget | None]) -> str:
    """How often validation chose the longest budget, and the most the longer run added on validation
    (``budgets_``: ``budgets(stores)``)."""
    found = {key: b for key, b in budgets_.items() if b is not None}
    gains = [(b.gain, f"{domain} x {n}/class, {name.split()[0]}") for (domain, n, name), b in found.items()
             if b.gain is not None]
    if not gains:
        return "No setting has both budgets yet."
    longest = sum(b.chosen["steps"] == max(steps for _, steps, _ in b.groups) for b in found.values())
    top, where = max(gains)
    return (f"Validation chose the longest budget (1000 steps) in {longest} of these {len(found)} settings. At the "
            f"chosen rate and schedule, 1000 steps added at most {top:+.3f} on validation over 300 ({where}); no "
            f"longer run was tried, so where 1000 steps won, convergence is shown only that far.")


def rate_rows(stores: dict[str, Store], topology: str = TUNE) -> list[list[str]]:
    """Each rate ``topology`` was tried at in the Chu grid: test and validation accuracy, and the choice."""
    out = []
    for domain, s in stores.items():
        for n in SIZES:
            rows = results.select(s.experiments.get("chu", []), topology=topology, per_class=n)
            if not rows:
                out.append([f"{domain} x {n}/class", "not run yet", "", reproduce(domain, "chu")])
                continue
            rates = sorted({r["run"]["lr"] for r in rows}, reverse=True)
            tried = "; ".join(
                f"lr {lr:g}: test {np.mean([r['accuracy'] or 0 for r in rows if r['run']['lr'] == lr]):.3f}, "
                f"validation {val_mean([r for r in rows if r['run']['lr'] == lr]):.3f}"
                for lr in rates)
            chosen = s.pick("chu", topology, per_class=n)[0]["run"]["lr"]
            out.append([f"{domain} x {n}/class", tried, f"{chosen:g}", reproduce(domain, "chu")])
    return out


def axis_rows(stores: dict[str, Store], experiment: str, axis: str, values: tuple, pairs) -> list[list[str]]:
    """One row per domain: test accuracy at each value of ``axis``, the value validation picks (ties: the
    smaller), and the noise rule on ``pairs(best)`` (Maybury's base-rate and iteration experiments)."""
    out = []
    for domain, s in stores.items():
        by = {v: results.select(s.experiments.get(experiment, []), **{axis: v}) for v in values}
        if not all(by.values()):
            out.append([domain, "not run yet", "", "", reproduce(domain, experiment)])
            continue
        tests = ", ".join(f"{v:g}: {np.mean([r['accuracy'] or 0 for r in by[v]]):.3f}" for v in values)
        best = max(values, key=lambda v: (val_mean(by[v]), -v))
        verdicts = [verdict(s.compare(by[a], by[b], (f"{a:g}", f"{b:g}"))) for a, b in pairs(best)]
        out.append([domain, tests, f"{best:g}", "; ".join(verdicts) or "-", reproduce(domain, experiment)])
    return out


def cost_rows(stores: dict[str, Store]) -> list[list[str]]:
    """What the Chu grids' runs cost here: mean seconds per run by topology and steps (2-core CPU, shared)."""
    out = []
    for domain, s in stores.items():
        rows = s.rows_of(CHU)
        for name in (FREEZE, LAST2, TUNE, SVM):
            mine = results.select(rows, topology=name)
            for steps in sorted({r["run"]["steps"] or 0 for r in mine}):
                these = [r for r in mine if (r["run"]["steps"] or 0) == steps]
                out.append([domain, name, str(steps or "-"), f"{np.mean([r['seconds'] for r in these]):.1f}",
                            ", ".join(sorted({r["path"] for r in these})), str(len(these))])
    return out


def measure(stores: dict[str, Store], cache: Path) -> dict:
    """Run the validation-chosen Freeze and Tune at 50 per class again (seed 0) in each domain, with their
    learning curves and, for Tune, the weight change per block; kept in ``cache`` (a few CPU-minutes)."""
    if cache.exists():
        return json.loads(cache.read_text(encoding="utf-8"))
    got: dict = {}
    for domain, s in stores.items():
        chosen = {name: min(s.pick(CHU, name, per_class=50), key=lambda r: r["run"]["seed"]) for name in (FREEZE, TUNE)}
        spec = runs.RunSpec.from_dict(chosen[TUNE]["run"])
        runner = Runner(spec.backbone, spec.weights, spec.image_size)
        got[domain] = {}
        for name, row in chosen.items():
            report = runner.run(runs.RunSpec.from_dict(row["run"]), history=25, measure=name == TUNE)
            got[domain][name] = {"history": report["history"], "weight_change": report.get("weight_change"),
                                 "accuracy": report["accuracy"], "stored_accuracy": row["accuracy"]}
    cache.write_text(json.dumps(got), encoding="utf-8")
    return got


def curves_figure(measured: dict, path: Path) -> str:
    """Validation accuracy and training loss against steps, Freeze and Tune, near and far: a PNG."""
    fig, axes = plt.subplots(1, 2 * len(measured), figsize=(12, 2.8))
    for i, (domain, runs_) in enumerate(measured.items()):
        for name, run in runs_.items():
            h = run["history"]
            axes[2 * i].plot(h["step"], h["val_accuracy"], marker=".", label=name.split()[0])
            axes[2 * i + 1].plot(h["step"], h["loss"], label=name.split()[0])
        axes[2 * i].set_title(f"{domain}: validation accuracy", fontsize=9)
        axes[2 * i + 1].set_title(f"{domain}: training loss", fontsize=9)
        axes[2 * i + 1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("step", fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    same = all(abs(r["accuracy"] - r["stored_accuracy"]) < 1e-9 for d in measured.values() for r in d.values())
    return (f"![Freeze and Tune learning curves, 50 per class, seed 0]({path.name})\n\n{flatness(measured)} The "
            f"reruns give the stored test accuracies {'exactly' if same else 'NOT exactly (look into it)'}.")


def flatness(measured: dict) -> str:
    """How much each rerun's validation accuracy still moved over the last third of its steps."""
    parts = []
    for domain, runs_ in measured.items():
        for name, run in runs_.items():
            steps, val = np.asarray(run["history"]["step"]), np.asarray(run["history"]["val_accuracy"])
            tail = val[steps >= steps[-1] * 2 / 3]
            parts.append(f"{domain} {name.split()[0]} ({steps[-1]} steps) {tail.min():.3f}-{tail.max():.3f}")
    return "Validation accuracy over the last third of each run: " + "; ".join(parts) + "."


def change_table(measured: dict) -> str:
    """Tune's relative weight change per block (``||after - before|| / ||before||``), near against far."""
    blocks = list(next(iter(measured.values()))[TUNE]["weight_change"])
    rows = [[block] + [f"{measured[d][TUNE]['weight_change'].get(block, float('nan')):.4f}" for d in measured]
            for block in blocks]
    return table(["block", *[f"Tune, {d}" for d in measured]], rows)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for domain, name in DOMAINS.items():
        parser.add_argument(f"--{domain}", type=Path, default=settings.cache_dir("results") / f"{name}.jsonl",
                            help=f"the results of configs/{name}.yaml (default: where its sweep writes them)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "findings.md")
    parser.add_argument("--measured", type=Path, default=settings.cache_dir("results") / "findings_measured.json",
                        help="the learning curves and weight changes of the reruns (made when missing)")
    args = parser.parse_args(argv)
    stores = {domain: Store(domain, getattr(args, domain)) for domain in DOMAINS}
    measured = measure(stores, args.measured)
    found = budgets(stores)  # the Chu grids' choices, shared by the budget table and its summary
    sections = {
        "chu": table(["cell", "Chu's entry", "ours (test, rate chosen on validation)", "noise rule", "holds?",
                      "reproduce"], chu_rows(stores)),
        "budget": table(["setting", "side", "validation accuracy by lr/steps/schedule (mean over seeds)",
                         "chosen on validation", "1000 vs 300 steps (validation)", "reproduce"], budget_rows(found)),
        "budget_summary": budget_summary(found),
        "tune_rates": table(["setting", "Tune at each rate (mean over seeds)", "chosen on validation", "reproduce"],
                            rate_rows(stores)),
        "all_vs_last2": table(["setting", "all layers", "last two blocks", "noise rule", "reproduce"],
                              pair_rows(stores, "Maybury", "chu", TUNE, LAST2)),
        "reinit": table(["setting", "re-initialised top 2", "copied top 2", "noise rule", "reproduce"],
                        pair_rows(stores, "Chu Fig. 1", "chu", "reinit2", LAST2)),
        "svm": table(["setting", "linear SVM", "last two blocks fine-tuned", "noise rule", "reproduce"],
                     pair_rows(stores, "F. Yu", "chu", SVM, LAST2)),
        "svm_tune": table(["setting", "linear SVM", "every layer fine-tuned (Tune)", "noise rule", "reproduce"],
                          pair_rows(stores, "F. Yu", CHU, SVM, TUNE)),
        "lr": table(["domain", "test accuracy by base rate", "best on validation", "best vs 0.0001", "reproduce"],
                    axis_rows(stores, "maybury_lr", "lr", (0.1, 0.01, 0.001, 0.0001),
                              lambda best: [(best, 0.0001)] if best != 0.0001 else [])),
        "iterations": table(["domain", "test accuracy by iterations", "best on validation",
                             "1000 vs 100; 3000 vs 1000", "reproduce"],
                            axis_rows(stores, "maybury_iterations", "steps", (100, 300, 1000, 3000),
                                      lambda best: [(1000, 100), (3000, 1000)])),
        "pittaras": "\n\n".join(table(["setting", "extension", "plain head", "noise rule", "reproduce"],
                                      pair_rows(stores, "Pittaras", "pittaras", ext, LAST2, sizes=(50,)))
                                for ext in ("FT3-ex1-64", "FT3-ex1-512", "FT3-ex2-64")),
        "curves": curves_figure(measured, args.out.with_name("findings_curves.png")),
        "weight_change": change_table(measured),
        "cost": table(["domain", "topology", "steps", "seconds per run", "path", "runs"], cost_rows(stores)),
        "missing": ", ".join(f"{d}: {s.missing}" for d, s in stores.items()),
    }
    template = (ROOT / "tools" / "findings_template.md").read_text(encoding="utf-8")
    args.out.write_text(template.format(**sections), encoding="utf-8")
    print(f"wrote {args.out} (runs missing from the stores: {sections['missing']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
