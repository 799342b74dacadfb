"""The documentation site builds with ``mkdocs build --strict`` (no broken link or anchor, no
page missing from the navigation), and its generated reference pages (docs/hooks.py) hold what
the code has: every config key, every command, every error message."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def page_text(site: Path, page: str) -> str:
    """A built page's text, tags dropped."""
    html = (site / page / "index.html").read_text(encoding="utf-8")
    return unescape(re.sub(r"<[^>]+>", "", html))


def test_config_key_page_lists_every_key(site):
    from diga.config.keys import config_keys

    text = page_text(site, "reference/config-keys")
    assert "selftrain.centroid_update" in text
    missing = [k.key for k in config_keys() if k.key not in text]
    assert not missing, f"keys missing from the config key page: {missing}"


def test_cli_page_lists_every_command(site):
    text = page_text(site, "reference/cli")
    for command in ("diga run", "diga runs plot", "diga train warmup", "diga train selftrain",
                    "diga data make-demo", "diga export", "diga predict"):
        assert f"Usage: {command} " in text, command
    assert "--auto-resume" in text and "--openvino" in text
    assert "pip install 'diga[openvino]'" in text  # help as written, not as rich markup


def test_troubleshooting_lists_the_code_s_errors(site):
    text = page_text(site, "troubleshooting")
    assert "error: unknown config key '<where>'" in text
    assert "did you mean" in text
    assert "(diga/config/loading.py)" in text
    for area in ("Datasets", "Training", "Export (ONNX, INT8, OpenVINO, TensorRT)"):
        assert area in text


def test_python_api_page_documents_the_runtime(site):
    text = page_text(site, "reference/python-api")
    for name in ("diga.runtime.Segmenter", "diga.config.load_config", "stream", "class_report"):
        assert name in text, name


def test_error_messages_render_their_placeholders(tmp_path):
    """f-strings as <name>, hints built in a variable read from its assignment, subclasses of
    UserError found."""
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    (tmp_path / "diga").mkdir()
    (tmp_path / "diga" / "x.py").write_text("""
from diga.errors import UserError
class StaleError(UserError):
    pass
HINT = "pip install 'diga[models]'"
def f(path, cfg, close):
    hint = f"did you mean '{close[0]}'?" if close else "check the path"
    raise UserError(f"label {path} holds ids {sorted(cfg.ids)}", hint)
def g(key):
    raise StaleError(f"{key.removeprefix('data.')} is stale", HINT)
""")
    found = [(message, hint) for _, message, hint, _ in hooks.user_errors(tmp_path)]
    assert found == [("label <path> holds ids <ids>", "did you mean '<close>'? / check the path"),
                     ("<key> is stale", "pip install 'diga[models]'")]
