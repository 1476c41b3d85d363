"""README.md stays a quick start, and every relative link in it and in docs/ resolves.

A link `[text](target)` (or `![alt](target)`, or a reference definition `[name]: target`) outside fenced code
blocks and inline code is checked unless its target starts with http:, https: or mailto:. The file part is
taken relative to the linking file and must exist (a file or a folder); a `#anchor` part, also a same-page
`#anchor`, must be the anchor of a heading in the target Markdown file under GitHub's rules: lowercase,
everything except letters (Unicode ones included), digits, spaces, hyphens and underscores removed, each
space a hyphen, and a repeated heading's anchor suffixed -1, -2, ... Anchors into files that are not
Markdown (`stages/train.py#L10`) are not checked.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 150
SKIPPED_SCHEMES = ("http:", "https:", "mailto:")

FENCE = re.compile(r"^\s*(`{3,}|~{3,})")  # also indented, inside list items
ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
# [text](target) or [text](target "title"); the text may hold one level of brackets, e.g. [`a[0]`](x).
INLINE_LINK = re.compile(r"\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^\s()]*)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:[ \t]*(<[^>]*>|\S+)", re.MULTILINE)
HTML_ANCHOR = re.compile(r"<a\s[^>]*\b(?:name|id)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) for every line outside fenced code blocks (the fences themselves left out)."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
            else:
                lines.append((number, line))
        elif match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
                and not line.strip()[len(match.group(1)):].strip():
            fence = None
    return lines


def prose(text: str) -> str:
    """The text with fenced code blocks and code spans (`x`, ``x``, also over a line end) blanked out.

    Blanked characters become spaces and line ends stay, so offsets and line numbers are the text's own.
    """
    kept = dict(prose_lines(text))
    chars = list("\n".join(kept.get(n, " " * len(line)) for n, line in enumerate(text.splitlines(), start=1)))
    blanked = "".join(chars)
    runs = [(m.start(), m.end()) for m in re.finditer(r"`+", blanked)]
    i = 0
    while i < len(runs):
        start, end = runs[i]
        closing = next((k for k in range(i + 1, len(runs)) if runs[k][1] - runs[k][0] == end - start), None)
        if closing is None or re.search(r"\n[ \t]*\n", blanked[end:runs[closing][0]]):  # no span past a paragraph
            i += 1
            continue
        for position in range(start, runs[closing][1]):
            if chars[position] != "\n":
                chars[position] = " "
        i = closing + 1
    return "".join(chars)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text, before duplicate suffixes."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors on its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w: Unicode letters and digits, and _
    return text.replace(" ", "-")


def headings(text: str) -> list[str]:
    """The text of every heading (ATX and setext), in order, outside fenced code blocks."""
    found, previous = [], None
    for number, line in prose_lines(text):
        atx = ATX_HEADING.match(line)
        if atx:
            found.append(atx.group(2) or "")
            previous = None
            continue
        if previous is not None and previous[0] == number - 1 and previous[1].strip() \
                and SETEXT_UNDERLINE.match(line) and not re.match(r"^ {0,3}([-*+]\s|\d+[.)]\s|>|\|)", previous[1]):
            found.append(previous[1].strip())
            previous = None
            continue
        previous = (number, line)
    return found


def anchors(text: str) -> set[str]:
    """Every anchor a Markdown file offers: its headings' (with -1, -2 for repeats) and <a name/id>."""
    result, seen = set(), {}
    for heading in headings(text):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    result.update(HTML_ANCHOR.findall(text))
    return result


def links(text: str) -> list[tuple[int, str, str]]:
    """(line number, the link as written, its target) for every link outside code."""
    text = "\n".join(text.splitlines())  # offsets below are the same in text and in its prose
    visible = prose(text)
    found = []
    for pattern in (INLINE_LINK, REFERENCE_DEFINITION):
        for match in pattern.finditer(visible):
            written = " ".join(text[match.start():match.end()].split())
            found.append((visible.count("\n", 0, match.start()) + 1, written, match.group(1)))
    return sorted(found)


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """'file:line: link: why' for each relative link of a Markdown file that does not resolve."""
    text = path.read_text(encoding="utf-8")
    try:
        shown = path.relative_to(root)
    except ValueError:
        shown = path
    problems = []
    for number, written, target in links(text):
        target = target.strip("<>")
        if target.lower().startswith(SKIPPED_SCHEMES):
            continue
        file_part, _, anchor = target.partition("#")
        file_part, anchor = unquote(file_part), unquote(anchor)
        where = f"{shown}:{number}: {written}"
        if not file_part and not anchor:
            problems.append(f"{where}: empty target")
            continue
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            problems.append(f"{where}: {file_part} does not exist (looked for {destination})")
            continue
        if anchor and destination.is_file() and destination.suffix.lower() in (".md", ".markdown"):
            offered = anchors(destination.read_text(encoding="utf-8"))
            if anchor not in offered:
                problems.append(f"{where}: no heading in {file_part or shown} has the anchor #{anchor}")
    return problems


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path):
    problems = broken_links(path)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_readme_is_a_quick_start():
    lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines, more than {README_MAX_LINES}: move the detail into a page of docs/")


def test_readme_links_every_docs_page():
    readme = ROOT / "README.md"
    linked = {(readme.parent / unquote(target.partition("#")[0])).resolve()
              for _, _, target in links(readme.read_text(encoding="utf-8")) if target.partition("#")[0]}
    missing = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").rglob("*.md")) if p.resolve() not in linked]
    assert not missing, f"docs pages not in README.md's map of docs/: {missing}"


def test_slug_follows_github():
    assert slug("Setup (one command)") == "setup-one-command"
    assert slug("Air-gapped: local model and data") == "air-gapped-local-model-and-data"
    assert slug("B − A, `paired` & *bold* snake_case") == "b--a-paired--bold-snake_case"
    assert slug("Über grüße 2026-12-03") == "über-grüße-2026-12-03"
    assert slug("See [the page](other.md)") == "see-the-page"
    assert anchors("# Intro\n## Intro\n```\n# Intro\n```\nIntro\n-----\n") == {"intro", "intro-1", "intro-2"}


def test_checker_finds_broken_links(tmp_path: Path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Part one\n")
    (tmp_path / "folder").mkdir()
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n"
        "[fine](other.md#part-one) [folder](folder) [self](#page) [web](https://example.com/x.md)\n"
        "[gone](missing.md)\n"
        "text `[in code](missing.md)` and ``[also `code`](missing.md)``\n"
        "```\n[in a fence](missing.md)\n```\n"
        "[bad anchor](other.md#part-two) and [bad self](#nowhere)\n"
        "[mail](mailto:x@example.com) ![image](img.png)\n",
        encoding="utf-8")
    problems = broken_links(page, root=tmp_path)
    assert problems == [
        f"page.md:3: [gone](missing.md): missing.md does not exist (looked for {(tmp_path / 'missing.md').resolve()})",
        "page.md:8: [bad anchor](other.md#part-two): no heading in other.md has the anchor #part-two",
        "page.md:8: [bad self](#nowhere): no heading in page.md has the anchor #nowhere",
        f"page.md:9: [image](img.png): img.png does not exist (looked for {(tmp_path / 'img.png').resolve()})",
    ], problems
