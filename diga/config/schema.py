"""The typed configuration schema: one pydantic section per part of the tool (the deployment
sections, export and bench, in ``diga.config.deploy``).

Everything the method and the tools use is a field here, with METHOD.md's defaults; types and
ranges are checked by pydantic before any work starts. Reading presets, files and overrides is
``diga.config.loading``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator

from diga.config.deploy import BenchConfig, ExportConfig  # noqa: F401  (re-exported)
from diga.config.types import Section, Size, parse_size  # noqa: F401  (re-exported)

PRESETS = ("demo", "gta2cs-deeplabv2", "synthia2cs-deeplabv2", "gta2cs-hrnet48-ocr",
           "synthia2cs-hrnet48-ocr", "gta2cs-segformer-b5", "synthia2cs-segformer-b5",
           "gta5-dg-deeplabv2")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DomainData(Section):
    """One domain's dataset."""

    # "none": no dataset (data.target of domain generalisation: trained on the source alone)
    kind: Literal["builtin", "gta5", "synthia", "cityscapes", "bdd100k", "mapillary",
                  "folder", "none"] = "builtin"
    root: Path | None = None
    train_split: str = "train"
    val_split: str = "val"
    resize: Size | None = None  # resize every image (HxW) before cropping; None keeps its size
    # kind=builtin only: which built-in domain to read (None: the one this key names). A target
    # oracle trains "source" on the target domain: data.source.builtin_domain=target
    builtin_domain: Literal["source", "target"] | None = None


class BuiltinData(Section):
    """The procedural two-domain street-scene benchmark."""

    seed: int = 0
    size: Size = (128, 256)
    source_train: int = Field(400, ge=1)
    target_train: int = Field(400, ge=1)
    target_val: int = Field(100, ge=1)


class DataConfig(Section):
    source: DomainData = DomainData(kind="builtin")
    target: DomainData = DomainData(kind="builtin")
    classes: Literal[19, 16, 13] = 19
    builtin: BuiltinData = BuiltinData()
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    scale_range: tuple[float, float] = (0.5, 1.5)  # random-sized crop: resize by U(lo, hi) first
    flip: bool = True
    num_workers: int = Field(2, ge=0)

    @field_validator("scale_range")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"need 0 < low <= high, got {v}")
        return v

    @field_validator("source")
    @classmethod
    def _has_source(cls, v: DomainData) -> DomainData:
        if v.kind == "none":
            raise ValueError("every stage trains on the source: give its dataset")
        return v


class ModelConfig(Section):
    name: str = "deeplabv2_resnet101"
    # a weights file (the backbone's, or a whole model), or "imagenet": the library's ImageNet
    # weights (torchvision, timm, segmentation-models-pytorch), downloaded to its cache
    pretrained: str | None = None
    freeze_bn: bool = False
    # weight of the auxiliary logits' terms (CE, and L_kd where the stage has it) for heads
    # that have them (OCR: 0.4 in its paper; the reference's HRNet-OCR training uses 0.1)
    aux_weight: float = Field(0.4, ge=0)


class OptimConfig(Section):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(2.5e-4, gt=0)  # backbone; the head gets lr * head_lr_mult
    head_lr_mult: float = Field(10.0, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    poly_power: float = Field(0.9, ge=0)
    warmup_steps: int = Field(0, ge=0)  # a linear lr ramp from 0 over these first steps


class TrainConfig(Section):
    steps: int = Field(40000, ge=1)
    batch_size: int = Field(2, ge=1)
    crop: Size = (512, 896)
    optim: OptimConfig = OptimConfig()
    log_every: int = Field(50, ge=1)
    eval_every: int = Field(2000, ge=0)  # 0: only at the end; target-val mIoU is reported, never used
    checkpoint_every: int = Field(1000, ge=1)
    # also checkpoint when this many minutes passed since the last one (long steps); None: off
    checkpoint_minutes: float | None = Field(None, gt=0)
    visual_every: int = Field(1000, ge=0)  # 0: no visual grids


class AugmentConfig(Section):
    """Photometric augmentation A (kornia, per-sample parameters)."""

    brightness: float = Field(0.4, ge=0)
    contrast: float = Field(0.4, ge=0)
    saturation: float = Field(0.2, ge=0)
    hue: float = Field(0.1, ge=0, le=0.5)
    jitter_p: float = Field(0.5, ge=0, le=1)
    grayscale_p: float = Field(0.3, ge=0, le=1)
    blur_kernel: int = Field(3, ge=1)
    blur_sigma: float = Field(2.0, gt=0)
    blur_p: float = Field(0.8, ge=0, le=1)
    # Sharpness factor: x draws from [0, x] (kornia's RandomSharpness, the reference: 0.5 only
    # ever blurs, 1 is the identity); [low, high] draws from that range (above 1 sharpens).
    sharpness: float | tuple[float, float] = 0.5
    sharpness_p: float = Field(0.3, ge=0, le=1)

    @field_validator("blur_kernel")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"the blur kernel must be odd, got {v}")
        return v

    @field_validator("sharpness")
    @classmethod
    def _sharpness_range(cls, v: float | tuple[float, float]) -> float | tuple[float, float]:
        low, high = (0.0, v) if isinstance(v, (int, float)) else v
        if not 0 <= low <= high:
            raise ValueError(f"the sharpness range must be 0 <= low <= high, got {v}")
        return v


class MethodConfig(Section):
    """Pieces shared by warm-up and self-training."""

    ema_max: float = Field(0.999, ge=0, lt=1)  # a = min(1 - 1/(t+1), ema_max)
    # The EMA teacher's dropout in a training step. On, as the reference (which never switches
    # its teacher to eval): measured better on the demo preset (3 seeds, round 2 +1.2 mIoU over
    # dropout off; README, the mean teacher). Off (DAFormer's and MIC's teacher): targets and
    # the argmax of the online centroid update without dropout noise.
    teacher_dropout: bool = True
    # Its BatchNorm: "student", the student's mode (batch statistics while training; running
    # statistics with model.freeze_bn, where the teacher then computes its features as the
    # offline centroids were computed, in eval mode); "eval": running statistics always.
    teacher_bn: Literal["student", "eval"] = "student"
    sym_weight: float = Field(0.5, ge=0)  # w_sym in L_kd
    ignore_index: int = 255
    # The class-mix draw (cross-domain mixture and self-training's class mix). False (METHOD):
    # floor(n/2) of the n classes present, IGNORE excluded. True (the reference code): IGNORE
    # counts among the n present classes and can be drawn, which pastes one class fewer. IGNORE
    # pixels are pasted either way.
    mix_draw_ignore: bool = False
    augment: AugmentConfig = AugmentConfig()


class WarmupConfig(Section):
    ce_weight: float = Field(1.0, ge=0)
    kd_weight: float = Field(0.5, ge=0)
    beta: float = Field(0.4, ge=0, le=1)  # aug(x) = beta*A(x) + (1-beta)*x
    symkd: bool = True  # False: source-only (CE alone)
    mixture: bool = True  # False: second view is aug(x_s) (SymKD without CDM)
    translator: Literal["fda", "learned", "none"] = "fda"
    fda_band: float = Field(0.01, gt=0, le=0.5)  # L: low-frequency band ratio
    translator_path: Path | None = None  # weights of a learned translator


class TranslatorConfig(Section):
    """The learned source-to-target translator (METHOD stage 0, ``diga train translator``).

    CycleGAN-style: generators G: S->T and F: T->S, PatchGAN discriminators with LSGAN losses,
    cycle, perceptual and semantic-edge terms. The network sizes are small for a CPU; the
    reference trains larger ones (gen_channels=64, gen_blocks=9) for 50k steps on a GPU.
    """

    steps: int = Field(50000, ge=1)  # the reference's 50k; the demo preset trains far fewer
    batch_size: int = Field(2, ge=1)
    crop: Size | None = None  # None: train.crop, the crops the warm-up translates
    lr: float = Field(2e-4, gt=0)  # Adam, for the generators and the discriminators
    betas: tuple[float, float] = (0.5, 0.999)
    decay_start: float = Field(0.5, ge=0, lt=1)  # constant lr, then linear to 0 from this fraction
    lambda_adv: float = Field(1.0, ge=0)  # LSGAN generator terms, both directions
    lambda_cycle: float = Field(10.0, ge=0)  # L1 of F(G(x_s)) - x_s and G(F(x_t)) - x_t
    # L1 of G(x_t) - x_t and F(x_s) - x_s. CycleGAN uses 0.5 * lambda_cycle to keep the colours of
    # paintings; off here because the colour shift is the point, and the edge and perceptual
    # terms keep the content.
    lambda_identity: float = Field(0.0, ge=0)
    lambda_perceptual: float = Field(1.0, ge=0)  # needs vgg_weights; left out (warning) without
    lambda_edge: float = Field(10.0, ge=0)  # semantic-edge loss on source label boundaries
    vgg_weights: Path | None = None  # torchvision VGG16 / VGG19 weights file (.safetensors / .pth)
    gen_channels: int = Field(16, ge=1)  # width of the first generator layer (x2, x4 inside)
    gen_blocks: int = Field(4, ge=0)  # residual blocks at 1/4 resolution
    disc_channels: int = Field(32, ge=1)  # width of the first PatchGAN layer
    log_every: int = Field(50, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    # also checkpoint when this many minutes passed since the last one (long steps); None: off
    checkpoint_minutes: float | None = Field(None, gt=0)
    visual_every: int = Field(1000, ge=0)  # 0: no visual grids

    @field_validator("betas")
    @classmethod
    def _adam_betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"Adam betas must lie in [0, 1), got {v}")
        return v


class SelftrainConfig(Section):
    init: Path | None = None  # the warm-up run to start from
    beta: float = Field(0.3, ge=0, le=1)
    ce_weight: float = Field(1.0, ge=0)  # weight of CE(S(x_s), y_s)
    kd_weight: float = Field(0.25, ge=0)
    mix_weight: float = Field(1.0, ge=0)  # weight of CE(S(x_cm), y_cm)
    centroid_momentum: float = Field(1e-4, ge=0, le=1)
    min_pixels: int = Field(5, ge=1)  # classes with fewer pixels are skipped in centroid updates
    selection: Literal["consensus", "argmax", "threshold"] = "consensus"
    threshold: float = Field(0.9, ge=0, le=1)  # only for selection=threshold (an ablation)
    rounds: int = Field(1, ge=1)
    # Steps per round; None: train.steps. An override train.steps=N without selftrain.steps
    # sets both (merge_overrides).
    steps: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)  # source (and target) images per step; None: train.batch_size
    # The teacher a round starts from. "continue" (METHOD: stage 2 starts from the warm-up
    # student and teacher): the init run's teacher, its EMA step count going on, so
    # a = min(1 - 1/(t0 + t + 1), ema_max) with t0 the steps it has averaged; "restart" (the
    # reference): a copy of the student, t from 0 (a = 0 at the first step).
    teacher_init: Literal["continue", "restart"] = "continue"
    # The teacher's BatchNorm in self-training; None: method.teacher_bn. "eval": the teacher
    # computes its target features on running statistics, as the offline centroids it is
    # compared with were computed (without model.freeze_bn the two differ otherwise).
    teacher_bn: Literal["student", "eval"] | None = None
    # The teacher pass whose features the consensus compares with the centroids. "separate"
    # (METHOD, the reference): the teacher on the clean target batch alone, so its BN (in
    # batch-statistics mode) sees target statistics only; "joint": one teacher pass over the
    # source views and the target batch (their BN statistics mixed; the same with frozen BN).
    teacher_target_pass: Literal["separate", "joint"] = "separate"
    # Which teacher features: "after_dropout" (METHOD, the reference: the map the classifier
    # receives, the head's dropout applied) or "before_dropout".
    selection_features: Literal["after_dropout", "before_dropout"] = "after_dropout"
    # The online centroid update. "per_image" (METHOD, the reference): one update
    # mu_c <- (1-m) mu_c + m v per (image, class), v that image's class mean, target images
    # then mixed source images; "pooled": one update per step with the class mean pooled over
    # the pixels of both domains.
    centroid_update: Literal["per_image", "pooled"] = "per_image"


class CentroidsConfig(Section):
    """The offline class centroids (``diga centroids``, made by self-training when absent)."""

    # "image" (METHOD, the reference): the mean over images of each image's class mean;
    # "pixel": the mean over all pixels predicted as the class, so large regions weigh more.
    weighting: Literal["image", "pixel"] = "image"


class PseudoConfig(Section):
    scales: list[float] = [1.0, 0.5]  # logits at each scale, upsampled, max-fused
    batch_size: int = Field(4, ge=1)


class EvalTarget(DomainData):
    """A labelled dataset ``diga eval`` scores (its val split at ``resize``): a row of the table."""

    name: str | None = None  # the row's name; None: the kind


class EvalConfig(Section):
    scales: list[float] = [1.0]
    flip: bool = False
    batch_size: int = Field(4, ge=1)
    # Datasets to score, a row each and their mean (domain generalisation); []: data.target
    targets: list[EvalTarget] = []


class RunConfig(Section):
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Scale out (torchrun / ``--devices N``): the process-group backend (auto: nccl on GPUs, gloo
    # on CPU) and BatchNorm statistics over the global batch (SyncBatchNorm; GPUs only).
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    sync_bn: bool = False
    # Speed: autocast for the forward passes (fp16 adds a gradient scaler), NHWC memory layout,
    # torch.compile of the student and teacher. All off by default (the CPU demo needs none).
    amp: Literal["off", "bf16", "fp16"] = "off"
    channels_last: bool = False
    compile: bool = False


class Config(Section):
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    method: MethodConfig = MethodConfig()
    warmup: WarmupConfig = WarmupConfig()
    translator: TranslatorConfig = TranslatorConfig()
    selftrain: SelftrainConfig = SelftrainConfig()
    centroids: CentroidsConfig = CentroidsConfig()
    pseudo: PseudoConfig = PseudoConfig()
    eval: EvalConfig = EvalConfig()
    export: ExportConfig = ExportConfig()
    bench: BenchConfig = BenchConfig()

    @property
    def num_classes(self) -> int:
        return self.data.classes

    @property
    def inference_size(self) -> tuple[int, int] | None:
        """The (H, W) target images are run at when deployed: ``export.input_size``, else the
        target resize the model was trained and evaluated at; None: each image's own size."""
        return self.export.input_size or self.data.target.resize

    def stage_steps(self, stage: str) -> int:
        """Optimiser steps of a stage: ``train.steps``, or ``selftrain.steps`` per round."""
        if stage == "selftrain" and self.selftrain.steps is not None:
            return self.selftrain.steps
        return self.train.steps

    def stage_batch_size(self, stage: str) -> tuple[int, str]:
        """Global batch of a stage and the key it comes from (``selftrain.batch_size`` or
        ``train.batch_size``)."""
        if stage == "selftrain" and self.selftrain.batch_size is not None:
            return self.selftrain.batch_size, "selftrain.batch_size"
        return self.train.batch_size, "train.batch_size"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def hash(self) -> str:
        """A short stable hash of the resolved config (provenance in checkpoints and exports)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]
