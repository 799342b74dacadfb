"""The source-to-target translator G of the cross-domain mixture (METHOD stage 0).

``fda``: Fourier domain adaptation with a random target image (training-free, the default);
``learned``: a frozen translator trained by ``diga train translator``;
``none``: the ablation, an independent photometric augmentation of the source.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diga.config import Config
from diga.errors import UserError
from diga.method import PhotometricAugment, fda, low_frequency_band

Translator = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def build_translator(cfg: Config, device: torch.device) -> Translator:
    """G(x_s, x_t) -> target-looking x_s in [0, 1]; x_t is a batch of target images (fda)."""
    kind = cfg.warmup.translator
    if kind == "fda":
        band = cfg.warmup.fda_band
        h, w = cfg.train.crop
        if not low_frequency_band(h, w, band).any():  # FDA would return the source unchanged
            raise UserError(
                f"warmup.fda_band={band} selects no frequency at crop {h}x{w} "
                f"(band = floor({min(h, w)} * {band}) = 0), so the cross-domain mixture would "
                "not translate anything",
                f"raise it to at least {1.5 / min(h, w):.2g}; {5.5 / min(h, w):.2g} keeps the "
                "paper's 5-frequency band (0.01 at 512 rows)")
        return lambda x_s, x_t: fda(x_s, x_t, band)
    if kind == "none":
        augment = PhotometricAugment.from_config(cfg.method.augment).to(device)
        beta = cfg.warmup.beta
        return lambda x_s, x_t: augment(x_s, beta)
    if cfg.warmup.translator_path is None:
        raise UserError("warmup.translator=learned needs the trained translator",
                        "train it with 'diga train translator' and set warmup.translator_path")
    from diga.translator import load_translator

    generator = load_translator(cfg.warmup.translator_path, device)
    return lambda x_s, x_t: generator(x_s)
