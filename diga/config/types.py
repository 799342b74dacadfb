"""The types every config section is built from: ``Section`` (unknown keys refused, assignments
validated) and ``Size`` (``"HxW"``, ``[H, W]`` or ``N``, written back as ``"HxW"``)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer


def parse_size(value: Any) -> tuple[int, int]:
    """Parse ``"HxW"``, ``[H, W]`` or ``N`` into ``(H, W)``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, str):
        parts = value.lower().replace(" ", "").split("x")
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            return (int(parts[0]), int(parts[1]))
        raise ValueError(f"expected a size like 512x1024 (HxW), got {value!r}")
    if isinstance(value, list | tuple) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    raise ValueError(f"expected a size like 512x1024 (HxW), got {value!r}")


def _check_positive_size(value: tuple[int, int]) -> tuple[int, int]:
    if value[0] <= 0 or value[1] <= 0:
        raise ValueError(f"both sides must be positive, got {value[0]}x{value[1]}")
    return value


Size = Annotated[
    tuple[int, int],
    BeforeValidator(lambda v: _check_positive_size(parse_size(v))),
    PlainSerializer(lambda v: f"{v[0]}x{v[1]}", return_type=str),
]


class Section(BaseModel):
    """A config section. Every field has an attribute docstring below it: pydantic reads it as
    the field's description, the one source of what a key means (``diga config keys``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True,
                              use_attribute_docstrings=True)
