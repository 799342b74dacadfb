"""``diga config show`` / ``diga config keys`` and the key records behind them (no training)."""

from __future__ import annotations

import io
import re
from typing import Any

import yaml
from rich.console import Console
from typer.testing import CliRunner

from diga.cli.app import app
from diga.cli.config import _keys_table
from diga.config import Config, load_config
from diga.config.keys import ConfigKey, config_keys, keys_with_prefix, markdown_table

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def leaf_paths(data: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted paths of a config dict's values; a list of sections' first item as ``key[].x``."""
    out: set[str] = set()
    for key, value in data.items():
        if isinstance(value, dict):
            out |= leaf_paths(value, f"{prefix}{key}.")
            continue
        out.add(f"{prefix}{key}")
        if isinstance(value, list) and value and isinstance(value[0], dict):
            out |= leaf_paths(value[0], f"{prefix}{key}[].")
    return out


def listed_keys(output: str) -> list[str]:
    """The key column of the rich table: each row's first token (continuations are indented)."""
    return [m for m in re.findall(r"^(\S+)", output, re.M) if m != "key" and "─" not in m]


def by_key() -> dict[str, ConfigKey]:
    return {k.key: k for k in config_keys()}


def test_show_prints_the_resolved_config_as_yaml():
    result = run("config", "show", "demo", "train.steps=7")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout) == load_config("demo", ["train.steps=7"]).to_dict()


def test_show_bad_key_is_one_line():
    line = one_error_line(run("config", "show", "demo", "train.stpes=3"))
    assert "did you mean 'train.steps'" in line


def test_every_leaf_key_has_a_record_with_a_meaning():
    """A new field without an attribute docstring fails here."""
    keys = config_keys()
    with_target = Config.model_validate({"eval": {"targets": [{}]}}).to_dict()
    assert [k.key for k in keys] == list(dict.fromkeys(k.key for k in keys))  # no duplicates
    assert {k.key for k in keys} == leaf_paths(with_target)
    assert leaf_paths(Config().to_dict()) <= {k.key for k in keys}
    missing = [k.key for k in keys if not k.meaning.strip() or not k.type or not k.default]
    assert not missing, f"keys without a meaning (attribute docstring), type or default: {missing}"
    assert all("\n" not in k.meaning for k in keys)


def test_keys_command_lists_every_key():
    result = run("config", "keys")
    assert result.exit_code == 0, result.output
    assert listed_keys(result.stdout) == [k.key for k in config_keys()]


def test_types_and_defaults_of_known_keys():
    keys = by_key()
    assert (keys["train.optim.lr"].type, keys["train.optim.lr"].default) == ("float > 0", "0.00025")
    assert keys["warmup.translator"].type == "one of: fda, learned, none"
    assert (keys["train.crop"].type, keys["train.crop"].default) == ("HxW size", "512x896")
    assert (keys["train.steps"].type, keys["train.steps"].default) == ("int >= 1", "40000")
    assert keys["method.augment.jitter_p"].type == "float in [0, 1]"
    assert keys["train.optim.momentum"].type == "float in [0, 1)"
    assert (keys["selftrain.steps"].type, keys["selftrain.steps"].default) == ("int >= 1 or null",
                                                                              "null")
    assert keys["selftrain.teacher_bn"].type == "one of: student, eval, null"
    assert (keys["data.target.resize"].type, keys["data.target.resize"].default) == (
        "HxW size or null", "null")
    assert (keys["selftrain.init"].type, keys["pseudo.scales"].type) == ("path or null",
                                                                         "list of float")
    assert keys["pseudo.scales"].default == "[1.0, 0.5]"
    assert keys["run.amp"].default == "'off'"  # as YAML must write it (a bare off is false)
    assert keys["eval.targets"].type == "list of sections"
    assert keys["eval.targets[].kind"].default == "builtin"
    assert keys["train.optim.lr"].meaning.startswith("Learning rate")
    assert keys["train.optim.lr"].meaning.endswith(".")  # one sentence, the rest in description
    assert keys["method.teacher_dropout"].description.startswith(keys["method.teacher_dropout"]
                                                                 .meaning[:-1])


def test_keys_command_shows_type_default_and_meaning():
    result = run("config", "keys", "train.optim.lr")
    assert result.exit_code == 0, result.output
    assert listed_keys(result.stdout) == ["train.optim.lr"]
    for text in ("float > 0", "0.00025", "Learning rate"):
        assert text in result.stdout


def test_prefix_filter():
    result = run("config", "keys", "train.optim")
    assert result.exit_code == 0, result.output
    assert listed_keys(result.stdout) == [f"train.optim.{name}" for name in (
        "name", "lr", "head_lr_mult", "momentum", "weight_decay", "poly_power", "warmup_steps")]
    selftrain = [k.key for k in keys_with_prefix("selftrain")]
    assert selftrain and all(k.startswith("selftrain.") for k in selftrain)
    assert "selftrain.steps" in selftrain and "train.steps" not in selftrain
    assert [k.key for k in keys_with_prefix("eval.targets")][:2] == ["eval.targets",
                                                                     "eval.targets[].kind"]


def test_unknown_prefix_is_one_line_with_the_sections():
    line = one_error_line(run("config", "keys", "selftrian"))
    assert "no config key starts with 'selftrian'" in line
    assert "did you mean 'selftrain'?" in line
    assert "run, data, model, train" in line


def test_markdown_table():
    result = run("config", "keys", "--markdown")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "| key | type | default | meaning |"
    assert lines[1] == "| --- | --- | --- | --- |"
    assert len(lines) == 2 + len(config_keys())
    for line in lines:
        assert line.startswith("| ") and line.endswith(" |"), line
        assert len(re.findall(r"(?<!\\)\|", line)) == 5, line  # 4 cells; escaped pipes inside
    assert "| `train.crop` | HxW size | `512x896` |" in result.stdout
    assert r"float \> 0" in result.stdout  # no stray HTML or emphasis
    assert markdown_table(keys_with_prefix("train.optim.lr")).count("\n") == 3


def render(keys: list[ConfigKey], width: int) -> list[str]:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(_keys_table(keys, width))
    return console.file.getvalue().splitlines()


def test_table_fits_80_columns_and_spreads_out_when_wider():
    for prefix in ("", "selftrain", "train.optim"):
        keys = keys_with_prefix(prefix)
        narrow = render(keys, 80)
        assert max(len(line.rstrip()) for line in narrow) <= 80
        assert listed_keys("\n".join(narrow)) == [k.key for k in keys]
    wide = render(keys_with_prefix("train.optim"), 160)
    assert wide[0].split() == ["key", "type", "default", "meaning"]
    assert any(line.split()[:4] == ["train.optim.lr", "float", ">", "0"] for line in wide)
