"""The documentation stays usable: relative links resolve, every config key is in docs/config.md, and the README
stays a front door. Plain text checks: no MPI, no torch."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CONFIG_DOC = ROOT / "docs" / "config.md"
MAX_README_LINES = 200


def _pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def _config_keys() -> list[str]:
    """Every dotted config key users can set (e.g. `algorithm.sigma`): the schema's keys, plus the fields of each
    algorithm's `Options` dataclass where algorithms declare their own `algorithm.*` keys. The one place to adapt
    when the keys come from somewhere else."""
    import dataclasses

    from fedmrn_mpi.config import config_keys
    keys = list(config_keys())
    from fedmrn_mpi.algorithms import REGISTRY
    for cls in REGISTRY.values():
        options = getattr(cls, "Options", None)
        if options is not None and dataclasses.is_dataclass(options):
            keys += [f"algorithm.{f.name}" for f in dataclasses.fields(options)]
    return list(dict.fromkeys(k for k in keys if k != "algorithm.options"))


# ------------------------------------------------------------------------------------------------ markdown

_FENCE = re.compile(r"^(```|~~~)")
_CODE_SPAN = re.compile(r"`+[^`\n]*`+")
_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    out, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation other than - and _ removed,
    spaces to -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    text = re.sub(r"[`*]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        m = _HEADING.match(line)
        if not m:
            continue
        slug = _slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every inline link outside code; a code span is blanked first, so a link
    whose text is code still counts."""
    out, fenced = [], False
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines, 1):
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if fenced:
            continue
        for m in _LINK.finditer(_CODE_SPAN.sub(lambda c: "x" * len(c.group()), line)):
            out.append((i, m.group(1)))
    return out


def _relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.\-]*:", target, re.I) and not target.startswith("//")


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_something_that_exists(page: Path) -> None:
    broken = []
    for line, target in _links(page):
        if not _relative(target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{page.relative_to(ROOT)}:{line}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor.lower() not in _anchors(dest):
            broken.append(f"{page.relative_to(ROOT)}:{line}: {target} (no heading with anchor #{anchor})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_slugs_follow_github() -> None:
    assert _slug("Without Slurm: `jobs/run_local.sh`") == "without-slurm-jobsrun_localsh"
    assert _slug("10. BatchNorm statistics and the upload (`bn_recalibrate`)") == \
        "10-batchnorm-statistics-and-the-upload-bn_recalibrate"
    assert _slug("The README's commands: one digest") == "the-readmes-commands-one-digest"


# ------------------------------------------------------------------------------------------- config keys


def _sections(path: Path) -> list[tuple[str, list[str]]]:
    """(heading text, the lines under it up to the next heading of the same or a higher level, sub-sections
    included); the text before the first heading has the heading ''."""
    lines = _prose_lines(path.read_text(encoding="utf-8"))
    heads = [(i, len(m.group(1)), m.group(2)) for i, line in enumerate(lines) if (m := _HEADING.match(line))]
    out = [("", lines[:heads[0][0]] if heads else lines)]
    for n, (i, level, text) in enumerate(heads):
        end = next((j for j, lv, _ in heads[n + 1:] if lv <= level), len(lines))
        out.append((text, lines[i + 1:end]))
    return out


def _key_cells(lines: list[str]) -> set[str]:
    """The names written in backticks in the first cell of the table rows among `lines`."""
    names = set()
    for line in lines:
        cells = line.strip().split("|")
        if line.strip().startswith("|") and len(cells) > 2:
            names.update(re.findall(r"`([^`]+)`", cells[1]))
    return names


def _undocumented(keys: list[str], doc: Path) -> list[str]:
    sections = _sections(doc)
    everywhere = _key_cells(_prose_lines(doc.read_text(encoding="utf-8")))
    missing = []
    for key in keys:
        if key in everywhere:
            continue
        parent, _, leaf = key.rpartition(".")
        if parent and any(leaf in _key_cells(body) for head, body in sections if f"`{parent}`" in head):
            continue
        missing.append(key)
    return missing


def test_every_config_key_is_in_the_config_reference() -> None:
    keys = _config_keys()
    assert len(keys) > 20 and "algorithm.sigma" in keys and "rounds" in keys
    missing = _undocumented(keys, CONFIG_DOC)
    assert not missing, (f"config keys not documented in {CONFIG_DOC.relative_to(ROOT)} (a table row whose first "
                         f"cell names the key in backticks, as `a.b` or as `b` under a heading naming `a`): {missing}")


def test_the_key_check_finds_a_missing_key(tmp_path: Path) -> None:
    doc = tmp_path / "config.md"
    doc.write_text("# Keys\n\n| key | default |\n|---|---|\n| `rounds` | 12 |\n| `data.dir` | null |\n\n"
                   "## `algorithm`\n\n| key | default |\n|---|---|\n| `sigma` | null |\n\n"
                   "## `data`\n\n| key | default |\n|---|---|\n| `name` | x |\n\nProse naming `seed` and `mask`.\n")
    keys = ["rounds", "seed", "data.dir", "data.name", "algorithm.sigma", "algorithm.name", "algorithm.mask",
            "model.name"]
    assert _undocumented(keys, doc) == ["seed", "algorithm.name", "algorithm.mask", "model.name"]


# ---------------------------------------------------------------------------------------------- the README


def test_readme_is_a_front_door() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; at most {MAX_README_LINES}"


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    command = next(line for line in ci if line.startswith("bash setup.sh --test"))
    assert command in README.read_text(encoding="utf-8").splitlines()
