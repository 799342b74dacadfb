from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from diga.errors import UserError
from diga.models import available_models, build_model

SMALL = {"deeplabv2_tiny": 64, "deeplabv2_resnet18": 64, "deeplabv2_resnet50": 48,
         "deeplabv2_resnet101": 48}


@pytest.mark.parametrize("name", available_models())
def test_every_model_contract(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=5)
    size = SMALL[name]
    x = torch.randn(2, 3, size, size)
    out = model(x)
    h = (size + 7) // 8
    assert out.logits.shape == (2, 5, h, h)  # output stride 8
    assert out.features.shape == (2, model.feature_dim, h, h)
    (out.logits.square().mean() + out.features.mean()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    backbone, head = model.param_groups()
    assert len(backbone) + len(head) == len(list(model.parameters()))


def test_resnet18_layers_are_dilated():
    model = build_model("deeplabv2_resnet18", 19)
    assert model.backbone.layer3[0].conv1.dilation == (1, 1)  # the first block keeps stride
    assert model.backbone.layer4[1].conv1.dilation == (4, 4)
    assert model.backbone.layer4[0].conv1.stride == (1, 1)


def test_freeze_bn_keeps_running_stats():
    model = build_model("deeplabv2_tiny", 19, freeze_bn=True).train()
    bn = model.backbone.stem[0][1]
    before = bn.running_mean.clone()
    model(torch.randn(2, 3, 32, 32) * 5 + 3)
    assert torch.equal(bn.running_mean, before) and not bn.weight.requires_grad


def test_pretrained_file_whole_model_and_backbone(tmp_path):
    src = build_model("deeplabv2_tiny", 19)
    whole = tmp_path / "whole.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(whole))
    model = build_model("deeplabv2_tiny", 19, pretrained=str(whole))
    assert torch.equal(model.head.classifier.weight, src.head.classifier.weight)
    backbone_only = tmp_path / "backbone.pt"
    torch.save(src.backbone.state_dict(), backbone_only)
    model = build_model("deeplabv2_tiny", 19, pretrained=str(backbone_only))
    assert torch.equal(model.backbone.stem[0][0].weight, src.backbone.stem[0][0].weight)


def test_pretrained_file_errors(tmp_path):
    with pytest.raises(UserError, match="weights file not found"):
        build_model("deeplabv2_tiny", 19, pretrained=str(tmp_path / "nope.safetensors"))
    wrong_classes = tmp_path / "c16.safetensors"
    save_file({k: v.contiguous() for k, v in build_model("deeplabv2_tiny", 16).state_dict().items()},
              str(wrong_classes))
    with pytest.raises(UserError, match=r"'head.classifier.bias' has shape \(16,\), the model needs \(19,\)"):
        build_model("deeplabv2_tiny", 19, pretrained=str(wrong_classes))
    other = tmp_path / "r18.safetensors"
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7)}, str(other))
    with pytest.raises(UserError, match="does not fit model"):
        build_model("deeplabv2_tiny", 19, pretrained=str(other))
    corrupt = tmp_path / "bad.safetensors"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="cannot read weights file"):
        build_model("deeplabv2_tiny", 19, pretrained=str(corrupt))
    pickled = tmp_path / "code.pt"
    torch.save({"w": torch.zeros(1), "obj": UserError("x")}, pickled)  # needs unpickling code
    with pytest.raises(UserError, match="safely"):
        build_model("deeplabv2_tiny", 19, pretrained=str(pickled))


def test_unknown_model_name():
    with pytest.raises(UserError, match="did you mean 'deeplabv2_tiny'"):
        build_model("deeplabv2_tin", 19)
