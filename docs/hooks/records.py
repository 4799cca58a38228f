"""MkDocs hook: the record folders under ``docs/runs/`` as browsable pages.

The records (``run.json``, ``metrics.jsonl``, ``test.json``, logs) are copied into the site
as they are. A folder has no page of its own, so a link to one (``runs/seeds/``) would lead
nowhere: for every folder under ``docs/runs/`` without an ``index.md`` or ``README.md`` this
hook adds a generated page listing its files and subfolders, and it points links that end in
``/`` and name a folder of the docs at that folder's page (``index.md`` or ``README.md``), so
that MkDocs checks them like any other link.
"""
from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, InclusionLevel

RECORDS = "runs"
INDEXES = ("index.md", "README.md")
LINK = re.compile(r"(\]\()([^)\s#]+/)(#[^)\s]*)?(\))")


def _listing(folder: Path, docs: Path) -> str:
    rel = folder.relative_to(docs).as_posix()
    lines = [f"# `docs/{rel}/`", "", "Records as they were written; the pages that use them "
             "say what they hold.", ""]
    if folder.parent != docs:
        lines += ["[`..`](../)", ""]
    for entry in sorted(folder.iterdir(), key=lambda p: (p.is_file(), p.name)):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            lines.append(f"- [`{entry.name}/`]({entry.name}/)")
        else:
            lines.append(f"- [`{entry.name}`]({entry.name}) ({entry.stat().st_size:,} bytes)")
    return "\n".join(lines) + "\n"


def on_files(files, config):
    docs = Path(config.docs_dir)
    root = docs / RECORDS
    if not root.is_dir():
        return files
    for folder in sorted([root, *(p for p in root.rglob("*") if p.is_dir())]):
        if any((folder / name).exists() for name in INDEXES):
            continue
        uri = (folder / "index.md").relative_to(docs).as_posix()
        files.append(File.generated(config, uri, content=_listing(folder, docs),
                                    inclusion=InclusionLevel.NOT_IN_NAV))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    here = posixpath.dirname(page.file.src_uri)

    def to_index(match: re.Match) -> str:
        target = match.group(2)
        if "://" in target or target.startswith(("/", "mailto:")):
            return match.group(0)
        folder = posixpath.normpath(posixpath.join(here, target))
        for name in INDEXES:
            if files.get_file_from_path(posixpath.join(folder, name)) is not None:
                return f"{match.group(1)}{target}{name}{match.group(3) or ''}{match.group(4)}"
        return match.group(0)

    return LINK.sub(to_index, markdown)
