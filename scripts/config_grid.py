"""What the config generators (scripts/make_*_configs.py) share: rendering a config as YAML text, and writing
a directory of generated configs or checking that the committed files are what the generator writes.

A generator has a function `files(seeds)` that returns a mapping {path: text} and hands it to :func:`main`:

    python scripts/make_X_configs.py            # (re)write the directory; stale *.yaml in it are removed
    python scripts/make_X_configs.py --check    # exit 1, naming the files, if a committed file differs,
                                                # is missing, or is not generated (used by the tests)
    python scripts/make_X_configs.py --seeds 1,2,3 [--out DIR]
                                                # one config per seed (see `seeded`); --out writes elsewhere

Seeds: a generator has a base seed (the one its committed files use). A config at the base seed keeps its plain
name; at any other seed S its file name and run_name end in `-sS` (`iid-fedavg-s2.yaml`, run_name
`compare-iid-fedavg-s2`), so the runs of one setting differ only in `seed` and in their output names. Without
--seeds a generator writes exactly its committed files.

Only the standard library, so the generators run without the package's environment.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["check", "main", "parse_seeds", "render", "seeded", "write", "yaml_scalar"]

SEED_LIMIT = 2**63  # config.py: 0 <= seed < 2**63


def parse_seeds(text: str) -> list[int]:
    """`--seeds 1,2,3`: distinct integers 0 <= seed < 2**63, in the order given."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    bad = [s for s in seeds if not 0 <= s < SEED_LIMIT]
    if bad:
        raise argparse.ArgumentTypeError(f"seed {bad[0]} is out of range (0 <= seed < 2**63)")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r} names a seed twice")
    return seeds


def seeded(stem: str, seed: int, base_seed: int) -> str:
    """The stem of a config at `seed`: `stem` itself at the generator's base seed, else `stem-s<seed>`."""
    return stem if seed == base_seed else f"{stem}-s{seed}"


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


def main(argv: Sequence[str], out: Path, files: Callable[..., Mapping[Path, str]], description: str | None = None,
         seeds_help: str = "one config per seed, e.g. 1,2,3 (default: the generator's base seed)") -> int:
    """The command line of a generator: write `files()` (or `files(seeds)` with --seeds) into `out` (or --out),
    or with --check compare; returns the exit status."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 if a committed file differs from what the generator writes")
    ap.add_argument("--seeds", type=parse_seeds, metavar="S1,S2,...", help=seeds_help)
    ap.add_argument("--out", type=Path, metavar="DIR", help=f"the directory (default {out})")
    args = ap.parse_args(list(argv))
    generated = files() if args.seeds is None else files(args.seeds)
    if args.out is not None:
        out = args.out
    want = {out / p.name: text for p, text in generated.items()}
    if args.check:
        bad = check(out, want)
        for p in bad:
            print(f"differs from the generator: {p}")
        return 1 if bad else 0
    for p in write(out, want):
        print(f"removed (no longer generated): {p}")
    print(f"wrote {len(want)} configs to {out}")
    return 0
