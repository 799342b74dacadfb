"""``diga data make-demo`` and ``diga data check``."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from diga.cli.common import ConfigArgs, console, split_config_args

app = typer.Typer(help="Datasets: write the built-in benchmark to disk, check dataset folders."
                  "\n\nExample:\n  diga data check gta2cs-deeplabv2 data.source.root=/data/GTA5",
                  no_args_is_help=True)


@app.command("make-demo")
def make_demo(
    out: Annotated[Path, typer.Argument(help="An empty or new folder.")],
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
    size: Annotated[str, typer.Option(help="Target (Cityscapes layout) image size HxW; the "
                                      "sources take its width at their datasets' aspect "
                                      "ratios.")] = "128x256",
    source_train: Annotated[int, typer.Option(min=1)] = 400,
    target_train: Annotated[int, typer.Option(min=1)] = 400,
    target_val: Annotated[int, typer.Option(min=1)] = 100,
    dg: Annotated[bool, typer.Option(
        "--dg/--no-dg", help="Also write other target-domain scenes in the BDD100K and "
        "Mapillary Vistas layouts (val: --target-val images, train as many), the unseen "
        "targets of the domain-generalisation benchmark.")] = True,
) -> None:
    """Write the built-in benchmark in the real datasets' layouts.

    The source domain in the GTA5 and SYNTHIA-RAND-CITYSCAPES layouts, the target domain in
    the Cityscapes layout and (--dg) the BDD100K and Mapillary Vistas v1.2 layouts, at the
    real datasets' aspect ratios: the real loaders, the paper presets and a multi-target
    'diga eval --target' can be tried on it.

    Examples:
      diga data make-demo /tmp/d
      diga data check gta2cs-deeplabv2 data.source.root=/tmp/d/gta5 \\
        data.target.root=/tmp/d/cityscapes
    """
    from rich.progress import Progress

    from diga.config import parse_size
    from diga.data.builtin import BuiltinSpec, write_demo
    from diga.errors import UserError

    try:
        hw = parse_size(size)
    except ValueError as exc:
        raise UserError(f"--size: {exc}", "write it as HxW, e.g. 128x256") from None
    spec = BuiltinSpec(seed, hw, source_train, target_train, target_val)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("writing", total=None)
        roots = write_demo(out, spec, progress=lambda i, n: bar.update(task, completed=i, total=n),
                           dg_targets=dg)
    from diga.data.builtin.files import layout_size

    for name, key, layout in (("GTA5", "source_root", "gta5"),
                              ("SYNTHIA-RAND-CITYSCAPES", "synthia_root", "synthia"),
                              ("Cityscapes", "target_root", "cityscapes"),
                              ("BDD100K", "bdd100k_root", "bdd100k"),
                              ("Mapillary Vistas v1.2", "mapillary_root", "mapillary")):
        if key not in roots:
            continue
        sizes = ({layout_size(layout, hw[1], i) for i in (0, 1)} if layout != "cityscapes"
                 else {hw})
        size = " and ".join(f"{h}x{w}" for h, w in sorted(sizes))
        role = "source" if layout in ("gta5", "synthia") else "target"
        console.print(f"[green]wrote[/] {role} ({name} layout, {size}): {roots[key]}")
    console.print(f"train with: data.source.kind=gta5 data.source.root={roots['source_root']} "
                  f"data.target.kind=cityscapes data.target.root={roots['target_root']}")
    if dg:
        console.print(f"score on every target: diga eval RUN --target cityscapes:"
                      f"{roots['target_root']} --target bdd100k:{roots['bdd100k_root']} "
                      f"--target mapillary:{roots['mapillary_root']}", soft_wrap=True)


@app.command("check")
def check(args: ConfigArgs = None) -> None:
    """Read every image and label of a config's datasets and report all problems at once.

    Missing or unreadable files, size mismatches, unknown label ids, empty splits; exit code 1
    when there are problems. A target split with no label at all (own camera images) is a note,
    not a problem: training and export need no target labels, only diga eval does.

    Example:
      diga data check gta2cs-deeplabv2 data.source.root=/data/GTA5 \\
        data.target.root=/data/cityscapes
    """
    from rich.progress import Progress

    from diga.config import load_config
    from diga.data.check import check_datasets, format_reports

    config, overrides = split_config_args(args)
    cfg = load_config(config, overrides)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("checking", total=None)
        reports = check_datasets(
            cfg, progress=lambda name, i, n: bar.update(task, description=name, completed=i, total=n))
    text, problems = format_reports(reports)
    console.print(text, highlight=False, markup=False, soft_wrap=True)  # a line per problem
    if problems:
        console.print(f"[red]{problems} problem(s) found[/]")
        raise typer.Exit(1)
    console.print("[green]all datasets readable[/]")
    given = shlex.join(args or [])
    console.print(f"next: diga run {given} --out runs/job  (or stage by stage: diga train "
                  f"warmup {given} --out runs/warmup)", highlight=False, markup=False,
                  soft_wrap=True)
