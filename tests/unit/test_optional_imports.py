"""Optional parts missing (issue 11): each says in one line what is missing and how to install it."""

import builtins
import sys

import pytest

from fedmrn_mpi.data.readers import DatasetError, read_svhn
from fedmrn_mpi.rng import noise


def _without(monkeypatch, prefix: str) -> None:
    real_import = builtins.__import__

    def guarded(name, *args, **kwargs):
        if name == prefix or name.startswith(prefix + "."):
            raise ImportError(f"No module named {prefix!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", guarded)


def test_svhn_without_scipy_is_a_data_error_the_cli_prints_in_one_line(tmp_path, monkeypatch) -> None:
    for name in ("train_32x32.mat", "test_32x32.mat"):
        (tmp_path / name).write_bytes(b"")
    _without(monkeypatch, "scipy")
    with pytest.raises(DatasetError, match=r"needs scipy: pip install scipy .*fedmrn_mpi\[svhn\]"):
        read_svhn(tmp_path)


def test_triton_asked_for_but_missing_names_the_install(monkeypatch) -> None:
    monkeypatch.setattr(noise, "_triton_ok", None)  # not tried yet in this test
    monkeypatch.delitem(sys.modules, "fedmrn_mpi.rng.kernels", raising=False)
    monkeypatch.delattr(sys.modules["fedmrn_mpi.rng"], "kernels", raising=False)  # else `from . import` finds it
    _without(monkeypatch, "triton")
    with pytest.warns(RuntimeWarning, match="Triton kernels unavailable"):
        with pytest.raises(noise.KernelsUnavailable, match="pip install triton.*unset FEDMRN_KERNELS"):
            noise.use_triton("cpu", "triton")
    assert noise.use_triton("cpu", "auto") is False  # auto quietly uses the reference code
    assert noise.use_triton("cuda", "auto") is False


def test_the_cli_treats_these_as_brief_errors() -> None:
    """fedmrn_mpi/__main__.py prints them without a traceback (checked at the source: the handler's tuple)."""
    import inspect

    import fedmrn_mpi.__main__ as cli
    src = inspect.getsource(cli.main)
    for name in ("DatasetError", "KernelsUnavailable", "BadUpdateError", "RoundTimeout", "CheckpointError"):
        assert name in src.split("brief = isinstance(value, (")[1].split("))")[0], name
