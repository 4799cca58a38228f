"""MkDocs hook: the CLI reference, rendered from the code at build time.

``docs/cli.md`` holds three markers, each replaced here so that the page cannot drift from
the code: ``<!-- cli-reference -->`` by the help of ``twinsnn`` and of every subcommand (and
theirs), as ``--help`` prints it (``twinsnn.cli.build_parser()``); ``<!-- config-keys -->`` by
every config key with its default and the comment beside its field in ``twinsnn/config.py``;
``<!-- presets -->`` by every built-in preset and the keys it sets. The package is imported
from this repository's ``src/``.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import re
import sys
from pathlib import Path

MARKER = "<!-- cli-reference -->"
KEYS = "<!-- config-keys -->"
PRESETS = "<!-- presets -->"
PAGE = "cli.md"
WIDTH = "100"  # the help's line width, fixed so that the page does not depend on a terminal


def _walk(parser: argparse.ArgumentParser):
    """``parser`` and every parser below it, depth first, in the order they were added."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases once
                yield from _walk(sub)


def _import_src(root: Path) -> None:
    src = str(root / "src")
    if src not in sys.path:
        sys.path.insert(0, src)


def _parser(root: Path) -> argparse.ArgumentParser:
    _import_src(root)
    from twinsnn.cli import build_parser

    return build_parser()


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _comments(cls) -> dict[str, str]:
    """``{field: comment}`` from the source of a config dataclass: the ``#`` comment on the
    field's line, with the comment lines right below it that continue it."""
    comments, current = {}, None
    for line in inspect.getsource(cls).splitlines():
        field = re.match(r"\s+(\w+): [^=]+=[^#]*(?:#\s?(.*))?$", line)
        if field:
            current = field.group(1)
            comments[current] = (field.group(2) or "").strip()
        elif current and re.match(r"\s+#", line):
            comments[current] += " " + line.strip().lstrip("#").strip()
        else:
            current = None
    return comments


def config_keys(root: Path) -> str:
    """Markdown: one table per config section, every key with its default and comment."""
    _import_src(root)
    from twinsnn.config import Config

    out = []
    top = [f for f in dataclasses.fields(Config) if not dataclasses.is_dataclass(f.type)
           and f.name not in {"data", "model", "train", "loss", "quant"}]
    sections = [(f.name, type(getattr(Config(), f.name)))
                for f in dataclasses.fields(Config) if f.name in {"data", "model", "train",
                                                                   "loss", "quant"}]
    rows = [(f.name, getattr(Config(), f.name), _comments(Config).get(f.name, ""))
            for f in top]
    out.append(_table("top level", rows))
    for name, cls in sections:
        comments = _comments(cls)
        rows = [(f"{name}.{f.name}", getattr(cls(), f.name), comments.get(f.name, ""))
                for f in dataclasses.fields(cls)]
        out.append(_table(f"`{name}`", rows))
    return "\n".join(out)


def _table(title: str, rows) -> str:
    lines = [f"### {title}", "", "| key | default | meaning |", "|---|---|---|"]
    for key, default, comment in rows:
        lines.append(f"| `{key}` | `{_cell(_yaml(default))}` | {_cell(comment)} |")
    return "\n".join(lines) + "\n"


def _yaml(value) -> str:
    """A value as YAML writes it (and ``twinsnn config show`` prints it)."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text[:-3].strip() if text.endswith("...") else text


def presets(root: Path) -> str:
    """Markdown: every built-in preset, what it extends and the keys it sets."""
    import yaml

    folder = root / "src" / "twinsnn" / "configs"
    lines = ["| preset | extends | sets |", "|---|---|---|"]
    for path in sorted(folder.glob("*.yaml")):
        spec = yaml.safe_load(path.read_text()) or {}
        base = spec.pop("extends", "")
        spec.pop("name", None)
        sets = []
        for section, values in spec.items():
            if isinstance(values, dict):
                sets += [f"{section}.{k}={_yaml(v)}" for k, v in values.items()]
            else:
                sets.append(f"{section}={_yaml(values)}")
        lines.append(f"| `{path.stem}` | {f'`{base}`' if base else ''} | "
                     f"{_cell(', '.join(f'`{s}`' for s in sets))} |")
    return "\n".join(lines) + "\n"


def render(root: Path) -> str:
    """Markdown: one section per command, its help in a code block."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        sections = []
        for parser in _walk(_parser(root)):
            sections.append(f"## `{parser.prog}`\n\n```text\n{parser.format_help().rstrip()}\n```\n")
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before
    return "\n".join(sections)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    for marker in (MARKER, KEYS, PRESETS):
        if marker not in markdown:
            raise RuntimeError(f"{PAGE} lacks the marker {marker!r} that the hook replaces")
    root = Path(config.config_file_path).resolve().parent
    return (markdown.replace(MARKER, render(root)).replace(KEYS, config_keys(root))
            .replace(PRESETS, presets(root)))
