"""Which machine a rank runs on, as far as it decides the bits of CPU and GPU kernels (docs/design.md,
"Reproducibility").

torch's own `cpu_capability` ("AVX512") is too coarse: two machines that both report it gave different digests
for the README's main job. The kernels that run are chosen by three libraries, each from its own view of the CPU:
ATen (`cpu_capability`), oneDNN (the convolutions) and MKL (the Linear layer's SGEMM); on a GPU rank by cuDNN and
cuBLAS for the GPU model. This module names what each of them sees, once per process, cheaply (10-30 ms here,
most of it oneDNN's first JIT compile, which training would pay anyway).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import re
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

# The environment variables that change which CPU kernels run (or how they sum): the ISA caps of oneDNN, ATen and
# MKL, MKL's conditional-numerical-reproducibility branch, and oneDNN's implicit down-conversion of f32 math.
KERNEL_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS",
              "ONEDNN_DEFAULT_FPMATH_MODE", "DNNL_DEFAULT_FPMATH_MODE")

# /proc/cpuinfo flags that name instruction-set extensions kernels may use. The rest of the list (security
# mitigations, virtualisation, power management) changes with the kernel version and microcode, not the kernels
# that run, and would make one machine's digest differ from itself after an OS update.
_ISA_FLAG = re.compile(r"^(sse|ssse3|avx|amx|apx|fma|f16c|bmi|adx|popcnt|abm|lzcnt|movbe|gfni|vaes|vpclmul|pclmul|"
                       r"aes|sha|xsave)")

NONE = "none"        # the library is absent or not used on this rank (no GPU, torch without MKL)
UNKNOWN = "unknown"  # present but it would not say


def _text(s: str) -> str:
    """One line of printable text (C strings and verbose output may carry NULs and newlines)."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in s).split())


def _cpuinfo(path: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo ({} where there is none)."""
    try:
        block = Path(path).read_text(errors="replace").split("\n\n", 1)[0]
    except OSError:
        return {}
    out = {}
    for line in block.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip(), value.strip())
    return out


def cpu_model(info: dict[str, str] | None = None) -> str:
    """'Intel(R) Xeon(R) Processor (GenuineIntel 6/167/1)': the model name with vendor/family/model/stepping,
    because virtual machines often report only a generic name; the platform's processor name elsewhere."""
    info = _cpuinfo() if info is None else info
    name = info.get("model name") or info.get("Model Name") or platform.processor() or platform.machine()
    sig = [info.get(k) for k in ("vendor_id", "cpu family", "model", "stepping")]
    if all(sig):
        name += f" ({sig[0]} {sig[1]}/{sig[2]}/{sig[3]})"
    elif info.get("CPU implementer") and info.get("CPU part"):  # Arm: no model name, the part number instead
        name += f" (implementer {info['CPU implementer']} part {info['CPU part']})"
    return _text(name) or UNKNOWN


def cpu_flags_sha256(info: dict[str, str] | None = None) -> str:
    """First 16 hex digits of the SHA-256 of the sorted instruction-set flags (x86 `flags`, Arm `Features`)."""
    info = _cpuinfo() if info is None else info
    if "flags" in info:
        flags = sorted(f for f in info["flags"].split() if _ISA_FLAG.match(f))
    elif "Features" in info:  # Arm's list holds only instruction-set features
        flags = sorted(info["Features"].split())
    else:
        return UNKNOWN
    return hashlib.sha256(" ".join(flags).encode()).hexdigest()[:16]


def cpu_caches(root: str = "/sys/devices/system/cpu") -> str:
    """'L1d 48K, L1i 64K, L2 2048K, L3 491520K' for the first CPU this process may run on. oneDNN and MKL choose
    their blockings from the cache sizes, and under a hypervisor that hides the CPU model they are what tells two
    server models apart."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    caches = []
    for index in sorted(Path(root, f"cpu{cpus[0] if cpus else 0}", "cache").glob("index*")):
        try:
            level, kind, size = ((index / f).read_text().strip() for f in ("level", "type", "size"))
        except OSError:
            continue
        suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
        caches.append((level, suffix, f"L{level}{suffix} {size}"))
    return ", ".join(c for *_, c in sorted(caches)) or UNKNOWN


def kernel_settings(environ: dict[str, str] | None = None) -> str:
    """The settings that cap or change the CPU kernels, 'NAME=value' joined by spaces; 'none' when all are at
    their defaults."""
    environ = os.environ if environ is None else environ
    parts = [f"{k}={environ[k]}" for k in KERNEL_ENV if environ.get(k)]
    if not torch.backends.mkldnn.enabled:
        parts.append("torch.backends.mkldnn.enabled=False")
    if torch.get_float32_matmul_precision() != "highest":  # may let oneDNN/cuBLAS use bf16/tf32 for f32
        parts.append(f"float32_matmul_precision={torch.get_float32_matmul_precision()}")
    return _text(" ".join(parts)) or NONE


def _libc_fflush() -> None:
    try:
        ctypes.CDLL(None).fflush(None)  # C stdio buffers (oneDNN's printf) reach fd 1 now
    except (OSError, AttributeError):
        pass


def captured_stdout(run: Callable[[], object]) -> str:
    """Run `run()` with file descriptor 1 sent to a temporary file (C libraries print there, below Python's
    sys.stdout); return what was written."""
    sys.stdout.flush()
    _libc_fflush()
    saved = os.dup(1)
    try:
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 1)
            try:
                run()
            finally:
                _libc_fflush()
                os.dup2(saved, 1)
            tmp.seek(0)
            return tmp.read().decode(errors="replace")
    finally:
        os.close(saved)


def _passthrough(out: str, already_verbose: bool) -> None:
    """Give back to fd 1 what the capture took that was not ours to take: everything when the user asked for
    oneDNN's verbose output in the environment, else any line that is not oneDNN's (another thread's)."""
    keep = [ln for ln in out.splitlines(keepends=True)
            if already_verbose or not ln.startswith(("onednn_verbose", "dnnl_verbose"))]
    if keep:
        os.write(1, "".join(keep).encode())


@functools.lru_cache(maxsize=None)
def onednn_isa() -> str:
    """oneDNN's effective instruction set as it names it ('Intel AVX10.1 and Intel AMX with bfloat16 and 8-bit
    integer support'), after ONEDNN_MAX_CPU_ISA. oneDNN keeps it to itself except in the header of its verbose
    output, so one small convolution runs with verbose output on and fd 1 captured. Cached: oneDNN prints that
    header once per process."""
    if not torch.backends.mkldnn.is_available() or not torch.backends.mkldnn.enabled:
        return NONE
    already = bool(os.environ.get("ONEDNN_VERBOSE") or os.environ.get("DNNL_VERBOSE"))
    # channels-last, 8 channels, batch 2: a shape ATen hands to oneDNN (a 1-channel 4x4 one it keeps for itself)
    x = torch.ones(2, 8, 8, 8).to(memory_format=torch.channels_last)
    w = torch.ones(8, 8, 3, 3).to(memory_format=torch.channels_last)

    def conv() -> None:
        if already:  # leave the user's verbose level as it is
            torch.nn.functional.conv2d(x, w)
            return
        with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            torch.nn.functional.conv2d(x, w)

    try:
        out = captured_stdout(conv)
    except (OSError, RuntimeError, AssertionError):
        return UNKNOWN
    _passthrough(out, already)
    found = re.search(r"^(?:onednn|dnnl)_verbose,(?:v1,)?info,cpu,isa:(.*)$", out, re.MULTILINE)
    return _text(found.group(1)) if found else UNKNOWN


# MKL_CBWR branch numbers (mkl_cbwr.h), for the branch MKL_CBWR=AUTO would take on this CPU
_CBWR_BRANCHES = {3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1", 8: "SSE4_2", 9: "AVX", 10: "AVX2",
                  11: "AVX512_MIC", 12: "AVX512", 13: "AVX512_MIC_E1", 14: "AVX512_E1"}


def _mkl_library() -> ctypes.CDLL | None:
    """The loaded library that holds MKL's service functions: torch's own (MKL linked in statically) or MKL's."""
    for stem in ("libtorch_cpu", "libmkl_core", "libmkl_rt"):
        path = _loaded_library(stem)
        if path is None:
            continue
        try:
            lib = ctypes.CDLL(path)  # already loaded: the same handle, nothing is initialised twice
        except OSError:
            continue
        if hasattr(lib, "mkl_serv_cpu_detect") and hasattr(lib, "mkl_serv_cbwr_get_auto_branch"):
            return lib
    return None


@functools.lru_cache(maxsize=None)
def mkl_isa() -> str:
    """MKL's code path as it reports it: 'code path 7, auto branch AVX512_E1' (the kernel set it dispatches to
    after MKL_ENABLE_INSTRUCTIONS and MKL_CBWR, and the MKL_CBWR branch AUTO would take, which also follows
    MKL_ENABLE_INSTRUCTIONS); 'none' for a torch without MKL. MKL's verbose header names the ISA in words but
    measures the clock first (0.3-0.9 s here), so two integers are read from MKL's service functions instead
    (about 2 ms). Its "CPU type" is left out: it read 14 before the first GEMM and 7 after."""
    if not torch.backends.mkl.is_available():
        return NONE
    lib = _mkl_library()
    if lib is None:
        return UNKNOWN
    try:
        detect, auto = int(lib.mkl_serv_cpu_detect()), int(lib.mkl_serv_cbwr_get_auto_branch())
    except AttributeError:
        return UNKNOWN
    return f"code path {detect}, auto branch {_CBWR_BRANCHES.get(auto, str(auto))}"


def _loaded_library(stem: str, maps: str = "/proc/self/maps") -> str | None:
    """Path of the loaded shared library `stem`.so* (e.g. libcublas), from this process's memory map."""
    try:
        for line in Path(maps).read_text().splitlines():
            fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
            path = fields[5] if len(fields) == 6 else ""
            if re.search(rf"/{re.escape(stem)}\.so(\.|$)", path):
                return path
    except OSError:
        pass
    return None


def cublas_version(device: torch.device) -> str:
    """cuBLAS 'MAJOR.MINOR.PATCH' of the library torch loaded (cublasGetProperty), or 'unknown'. torch exposes
    only the CUDA toolkit it was built with (torch.version.cuda), which a CUDA wheel's cuBLAS can differ from."""
    torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)  # cuBLAS is loaded on first use
    path = _loaded_library("libcublas")
    if path is None:
        return UNKNOWN
    try:
        lib = ctypes.CDLL(path)
        parts = []
        for prop in (0, 1, 2):  # libraryPropertyType: MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
            value = ctypes.c_int()
            if lib.cublasGetProperty(prop, ctypes.byref(value)) != 0:
                return UNKNOWN
            parts.append(str(value.value))
    except (OSError, AttributeError):
        return UNKNOWN
    return ".".join(parts)


def gpu_identity(device: torch.device) -> dict[str, str]:
    """On a CUDA rank: the CUDA toolkit torch was built with, the cuDNN and cuBLAS versions; 'none' elsewhere."""
    if device.type != "cuda":
        return {"cuda_version": NONE, "cudnn_version": NONE, "cublas_version": NONE}
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"cuda_version": str(torch.version.cuda or UNKNOWN),
            "cudnn_version": str(cudnn) if cudnn is not None else NONE,
            "cublas_version": cublas_version(device)}


def machine_identity(device: torch.device) -> dict[str, str]:
    """Everything this module knows about the rank's machine, as text: results.schema's CPU_MACHINE_ATTRS, then
    its GPU_MACHINE_ATTRS."""
    info = _cpuinfo()
    return {"cpu_model": cpu_model(info), "cpu_flags_sha256": cpu_flags_sha256(info), "cpu_caches": cpu_caches(),
            "onednn_isa": onednn_isa(), "mkl_isa": mkl_isa(), "cpu_kernel_settings": kernel_settings(),
            **gpu_identity(device)}


# x86 /proc/cpuinfo flags of native bf16 arithmetic: AVX512-BF16 (dot products) and AMX-BF16 (tile matmuls);
# Arm: the `bf16` feature
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_flags(info: dict[str, str] | None = None) -> set[str]:
    """The instruction-set flags of the first processor (x86 `flags`, Arm `Features`; empty where unknown)."""
    info = _cpuinfo() if info is None else info
    return set((info.get("flags") or info.get("Features") or "").split())


def precision_problem(precision: str, allow_emulated: bool, device: str, flags: set[str] | None = None,
                      cuda_bf16: bool | None = None) -> str | None:
    """Why `precision` cannot run natively on this machine's `device` ("cpu", "cuda" or "auto"), or None
    (training/precision.py; docs/precision.md)."""
    if precision != "bf16" or allow_emulated:
        return None
    import torch
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        ok = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
        return None if ok else ("precision: bf16 needs a GPU with native bfloat16 (compute capability 8.0 or newer); "
                                "set allow_emulated_bf16: true to run it emulated (slow)")
    flags = cpu_flags() if flags is None else flags
    if flags & set(BF16_CPU_FLAGS):
        return None
    isa = sorted(f for f in flags if f.startswith(("avx", "amx", "sse4", "asimd", "sve")))
    return (f"precision: bf16 needs native bfloat16 on the CPU (AVX512-BF16 or AMX-BF16), and this CPU has "
            f"{', '.join(isa[-6:]) or 'no such extension'}; set allow_emulated_bf16: true to run bf16 emulated "
            f"(slower than fp32), or keep precision: fp32")
