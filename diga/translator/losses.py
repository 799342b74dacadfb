"""The translator's losses: LSGAN, cycle, identity, perceptual and semantic-edge terms.

All images are float (B, 3, H, W) in [0, 1]. With x_s, y_s a labelled source batch, x_t a
target batch, G: S->T, F: T->S and discriminators D_T (target vs G(x_s)), D_S (source vs
F(x_t)), the generators minimise

    lambda_adv  * [ (D_T(G(x_s)) - 1)^2 + (D_S(F(x_t)) - 1)^2 ]       (means over patches)
  + lambda_cycle * [ |F(G(x_s)) - x_s| + |G(F(x_t)) - x_t| ]          (means over pixels)
  + lambda_identity * [ |G(x_t) - x_t| + |F(x_s) - x_s| ]
  + lambda_perceptual * [ P(G(x_s), x_s) + P(F(x_t), x_t) ]
  + lambda_edge * E(G(x_s), x_s, y_s)

and the discriminators minimise 0.5 * [ (D(real) - 1)^2 + D(fake)^2 ] each.
"""

from __future__ import annotations

from pathlib import Path

import kornia
import torch
import torch.nn.functional as F
from torch import nn

from diga.config import IMAGENET_MEAN, IMAGENET_STD
from diga.errors import UserError
from diga.models.weights import read_weights

# ---------------------------------------------------------------- adversarial (LSGAN)


def lsgan_loss(scores: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss: mean((scores - 1)^2) for ``real``, mean(scores^2) otherwise."""
    return (scores - float(real)).pow(2).mean()


def discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """0.5 * [LSGAN(real, 1) + LSGAN(fake, 0)]: halved so D learns slower than the generators."""
    return 0.5 * (lsgan_loss(real_scores, True) + lsgan_loss(fake_scores, False))


def generator_adversarial_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """LSGAN loss of the generator: its translations should score as real."""
    return lsgan_loss(fake_scores, True)


# ---------------------------------------------------------------- reconstruction


def cycle_consistency_loss(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """mean |F(G(x)) - x|: a round trip through both domains returns the image."""
    return (reconstructed - original).abs().mean()


def identity_loss(mapped: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """mean |G(x_t) - x_t|: an image already in the output domain should pass unchanged."""
    return (mapped - original).abs().mean()


# ---------------------------------------------------------------- semantic edges


def semantic_boundaries(labels: torch.Tensor) -> torch.Tensor:
    """Pixels on a boundary of the label map: bool (B, 1, H, W) from labels (B, H, W).

    A pixel is on a boundary when its label differs from its right or lower neighbour; both
    pixels of such a pair are marked, so a boundary is two pixels wide. Any change of label
    counts, to and from the ignore id too (void areas and padding are real image edges).
    """
    horizontal = labels[:, :, 1:] != labels[:, :, :-1]  # (B, H, W-1)
    vertical = labels[:, 1:, :] != labels[:, :-1, :]  # (B, H-1, W)
    edges = torch.zeros_like(labels, dtype=torch.bool)
    edges[:, :, 1:] |= horizontal
    edges[:, :, :-1] |= horizontal
    edges[:, 1:, :] |= vertical
    edges[:, :-1, :] |= vertical
    return edges[:, None]


def luminance_gradients(images: torch.Tensor) -> torch.Tensor:
    """Sobel gradients (normalised kernel) of the luminance: (B, 3, H, W) -> (B, 1, 2, H, W)."""
    gray = kornia.color.rgb_to_grayscale(images)  # (B, 1, H, W)
    return kornia.filters.spatial_gradient(gray, mode="sobel", normalized=True)


def semantic_edge_loss(translated: torch.Tensor, source: torch.Tensor,
                       labels: torch.Tensor) -> torch.Tensor:
    """Keep the source's object boundaries in the translation.

    With E the boundary pixels of the source label map and g the Sobel gradient of the
    luminance (d/dx and d/dy),

        E(G(x_s), x_s, y_s) = sum_{p in E} |g(G(x_s))_p - g(x_s)_p|_1 / (2 |E|)

    the mean L1 gradient difference over boundary pixels and the two directions. Gradients
    of the luminance, not colours: the translation may recolour a class, but the step in
    brightness that separates two objects must stay, so objects keep their outlines and the
    source labels stay valid for the translated image. No boundary: 0.
    """
    edges = semantic_boundaries(labels).unsqueeze(2)  # (B, 1, 1, H, W)
    diff = (luminance_gradients(translated) - luminance_gradients(source).detach()).abs()
    total = (diff * edges).sum()  # diff: (B, 1, 2, H, W)
    return total / (2 * edges.sum()).clamp(min=1)


# ---------------------------------------------------------------- perceptual (VGG)

# torchvision's VGG layer lists up to the 4th max-pool (relu4_3 / relu4_4); indices of the layers
# stay those of ``torchvision.models.vgg16().features`` / ``vgg19().features``.
VGG_LAYERS = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512],
}
# The last ReLU of blocks 1-4 (relu1_2, relu2_2, relu3_x, relu4_x) and their weights: deeper
# features (content) count more than shallow ones (texture, colour, which should change).
PERCEPTUAL_WEIGHTS = (1 / 16, 1 / 8, 1 / 4, 1.0)


def vgg_features(name: str) -> nn.Sequential:
    """torchvision's ``vgg16`` / ``vgg19`` ``features`` layout up to relu4_x (conv3x3 + ReLU,
    2x2 max-pools), randomly initialised: the weights come from a file."""
    modules: list[nn.Module] = []
    channels = 3
    for item in VGG_LAYERS[name]:
        if item == "M":
            modules.append(nn.MaxPool2d(2, 2))
        else:
            modules += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU(inplace=False)]
            channels = int(item)
    return nn.Sequential(*modules)


def load_vgg_features(path: Path) -> tuple[nn.Sequential, str]:
    """VGG16 or VGG19 feature layers (up to relu4_x) with the weights of a user's file.

    The file holds torchvision's layout, the whole model (``features.0.weight``, ...) or its
    ``features`` alone (``0.weight``, ...); it is read without pickle code (safetensors, or a
    torch file with ``weights_only=True``).

    Raises:
        UserError: the file is missing, unreadable, or holds no VGG16 / VGG19 weights.
    """
    state = read_weights(Path(path))
    if any(k.startswith("features.") for k in state):
        state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    for name in VGG_LAYERS:
        with torch.device("meta"):  # no memory, no random init: every tensor comes from the file
            features = vgg_features(name)
        needed = features.state_dict()
        if not all(k in state for k in needed):
            continue
        wrong = [k for k, v in needed.items() if tuple(state[k].shape) != tuple(v.shape)]
        if wrong:
            raise UserError(f"VGG weights {path}: '{wrong[0]}' has shape "
                            f"{tuple(state[wrong[0]].shape)}, {name} needs {tuple(needed[wrong[0]].shape)}",
                            "give torchvision's vgg16 / vgg19 weights (translator.vgg_weights)")
        features.load_state_dict({k: state[k].float() for k in needed}, assign=True)
        return features.requires_grad_(False).eval(), name
    raise UserError(f"{path} holds no VGG16 / VGG19 weights (torchvision layout, no batch norm)",
                    "give torchvision's vgg16 or vgg19 weights file as translator.vgg_weights, "
                    "or leave it unset to train without the perceptual term")


class PerceptualLoss(nn.Module):
    """P(a, b) = sum_l w_l * mean |phi_l(a) - phi_l(b)|, phi_l the VGG features at the last
    ReLU of blocks 1-4 (ImageNet-normalised input), w = PERCEPTUAL_WEIGHTS; b is the content
    reference and gets no gradient. Frozen: the VGG is never trained."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.features = features.requires_grad_(False).eval()
        pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
        self.taps = [i - 1 for i in pools] + [len(features) - 1]  # the ReLU before each pool
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_file(cls, path: Path) -> PerceptualLoss:
        return cls(load_vgg_features(path)[0])

    def train(self, mode: bool = True) -> PerceptualLoss:
        return super().train(False)  # the VGG stays in eval mode

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], (x - self.mean) / self.std
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h)
        return out

    def forward(self, images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the reference is a target: no graph, no backward through it
            wanted = self._taps(reference)
        got = self._taps(images)
        return sum(w * F.l1_loss(g, r) for w, g, r in zip(PERCEPTUAL_WEIGHTS, got, wanted, strict=True))
