"""The pages docs/hooks.py generates when the site is built cover the code they describe: every
`stepwell` command with every option, every route of the OpenAPI document."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import click

from stepwell.cli import main
from stepwell.server.openapi import openapi_document

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _leaves(group: click.Group, prefix: str) -> list[tuple[str, click.Command]]:
    found = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _leaves(command, f"{prefix} {name}")
        else:
            found.append((f"{prefix} {name}", command))
    return found


def test_cli_page_lists_every_command_and_option() -> None:
    page = _hooks().cli_markdown()
    commands = _leaves(main, "stepwell")
    assert len(commands) >= 8
    for name, command in commands:
        assert f"## `{name}`" in page, name
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert any(opt in page for opt in param.opts), (name, param.opts)


def test_rest_api_page_lists_every_route() -> None:
    page = _hooks().rest_api_markdown()
    document = openapi_document()
    for path, operations in document["paths"].items():
        for method in operations:
            assert f"### `{method.upper()} {path}`" in page, (method, path)
    for name in document["components"]["schemas"]:
        assert f"### {name}" in page


def test_markers_are_replaced() -> None:
    hooks = _hooks()
    for name in ("cli", "rest-api", "changelog"):
        rendered = hooks.on_page_markdown(f"intro\n\n<!-- generated: {name} -->\n")
        assert "<!-- generated" not in rendered and len(rendered) > 200, name
