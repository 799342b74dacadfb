"""YAML presets shipped with diga (read with importlib.resources)."""
