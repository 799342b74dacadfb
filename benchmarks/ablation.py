"""Variants of the evidence table side by side: each a list of overrides, over several seeds.

Each variant is a whole evidence table (``diga.benchmarks.evidence``) in ``OUT/<variant>``; the
first variant's finished runs before self-training are shared with the others where their
config is the same (``evidence --share``), so a variant of self-training keys trains only its
self-training rounds. (variant, seed) pairs run as parallel single-threaded processes
(``--jobs``, ``--threads``: the numbers are those of one thread, as docs/results.md's). Run:

    python -m diga.benchmarks.ablation selection-inputs [CONFIG] [key=value ...] \\
        --seeds 0 1 2 --jobs 2 --threads 1 --out runs/ablation-selection

The table: warm-up, rounds 1 and 2, gap closure, and one self-training round with the
consensus and with the 0.9 threshold (mIoU, pixels kept, accuracy of the kept pixels).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from diga.benchmarks.evidence import summarize
from diga.io import atomic_write_json, atomic_write_text

# What diga computed before the reference's selection inputs (issue 27), as overrides.
BEFORE_REFERENCE_INPUTS = (
    "selftrain.teacher_target_pass=joint",
    "selftrain.selection_features=before_dropout",
    "selftrain.centroid_update=pooled",
    "centroids.weighting=pixel",
    "method.mix_draw_ignore=false",
)


def _with(*changes: str) -> tuple[str, ...]:
    """BEFORE_REFERENCE_INPUTS with ``changes`` replacing the values of the same keys."""
    keys = {c.split("=")[0] for c in changes}
    return (*(o for o in BEFORE_REFERENCE_INPUTS if o.split("=")[0] not in keys), *changes)


# name -> (label, overrides); the first variant is the one the others share runs with.
VARIANT_SETS: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "selection-inputs": {
        "before": ("before: joint teacher pass, features before dropout, pooled update, "
                   "pixel-weighted centroids", BEFORE_REFERENCE_INPUTS),
        "target-pass": ("1a: teacher on the target batch alone",
                        _with("selftrain.teacher_target_pass=separate")),
        "after-dropout": ("1b: features after the dropout",
                          _with("selftrain.selection_features=after_dropout")),
        "features": ("1: both (the reference's features)",
                     _with("selftrain.teacher_target_pass=separate",
                           "selftrain.selection_features=after_dropout")),
        "per-image-update": ("2: one centroid update per (image, class)",
                             _with("selftrain.centroid_update=per_image")),
        "image-weighted": ("3: image-weighted offline centroids",
                           _with("centroids.weighting=image")),
        "draw-ignore": ("4: IGNORE in the class-mix draw", _with("method.mix_draw_ignore=true")),
        "reference": ("all of 1-4 (the reference)",
                      _with("selftrain.teacher_target_pass=separate",
                            "selftrain.selection_features=after_dropout",
                            "selftrain.centroid_update=per_image", "centroids.weighting=image",
                            "method.mix_draw_ignore=true")),
    },
}


def run_jobs(variants: dict[str, tuple[str, tuple[str, ...]]], config: list[str],
             seeds: list[int], out: Path, jobs: int, threads: int) -> None:
    """Every (variant, seed) evidence table; the first variant's seeds are queued first."""
    first = next(iter(variants))
    out.mkdir(parents=True, exist_ok=True)

    def one(job: tuple[str, int]) -> int:
        name, seed = job
        cmd = [sys.executable, "-m", "diga.benchmarks.evidence", *config, *variants[name][1],
               "--seeds", str(seed), "--out", str(out / name), "--threads", str(threads),
               "--selections", "consensus", "threshold"]
        if name != first:
            cmd += ["--share", str(out / first)]
        (out / name).mkdir(exist_ok=True)
        with (out / name / f"seed{seed}.log").open("w") as log:
            return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode

    queue = [(name, seed) for name in variants for seed in seeds]
    with ThreadPoolExecutor(jobs) as pool:
        codes = dict(zip(queue, pool.map(one, queue), strict=True))
    failed = [f"{name} seed {seed}" for (name, seed), code in codes.items() if code != 0]
    if failed:
        raise SystemExit(f"ablation: {', '.join(failed)} failed; see {out}/<variant>/seed<N>.log")


def compare(variants: dict[str, tuple[str, tuple[str, ...]]], seeds: list[int],
            out: Path) -> tuple[dict[str, Any], str]:
    """Each variant's evidence summary and the Markdown table comparing them."""
    summaries = {}
    for name in variants:
        per_seed = [json.loads((out / name / f"seed{s}.json").read_text()) for s in seeds]
        summaries[name] = {"seeds": per_seed, "summary": summarize(per_seed)}
    def pm(stats: dict[str, Any], key: str, scale: float = 1.0) -> str:
        """mean ± std of ``stats[key]``; "-" where no seed logged it (e.g. nothing kept)."""
        if key not in stats:
            return "-"
        unit = " %" if scale == 100 else ""
        return f"{stats[key]['mean'] * scale:.1f} ± {stats[key]['std'] * scale:.1f}{unit}"

    lines = ["| variant | warm-up | round 1 | round 2 | gap closure | consensus, 1 round: "
             "kept / accuracy | threshold 0.9, 1 round | its kept / accuracy | consensus - "
             "threshold, per seed |", "|---|---|---|---|---|---|---|---|---|"]
    for name, (label, _) in variants.items():
        sm, per_seed = summaries[name]["summary"], summaries[name]["seeds"]
        m, cons, thr = sm["miou"], sm["selection"]["consensus"], sm["selection"]["threshold"]
        diff = " / ".join(f"{s['selection']['consensus']['miou'] - s['selection']['threshold']['miou']:+.1f}"
                          for s in per_seed)
        lines.append(
            f"| {label} | {pm(m, 'warm-up')} | {pm(m, 'self-training round 1')} | "
            f"{pm(m, 'self-training round 2')} | {pm(sm, 'gap_closure', 100)} | "
            f"{pm(cons, 'kept', 100)} / {pm(cons, 'pl_acc_kept', 100)} | "
            f"{pm(thr, 'miou')} | {pm(thr, 'kept', 100)} / {pm(thr, 'pl_acc_kept', 100)} | "
            f"{diff} |")
    return summaries, "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", choices=sorted(VARIANT_SETS), help="the set of variants")
    parser.add_argument("config", nargs="*", help="CONFIG (default demo) then key=value overrides")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--jobs", type=int, default=2, help="(variant, seed) runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--only", nargs="+", default=None,
                        help="run and compare these variants only (the first one is shared)")
    args = parser.parse_args(argv)
    variants = VARIANT_SETS[args.variants]
    if args.only:
        unknown = set(args.only) - set(variants)
        if unknown:
            parser.error(f"unknown variant(s) {sorted(unknown)}; choose from {list(variants)}")
        variants = {k: v for k, v in variants.items() if k in args.only}
    run_jobs(variants, args.config, args.seeds, args.out, args.jobs, args.threads)
    summaries, table = compare(variants, args.seeds, args.out)
    atomic_write_json(args.out / "ablation.json", summaries)
    atomic_write_text(args.out / "ablation.md", table)
    print(table)


if __name__ == "__main__":
    main()
