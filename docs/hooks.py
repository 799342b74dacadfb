"""MkDocs hooks: the reference pages are generated from the code at every build.

A page on disk holds its hand-written text and a marker line, ``<!-- diga-docs: NAME -->``;
``on_page_markdown`` replaces the marker with what ``GENERATORS[NAME]`` renders from the code:

- ``config-keys``: every config key (``diga.config.keys``: the schema's field docstrings),
  one table per section;
- ``cli``: every ``diga`` command of the Typer app (usage, help text, arguments and options),
  walked from ``typer.main.get_command``;
- ``errors``: every ``UserError(message, hint)`` (and subclass, and ``import_optional``) raised
  in ``diga/``, ``cli/``, ``export/`` and ``benchmarks/``, found with ``ast``, grouped by area.

Nothing generated is written to disk, so the site can never show a stale copy; a marker with an
unknown name, or a page that lost its marker, fails the build.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

MARKER = re.compile(r"^<!-- diga-docs: ([a-z-]+) -->$", re.MULTILINE)
ROOT = Path(__file__).resolve().parent.parent  # the repository
SOURCE_DIRS = ("diga", "cli", "export", "benchmarks")  # the package's code (pyproject's package-dir)


# --- Markdown helpers ------------------------------------------------------------------------

def text(s: str) -> str:
    """Plain text as Markdown that renders it verbatim: no emphasis, links or HTML tags."""
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\`*_\[\]{}#|])", r"\\\1", s)


def code(s: str) -> str:
    """An inline code span that holds ``s`` whatever backticks it contains."""
    ticks = "`" * (max((len(m) for m in re.findall(r"`+", s)), default=0) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{ticks}{pad}{s}{pad}{ticks}"


def cell(s: str) -> str:
    """Text for a table cell: no column breaks."""
    return text(s).replace("\n", " ")


# --- config keys -----------------------------------------------------------------------------

def config_keys_page() -> str:
    """One table per top-level section of the schema, each with the section's description."""
    from diga.config.keys import config_keys, markdown_table
    from diga.config.schema import Config

    keys = config_keys()
    out = []
    for name, field in Config.model_fields.items():
        section = [k for k in keys if k.key.split(".", 1)[0] == name]
        if not section:
            continue
        out += [f"## {name}", "", text(field.description or ""), "", markdown_table(section)]
    return "\n".join(out)


# --- CLI -------------------------------------------------------------------------------------

def cli_page() -> str:
    import typer

    from diga.cli.app import app

    root = typer.main.get_command(app)
    return "\n".join(_command_markdown(cmd, ctx) for cmd, ctx in _walk(root, "diga", None))


def _walk(cmd: Any, name: str, parent: Any) -> Iterator[tuple[Any, Any]]:
    """Every visible command and group, depth first, with its click context."""
    ctx = cmd.context_class(cmd, info_name=name, parent=parent)
    yield cmd, ctx
    for sub in _subcommands(cmd, ctx):
        child = cmd.get_command(ctx, sub)
        if child is not None and not child.hidden:
            yield from _walk(child, sub, ctx)


# the order a user meets the commands in; commands not listed follow in the app's order
ORDER = ["demo", "run", "data", "config", "train", "pseudo", "centroids", "eval", "export",
         "bench", "predict", "runs"]


def _subcommands(cmd: Any, ctx: Any) -> list[str]:
    names = list(cmd.list_commands(ctx)) if hasattr(cmd, "list_commands") else []
    return sorted(names, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))


def _command_markdown(cmd: Any, ctx: Any) -> str:
    path = ctx.command_path
    lines = [f"{'#' * (2 + max(path.count(' ') - 1, 0))} {path}", ""]
    lines += ["```text", cmd.get_usage(ctx).strip(), "```", ""]
    lines += _help_markdown(cmd.help or "")
    subcommands = [(n, cmd.get_command(ctx, n)) for n in _subcommands(cmd, ctx)]
    subcommands = [(n, c) for n, c in subcommands if c is not None and not c.hidden]
    if subcommands:
        lines += ["| command | what it does |", "| --- | --- |"]
        for n, c in subcommands:
            anchor = re.sub(r"[^a-z0-9]+", "-", f"{path} {n}".lower()).strip("-")
            summary = (c.help or "").split("\n\n")[0]
            lines.append(f"| [{code(f'{path} {n}')}](#{anchor}) | {cell(summary)} |")
        lines.append("")
    params = [p for p in cmd.params if not p.hidden]
    records = [(p, p.get_help_record(ctx)) for p in params]
    records = [(p, r) for p, r in records if r is not None]
    if records:
        lines += ["| argument / option | description |", "| --- | --- |"]
        for p, (names, help_text) in records:
            kind = "argument" if p.param_type_name == "argument" else "option"
            first = f"{code(_unescape(names))}" + (" (argument)" if kind == "argument" else "")
            lines.append(f"| {first} | {cell(_unescape(help_text))} |")
        lines.append("")
    return "\n".join(lines)


def _help_markdown(help_text: str) -> list[str]:
    """A command's help: paragraphs as text, ``Example(s):`` paragraphs as a code block."""
    out: list[str] = []
    for paragraph in inspect.cleandoc(_unescape(help_text)).split("\n\n"):
        head, _, body = paragraph.partition("\n")
        if head.rstrip().startswith("Example") and head.rstrip().endswith(":"):
            out += [f"**{text(head.strip())}**", "", "```text", inspect.cleandoc(body), "```", ""]
        else:
            out += [text(" ".join(paragraph.split())), ""]
    return out


def _unescape(s: str) -> str:
    """Rich markup escapes (``\\[``) back to the characters a user types."""
    return s.replace("\\[", "[")


# --- errors ----------------------------------------------------------------------------------

AREAS = [  # (path prefix, area), the first match wins
    ("diga/config/", "Configs and overrides"),
    ("cli/config.py", "Configs and overrides"),
    ("diga/data/", "Datasets"),
    ("cli/data.py", "Datasets"),
    ("diga/models/", "Models and pretrained weights"),
    ("diga/checkpoint.py", "Runs, checkpoints and resuming"),
    ("diga/runs.py", "Runs, checkpoints and resuming"),
    ("diga/status.py", "Runs, checkpoints and resuming"),
    ("cli/runs.py", "Runs, checkpoints and resuming"),
    ("diga/pipeline.py", "diga run (the whole job)"),
    ("cli/run.py", "diga run (the whole job)"),
    ("diga/train/distributed.py", "Several processes (--devices, torchrun)"),
    ("diga/train/", "Training"),
    ("diga/method/", "Training"),
    ("diga/translator/", "Training"),
    ("cli/train.py", "Training"),
    ("cli/translator.py", "Training"),
    ("cli/pseudo.py", "Training"),
    ("diga/protocols.py", "Evaluation and class protocols"),
    ("cli/evaluate.py", "Evaluation and class protocols"),
    ("export/", "Export (ONNX, INT8, OpenVINO, TensorRT)"),
    ("cli/export.py", "Export (ONNX, INT8, OpenVINO, TensorRT)"),
    ("diga/runtime/", "Runtime, predict and bench"),
    ("cli/predict", "Runtime, predict and bench"),
    ("cli/bench.py", "Runtime, predict and bench"),
    ("benchmarks/", "Benchmark scripts"),
    ("", "General (devices, files, the command line)"),
]


def user_errors(root: Path = ROOT) -> list[tuple[str, str, str | None, str]]:
    """(area, message, hint, file) of every ``UserError(message, hint)`` (and subclass) and
    ``import_optional(name, message, hint)`` call in the package's code, f-strings rendered
    with their placeholders as ``<name>`` (a message or hint built in a variable first is read
    from its assignment in the function or module); duplicates once, in file order."""
    found: list[tuple[str, str, str | None, str]] = []
    seen: set[tuple[str, str | None]] = set()
    trees = {path.relative_to(root).as_posix(): ast.parse(path.read_text(encoding="utf-8"))
             for folder in SOURCE_DIRS for path in sorted((root / folder).rglob("*.py"))}
    errors = _error_classes(trees.values())
    for rel, tree in trees.items():
        area = next(a for prefix, a in AREAS if rel.startswith(prefix))
        finder = _ErrorCalls(errors)
        finder.visit(tree)
        for message, hint in finder.found:
            if re.fullmatch(r"<[^<>]*>", message) and (hint is None or re.fullmatch(r"<[^<>]*>", hint)):
                continue  # a re-raise of a message made elsewhere: nothing to read here
            if (message, hint) not in seen:
                seen.add((message, hint))
                found.append((area, message, hint, rel))
    return found


def _error_classes(trees: Any) -> set[str]:
    """UserError and the classes that derive from it (StaleInputError, ...), by name."""
    bases: dict[str, set[str]] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases[node.name] = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "")
                                    for b in node.bases}
    names = {"UserError"}
    while True:
        more = {n for n, b in bases.items() if b & names} - names
        if not more:
            return names
        names |= more


class _ErrorCalls(ast.NodeVisitor):
    """Collects the (message, hint) texts of the UserError / import_optional calls of a module,
    with the simple assignments (``name = <expr>``) of each enclosing function in scope."""

    def __init__(self, errors: set[str]) -> None:
        self.errors = errors  # the names of UserError and its subclasses
        self.found: list[tuple[str, str | None]] = []
        self.scopes: list[dict[str, list[ast.expr]]] = []

    def visit_Module(self, node: ast.Module) -> None:
        self._scoped(node)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._scoped(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def _scoped(self, node: ast.AST) -> None:
        assigns: dict[str, list[ast.expr]] = {}
        for sub in ast.walk(node):
            if isinstance(sub, ast.Assign) and len(sub.targets) == 1 and isinstance(sub.targets[0], ast.Name):
                assigns.setdefault(sub.targets[0].id, []).append(sub.value)
            elif isinstance(sub, ast.AnnAssign) and isinstance(sub.target, ast.Name) and sub.value:
                assigns.setdefault(sub.target.id, []).append(sub.value)
        self.scopes.append(assigns)
        self.generic_visit(node)
        self.scopes.pop()

    def visit_Call(self, node: ast.Call) -> None:
        args = _error_args(node, self.errors)
        if args is not None:
            message = self._text(args[0])
            hint = self._text(args[1]) if len(args) > 1 and not _is_none(args[1]) else None
            if not message.startswith("Caught UserError"):
                self.found.append((message, hint))
        self.generic_visit(node)

    def _text(self, node: ast.expr) -> str:
        return _render(node, self._resolve)

    def _resolve(self, name: str) -> str | None:
        """The text a variable holds where its assignments in scope (innermost function
        first, then the module) are literal text; None where they are not."""
        for scope in reversed(self.scopes):
            if name in scope:
                if not all(_is_text(v) for v in scope[name]):
                    return None
                texts = list(dict.fromkeys(_render(v) for v in scope[name]))
                if len(texts) <= 3 and all(re.search(r"[A-Za-z]{3}", re.sub(r"<[^<>]*>", "", t))
                                           for t in texts):
                    return " / ".join(texts)
                return None
        return None


def _is_text(node: ast.expr) -> bool:
    """A string literal, an f-string, a concatenation of them or a choice between them."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _is_text(node.left) and _is_text(node.right)
    if isinstance(node, ast.IfExp):
        return _is_text(node.body) and _is_text(node.orelse)
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant)
                                                and isinstance(node.value, str))


def _error_args(node: ast.Call, errors: set[str]) -> list[ast.expr] | None:
    """The (message, hint) expressions of a call of ``errors`` (UserError and its subclasses)
    or of import_optional, else None."""
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    keywords = {k.arg: k.value for k in node.keywords}
    if name in errors:
        args = list(node.args[:2])
    elif name == "import_optional" and len(node.args) >= 2:
        args = list(node.args[1:3])
    else:
        return None
    if not args and "message" in keywords:
        args = [keywords["message"]]
    if len(args) == 1 and "hint" in keywords:
        args.append(keywords["hint"])
    return args or None


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


Resolver = Callable[[str], "str | None"]


def _render(node: ast.expr, resolve: Resolver | None = None) -> str:
    """A message expression as text: literals as they are, everything computed as <name>
    (a variable whose assignment ``resolve`` finds as its text)."""
    if isinstance(node, ast.Name) and resolve is not None:
        found = resolve(node.id)
        if found is not None:
            return found
    if isinstance(node, ast.Constant):
        return str(node.value)
    if isinstance(node, ast.JoinedStr):
        return "".join(_render(v) if isinstance(v, ast.Constant) else
                       _render(v.value, resolve) if isinstance(v.value, ast.Name) and resolve
                       and resolve(v.value.id) is not None else _placeholder(v.value)
                       for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _render(node.left, resolve) + _render(node.right, resolve)
    if isinstance(node, ast.IfExp):
        a, b = _render(node.body, resolve), _render(node.orelse, resolve)
        return a if a == b or not b else b if not a else f"{a} / {b}"
    if isinstance(node, ast.BoolOp):  # hint or "default text"
        return " / ".join(_render(v, resolve) for v in node.values)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        return _render(node.func.value, resolve)
    return _placeholder(node)


PASS_THROUGH = ("str", "repr", "len", "sorted", "list", "tuple", "int", "float", "abs", "round",
                "fmt", "human_bytes", "Path")


def _placeholder(node: ast.expr) -> str:
    """``<name>`` for a computed part: the variable, attribute or function it comes from."""
    while True:
        if isinstance(node, ast.Name):
            return f"<{node.id}>"
        if isinstance(node, ast.Attribute):
            return f"<{node.attr}>"
        if isinstance(node, ast.Subscript):
            key = node.slice
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                return f"<{key.value}>"  # a dict's value: its key (expected['model']['folder'])
            node = node.value
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "join" and node.args:
                node = node.args[0]
                if isinstance(node, (ast.ListComp, ast.GeneratorExp, ast.SetComp)):
                    node = node.generators[0].iter
            elif (isinstance(func, ast.Attribute) and func.attr == "get" and node.args
                  and isinstance(node.args[0], ast.Constant)):
                return f"<{node.args[0].value}>"  # a dict's value: its key
            elif isinstance(func, (ast.Name, ast.Attribute)) and node.args and (
                    (func.id if isinstance(func, ast.Name) else func.attr) in PASS_THROUGH):
                node = node.args[0]
            elif isinstance(func, ast.Attribute) and not (
                    isinstance(func.value, ast.Name) and func.value.id in ("self", "cls")):
                node = func.value  # a method of a value (key.removeprefix(...)): the value
            else:
                node = func
        elif isinstance(node, (ast.ListComp, ast.GeneratorExp, ast.SetComp)):
            node = node.generators[0].iter
        elif isinstance(node, ast.IfExp):
            if isinstance(node.body, ast.Constant) and isinstance(node.orelse, ast.Constant):
                return f"{node.body.value}/{node.orelse.value}"  # e.g. {'train' if a else 'val'}
            node = node.body
        elif isinstance(node, ast.BinOp):
            node = node.left
        else:
            return "<...>"


def errors_page() -> str:
    errors = user_errors()
    areas: dict[str, list[tuple[str, str | None, str]]] = {}
    for area, message, hint, rel in errors:
        areas.setdefault(area, []).append((message, hint, rel))
    order = list(dict.fromkeys(a for _, a in AREAS))
    lines = [f"{len(errors)} messages from {sum(1 for _ in _source_files())} source files, "
             f"read from the code when this page was built. `<name>` stands for a value "
             "filled in when the error happens (a path, a key, a number); `A / B` for a "
             "message or hint that is one of two texts.", ""]
    for area in sorted(areas, key=order.index):
        lines += [f"### {area}", ""]
        for message, hint, rel in areas[area]:
            lines.append(f"- {code('error: ' + message)}  ")
            lines.append(f"  {text(hint) if hint else '*(no hint)*'} "
                         f"<small>({text(rel)})</small>")
        lines.append("")
    return "\n".join(lines)


def _source_files() -> Iterator[Path]:
    for folder in SOURCE_DIRS:
        yield from (ROOT / folder).rglob("*.py")


# --- the hook --------------------------------------------------------------------------------

GENERATORS: dict[str, Callable[[], str]] = {
    "config-keys": config_keys_page,
    "cli": cli_page,
    "errors": errors_page,
}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise PluginError(f"{page.file.src_uri}: unknown generated section '{name}' "
                              f"(known: {', '.join(GENERATORS)})")
        return GENERATORS[name]()

    return MARKER.sub(replace, markdown)
