"""The documentation: README.md and docs/ link only to what exists, the site builds under
``mkdocs build --strict`` with every public name and every command on it, and the README stays
a front page."""
import importlib.util
import json
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_LIMIT = 12_500  # bytes

FENCE = re.compile(r"^(\s*)(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def prose_lines(text: str):
    """``(line number, line)`` outside fenced code blocks, inline code spans blanked."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        opened = FENCE.match(line)
        if fence:
            if opened and opened.group(2) == fence:
                fence = None
            continue
        if opened:
            fence = opened.group(2)
            continue
        yield number, CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)


def slugify(heading: str) -> str:
    """MkDocs' default ``toc`` slug of a heading as written in Markdown: the text without
    its markup, lowercase, punctuation dropped, spaces and hyphens runs to one ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = re.sub(r"(?<!\w)_|_(?!\w)", "", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(path: Path) -> set[str]:
    """The ids MkDocs gives the headings of ``path`` (repeats get ``_1``, ``_2`` ...)."""
    seen: dict[str, int] = {}
    ids = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        slug = slugify(match.group(2))
        if slug in seen:
            seen[slug] += 1
            slug = f"{slug}_{seen[slug]}"
        else:
            seen[slug] = 0
        ids.add(slug)
    return ids


def broken_links(files) -> list[str]:
    """Every relative link of ``files`` whose target does not exist, or whose ``#anchor``
    names no heading of the Markdown file it points into."""
    problems = []
    for path in files:
        raw = path.read_text(encoding="utf-8")
        for number, line in prose_lines(raw):
            for target in LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, mailto: ...
                    continue
                where = f"{path.relative_to(ROOT)}:{number}: {target}"
                file_part, _, anchor = target.partition("#")
                if target.startswith("/"):
                    problems.append(f"{where} (absolute link)")
                    continue
                resolved = (path.parent / file_part).resolve() if file_part else path
                if not resolved.exists():
                    problems.append(f"{where} (no such file)")
                    continue
                if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                    problems.append(f"{where} (no heading with this anchor)")
    return problems


def test_slugs_follow_mkdocs_toc():
    assert slugify("Where the paper is silent") == "where-the-paper-is-silent"
    assert slugify("The paper's Table 2 (ternary / binary) at CPU scale") == \
        "the-papers-table-2-ternary-binary-at-cpu-scale"
    assert slugify("Fused by default: both ISA levels on a Zen 4") == \
        "fused-by-default-both-isa-levels-on-a-zen-4"
    assert slugify("`twinsnn train`") == "twinsnn-train"
    assert slugify("The main job's model") == "the-main-jobs-model"


def test_the_link_check_finds_a_missing_file_and_a_missing_anchor(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "other.md").write_text("# Title\n\n## A section\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-section) [gone](missing.md) [bad](other.md#nowhere)\n"
                    "[self](#title-here)\n\n# Title here\n\n```\n[in code](missing.md)\n```\n"
                    "`[in a span](missing.md)` [web](https://example.org/x)\n")
    problems = broken_links([page])
    assert len(problems) == 2 and "missing.md (no such file)" in problems[0]
    assert "other.md#nowhere (no heading" in problems[1]


def test_every_relative_link_and_anchor_resolves():
    problems = broken_links(markdown_files())
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_readme_is_a_front_page():
    size = README.stat().st_size
    assert size <= README_LIMIT, f"README.md is {size:,} bytes, more than {README_LIMIT:,}"


def test_the_main_job_command_is_the_same_everywhere():
    def commands(path: Path) -> set[str]:
        return {line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                if line.startswith("apt-get update && apt-get install -y dataset-fashion-mnist")}

    readme = commands(README)
    assert len(readme) == 1
    for page in ("getting-started.md", "results.md"):
        assert commands(DOCS / page) == readme, page


def test_citation_names_this_version_and_the_license():
    version = re.search(r'__version__ = "([^"]+)"',
                        (ROOT / "src" / "twinsnn" / "version.py").read_text()).group(1)
    citation = (ROOT / "CITATION.cff").read_text(encoding="utf-8")
    assert re.search(rf"^version: {re.escape(version)}$", citation, re.M)
    assert re.search(r"^license: MIT$", citation, re.M)
    assert "MIT License" in (ROOT / "LICENSE").read_text()


def _public_names_and_commands() -> tuple[list[str], list[str]]:
    """``twinsnn.__all__`` and every command's ``prog`` of the code in this repository's
    ``src/`` (in a fresh interpreter, whichever twinsnn this one has imported)."""
    script = (
        "import argparse, json, sys\n"
        f"sys.path.insert(0, {str(ROOT / 'src')!r})\n"
        "import twinsnn\n"
        "from twinsnn.cli import build_parser\n"
        "def walk(p):\n"
        "    yield p.prog\n"
        "    for a in p._actions:\n"
        "        if isinstance(a, argparse._SubParsersAction):\n"
        "            for sub in dict.fromkeys(a.choices.values()):\n"
        "                yield from walk(sub)\n"
        "print(json.dumps([twinsnn.__all__, list(walk(build_parser()))]))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    names, progs = json.loads(out.stdout.strip().splitlines()[-1])
    return names, progs


@pytest.mark.slow
@pytest.mark.skipif(any(importlib.util.find_spec(m) is None
                        for m in ("mkdocs", "material", "mkdocstrings_handlers")),
                    reason="the docs extra (mkdocs, mkdocs-material, mkdocstrings[python]) "
                           "is not installed")
def test_site_builds_strictly_with_every_public_name_and_command(tmp_path):
    site = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-6000:]
    names, progs = _public_names_and_commands()
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    missing = [n for n in names
               if f'id="twinsnn.{n}"' not in api and f'id="twinsnn.api.{n}"' not in api]
    assert not missing, f"not on the API page: {missing}"
    cli = (site / "cli" / "index.html").read_text(encoding="utf-8")
    absent = [p for p in progs if f'id="{slugify(p)}"' not in cli]
    assert not absent, f"not on the CLI page: {absent}"
    for module in ("structure", "models", "quant", "losses", "neurons", "formats", "packed",
                   "nir", "portable", "integer"):
        assert f'id="twinsnn.{module}' in (site / "api" / module / "index.html").read_text(
            encoding="utf-8"), module
    assert (site / "runs" / "seeds" / "index.html").exists()  # a record folder's listing
    assert (site / "runs" / "seeds" / "jobs.txt").exists()  # and its records
