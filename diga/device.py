"""Device choice: ``run.device=auto|cpu|cuda``."""

from __future__ import annotations

import torch

from diga.errors import UserError


def select_device(name: str = "auto") -> torch.device:
    """CUDA when asked or available; ``cuda`` without a GPU is a user error."""
    if name == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if name == "cuda" and not available:
        raise UserError("run.device=cuda but no CUDA GPU is available",
                        "use run.device=auto or run.device=cpu")
    return torch.device("cuda" if available else "cpu")
