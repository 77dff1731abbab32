"""Every file path the documentation names exists, and every link into a page finds its heading.

What counts as a path, and where it is looked for:

- In the Markdown pages (README.md, docs/*.md, benchmarks/README.md): every link target
  `[text](target)` or `![alt](target)` that is not a URL or a bare `#anchor`, resolved from the
  page's own folder; and every word inside an inline code span (`like/this.py`) that looks like
  a path from the repository root. Fenced code blocks are left out: their commands write paths
  that do not exist yet (`models/cifar10/.42.partial`).
- In the docstrings of app/ and training/ (modules, classes and functions, read with `ast`):
  every word that looks like a path from the repository root.

"Looks like a path from the repository root": letters, digits, `_`, `-` and `.` in two or more
segments joined by `/`, whose first segment is one of ROOTS; a trailing `.`, `,`, `:` or `;`
is punctuation, not part of it. A segment in capitals only (`models/NAME/VERSION`,
`models/cifar10/N`) is a placeholder, and a path holding one is skipped, as is anything with
`<`, `{` or `*` in it, which the word pattern does not match. So a path under another first
folder (`checkpoints/...`, `int8/model.xml` inside a version) is not checked. A docstring may
name a module without its `.py` (`training/__main__`).

A link to `page.md#anchor` must also find a heading of that page whose GitHub anchor (lower
case, punctuation dropped, spaces as hyphens) is `anchor`.
"""

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

ROOTS = ("app", "training", "models", "docs", "benchmarks", "tests", "deploy", ".ci")
PAGES = sorted(
    [REPO / "README.md", REPO / "benchmarks" / "README.md", *(REPO / "docs").glob("*.md")]
)
DOCSTRING_TREES = ("app", "training")

_FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_WORD_PATH = re.compile(r"(?<![\w./-])[\w.-]+(?:/[\w.-]+)+/?")
_PLACEHOLDER = re.compile(r"^[A-Z_]+$")


def _root_path(word: str) -> str | None:
    """The word as a repository path, or None when it does not look like one."""
    word = word.rstrip(".,:;")
    segments = [segment for segment in word.split("/") if segment]
    if len(segments) < 2 or segments[0] not in ROOTS:
        return None
    if any(_PLACEHOLDER.match(segment) for segment in segments):
        return None
    return word


def _words_in_code_spans(text: str) -> list[str]:
    return [word for span in _CODE_SPAN.findall(text) for word in span.split()]


def named_paths(page: Path) -> list[tuple[str, Path]]:
    """(as written, resolved) for every path the page names outside fenced code blocks."""
    text = _FENCE.sub("", page.read_text())
    found: list[tuple[str, Path]] = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor on this page
        found.append((target, page.parent / target.split("#", 1)[0]))
    for word in _words_in_code_spans(text):
        for match in _WORD_PATH.finditer(word):
            path = _root_path(match.group())
            if path is not None and match.group() == word.strip("()[],;:'\""):
                found.append((path, REPO / path))
    return found


def docstring_paths(source: Path) -> list[str]:
    """Every repository path named in the file's module, class and function docstrings."""
    tree = ast.parse(source.read_text())
    nodes = ast.walk(tree)
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    docstrings = [ast.get_docstring(node) or "" for node in nodes if isinstance(node, kinds)]
    return [
        path
        for docstring in docstrings
        for match in _WORD_PATH.finditer(docstring)
        if (path := _root_path(match.group())) is not None
    ]


def github_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings (outside fenced code blocks)."""
    text = _FENCE.sub("", page.read_text())
    headings = re.findall(r"^#{1,6} +(.+?) *$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_path_a_page_names_exists(page: Path) -> None:
    missing = [written for written, path in named_paths(page) if not path.exists()]

    assert missing == [], f"{page.relative_to(REPO)} names paths that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_anchor_a_page_links_to_exists(page: Path) -> None:
    text = _FENCE.sub("", page.read_text())
    broken = []
    for target in _LINK.findall(text):
        path, _, anchor = target.partition("#")
        if not anchor or re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue
        linked = page if not path else page.parent / path
        if linked.suffix == ".md" and linked.exists() and anchor not in github_anchors(linked):
            broken.append(target)

    assert broken == [], f"{page.relative_to(REPO)} links to headings that do not exist: {broken}"


def test_every_path_a_docstring_names_exists() -> None:
    sources = [
        source
        for tree in DOCSTRING_TREES
        for source in sorted((REPO / tree).rglob("*.py"))
        if "static" not in source.relative_to(REPO).parts
    ]
    missing = [
        f"{source.relative_to(REPO)}: {path}"
        for source in sources
        for path in docstring_paths(source)
        if not (REPO / path).exists() and not (REPO / f"{path}.py").exists()
    ]

    assert missing == []


def test_the_extraction_sees_paths() -> None:
    """The checks above pass vacuously if nothing is extracted: they must see known paths."""
    readme = {written for written, _ in named_paths(REPO / "README.md")}
    docstrings = docstring_paths(REPO / "app" / "routers" / "web.py")

    assert {
        "docs/page.png",
        "docs/model-card.md",
        "tests/fixtures/cifar10/test00000_cat.png",
    } <= readme
    assert "app/web" in docstrings
    assert _root_path("models/NAME/VERSION") is None
    assert _root_path("checkpoints/cifar10/") is None
    assert _root_path("app/main.py.") == "app/main.py"
