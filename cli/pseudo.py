"""``diga pseudo RUN`` and ``diga centroids RUN``: inputs of self-training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress

from diga.cli.common import Devices, Overrides, console, launch_on_devices

Run = Annotated[Path, typer.Argument(help="A warm-up (or self-training) run directory.")]


def _load(run: Path, overrides: list[str] | None):
    """Model, config, checkpoint and device; under torchrun this joins the job first."""
    from diga.checkpoint import load_model
    from diga.config import saved_config_with
    from diga.train.distributed import init_distributed

    model, saved, ckpt = load_model(run, "cpu")
    cfg = saved_config_with(saved, overrides, "run config")
    _same_classes(saved, cfg, ckpt)
    dist, device = init_distributed(cfg.run)
    return model.to(device), cfg, ckpt, device, dist


def _same_classes(saved, cfg, ckpt) -> None:
    """Pseudo-labels and centroids are in the model's own classes: no other data.classes."""
    from diga.protocols import model_classes, require_same_classes

    require_same_classes(model_classes(saved.num_classes), cfg.num_classes, str(ckpt.folder),
                         "pseudo-labels and centroids")


def _launch(verb: str, run: Path, overrides: list[str] | None, out: Path | None,
            devices: int) -> None:
    from diga.checkpoint import load_model
    from diga.config import saved_config_with

    _, saved, ckpt = load_model(run, "cpu")  # a clear error for a wrong RUN before any process starts
    cfg = saved_config_with(saved, overrides, "run config")
    _same_classes(saved, cfg, ckpt)
    launch_on_devices(devices, cfg.run, [verb, str(run), *(overrides or []),
                                         *(["--out", str(out)] if out is not None else [])])


def pseudo_command(
    run: Run,
    overrides: Overrides = None,
    out: Annotated[Path | None, typer.Option("--out", help="Folder (default RUN/pseudo).")] = None,
    devices: Devices = None,
) -> None:
    """Pseudo-labels for the whole target train split, with no threshold.

    Logits at each of pseudo.scales (full and 0.5x by default), max-fused, then the argmax.
    The model sees each image at the target resize; labels are stored at the image's own
    size, with a manifest naming the model. Under torchrun (or with --devices N) the images
    are sharded over the processes.

    Example:
      diga pseudo runs/warmup
    """
    from diga.train.distributed import destroy_distributed
    from diga.train.pseudo import make_pseudo_labels

    if devices is not None and devices > 1:
        _launch("pseudo", run, overrides, out, devices)
        return
    model, cfg, ckpt, device, dist = _load(run, overrides)
    folder = out or (run if (run / "checkpoints").is_dir() else ckpt.folder.parent.parent) / "pseudo"
    try:
        with Progress(console=console, transient=True, disable=not dist.is_main) as bar:
            task = bar.add_task("pseudo-labels (rank 0's share)" if dist.enabled else
                                "pseudo-labels", total=None)
            manifest = make_pseudo_labels(model, cfg, ckpt, folder, device,
                                          progress=lambda i, n: bar.update(task, completed=i,
                                                                           total=n))
    finally:
        destroy_distributed()
    if dist.is_main:
        console.print(f"[green]wrote[/] {manifest['dataset']['images']} pseudo-labels to {folder} "
                      f"({manifest['seconds']:.1f} s)")


def centroids_command(
    run: Run,
    overrides: Overrides = None,
    out: Annotated[Path | None, typer.Option("--out", help="File (default RUN/centroids.safetensors).")] = None,
    devices: Devices = None,
) -> None:
    """Class centroids of the model's features on the target train split.

    Under torchrun (or with --devices N) the images are sharded and the sums merged exactly.

    Example:
      diga centroids runs/warmup
    """
    from diga.train.distributed import destroy_distributed
    from diga.train.pseudo import CENTROIDS_FILE, make_centroids

    if devices is not None and devices > 1:
        _launch("centroids", run, overrides, out, devices)
        return
    model, cfg, ckpt, device, dist = _load(run, overrides)
    path = out or (run if (run / "checkpoints").is_dir() else ckpt.folder.parent.parent) / CENTROIDS_FILE
    try:
        with Progress(console=console, transient=True, disable=not dist.is_main) as bar:
            task = bar.add_task("centroids (rank 0's share)" if dist.enabled else "centroids",
                                total=None)
            centroids = make_centroids(model, cfg, ckpt, path, device,
                                       progress=lambda i, n: bar.update(task, completed=i, total=n))
    finally:
        destroy_distributed()
    if dist.is_main:
        console.print(f"[green]wrote[/] {tuple(centroids.shape)} centroids to {path}")


def register(app: typer.Typer) -> None:
    app.command("pseudo")(pseudo_command)
    app.command("centroids")(centroids_command)
