"""Every config key with its type, default and meaning, read from the schema itself.

A field's attribute docstring is its description (``Section`` turns on pydantic's
``use_attribute_docstrings``), so a key is explained once, where it is defined, and
``diga config keys`` and the generated docs cannot drift from the code.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from diga.config.schema import Config
from diga.config.types import Size
from diga.errors import UserError

_SIZE_VALIDATOR = Size.__metadata__[0]  # marks a Size field (its annotation is tuple[int, int])
_SCALARS = {int: "int", float: "float", bool: "bool", str: "str", Path: "path"}
# a period that ends a sentence: not a decimal point, not "e.g." / "i.e."
_SENTENCE_END = re.compile(r"(?<!e\.g)(?<!i\.e)\.(?=\s|$)")


@dataclass(frozen=True)
class ConfigKey:
    """One settable key (``key=value`` on the command line, a YAML entry)."""

    key: str  # dotted; a list of sections' items as eval.targets[].kind
    type: str  # as a user reads it: "int >= 1", "one of: fda, learned, none", "HxW size or null"
    default: str  # as YAML writes it: 512x896, null, [1.0, 0.5]
    meaning: str  # the description's first sentence
    description: str  # the whole attribute docstring


def config_keys(model: type[BaseModel] = Config) -> list[ConfigKey]:
    """Every leaf key of ``model`` in schema order, nested sections walked; a list of sections
    is a key of its own followed by its items' keys (``eval.targets``, ``eval.targets[].kind``).
    Defaults are the schema's, not a preset's."""
    return _walk(model, model().model_dump(mode="json"), "")


def keys_with_prefix(prefix: str, keys: Sequence[ConfigKey] | None = None) -> list[ConfigKey]:
    """The keys starting with ``prefix`` (``train.optim``, ``export.trt_``; "" for all).

    Raises:
        UserError: no key starts with it (with the closest section or key, and the sections).
    """
    keys = config_keys() if keys is None else keys
    found = [k for k in keys if k.key.startswith(prefix)]
    if found:
        return found
    sections = list(Config.model_fields)
    paths = {k.key.rsplit(".", i)[0] for k in keys for i in range(k.key.count(".") + 1)}
    close = difflib.get_close_matches(prefix, [*sections, *sorted(paths)], n=1)
    hint = f"the sections: {', '.join(sections)}"
    raise UserError(f"no config key starts with '{prefix}'",
                    f"did you mean '{close[0]}'? {hint}" if close else hint)


def markdown_table(keys: Iterable[ConfigKey] | None = None) -> str:
    """A GitHub-flavoured Markdown table (key | type | default | meaning) of ``keys`` (default
    all): the config reference of the docs."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for k in config_keys() if keys is None else keys:
        cells = (f"`{_md(k.key)}`", _md(k.type), f"`{_md(k.default)}`", _md(k.meaning))
        rows.append(f"| {' | '.join(cells)} |")
    return "\n".join(rows) + "\n"


def first_sentence(text: str) -> str:
    """A description's first sentence, its line breaks joined and ``code`` marks dropped: the
    one-line meaning."""
    text = re.sub(r"``(.+?)``", r"\1", " ".join(text.split()))
    end = _SENTENCE_END.search(text)
    return text[: end.end()] if end else text


def _walk(model: type[BaseModel], defaults: dict[str, Any], prefix: str) -> list[ConfigKey]:
    out: list[ConfigKey] = []
    for name, field in model.model_fields.items():
        key, annotation = f"{prefix}{name}", field.annotation
        if _is_model(annotation):
            out += _walk(annotation, defaults[name], f"{key}.")
            continue
        description = field.description or ""
        item = get_args(annotation)[0] if get_origin(annotation) is list else None
        kind = "list of sections" if _is_model(item) else _type(annotation, field.metadata)
        out.append(ConfigKey(key, kind, _yaml(defaults[name]), first_sentence(description),
                             description))
        if _is_model(item):
            out += _walk(item, item().model_dump(mode="json"), f"{key}[].")
    return out


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _type(annotation: Any, metadata: Sequence[Any] = ()) -> str:
    """An annotation and its constraints as a user reads them."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:  # Size inside a union: its validator is in the annotation
        return _type(args[0], (*metadata, *annotation.__metadata__))
    if any(m is _SIZE_VALIDATOR for m in metadata):
        return "HxW size"
    if origin in (Union, types.UnionType):
        parts = [a for a in args if a is not type(None)]
        nullable = len(parts) < len(args)
        if nullable and len(parts) == 1 and get_origin(parts[0]) is Literal:
            return _choices(parts[0]) + ", null"
        text = " or ".join(_type(a, metadata) for a in parts)
        return f"{text} or null" if nullable else text
    if origin is Literal:
        return _choices(annotation)
    if origin is list:
        item = args[0]
        return ("list of: " + _choices(item).removeprefix("one of: ")
                if get_origin(item) is Literal else f"list of {_type(item)}")
    if origin is tuple:
        return f"[{', '.join(_type(a) for a in args)}]"
    return _SCALARS.get(annotation, getattr(annotation, "__name__", str(annotation))) + (
        _bounds(metadata) if annotation in (int, float) else "")


def _choices(literal: Any) -> str:
    return "one of: " + ", ".join(str(v) for v in get_args(literal))


def _bounds(metadata: Sequence[Any]) -> str:
    """pydantic's ge / gt / le / lt as ">= 1", "> 0" or "in [0, 1)"."""
    c = {name: getattr(m, name) for m in metadata for name in ("ge", "gt", "le", "lt")
         if getattr(m, name, None) is not None}
    low = ("[", ">=", c["ge"]) if "ge" in c else ("(", ">", c["gt"]) if "gt" in c else None
    high = ("]", "<=", c["le"]) if "le" in c else (")", "<", c["lt"]) if "lt" in c else None
    if low and high:
        return f" in {low[0]}{low[2]:g}, {high[2]:g}{high[0]}"
    bound = low or high
    return f" {bound[1]} {bound[2]:g}" if bound else ""


def _yaml(value: Any) -> str:
    """A default as YAML writes it, on one line."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9)
    return text.removesuffix("\n...\n").strip()


def _md(text: str) -> str:
    """Text safe in a Markdown table cell: no column breaks, emphasis or HTML tags."""
    return re.sub(r"([\\|*<>])", r"\\\1", text)
