"""Run configuration: typed schema, YAML files, dotted overrides and validation (docs/design.md#layout).

The schema is a tree of frozen dataclasses. Each leaf field carries its checks in `metadata` (`help`,
`choices`, `ge`, `gt`, `lt`); one generic walker validates any mapping against it, so adding a key means
adding one field. The `algorithm:` section holds the keys every algorithm shares and, as `options`, the chosen
algorithm's own `Options` dataclass (fedmrn_mpi.algorithms), built and validated the same way. Key names are a
contract with users and scripts: keep them stable.

Typical use::

    cfg = load_config("configs/default.yaml", ["algorithm.mask=signed", "rounds=5"])
    print(config_to_yaml(cfg), config_hash(cfg))
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import math
import os
import re
import reprlib
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = [
    "BAD_UPDATES",
    "DEVICES",
    "DOWNLINKS",
    "WEIGHTINGS",
    "AlgorithmConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "allowed",
    "apply_overrides",
    "config_from_dict",
    "config_hash",
    "config_keys",
    "config_to_dict",
    "config_to_yaml",
    "default_config",
    "load_config",
]

# Allowed values of the keys that have no registry of their own.
WEIGHTINGS: tuple[str, ...] = ("samples", "batches")
DOWNLINKS: tuple[str, ...] = ("model", "masks")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")  # training/precision.py
BAD_UPDATES: tuple[str, ...] = ("abort", "skip")


# Names with a registry come from it, so a name is accepted exactly when it is implemented. The registries are
# imported on first use: importing this module stays light, and validating a config is what needs them.
def _algorithm_names() -> tuple[str, ...]:
    from .algorithms import REGISTRY
    return tuple(REGISTRY)


def _dataset_names() -> tuple[str, ...]:
    from .data.registry import DATASETS
    return tuple(DATASETS)


def _dataset_alias(name: str) -> str | None:
    from .data.registry import canonical_name
    return canonical_name(name)


def _augment_names() -> tuple[str, ...]:
    from .data.augment import AUGMENTATIONS
    return tuple(AUGMENTATIONS)


def _partition_names() -> tuple[str, ...]:
    from .data.partition import PARTITION_SCHEMES
    return tuple(PARTITION_SCHEMES)


def _model_names() -> tuple[str, ...]:
    from .models import MODELS
    return tuple(MODELS)


def _options_class(name: str) -> type:
    """The `Options` dataclass of algorithm `name`: its own `algorithm.*` keys."""
    from .algorithms import REGISTRY
    return REGISTRY[name].Options


def _registered_options() -> tuple[type, ...]:
    from .algorithms import REGISTRY
    return tuple(cls.Options for cls in REGISTRY.values())


def _num_classes(dataset: str) -> int:
    from .data.registry import get_spec
    return get_spec(dataset).num_classes


class ConfigError(ValueError):
    """A configuration problem. The message names the source, the dotted key, the bad value and what is
    allowed; `key` and `source` are also kept as attributes for callers that want them."""

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.source = source


# ----------------------------------------------------------------------------------------------- schema


Choices = "tuple[str, ...] | typing.Callable[[], tuple[str, ...]]"


def _opt(
    default: Any,
    help: str,
    *,
    choices: Choices | None = None,
    ge: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
    alias: "typing.Callable[[str], str | None] | None" = None,
) -> Any:
    """A leaf field with its validation rules in metadata (`choices`: a tuple, or a registry function;
    `alias`: maps other spellings of a choice to the choice, which is what the config then holds)."""
    return field(default=default, metadata={"help": help, "choices": choices, "ge": ge, "gt": gt, "lt": lt,
                                            "alias": alias})


def _section(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help})


@dataclass(frozen=True)
class AlgorithmConfig:
    """What clients compute and send, and how the server aggregates (docs/design.md#the-method): the keys every
    algorithm reads, and `options`, the chosen algorithm's own keys (an instance of `REGISTRY[name].Options`;
    left out, its defaults)."""

    name: str = _opt("fedmrn", "federated algorithm", choices=_algorithm_names)
    weighting: str = _opt("samples", "client weight in aggregation: sample or batch count",
                          choices=WEIGHTINGS)
    downlink: str = _opt("model", "broadcast the float32 model or the gathered masks",
                         choices=DOWNLINKS)
    options: Any = field(default=None, metadata={"help": "the keys of algorithm `name`'s Options"})

    def __post_init__(self) -> None:
        cls = _options_class(self.name)
        if self.options is None:
            object.__setattr__(self, "options", cls())
        elif type(self.options) is not cls:
            raise TypeError(f"algorithm {self.name!r} takes {cls.__qualname__}, not "
                            f"{type(self.options).__qualname__}")


@dataclass(frozen=True)
class DataConfig:
    """Dataset and its split over clients (docs/design.md#layout)."""

    name: str = _opt("fashion_mnist", "dataset; also fmnist, cifar-10, ...",
                     choices=_dataset_names, alias=_dataset_alias)
    dir: str | None = _opt(None, "dataset directory; null = the dataset's default location")
    prepared: str | None = _opt(None, "file from `fedmrn-mpi data prepare`; null = read data.dir")
    augment: str = _opt("auto", "training batches; auto = crop+flip for CIFAR, else none",
                        choices=_augment_names)
    partition: str = _opt("iid", "split over clients: label skew or fixed classes",
                          choices=_partition_names)
    alpha: float = _opt(0.3, "Dirichlet concentration (partition=dirichlet)", gt=0)
    classes_per_client: int = _opt(3, "classes each client holds (partition=classes)", ge=1)
    synthetic_train: int = _opt(2000, "training samples of the synthetic dataset", ge=1)
    synthetic_test: int = _opt(500, "test samples of the synthetic dataset", ge=1)


@dataclass(frozen=True)
class ModelConfig:
    """Network architecture (docs/design.md#the-method)."""

    name: str = _opt("cnn4", "network", choices=_model_names)


@dataclass(frozen=True)
class Config:
    """A complete, validated run configuration."""

    run_name: str = _opt("fedmrn-fmnist-cnn4", "results go to <results_dir>/<run_name>.h5")
    results_dir: str = _opt("results", "directory of the results file")
    seed: int = _opt(1234, "root seed of every random stream", ge=0, lt=2**63)
    rounds: int = _opt(12, "communication rounds", ge=1)
    num_clients: int = _opt(100, "clients in the federation", ge=1)
    clients_per_round: int = _opt(10, "clients sampled per round", ge=1)
    local_epochs: int = _opt(1, "local epochs per round", ge=1)
    batch_size: int = _opt(64, "local minibatch size", ge=1)
    lr: float = _opt(0.1, "client learning rate (plain SGD)", gt=0)
    server_lr: float = _opt(1.0, "server learning rate applied to the aggregated update", gt=0)
    eval_every: int = _opt(4, "evaluate every N rounds; 0 = only after the last round", ge=0)
    checkpoint_every: int = _opt(0, "checkpoint every N rounds; 0 = off", ge=0)
    device: str = _opt("auto", "auto = CUDA when present, else the CPU", choices=DEVICES)
    threads: int = _opt(1, "torch threads per rank; 0 = cores/ranks per node (faster alone, but results then "
                           "depend on the rank count)", ge=0)
    batched_clients: bool = _opt(False, "train a rank's clients of a round as one vectorised step (torch.func); "
                                 "false = one after another, the reference")
    bn_recalibrate: bool = _opt(False, "clients re-estimate the BatchNorm running statistics for the model the "
                                "server rebuilds from their upload and send those; false = the trained model's, "
                                "as the reference code")
    precision: str = _opt("fp32", "arithmetic of the forward and backward passes of training and evaluation: fp32, "
                          "or bf16 (autocast; weights, updates, codecs, aggregation stay float32; docs/precision.md)",
                          choices=PRECISIONS)
    allow_emulated_bf16: bool = _opt(False, "run precision: bf16 on a CPU or GPU without native bfloat16 "
                                     "(emulated, slower than fp32) instead of refusing the config")
    eval_batch_size: int = _opt(0, "test images per forward pass; 0 = 100 on the CPU (cache-sized), 1000 on CUDA",
                                ge=0)
    log_every: int = _opt(1, "print progress every N rounds", ge=1)
    sync_every: int = _opt(10, "downlink=masks: compare model digests across ranks every N rounds", ge=1)
    on_bad_update: str = _opt("abort", "a client's loss or update not finite (NaN/inf): end the job naming rank, "
                              "client and round, or skip that client for the round", choices=BAD_UPDATES)
    round_timeout: float | None = _opt(None, "seconds a round may last before rank 0 names the ranks that have "
                                       "not reported, keeps what it has and ends the job (exit 124); null = auto "
                                       "(10x the slowest round so far, at least 300 s; 1800 s for the first 3 "
                                       "rounds), 0 = off", ge=0)
    algorithm: AlgorithmConfig = _section(AlgorithmConfig, "what clients send and how the server aggregates")
    data: DataConfig = _section(DataConfig, "dataset and its split over clients")
    model: ModelConfig = _section(ModelConfig, "network architecture")


_Key = tuple[Any, "dataclasses.Field[Any]"]  # a key's type and its field (default, metadata)


@functools.cache
def _own_keys(cls: type) -> dict[str, _Key]:
    """The fields of dataclass `cls`: name -> (type, field)."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f) for f in dataclasses.fields(cls)}


def _shared_keys() -> dict[str, _Key]:
    """The keys of the algorithm section that every algorithm reads (the others are its `options`)."""
    return {k: v for k, v in _own_keys(AlgorithmConfig).items() if k != "options"}


def _keys(cls: type) -> dict[str, _Key]:
    """The keys of section `cls`; the algorithm section's are the shared keys and every algorithm's options."""
    return _algorithm_keys(_registered_options()) if cls is AlgorithmConfig else _own_keys(cls)


@functools.cache
def _algorithm_keys(registered: tuple[type, ...]) -> dict[str, _Key]:
    """Every key of the algorithm section, in the order config_to_yaml writes them: `name`, the default
    algorithm's options, the other shared keys, then the other algorithms' options in registry order. That was
    the order of the one class that held them all, and config_hash covers the text, so it stays."""
    shared = _shared_keys()
    options: dict[str, _Key] = {}
    for cls in registered:
        for key, (tp, f) in _own_keys(cls).items():
            seen = options.setdefault(key, (tp, f))
            # an option of two algorithms is one key of the section: one type, default and rule
            if (seen[0], seen[1].default, dict(seen[1].metadata)) != (tp, f.default, dict(f.metadata)):
                raise TypeError(f"{cls.__qualname__}.{key} differs from another algorithm's option {key!r}")
    first = _own_keys(_options_class(shared["name"][1].default))
    order = dict.fromkeys(["name", *first, *shared, *options])
    return {k: shared[k] if k in shared else options[k] for k in order}


def _choices(meta: Mapping[str, Any]) -> tuple[str, ...] | None:
    choices = meta.get("choices")
    return tuple(choices()) if callable(choices) else choices


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _split_optional(tp: Any) -> tuple[Any, bool]:
    """(base type, whether None is allowed) for `T` or `T | None`."""
    args = typing.get_args(tp)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    out: list[str] = []
    for name, (tp, _) in _keys(cls).items():
        out.extend(_leaf_keys(tp, f"{prefix}{name}.") if _is_section(tp) else [prefix + name])
    return out


def config_keys() -> list[str]:
    """Every dotted leaf key of the schema, in schema order (for CLI help and completion)."""
    return _leaf_keys(Config)


# ------------------------------------------------------------------------------------------ YAML loader


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (YAML 1.2; PyYAML's 1.1 rules need a dot) and rejects
    duplicate keys, which PyYAML would silently resolve to the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key_node.value!r}", key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        # a config is two levels deep; refuse absurd nesting early (PyYAML would recurse until RecursionError,
        # which takes seconds)
        self._depth += 1
        try:
            if self._depth > _MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {_MAX_YAML_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_MAX_YAML_DEPTH = 50


class _Dumper(yaml.SafeDumper):
    """SafeDumper that knows `_Loader`'s extra float rule, so it quotes a string such as "1e-3"."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
del _cls


def _yaml_load(text: str) -> Any:
    """Parse YAML; every failure is a yaml.YAMLError (PyYAML itself lets a few others through)."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None
    except (ValueError, OverflowError) as e:  # a date such as 2001-13-45; an integer past Python's digit limit
        raise yaml.YAMLError(f"cannot read a value: {e}") from None


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error as one line: `` at line L, column C: what`` (or ``: what``)."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f"at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = ": ".join(str(p) for p in (getattr(e, "context", None), getattr(e, "problem", None)) if p)
    return (" " if where else "") + " ".join(f"{where}: {problem or e}".split())


# ------------------------------------------------------------------------------------------- validation


class _Ctx:
    """Where each raw value came from (file or override) and per-call choice lists."""

    def __init__(self, default_source: str, choices: Mapping[str, Sequence[str]] | None) -> None:
        self.default_source = default_source
        self.sources: dict[str, str] = {}
        self.choices = {k: tuple(v) for k, v in (choices or {}).items()}
        unknown = set(self.choices) - set(config_keys())
        if unknown:
            raise ValueError(f"choices given for unknown config keys: {sorted(unknown)}")

    def source(self, key: str) -> str:
        return self.sources.get(key, self.default_source)

    def error(self, key: str, problem: str) -> ConfigError:
        src = self.source(key)
        return ConfigError(f"{src}: {key}: {problem}", key=key, source=src)


# values in messages: bounded (a YAML value can be a huge or self-referencing structure)
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 4, 200, 200, 200


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 600:
        return f"<an integer of {value.bit_length()} bits>"  # repr() refuses past 4300 digits
    return _REPR.repr(value)


def _show(value: Any) -> str:
    return _value_text(value) if isinstance(value, str) else f"{_value_text(value)} ({type(value).__name__})"


def _suggest(word: str, candidates: Iterable[str]) -> list[str]:
    return difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)


def _unknown_key(ctx: _Ctx, valid: Sequence[str], prefix: str, key: Any, source: str | None = None,
                 whose: str = "") -> ConfigError:
    name = str(key)
    dotted = prefix + name
    hits = [prefix + h for h in _suggest(name, valid)]
    if not hits:
        # A leaf written at the wrong level ("mask=signed" for "algorithm.mask=signed").
        hits = [k for k in config_keys()
                if k.rpartition(".")[0] != prefix[:-1] and _suggest(name, [k.rsplit(".", 1)[-1]])][:3]
    hint = f" (did you mean {' or '.join(repr(h) for h in hits)}?)" if hits else ""
    level = f" under '{prefix[:-1]}'{whose}" if prefix else ""
    src = source or ctx.source(dotted)
    return ConfigError(f"{src}: unknown key {dotted!r}{hint}; valid keys{level}: {', '.join(valid)}",
                       key=dotted, source=src)


def _bound_text(x: float) -> str:
    return {2**63: "2**63", -2**63: "-2**63"}.get(x, repr(x)) if isinstance(x, int) else repr(x)


def _check_leaf(ctx: _Ctx, key: str, value: Any, tp: Any, meta: Mapping[str, Any]) -> Any:
    """Type-check, convert and range/choice-check one leaf value."""
    base, nullable = _split_optional(tp)
    if value is None:
        if nullable:
            return None
        raise ctx.error(key, f"got null; expected {_type_name(base)}")
    null_txt = " or null" if nullable else ""
    if base is bool:
        if not isinstance(value, bool):
            raise ctx.error(key, f"expected true or false{null_txt}, got {_show(value)}")
    elif base is int:
        # bool is an int subclass, but `rounds: true` is never meant as 1.
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ctx.error(key, f"expected an integer{null_txt}, got {_show(value)}")
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ctx.error(key, f"expected a number{null_txt}, got {_show(value)}")
        try:
            value = float(value)
        except OverflowError:  # an int beyond float's range
            raise ctx.error(key, f"{_value_text(value)} is out of range; expected a finite number") from None
        if not math.isfinite(value):
            raise ctx.error(key, f"expected a finite number, got {value!r}")
    elif base is str:
        if not isinstance(value, str):
            raise ctx.error(key, f"expected a string{null_txt}, got {_show(value)}")
    else:  # pragma: no cover - schema bug, not user error
        raise TypeError(f"unsupported field type {tp!r} for {key}")

    choices = ctx.choices[key] if key in ctx.choices else _choices(meta)
    if choices is not None and value not in choices and meta.get("alias") is not None:
        value = meta["alias"](value) or value
    if choices is not None and value not in choices:
        close = _suggest(value, choices)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ctx.error(key, f"{value!r} is not allowed; allowed: {', '.join(choices)}{hint}")
    ge, gt, lt = meta.get("ge"), meta.get("gt"), meta.get("lt")
    if base is int:  # every integer must fit the int64 datasets and attributes it ends up in
        lt = 2**63 if lt is None else lt
        ge = -2**63 if ge is None and gt is None else ge
    bad = (ge is not None and value < ge) or (gt is not None and value <= gt) or (lt is not None and value >= lt)
    if bad:
        parts = [f">= {_bound_text(ge)}" if ge is not None else "", f"> {gt!r}" if gt is not None else "",
                 f"< {_bound_text(lt)}" if lt is not None else ""]
        raise ctx.error(key, f"{_value_text(value)} is out of range; allowed: {' and '.join(p for p in parts if p)}")
    return value


def allowed(key: str, override: Mapping[str, Sequence[str]] | None = None) -> tuple[str, ...] | None:
    """The allowed values of dotted `key` (from its registry where it has one), or None if any value goes."""
    if override and key in override:
        return tuple(override[key])
    section, _, leaf = key.rpartition(".")
    cls: type = Config
    for part in section.split(".") if section else ():
        cls = _keys(cls)[part][0]
    return _choices(_keys(cls)[leaf][1].metadata)


def _type_name(tp: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _build(ctx: _Ctx, cls: type, data: Mapping[Any, Any], prefix: str) -> Any:
    """Validate `data` against dataclass `cls`; missing keys take their defaults."""
    if cls is AlgorithmConfig:
        return _build_algorithm(ctx, data, prefix)
    fields = _own_keys(cls)
    for key in data:
        if key not in fields:
            raise _unknown_key(ctx, list(fields), prefix, key)
    kwargs: dict[str, Any] = {}
    for name, (tp, f) in fields.items():
        if name not in data:
            continue
        key, value = prefix + name, data[name]
        if _is_section(tp):
            if value is None:  # `algorithm:` with every sub-key commented out
                value = {}
            if not isinstance(value, Mapping):
                sub = ", ".join(f"{key}.{k}" for k in _keys(tp))
                raise ctx.error(key, f"expected a mapping of {sub}; got {_show(value)}")
            kwargs[name] = _build(ctx, tp, value, key + ".")
        else:
            kwargs[name] = _check_leaf(ctx, key, value, tp, f.metadata)
    return cls(**kwargs)


def _build_algorithm(ctx: _Ctx, data: Mapping[Any, Any], prefix: str) -> AlgorithmConfig:
    """The algorithm section: the shared keys, then the named algorithm's `Options` from the rest. Another
    algorithm's option is taken at its default only, which is how config_to_yaml writes every option; at any
    other value it is an unknown key, as the named algorithm has no such option."""
    shared = _shared_keys()
    kwargs = {k: _check_leaf(ctx, prefix + k, data[k], tp, f.metadata) for k, (tp, f) in shared.items() if k in data}
    name = kwargs.get("name", shared["name"][1].default)
    cls, every = _options_class(name), _keys(AlgorithmConfig)
    own = _own_keys(cls)
    for key in data:
        if key in shared or key in own:
            continue
        if key in every:
            tp, f = every[key]
            if _check_leaf(ctx, prefix + key, data[key], tp, f.metadata) == f.default:
                continue
        raise _unknown_option(ctx, name, prefix, key)
    options = _build(ctx, cls, {k: v for k, v in data.items() if k in own}, prefix)
    return AlgorithmConfig(**kwargs, options=options)


def _unknown_option(ctx: _Ctx, name: Any, prefix: str, key: Any, source: str | None = None) -> ConfigError:
    """`key` is no key of algorithm `name` (of the default algorithm, when `name` is none): the unknown-key error
    listing the keys it has."""
    name = name if name in _algorithm_names() else _shared_keys()["name"][1].default
    valid = [*_shared_keys(), *_own_keys(_options_class(name))]
    return _unknown_key(ctx, valid, prefix, key, source, f" for {name}")


# Cross-field rules: (keys involved, predicate that must hold, message). Data, so new rules are one line.
_CROSS_CHECKS: list[tuple[tuple[str, ...], typing.Callable[[Config], bool], typing.Callable[[Config], str]]] = [
    (("clients_per_round", "num_clients"),
     lambda c: c.clients_per_round <= c.num_clients,
     lambda c: f"clients_per_round={c.clients_per_round} exceeds num_clients={c.num_clients}; "
               f"allowed: 1..{c.num_clients}"),
    (("data.classes_per_client", "data.name"),
     lambda c: c.data.partition != "classes" or c.data.classes_per_client <= _num_classes(c.data.name),
     lambda c: f"data.classes_per_client={c.data.classes_per_client} exceeds the "
               f"{_num_classes(c.data.name)} classes of {c.data.name}; "
               f"allowed: 1..{_num_classes(c.data.name)}"),
    (("data.synthetic_train", "num_clients"),
     lambda c: c.data.name != "synthetic" or c.data.synthetic_train >= c.num_clients,
     lambda c: f"data.synthetic_train={c.data.synthetic_train} is fewer than num_clients={c.num_clients}; "
               f"every client needs at least one sample"),
]


def _cross_check(ctx: _Ctx, cfg: Config) -> None:
    for keys, ok, msg in _CROSS_CHECKS:
        if not ok(cfg):
            srcs = list(dict.fromkeys(ctx.source(k) for k in keys))
            raise ConfigError(f"{', '.join(srcs)}: {msg(cfg)}", key=keys[0], source=srcs[0])


def _validate(ctx: _Ctx, data: Any) -> Config:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{ctx.default_source}: the top level must be a mapping of config keys, got "
                          f"{_show(data)}", source=ctx.default_source)
    cfg = _build(ctx, Config, data, "")
    _cross_check(ctx, cfg)
    return cfg


# --------------------------------------------------------------------------------------------- overrides


def _record_sources(ctx: _Ctx, key: str, value: Any, source: str) -> None:
    ctx.sources[key] = source
    if isinstance(value, Mapping) and key.count(".") < 2:  # the schema is two levels deep (a value may recurse)
        for k, v in value.items():
            _record_sources(ctx, f"{key}.{k}", v, source)


def _deep_merge(base: Mapping[Any, Any], new: Mapping[Any, Any], depth: int = 0) -> dict[Any, Any]:
    out = dict(base)
    for k, v in new.items():  # no deeper than the schema: a YAML value may be a self-referencing mapping
        deeper = depth < 2 and isinstance(v, Mapping) and isinstance(out.get(k), Mapping)
        out[k] = _deep_merge(out[k], v, depth + 1) if deeper else v
    return out


def _apply_override(ctx: _Ctx, raw: dict[Any, Any], text: str) -> None:
    """Set one `dotted.key=value` into the raw (unvalidated) mapping, recording its source."""
    source = f"override {text!r}"
    key, eq, rhs = text.partition("=")
    key = key.strip()
    if not eq or not key:
        raise ConfigError(f"{source}: expected KEY=VALUE with a dotted key (e.g. rounds=5 or "
                          f"algorithm.mask=signed)", source=source)
    parts = key.split(".")
    cls: type = Config
    node = raw
    for i, part in enumerate(parts):
        prefix = ".".join(parts[:i]) + "." if i else ""
        keys = _keys(cls)
        if part not in keys:
            if cls is AlgorithmConfig:  # the keys of the algorithm named so far
                raise _unknown_option(ctx, node.get("name"), prefix, part, source)
            raise _unknown_key(ctx, list(keys), prefix, part, source=source)
        tp = keys[part][0]
        if i == len(parts) - 1:
            break
        if not _is_section(tp):
            raise ConfigError(f"{source}: '{prefix}{part}' is a single value, not a section; "
                              f"use {prefix}{part}=VALUE", key=prefix + part, source=source)
        sub = node.get(part)
        if sub is not None and not isinstance(sub, Mapping):
            raise ctx.error(prefix + part, f"expected a mapping, got {_show(sub)}")
        node[part] = dict(sub or {})
        node, cls = node[part], tp
    try:
        value = _yaml_load(rhs) if rhs.strip() else None
    except yaml.YAMLError as e:
        if _split_optional(tp)[0] is not str:
            raise ConfigError(f"{source}: {key}: cannot parse value {rhs!r}{_yaml_problem(e)}", key=key,
                              source=source) from None
        value = rhs.strip()
    if _split_optional(tp)[0] is str and value is not None and not isinstance(value, str):
        # "run_name=001" should stay "001", not become the int 1.
        value = rhs.strip()
    leaf = parts[-1]
    if _is_section(tp) and isinstance(value, Mapping) and isinstance(node.get(leaf), Mapping):
        value = _deep_merge(node[leaf], value)
    node[leaf] = value
    _record_sources(ctx, key, value, source)


def _with_overrides(ctx: _Ctx, raw: Mapping[Any, Any], overrides: Iterable[str]) -> Config:
    if isinstance(overrides, str):  # a lone string would otherwise be split into characters
        overrides = [overrides]
    data = dict(raw)
    for text in overrides:
        _apply_override(ctx, data, text)
    return _validate(ctx, data)


# ------------------------------------------------------------------------------------------------- API


def default_config() -> Config:
    """The main job: FedMRN with binary masks on FashionMNIST, CNN4, IID over 100 clients."""
    return Config()


def config_from_dict(
    d: Mapping[str, Any], source: str = "<dict>", *, choices: Mapping[str, Sequence[str]] | None = None
) -> Config:
    """Validate a (possibly partial) nested mapping; missing keys take defaults.

    `choices` replaces the allowed values of dotted keys (e.g. ``{"data.name": registry}``) for callers
    that know the real list of datasets or models."""
    return _validate(_Ctx(source, choices), d)


def load_config(
    path: str | os.PathLike[str] | None,
    overrides: Iterable[str] = (),
    *,
    choices: Mapping[str, Sequence[str]] | None = None,
) -> Config:
    """Load a YAML file (None: the defaults), apply ``key.sub=value`` overrides in order, validate."""
    if path is None:
        source, raw = "<defaults>", {}
    else:
        source = os.fspath(path)
        try:
            with open(source, encoding="utf-8") as fh:
                text = fh.read()
        except FileNotFoundError:
            raise ConfigError(f"{source}: config file not found", source=source) from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{source}: not UTF-8 text (byte {e.start}: {e.reason})", source=source) from None
        except OSError as e:
            raise ConfigError(f"{source}: cannot read config file: {e.strerror or e}", source=source) from None
        try:
            raw = _yaml_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: invalid YAML{_yaml_problem(e)}", source=source) from None
        if raw is None:  # an empty file means "all defaults"
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: the top level must be a mapping of config keys, got {_show(raw)}",
                              source=source)
    return _with_overrides(_Ctx(source, choices), raw, overrides)


def apply_overrides(cfg: Config, overrides: Iterable[str], *,
                    choices: Mapping[str, Sequence[str]] | None = None) -> Config:
    """A copy of `cfg` with dotted overrides applied and re-validated."""
    return _with_overrides(_Ctx("<config>", choices), config_to_dict(cfg), overrides)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain dict of every key, in schema order (what config_to_yaml writes)."""
    return _as_dict(cfg, Config)


def _as_dict(obj: Any, cls: type) -> dict[str, Any]:
    keys = _keys(cls)
    return {k: _as_dict(v, keys[k][0]) if _is_section(keys[k][0]) else v for k, v in _values(obj, cls).items()}


def _values(obj: Any, cls: type) -> dict[str, Any]:
    """Key -> value of section `obj` (of type `cls`), in schema order. The algorithm section lists every
    algorithm's options, another algorithm's at its default: config_to_yaml has always written them all."""
    if cls is not AlgorithmConfig:
        return {k: getattr(obj, k) for k in _own_keys(cls)}
    shared, own = _shared_keys(), _own_keys(type(obj.options))
    return {k: getattr(obj, k) if k in shared else getattr(obj.options, k) if k in own else f.default
            for k, (_, f) in _keys(cls).items()}


def _scalar(value: Any) -> str:
    text = yaml.dump(value, Dumper=_Dumper, default_flow_style=True, width=10**9)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _emit(obj: Any, cls: type, indent: int, comments: bool, lines: list[str]) -> None:
    pad = " " * indent
    keys = _keys(cls)
    for name, value in _values(obj, cls).items():
        tp, f = keys[name]
        if _is_section(tp):
            head = f"{pad}{name}:"
            lines.append(f"{head:<42} # {f.metadata['help']}" if comments else head)
            _emit(value, tp, indent + 2, comments, lines)
            continue
        line = f"{pad}{name}: {_scalar(value)}"
        if comments:
            choices = _choices(f.metadata)
            line = f"{line:<42} # {f.metadata['help']}" + (f" ({'|'.join(choices)})" if choices else "")
        lines.append(line)


def config_to_yaml(cfg: Config, *, comments: bool = False) -> str:
    """The full resolved config as YAML (every key, schema order); `load_config` reads it back equal.

    With `comments`, each key carries its one-line description (used for configs/default.yaml)."""
    lines: list[str] = []
    _emit(cfg, Config, 0, comments, lines)
    return "\n".join(lines) + "\n"


def config_hash(cfg: Config) -> str:
    """SHA-256 hex digest of the canonical YAML (no comments) of `cfg`."""
    return hashlib.sha256(config_to_yaml(cfg).encode("utf-8")).hexdigest()
