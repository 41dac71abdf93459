"""What the config generators (scripts/make_*_configs.py) share: rendering a config as YAML text, and writing
a directory of generated configs or checking that the committed files are what the generator writes.

A generator builds a mapping {path: text} and hands it to :func:`main`:

    python scripts/make_X_configs.py            # (re)write the directory; stale *.yaml in it are removed
    python scripts/make_X_configs.py --check    # exit 1, naming the files, if a committed file differs,
                                                # is missing, or is not generated (used by the tests)

Only the standard library, so the generators run without the package's environment.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["check", "main", "render", "write", "yaml_scalar"]


def yaml_scalar(value: Any) -> str:
    """A scalar as the config files write it: true/false for booleans, str() for the rest."""
    return "true" if value is True else "false" if value is False else str(value)


def render(comments: Sequence[str], keys: Mapping[str, Any]) -> str:
    """YAML text: one `# ` line per comment, then `keys` in their order; a mapping value becomes a section
    (`name:` and its keys indented by two spaces, one level deep, as the config schema is)."""
    lines = [f"# {c}" for c in comments]
    for key, value in keys.items():
        if isinstance(value, Mapping):
            lines.append(f"{key}:")
            lines += [f"  {k}: {yaml_scalar(v)}" for k, v in value.items()]
        else:
            lines.append(f"{key}: {yaml_scalar(value)}")
    return "\n".join(lines) + "\n"


def check(out: Path, want: Mapping[Path, str]) -> list[Path]:
    """The files that differ from `want`: missing, different bytes, or *.yaml in `out` not generated."""
    bad = [p for p, text in want.items() if not p.exists() or p.read_bytes() != text.encode()]
    extra = sorted(set(out.glob("*.yaml")) - set(want))
    return bad + extra


def write(out: Path, want: Mapping[Path, str]) -> list[Path]:
    """Write every file of `want` (unchanged ones are not touched) and remove the *.yaml in `out` that the
    generator no longer writes; returns the removed files."""
    out.mkdir(parents=True, exist_ok=True)
    for p, text in want.items():
        if not p.exists() or p.read_bytes() != text.encode():
            p.write_bytes(text.encode())
    stale = sorted(set(out.glob("*.yaml")) - set(want))
    for p in stale:
        p.unlink()
    return stale


def main(argv: Sequence[str], out: Path, want: Mapping[Path, str], description: str | None = None) -> int:
    """The command line of a generator: write `want` into `out`, or with --check compare; returns the exit
    status."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 if a committed file differs from what the generator writes")
    args = ap.parse_args(list(argv))
    if args.check:
        bad = check(out, want)
        for p in bad:
            print(f"differs from the generator: {p}")
        return 1 if bad else 0
    for p in write(out, want):
        print(f"removed (no longer generated): {p}")
    print(f"wrote {len(want)} configs to {out}")
    return 0
