"""DeepLabV2: dilated ResNet (output stride 8) + the ASPP-style head with a 256-d feature.

The head follows the method (docs/method.md): parallel dilated 3x3 branches over the backbone's last map, fused
into an ``F``-channel feature map (F = 256 for the ResNets) that feeds a 1x1 classifier.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from diga.errors import UserError
from diga.models.registry import SegmentationModel, register_model
from diga.models.weights import read_weights


class DilatedBasicBlock(BasicBlock):
    """torchvision's BasicBlock refuses dilation > 1; this one dilates both 3x3 convs.

    Same parameter names as BasicBlock, so torchvision's ResNet-18 weights load into it.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1, norm_layer=None):
        super().__init__(inplanes, planes, stride, downsample, groups, base_width, 1, norm_layer)
        if dilation > 1:
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=dilation,
                                   dilation=dilation, bias=False)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=dilation,
                                   dilation=dilation, bias=False)


class ResNetBackbone(nn.Module):
    """A ResNet without its pooling/fc, layers 3-4 dilated: output stride 8."""

    def __init__(self, resnet: ResNet) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = (
            resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool,
        )
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4,
        )
        self.out_channels = resnet.fc.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ASPPHead(nn.Module):
    """ASPP-style head: dilated branches -> fused ``feat_dim`` feature -> dropout -> classifier."""

    def __init__(self, in_channels: int, num_classes: int, feat_dim: int = 256,
                 rates: tuple[int, ...] = (6, 12, 18, 24), dropout: float = 0.1) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_channels, feat_dim, 3, padding=r, dilation=r, bias=False),
                nn.BatchNorm2d(feat_dim),
                nn.ReLU(inplace=True),
            )
            for r in rates
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(feat_dim * len(rates), feat_dim, 3, padding=1, bias=False),
            nn.BatchNorm2d(feat_dim),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(feat_dim, num_classes, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))  # (B, F, h, w)


_TORCHVISION = {
    "resnet18": (DilatedBasicBlock, [2, 2, 2, 2], "ResNet18_Weights"),
    "resnet50": (Bottleneck, [3, 4, 6, 3], "ResNet50_Weights"),
    "resnet101": (Bottleneck, [3, 4, 23, 3], "ResNet101_Weights"),
}


def _imagenet_state(arch: str) -> dict[str, torch.Tensor]:
    weights = getattr(torchvision.models, _TORCHVISION[arch][2]).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=False)
    except Exception as exc:  # urllib / OSError / hash errors: all mean "could not get it"
        raise UserError(
            f"could not download torchvision's ImageNet weights for {arch} ({type(exc).__name__})",
            f"download {weights.url} elsewhere and set model.pretrained=/path/to/that/file",
        ) from None


def _dilated_resnet(arch: str, num_classes: int, pretrained: str | None,
                    freeze_bn: bool) -> SegmentationModel:
    block, layers, _ = _TORCHVISION[arch]
    resnet = ResNet(block, layers, replace_stride_with_dilation=[False, True, True])
    if pretrained == "imagenet":
        resnet.load_state_dict(_imagenet_state(arch))
        pretrained = None
    model = SegmentationModel(
        ResNetBackbone(resnet), ASPPHead(resnet.fc.in_features, num_classes), freeze_bn
    )
    if pretrained is not None:
        load_pretrained(model, Path(pretrained))
    return model


def load_pretrained(model: SegmentationModel, path: Path) -> None:
    """Load a weights file into the whole model, or into the backbone only.

    Accepts safetensors, or a torch file read with ``weights_only=True`` (never unpickled
    code). A torchvision-style ResNet state (``conv1.weight``, ``layer1...``, ``fc``) fits the
    backbone.
    """
    state = read_weights(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    target = model
    if not any(k.startswith(("backbone.", "head.")) for k in state):
        target = model.backbone
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = target.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = f"missing '{missing[0]}'" if missing else f"unexpected '{unexpected[0]}'"
        raise UserError(
            f"weights file {path} does not fit model ({what}; {len(missing)} missing, "
            f"{len(unexpected)} unexpected keys)",
            "give weights of the same architecture as model.name",
        )
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise UserError(
                f"weights file {path} does not fit model: '{key}' has shape "
                f"{tuple(value.shape)}, the model needs {tuple(own[key].shape)}",
                "check model.name and data.classes",
            )
    target.load_state_dict(state)


@register_model
def deeplabv2_resnet101(num_classes: int, pretrained: str | None = None,
                        freeze_bn: bool = False) -> SegmentationModel:
    """The paper's model: DeepLabV2 with a dilated ResNet-101."""
    return _dilated_resnet("resnet101", num_classes, pretrained, freeze_bn)


@register_model
def deeplabv2_resnet50(num_classes: int, pretrained: str | None = None,
                       freeze_bn: bool = False) -> SegmentationModel:
    return _dilated_resnet("resnet50", num_classes, pretrained, freeze_bn)


@register_model
def deeplabv2_resnet18(num_classes: int, pretrained: str | None = None,
                       freeze_bn: bool = False) -> SegmentationModel:
    return _dilated_resnet("resnet18", num_classes, pretrained, freeze_bn)
