"""Tests of fedmrn_mpi.config: schema, YAML files, overrides, validation messages, shipped configs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from fedmrn_mpi.algorithms import REGISTRY
from fedmrn_mpi.algorithms.fedmrn import FedMRN
from fedmrn_mpi.algorithms.qsgd import QSGD
from fedmrn_mpi.algorithms.topk import TopK
from fedmrn_mpi.config import (
    AlgorithmConfig,
    Config,
    ConfigError,
    allowed,
    apply_overrides,
    config_from_dict,
    config_hash,
    config_keys,
    config_to_dict,
    config_to_yaml,
    default_config,
    load_config,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHIPPED = sorted(CONFIGS.rglob("*.yaml"))

# The config keys users and scripts rely on (docs/config.md).
CONTRACT_KEYS = [
    "seed", "rounds", "num_clients", "clients_per_round", "local_epochs", "batch_size", "lr", "server_lr",
    "eval_every", "checkpoint_every", "device", "algorithm.name", "algorithm.mask", "algorithm.noise",
    "algorithm.sigma", "algorithm.training", "algorithm.weighting", "algorithm.downlink", "data.name",
    "data.dir", "data.partition", "data.alpha", "data.classes_per_client", "model.name",
]


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def error_of(overrides: list[str], path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as ei:
        load_config(path, overrides)
    return str(ei.value)


# ------------------------------------------------------------------------------------------------ schema


def test_defaults_are_the_main_job() -> None:
    c = default_config()
    assert c == Config() == load_config(None)
    assert (c.run_name, c.results_dir, c.seed) == ("fedmrn-fmnist-cnn4", "results", 1234)
    assert (c.rounds, c.num_clients, c.clients_per_round, c.local_epochs, c.batch_size) == (12, 100, 10, 1, 64)
    assert (c.lr, c.server_lr, c.eval_every, c.checkpoint_every) == (0.1, 1.0, 4, 0)
    assert (c.device, c.threads, c.log_every) == ("auto", 1, 1)
    a, o = c.algorithm, c.algorithm.options
    assert (a.name, o.mask, o.noise, o.sigma, o.training, a.weighting, a.downlink) == (
        "fedmrn", "binary", "uniform", None, "psm", "samples", "model")
    d = c.data
    assert (d.name, d.dir, d.partition, d.alpha, d.classes_per_client) == ("fashion_mnist", None, "iid", 0.3, 3)
    assert (d.synthetic_train, d.synthetic_test) == (2000, 500)
    assert c.model.name == "cnn4"


def test_effective_sigma() -> None:
    assert AlgorithmConfig().options.effective_sigma == 0.01
    assert FedMRN.Options(mask="signed").effective_sigma == 0.005
    assert FedMRN.Options(mask="signed", sigma=0.02).effective_sigma == 0.02
    assert load_config(None, ["algorithm.mask=signed"]).algorithm.options.effective_sigma == 0.005


def test_allowed_names_are_the_registries() -> None:
    """One vocabulary: a name is accepted exactly when its registry implements it."""
    from fedmrn_mpi.algorithms import REGISTRY
    from fedmrn_mpi.data.partition import PARTITION_SCHEMES
    from fedmrn_mpi.data.registry import DATASETS
    from fedmrn_mpi.models import MODELS
    from fedmrn_mpi.rng.noise import NOISE_KINDS

    assert allowed("algorithm.name") == tuple(REGISTRY) and {"fedmrn", "fedavg"} <= set(REGISTRY)
    assert set(allowed("data.name")) == set(DATASETS) == {"fashion_mnist", "mnist", "cifar10", "cifar100", "svhn",
                                                          "synthetic"}
    assert allowed("model.name") == tuple(MODELS)
    assert allowed("algorithm.noise") == tuple(NOISE_KINDS)
    assert allowed("data.partition") == tuple(PARTITION_SCHEMES)
    assert allowed("algorithm.mask") == ("binary", "signed") and allowed("rounds") is None
    # a name that is not implemented is refused like a typo, with the implemented names listed
    msg = error_of(["algorithm.name=scaffold"])
    assert "'scaffold' is not allowed" in msg and ", ".join(REGISTRY) in msg


def test_contract_keys_exist() -> None:
    keys = config_keys()
    assert set(CONTRACT_KEYS) <= set(keys)
    assert len(keys) == len(set(keys))


def test_every_leaf_is_documented() -> None:
    # The generic validator and the commented YAML both rely on per-field metadata.
    def walk(cls: type) -> None:
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
            if f.default_factory is not dataclasses.MISSING:
                walk(f.default_factory)  # type: ignore[arg-type]

    walk(Config)
    for cls in REGISTRY.values():
        walk(cls.Options)


def test_each_algorithm_owns_a_frozen_options_dataclass() -> None:
    for cls in REGISTRY.values():
        assert "Options" in vars(cls), f"{cls.__name__} declares no Options of its own"
        params = cls.Options.__dataclass_params__  # type: ignore[attr-defined]
        assert dataclasses.is_dataclass(cls.Options) and params.frozen
        c = load_config(None, [f"algorithm.name={cls.name}"])
        assert c.algorithm.options == cls.Options() and c.algorithm == AlgorithmConfig(name=cls.name)
        assert {f"algorithm.{f.name}" for f in dataclasses.fields(cls.Options)} <= set(config_keys())
    assert len({cls.Options for cls in REGISTRY.values()}) == len(REGISTRY)
    # the section is built from the named algorithm's Options: exactly its keys, with their rules
    assert load_config(None, ["algorithm.name=qsgd", "algorithm.levels=4"]).algorithm.options == QSGD.Options(levels=4)
    with pytest.raises(TypeError, match="takes QSGD.Options"):
        AlgorithmConfig(name="qsgd", options=TopK.Options())


def test_an_option_two_algorithms_have_is_one_key() -> None:
    from fedmrn_mpi.algorithms.base import option
    from fedmrn_mpi.config import _algorithm_keys

    @dataclasses.dataclass(frozen=True)
    class Other:
        mask: str = option("signed", "FedMRN mask values: {0,1} or {-1,+1}", choices=("binary", "signed"))

    with pytest.raises(TypeError, match="Other.mask differs"):
        _algorithm_keys((FedMRN.Options, Other))


def test_frozen() -> None:
    c = default_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.rounds = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.algorithm.name = "fedavg"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.algorithm.options.mask = "signed"  # type: ignore[misc]


# ---------------------------------------------------------------------------------------- shipped files


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_configs_load_and_round_trip(path: Path, tmp_path: Path) -> None:
    c = load_config(path)
    again = load_config(write(tmp_path, config_to_yaml(c)))
    assert again == c
    assert config_hash(again) == config_hash(c)


def test_expected_configs_are_shipped() -> None:
    names = {str(p.relative_to(CONFIGS)) for p in SHIPPED}
    assert {"default.yaml", "tiny.yaml", "paper/fmnist_cnn4_iid_fedavg.yaml",
            "paper/fmnist_cnn4_iid_fedmrn-binary.yaml", "paper/fmnist_cnn4_iid_fedmrn-signed.yaml"} <= names


def test_default_yaml_writes_every_key_with_a_comment() -> None:
    text = (CONFIGS / "default.yaml").read_text()
    raw = yaml.safe_load(text)

    def leaves(d: dict, prefix: str = "") -> list[str]:
        out: list[str] = []
        for k, v in d.items():
            out += leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]
        return out

    assert leaves(raw) == config_keys()
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert " # " in line, f"no comment on: {line!r}"


def test_default_yaml_is_the_default_config() -> None:
    # `python -m fedmrn_mpi` with no config runs the built-in defaults: they must be the main job's file
    assert load_config(CONFIGS / "default.yaml") == default_config()


@pytest.mark.parametrize(("name", "algo", "lr", "mask", "sigma"), [
    ("fmnist_cnn4_iid_fedavg", "fedavg", 0.03, None, None),
    ("fmnist_cnn4_iid_fedmrn-binary", "fedmrn", 0.1, "binary", 0.01),
    ("fmnist_cnn4_iid_fedmrn-signed", "fedmrn", 0.1, "signed", 0.005),
])
def test_paper_configs(name: str, algo: str, lr: float, mask: str | None, sigma: float | None) -> None:
    c = load_config(CONFIGS / "paper" / f"{name}.yaml")
    assert (c.num_clients, c.clients_per_round, c.local_epochs, c.batch_size, c.rounds) == (100, 10, 10, 64, 100)
    assert (c.data.name, c.data.partition, c.model.name, c.seed) == ("fashion_mnist", "iid", "cnn4", 1234)
    assert (c.algorithm.name, c.lr) == (algo, lr)
    if mask is not None:
        o = c.algorithm.options
        assert (o.mask, o.sigma, o.effective_sigma) == (mask, sigma, sigma)
    assert c.run_name != default_config().run_name  # paper runs must not overwrite the main job's file
    d = load_config(CONFIGS / "paper" / f"{name}.yaml", ["data.partition=dirichlet", "data.alpha=0.3"])
    assert (d.data.partition, d.data.alpha) == ("dirichlet", 0.3)


def test_paper_run_names_are_distinct() -> None:
    names = [load_config(p).run_name for p in SHIPPED]
    assert len(names) == len(set(names))


def test_tiny_config() -> None:
    c = load_config(CONFIGS / "tiny.yaml")
    assert (c.data.name, c.data.synthetic_train, c.data.synthetic_test) == ("synthetic", 400, 200)
    assert (c.num_clients, c.clients_per_round, c.rounds, c.local_epochs, c.batch_size) == (8, 4, 2, 1, 32)
    assert (c.model.name, c.eval_every) == ("cnn4", 1)


# ------------------------------------------------------------------------------------ round trip & hash


def _custom() -> Config:
    return load_config(None, [
        "run_name=1e-3", "results_dir=out dir/x #1", "seed=9223372036854775807", "algorithm.mask=signed",
        "algorithm.sigma=1e-8", "algorithm.noise=gaussian", "data.dir=/data/fm", "data.partition=classes",
        "lr=0.3333333333333333", "model.name=cnn8", "eval_every=0",
    ])


@pytest.mark.parametrize("make", [default_config, _custom])
def test_yaml_round_trip(make, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    c = make()
    text = config_to_yaml(c)
    assert load_config(write(tmp_path, text)) == c
    assert load_config(write(tmp_path, config_to_yaml(c, comments=True), "d.yaml")) == c
    assert config_from_dict(config_to_dict(c)) == c
    assert yaml.safe_load(text) == config_to_dict(c)  # plain YAML readers see the same values


def test_to_dict_is_full_and_nested() -> None:
    d = config_to_dict(default_config())
    assert d["algorithm"]["sigma"] is None and d["data"]["dir"] is None and d["model"] == {"name": "cnn4"}
    assert list(d)[:4] == ["run_name", "results_dir", "seed", "rounds"]


def test_hash() -> None:
    h = config_hash(default_config())
    assert len(h) == 64 and int(h, 16) >= 0
    assert h == config_hash(load_config(None))
    assert h != config_hash(load_config(None, ["rounds=21"]))
    assert h != config_hash(load_config(None, ["algorithm.sigma=0.01"]))  # explicit sigma is a different text


# --------------------------------------------------------------------------------------------- overrides


def test_overrides_change_values() -> None:
    c = load_config(None, ["algorithm.mask=signed", "rounds=5", "data.dir=/x", "lr=1e-3", "device=cpu"])
    assert (c.algorithm.options.mask, c.rounds, c.data.dir, c.lr, c.device) == ("signed", 5, "/x", 0.001, "cpu")


def test_override_values_are_yaml() -> None:
    c = load_config(None, ["algorithm.sigma=0.02", "data.dir=/x"])
    c = apply_overrides(c, ["algorithm.sigma=null", "data.dir=null", "server_lr=2", "data.alpha=1E2"])
    assert c.algorithm.options.sigma is None and c.data.dir is None
    assert c.server_lr == 2.0 and isinstance(c.server_lr, float)  # ints accepted for floats
    assert c.data.alpha == 100.0
    assert load_config(None, ["data.dir="]).data.dir is None


def test_override_on_top_of_file_and_order(tmp_path: Path) -> None:
    p = write(tmp_path, "rounds: 7\nalgorithm:\n  mask: signed\n  noise: gaussian\n")
    c = load_config(p, ["rounds=3", "rounds=4", " algorithm.noise = rademacher "])
    assert (c.rounds, c.algorithm.options.mask, c.algorithm.options.noise) == (4, "signed", "rademacher")


def test_override_section_mapping_merges(tmp_path: Path) -> None:
    p = write(tmp_path, "algorithm:\n  noise: gaussian\n")
    c = load_config(p, ["algorithm={mask: signed, sigma: 0.1}"])
    o = c.algorithm.options
    assert (o.mask, o.sigma, o.noise) == ("signed", 0.1, "gaussian")


def test_override_string_field_keeps_text() -> None:
    c = load_config(None, ["run_name=001", "results_dir=2024", "data.dir=/a b/[c"])
    assert (c.run_name, c.results_dir, c.data.dir) == ("001", "2024", "/a b/[c")
    assert load_config(None, ["run_name='quoted'"]).run_name == "quoted"


def test_single_string_override_is_one_override() -> None:
    assert load_config(None, "rounds=9").rounds == 9  # type: ignore[arg-type]


def test_integral_float_for_int_is_accepted() -> None:
    c = load_config(None, ["num_clients=1e3", "rounds=5.0"])
    assert (c.num_clients, c.rounds) == (1000, 5) and isinstance(c.rounds, int)


def test_apply_overrides_revalidates() -> None:
    c = apply_overrides(default_config(), ["clients_per_round=20"])
    assert c.clients_per_round == 20
    with pytest.raises(ConfigError, match="num_clients"):
        apply_overrides(c, ["num_clients=10"])


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(("overrides", "needles"), [
    (["rouds=5"], ["rouds", "did you mean 'rounds'", "valid keys", "clients_per_round"]),
    (["algorithm.maks=signed"], ["algorithm.maks", "did you mean 'algorithm.mask'", "under 'algorithm'", "noise"]),
    (["mask=signed"], ["'mask'", "did you mean 'algorithm.mask'"]),
    (["data.nmae=x"], ["data.nmae", "did you mean 'data.name'"]),
    (["bogus.key=1"], ["unknown key 'bogus'", "valid keys"]),
    (["rounds=abc"], ["rounds", "'abc'", "integer"]),
    (["rounds=2.5"], ["rounds", "2.5", "integer"]),
    (["rounds=true"], ["rounds", "True", "integer"]),
    (["batch_size='64'"], ["batch_size", "'64'", "integer"]),
    (["lr=abc"], ["lr", "'abc'", "number"]),
    (["lr=false"], ["lr", "False", "number"]),
    (["lr=.nan"], ["lr", "nan", "finite"]),
    (["run_name=null"], ["run_name", "null", "string"]),
    (["rounds=0"], ["rounds", "0", ">= 1"]),
    (["lr=-0.5"], ["lr", "-0.5", "> 0"]),
    (["server_lr=0"], ["server_lr", "0", "> 0"]),
    (["eval_every=-1"], ["eval_every", "-1", ">= 0"]),
    (["threads=-2"], ["threads", "-2", ">= 0"]),
    (["seed=-1"], ["seed", "-1", ">= 0", "< 2**63"]),
    (["seed=9223372036854775808"], ["seed", "9223372036854775808", "2**63"]),
    (["algorithm.sigma=0"], ["algorithm.sigma", "0", "> 0"]),
    (["data.alpha=-1"], ["data.alpha", "-1", "> 0"]),
    (["data.classes_per_client=0"], ["data.classes_per_client", "0", ">= 1"]),
    (["algorithm.mask=sgined"], ["algorithm.mask", "'sgined'", "binary, signed", "did you mean 'signed'"]),
    (["algorithm.name=fedprox"], ["algorithm.name", "'fedprox'", "fedmrn, fedavg"]),
    (["algorithm.noise=laplace"], ["algorithm.noise", "laplace", "uniform, gaussian, rademacher"]),
    (["algorithm.training=ste"], ["algorithm.training", "ste", "psm, sm, deterministic"]),
    (["algorithm.weighting=equal"], ["algorithm.weighting", "equal", "samples, batches"]),
    (["algorithm.downlink=bits"], ["algorithm.downlink", "bits", "model, masks"]),
    (["device=tpu"], ["device", "tpu", "auto, cpu, cuda"]),
    (["data.name=imagenet"], ["data.name", "imagenet", "fashion_mnist", "synthetic"]),
    (["data.partition=shards"], ["data.partition", "shards", "iid, dirichlet, classes"]),
    (["model.name=resnet18"], ["model.name", "resnet18", "cnn4, cnn8"]),
    (["algorithm=fedavg"], ["algorithm", "'fedavg'", "mapping", "algorithm.name"]),
    (["rounds.x=1"], ["'rounds'", "single value"]),
    (["rounds"], ["'rounds'", "KEY=VALUE"]),
    (["=5"], ["'=5'", "KEY=VALUE"]),
    (["clients_per_round=101"], ["clients_per_round=101", "num_clients=100"]),
    (["num_clients=5"], ["clients_per_round=10", "num_clients=5"]),
    (["data.partition=classes", "data.classes_per_client=11"], ["data.classes_per_client=11", "10 classes"]),
    (["data.name=cifar100", "data.partition=classes", "data.classes_per_client=101"], ["101", "100 classes"]),
    (["data.name=synthetic", "data.synthetic_train=50"], ["data.synthetic_train=50", "num_clients=100"]),
])
def test_error_messages(overrides: list[str], needles: list[str]) -> None:
    msg = error_of(overrides)
    assert "override" in msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"


def test_error_is_value_error_with_key() -> None:
    with pytest.raises(ValueError) as ei:
        load_config(None, ["algorithm.mask=x"])
    assert isinstance(ei.value, ConfigError) and ei.value.key == "algorithm.mask"
    assert ei.value.source == "override 'algorithm.mask=x'"


def test_unused_fields_are_still_validated() -> None:
    # A bad value for a key the chosen algorithm ignores is still a mistake worth reporting.
    assert "data.alpha" in error_of(["data.partition=iid", "data.alpha=0"])


def test_cross_checks_allow_edges() -> None:
    assert load_config(None, ["clients_per_round=100"]).clients_per_round == 100
    c = load_config(None, ["data.partition=classes", "data.classes_per_client=10"])
    assert c.data.classes_per_client == 10
    assert load_config(None, ["data.name=synthetic", "data.synthetic_train=100"]).data.synthetic_train == 100


# ------------------------------------------------------------------------------------------ file errors


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="not found") as ei:
        load_config(p)
    assert str(p) in str(ei.value)


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=str(tmp_path)):
        load_config(tmp_path)


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, "rounds: 5\nlr: 0.1\nalgorithm:\n  mask: [binary\n")
    msg = str(pytest.raises(ConfigError, load_config, p).value)
    assert str(p) in msg and "line" in msg and "invalid YAML" in msg
    p = write(tmp_path, "rounds: 5\n  lr: 0.1\n", "e.yaml")
    assert "line 2" in str(pytest.raises(ConfigError, load_config, p).value)


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    p = write(tmp_path, "rounds: 5\nlr: 0.1\nrounds: 6\n")
    msg = str(pytest.raises(ConfigError, load_config, p).value)
    assert str(p) in msg and "duplicate key 'rounds'" in msg and "line 3" in msg


@pytest.mark.parametrize("text", ["- rounds\n", "just a string\n", "42\n"])
def test_top_level_must_be_mapping(tmp_path: Path, text: str) -> None:
    p = write(tmp_path, text)
    msg = str(pytest.raises(ConfigError, load_config, p).value)
    assert str(p) in msg and "mapping" in msg


def test_empty_file_and_empty_section_mean_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == default_config()
    assert load_config(write(tmp_path, "# nothing\nalgorithm:\n", "s.yaml")) == default_config()


@pytest.mark.parametrize(("text", "needles"), [
    ("rouds: 5\n", ["unknown key 'rouds'", "did you mean 'rounds'"]),
    ("algorithm:\n  maks: signed\n", ["unknown key 'algorithm.maks'", "did you mean 'algorithm.mask'"]),
    ("rounds: '5'\n", ["rounds", "'5'", "integer"]),
    ("rounds: 2.5\n", ["rounds", "2.5", "integer"]),
    ("lr: 0\n", ["lr", "0", "> 0"]),
    ("model: cnn4\n", ["model", "'cnn4'", "mapping", "model.name"]),
    ("num_clients: 5\n", ["clients_per_round=10", "num_clients=5"]),
])
def test_file_errors_name_the_file(tmp_path: Path, text: str, needles: list[str]) -> None:
    p = write(tmp_path, text)
    msg = str(pytest.raises(ConfigError, load_config, p).value)
    assert msg.startswith(f"{p}: ")
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"


def test_error_names_override_not_file(tmp_path: Path) -> None:
    p = write(tmp_path, "rounds: 5\n")
    msg = error_of(["lr=abc"], p)
    assert msg.startswith("override 'lr=abc'") and str(p) not in msg
    msg = error_of(["clients_per_round=20"], write(tmp_path, "num_clients: 10\n", "n.yaml"))
    assert "override 'clients_per_round=20'" in msg and "n.yaml" in msg  # both sides of a cross-check


# ------------------------------------------------------------------------------------------- from dict


def test_config_from_dict_partial_and_source() -> None:
    c = config_from_dict({"rounds": 3, "algorithm": {"mask": "signed"}})
    assert (c.rounds, c.algorithm.options.mask, c.lr) == (3, "signed", 0.1)
    with pytest.raises(ConfigError, match=r"^job\.json: unknown key 'rouds'"):
        config_from_dict({"rouds": 3}, source="job.json")
    with pytest.raises(ConfigError, match="mapping"):
        config_from_dict(["rounds"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown key '1'"):
        config_from_dict({1: 2})
    d = {"algorithm": {"mask": "signed"}}
    config_from_dict(d)
    assert d == {"algorithm": {"mask": "signed"}}  # input not mutated


def test_choices_can_be_supplied() -> None:
    reg = {"data.name": ("fashion_mnist", "emnist"), "model.name": ("cnn4", "cnn8", "resnet18")}
    c = load_config(None, ["data.name=emnist", "model.name=resnet18"], choices=reg)
    assert (c.data.name, c.model.name) == ("emnist", "resnet18")
    with pytest.raises(ConfigError, match="'cifar10' is not allowed; allowed: fashion_mnist, emnist"):
        config_from_dict({"data": {"name": "cifar10"}}, choices=reg)
    with pytest.raises(ValueError, match="unknown config keys"):
        config_from_dict({}, choices={"data.nmae": ("x",)})


def test_an_option_the_algorithm_does_not_have_is_an_unknown_key(tmp_path: Path) -> None:
    msg = error_of(["algorithm.error_feedback=true"])  # the default algorithm is fedmrn
    assert msg == ("override 'algorithm.error_feedback=true': unknown key 'algorithm.error_feedback'; valid keys "
                   "under 'algorithm' for fedmrn: name, weighting, downlink, mask, noise, sigma, training")
    msg = error_of(["algorithm.name=fedavg", "algorithm.mask=signed"])
    assert msg.endswith("unknown key 'algorithm.mask'; valid keys under 'algorithm' for fedavg: name, weighting, "
                        "downlink")
    assert "did you mean 'algorithm.mask'" in error_of(["algorithm.name=topk", "algorithm.mask=signed",
                                                        "algorithm.name=fedmrn", "algorithm.maks=x"])
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'algorithm\.fraction'; .* for signsgd: "):
        load_config(write(tmp_path, "algorithm:\n  name: signsgd\n  fraction: 0.1\n"))
    # another algorithm's option at its default is how config_to_yaml writes every option (config_hash covers that
    # text), so one full config file serves every algorithm
    assert load_config(CONFIGS / "default.yaml", ["algorithm.name=fedavg"]).algorithm.name == "fedavg"
    topk = load_config(None, ["algorithm.name=topk", "algorithm.fraction=0.1"])
    assert "\n  mask: binary\n" in config_to_yaml(topk) and config_to_dict(topk)["algorithm"]["levels"] == 1


def test_boolean_keys() -> None:
    assert TopK.Options().error_feedback is False
    msg = error_of(["algorithm.error_feedback=2"])
    assert "algorithm.error_feedback" in msg and "expected true or false" in msg


def test_post_training_ablation_is_a_fedmrn_training_mode() -> None:
    assert load_config(None, ["algorithm.training=post"]).algorithm.options.training == "post"


def test_compare_configs_are_what_the_generator_writes() -> None:
    import subprocess
    import sys
    res = subprocess.run([sys.executable, str(CONFIGS.parent / "scripts" / "make_compare_configs.py"), "--check"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    names = {p.name for p in (CONFIGS / "compare").glob("*.yaml")}
    from fedmrn_mpi.algorithms import REGISTRY
    used = {load_config(CONFIGS / "compare" / n).algorithm.name for n in names}
    assert used == set(REGISTRY)  # every implemented method is compared
    assert len(names) == 20 and {n.split("-")[0] for n in names} == {"iid", "dir0.3"}
