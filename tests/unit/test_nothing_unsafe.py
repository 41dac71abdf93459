"""Nothing unsafe in the package (read from its source, so a new call site cannot slip in): no pickle on the wire
or in results, YAML loaded safely, checkpoints read with weights_only=True, nothing run through a shell, and only
buffer-based (uppercase) MPI calls."""

import ast
from pathlib import Path

import pytest
import yaml

PKG = Path(__file__).resolve().parents[2] / "fedmrn_mpi"
FILES = sorted(PKG.rglob("*.py"))
# the one place that unpickles: CIFAR's python batches, through an unpickler that refuses every global but
# numpy's array reconstruction (tests/unit/test_data.py checks that it refuses others)
PICKLE_ALLOWED = {PKG / "data" / "readers.py"}


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            yield node


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
    return out


def test_the_source_was_found():
    assert len(FILES) > 50 and PKG / "comm" / "transport.py" in FILES


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_no_pickle_marshal_or_shell(path):
    mods = _imports(path)
    if path not in PICKLE_ALLOWED:
        assert not mods & {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve"}, path
    for call in _calls(path):
        name = _name(call.func)
        assert name not in ("os.system", "os.popen", "eval", "exec", "os.execl", "os.execv"), (path, name)
        for kw in call.keywords:  # subprocess.run(..., shell=True) and friends
            assert not (kw.arg == "shell" and getattr(kw.value, "value", False) is True), (path, call.lineno)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_yaml_is_loaded_safely_and_torch_load_reads_weights_only(path):
    for call in _calls(path):
        name = _name(call.func)
        if name in ("yaml.load", "yaml.load_all", "yaml.full_load", "yaml.unsafe_load"):
            loader = next((kw.value for kw in call.keywords if kw.arg == "Loader"), None)
            assert loader is not None and _name(loader) == "_Loader", (path, call.lineno)
        if name == "torch.load":
            kw = {k.arg: k.value for k in call.keywords}
            assert getattr(kw.get("weights_only"), "value", None) is True, (path, call.lineno)


def test_the_config_loader_is_a_safe_loader():
    from fedmrn_mpi.config import ConfigError, _Loader, load_config
    assert issubclass(_Loader, yaml.SafeLoader)
    with pytest.raises((ConfigError, yaml.YAMLError)):
        yaml.load("!!python/object/apply:os.system ['echo hi']", Loader=_Loader)
    bad = Path(__file__).parent / "_tmp_unsafe.yaml"
    try:
        bad.write_text("run_name: !!python/object/apply:os.system ['echo pwned']\n")
        with pytest.raises(ConfigError):
            load_config(bad, [])
    finally:
        bad.unlink()


def test_mpi_calls_are_buffer_based():
    # lowercase mpi4py methods (bcast, gather, send, ...) pickle Python objects; the transport uses only the
    # uppercase buffer methods
    for call in _calls(PKG / "comm" / "transport.py"):
        name = _name(call.func)
        if "comm." in name or name.startswith("comm"):
            method = name.rsplit(".", 1)[-1]
            assert method[0].isupper(), (name, call.lineno)


def test_paths_from_configs_are_never_run_through_a_shell():
    # data.dir, results paths and checkpoint paths go to open()/h5py/os functions only; the one subprocess call
    # in the package asks git for its revision with a fixed argument list
    for path in FILES:
        for call in _calls(path):
            name = _name(call.func)
            if name.startswith("subprocess."):
                assert path.name == "setup.py" and isinstance(call.args[0], ast.List), (path, call.lineno)
