"""Loading a config: presets and YAML files, ``key.sub=value`` overrides, validation.

Unknown keys are rejected with a "did you mean"; the resolved config is saved in the run
directory and in every checkpoint, and reopened from there with overrides.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from diga.config.schema import PRESETS, Config
from diga.errors import UserError


def _check_keys(data: Any, model: type[BaseModel], prefix: str = "") -> None:
    """Reject unknown keys anywhere in ``data`` with a did-you-mean hint."""
    if not isinstance(data, dict):
        return
    fields = model.model_fields
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = (
                f"did you mean '{prefix}{close[0]}'?"
                if close
                else f"valid keys here: {', '.join(fields)}"
            )
            raise UserError(f"unknown config key '{where}'", hint)
        annotation = fields[key].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if value is not None and not isinstance(value, dict):
                raise UserError(
                    f"config key '{where}' is a section, got {value!r}",
                    f"set one of its keys instead, e.g. {where}.{next(iter(annotation.model_fields))}=...",
                )
            _check_keys(value, annotation, prefix=f"{where}.")


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["train.steps=100", "data.source.kind=gta5"]`` into a nested dict.

    Values are read as YAML scalars (numbers, booleans, lists, ``null``), never evaluated as
    code.
    """
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise UserError(
                f"cannot read the override '{item}'", "write it as key.sub=value, e.g. train.steps=100"
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override '{item}' sets a key inside a value", "check the key path")
        node[parts[-1]] = value
    return nested


def merge_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``data`` with ``key=value`` overrides applied.

    ``train.steps=N`` without ``selftrain.steps`` sets the self-training rounds to N steps too
    where the config gives them their own count: ``diga train selftrain demo train.steps=10``
    trains 10 steps per round, not the preset's 250.
    """
    update = parse_overrides(overrides)
    train, selftrain = update.get("train"), update.get("selftrain")
    own_count = isinstance(data.get("selftrain"), dict) and data["selftrain"].get("steps") is not None
    if (isinstance(train, dict) and "steps" in train and own_count
            and not (isinstance(selftrain, dict) and "steps" in selftrain)):
        update = deep_merge(update, {"selftrain": {"steps": train["steps"]}})
    return deep_merge(data, update)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(source: str | Path | None, _depth: int = 0) -> tuple[dict[str, Any], str]:
    """Read a preset name or a YAML path; returns the mapping and where it came from. A
    ``base:`` key names a preset (or, in a file, a YAML path relative to it) whose keys this
    one's are merged over."""
    name = "demo" if source is None else str(source)
    if name in PRESETS:
        text = resources.files("diga.presets").joinpath(f"{name}.yaml").read_text()
        where = f"preset '{name}'"
    else:
        path = Path(name)
        if not path.exists():
            close = difflib.get_close_matches(name, PRESETS, n=1)
            hint = f"did you mean the preset '{close[0]}'?" if close else (
                f"give a YAML file or a preset: {', '.join(PRESETS)}"
            )
            raise UserError(f"config '{name}' not found", hint)
        if path.is_dir():
            raise UserError(f"config '{name}' is a directory", "give a YAML file or a preset name")
        text = path.read_text()
        where = str(path)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{where} is not valid YAML{line}", "fix the file's syntax") from None
    if not isinstance(data, dict):
        raise UserError(f"{where} must hold a mapping of config keys", "see the presets for the form")
    base = data.pop("base", None)
    if base is not None:  # 'base: PRESET_OR_YAML': its keys, with this file's over them
        if _depth >= 4:
            raise UserError(f"{where}: 'base' chains deeper than 4 files", "check for a cycle")
        base = str(base)
        if base not in PRESETS:
            if name in PRESETS:
                raise UserError(f"{where}: base '{base}' is not a preset", "name a preset")
            base = str(Path(name).parent / base)  # a path relative to the file that names it
        parent, _ = read_yaml(base, _depth + 1)
        data = deep_merge(parent, data)
    return data, where


def _validation_error(exc: ValidationError, where: str) -> UserError:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    got = err.get("input")
    msg = err["msg"].removeprefix("Value error, ")
    return UserError(
        f"invalid config value {key}={got!r} ({where}): {msg}",
        f"fix it in the config or override it with {key}=VALUE",
    )


def build_config(data: dict[str, Any], where: str = "config") -> Config:
    _check_keys(data, Config)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, where) from None


def load_config(source: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a preset or YAML file, apply ``key=value`` overrides, validate.

    Raises:
        UserError: unknown keys, wrong types or ranges, unreadable files.
    """
    data, where = read_yaml(source)
    if overrides:
        data, where = merge_overrides(data, overrides), f"{where} + overrides"
    cfg = build_config(data, where)
    _check_model_name(cfg)
    return cfg


def saved_config_with(saved: dict[str, Any] | Config, overrides: list[str] | None,
                      where: str = "saved config") -> Config:
    """A run's or a checkpoint's saved config with ``key=value`` overrides (data roots, export
    or evaluation knobs) applied and validated: how every command reopens a trained run.

    Raises:
        UserError: unknown keys, wrong types or ranges (naming ``where``).
    """
    data = saved.to_dict() if isinstance(saved, Config) else saved
    if overrides:
        data, where = merge_overrides(data, list(overrides)), f"{where} + overrides"
    return build_config(data, where)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a config saved in a run directory or a checkpoint."""
    return build_config(data, "saved config")


def _check_model_name(cfg: Config) -> None:
    try:
        from diga.models import available_models  # torch-heavy: only where a config is built
    except ModuleNotFoundError:  # a runtime-only install builds no model: nothing to check
        return
    names = available_models()
    if cfg.model.name not in names:
        close = difflib.get_close_matches(cfg.model.name, names, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"choose one of: {', '.join(names)}"
        raise UserError(f"unknown model '{cfg.model.name}' (model.name)", hint)


def check_data_paths(cfg: Config, source: bool = True, target: bool = True) -> None:
    """Check dataset roots before any work starts."""
    domains = ([("source", cfg.data.source)] if source else []) + (
        [("target", cfg.data.target)] if target else []
    )
    for name, dom in domains:
        if dom.kind in ("builtin", "none"):
            continue
        if dom.root is None:
            raise UserError(
                f"data.{name}.kind={dom.kind} needs a dataset folder",
                f"set data.{name}.root=/path/to/{dom.kind}",
            )
        if not dom.root.is_dir():
            raise UserError(
                f"dataset folder not found: {dom.root} (data.{name}.root)",
                "check the path, or write the demo data with 'diga data make-demo OUT'",
            )


def save_config(cfg: Config, path: Path) -> None:
    from diga.io import atomic_write_text

    atomic_write_text(path, cfg.to_yaml())
