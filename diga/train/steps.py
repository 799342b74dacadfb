"""One training step per stage, each read top to bottom in the method's order (docs/method.md).

``source_step`` (the source-only baseline), ``warmup_step`` (stage 1) and ``selftrain_step``
(stage 2) take the step's batch on the device and return the loss to backpropagate, the
values to log (device tensors: nothing here waits for the device) and the views to draw.
The optimiser step, the EMA update, logging and checkpoints are the loop's
(``diga.train.loop``): they are the same for every stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from diga.config import Config
from diga.data.datasets import normalize
from diga.method import (
    PhotometricAugment,
    class_feature_sums,
    class_mix_mask,
    consensus_pseudo_labels,
    mix,
    per_image_class_means,
    segmentation_ce,
    symmetric_distillation,
    threshold_pseudo_labels,
    update_centroids,
    update_centroids_per_image,
)
from diga.models import SegOutput
from diga.train.distributed import Distributed
from diga.train.speed import Precision
from diga.train.translate import Translator

# A logged value: a tensor (its mean over ranks is logged) or a (numerator, denominator) pair
# (summed over ranks, then divided: a ratio over the global batch; absent where it is 0/0).
LogValue = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


@dataclass
class Batch:
    """One step's images and labels on the device."""

    source: torch.Tensor  # (B, 3, H, W) float in [0, 1]
    source_labels: torch.Tensor  # (B, H, W) long train ids, IGNORE where unlabelled
    target: torch.Tensor | None = None  # (B, 3, H, W) float in [0, 1]
    pseudo_labels: torch.Tensor | None = None  # (B, H, W) long, offline (self-training)
    target_labels: torch.Tensor | None = None  # (B, H, W) long, diagnosis only, never trained on

    @classmethod
    def from_loaders(cls, source: dict, target: dict | None, device: torch.device) -> Batch:
        """Move a source batch (and a target batch) from the DataLoader to ``device``.

        Images travel as uint8 and become floats on the device; a self-training target batch
        carries (B, 2, H, W) labels: the offline pseudo-label, then the true label or IGNORE.
        """
        def image(batch: dict) -> torch.Tensor:
            return batch["image"].to(device, non_blocking=True).float() / 255.0

        out = cls(image(source), source["label"].to(device, non_blocking=True).long())
        if target is not None:
            out.target = image(target)
            labels = target["label"].to(device, non_blocking=True).long()
            if labels.dim() == 4:  # (B, 2, H, W): pseudo-label, true label
                out.pseudo_labels, out.target_labels = labels[:, 0], labels[:, 1]
        return out


@dataclass
class StepSetup:
    """What a step needs besides its batch: built once by the loop."""

    cfg: Config
    student: nn.Module  # the module the training forward runs through (DDP / compiled)
    teacher: nn.Module | None  # the EMA teacher's module (SymKD stages)
    forward: Precision  # runs a model under autocast / channels_last, float32 outputs
    augment: PhotometricAugment
    translator: Translator | None  # G of the cross-domain mixture; None: no mixture
    mix_generator: torch.Generator  # class-mix draws, on the batch's device
    dist: Distributed
    mean: torch.Tensor = field(init=False)  # (3,) on the device, made once
    std: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        device = self.mix_generator.device
        self.mean = torch.tensor(self.cfg.data.mean, device=device)
        self.std = torch.tensor(self.cfg.data.std, device=device)

    def run(self, model: nn.Module, images: torch.Tensor):
        """``model`` on [0, 1] images: normalised, under the precision settings."""
        return self.forward(model, normalize(images, self.mean, self.std))

    def ce(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """CE over the valid pixels of the global batch (as one process would take it)."""
        ignore = self.cfg.method.ignore_index
        return self.dist.global_mean(segmentation_ce(logits, labels, ignore),
                                     (labels != ignore).sum())

    def class_mix_mask(self, labels: torch.Tensor) -> torch.Tensor:
        return class_mix_mask(labels, self.mix_generator, self.cfg.method.ignore_index,
                              self.cfg.num_classes, self.cfg.method.mix_draw_ignore)


@dataclass
class StepOutput:
    """A step's loss to backpropagate, its values to log and its views to draw."""

    loss: torch.Tensor
    logs: dict[str, LogValue]
    visuals: dict[str, torch.Tensor] = field(default_factory=dict)  # columns of the grid
    source_logits: torch.Tensor | None = None  # (B, C, H, W) student on the clean source


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Logits to the crop size before any loss (bilinear, align_corners=True)."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


def downsample_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Label maps (B, H, W) to feature resolution, by nearest neighbour."""
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def source_step(s: StepSetup, batch: Batch) -> StepOutput:
    """Source-only: supervised CE on the clean source view (the baseline, ablation)."""
    crop = tuple(batch.source_labels.shape[-2:])
    out = s.run(s.student, batch.source)
    z_s = upsample(out.logits, crop)
    ce = s.ce(z_s, batch.source_labels)
    loss = s.cfg.warmup.ce_weight * ce
    logs: dict[str, LogValue] = {"ce": ce}
    if out.aux is not None:  # a head's auxiliary logits (OCR): their own CE
        logs["aux"] = s.ce(upsample(out.aux, crop), batch.source_labels)
        loss = loss + s.cfg.model.aux_weight * s.cfg.warmup.ce_weight * logs["aux"]
    return StepOutput(loss, logs, {"source": batch.source}, z_s)


def warmup_step(s: StepSetup, batch: Batch) -> StepOutput:
    """Stage 1 (METHOD, warm-up): SymKD across the clean and the cross-domain-mixed view."""
    w = s.cfg.warmup
    # 1-2. The second view: augmented source classes pasted into a target-looking rendering of
    # the same image (cross-domain mixture), so the student must agree with the teacher across
    # domains, not only across photometric changes.
    second, visuals = second_view(s, batch, w.beta)
    views = torch.cat([batch.source, second])  # (2B, 3, H, W): [clean; mixed]

    # 3. Student and teacher (no gradient) on both views.
    out_s = s.run(s.student, views)
    with torch.no_grad():
        out_t = s.run(s.teacher, views)

    # 4. CE keeps the source labels in the loop; L_kd teaches each view by the other's teacher.
    ce, kd, z_s = source_losses(s, batch, out_s.logits, out_t.logits)
    loss = w.ce_weight * ce + w.kd_weight * kd
    logs: dict[str, LogValue] = {"ce": ce, "kd": kd}
    if out_s.aux is not None:  # the auxiliary logits (OCR) take the same two terms
        aux_ce, aux_kd, _ = source_losses(s, batch, out_s.aux, out_t.aux)
        logs["aux"] = w.ce_weight * aux_ce + w.kd_weight * aux_kd
        loss = loss + s.cfg.model.aux_weight * logs["aux"]
    return StepOutput(loss, logs, visuals, z_s)


def selftrain_step(s: StepSetup, batch: Batch,
                   centroids: torch.Tensor) -> tuple[StepOutput, torch.Tensor]:
    """Stage 2 (METHOD, self-training): the warm-up's source branch plus the target branch with
    threshold-free pseudo-label selection; returns the step and the updated centroids."""
    cfg, st = s.cfg, s.cfg.selftrain
    ignore, b = cfg.method.ignore_index, batch.source.shape[0]
    two_b = 2 * b

    # 1. Source branch inputs, exactly as in warm-up (beta of self-training).
    second, visuals = second_view(s, batch, st.beta)
    views = torch.cat([batch.source, second])  # (2B, ...)
    # 4 (its image). DACS-style class mix: source classes pasted onto an augmented target image.
    cm_mask = s.class_mix_mask(batch.source_labels)
    x_cm = mix(cm_mask, batch.source, s.augment(batch.target, st.beta))

    # One student pass over [views; x_cm]. The teacher over the views, and on the clean target
    # batch for the selection: in a pass of its own (its BN, in batch-statistics mode, sees
    # target statistics only, as the reference) or in one pass with the views.
    out_s = s.run(s.student, torch.cat([views, x_cm]))
    with torch.no_grad():
        if st.teacher_target_pass == "separate":
            out_t, out_tt = s.run(s.teacher, views), s.run(s.teacher, batch.target)
        else:
            joint = s.run(s.teacher, torch.cat([views, batch.target]))

            def rows(part: slice) -> SegOutput:  # logits, features and aux of those images
                return SegOutput(*(None if t is None else t[part] for t in joint))

            out_t, out_tt = rows(slice(None, two_b)), rows(slice(two_b, None))
    ce, kd, z_s = source_losses(s, batch, out_s.logits[:two_b], out_t.logits)

    # 2. Threshold-free selection: keep a pseudo-label only where the class of the nearest
    # centroid of the teacher's feature agrees (bilateral consensus).
    p_raw = batch.pseudo_labels
    feats_t, logits_t = out_tt.features, out_tt.logits  # teacher on x_t
    if st.selection == "consensus":
        p = consensus_pseudo_labels(p_raw, feats_t, centroids, ignore)
    elif st.selection == "threshold":  # ablation
        confident = threshold_pseudo_labels(upsample(logits_t, tuple(p_raw.shape[-2:])),
                                            st.threshold, ignore)
        p = torch.where(confident == ignore, torch.full_like(p_raw, ignore), p_raw)
    else:  # argmax: every offline pseudo-label (ablation)
        p = p_raw

    # 3. Online centroid update from pixels where the labels and the teacher agree, on the
    # target images and on the source's mixed views (labels at feature resolution), from the
    # global batch, so the centroids stay equal on every rank.
    fsize = tuple(feats_t.shape[-2:])
    p_small, y_small = downsample_labels(p, fsize), downsample_labels(batch.source_labels, fsize)
    agree_t = torch.where(p_small == logits_t.argmax(1), p_small, ignore)
    agree_s = torch.where(y_small == out_t.logits[b:].argmax(1), y_small, ignore)
    feats, agree = torch.cat([feats_t, out_t.features[b:]]), torch.cat([agree_t, agree_s])
    if st.centroid_update == "per_image":  # one update per (image, class): targets, then sources
        means, valid = per_image_class_means(feats, agree, cfg.num_classes, ignore, st.min_pixels)
        means = torch.cat([s.dist.gather_batch(means[:b]), s.dist.gather_batch(means[b:])])
        valid = torch.cat([s.dist.gather_batch(valid[:b]), s.dist.gather_batch(valid[b:])])
        centroids = update_centroids_per_image(centroids, means, valid, st.centroid_momentum)
    else:  # pooled: one update with each class's mean over the global batch's pixels
        sums, counts = class_feature_sums(feats, agree, cfg.num_classes, ignore)
        sums, counts = s.dist.all_reduce_sum(sums), s.dist.all_reduce_sum(counts)
        centroids = update_centroids(centroids, sums, counts, st.centroid_momentum,
                                     st.min_pixels)

    # 4 (its labels) and 5. CE on the class-mixed image: the source label where pasted, the
    # selected pseudo-label elsewhere; L = CE + CE_mix + kd_weight * L_kd.
    y_cm = mix(cm_mask, batch.source_labels, p)
    ce_mix = s.ce(upsample(out_s.logits[two_b:], tuple(y_cm.shape[-2:])), y_cm)
    loss = st.ce_weight * ce + st.mix_weight * ce_mix + st.kd_weight * kd
    logs = {"ce": ce, "kd": kd, "ce_mix": ce_mix,
            **selection_stats(p_raw, p, batch.target_labels, ignore)}
    if out_s.aux is not None:  # the auxiliary logits (OCR) take the same three terms
        aux_ce, aux_kd, _ = source_losses(s, batch, out_s.aux[:two_b], out_t.aux)
        aux_mix = s.ce(upsample(out_s.aux[two_b:], tuple(y_cm.shape[-2:])), y_cm)
        logs["aux"] = st.ce_weight * aux_ce + st.mix_weight * aux_mix + st.kd_weight * aux_kd
        loss = loss + cfg.model.aux_weight * logs["aux"]
    visuals.update(target=batch.target, class_mix=x_cm, pseudo=p_raw, selected=p)
    return StepOutput(loss, logs, visuals, z_s), centroids


def second_view(s: StepSetup, batch: Batch, beta: float) -> tuple[torch.Tensor, dict]:
    """The warm-up's second view and the grid columns that show how it was made.

    With a translator: ``M * aug(x_s) + (1 - M) * G(x_s)``, M the class-mix mask of y_s
    (cross-domain mixture); without (ablation): ``aug(x_s)``.
    """
    x_aug = s.augment(batch.source, beta)
    if s.translator is None:
        return x_aug, {"source": batch.source, "augmented": x_aug}
    with torch.no_grad():
        x_g = s.translator(batch.source, batch.target)
    mixed = mix(s.class_mix_mask(batch.source_labels), x_aug, x_g)
    return mixed, {"source": batch.source, "augmented": x_aug, "translated": x_g, "mixed": mixed}


def source_losses(s: StepSetup, batch: Batch, student_logits: torch.Tensor,
                  teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CE on the clean source view and L_kd over [clean; second] (2B each, feature resolution).

    Returns ``(ce, kd, z_s)``: z_s the student's clean-view logits at the crop size. Under DDP
    the CE mean is over the valid pixels of the global batch.
    """
    crop = tuple(batch.source_labels.shape[-2:])
    b = batch.source.shape[0]
    z_s, z_t = upsample(student_logits, crop), upsample(teacher_logits, crop)
    ce = s.ce(z_s[:b], batch.source_labels)
    kd = symmetric_distillation(z_t, z_s, s.cfg.method.sym_weight)
    return ce, kd, z_s[:b]


def selection_stats(p_raw: torch.Tensor, p_sel: torch.Tensor, truth: torch.Tensor | None,
                    ignore: int) -> dict[str, LogValue]:
    """The share of pseudo-labelled pixels that selection keeps, and, where the target train
    split has labels (diagnosis only), their accuracy before and after it."""
    raw = p_raw != ignore
    kept = (p_sel != ignore) & raw
    stats: dict[str, LogValue] = {"kept": (kept.sum(), raw.sum())}
    if truth is not None:
        known = truth != ignore
        stats["pl_acc_raw"] = (((p_raw == truth) & known & raw).sum(), (known & raw).sum())
        stats["pl_acc_kept"] = (((p_sel == truth) & known & kept).sum(), (known & kept).sum())
    return stats


def read_logs(logs: dict[str, LogValue], dist: Distributed) -> dict[str, float]:
    """The logged values as numbers: one reduction over ranks and one copy to the host.

    Tensors are averaged over ranks; (numerator, denominator) pairs are summed over ranks and
    divided, and left out where the denominator is 0 (e.g. no labelled target pixel).
    """
    pairs = [v if isinstance(v, tuple) else (v, torch.ones_like(v)) for v in logs.values()]
    table = torch.stack([torch.stack([n.detach().double(), d.detach().double()])
                         for n, d in pairs])  # (K, 2)
    rows = dist.all_reduce_sum(table).tolist()
    return {k: n / d for k, (n, d) in zip(logs, rows, strict=True) if d > 0}
