"""Fuzzed configs and command-line overrides (issue 11 item 5): every input either validates, and the Config then
reads back equal from `config_to_yaml`, or raises ConfigError with a one-line message; through `main` an invalid
one exits 2 with exactly one stderr line `fedmrn-mpi: config error: ...` and no traceback. Never another exception
type (TypeError, OverflowError, RecursionError, a yaml error leaking, ...)."""

from __future__ import annotations

import signal

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import fedmrn_mpi.comm
import fedmrn_mpi.run
from fedmrn_mpi.__main__ import main
from fedmrn_mpi.config import (Config, ConfigError, allowed, apply_overrides, config_from_dict, config_keys,
                               config_to_dict, config_to_yaml, default_config, load_config)

KEYS = config_keys()
SECTIONS = sorted({k.split(".")[0] for k in KEYS if "." in k})


def fuzz(n: int) -> settings:
    """Derandomized: CI sees the same examples every run. A valid example costs ~20 ms (PyYAML reads the round
    trip back)."""
    return settings(max_examples=n, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------------------------------------ strategies

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.integers(min_value=-2**70, max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**63 - 1, 2**63, -2**63, 10**30, 10**400]),
    st.floats(), st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, -1e-320, 0.0, -0.0, 1e-3]),
    st.text(max_size=20), st.sampled_from(["fedmrn", "signed", "cnn4", "iid", "1e-3", "001", "yes", "~", "null",
                                           "binary ", "FEDMRN", "fashion-mnist", "cifar10"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)
near_keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(SECTIONS),
                      st.sampled_from(KEYS).map(lambda k: k[:-1]),          # misspelled
                      st.sampled_from(KEYS).map(lambda k: k.upper()),
                      st.sampled_from(KEYS).map(lambda k: k.split(".")[-1]),  # leaf at the wrong level
                      st.sampled_from(KEYS).map(lambda k: k + ".x"),
                      st.text(max_size=12))


def _flow(value) -> str:
    """A value as the YAML text a user would type after `key=`."""
    try:
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("\n").removesuffix("\n...")
    except (yaml.YAMLError, ValueError):  # e.g. an int too long to print
        return "1"


def _block(value) -> str:
    """A value as a YAML document in block style."""
    try:
        return yaml.safe_dump(value, default_flow_style=False, allow_unicode=True)
    except (yaml.YAMLError, ValueError):
        return "1\n"


def _leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield prefix + k, v


_DEFAULTS = {k: v for s in [config_to_dict(default_config())] for k, v in _leaves(s)}


def _good_value(key: str):
    """Values a user would plausibly give `key` (mostly valid, so the valid path is fuzzed too)."""
    choices = allowed(key)
    default = _DEFAULTS[key]
    if choices:
        return st.sampled_from(choices)
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.integers(0, 12)
    if isinstance(default, float) or key in ("algorithm.sigma", "round_timeout"):
        return st.one_of(st.floats(0.0, 0.99), st.none())
    return st.one_of(st.text(max_size=10), st.none())


good_override = st.sampled_from(KEYS).flatmap(lambda k: _good_value(k).map(lambda v: f"{k}={_flow(v)}"))


override_text = st.one_of(
    good_override, good_override,
    st.builds(lambda k, v: f"{k}={_flow(v)}", near_keys, values),
    st.builds(lambda k, t: f"{k}={t}", st.sampled_from(KEYS), st.text(max_size=20)),
    st.text(max_size=30),                                            # anything, often no '='
    st.sampled_from(["", "=", "=1", "rounds", "rounds=", "a..b=1", ".rounds=1", "rounds.=1", "algorithm.=1",
                     "algorithm..name=fedavg", " =3", "ròunds=3", "rounds=３", "algorithm.name.x=1", "data=5",
                     "seed=0x10", "lr=1_000", "lr=1e", "rounds=[", "rounds={a: [}", "rounds=!!python/object:os.system x",
                     "rounds=&a [*a]", "algorithm=&a {b: *a}", "algorithm=&a {name: *a}", "rounds=2001-13-45",
                     "rounds=2001-01-01", "run_name=2001-13-45", "rounds=" + "[" * 200, "rounds=" + "9" * 5000,
                     "lr=" + "9" * 400, "seed=" + "9" * 30, "rounds=1e400", "lr=.nan", "run_name=a\nb",
                     "run_name=\udcff", "rounds=\x00", "algorithm.mask=", "data.dir=", "round_timeout=-1",
                     "on_bad_update=SKIP", "algorithm.sigma=null", "data={name: [1]}"]),
)


def _deep_list(n: int) -> list:
    out: list = [1]
    for _ in range(n):
        out = [out]
    return out


def _dotted_to_nested(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        *heads, leaf = key.split(".")
        node = out
        for h in heads:
            nxt = node.get(h)
            if not isinstance(nxt, dict):
                nxt = node[h] = {}
            node = nxt
        node[leaf] = value
    return out


mappings = st.one_of(
    st.lists(st.tuples(st.sampled_from(KEYS), values), max_size=4).map(_dotted_to_nested),
    st.lists(st.sampled_from(KEYS).flatmap(lambda k: st.tuples(st.just(k), _good_value(k))), max_size=5
             ).map(_dotted_to_nested),
    st.lists(st.tuples(near_keys, values), max_size=3).map(_dotted_to_nested),
    st.dictionaries(st.one_of(st.text(max_size=8), st.integers(), st.none(), st.booleans()), values, max_size=3),
    st.fixed_dictionaries({s: values for s in SECTIONS}),
)

# ------------------------------------------------------------------------------------------------ the checks


def _one_line(exc: ConfigError) -> str:
    text = str(exc)
    assert text and "\n" not in text and "\r" not in text, repr(text)
    assert "Traceback" not in text
    return text


def _round_trips(cfg: Config, tmp_path) -> None:
    p = tmp_path / "roundtrip.yaml"
    p.write_text(config_to_yaml(cfg), encoding="utf-8")
    assert load_config(p) == cfg


def _outcome(fn, *args, **kw):
    """The Config, or the ConfigError's (one-line) text; any other exception fails the test."""
    try:
        got = fn(*args, **kw)
    except ConfigError as exc:
        event("ConfigError")
        return _one_line(exc)
    event("valid")
    return got


@fuzz(100)
@given(overrides=st.lists(override_text, max_size=4))
@example(overrides=["lr=" + "9" * 400])                 # OverflowError: int too large to convert to float
@example(overrides=["rounds=" + "9" * 5000])            # ValueError: int string conversion limit, out of YAML
@example(overrides=["rounds=2001-13-45"])               # ValueError: month must be in 1..12, out of YAML
@example(overrides=["run_name=2001-13-45"])             # the same for a string key: taken literally
@example(overrides=["rounds=" + "[" * 3000])            # RecursionError in the YAML composer
@example(overrides=["algorithm=&a {b: *a}"])            # a recursive mapping: RecursionError recording sources
@example(overrides=["rounds={a: [}"])                   # YAML error text spanning several lines
@example(overrides=["rounds=10000000000000000000000"])  # an integer that fits no int64 dataset
@example(overrides=["a\nb=1"])                          # an unknown key with a newline
def test_overrides_validate_or_raise_config_error(overrides, tmp_path_factory):
    got = _outcome(load_config, None, overrides)
    if isinstance(got, Config):
        _round_trips(got, tmp_path_factory.mktemp("rt"))
        # the same overrides on a Config (apply_overrides) agree with load_config on the defaults
        assert apply_overrides(default_config(), overrides) == got


@fuzz(50)
@given(overrides=st.lists(override_text, max_size=3), base=st.lists(st.tuples(st.sampled_from(KEYS), values),
                                                                    max_size=3))
def test_apply_overrides_on_a_valid_config(overrides, base, tmp_path_factory):
    start = _outcome(config_from_dict, _dotted_to_nested(base))
    if not isinstance(start, Config):
        start = default_config()
    got = _outcome(apply_overrides, start, overrides)
    if isinstance(got, Config):
        _round_trips(got, tmp_path_factory.mktemp("rt"))


@fuzz(100)
@given(data=st.one_of(mappings, values))
@example(data={"rounds": 10**5000})                     # str(int) limit: must not validate and then fail to dump
@example(data={"lr": 10**400})                          # OverflowError converting to float
@example(data={"algorithm": {"name": {"a": _deep_list(30)}}})
@example(data={1: 2})
@example(data={None: {"x": 1}})
@example(data=[{"rounds": 3}])
def test_config_from_dict_validates_or_raises_config_error(data, tmp_path_factory):
    got = _outcome(config_from_dict, data)
    if isinstance(got, Config):
        _round_trips(got, tmp_path_factory.mktemp("rt"))


def test_a_deeply_nested_value_is_a_config_error():
    # (outside hypothesis, which cannot print such an example) repr() of the value in the message would recurse
    for key, data in (("rounds", {"rounds": _deep_list(5000)}), ("algorithm.name", {"algorithm": {"name": _deep_list(5000)}})):
        with pytest.raises(ConfigError, match=f"{key}: expected") as info:
            config_from_dict(data)
        _one_line(info.value)


def _yaml_docs():
    """YAML documents: dumps of random mappings and values, and hand-made awkward texts."""
    dumped = st.one_of(mappings, values).map(_block)
    dup = st.builds(lambda k, a, b: f"{k.split('.')[-1]}: {_flow(a)}\n{k.split('.')[-1]}: {_flow(b)}\n",
                    st.sampled_from(KEYS), values, values)
    nested_dup = st.builds(lambda a, b: f"algorithm:\n  name: {_flow(a)}\n  name: {_flow(b)}\n", values, values)
    deep = st.integers(1, 300).map(lambda n: "rounds: " + "[" * n + "]" * n + "\n")
    deep_map = st.integers(1, 300).map(lambda n: "".join(f"{'  ' * i}k{i}:\n" for i in range(n)))
    fixed = st.sampled_from([
        "", "---\n", "--- 1\n", "- rounds: 3\n", "rounds: 3\n---\nrounds: 4\n", "rounds: *x\n", "&a [*a]\n",
        "a: &a {b: *a}\n", "algorithm: &a {name: *a}\n", "rounds: 2001-13-45\n", "run_name: 2001-13-45\n",
        "rounds: " + "9" * 5000 + "\n", "lr: " + "9" * 400 + "\n", "? [a, b]\n: 1\n", "? {a: 1}\n: 2\n",
        "<<: {rounds: 3}\nrounds: 4\n", "rounds: !!binary aGVsbG8=\n", "rounds: !!python/name:os.system\n",
        "run_name: !!python/object/apply:os.system ['touch PWNED']\n", "\t rounds: 3\n", "rounds: 3\n\x00",
        "rounds: 3\nrounds: 3\n", "data:\n  name: mnist\n  name: mnist\n", "algorithm: [fedmrn]\n",
        "rounds: '3'\n", "rounds: 3.0\n", "rounds: 3.5\n", "lr: 1e-3\n", "seed: 0o17\n", "seed: 0x1F\n",
        "rounds: .inf\n", "rounds: -.inf\n", "lr: .NaN\n", "algorithm:\n", "data: ~\n", "\ufeffrounds: 3\n",
        "run_name: \"\\udcff\"\n", "run_name: \"a\\nb\"\n", "\"a\\nb\": 1\n",
    ])
    return st.one_of(dumped, dup, nested_dup, deep, deep_map, fixed, st.text(max_size=60))


@fuzz(100)
@given(doc=_yaml_docs(), raw=st.binary(max_size=40), use_raw=st.booleans())
@example(doc="", raw=b"\xff\xfe\x00rounds", use_raw=True)   # not UTF-8: UnicodeDecodeError escaped load_config
@example(doc="rounds: " + "[" * 3000 + "]" * 3000 + "\n", raw=b"", use_raw=False)
@example(doc="a: &a {b: *a}\n", raw=b"", use_raw=False)
@example(doc="\"a\\nb\": 1\n", raw=b"", use_raw=False)
def test_yaml_files_validate_or_raise_config_error(doc, raw, use_raw, tmp_path_factory):
    d = tmp_path_factory.mktemp("cfg")
    path = d / "c.yaml"
    if use_raw:
        path.write_bytes(raw)
    else:
        path.write_text(doc, encoding="utf-8", errors="surrogatepass")
    got = _outcome(load_config, path)
    if isinstance(got, Config):
        _round_trips(got, d)
    else:
        assert str(path) in got  # the message names the file


# ----------------------------------------------------------------------------------------- through main()


@pytest.fixture
def no_run(monkeypatch):
    """main() must stop at the config: if it ever got past it, fail instead of starting MPI or a training run."""
    def refuse(*a, **k):
        raise AssertionError("main() went past the config check")
    monkeypatch.setattr(fedmrn_mpi.comm, "Transport", refuse)
    monkeypatch.setattr(fedmrn_mpi.run, "run", refuse)
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
    yield
    for s, h in saved.items():  # main() installs the stop handlers
        signal.signal(s, h)


# a valid base config, then mutations known (checked first with load_config) to make it invalid
BASE = "rounds: 2\nnum_clients: 4\nclients_per_round: 2\ndata:\n  name: synthetic\n"
bad_key_values = st.builds(lambda k, v: f"{k}={_flow(v)}", near_keys, values)


@fuzz(50)
@given(overrides=st.lists(st.one_of(override_text, bad_key_values), min_size=1, max_size=3),
       file_extra=st.one_of(st.just(""), _yaml_docs()))
@example(overrides=["rounds={a: [}"], file_extra="")
@example(overrides=["lr=" + "9" * 400], file_extra="")
@example(overrides=["rounds=1"], file_extra="\"a\\nb\": 1\n")
def test_main_reports_an_invalid_config_in_one_line(overrides, file_extra, tmp_path_factory, capsys, no_run):
    d = tmp_path_factory.mktemp("main")
    path = d / "c.yaml"
    path.write_text(BASE + file_extra, encoding="utf-8", errors="surrogatepass")
    overrides = [o for o in overrides if not o.startswith("-")]  # argparse would read those as options
    try:
        load_config(path, overrides)
    except ConfigError:
        pass
    else:
        return  # valid: main() would start a run
    event("reached main()")
    capsys.readouterr()
    rc = main(["run", "-c", str(path), *overrides])
    out, err = capsys.readouterr()
    assert rc == 2
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith("fedmrn-mpi: config error:") and "Traceback" not in err
    assert out == ""


def test_the_base_config_of_the_main_property_is_valid(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(BASE)
    assert load_config(path).rounds == 2


@pytest.mark.parametrize("kind", ["missing", "directory", "not utf-8", "binary", "empty override key", "deep"])
def test_main_on_an_unusable_config_file(kind, tmp_path, capsys, no_run):
    path, overrides = tmp_path / "c.yaml", []
    if kind == "directory":
        path.mkdir()
    elif kind == "not utf-8":
        path.write_bytes(b"run_name: caf\xe9\n")
    elif kind == "binary":
        path.write_bytes(bytes(range(256)))
    elif kind == "empty override key":
        path.write_text(BASE)
        overrides = ["=3"]
    elif kind == "deep":
        path.write_text("rounds: " + "[" * 5000 + "]" * 5000 + "\n")
    rc = main(["run", "-c", str(path), *overrides])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("fedmrn-mpi: config error:"), err
    assert "Traceback" not in err and (str(path) in err or kind == "empty override key")


@pytest.mark.parametrize("argv", [["run", "-rounds=3"], ["run", "--round", "3"], ["-x"]])
def test_an_unknown_dashed_option_is_one_config_error_line(argv, capsys, no_run):
    from fedmrn_mpi.__main__ import main
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedmrn-mpi: config error: unknown option(s)"), err
