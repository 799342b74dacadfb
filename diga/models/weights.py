"""Reading weights files without unpickling code: safetensors, or torch files with
``weights_only=True``. Used for checkpoints, pretrained backbones and translator weights."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from diga.errors import UserError


def read_weights(path: Path, damaged_hint: str = "the file is cut short or is not a weights "
                 "file: download or copy it again") -> dict[str, torch.Tensor]:
    """Read a weights file: safetensors, or a torch file with ``weights_only=True``.
    ``damaged_hint``: what fixes a file that does not read (a checkpoint's differs)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}", "check the path")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, OSError, ValueError, EOFError) as exc:
        first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise UserError(f"cannot read weights file {path}: {first}", damaged_hint) from None
    except Exception as exc:  # e.g. pickle.UnpicklingError for files that need code to load
        raise UserError(f"cannot read weights file {path} safely ({type(exc).__name__})",
                        "give a .safetensors file or a plain state_dict saved with torch.save") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"weights file {path} holds no state_dict of tensors",
                        "save weights with safetensors or torch.save(model.state_dict())")
    return state
