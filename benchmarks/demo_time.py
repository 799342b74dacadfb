"""Wall time of ``diga demo`` (full or ``--quick``) against its goal, as a user runs it.

Runs the CLI in a fresh process (imports, data generation, training, export, bench and report
included) into a temporary folder, then prints the total and the time of each step from the
demo's own ``demo.json``. Goals on the 2-core reference machine: full <= 600 s, quick <= 120 s.
Timings are only meaningful on an otherwise idle machine; the load average is recorded.

    python -m diga.benchmarks.demo_time [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_S = {"full": 600.0, "quick": 120.0}


def time_demo(quick: bool, work: Path) -> dict:
    out = work / "demo"
    cmd = [sys.executable, "-m", "diga.cli.app", "demo", "--out", str(out),
           *(["--quick"] if quick else [])]
    load_before = os.getloadavg()[0]
    tic = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - tic
    if proc.returncode != 0:
        raise SystemExit(f"diga demo failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}"
                         f"{proc.stderr[-2000:]}")
    demo = json.loads((out / "demo.json").read_text())
    mode = "quick" if quick else "full"
    return {"mode": mode, "wall_s": wall, "goal_s": GOAL_S[mode], "met": wall <= GOAL_S[mode],
            "steps_s": demo["seconds"], "miou": demo["miou"], "cpus": os.cpu_count(),
            "load_average_before": load_before, "load_average_after": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = time_demo(args.quick, Path(tmp))
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in result["steps_s"].items())
    verdict = "met" if result["met"] else "MISSED"
    print(f"diga demo{' --quick' if args.quick else ''}: {result['wall_s']:.0f} s "
          f"(goal {result['goal_s']:.0f} s: {verdict}); {steps}; load average "
          f"{result['load_average_before']:.2f} before, {result['load_average_after']:.2f} after")
    print("target-val mIoU: " + ", ".join(f"{k} {v:.2f}" for k, v in result["miou"].items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
