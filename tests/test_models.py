from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from diga.errors import UserError
from diga.models import available_models, build_model

SMALL = {"deeplabv2_tiny": 64, "deeplabv2_resnet18": 64, "deeplabv2_resnet50": 48,
         "deeplabv2_resnet101": 48, "hrnet18_ocr": 40, "hrnet48_ocr": 40, "segformer_mit_b0": 40,
         "segformer_mit_b1": 40, "segformer_mit_b5": 40}
BIG = ("resnet50", "resnet101", "hrnet48", "mit_b5")  # seconds to build and run on 2 CPU cores


def _models():
    for name in available_models():
        yield pytest.param(name, marks=pytest.mark.slow) if name.endswith(BIG) else name


@pytest.mark.parametrize("name", list(_models()))
def test_every_model_contract(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=5)
    size = SMALL[name]  # 40: not a multiple of 32 (HRNet's and MiT's inputs are padded)
    x = torch.randn(2, 3, size, size)
    out = model(x)
    h = -(-size // model.output_stride)
    assert out.logits.shape == (2, 5, h, h)  # output stride 8 (DeepLabV2) or 4
    assert out.features.shape == (2, model.feature_dim, h, h)
    loss = out.logits.square().mean() + out.features.mean()
    if out.aux is not None:  # OCR's soft object regions: logits of their own
        assert out.aux.shape == out.logits.shape
        loss = loss + out.aux.square().mean()
    loss.backward()
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


# ------------------------------------------------------------------ the libraries' weights


def _hub_cache(root, repo: str, revision: str, files: dict) -> None:
    """A Hugging Face cache holding ``files`` of ``repo`` at ``revision`` (its layout, as a
    download leaves it)."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    snap = folder / "snapshots" / revision
    snap.mkdir(parents=True)
    for name, write in files.items():
        write(snap / name)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """No hub (HF_HUB_OFFLINE), an empty cache of its own: what a machine without network has."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


@pytest.mark.parametrize("name, what", [("hrnet18_ocr", "timm's hrnet_w18"),
                                        ("segformer_mit_b0", "segmentation-models-pytorch's mit_b0")])
def test_imagenet_weights_offline_are_one_line(offline_hub, name, what):
    with pytest.raises(UserError) as err:
        build_model(name, 19, pretrained="imagenet")
    assert err.value.args[0].startswith(f"the ImageNet weights of {what} are not in the "
                                        f"Hugging Face cache ({offline_hub})")
    assert "model.pretrained=/path/to/file" in err.value.hint
    assert "model.pretrained=null" in err.value.hint


def test_imagenet_weights_come_from_the_library_cache(offline_hub):
    """Weights a first run downloaded are read from the libraries' cache with no network."""
    import json

    import timm
    from segmentation_models_pytorch.encoders import encoders, get_encoder

    torch.manual_seed(1)
    hrnet = timm.create_model("hrnet_w18", pretrained=False)
    state = {k: v.contiguous() for k, v in hrnet.state_dict().items()}
    _hub_cache(offline_hub, "timm/hrnet_w18.ms_aug_in1k", "a" * 40,
               {"model.safetensors": lambda p: save_file(state, str(p))})
    model = build_model("hrnet18_ocr", 19, pretrained="imagenet")
    assert torch.equal(model.backbone.body.conv1.weight, state["conv1.weight"])

    mit = get_encoder("mit_b0", weights=None)
    mit_state = {k: v.contiguous() for k, v in mit.state_dict().items()}
    hub = encoders["mit_b0"]["pretrained_settings"]["imagenet"]
    _hub_cache(offline_hub, hub["repo_id"], hub["revision"], {
        "config.json": lambda p: p.write_text(json.dumps({})),
        "model.safetensors": lambda p: save_file(mit_state, str(p))})
    model = build_model("segformer_mit_b0", 19, pretrained="imagenet")
    key = next(k for k in mit_state if k.endswith("weight"))
    assert torch.equal(model.backbone.encoder.state_dict()[key], mit_state[key])


@pytest.mark.parametrize("name", ["hrnet18_ocr", "segformer_mit_b0"])
def test_library_backbones_take_local_files(tmp_path, name):
    """model.pretrained=PATH: the backbone's own weights (the library's layout) or a whole diga
    model of the same architecture."""
    torch.manual_seed(2)
    src = build_model(name, 19)
    whole = tmp_path / "whole.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(whole))
    model = build_model(name, 19, pretrained=str(whole))
    assert torch.equal(model.head.classifier.weight, src.head.classifier.weight)
    inner = src.backbone.body if name.startswith("hrnet") else src.backbone.encoder
    backbone = tmp_path / "backbone.safetensors"
    if name.startswith("hrnet"):  # timm's layout: the classification model's state dict
        import timm

        full = timm.create_model("hrnet_w18", pretrained=False)
        full.load_state_dict(inner.state_dict(), strict=False)
        save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(backbone))
    else:
        save_file({k: v.contiguous() for k, v in inner.state_dict().items()}, str(backbone))
    model = build_model(name, 19, pretrained=str(backbone))
    got = model.backbone.body if name.startswith("hrnet") else model.backbone.encoder
    for key, value in inner.state_dict().items():
        if key.endswith("weight"):
            assert torch.equal(got.state_dict()[key], value), key
    other = tmp_path / "other.safetensors"
    save_file({"conv9.weight": torch.zeros(3)}, str(other))
    with pytest.raises(UserError, match="does not fit .*missing"):
        build_model(name, 19, pretrained=str(other))
