"""The exponential-moving-average teacher."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / DataParallel and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            return model


class EMATeacher:
    """Teacher ``T`` kept as an EMA of the student: ``T <- a*T + (1-a)*S``.

    ``a = min(1 - 1/(step+1), max_momentum)``, so step 0 copies the student; a teacher carried
    over from an earlier stage goes on counting from the steps it has averaged. Buffers (BN
    running statistics, counters) are copied, not averaged. The teacher never takes
    gradients; :meth:`train_mode` sets its mode for a training step.
    """

    def __init__(self, student: nn.Module, max_momentum: float = 0.999) -> None:
        if not 0.0 <= max_momentum < 1.0:
            raise ValueError(f"max_momentum must be in [0, 1), got {max_momentum}")
        self.max_momentum = max_momentum
        self.model: nn.Module = copy.deepcopy(unwrap_model(student))
        for p in self.model.parameters():
            p.requires_grad_(False)

    def momentum(self, step: int) -> float:
        """The EMA coefficient ``a`` at a global step (from 0)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return min(1.0 - 1.0 / (step + 1), self.max_momentum)

    def train_mode(self, dropout: bool = True, bn: str = "student") -> EMATeacher:
        """The teacher's mode in a training step: the student's (``train()``, which keeps BN
        frozen in models built with ``freeze_bn``), then dropout off unless ``dropout``, and
        BatchNorm on its running statistics where ``bn="eval"`` (``"student"``: as the student).
        The defaults are the reference's (``method.teacher_dropout``, ``method.teacher_bn``).
        """
        if bn not in ("student", "eval"):
            raise ValueError(f"bn must be 'student' or 'eval', got {bn!r}")
        self.model.train()
        for module in self.model.modules():
            if ((not dropout and isinstance(module, nn.modules.dropout._DropoutNd))
                    or (bn == "eval" and isinstance(module, nn.modules.batchnorm._BatchNorm))):
                module.eval()
        return self

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> None:
        """One EMA step towards ``student`` (optionally wrapped in DDP or compiled)."""
        a = self.momentum(step)
        student = unwrap_model(student)
        t_params = list(self.model.parameters())
        s_params = [p.detach() for p in student.parameters()]
        t_bufs = list(self.model.buffers())
        s_bufs = list(student.buffers())
        if len(t_params) != len(s_params) or len(t_bufs) != len(s_bufs):
            raise ValueError(
                "the student's parameters/buffers do not match the teacher's; "
                "was the teacher built from a different architecture?"
            )
        torch._foreach_mul_(t_params, a)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - a)
        if t_bufs:
            torch._foreach_copy_(t_bufs, s_bufs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def to(self, *args: Any, **kwargs: Any) -> EMATeacher:
        self.model.to(*args, **kwargs)
        return self

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> Any:
        return self.model.load_state_dict(state_dict, strict=strict)
