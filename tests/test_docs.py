"""The README stays a front page (≤ 10 KB) and the docs stay navigable: every relative link resolves to a file and,
with a ``#fragment``, to a heading of that file under GitHub's anchor rules; docs/architecture.md draws the flow.

Reads the Markdown as text (no renderer): links and headings inside fenced code blocks or inline code are not links
or headings, exactly as GitHub shows them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_LIMIT = 10 * 1024

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+).+?\1")
# [text](target "title") and ![alt](target); the text may hold one level of brackets ([`a`](b) or [x [y]](z))
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks."""
    fence = None
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if m:
            if fence is None:
                fence = m.group(1)
                continue
            if m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
                continue
        if fence is None:
            yield n, line


def links(text: str) -> list[tuple[int, str]]:
    out = []
    for n, line in prose_lines(text):
        m = REFERENCE_DEF.match(line)
        if m:
            out.append((n, m.group(1)))
            continue
        out += [(n, t) for t in INLINE_LINK.findall(INLINE_CODE.sub("", line))]
    return out


def slug(heading: str) -> str:
    """GitHub's heading anchor: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(text):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        k = seen.get(base, 0)
        seen[base] = k + 1
        out.add(base if k == 0 else f"{base}-{k}")  # GitHub numbers repeated headings: x, x-1, x-2
    return out


def broken_links(page: Path) -> list[str]:
    problems = []
    for n, target in links(page.read_text(encoding="utf-8")):
        if not target or SCHEME.match(target) or target.startswith("//"):
            continue  # absolute URLs are not checked offline
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(ROOT) if page.is_relative_to(ROOT) else page}:{n}: {target}"
        if not dest.exists():
            problems.append(f"{where}: no such file")
        elif fragment and dest.suffix.lower() == ".md" and fragment not in anchors(dest.read_text(encoding="utf-8")):
            problems.append(f"{where}: no heading with that anchor in {dest.name}")
    return problems


PAGES = [README, *sorted(DOCS.glob("*.md"))]


def test_readme_is_at_most_10_kb():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes (limit {README_LIMIT}): move detail into docs/"


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_relative_links_resolve(page):
    assert broken_links(page) == []


def test_the_readme_links_are_found():
    # the README links every command's page; finding none would mean the parser, not the README, is broken
    found = {target for _, target in links(README.read_text(encoding="utf-8"))}
    assert {"docs/status.md", "docs/architecture.md", "#installation"} <= found


def test_the_link_checker_catches_what_it_must(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## `export --triton`: a repo\n\n```\n# not a heading\n```\n",
                                       encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Here\n\n"
        "[ok](other.md) [ok](other.md#other-page) [ok](other.md#export---triton-a-repo) [ok](#here)\n"
        "[web](https://example.com/missing.md) `[code](missing-in-code.md)`\n"
        "[gone](missing.md)\n"
        "[bad anchor](other.md#nope)\n"
        "[fenced heading](other.md#not-a-heading)\n"
        "[self](#nowhere)\n"
        "```\n[in a fence](missing-in-fence.md)\n```\n"
        "[ref]: missing-ref.md\n",
        encoding="utf-8")
    found = broken_links(page)
    assert [p.split(": ", 1)[1] for p in found] == [
        "missing.md: no such file", "other.md#nope: no heading with that anchor in other.md",
        "other.md#not-a-heading: no heading with that anchor in other.md",
        "#nowhere: no heading with that anchor in page.md", "missing-ref.md: no such file"]


def test_github_slugs():
    assert slug("What was verified where") == "what-was-verified-where"
    assert slug("GS: Gaussian smoothing, exactly fused") == "gs-gaussian-smoothing-exactly-fused"
    assert slug("`ncis-deploy doctor`: what is really usable here") == "ncis-deploy-doctor-what-is-really-usable-here"
    assert anchors("## Notes\n## Notes\n") == {"notes", "notes-1"}


def test_each_command_in_the_readme_table_has_its_page():
    commands = re.findall(r"^\| \[`ncis-deploy (\w+)`\]\(docs/(\w+)\.md\)", README.read_text(encoding="utf-8"),
                          re.MULTILINE)
    assert {c for c, _ in commands} >= {"train", "purify", "export", "doctor", "bench", "serve", "eval"}
    for command, page in commands:
        assert page == command, f"`ncis-deploy {command}` links docs/{page}.md"
        assert f"ncis-deploy {command}" in (DOCS / f"{page}.md").read_text(encoding="utf-8")


def test_architecture_draws_the_data_flow():
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    assert blocks, "docs/architecture.md has no diagram block"
    diagram = blocks[0]
    # image → GS → BSN → export → runner → bench/eval/serve, in that order down the picture
    positions = []
    for stage in ("image", "GS", "BSN", "export", "runner"):
        m = re.search(rf"\b{stage}\b", diagram)
        assert m, f"the data-flow diagram does not show {stage}"
        positions.append(m.start())
    assert positions == sorted(positions), "the diagram shows the stages out of order"
    for consumer in ("bench", "eval", "serve"):
        m = re.search(rf"\b{consumer}\b", diagram)
        assert m and m.start() > positions[-1], f"the diagram does not show {consumer} after the runner"
