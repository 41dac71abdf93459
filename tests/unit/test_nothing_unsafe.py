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


# ------------------------------------------------------------------- shell syntax in config paths, taken literally

SHELLY = ["$(touch PWNED)", "`touch PWNED`", ";touch PWNED", "a;touch PWNED;b", "$(touch PWNED)`touch PWNED`"]
# the call sites that expand `~` / `$VAR` in a path (data.dir, the dataset's directory); a new one must be added
# here knowingly (tilde and variable expansion run no command; docs/reliability.md documents them for data.dir)
EXPANDS = {("data/registry.py", "os.path.expandvars"), ("data/registry.py", "os.path.expanduser"),
           ("run/dataset.py", "os.path.expandvars"), ("run/dataset.py", "os.path.expanduser"),
           ("data/readers.py", "expanduser")}


def _config(tmp_path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def _no_pwned(tmp_path):
    assert not [p for p in tmp_path.rglob("*PWNED*") if p.name.startswith("PWNED")], list(tmp_path.rglob("*"))


def test_no_new_path_expansion_sites():
    found = set()
    for path in FILES:
        for call in _calls(path):
            name = _name(call.func)  # "os.path.expandvars", or ".expanduser" for Path(...).expanduser()
            if name.endswith(("expandvars", "expanduser")):
                found.add((str(path.relative_to(PKG)), name if name.startswith("os.") else name.rsplit(".", 1)[-1]))
    assert found <= EXPANDS, sorted(found - EXPANDS)


@pytest.mark.parametrize("shelly", SHELLY)
def test_shell_syntax_in_data_dir_and_prepared_is_a_literal_path(shelly, tmp_path, monkeypatch, capsys):
    from fedmrn_mpi.run.data_commands import main_data
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path, f"data:\n  name: fashion_mnist\n  dir: {yaml.safe_dump(shelly).splitlines()[0]}\n")
    assert main_data(["check", "-c", cfg]) == 1
    err = capsys.readouterr().err
    assert f"data directory {shelly} does not exist" in err, err
    cfg = _config(tmp_path, "num_clients: 4\nclients_per_round: 2\ndata:\n  name: synthetic\n"
                            f"  prepared: {yaml.safe_dump(shelly + '/x.h5').splitlines()[0]}\n")
    assert main_data(["check", "-c", cfg]) == 1
    err = capsys.readouterr().err
    assert f"no file {shelly}/x.h5" in err, err
    _no_pwned(tmp_path)


@pytest.mark.parametrize("shelly", SHELLY + ["$HOME", "~", "~root", "${HOME}x"])
def test_shell_syntax_in_results_dir_and_run_name_is_a_literal_path(shelly, tmp_path, monkeypatch, capsys):
    # `data prepare` writes <results_dir>/<run_name>.data.h5: exactly there, nothing run, nothing expanded
    from fedmrn_mpi.run.data_commands import main_data
    monkeypatch.chdir(tmp_path)
    q = yaml.safe_dump(shelly).splitlines()[0]
    cfg = _config(tmp_path, "num_clients: 4\nclients_per_round: 2\ndata:\n  name: synthetic\n  synthetic_train: 40\n"
                            f"  synthetic_test: 10\nresults_dir: {q}\nrun_name: {q}\n")
    assert main_data(["prepare", "-c", cfg]) == 0, capsys.readouterr().err
    assert (tmp_path / shelly / f"{shelly}.data.h5").is_file(), list(tmp_path.rglob("*"))
    _no_pwned(tmp_path)


@pytest.mark.parametrize("written", ["$HOME/nowhere", "~/nowhere"])
def test_data_dir_expands_home_and_variables_in_python_only(written, tmp_path, monkeypatch, capsys):
    """Documented convenience for cluster paths (`$SCRATCH/cifar10`, `~/data`): os.path.expanduser/expandvars,
    no shell; command syntax stays literal (tests above)."""
    from fedmrn_mpi.run.data_commands import main_data
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = _config(tmp_path, f"data:\n  name: fashion_mnist\n  dir: {yaml.safe_dump(written).splitlines()[0]}\n")
    assert main_data(["check", "-c", cfg]) == 1
    assert f"data directory {tmp_path / 'home' / 'nowhere'} does not exist" in capsys.readouterr().err
    _no_pwned(tmp_path)