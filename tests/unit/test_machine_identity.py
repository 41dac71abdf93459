"""The machine identity (run/machine.py): what decides the bits of CPU and GPU kernels is collected on every rank,
travels to rank 0 intact, becomes root attributes, and `report` warns when compared runs differ in it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fedmrn_mpi.config import load_config
from fedmrn_mpi.report import main_report
from fedmrn_mpi.results import REPRO_ATTRS, ResultsWriter, load_run
from fedmrn_mpi.results.schema import CPU_MACHINE_ATTRS, GPU_MACHINE_ATTRS
from fedmrn_mpi.run import machine
from fedmrn_mpi.run.setup import environment_attrs, rank_facts
from result_rows import round_row

ROOT = Path(__file__).resolve().parents[2]
LINUX_X86 = sys.platform == "linux" and os.uname().machine in ("x86_64", "AMD64")
FLAGS = ("fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c bmi1 bmi2 avx512f avx512bw avx512vl amx_tile "
         "md_clear flush_l1d arch_capabilities hypervisor")
X86_INFO = {"vendor_id": "GenuineIntel", "cpu family": "6", "model": "143", "stepping": "8",
            "model name": "Intel(R) Xeon(R) Platinum 8480+", "flags": FLAGS}


# ------------------------------------------------------------------------------------------- collected here

@pytest.mark.skipif(not LINUX_X86, reason="the values checked are those of an x86 Linux machine")
def test_identity_is_collected_on_this_cpu_without_printing(capfd):
    ident = machine.machine_identity(torch.device("cpu"))
    assert list(ident) == [*CPU_MACHINE_ATTRS, *GPU_MACHINE_ATTRS]  # the schema names the attributes
    assert ident["cpu_model"] not in ("", machine.UNKNOWN)
    assert re.fullmatch(r"[0-9a-f]{16}", ident["cpu_flags_sha256"])
    assert re.fullmatch(r"L1d \d+K.*L2 \d+K.*", ident["cpu_caches"])
    # the x86 CPU wheel has oneDNN and MKL: both name an instruction set this CPU has
    assert re.search(r"AVX|SSE", ident["onednn_isa"]), ident["onednn_isa"]
    assert re.fullmatch(r"code path \d+, auto branch (AVX|SSE)\w*", ident["mkl_isa"]), ident["mkl_isa"]
    assert {ident[k] for k in GPU_MACHINE_ATTRS} == {"none"}
    assert all("\x00" not in v and v.isprintable() for v in ident.values())
    out, _ = capfd.readouterr()
    assert "verbose" not in out.lower()  # the libraries' verbose output was captured, not printed


_CAPPED = textwrap.dedent("""
    import json, torch
    from fedmrn_mpi.run import machine
    print("IDENT " + json.dumps(machine.machine_identity(torch.device("cpu"))), flush=True)
""")


@pytest.mark.skipif(not LINUX_X86 or " avx2" not in Path("/proc/cpuinfo").read_text(),
                    reason="needs an x86 CPU with AVX2")
def test_the_recorded_isa_follows_the_caps_and_leaves_a_users_verbose_output_alone():
    """In a fresh process (oneDNN and MKL read their caps once): capped at AVX2, both libraries say AVX2, the caps
    are recorded, and the oneDNN verbose output the user asked for still reaches stdout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
           "ONEDNN_VERBOSE": "1"}
    env.pop("MKL_CBWR", None)
    out = subprocess.run([sys.executable, "-c", _CAPPED], env=env, capture_output=True, text=True, timeout=120,
                         check=True).stdout
    [line] = [ln for ln in out.splitlines() if ln.startswith("IDENT ")]
    ident = json.loads(line[len("IDENT "):])
    assert ident["onednn_isa"] == "Intel AVX2"
    assert ident["mkl_isa"].endswith("auto branch AVX2")
    if "avx512f" in Path("/proc/cpuinfo").read_text() and not os.environ.get("MKL_ENABLE_INSTRUCTIONS"):
        assert ident["mkl_isa"] != machine.mkl_isa()  # this process is not capped: another code path
    assert ident["cpu_kernel_settings"] == "ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2"
    assert "onednn_verbose" in out and "isa:Intel AVX2" in out  # passed through to the user


# ------------------------------------------------------------------------------------------- the pieces

def test_cpu_model_names_the_signature_and_falls_back_off_x86():
    assert machine.cpu_model(X86_INFO) == "Intel(R) Xeon(R) Platinum 8480+ (GenuineIntel 6/143/8)"
    arm = {"CPU implementer": "0x41", "CPU part": "0xd4f", "Features": "fp asimd sve"}
    assert machine.cpu_model(arm).endswith("(implementer 0x41 part 0xd4f)")
    assert machine.cpu_model({"model name": "odd\x00name\n"}) == "odd name"  # no NUL, one line


def test_flags_digest_sees_instruction_sets_but_not_mitigations():
    base = machine.cpu_flags_sha256(X86_INFO)
    shuffled = {**X86_INFO, "flags": " ".join(reversed(FLAGS.split()))}
    mitigated = {**X86_INFO, "flags": FLAGS + " ibrs_enhanced user_shstk"}  # a newer kernel or microcode
    amx = {**X86_INFO, "flags": FLAGS + " amx_fp16 avx10"}
    assert machine.cpu_flags_sha256(shuffled) == machine.cpu_flags_sha256(mitigated) == base
    assert machine.cpu_flags_sha256(amx) != base
    assert machine.cpu_flags_sha256({"model name": "x"}) == "unknown"


def test_caches_from_sysfs(tmp_path):
    cpu = sorted(os.sched_getaffinity(0))[0] if hasattr(os, "sched_getaffinity") else 0
    for i, (level, kind, size) in enumerate([(1, "Data", "48K"), (1, "Instruction", "32K"), (2, "Unified", "2048K"),
                                             (3, "Unified", "107520K")]):
        d = tmp_path / f"cpu{cpu}" / "cache" / f"index{i}"
        d.mkdir(parents=True)
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (d / name).write_text(f"{value}\n")
    assert machine.cpu_caches(str(tmp_path)) == "L1d 48K, L1i 32K, L2 2048K, L3 107520K"
    assert machine.cpu_caches(str(tmp_path / "nothing")) == "unknown"


def test_kernel_settings_name_the_caps():
    assert machine.kernel_settings({}) == "none"
    env = {"MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "HOME": "/x"}
    assert machine.kernel_settings(env) == "ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2"
    enabled = torch.backends.mkldnn.enabled
    try:
        torch.backends.mkldnn.enabled = False
        assert machine.kernel_settings({}) == "torch.backends.mkldnn.enabled=False"
    finally:
        torch.backends.mkldnn.enabled = enabled


def test_loaded_library_is_found_in_the_memory_map(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 1 /opt/nvidia/cublas/lib/libcublasLt.so.12\n"
                    "7f02-7f03 r-xp 00000000 08:01 2 /opt/nvidia/cublas/lib/libcublas.so.12\n"
                    "7f04-7f05 rw-p 00000000 00:00 0 \n")
    assert machine._loaded_library("libcublas", str(maps)) == "/opt/nvidia/cublas/lib/libcublas.so.12"
    assert machine._loaded_library("libcudnn", str(maps)) is None


def test_gpu_fields_are_none_on_a_cpu_rank():
    assert machine.gpu_identity(torch.device("cpu")) == dict.fromkeys(GPU_MACHINE_ATTRS, "none")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_fields_on_a_cuda_rank():
    ident = machine.gpu_identity(torch.device("cuda", 0))
    assert ident["cuda_version"] == torch.version.cuda
    assert ident["cudnn_version"] == str(torch.backends.cudnn.version())
    assert re.fullmatch(r"\d+\.\d+\.\d+", ident["cublas_version"]), ident["cublas_version"]


# ------------------------------------------------------------------------------------------- gathered to rank 0

class _Gather:
    """The transport facts rank_facts and environment_attrs read; gather_strings hands rank 0 `rows`, after
    this rank's own text (which must survive the trip)."""

    def __init__(self, others: list[str], host: str = "node|1", size: int = 1) -> None:
        self.others, self.host, self.size = others, host, size
        self.client_ranks = list(range(1, size)) if size > 1 else [0]

    def hostname(self) -> str:
        return self.host

    def gather_strings(self, text: str) -> list[str]:
        return [text, *self.others]


def _setup(device: str = "cpu") -> SimpleNamespace:
    spec = SimpleNamespace(num_masked=10, num_unmasked=2)
    return SimpleNamespace(device=torch.device(device), threads=1, setup_seconds=1.25, spec=spec,
                           algo=SimpleNamespace(payload_nbytes=lambda: 4, variable_payload=False), data_source="test")


def test_rank_facts_survive_separators_in_any_value():
    [facts] = rank_facts(_setup(), _Gather([]))
    assert facts["host"] == "node|1" and facts["threads"] == "1" and facts["setup_seconds"] == "1.250"
    assert {k: facts[k] for k in CPU_MACHINE_ATTRS + GPU_MACHINE_ATTRS} == machine.machine_identity(
        torch.device("cpu"))


def test_environment_attrs_uniform_mixed_and_gpu_only_from_cuda_ranks():
    [me] = rank_facts(_setup(), _Gather([]))
    other = {**me, "host": "b", "cpu_model": "Other CPU (GenuineIntel 6/207/2)"}
    gpu = {**me, "host": "c", "device": "cuda:0", "gpu": "NVIDIA H200", "cuda_version": "12.8",
           "cudnn_version": "91002", "cublas_version": "12.8.4"}
    cfg = load_config(None, [])
    attrs = environment_attrs(cfg, _setup(), _Gather([], size=3), [me, other, gpu])
    assert attrs["cpu_model"] == "mixed:" + ",".join(sorted([me["cpu_model"], other["cpu_model"]]))
    assert attrs["onednn_isa"] == me["onednn_isa"] and attrs["cpu_flags_sha256"] == me["cpu_flags_sha256"]
    # only the CUDA rank speaks for the GPU libraries; the CPU ranks' "none" does not make them mixed
    assert (attrs["cuda_version"], attrs["cudnn_version"], attrs["cublas_version"]) == ("12.8", "91002", "12.8.4")
    cpu_only = environment_attrs(cfg, _setup(), _Gather([], size=2), [me, other])
    assert {cpu_only[k] for k in GPU_MACHINE_ATTRS} == {"none"}
    assert set(CPU_MACHINE_ATTRS + GPU_MACHINE_ATTRS) <= set(REPRO_ATTRS) <= set(attrs)


# ------------------------------------------------------------------------------------------- report warns

MACHINE = {"cpu_model": "Intel(R) Xeon(R) Processor (GenuineIntel 6/167/1)", "cpu_flags_sha256": "a6735db074b53efc",
           "cpu_caches": "L1d 48K, L1i 64K, L2 2048K, L3 491520K",
           "onednn_isa": "Intel AVX10.1 and Intel AMX with bfloat16 and 8-bit integer support",
           "mkl_isa": "Intel(R) AVX-512", "cpu_kernel_settings": "none", "cuda_version": "none",
           "cudnn_version": "none", "cublas_version": "none"}


def _write(path: Path, name: str, **attrs) -> str:
    """A finished two-round results file with the machine identity MACHINE (`attrs` override; None drops one)."""
    cfg = f"run_name: {name}\nrounds: 2\nclients_per_round: 2\nalgorithm:\n  name: fedavg\n"
    root = {"config_yaml": cfg, "version": "0.1.0", "world_size": 3, "algorithm": "fedavg", "num_masked_params": 3,
            "num_unmasked_values": 0, "torch_version": "2.13.0+cpu", "numpy_version": "2.1.0", "device_type": "cpu",
            "threads_per_rank": 1, "cpu_capability": "AVX512", "gpu_names": ["none"], **MACHINE, **attrs}
    w = ResultsWriter(str(path), {k: v for k, v in root.items() if v is not None}, 2, 3)
    for r in (1, 2):
        w.append_round(round_row(r, 3, client_uplink=(5, 5), downlink_bytes=10))
    w.finalize({"w": np.zeros(3, dtype=np.float32)}, {"rounds_completed": 2, "total_seconds": 1.0})
    return str(path)


def _warnings(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("warning:")]


def test_report_warns_on_a_different_cpu_model_isa_or_cudnn(tmp_path, capsys):
    a = _write(tmp_path / "a.h5", "a")
    b = _write(tmp_path / "b.h5", "b", cpu_model="Intel(R) Xeon(R) Platinum 8480+ (GenuineIntel 6/143/8)")
    assert main_report([a, b]) == 0
    [warning] = _warnings(capsys)
    assert warning.endswith("cpu_model: a=Intel(R) Xeon(R) Processor (GenuineIntel 6/167/1), "
                            "b=Intel(R) Xeon(R) Platinum 8480+ (GenuineIntel 6/143/8)")
    c = _write(tmp_path / "c.h5", "c", onednn_isa="Intel AVX2")
    assert main_report([a, c]) == 0
    [warning] = _warnings(capsys)
    assert warning.endswith(f"onednn_isa: a={MACHINE['onednn_isa']}, c=Intel AVX2")
    g1 = _write(tmp_path / "g1.h5", "g1", device_type="cuda", cudnn_version="90100", cublas_version="12.4.5")
    g2 = _write(tmp_path / "g2.h5", "g2", device_type="cuda", cudnn_version="91002", cublas_version="12.4.5")
    assert main_report([g1, g2]) == 0
    [warning] = _warnings(capsys)
    assert warning.endswith("cudnn_version: g1=90100, g2=91002")


def test_report_does_not_warn_on_an_older_file_without_the_identity(tmp_path, capsys):
    a = _write(tmp_path / "a.h5", "a")
    old = _write(tmp_path / "old.h5", "old", **dict.fromkeys(CPU_MACHINE_ATTRS + GPU_MACHINE_ATTRS))
    assert {load_run(old).setting(k) for k in CPU_MACHINE_ATTRS + GPU_MACHINE_ATTRS} == {"unknown"}
    assert main_report([a, old]) == 0
    assert _warnings(capsys) == []


# ------------------------------------------------------------------------------------------- the capture

def test_capture_takes_c_level_output_and_gives_back_what_is_not_onednns(capfd):
    got = machine.captured_stdout(lambda: os.write(1, b"onednn_verbose,v1,info,cpu,isa:X\nanother thread\n"))
    assert got == "onednn_verbose,v1,info,cpu,isa:X\nanother thread\n"
    assert capfd.readouterr().out == ""  # taken below sys.stdout
    machine._passthrough(got, already_verbose=False)
    assert capfd.readouterr().out == "another thread\n"
    machine._passthrough(got, already_verbose=True)  # the user asked for oneDNN's lines: all of it
    assert capfd.readouterr().out == got
