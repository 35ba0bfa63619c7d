"""MkDocs hooks: the site's pages come from README.md, BENCHMARKS.md and the package's `__all__`.

Nothing is copied by hand. README.md is split at its ``## `` headings, one page a section (its
opening is the home page); BENCHMARKS.md is one page; each module that defines a name of
`langchain_kd_memory.__all__` gets a reference page with those names, which mkdocstrings renders
from their docstrings. The two files' links are written for the repository's root
(``docs/img/...``, ``BENCHMARKS.md``), so they are rewritten for the site's layout.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_PAGE = "benchmark-results.md"
LINKS = {"](docs/": "](", "](BENCHMARKS.md": f"]({BENCHMARKS_PAGE}"}
"""Repository-root link prefixes and what they are on the site (docs/ is the site's root)."""


def _read(name: str) -> str:
    text = (ROOT / name).read_text(encoding="utf-8")
    for old, new in LINKS.items():
        text = text.replace(old, new)
    return text


def _outside_fences(lines: list[str]) -> Iterator[tuple[str, bool]]:
    """Each line, and whether it is Markdown (not inside a ``` code block)."""
    fenced = False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        yield line, not fenced and not line.startswith("```")


def guide_pages() -> list[tuple[str, str, str]]:
    """(file, title, Markdown) of each page made from README.md, the home page first.

    A section's headings move up one level, so that its ``## Title`` is the page's title.
    """
    sections: list[list[str]] = [[]]
    for line, markdown in _outside_fences(_read("README.md").splitlines()):
        if markdown and line.startswith("## "):
            sections.append([])
        sections[-1].append(line)
    pages = [("index.md", "Home", "\n".join(sections[0]))]
    for lines in sections[1:]:
        title = lines[0].removeprefix("## ").strip()
        text = [line[1:] if markdown and line.startswith("##") else line
                for line, markdown in _outside_fences(lines)]
        slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
        pages.append((f"{slug}.md", title, "\n".join(text)))
    return pages


def reference_pages() -> list[tuple[str, str, str]]:
    """(file, title, Markdown) of each module's reference page, `memory` first."""
    sys.path.insert(0, str(ROOT))  # this checkout's package, whatever is installed
    from langchain_kd_memory import _MODULES, __all__

    names: dict[str, list[str]] = {}
    for name in __all__:
        if name in _MODULES:  # not __version__
            names.setdefault(_MODULES[name], []).append(name)
    return [
        (f"reference/{module}.md", module,
         f"# `langchain_kd_memory.{module}`\n\n::: langchain_kd_memory.{module}\n"
         f"    options:\n      members: [{', '.join(names[module])}]\n")
        for module in sorted(names, key=lambda module: (module != "memory", module))
    ]


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """The navigation: the guide, the benchmarks, the reference."""
    guide = [{title: file} for file, title, _ in guide_pages()]
    reference = [{title: file} for file, title, _ in reference_pages()]
    config.nav = [*guide[:1], {"Guide": guide[1:]}, {"Benchmarks": BENCHMARKS_PAGE},
                  {"Reference": reference}]
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Adds the generated pages to the files MkDocs builds."""
    pages = [*guide_pages(), (BENCHMARKS_PAGE, "Benchmarks", _read("BENCHMARKS.md")),
             *reference_pages()]
    for file, _, content in pages:
        files.append(File.generated(config, file, content=content))
    return files


def on_page_content(html: str, **kwargs: object) -> str:
    """Drops the reST ``.. code-block:: python`` lines of docstrings.

    The indented code under such a line is already a Markdown code block; only the directive
    itself would show, as text.
    """
    return re.sub(r"\s*\.\. code-block:: python", "", html).replace("<p></p>", "")
