"""Several labelled datasets scored in one ``diga eval``: a row each and their mean, as the
domain-generalisation table of the paper (GTA5 -> Cityscapes, BDD100K, Mapillary).

The datasets are ``eval.targets`` (a list of domains like ``data.target``, each with a
``name``), or ``--target`` specs on the command line, which replace it:
``[NAME=]KIND:ROOT[,resize=HxW][,val_split=SPLIT]``. Each target is scored exactly as
``data.target`` is: ``target_config`` gives the run's config with ``data.target`` set to it, so
its val split, its ``resize`` (the run size, the 1x scale of ``eval.scales``; none: each
image's own size) and its label protocol drive the evaluation. No torch here: exported files
are scored by the runtime.

The paper's table (``evaluate_val.py`` of the reference) runs each dataset at its full size and
at half, logits max-fused: here ``resize`` at half the size with ``eval.scales=[2.0, 1.0]``
(Cityscapes 512x1024, BDD100K 360x640, Mapillary 540x960). Mapillary's images have many sizes
and aspect ratios; the reference resizes every one to 1080x1920 (aspect changed) and so does a
fixed ``resize`` here, but predictions are scored against the labels at their own size
(logits upsampled to them, as for every dataset), where the reference scores labels resized to
1080x1920 by nearest neighbour: the same pixels up to that resampling, each image weighted by
its own pixel count.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from diga.config import Config, DomainData, build_config
from diga.config.schema import EvalTarget
from diga.errors import UserError

# every layout but ``none`` (no dataset: domain generalisation's target)
KINDS = tuple(k for k in get_args(DomainData.model_fields["kind"].annotation) if k != "none")
OPTIONS = ("resize", "val_split")
FORM = "[NAME=]KIND:ROOT[,resize=HxW][,val_split=SPLIT]"
EXAMPLE = "--target bdd100k:/data/bdd100k,resize=360x640"
# where a layout keeps its labels: the hint when a target's val split has none
LABELS = {"cityscapes": "gtFine/<split>/<city>/*_gtFine_labelIds.png",
          "bdd100k": "labels/sem_seg/masks/<split>/*.png",
          "mapillary": "<split>/labels/*.png (v1.2) or <split>/v2.0/labels/*.png",
          "gta5": "labels/*.png", "synthia": "GT/LABELS/*.png", "folder": "labels/[<split>/]*.png"}


def parse_target(spec: str) -> EvalTarget:
    """``[NAME=]KIND:ROOT[,resize=HxW][,val_split=SPLIT]`` (or ``builtin``) -> a target.

    Raises:
        UserError: not of that form, an unknown kind or option, an invalid size.
    """
    def bad(what: str) -> UserError:
        return UserError(f"--target '{spec}': {what}", f"write it as {FORM}, e.g. {EXAMPLE}")

    head, colon, rest = spec.partition(":")
    name, eq, kind = head.partition("=")
    if not eq:
        name, kind = "", head
    kind, name = kind.strip(), name.strip()
    if kind not in KINDS:
        raise bad(f"unknown dataset kind '{kind}' (known: {', '.join(KINDS)})")
    parts = rest.split(",")
    root_parts = [parts[0], *[p for p in parts[1:] if not re.match(r"^\w+=", p)]]
    entry: dict[str, Any] = {"kind": kind, "name": name or None}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep and re.match(r"^\w+$", key):
            if key not in OPTIONS:
                raise bad(f"unknown option '{key}' (options: {', '.join(OPTIONS)})")
            entry[key] = value
    root = ",".join(root_parts).strip()
    if kind != "builtin" and (not colon or not root):
        raise bad(f"no dataset folder for the {kind} target")
    entry["root"] = root or None
    try:
        return EvalTarget.model_validate(entry)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise bad(f"{'.'.join(map(str, err['loc']))}: "
                  f"{err['msg'].removeprefix('Value error, ')}") from None


def target_name(target: EvalTarget) -> str:
    return target.name or target.kind


def target_config(cfg: Config, target: EvalTarget) -> Config:
    """``cfg`` with ``data.target`` set to ``target`` (and no ``eval.targets``)."""
    data = cfg.to_dict()
    data["data"]["target"] = target.model_dump(mode="json", exclude={"name"})
    data["eval"]["targets"] = []
    return build_config(data, f"target '{target_name(target)}'")


def eval_targets(cfg: Config, specs: list[str] | None = None) -> list[tuple[str, Config]]:
    """(name, config scoring it) for each target: the ``--target`` ``specs`` where given, else
    ``eval.targets``; [] where neither (``data.target`` alone, as ever). Every target is
    checked (``check_target``) before any is scored.

    Raises:
        UserError: a malformed spec, two targets of one name, a target without its folder,
            images or labels (naming the target).
    """
    targets = [parse_target(s) for s in specs] if specs else list(cfg.eval.targets)
    names = [target_name(t) for t in targets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"two eval targets are named '{twice[0]}'",
                        "name them: --target NAME=KIND:ROOT (or eval.targets[i].name)")
    out = [(name, target_config(cfg, t)) for name, t in zip(names, targets, strict=True)]
    for name, target_cfg in out:
        check_target(name, target_cfg.data.target)
    return out


def check_target(name: str, target: DomainData) -> None:
    """A target's val split exists, has images and every image its label.

    Raises:
        UserError: naming the target, what is missing and where.
    """
    from diga.data.layouts import find_samples

    if target.kind == "builtin":
        return
    where = f"target '{name}'"
    if target.root is None:
        raise UserError(f"{where} ({target.kind}) has no dataset folder",
                        f"give it one: --target {name}={target.kind}:ROOT")
    samples = find_samples(target.kind, Path(target.root), target.val_split, where)
    if not samples:
        raise UserError(f"{where}: split '{target.val_split}' of {target.kind} at {target.root} "
                        "is empty", "check the folder and the split name (val_split)")
    unlabelled = [s for s in samples if s.label is None]
    if unlabelled:
        raise UserError(
            f"{where}: {len(unlabelled)} of {len(samples)} images of split "
            f"'{target.val_split}' at {target.root} have no label (e.g. {unlabelled[0].name})",
            f"evaluation needs every label: {LABELS.get(target.kind, 'labels')} under the root")


def run_size(resize: tuple[int, int] | None) -> str:
    return f"{resize[0]}x{resize[1]}" if resize else "each image's own size"


def summarise(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The mean over targets of the mIoU (and of the single-scale mIoU, and of every scored
    protocol's mIoU, where the results have them): the table's last row."""
    def mean(values: list[float]) -> float:
        finite = [v for v in values if v is not None and not math.isnan(v)]
        return sum(finite) / len(finite) if len(finite) == len(values) and finite else math.nan

    rows = list(results.values())
    out: dict[str, Any] = {"mean_miou": mean([r["miou"] for r in rows])}
    if all("single_scale" in r for r in rows):
        out["mean_single_scale_miou"] = mean([r["single_scale"]["miou"] for r in rows])
    if all("class_protocols" in r for r in rows):
        out["mean_miou_by_classes"] = {
            n: mean([r["class_protocols"][n]["miou"] for r in rows])
            for n in rows[0]["class_protocols"]}
    return out
