"""``diga train translator``: the optional learned source-to-target translator (METHOD stage 0).

Registered on the ``diga train`` app by ``register``; it takes the training commands' options
and config handling (``diga.cli.common``), so the same ``[CONFIG] [key=value ...] [--out] [--resume] [--quiet]``.
"""

# No ``from __future__ import annotations`` here: the command is defined inside ``register`` and
# Typer must see its option types as objects, not as names to look up in this module.

from pathlib import Path

import typer

from diga.cli.common import ConfigArgs, Out, Quiet, Resume, console, stage_config


def run_translator_command(args: list[str] | None, out: Path | None, resume: bool,
                           quiet: bool) -> Path:
    """Load the config, prepare the run directory, train; returns the run directory."""
    import os

    from diga.errors import UserError
    from diga.train.distributed import launched_by_torchrun
    from diga.train.stages import default_run_dir, prepare_run_dir
    from diga.translator import train_translator

    if launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
        raise UserError("the translator trains in one process, not under torchrun",
                        "run 'diga train translator' without torchrun or --devices")
    cfg = stage_config(args, out, resume)
    run_dir = out or default_run_dir("translator")
    prepare_run_dir(run_dir, resume, "translator")
    train_translator(cfg, run_dir, resume=resume, show_progress=not quiet)
    console.print(f"[green]translator done[/]: {run_dir}")
    console.print(f"use it: diga train warmup ... warmup.translator=learned "
                  f"warmup.translator_path={run_dir}", highlight=False, soft_wrap=True)
    return run_dir


def register(train_app: typer.Typer) -> None:
    """Add ``translator`` to the ``diga train`` app."""

    @train_app.command("translator")
    def translator(args: ConfigArgs = None, out: Out = None, resume: Resume = False,
                   quiet: Quiet = False) -> None:
        """Optional learned translator G: source -> target (CycleGAN-style), frozen afterwards.

        The warm-up's default translator (fda) needs no training; this one does. Without
        translator.vgg_weights (torchvision's vgg16/vgg19 weights file) the perceptual term is
        left out with a warning.

        Examples:
          diga train translator demo translator.steps=500 --out runs/translator
          diga train warmup demo warmup.translator=learned \\
            warmup.translator_path=runs/translator
        """
        run_translator_command(args, out, resume, quiet)
