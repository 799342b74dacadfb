"""The typed configuration schema: one pydantic section per part of the tool (the deployment
sections, export and bench, in ``diga.config.deploy``).

Everything the method and the tools use is a field here, with the method's defaults (docs/method.md); types and
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
from diga.config.pipeline import PipelineConfig
from diga.config.types import Section, Size, parse_size  # noqa: F401  (re-exported)

PRESETS = ("demo", "gta2cs-deeplabv2", "synthia2cs-deeplabv2", "gta2cs-hrnet48-ocr",
           "synthia2cs-hrnet48-ocr", "gta2cs-segformer-b5", "synthia2cs-segformer-b5",
           "gta5-dg-deeplabv2")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DomainData(Section):
    """One domain's dataset."""

    kind: Literal["builtin", "gta5", "synthia", "cityscapes", "bdd100k", "mapillary",
                  "folder", "none"] = "builtin"
    """The dataset: the built-in benchmark, a real dataset's layout, or none. "folder":
    images/ and labels/ of train ids, paired by name; "none": no dataset (data.target of
    domain generalisation: trained on the source alone)."""
    root: Path | None = None
    """The dataset's folder (every kind but builtin and none needs one)."""
    train_split: str = "train"
    """The split read for training (the folder or list name inside root)."""
    val_split: str = "val"
    """The split read for evaluation (a suffix chooses a version: val@v2.0 for Mapillary)."""
    resize: Size | None = None
    """Resize every image (HxW) before cropping; None keeps its size."""
    builtin_domain: Literal["source", "target"] | None = None
    """Which built-in domain to read, kind=builtin only (None: the one this key names). A
    target oracle trains "source" on the target domain: data.source.builtin_domain=target."""


class BuiltinData(Section):
    """The procedural two-domain street-scene benchmark."""

    seed: int = 0
    """Seed of the generator that draws the built-in scenes."""
    size: Size = (128, 256)
    """Image size (HxW) of the built-in benchmark, both domains."""
    source_train: int = Field(400, ge=1)
    """Labelled source images of the built-in benchmark."""
    target_train: int = Field(400, ge=1)
    """Target train images of the built-in benchmark (their labels are never trained on)."""
    target_val: int = Field(100, ge=1)
    """Labelled target val images of the built-in benchmark."""


class DataConfig(Section):
    source: DomainData = DomainData(kind="builtin")
    """The labelled source domain, every stage trains on it."""
    target: DomainData = DomainData(kind="builtin")
    """The unlabelled target domain: its train split is adapted to, its val split scored."""
    classes: Literal[19, 16, 13] = 19
    """The class protocol: Cityscapes' 19 classes, or the 16 or 13 of SYNTHIA's benchmarks."""
    builtin: BuiltinData = BuiltinData()
    """The built-in benchmark read by kind=builtin."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    """Per-channel RGB mean of the input normalisation (images in [0, 1])."""
    std: tuple[float, float, float] = IMAGENET_STD
    """Per-channel RGB standard deviation of the input normalisation."""
    scale_range: tuple[float, float] = (0.5, 1.5)
    """Random-sized crop: resize by U(lo, hi) first."""
    flip: bool = True
    """Random horizontal flips of the training crops."""
    num_workers: int = Field(2, ge=0)
    """DataLoader worker processes (0: load in the main process)."""

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
    """The network (diga.models registry: deeplabv2_resnet101, hrnet48_ocr, segformer_mit_b5,
    ...)."""
    pretrained: str | None = None
    """Initial weights: a weights file or "imagenet". A weights file is the backbone's or a
    whole model's; "imagenet": the library's ImageNet weights (torchvision, timm,
    segmentation-models-pytorch), downloaded to its cache."""
    freeze_bn: bool = False
    """Keep BatchNorm in eval mode while training (running statistics, not updated)."""
    aux_weight: float = Field(0.4, ge=0)
    """Weight of the auxiliary logits' terms (CE, and L_kd where the stage has it) for heads
    that have them. OCR: 0.4 in its paper; the reference's HRNet-OCR training uses 0.1."""


class OptimConfig(Section):
    name: Literal["sgd", "adamw"] = "sgd"
    """The optimiser."""
    lr: float = Field(2.5e-4, gt=0)
    """Learning rate of the backbone; the head gets lr * head_lr_mult."""
    head_lr_mult: float = Field(10.0, gt=0)
    """The head's learning rate as a multiple of lr."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum (AdamW has none)."""
    weight_decay: float = Field(5e-4, ge=0)
    """Weight decay (L2 for SGD, decoupled for AdamW)."""
    poly_power: float = Field(0.9, ge=0)
    """Power of the poly decay: lr * (1 - step/steps) ** poly_power."""
    warmup_steps: int = Field(0, ge=0)
    """A linear lr ramp from 0 over these first steps."""


class TrainConfig(Section):
    steps: int = Field(40000, ge=1)
    """Optimiser steps of a training stage (and of each self-training round without
    selftrain.steps)."""
    batch_size: int = Field(2, ge=1)
    """Source (and target) images per step, over all devices."""
    crop: Size = (512, 896)
    """Size (HxW) of the random training crops."""
    optim: OptimConfig = OptimConfig()
    """The optimiser and its learning-rate schedule."""
    log_every: int = Field(50, ge=1)
    """Steps between logged losses and learning rates."""
    eval_every: int = Field(2000, ge=0)
    """Steps between target-val evaluations; 0: only at the end. The target-val mIoU is
    reported, never used."""
    checkpoint_every: int = Field(1000, ge=1)
    """Steps between checkpoints."""
    checkpoint_minutes: float | None = Field(None, gt=0)
    """Also checkpoint when this many minutes passed since the last one (long steps); None:
    off."""
    visual_every: int = Field(1000, ge=0)
    """Steps between visual grids of inputs and predictions; 0: no visual grids."""
    tensorboard: bool = True
    """Also write every logged value, the visual grids and the config as TensorBoard events in
    the run folder (needs the tensorboard extra; without it, a warning)."""


class AugmentConfig(Section):
    """Photometric augmentation A (kornia, per-sample parameters)."""

    brightness: float = Field(0.4, ge=0)
    """Colour jitter's brightness: a factor drawn from [1 - x, 1 + x]."""
    contrast: float = Field(0.4, ge=0)
    """Colour jitter's contrast: a factor drawn from [1 - x, 1 + x]."""
    saturation: float = Field(0.2, ge=0)
    """Colour jitter's saturation: a factor drawn from [1 - x, 1 + x]."""
    hue: float = Field(0.1, ge=0, le=0.5)
    """Colour jitter's hue shift, drawn from [-x, x] (a fraction of the hue circle)."""
    jitter_p: float = Field(0.5, ge=0, le=1)
    """Probability of colour jitter per image."""
    grayscale_p: float = Field(0.3, ge=0, le=1)
    """Probability of turning an image gray."""
    blur_kernel: int = Field(3, ge=1)
    """Side of the Gaussian blur's kernel (odd)."""
    blur_sigma: float = Field(2.0, gt=0)
    """Standard deviation of the Gaussian blur."""
    blur_p: float = Field(0.8, ge=0, le=1)
    """Probability of the Gaussian blur per image."""
    sharpness: float | tuple[float, float] = 0.5
    """Range of the sharpness factor: x or [low, high]. x draws from [0, x] (kornia's
    RandomSharpness, the reference: 0.5 only ever blurs, 1 is the identity); [low, high] draws
    from that range (above 1 sharpens)."""
    sharpness_p: float = Field(0.3, ge=0, le=1)
    """Probability of the sharpness change per image."""

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

    ema_max: float = Field(0.999, ge=0, lt=1)
    """Cap of the EMA teacher's decay: a = min(1 - 1/(t+1), ema_max)."""
    teacher_dropout: bool = True
    """Whether the EMA teacher's dropout is on in a training step. On, as the reference (which never
    switches its teacher to eval): measured better on the demo preset (3 seeds, round 2 +1.2
    mIoU over dropout off; docs/results.md, the mean teacher). Off (DAFormer's and MIC's teacher):
    targets and the argmax of the online centroid update without dropout noise."""
    teacher_bn: Literal["student", "eval"] = "student"
    """The EMA teacher's BatchNorm mode. "student": the student's mode (batch statistics while
    training; running statistics with model.freeze_bn, where the teacher then computes its
    features as the offline centroids were computed, in eval mode); "eval": running
    statistics always."""
    sym_weight: float = Field(0.5, ge=0)
    """w_sym in L_kd: the weight of the reverse direction (the second view's teacher teaching
    the clean view's student)."""
    ignore_index: int = 255
    """The label value of unlabelled pixels (no loss, never pasted as a class)."""
    mix_draw_ignore: bool = False
    """Whether the class-mix draw counts IGNORE as a class (cross-domain mixture and
    self-training's class mix). False (METHOD): floor(n/2) of the n classes present, IGNORE
    excluded. True (the reference code): IGNORE counts among the n present classes and can be
    drawn, which pastes one class fewer. IGNORE pixels are pasted either way."""
    augment: AugmentConfig = AugmentConfig()
    """Photometric augmentation A of aug(x) = beta*A(x) + (1-beta)*x."""


class WarmupConfig(Section):
    ce_weight: float = Field(1.0, ge=0)
    """Weight of the source CE in warm-up (and of the source-only baseline's CE)."""
    kd_weight: float = Field(0.5, ge=0)
    """Weight of L_kd, the symmetric distillation between the two views, in warm-up."""
    beta: float = Field(0.4, ge=0, le=1)
    """Blend of the warm-up's augmentation: aug(x) = beta*A(x) + (1-beta)*x."""
    symkd: bool = True
    """Warm-up with SymKD; False: source-only (CE alone)."""
    mixture: bool = True
    """Cross-domain mixture as the second view; False: it is aug(x_s) (SymKD without CDM)."""
    translator: Literal["fda", "learned", "none"] = "fda"
    """The translator G of the cross-domain mixture. fda: Fourier domain adaptation with a
    random target image (training-free); learned: a frozen translator trained by diga train
    translator (warmup.translator_path); none: the ablation, an independent photometric
    augmentation of the source."""
    fda_band: float = Field(0.01, gt=0, le=0.5)
    """L of FDA: the low-frequency band ratio swapped with the target's."""
    translator_path: Path | None = None
    """Weights of a learned translator (diga train translator), for translator=learned."""


class TranslatorConfig(Section):
    """The learned source-to-target translator (METHOD stage 0, ``diga train translator``).

    CycleGAN-style: generators G: S->T and F: T->S, PatchGAN discriminators with LSGAN losses,
    cycle, perceptual and semantic-edge terms. The network sizes are small for a CPU; the
    reference trains larger ones (gen_channels=64, gen_blocks=9) for 50k steps on a GPU.
    """

    steps: int = Field(50000, ge=1)
    """Training steps of the translator (the reference's 50k; the demo preset trains far
    fewer)."""
    batch_size: int = Field(2, ge=1)
    """Source and target images per translator step."""
    crop: Size | None = None
    """Size (HxW) of the translator's training crops; None: train.crop, the crops the warm-up
    translates."""
    lr: float = Field(2e-4, gt=0)
    """Adam learning rate, for the generators and the discriminators."""
    betas: tuple[float, float] = (0.5, 0.999)
    """Adam's (beta1, beta2)."""
    decay_start: float = Field(0.5, ge=0, lt=1)
    """Fraction of the steps with a constant lr, then linear to 0."""
    lambda_adv: float = Field(1.0, ge=0)
    """Weight of the LSGAN generator terms, both directions."""
    lambda_cycle: float = Field(10.0, ge=0)
    """Weight of the cycle terms: L1 of F(G(x_s)) - x_s and G(F(x_t)) - x_t."""
    lambda_identity: float = Field(0.0, ge=0)
    """Weight of the identity terms: L1 of G(x_t) - x_t and F(x_s) - x_s. CycleGAN uses 0.5 *
    lambda_cycle to keep the colours of paintings; off here because the colour shift is the
    point, and the edge and perceptual terms keep the content."""
    lambda_perceptual: float = Field(1.0, ge=0)
    """Weight of the perceptual term; needs vgg_weights, left out (warning) without."""
    lambda_edge: float = Field(10.0, ge=0)
    """Weight of the semantic-edge loss on source label boundaries."""
    vgg_weights: Path | None = None
    """Torchvision VGG16 / VGG19 weights file (.safetensors / .pth) of the perceptual term."""
    gen_channels: int = Field(16, ge=1)
    """Width of the first generator layer (x2, x4 inside)."""
    gen_blocks: int = Field(4, ge=0)
    """Residual blocks of the generators, at 1/4 resolution."""
    disc_channels: int = Field(32, ge=1)
    """Width of the first PatchGAN layer."""
    log_every: int = Field(50, ge=1)
    """Steps between logged translator losses."""
    checkpoint_every: int = Field(1000, ge=1)
    """Steps between translator checkpoints."""
    checkpoint_minutes: float | None = Field(None, gt=0)
    """Also checkpoint when this many minutes passed since the last one (long steps); None:
    off."""
    visual_every: int = Field(1000, ge=0)
    """Steps between visual grids of translated images; 0: no visual grids."""

    @field_validator("betas")
    @classmethod
    def _adam_betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"Adam betas must lie in [0, 1), got {v}")
        return v


class SelftrainConfig(Section):
    init: Path | None = None
    """The warm-up run to start from."""
    beta: float = Field(0.3, ge=0, le=1)
    """Blend of self-training's augmentation: aug(x) = beta*A(x) + (1-beta)*x."""
    ce_weight: float = Field(1.0, ge=0)
    """Weight of CE(S(x_s), y_s)."""
    kd_weight: float = Field(0.25, ge=0)
    """Weight of L_kd, the source branch's symmetric distillation, in self-training."""
    mix_weight: float = Field(1.0, ge=0)
    """Weight of CE(S(x_cm), y_cm), the class-mixed image's CE."""
    centroid_momentum: float = Field(1e-4, ge=0, le=1)
    """Momentum m of the online centroid update: mu_c <- (1-m) mu_c + m v."""
    min_pixels: int = Field(5, ge=1)
    """Classes with fewer pixels are skipped in centroid updates."""
    selection: Literal["consensus", "argmax", "threshold"] = "consensus"
    """Pseudo-label selection: the bilateral consensus (METHOD); every argmax label or a
    confidence threshold (ablations)."""
    threshold: float = Field(0.9, ge=0, le=1)
    """Confidence threshold, only for selection=threshold (an ablation)."""
    rounds: int = Field(1, ge=1)
    """Self-training rounds; each makes its pseudo-labels again."""
    steps: int | None = Field(None, ge=1)
    """Steps per round; None: train.steps. An override train.steps=N without selftrain.steps
    sets both (merge_overrides)."""
    batch_size: int | None = Field(None, ge=1)
    """Source (and target) images per step; None: train.batch_size."""
    teacher_init: Literal["continue", "restart"] = "continue"
    """The teacher a round starts from. "continue" (METHOD: stage 2 starts from the warm-up
    student and teacher): the init run's teacher, its EMA step count going on, so
    a = min(1 - 1/(t0 + t + 1), ema_max) with t0 the steps it has averaged; "restart" (the
    reference): a copy of the student, t from 0 (a = 0 at the first step)."""
    teacher_bn: Literal["student", "eval"] | None = None
    """The teacher's BatchNorm in self-training; None: method.teacher_bn. "eval": the teacher
    computes its target features on running statistics, as the offline centroids it is
    compared with were computed (without model.freeze_bn the two differ otherwise)."""
    teacher_target_pass: Literal["separate", "joint"] = "separate"
    """The teacher pass whose features the consensus compares with the centroids. "separate"
    (METHOD, the reference): the teacher on the clean target batch alone, so its BN (in
    batch-statistics mode) sees target statistics only; "joint": one teacher pass over the
    source views and the target batch (their BN statistics mixed; the same with frozen BN)."""
    selection_features: Literal["after_dropout", "before_dropout"] = "after_dropout"
    """Which teacher features the consensus uses. "after_dropout" (METHOD, the reference: the
    map the classifier receives, the head's dropout applied) or "before_dropout"."""
    centroid_update: Literal["per_image", "pooled"] = "per_image"
    """How the online centroid update pools features: per (image, class) or per step.
    "per_image" (METHOD, the reference): one update
    mu_c <- (1-m) mu_c + m v per (image, class), v that image's class mean, target images
    then mixed source images; "pooled": one update per step with the class mean pooled over
    the pixels of both domains."""


class CentroidsConfig(Section):
    """The offline class centroids (``diga centroids``, made by self-training when absent)."""

    weighting: Literal["image", "pixel"] = "image"
    """How the offline centroids average features. "image" (METHOD, the reference): the mean
    over images of each image's class mean; "pixel": the mean over all pixels predicted as
    the class, so large regions weigh more."""


class PseudoConfig(Section):
    scales: list[float] = [1.0, 0.5]
    """Scales of the offline pseudo-labels: logits at each scale, upsampled, max-fused."""
    batch_size: int = Field(4, ge=1)
    """Target images per batch while making pseudo-labels and centroids."""


class EvalTarget(DomainData):
    """A labelled dataset ``diga eval`` scores (its val split at ``resize``): a row of the table."""

    name: str | None = None
    """The row's name; None: the kind."""


class EvalConfig(Section):
    scales: list[float] = [1.0]
    """Test scales: logits at each, upsampled, max-fused ([1.0]: single scale)."""
    flip: bool = False
    """Also the horizontally flipped image, its logits max-fused with the others."""
    batch_size: int = Field(4, ge=1)
    """Images per evaluation batch."""
    targets: list[EvalTarget] = []
    """Datasets to score, a row each and their mean (domain generalisation); []: data.target."""


class RunConfig(Section):
    seed: int = 0
    """Seed of every random draw (weights, data order, augmentation)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to run; auto: a CUDA GPU when there is one, else the CPU."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """The process-group backend when scaled out (torchrun, --devices N); auto: nccl on GPUs,
    gloo on CPU."""
    sync_bn: bool = False
    """BatchNorm statistics over the global batch when scaled out (SyncBatchNorm; GPUs
    only)."""
    amp: Literal["off", "bf16", "fp16"] = "off"
    """Speed: autocast for the forward passes (fp16 adds a gradient scaler). Off by default (the
    CPU demo needs none), as are channels_last and compile."""
    channels_last: bool = False
    """Speed: NHWC memory layout of the models and batches."""
    compile: bool = False
    """Speed: torch.compile of the student and teacher."""


class Config(Section):
    run: RunConfig = RunConfig()
    """Seeds, devices, scale-out and speed settings of a run."""
    data: DataConfig = DataConfig()
    """The source and target datasets and how training crops are drawn."""
    model: ModelConfig = ModelConfig()
    """The segmentation network and its initial weights."""
    train: TrainConfig = TrainConfig()
    """Steps, batches, crops, optimiser and logging of a training stage."""
    method: MethodConfig = MethodConfig()
    """The DiGA pieces shared by warm-up and self-training (EMA teacher, SymKD, augmentation)."""
    warmup: WarmupConfig = WarmupConfig()
    """Stage 1: symmetric distillation with cross-domain mixture."""
    translator: TranslatorConfig = TranslatorConfig()
    """Stage 0: the learned source-to-target translator (diga train translator)."""
    selftrain: SelftrainConfig = SelftrainConfig()
    """Stage 2: self-training with bilateral-consensus pseudo-labels."""
    centroids: CentroidsConfig = CentroidsConfig()
    """The offline class centroids of self-training (diga centroids)."""
    pseudo: PseudoConfig = PseudoConfig()
    """The offline pseudo-labels of self-training (diga pseudo)."""
    eval: EvalConfig = EvalConfig()
    """Evaluation (diga eval and during training): test scales, flip, datasets."""
    export: ExportConfig = ExportConfig()
    """ONNX, INT8 / FP16, OpenVINO and TensorRT export (diga export)."""
    bench: BenchConfig = BenchConfig()
    """Speed and accuracy benchmarks of models and backends (diga bench)."""
    pipeline: PipelineConfig = PipelineConfig()
    """What diga run (and diga demo) does beyond training: the baseline, export formats, bench."""

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
