"""Which torch (and Triton) this package supports, and every code path that depends on their versions.

The supported torch range (docs/torch_versions.md) is `TORCH_LOWEST` and newer. `TORCH_LOWEST` is setup.py's
lower bound (a unit test keeps the two equal) and is tested by scripts/test_lowest_torch.sh in a second
environment; `TORCH_NEWEST_TESTED` is what setup.sh pins and CI's main environment runs. Newer torch is allowed
(a cluster's own CUDA build must not be replaced by pip) but untested: `torch_range_note` says so in the run log.

A call whose behaviour or existence depends on the torch or Triton version goes through a function here, so
that raising the lower bound, or meeting a new release, means reading this one file. The facts behind each:

- `cpu_capability`: torch.backends.cpu.get_cpu_capability() names the CPU kernels' instruction set. Its
  strings are not a stable vocabulary (new ISAs get new names), so results record it verbatim.
- `load_weights_only`: torch.load's `weights_only` default flipped to True in torch 2.6 and a missing
  argument warns before that; it is passed explicitly, so every supported torch reads checkpoints the same way.
- `triton_interpreter_problem`: Triton's CPU interpreter (the kernel tests on machines without a GPU) before
  3.7 turns a kernel's integer argument into a Python int with `int(ndarray)`, which NumPy 2.4 refuses for a
  1-element array (triton-lang/triton#9171); a loop bounded by an argument then fails. torch 2.11 pins
  Triton 3.6. Compiled kernels on a GPU are not affected.
- `triton_interpreter_fma_rounds_twice`: the same interpreter before Triton 3.9 evaluates `tl.fma(x, y, z)` as
  `x * y + z`, rounding twice (triton-lang/triton#11424, #11641), so a fused sum of uploads differs in the
  last bits from the GPU and from torch's `add_(alpha=)`. The kernel tests give such an interpreter a
  single-rounding fma (tests/triton_fma.py); the package never patches Triton.

This module imports torch, so it sits above `results/` in the layers (docs/design.md, "Layout") and
`report/` never imports it (the report commands run without torch). It must not import Triton: client ranks
on the CPU never load it (tests/unit/test_lean_start.py).
"""

from __future__ import annotations

import re
from importlib import metadata
from typing import Any

import numpy as np
import torch

__all__ = [
    "TORCH_LOWEST",
    "TORCH_NEWEST_TESTED",
    "TRITON_INTERPRETER_FMA_FIXED",
    "TRITON_INTERPRETER_NUMPY_FIXED",
    "cpu_capability",
    "interpreter_numpy_pin",
    "load_weights_only",
    "torch_range_note",
    "triton_interpreter_fma_rounds_twice",
    "triton_interpreter_problem",
    "version_tuple",
]

# setup.py's bound and the version scripts/test_lowest_torch.sh installs (it reads this line: keep its form)
TORCH_LOWEST = "2.11.0"
# setup.sh's pin; a newer minor release than this is accepted but has not been tested
TORCH_NEWEST_TESTED = "2.13.0"
# the first Triton whose interpreter takes a 1-element argument array under NumPy >= 2.4 (triton#9172)
TRITON_INTERPRETER_NUMPY_FIXED = (3, 7)
_NUMPY_STRICT_SCALARS = (2, 4)   # NumPy 2.4: int() of an array with ndim > 0 is a TypeError
# the first Triton whose interpreter rounds tl.fma once (triton#11641); 3.6 to 3.8 compute x * y + z
TRITON_INTERPRETER_FMA_FIXED = (3, 9)


def version_tuple(text: str) -> tuple[int, ...]:
    """The release numbers of a version string: '2.11.0+cu130' -> (2, 11, 0), '2.14.0a0+git12ab' -> (2, 14, 0).

    Pre-release and local tags are dropped: a nightly counts as its release, a CUDA build as the CPU one."""
    m = re.match(r"\s*v?(\d+(?:\.\d+)*)", text)
    if not m:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(p) for p in m.group(1).split("."))


def torch_range_note(version: str | None = None) -> str | None:
    """One line for the run log when torch `version` (default: the running one) is outside the tested range;
    None inside it. Patch releases of a tested minor count as tested."""
    version = torch.__version__ if version is None else version
    have = version_tuple(version)[:2]
    if have < version_tuple(TORCH_LOWEST)[:2]:
        return (f"torch {version} is older than the lowest supported {TORCH_LOWEST} (setup.py); "
                f"install torch>={TORCH_LOWEST} (docs/torch_versions.md)")
    if have > version_tuple(TORCH_NEWEST_TESTED)[:2]:
        return (f"torch {version} is newer than the newest tested {TORCH_NEWEST_TESTED}: it should work, "
                f"but its results may differ in the last bits from runs under a tested torch "
                f"(docs/torch_versions.md)")
    return None


def cpu_capability() -> str:
    """The instruction set of torch's CPU kernels on this machine ('AVX512', 'AVX2', 'DEFAULT', ...)."""
    return str(torch.backends.cpu.get_cpu_capability())


def load_weights_only(path: str) -> Any:
    """torch.load of a file of tensors and plain containers, on the CPU, refusing any other pickled object."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _installed(dist: str) -> str | None:
    """An installed distribution's version, read from its metadata (without importing it), or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def triton_interpreter_problem(triton_version: str | None = None, numpy_version: str | None = None) -> str | None:
    """Why Triton's CPU interpreter cannot run this package's kernels with these versions (default: the
    installed Triton and the running NumPy), or None when it can or no Triton is installed.

    Only the interpreter is affected: the kernels compile and run on a GPU with any Triton that torch pins."""
    triton_version = _installed("triton") if triton_version is None else triton_version
    numpy_version = np.__version__ if numpy_version is None else numpy_version
    if triton_version is None:
        return None
    if (version_tuple(triton_version)[:2] < TRITON_INTERPRETER_NUMPY_FIXED
            and version_tuple(numpy_version)[:2] >= _NUMPY_STRICT_SCALARS):
        fixed = ".".join(map(str, TRITON_INTERPRETER_NUMPY_FIXED))
        return (f"Triton {triton_version}'s CPU interpreter cannot run these kernels under NumPy {numpy_version} "
                f"(a loop bounded by a kernel argument fails; triton-lang/triton#9171): install "
                f"'{interpreter_numpy_pin()}' or triton>={fixed}, or run the kernels on a GPU")
    return None


def interpreter_numpy_pin() -> str:
    """The NumPy requirement under which an older Triton's interpreter runs the kernels."""
    return "numpy<" + ".".join(map(str, _NUMPY_STRICT_SCALARS))


def triton_interpreter_fma_rounds_twice(triton_version: str | None = None) -> bool:
    """Whether Triton's CPU interpreter (default: the installed Triton's) rounds `tl.fma` twice; False without
    Triton. Compiled kernels always round once."""
    triton_version = _installed("triton") if triton_version is None else triton_version
    return triton_version is not None and version_tuple(triton_version)[:2] < TRITON_INTERPRETER_FMA_FIXED
