"""MkDocs hook: the pages that are generated from the code, so they cannot drift from it.

A page holding the marker `<!-- generated: NAME -->` gets the marker replaced by:
- `cli`: every `stepwell` command, from the click definitions (usage, help, options);
- `rest-api`: every route of the OpenAPI document the server publishes at `/openapi.json`;
- `changelog`: CHANGELOG.md (kept at the repository's root, where people look for it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

ROOT = Path(__file__).resolve().parents[1]


def on_page_markdown(markdown: str, **_: Any) -> str:
    for name, render in GENERATORS.items():
        marker = f"<!-- generated: {name} -->"
        if marker in markdown:
            markdown = markdown.replace(marker, render())
    return markdown


# --- the CLI ---------------------------------------------------------------------------------


def cli_markdown() -> str:
    from stepwell.cli import main

    parts: list[str] = []
    root = click.Context(main, info_name="stepwell")
    for name, command in _commands(main, root):
        parts.append(_command_markdown(name, command, root))
    return "\n".join(parts)


def _commands(group: click.Group, ctx: click.Context,
              prefix: str = "stepwell") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        full = f"{prefix} {name}"
        if isinstance(command, click.Group):
            found.extend(_commands(command, click.Context(command, info_name=name, parent=ctx),
                                   full))
        else:
            found.append((full, command))
    return found


def _command_markdown(name: str, command: click.Command, root: click.Context) -> str:
    words = name.split()[1:]
    ctx = root
    for word in words:
        ctx = click.Context(command, info_name=word, parent=ctx)
    usage = " ".join(command.collect_usage_pieces(ctx))
    lines = [f"## `{name}`", "", "```text", f"{name} {usage}", "```", ""]
    help_text = (command.help or "").strip()
    if help_text:
        lines += [_plain(help_text), ""]
    rows = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
        if record is None:
            continue
        flags, text = record
        rows.append(f"| `{_cell(flags)}` | {_cell(text)} |")
    if rows:
        lines += ["| option | meaning |", "| --- | --- |", *rows, ""]
    return "\n".join(lines)


def _plain(text: str) -> str:
    """click's help text as Markdown paragraphs (click wraps by hand; \\b marks verbatim)."""
    paragraphs = [" ".join(p.split()) for p in text.replace("\b", "").split("\n\n")]
    return "\n\n".join(paragraphs)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


# --- the REST API ----------------------------------------------------------------------------


def rest_api_markdown() -> str:
    from stepwell.server.openapi import openapi_document

    doc = openapi_document()
    lines: list[str] = []
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            origin = "stepwell" if op.get("x-stepwell") else "Inngest-compatible"
            auth = ("signing key in production mode" if op.get("security")
                    else "public" if not path.startswith(("/e/", "/fn/", "/v0/"))
                    else "its own key (see Authentication above)")
            lines += [f"### `{method.upper()} {path}`", "", _cell(op.get("summary", "")), "",
                      f"*{origin}; auth: {auth}*", ""]
            params = op.get("parameters", [])
            if params:
                lines += ["| parameter | in | required | notes |", "| --- | --- | --- | --- |"]
                for p in params:
                    notes = p.get("description", "")
                    enum = p.get("schema", {}).get("enum")
                    if enum:
                        notes = (notes + "; " if notes else "") + "one of " + ", ".join(
                            f"`{v}`" for v in enum)
                    lines.append(f"| `{p['name']}` | {p['in']} | "
                                 f"{'yes' if p.get('required') else 'no'} | {_cell(notes)} |")
                lines.append("")
            body = op.get("requestBody")
            if body:
                for media, content in body.get("content", {}).items():
                    described = _schema_text(content.get("schema", {}))
                    lines += [f"Request body (`{media}`): {described}", ""]
            responses = [_response_text(code, r) for code, r in op.get("responses", {}).items()
                         if "description" in r]
            if responses:
                lines += ["Responses:", "", *[f"- {r}" for r in responses], ""]
    lines += ["## Schemas", ""]
    for name, schema in doc["components"]["schemas"].items():
        lines += [f"### {name}", "", _schema_text(schema), ""]
    return "\n".join(lines)


def _schema_text(schema: dict[str, Any]) -> str:
    """A schema in words: `EventIn` or array of `EventIn`; object {url: string}."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[`{name}`](#{name.lower()})"
    if "oneOf" in schema:
        return " or ".join(_schema_text(s) for s in schema["oneOf"])
    if "allOf" in schema:
        return " with ".join(_schema_text(s) for s in schema["allOf"])
    kind = schema.get("type")
    if kind == "array":
        return f"array of {_schema_text(schema.get('items', {}))}"
    if "properties" in schema:
        required = set(schema.get("required", []))
        fields = ", ".join(f"`{name}`{'' if name in required else '?'}: "
                           f"{_schema_text(sub)}" for name, sub in schema["properties"].items())
        return f"object {{{fields}}}"
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    if isinstance(kind, list):
        return " or ".join(kind)
    return str(kind or "any JSON")


def _response_text(code: str, response: dict[str, Any]) -> str:
    text = f"`{code}` {_cell(response['description'])}"
    for media, content in response.get("content", {}).items():
        text += f" (`{media}`: {_schema_text(content.get('schema', {}))})"
    return text


def changelog_markdown() -> str:
    text = (ROOT / "CHANGELOG.md").read_text()
    return text.split("\n", 1)[1]             # the page has its own title


GENERATORS = {"cli": cli_markdown, "rest-api": rest_api_markdown, "changelog": changelog_markdown}
