"""The project's documentation stands alone: its facts live in docs/reference.md, its links resolve.

- No file of the project points outside it (to the reference notes or the shared folder it was
  written from); facts are cited from docs/reference.md instead.
- Every citation `docs/reference.md "Heading"` (or `reference.md 'Heading'`) names a heading that
  docs/reference.md has.
- Every relative markdown link of README.md, CHANGELOG.md and docs/*.md points to a file that exists.
- The ablation tables docs/results.md shows are those recipes/ablation.py wrote to the committed
  run folder (docs/ablation/<date>/results.md), line for line.

Plain text reading; nothing is imported from the library or from Keras.
"""

import pathlib
import re
import urllib.parse

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCE_PAGE = ROOT / "docs" / "reference.md"
THIS_FILE = pathlib.Path(__file__).resolve()

# The `##` sections of docs/reference.md, in order: code cites them by these exact words.
REFERENCE_SECTIONS = [
    "Noise process and parameterization",
    "One consistency-training step",
    "Schedules",
    "Network",
    "Training setup",
    "Latents",
    "Sampling",
    "Evaluation",
    "Where the paper and the authors' code differ",
]

# What the project is made of. bench/results/ holds raw records of past runs and is not scanned.
SCANNED_FOLDERS = ("keras_lct", "recipes", "tests", "docs")
SCANNED_ROOT_FILES = ("README.md", "CHANGELOG.md", "Makefile", "pyproject.toml")
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".cfg", ".ini", ".json", ".yaml", ".yml", ".sh", ".rst"}
SKIPPED_PARTS = {"__pycache__", ".pytest_cache"}

# Built from pieces so that this file does not hold the strings it looks for.
FORBIDDEN = ("REFERENCE" + ".md", ".." + "/shared", "/work" + "/shared", "KERAS_NOTES" + ".md", "ARCHITECTURE" + ".md")

# `docs/reference.md "X"`, `reference.md 'X'`, also with the path in backticks, and lists such as
# `reference.md "X", "Y" and "Z"`. A quoted heading may wrap onto the next line of a docstring or
# of a `#` comment.
_QUOTED = r"""(?P<q>["'])(?P<heading>[^"'\n]+(?:\n[ \t]*(?:#[ \t]*)?[^"'\n]+)?)(?P=q)"""
CITATION = re.compile(r"(?<![\w/.-])(?:docs/)?reference\.md`?[ \t]*(?:\n[ \t]*(?:#[ \t]*)?)?" + _QUOTED)
NEXT_QUOTED = re.compile(r"[ \t]*(?:,[ \t]*(?:and[ \t]+)?|and[ \t]+)" + _QUOTED)

FENCE = re.compile(r"^[ \t]*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target), with an optional "title"; one level of brackets in the text.
LINK = re.compile(r"\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s<>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def project_files():
    files = [ROOT / name for name in SCANNED_ROOT_FILES]
    files += sorted((ROOT / "bench").glob("*.py"))
    for folder in SCANNED_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in TEXT_SUFFIXES and not SKIPPED_PARTS & set(path.parts):
                files.append(path)
    return [path for path in files if path.is_file() and path.resolve() != THIS_FILE]


def read(path):
    return path.read_text(encoding="utf-8", errors="replace")


def relative(path):
    return path.relative_to(ROOT).as_posix()


def line_of(text, offset):
    return text.count("\n", 0, offset) + 1


def normalized(heading):
    """A cited heading as one line: wrapped lines joined, comment markers and runs of spaces removed."""
    return " ".join(re.sub(r"\n[ \t]*(?:#[ \t]*)?", " ", heading).split())


def markdown_lines(text):
    """(line number, line) of the text outside fenced code blocks."""
    inside = None
    for number, line in enumerate(text.splitlines(), start=1):
        fence = FENCE.match(line)
        if fence:
            if inside is None:
                inside = fence.group(1)
            elif fence.group(1) == inside:
                inside = None
            continue
        if inside is None:
            yield number, line


def headings(path):
    """(level, text) of every ATX heading of a markdown file, outside code blocks."""
    found = []
    for _, line in markdown_lines(read(path)):
        match = HEADING.match(line)
        if match:
            found.append((len(match.group(1)), match.group(2)))
    return found


def citations(text):
    """(offset, heading) of every docs/reference.md citation in a text."""
    for match in CITATION.finditer(text):
        yield match.start(), normalized(match.group("heading"))
        end = match.end()
        while True:
            more = NEXT_QUOTED.match(text, end)
            if more is None:
                break
            yield more.start("heading"), normalized(more.group("heading"))
            end = more.end()


def markdown_links(path):
    """(line number, target) of every link of a markdown file, outside code blocks and code spans."""
    for number, line in markdown_lines(read(path)):
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            yield number, match.group(1)


def missing_target(source, target):
    """The file a relative link points to when that file does not exist, else None."""
    if target.startswith("#") or SCHEME.match(target):
        return None
    path = urllib.parse.unquote(target.split("#", 1)[0].split("?", 1)[0])
    if not path:
        return None
    resolved = ROOT / path.lstrip("/") if path.startswith("/") else source.parent / path
    return None if resolved.exists() else resolved


@pytest.mark.backend_neutral
def test_reference_page_has_the_sections_code_cites():
    assert REFERENCE_PAGE.is_file(), "docs/reference.md is missing"
    found = headings(REFERENCE_PAGE)
    assert [text for level, text in found if level == 1], "docs/reference.md has no title"
    assert [text for level, text in found if level == 2] == REFERENCE_SECTIONS
    assert ("Network structure" in [text for level, text in found if level == 3]
            and "CPU presets" in [text for level, text in found if level == 3])


@pytest.mark.backend_neutral
def test_no_file_points_outside_the_project():
    offending = []
    for path in project_files():
        for number, line in enumerate(read(path).splitlines(), start=1):
            for forbidden in FORBIDDEN:
                if forbidden in line:
                    offending.append(f"{relative(path)}:{number}: {forbidden}: {line.strip()[:120]}")
    assert not offending, (
        f"{len(offending)} line(s) point outside the project, which users do not have; cite "
        'docs/reference.md "Heading" instead (and move any missing fact into docs/reference.md):\n'
        + "\n".join(offending)
    )


@pytest.mark.backend_neutral
def test_every_reference_citation_names_a_heading():
    known = {text for _, text in headings(REFERENCE_PAGE)}
    missing = []
    for path in project_files():
        text = read(path)
        for offset, heading in citations(text):
            if heading not in known:
                missing.append(f'{relative(path)}:{line_of(text, offset)}: "{heading}"')
    assert not missing, (
        f"{len(missing)} citation(s) of docs/reference.md name no heading of it; the headings are:\n"
        + "\n".join(f"  {text}" for text in sorted(known))
        + "\nmissing:\n"
        + "\n".join(missing)
    )


@pytest.mark.backend_neutral
def test_relative_markdown_links_resolve():
    pages = [ROOT / "README.md", ROOT / "CHANGELOG.md"] + sorted((ROOT / "docs").glob("*.md"))
    broken = []
    for page in pages:
        for number, target in markdown_links(page):
            resolved = missing_target(page, target)
            if resolved is not None:
                broken.append(f"{relative(page)}:{number}: ({target}) -> no file {resolved}")
    assert not broken, f"{len(broken)} broken relative link(s):\n" + "\n".join(broken)


@pytest.mark.backend_neutral
@pytest.mark.parametrize(
    "text, expected",
    [
        ('Reference: `docs/reference.md` "Schedules".', ["Schedules"]),
        ("see docs/reference.md 'Latents'", ["Latents"]),
        ('reference.md "Training setup", "Latents" and "Sampling"; paper 5.1', ["Training setup", "Latents", "Sampling"]),
        ('"""`docs/reference.md` "One\n    consistency-training step"."""', ["One consistency-training step"]),
        ('# docs/reference.md "Noise process and\n# parameterization"', ["Noise process and parameterization"]),
        ('mydocs/reference.md "X"; reference.md, the page', []),
    ],
)
def test_citation_parsing(text, expected):
    assert [heading for _, heading in citations(text)] == expected


@pytest.mark.backend_neutral
def test_the_results_page_shows_the_committed_ablation_tables_as_the_recipe_wrote_them():
    results_page = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    shown = 0
    for table in sorted((ROOT / "docs" / "ablation").glob("*/results.md")):
        rows = [line for line in table.read_text(encoding="utf-8").splitlines() if line.startswith("| ")]
        assert rows, f"{relative(table)} has no table"
        missing = [row for row in rows if row not in results_page]
        assert not missing, f"docs/results.md lacks {len(missing)} row(s) of {relative(table)}, e.g. {missing[0]}"
        shown += 1
    assert shown  # the dated ablation folders are committed
