"""Counting host syncs: the places where Python waits for a tensor's value.

On a CUDA device ``torch.cuda.set_sync_debug_mode("warn")`` makes PyTorch warn at every
synchronising operation (a value read, a blocking copy, ``torch.tensor(..., device="cuda")``),
and each warning is counted. On the CPU there is no device to wait for, so every read of a
tensor by Python is counted instead: ``item``, ``tolist``, ``cpu``, ``numpy``, ``__int__``,
``__float__``, ``__bool__``, ``__index__``, from our code or any library's. That counts host
tensors a GPU would never wait for, and misses host-to-device copies, which the CUDA count sees.
Both count the main process only (DataLoader workers are other processes).
"""

from __future__ import annotations

import collections
import contextlib
import traceback
import warnings
from collections.abc import Iterator

import torch

HOST_READS = ("item", "tolist", "cpu", "numpy", "__int__", "__float__", "__bool__", "__index__")


@contextlib.contextmanager
def count_host_syncs(device: torch.device | str = "cpu") -> Iterator[collections.Counter]:
    """Count host syncs while active; the counter maps ``"what at file:line"`` to a count."""
    if torch.device(device).type == "cuda":
        with _cuda_syncs() as counter:
            yield counter
    else:
        with _host_reads() as counter:
            yield counter


@contextlib.contextmanager
def _host_reads() -> Iterator[collections.Counter]:
    counter: collections.Counter = collections.Counter()
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counting(name, real):
        def read(self, *args, **kwargs):
            frame = traceback.extract_stack(limit=3)[0]  # the caller of the read
            counter[f"{name} at {frame.filename}:{frame.lineno}"] += 1
            return real(self, *args, **kwargs)
        return read

    try:
        for name, real in originals.items():
            setattr(torch.Tensor, name, counting(name, real))
        yield counter
    finally:
        for name, real in originals.items():
            setattr(torch.Tensor, name, real)


@contextlib.contextmanager
def _cuda_syncs() -> Iterator[collections.Counter]:
    counter: collections.Counter = collections.Counter()
    before = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield counter
        finally:
            torch.cuda.set_sync_debug_mode(before)
            for w in caught:
                if "synchroniz" in str(w.message):
                    counter[f"sync at {w.filename}:{w.lineno}"] += 1
