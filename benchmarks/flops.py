"""How much work a model is, and how fast this machine could do it at best.

``model_flops`` counts the floating-point operations of one forward pass of the graph that
ships (model + upsampling to the input size) with ``torch.utils.flop_counter``: convolutions and
matrix products, two FLOPs per multiply-add; element-wise ops (BN in eval, ReLU, the bilinear
upsample) are not counted, as is usual. ``matmul_peak_gflops`` times large float32 ``torch.mm``
calls on every CPU and keeps the best, a practical peak for dense float32 work on this machine. ``achieved_gflops`` divides a row's FLOPs by its median latency: the share of that peak
a backend reaches tells whether it is compute-bound or losing time elsewhere.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import nn


def model_flops(graph: nn.Module, input_size: tuple[int, int], channels: int = 3) -> int:
    """FLOPs of one forward pass of ``graph`` in eval mode on one float (1, channels, H, W) image.

    Runs on the graph's device; every module's train / eval mode is restored afterwards.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    param = next(graph.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    modes = [(module, module.training) for module in graph.modules()]
    graph.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            graph(torch.zeros(1, channels, *input_size, device=device))
    finally:
        for module, training in modes:
            module.training = training
    return int(counter.get_total_flops())


def matmul_peak_gflops(size: int = 1024, repeats: int = 5, budget_s: float = 2.0,
                       threads: int | None = None) -> float:
    """Best float32 matrix-product rate of ``size`` x ``size`` matrices on the CPU, in GFLOP/s.

    ``torch.mm`` on ``threads`` threads (default: every CPU, the machine's peak, whatever
    torch's own setting; it is restored afterwards); numpy's BLAS in a runtime-only install.
    One untimed product first (thread pool start-up, first-touch page faults), then up to
    ``repeats`` timed ones, stopping early when ``budget_s`` is spent.
    """
    import os

    try:
        import torch
    except ImportError:
        a = np.random.default_rng(0).standard_normal((size, size), np.float32)
        product = lambda: a @ a  # noqa: E731
        restore = None
    else:
        before = torch.get_num_threads()
        torch.set_num_threads(threads or os.cpu_count() or 1)
        t = torch.randn(size, size)
        out = torch.empty(size, size)
        product = lambda: torch.mm(t, t, out=out)  # noqa: E731
        restore = lambda: torch.set_num_threads(before)  # noqa: E731
    try:
        product()
        best = float("inf")
        start = time.perf_counter()
        for _ in range(repeats):
            tic = time.perf_counter()
            product()
            best = min(best, time.perf_counter() - tic)
            if time.perf_counter() - start > budget_s:
                break
    finally:
        if restore is not None:
            restore()
    return 2.0 * size**3 / best / 1e9


def achieved_gflops(flops: int | None, p50_ms: float | None) -> float | None:
    """GFLOP/s reached at a median latency of ``p50_ms`` per image (None when either is unknown)."""
    if not flops or not p50_ms:
        return None
    return flops / (p50_ms / 1000.0) / 1e9


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what ``platform`` says."""
    import platform

    try:
        for line in open("/proc/cpuinfo"):
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(matmul_size: int = 1024) -> dict[str, Any]:
    """What the numbers were measured on, with the float32 matmul peak of this CPU."""
    import os
    import platform

    try:
        import torch
    except ImportError:  # a runtime-only install
        torch = None
    cuda = torch is not None and torch.cuda.is_available()
    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(),
        "cpu": cpu_name(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__ if torch else None,
        "torch_threads": torch.get_num_threads() if torch else None,
        "onnxruntime": None, "ort_providers": [],
        "cuda_devices": torch.cuda.device_count() if cuda else 0,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "tensorrt": None, "matmul_size": matmul_size,
        # other processes on the CPUs slow every row, torch's OpenMP threads most of all
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    try:
        import onnxruntime as ort

        info["onnxruntime"], info["ort_providers"] = ort.__version__, ort.get_available_providers()
    except ImportError:
        pass
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except ImportError:
        pass
    info["matmul_threads"] = os.cpu_count() or 1
    info["matmul_gflops"] = matmul_peak_gflops(matmul_size, threads=info["matmul_threads"])
    return info
