"""Backbones from the well-kept libraries, with their ImageNet weights through their own caches.

``timm`` has HRNet (``hrnet_w18`` ... ``hrnet_w48``, weights on the Hugging Face hub under
``timm/``); ``segmentation-models-pytorch`` has the SegFormer encoder (``mit_b0`` ...
``mit_b5``, its ImageNet weights on the hub too). Both download to their library's cache at
first use (``HF_HOME``); a machine without network gets one line saying how to give a local
file (``model.pretrained=PATH``) or to train from scratch (``model.pretrained=null``).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from torch import nn

from diga.errors import UserError, import_optional

INSTALL = "pip install 'diga[models]' (timm, segmentation-models-pytorch)"


def _offline(what: str, exc: Exception) -> UserError:
    from huggingface_hub import constants

    return UserError(f"the ImageNet weights of {what} are not in the Hugging Face cache "
                     f"({constants.HF_HUB_CACHE}) and the hub cannot be reached "
                     f"({type(exc).__name__})",
                     "give a local weights file with model.pretrained=/path/to/file, or train "
                     "from scratch with model.pretrained=null")


@contextlib.contextmanager
def hub_or_cache(timeout_s: float = 3.0) -> Iterator[None]:
    """Downloads from the Hugging Face hub when it answers within ``timeout_s``; otherwise (or
    with ``HF_HUB_OFFLINE=1``) only its cache is read, so an unreachable hub fails at once with
    the libraries' "not in the cache" error instead of after a minute of retries."""
    from huggingface_hub import constants

    reachable = not constants.HF_HUB_OFFLINE
    if reachable:
        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
        try:
            socket.create_connection((host, 443), timeout=timeout_s).close()
        except OSError:
            reachable = False
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = not reachable
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def is_full_model_file(path: Path) -> bool:
    """Whether a weights file holds a whole diga model (``backbone.`` / ``head.`` keys) rather
    than a backbone's weights."""
    from diga.models.weights import read_weights

    return any(k.removeprefix("module.").startswith(("backbone.", "head."))
               for k in read_weights(path))


def library_model(backbone: Callable[[str | None], nn.Module],
                  head: Callable[[nn.Module], nn.Module], pretrained: str | None,
                  freeze_bn: bool, output_stride: int) -> Any:
    """A ``SegmentationModel`` of a library backbone (``backbone(weights)``) and our head
    (``head(backbone)``). ``pretrained``: None, ``"imagenet"`` (the library's), a backbone
    file in the library's layout (the backbone loads it), or a whole diga model of this
    architecture (loaded into the assembled model)."""
    from diga.models.deeplabv2 import load_pretrained
    from diga.models.registry import SegmentationModel

    whole = pretrained not in (None, "imagenet") and is_full_model_file(Path(pretrained))
    body = backbone(None if whole else pretrained)
    model = SegmentationModel(body, head(body), freeze_bn)
    model.output_stride = output_stride
    if whole:
        load_pretrained(model, Path(pretrained))  # type: ignore[arg-type]
    return model


def timm_features(name: str, pretrained: str | None, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, features_only=True, ...)``; ``pretrained``: None (random),
    ``"imagenet"`` (timm's weights, downloaded to its cache) or a file of the backbone's
    weights in timm's layout (the classification model's; its classifier's keys are left out)."""
    timm = import_optional("timm", f"the {name} backbone needs timm, which is not installed",
                           INSTALL)
    options: dict[str, Any] = {"features_only": True, **kwargs}
    if pretrained != "imagenet":
        model = timm.create_model(name, pretrained=False, **options)
        if pretrained is not None:
            load_backbone_file(model, Path(pretrained), f"timm's {name}")
        return model
    try:
        with hub_or_cache():
            return timm.create_model(name, pretrained=True, **options)
    except (OSError, RuntimeError, ValueError) as exc:  # offline: huggingface_hub's errors
        raise _offline(f"timm's {name}", exc) from None


def load_backbone_file(model: nn.Module, path: Path, what: str) -> None:
    """A backbone's weights from a file: every tensor the backbone has must be there (keys of
    a larger model, e.g. its classifier, are left out); one line where they are not."""
    from diga.models.weights import read_weights

    if not path.is_file():
        raise UserError(f"weights file not found: {path} (model.pretrained)", "check the path")
    state = {k.removeprefix("module."): v for k, v in read_weights(path).items()}
    missing, _ = nn.Module.load_state_dict(model, state, strict=False)  # smp overrides it
    if missing:
        raise UserError(f"weights file {path} does not fit {what} (missing '{missing[0]}'; "
                        f"{len(missing)} of {len(model.state_dict())} tensors missing)",
                        f"give {what}'s weights, or a whole diga model of this architecture")


def smp_encoder(name: str, pretrained: str | None) -> nn.Module:
    """``segmentation_models_pytorch.encoders.get_encoder(name)`` with ImageNet weights
    (``"imagenet"``, downloaded to the hub cache), none, or a file of the encoder's weights."""
    encoders = import_optional("segmentation_models_pytorch.encoders", f"the {name} encoder "
                               "needs segmentation-models-pytorch, which is not installed",
                               INSTALL)
    if pretrained != "imagenet":
        encoder = encoders.get_encoder(name, weights=None)
        if pretrained is not None:
            load_backbone_file(encoder, Path(pretrained), f"segmentation-models-pytorch's {name}")
        return encoder
    try:
        with hub_or_cache():
            return encoders.get_encoder(name, weights="imagenet")
    except (OSError, RuntimeError, ValueError) as exc:
        raise _offline(f"segmentation-models-pytorch's {name}", exc) from None
