"""The layout of the ``flownb`` command (docs/architecture.md): each package with commands has a
``cli.py`` holding its sub-parsers (``add_parser(sub)``) and their handlers; ``flownb/cli.py`` only
assembles them and handles what is global; the local broker's URL is defined once. Read off the
source with ast, and off the real parser."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import flownb
from flownb.cli import build_parser

PACKAGE = Path(flownb.__file__).parent
TOP_CLI = PACKAGE / "cli.py"


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(), str(p))) for p in sorted(PACKAGE.rglob("*.py"))]


def _calls(tree: ast.AST, attr: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == attr]


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', '?')}"


def test_every_sub_parser_is_added_in_a_cli_py_other_than_flownb_cli():
    found, misplaced = [], []
    for path, tree in _modules():
        for call in _calls(tree, "add_parser"):
            found.append(_where(path, call))
            if path.name != "cli.py" or path == TOP_CLI:
                misplaced.append(_where(path, call))
    assert len(found) > 20, found  # the walk sees the commands (validate … schedule) at all
    assert not misplaced, f"sub-parsers added outside a package's cli.py: {misplaced}"


def test_flownb_cli_defines_no_command_handler():
    tree = ast.parse(TOP_CLI.read_text())
    defaults = [_where(TOP_CLI, c) for c in _calls(tree, "set_defaults")]
    assert not defaults, f"flownb/cli.py sets a handler: {defaults}"
    functions = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    extra = functions - {"build_parser", "configure_logging", "main"}
    assert not extra, f"flownb/cli.py only assembles the commands and handles the global options; move " \
                      f"{sorted(extra)} into the cli.py of the package that owns the command"


def _handlers(parser: argparse.ArgumentParser, prefix: str = "", inherited=None) -> dict[str, object]:
    """The handler of every (sub-)command of the real parser, by its words (``schedule add``): its
    own, or its group's (``schedule`` dispatches on the action)."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, p in action.choices.items():
                out[f"{prefix}{name}"] = handler = p.get_default("handler") or inherited
                out.update(_handlers(p, f"{prefix}{name} ", handler))
    return out


def test_every_command_is_handled_by_a_package_cli_py():
    handlers = _handlers(build_parser())
    for word in ("validate", "components", "run", "dlq", "recorder", "worker", "plan", "upgrade", "export",
                 "schedule add"):
        assert word in handlers, sorted(handlers)
    for word, handler in handlers.items():
        assert callable(handler), f"'flownb {word}' has no handler"
        module = getattr(handler, "__module__", "")
        assert module.endswith(".cli") and module != "flownb.cli", \
            f"'flownb {word}' is handled by {module}.{handler.__qualname__}, not in a package's cli.py"


def test_the_default_broker_url_is_defined_once():
    modules = _modules()
    definitions, value = [], None
    for path, tree in modules:
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id == "DEFAULT_BROKER_URL" for t in targets):
                definitions.append(_where(path, node))
                assert isinstance(node.value, ast.Constant), _where(path, node)
                value = node.value.value
    assert len(definitions) == 1, f"DEFAULT_BROKER_URL defined {len(definitions)} times: {definitions}"
    # nor is its value spelled out anywhere else (a docstring may show it as an example)
    docstrings = {id(n.value) for _p, tree in modules for n in ast.walk(tree)
                  if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    copies = [_where(path, n) for path, tree in modules for n in ast.walk(tree)
              if isinstance(n, ast.Constant) and n.value == value and id(n) not in docstrings]
    assert copies == definitions, f"the local broker's URL written out again: {sorted(set(copies) - set(definitions))}"
