"""How long a checkpoint takes to write durably: ``save_checkpoint`` (safetensors student and
teacher, the optimiser state, meta.json; every file fsynced and read back, the swap, the
folder fsynced) for a model of the registry, with SGD momentum as the paper's optimiser holds.

    python -m diga.benchmarks.checkpoint_io --model deeplabv2_resnet101 --out /tmp/ckpt-bench
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from diga.checkpoint import save_checkpoint
from diga.models import build_model


def measure(model_name: str, out: Path, repeats: int = 3) -> dict[str, float]:
    model = build_model(model_name, 19)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    for p in model.parameters():  # momentum buffers exist after a first step
        p.grad = torch.zeros_like(p)
    optimizer.step()
    state = {"step": 1, "optimizer": optimizer.state_dict()}
    weights = model.state_dict()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        folder = save_checkpoint(out / "checkpoints" / "last", model=weights, teacher=weights,
                                 state=state, meta={"stage": "bench", "step": 1})
        times.append(time.perf_counter() - tic)
    size = sum(f.stat().st_size for f in folder.iterdir())
    return {"seconds_median": statistics.median(times), "seconds_max": max(times),
            "megabytes": size / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deeplabv2_resnet101")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="diga-ckpt-"))
    result = measure(args.model, out, args.repeats)
    print(f"{args.model}: {result['megabytes']:.0f} MB checkpoint, written durably in "
          f"{result['seconds_median']:.2f} s (median of {args.repeats}, max "
          f"{result['seconds_max']:.2f} s) to {out}")


if __name__ == "__main__":
    main()
