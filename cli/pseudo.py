"""``diga pseudo RUN`` and ``diga centroids RUN``: inputs of self-training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress

from diga.cli.common import Overrides, console

Run = Annotated[Path, typer.Argument(help="A warm-up (or self-training) run directory.")]


def _load(run: Path, overrides: list[str] | None):
    from diga.checkpoint import load_model
    from diga.cli.train import load_config_from
    from diga.device import select_device

    model, cfg, ckpt = load_model(run, "cpu")
    cfg = load_config_from(cfg, overrides or [])
    device = select_device(cfg.run.device)
    return model.to(device), cfg, ckpt, device


def pseudo_command(
    run: Run,
    overrides: Overrides = None,
    out: Annotated[Path | None, typer.Option("--out", help="Folder (default RUN/pseudo).")] = None,
) -> None:
    """Pseudo-labels for the whole target train split: full + 0.5x scale logits, max-fused,
    argmax; no threshold. Written as train-id PNGs with a manifest.

    Example: diga pseudo runs/warmup
    """
    from diga.data.datasets import build_dataset
    from diga.train.pseudo import make_pseudo_labels

    model, cfg, ckpt, device = _load(run, overrides)
    folder = out or (run if (run / "checkpoints").is_dir() else ckpt.folder.parent.parent) / "pseudo"
    total = len(build_dataset(cfg, "target", "train", train=False))
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("pseudo-labels", total=total)
        manifest = make_pseudo_labels(model, cfg, ckpt, folder, device,
                                      progress=lambda i, n: bar.update(task, completed=i))
    console.print(f"[green]wrote[/] {manifest['dataset']['images']} pseudo-labels to {folder} "
                  f"({manifest['seconds']:.1f} s)")


def centroids_command(
    run: Run,
    overrides: Overrides = None,
    out: Annotated[Path | None, typer.Option("--out", help="File (default RUN/centroids.safetensors).")] = None,
) -> None:
    """Class centroids of the model's features on the target train split.

    Example: diga centroids runs/warmup
    """
    from diga.data.datasets import build_dataset
    from diga.train.pseudo import CENTROIDS_FILE, make_centroids

    model, cfg, ckpt, device = _load(run, overrides)
    path = out or (run if (run / "checkpoints").is_dir() else ckpt.folder.parent.parent) / CENTROIDS_FILE
    total = len(build_dataset(cfg, "target", "train", train=False))
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("centroids", total=total)
        centroids = make_centroids(model, cfg, path, device,
                                   progress=lambda i, n: bar.update(task, completed=i))
    console.print(f"[green]wrote[/] {tuple(centroids.shape)} centroids to {path}")


def register(app: typer.Typer) -> None:
    app.command("pseudo")(pseudo_command)
    app.command("centroids")(centroids_command)
