"""Speed options of the training loop: mixed precision, channels_last, torch.compile (``run.*``).

All off by default; off, each is the identity (no cast, no copy), so default runs are
unchanged bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diga.config import RunConfig
from diga.models.registry import SegOutput

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """Runs a model's forward pass under autocast (and channels_last) and returns float32
    outputs, so that losses, centroids and pseudo-label selection stay in full precision."""

    device_type: str
    dtype: torch.dtype | None  # None: float32 throughout
    channels_last: bool = False

    @classmethod
    def from_config(cls, run: RunConfig, device: torch.device) -> Precision:
        return cls(device.type, AMP_DTYPES[run.amp], run.channels_last)

    def __call__(self, model: nn.Module, x: torch.Tensor) -> SegOutput:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device_type, dtype=self.dtype or torch.float32,
                            enabled=self.dtype is not None):
            out = model(x)
        return SegOutput(out.logits.float(), out.features.float(),
                         out.aux.float() if out.aux is not None else None)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler for fp16 (its gradients underflow without one); disabled otherwise,
        where ``scale`` returns the loss as is and ``step`` is ``optimizer.step()``."""
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype == torch.float16)


def to_memory_format(model: nn.Module, run: RunConfig) -> nn.Module:
    """NHWC weights for ``run.channels_last`` (faster convolutions on tensor cores)."""
    return model.to(memory_format=torch.channels_last) if run.channels_last else model


def maybe_compile(model: nn.Module, run: RunConfig) -> nn.Module:
    """``torch.compile(model)`` for ``run.compile``; the compiled module shares the weights."""
    return torch.compile(model) if run.compile else model


def tune_backends(device: torch.device) -> None:
    """cuDNN autotuning on a GPU: training crops have one size, so the fastest convolution
    algorithms are found once (in the first steps) and reused."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
