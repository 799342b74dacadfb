"""``diga config show`` and ``diga config keys``: the resolved config, and what every key means."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from diga.cli.common import ConfigArgs, console, split_config_args

if TYPE_CHECKING:
    from rich.table import Table

    from diga.config.keys import ConfigKey

_TYPE_WIDTH = 30  # longer types wrap (the dataset kinds' eight choices)
_MEANING_WIDTH = 36  # the narrowest meaning column of the four-column table

app = typer.Typer(help="Inspect configs: the resolved config a command would run with, and every "
                  "key's type, default and meaning.\n\nExamples:\n  diga config show demo "
                  "train.steps=100\n  diga config keys selftrain", no_args_is_help=True)


@app.command("show")
def show(args: ConfigArgs = None) -> None:
    """Print the resolved config as YAML: CONFIG with the overrides applied and validated.

    This is the config.yaml a training run would save. Plain text on stdout, to redirect
    into a file that is then a CONFIG itself.

    Examples:
      diga config show gta2cs-deeplabv2 train.steps=1000
      diga config show demo > my.yaml
    """
    from diga.config import load_config

    config, overrides = split_config_args(args)
    typer.echo(load_config(config, overrides).to_yaml(), nl=False)  # no rich: YAML as is


@app.command("keys")
def keys(
    prefix: Annotated[str, typer.Argument(help="Only keys starting with this: a section "
                                          "(selftrain), a subsection (train.optim) or a part "
                                          "of a name (export.trt_).",
                                          show_default=False)] = "",
    markdown: Annotated[bool, typer.Option("--markdown", help="A Markdown table instead (for "
                                           "docs).")] = False,
) -> None:
    """List the config keys: type, default and meaning of each.

    Meanings are the schema's own field docstrings; defaults are the schema's (a preset sets
    some others: diga config show PRESET).

    Examples:
      diga config keys selftrain
      diga config keys train.optim
      diga config keys --markdown > config-keys.md
    """
    from diga.config.keys import keys_with_prefix, markdown_table

    found = keys_with_prefix(prefix)
    if markdown:
        typer.echo(markdown_table(found), nl=False)
        return
    console.print(_keys_table(found, console.width))


def _keys_table(found: list[ConfigKey], width: int) -> Table:
    """Four columns (key, type, default, meaning) where the meaning gets room to read; on a
    narrower terminal (80 columns and a long key) type and default go above the meaning in one
    column, rather than wrapping the meaning a few words a line."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("key", style="cyan", no_wrap=True)
    type_width = min(max(len(k.type) for k in found), _TYPE_WIDTH)
    widths = (max(len(k.key) for k in found), type_width, max(len(k.default) for k in found))
    if sum(widths) + 3 * 3 + _MEANING_WIDTH <= width:
        table.add_column("type", max_width=_TYPE_WIDTH)
        table.add_column("default")
        table.add_column("meaning")
        for k in found:  # Text: "[0, 1]" and the like are no markup
            table.add_row(Text(k.key), Text(k.type), Text(k.default), Text(k.meaning))
        return table
    table.add_column("type, default and meaning")
    room = width - widths[0] - 3
    for k in found:  # the default on the type's line where it fits, never split from its label
        gap = "  " if len(f"{k.type}  default {k.default}") <= room else "\n"
        table.add_row(Text(k.key), Text.assemble(k.type, gap, ("default ", "dim"), k.default,
                                                 "\n", k.meaning))
    return table
