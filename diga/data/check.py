"""``diga data check``: every problem of a config's datasets in one report, without training."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from diga.config import Config
from diga.data.classes import class_protocol
from diga.data.layouts import LabelDecoder, _read_raw_label, find_samples, read_image
from diga.errors import UserError


@dataclass
class SplitReport:
    name: str  # e.g. "source train (gta5)"
    root: str
    images: int = 0
    labelled: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth knowing, not a problem


# why a split without any label is fine, by (domain, role): a note, not a problem
UNLABELLED_OK = {
    ("target", "train"): "normal for domain adaptation (no stage trains on target labels)",
    ("target", "val"): "training and export work; diga eval and the mIoU columns need labels",
}


def _splits(cfg: Config) -> list[tuple[str, str, str, str, object, bool]]:
    """(key, name, role, split name, domain config, labels required): the source train, target
    train and target val splits, and the val split of every ``eval.targets`` entry.

    Labels are required where every command reading the split needs them: the source (the
    supervised loss) and ``eval.targets`` (they exist to be scored). The target's are not:
    adaptation never reads its train labels, and without val labels training and export run,
    only scoring does not (``diga eval`` refuses that split itself, in one line)."""
    s, t = cfg.data.source, cfg.data.target
    out = [("data.source", "source", "train", s.train_split, s, True)]
    if t.kind != "none":  # none: domain generalisation, no target images
        out += [("data.target", "target", "train", t.train_split, t, False),
                ("data.target", "target", "val", t.val_split, t, False)]
    for i, e in enumerate(cfg.eval.targets):
        if e.root is None and e.kind != "builtin":  # a preset's protocol row, not given yet
            continue
        name = e.name or e.kind
        out.append((f"eval.targets[{i}]", f"eval target {name}", "val", e.val_split, e, True))
    return out


def check_datasets(cfg: Config, max_problems: int = 200,
                   progress: Callable[[str, int, int], None] | None = None) -> list[SplitReport]:
    """Read every image and label of the source train, target train and target val splits
    (and of the val split of each ``eval.targets`` entry).

    Reports missing or unreadable files, image/label size mismatches, unknown label ids and
    empty splits. Built-in splits are generated, so they are reported as such.
    """
    protocol = class_protocol(cfg.num_classes)
    reports = []
    for key, name, role, split, dom, need_labels in _splits(cfg):
        report = SplitReport(f"{name} {split} ({dom.kind})", str(dom.root or "built-in"))
        reports.append(report)
        if dom.kind == "builtin":
            from diga.data.builtin import BuiltinSpec

            b = cfg.data.builtin
            spec = BuiltinSpec(b.seed, tuple(b.size), b.source_train, b.target_train, b.target_val)
            domain = dom.builtin_domain or ("source" if key == "data.source" else "target")
            report.images = report.labelled = spec.count(domain, role)
            continue
        if dom.root is None:
            report.problems.append(f"{key}.root is not set")
            continue
        try:
            samples = find_samples(dom.kind, dom.root, split, f"{key}.root")
            decoder = LabelDecoder(dom.kind, protocol, root=dom.root, split=split,
                                   key=f"{key}.root")
        except UserError as exc:
            report.problems.append(str(exc))
            continue
        report.images = len(samples)
        if not samples:
            report.problems.append(f"split '{split}' is empty under {dom.root}")
            continue
        if not need_labels:
            if not any(s.label is not None and s.label.exists() for s in samples):
                report.notes.append(f"{name} {role} has no labels: {UNLABELLED_OK[name, role]}")
            elif role == "val":  # some labelled: the others are missing (a val split scores
                need_labels = True  # all its images or none)
        for i, sample in enumerate(samples):
            if progress is not None:
                progress(report.name, i + 1, len(samples))
            if len(report.problems) >= max_problems:
                report.problems.append(f"... stopped after {max_problems} problems")
                break
            try:
                image = read_image(sample.image)
            except UserError as exc:
                report.problems.append(exc.message)
                image = None
            if image is not None and (image.shape[0] == 0 or image.shape[1] == 0):
                report.problems.append(f"image {sample.image} is empty (0 pixels)")
            if sample.label is None or not sample.label.exists():
                if need_labels:
                    report.problems.append(f"label missing for {sample.image}"
                                           + (f" (expected {sample.label})" if sample.label else ""))
                continue
            try:
                raw = _read_raw_label(dom.kind, sample.label)
            except UserError as exc:
                report.problems.append(exc.message)
                continue
            report.labelled += 1
            if image is not None and raw.shape != image.shape[:2]:
                report.problems.append(f"label {sample.label} is {raw.shape[1]}x{raw.shape[0]}, its "
                                       f"image {image.shape[1]}x{image.shape[0]} (WxH)")
            bad = decoder.unknown_ids(np.asarray(raw))
            if bad:
                report.problems.append(f"label {sample.label} holds unknown ids {bad[:5]}")
    return reports


def format_reports(reports: list[SplitReport]) -> tuple[str, int]:
    """The report's text (a line per split, then its problems and notes) and the count of
    problems (notes are not)."""
    lines, total = [], 0
    for r in reports:
        lines.append(f"{r.name} at {r.root}: {r.images} images, {r.labelled} labelled, "
                     f"{len(r.problems)} problems")
        lines += [f"  - {p}" for p in r.problems]
        lines += [f"  note: {n}" for n in r.notes]
        total += len(r.problems)
    return "\n".join(lines), total

