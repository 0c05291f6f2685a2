"""Training recipes: YAML loading, inheritance, command-line overrides, validation.

A recipe is a nested mapping with the sections ``model``, ``data``, ``loss``,
``optim``, ``trainer``, ``eval`` and the top-level keys ``seed`` and ``init_from``
(see :data:`DEFAULTS` for every key and its default). A recipe may start with
``defaults: base.yaml`` (or a list of files), paths relative to the recipe; the
bases are merged first, later files win, mappings merge key by key.

Overrides use dotted keys with YAML-typed values, e.g.
``optim.lr=0.01``, ``model.encoder_weights=null``, ``data.scale_range=[0.5,1.5]``,
``loss.densecrf.weight=2e-9``.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from rloss._io import atomic_write_text, to_plain
from rloss.train import models

#: Recipe-level overrides of the term classes' constructor defaults, each with why.
#: Everything else a recipe's ``loss.<term>`` starts from is the class's own
#: default (:func:`rloss.losses.term_defaults`), written once, on the class.
LOSS_OVERRIDES: dict[str, dict[str, Any]] = {
    # The paper's recipes (and the rloss reference) compute the pairwise losses
    # at half the crop resolution (513 -> 257): scale_factor 0.5; the classes
    # default to 1.0 (no resize), the right default outside a training recipe.
    "densecrf": {"scale_factor": 0.5},
    # NormalizedCutLoss has no defaults for weight and bandwidths (they depend
    # on the data); the recipes start from DenseCRF's bandwidths, at the same
    # half resolution, with a weight of order 1 (NCut values are O(K)).
    "ncut": {"weight": 0.5, "sigma_rgb": 15.0, "sigma_xy": 100.0, "scale_factor": 0.5},
    # Kept from the first recipe table, so that existing recipes and runs keep
    # their effective value (SizeLoss's docs suggest a weight of order 1).
    "size": {"weight": 1e-6},
}

#: Recipe keys of a term that the training loop consumes, not the loss class,
#: each with the ``(rloss.losses function, parameter)`` whose default it takes:
#: ``size.margin`` is the relative margin of the bounds computed from the
#: ground-truth mask by :func:`rloss.losses.size_bounds_from_mask`.
LOSS_TRAINING_KEYS: dict[str, dict[str, tuple[str, str]]] = {
    "size": {"margin": ("size_bounds_from_mask", "margin")},
}

#: Constructor parameters that are no recipe key: the datasets mark unlabelled
#: pixels with ``rloss.constants.IGNORE_INDEX``; class weights were never a
#: recipe key, and adding one would change the resolved ``config.yaml`` of every
#: existing run (resume compares it).
_NOT_RECIPE_KEYS: dict[str, tuple[str, ...]] = {"pce": ("class_weight", "ignore_index")}


def _recipe_scalar(value: object) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


class _LossTerms(Mapping[str, dict[str, Any]]):
    """Term name -> default parameters, for every term of :data:`rloss.losses.TERMS`.

    Derived on access (a term registered with :func:`rloss.losses.register_term`
    is a recipe term too): the class's constructor defaults, then
    :data:`LOSS_OVERRIDES`, then the training keys (:data:`LOSS_TRAINING_KEYS`).
    ``rloss.losses`` is imported on first use, keeping this module light.
    """

    def __getitem__(self, name: str) -> dict[str, Any]:
        from rloss import losses

        if name not in losses.TERMS:
            raise KeyError(name)
        skip = _NOT_RECIPE_KEYS.get(name, ())
        params = {
            k: v
            for k, v in losses.term_defaults(name).items()
            if k not in skip and _recipe_scalar(v)
        }
        params.update(copy.deepcopy(LOSS_OVERRIDES.get(name, {})))
        order = list(inspect.signature(losses.TERMS[name]).parameters)
        params = dict(sorted(params.items(), key=lambda kv: order.index(kv[0])))
        for key, (func, param) in LOSS_TRAINING_KEYS.get(name, {}).items():
            params[key] = inspect.signature(getattr(losses, func)).parameters[param].default
        return params

    def __iter__(self):  # type: ignore[override]
        from rloss import losses

        return iter(list(losses.TERMS))

    def __len__(self) -> int:
        from rloss import losses

        return len(losses.TERMS)

    def __repr__(self) -> str:
        return repr(dict(self))


#: Loss terms a recipe may enable, with their default parameters (derived; see
#: :class:`_LossTerms`). E.g. ``LOSS_TERMS["densecrf"]`` is ``{"weight": 2e-9,
#: "sigma_rgb": 15.0, "sigma_xy": 100.0, "scale_factor": 0.5, "normalize": False,
#: "backend": None, "spacing": None}``.
LOSS_TERMS: Mapping[str, dict[str, Any]] = _LossTerms()

DATA_KINDS = ("voc_scribble", "folder", "synthetic", "acdc")
SUPERVISION = ("scribble", "full")
SCHEDULES = ("poly", "constant")
OPTIMIZERS = ("sgd", "adamw")


# --------------------------------------------------------------------------- field checks
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class Check:
    """A field check: ``ok(value)`` or the error ``"<key>: expected <expected>, got <value>"``.

    ``first`` is an optional weaker check with its own wording, tried before ``ok`` (so
    ``lr: fast`` says "expected a number" and ``lr: -1`` "expected a non-negative number").
    """

    expected: str
    ok: Callable[[Any], bool]
    first: Check | None = None

    def __call__(self, dotted: str, value: Any) -> None:
        if self.first is not None:
            self.first(dotted, value)
        if not self.ok(value):
            raise ConfigError(f"{dotted}: expected {self.expected}, got {value!r}")


def one_of(options: Sequence[Any]) -> Check:
    """Check that the value is one of ``options``."""
    return Check(f"one of {list(options)}", lambda v: v in options)


NUMBER = Check("a number", _is_num)
NON_NEGATIVE = Check("a non-negative number", lambda v: v >= 0, first=NUMBER)
POSITIVE = Check("a positive number", lambda v: v > 0, first=NUMBER)
NON_NEGATIVE_OR_NULL = Check(
    "a non-negative number or null", lambda v: v is None or (_is_num(v) and v >= 0)
)
POSITIVE_INT = Check("a positive int", lambda v: _is_int(v) and v >= 1)
POSITIVE_INT_OR_NULL = Check(
    "a positive int or null", lambda v: v is None or (_is_int(v) and v >= 1)
)
NON_NEGATIVE_INT = Check("a non-negative int", lambda v: _is_int(v) and v >= 0)
INT = Check("an int", _is_int)
BOOL = Check("true or false", lambda v: isinstance(v, bool))
POSITIVE_OR_NULL = Check("a positive number or null", lambda v: v is None or (_is_num(v) and v > 0))
PROBABILITY_OR_NULL = Check(
    "a probability in [0, 1] or null", lambda v: v is None or (_is_num(v) and 0 <= v <= 1)
)
PATIENTS = Check(
    "null, a patient number, a range string such as '21-60,71-100' or a list of them",
    lambda v: v is None
    or _is_int(v)
    or isinstance(v, str)
    or (isinstance(v, (list, tuple)) and all(_is_int(x) or isinstance(x, str) for x in v)),
)
STR = Check("a string", lambda v: isinstance(v, str))
STR_OR_NULL = Check("a string or null", lambda v: v is None or isinstance(v, str))
MAPPING_OR_NULL = Check("a mapping or null", lambda v: v is None or isinstance(v, Mapping))
POSITIVE_LIST = Check(
    "a list of positive numbers",
    lambda v: isinstance(v, (list, tuple)) and bool(v) and all(_is_num(s) and s > 0 for s in v),
)
BATCH_LIMIT = Check(
    "null, a positive int (batches) or a fraction in (0, 1]",
    lambda v: v is None or (_is_int(v) and v >= 0) or (isinstance(v, float) and 0 <= v <= 1),
)


def _m(check: Check | None = None, **meta: Any) -> dict[str, Any]:
    """Field metadata: its check (and ``trainer=True`` for ``pl.Trainer`` arguments)."""
    return {"check": check, **meta}


def _check_fields(spec: Any, prefix: str) -> None:
    for f in fields(spec):
        check = f.metadata.get("check")
        if check is not None:
            check(f"{prefix}.{f.name}" if prefix else f.name, getattr(spec, f.name))


def _defaults(cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(cls):
        if f.default is not MISSING:
            value = f.default
        else:
            value = f.default_factory()  # type: ignore[misc]
        out[f.name] = _defaults(value.__class__) if is_dataclass(value) else to_plain(value)
    return out


def _spec_to_mapping(spec: Any) -> dict[str, Any]:
    return {
        f.name: (
            _spec_to_mapping(getattr(spec, f.name))
            if is_dataclass(getattr(spec, f.name))
            else to_plain(copy.deepcopy(getattr(spec, f.name)))
        )
        for f in fields(spec)
    }


# --------------------------------------------------------------------------- section specs
@dataclass(frozen=True)
class ModelSpec:
    """The ``model`` section: which network (see :mod:`rloss.train.models`).

    ``arch`` names a registered architecture; ``encoder`` an smp encoder (smp
    architectures only); ``encoder_weights`` ``"imagenet"``, null or a local state-dict
    file; ``msc`` null, true (DeepLab's scales) or a list of scales; ``kwargs`` extra smp
    constructor arguments (unchecked).
    """

    arch: str = field(default="deeplabv3plus", metadata=_m(STR))
    encoder: str = field(default="mobilenet_v2", metadata=_m(STR))
    encoder_weights: str | None = field(default="imagenet", metadata=_m(STR_OR_NULL))
    num_classes: int | None = field(default=None, metadata=_m(POSITIVE_INT_OR_NULL))
    output_stride: int | None = field(default=16, metadata=_m(POSITIVE_INT_OR_NULL))
    msc: Any = field(
        default=None,
        metadata=_m(
            Check(
                "null, true or a list of positive scales",
                lambda v: v in (None, False, True) or POSITIVE_LIST.ok(v),
            )
        ),
    )
    kwargs: dict[str, Any] = field(default_factory=lambda: {}, metadata=_m(MAPPING_OR_NULL))

    def as_mapping(self) -> dict[str, Any]:
        """The section as a plain mapping (what :func:`rloss.train.models.build_model` takes)."""
        return _spec_to_mapping(self)


@dataclass(frozen=True)
class SyntheticSpec:
    """``data.synthetic``: generated scenes (:class:`rloss.data.demo_scenes.SyntheticScenes`)."""

    num_train: int = field(default=32, metadata=_m(POSITIVE_INT))
    num_val: int = field(default=8, metadata=_m(POSITIVE_INT))
    size: list[int] = field(
        default_factory=lambda: [64, 64],
        metadata=_m(
            Check(
                "[height, width] of positive ints",
                lambda v: (
                    isinstance(v, (list, tuple))
                    and len(v) == 2
                    and all(_is_int(x) and x >= 1 for x in v)
                ),
            )
        ),
    )
    seed: int = field(default=0, metadata=_m(INT))
    scribble_fraction: float = field(default=0.03, metadata=_m(NON_NEGATIVE))


@dataclass(frozen=True)
class DataSpec:
    """The ``data`` section: dataset, supervision, augmentation and loaders."""

    kind: str = field(default="voc_scribble", metadata=_m(one_of(DATA_KINDS)))
    root: str | None = field(default=None, metadata=_m())
    supervision: str = field(default="scribble", metadata=_m(one_of(SUPERVISION)))
    train_split: str = field(default="train", metadata=_m())
    val_split: str = field(default="val", metadata=_m())
    crop_size: int = field(default=513, metadata=_m(POSITIVE_INT))
    scale_range: list[float] = field(
        default_factory=lambda: [0.5, 2.0],
        metadata=_m(
            Check(
                "[low, high] with 0 < low <= high",
                lambda v: (
                    isinstance(v, (list, tuple))
                    and len(v) == 2
                    and all(_is_num(s) and s > 0 for s in v)
                    and v[0] <= v[1]
                ),
            )
        ),
    )
    flip: bool = field(default=True, metadata=_m(BOOL))
    batch_size: int = field(default=12, metadata=_m(POSITIVE_INT))
    val_batch_size: int = field(default=1, metadata=_m(POSITIVE_INT))
    num_workers: int = field(default=4, metadata=_m(NON_NEGATIVE_INT))
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)
    # kind acdc (rloss.data.acdc): patients as ranges such as "21-60,71-100" (null = the
    # published fold 1: test 1-20, val 61-70, train the rest); image_raw = image x
    # intensity_scale (null = 255, the losses' 0..255 colour convention); rotate = the
    # probability of a small random rotation (null = the dataset's default)
    train_patients: Any = field(default=None, metadata=_m(PATIENTS))
    val_patients: Any = field(default=None, metadata=_m(PATIENTS))
    test_patients: Any = field(default=None, metadata=_m(PATIENTS))
    intensity_scale: float | None = field(default=None, metadata=_m(POSITIVE_OR_NULL))
    rotate: float | None = field(default=None, metadata=_m(PROBABILITY_OR_NULL))

    @property
    def target_key(self) -> str:
        """The sample key the cross-entropy is trained on: ``scribble`` or ``mask``."""
        return "scribble" if self.supervision == "scribble" else "mask"

    def as_mapping(self) -> dict[str, Any]:
        """The section as a plain mapping (what the data module takes)."""
        return _spec_to_mapping(self)


@dataclass(frozen=True)
class OptimSpec:
    """The ``optim`` section: optimiser and learning-rate schedule.

    ``lr`` is the backbone's learning rate, the head gets ``lr * head_lr_mult``;
    ``schedule: poly`` is ``lr_t = lr (1 - t/T)^power`` stepped every iteration with
    ``T = total_iters`` (or Lightning's estimate when null).
    """

    name: str = field(default="sgd", metadata=_m(one_of(OPTIMIZERS)))
    lr: float = field(default=0.007, metadata=_m(NON_NEGATIVE))
    momentum: float = field(default=0.9, metadata=_m(NON_NEGATIVE))
    weight_decay: float = field(default=5e-4, metadata=_m(NON_NEGATIVE))
    nesterov: bool = field(default=False, metadata=_m(BOOL))
    head_lr_mult: float = field(default=1.0, metadata=_m(NON_NEGATIVE))
    schedule: str = field(default="poly", metadata=_m(one_of(SCHEDULES)))
    power: float = field(default=0.9, metadata=_m(NON_NEGATIVE))
    total_iters: int | None = field(default=None, metadata=_m(POSITIVE_INT_OR_NULL))


@dataclass(frozen=True)
class TrainerSpec:
    """The ``trainer`` section: the fields marked ``trainer=True`` go to ``pl.Trainer``
    unchanged (:meth:`as_trainer_kwargs`); ``sync_batchnorm: auto`` is resolved there;
    ``checkpoint_every_n_steps`` and ``threads`` are ours."""

    max_epochs: int = field(default=60, metadata=_m(POSITIVE_INT, trainer=True))
    max_steps: int = field(
        default=-1,
        metadata=_m(
            Check("a positive int or -1", lambda v: _is_int(v) and (v >= 1 or v == -1)),
            trainer=True,
        ),
    )
    accelerator: str = field(default="auto", metadata=_m(trainer=True))
    devices: Any = field(default=1, metadata=_m(trainer=True))
    num_nodes: int = field(default=1, metadata=_m(POSITIVE_INT, trainer=True))
    strategy: Any = field(default="auto", metadata=_m(trainer=True))
    sync_batchnorm: Any = field(
        default="auto",
        metadata=_m(Check("'auto', true or false", lambda v: v == "auto" or isinstance(v, bool))),
    )
    precision: Any = field(default="32-true", metadata=_m(trainer=True))
    check_val_every_n_epoch: int = field(default=1, metadata=_m(POSITIVE_INT, trainer=True))
    limit_train_batches: Any = field(default=None, metadata=_m(BATCH_LIMIT, trainer=True))
    limit_val_batches: Any = field(default=None, metadata=_m(BATCH_LIMIT, trainer=True))
    log_every_n_steps: int = field(default=10, metadata=_m(POSITIVE_INT, trainer=True))
    checkpoint_every_n_steps: int | None = field(default=None, metadata=_m(POSITIVE_INT_OR_NULL))
    gradient_clip_val: float | None = field(
        default=None, metadata=_m(NON_NEGATIVE_OR_NULL, trainer=True)
    )
    deterministic: Any = field(default=False, metadata=_m(trainer=True))
    threads: Any = field(
        default="auto",
        metadata=_m(
            Check("'auto' or a positive int", lambda v: v == "auto" or (_is_int(v) and v >= 1))
        ),
    )

    def as_trainer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``lightning.pytorch.Trainer`` (incl. ``sync_batchnorm``).

        >>> TrainerSpec(max_epochs=3).as_trainer_kwargs()["max_epochs"]
        3
        """
        kw = {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("trainer")}
        kw["deterministic"] = bool(kw["deterministic"])
        kw["sync_batchnorm"] = self.resolved_sync_batchnorm()
        return kw

    def resolved_sync_batchnorm(self) -> bool:
        """``sync_batchnorm``, with ``auto`` = on for multi-GPU DDP (SyncBatchNorm needs GPUs)."""
        if self.sync_batchnorm != "auto":
            return bool(self.sync_batchnorm)
        devices = self.devices
        multi = (_is_int(devices) and devices not in (0, 1)) or (
            isinstance(devices, (list, str)) and str(devices) not in ("1", "auto")
        )
        accel = str(self.accelerator)
        on_gpu = accel in ("gpu", "cuda") or (accel == "auto" and torch.cuda.is_available())
        ddp = "ddp" in str(self.strategy)
        return on_gpu and ddp and (multi or int(self.num_nodes) > 1)


@dataclass(frozen=True)
class EvalSpec:
    """The ``eval`` section: test-time scales, flips and CRF post-processing parameters."""

    scales: list[float] = field(default_factory=lambda: [1.0], metadata=_m(POSITIVE_LIST))
    flip: bool = field(default=False, metadata=_m(BOOL))
    crf: dict[str, Any] | None = field(default=None, metadata=_m(MAPPING_OR_NULL))


_SECTIONS: dict[str, type] = {
    "model": ModelSpec,
    "data": DataSpec,
    "optim": OptimSpec,
    "trainer": TrainerSpec,
    "eval": EvalSpec,
}

#: Every recipe key with its default value (derived from the section specs). ``loss``
#: terms are validated against :data:`LOSS_TERMS`; ``model.kwargs`` is passed to smp
#: unchecked.
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "init_from": None,
    "classes": None,
    "model": _defaults(ModelSpec),
    "data": _defaults(DataSpec),
    "loss": {"pce": {"weight": 1.0}},
    "optim": _defaults(OptimSpec),
    "trainer": _defaults(TrainerSpec),
    "eval": _defaults(EvalSpec),
}

#: Keys whose value is a free-form mapping (not checked key by key).
_FREE_FORM = {("model", "kwargs"), ("eval", "crf")}

#: Keys whose value is a list or null (not checked key by key).
_LISTS = {("classes",)}


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that also reads ``2e-9``/``1e5`` as floats (YAML 1.1 wants ``2.0e-9``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def yaml_load(text: str) -> Any:
    """Parse YAML safely, with ``2e-9`` read as a float."""
    return yaml.load(text, Loader=_Loader)


class ConfigError(ValueError):
    """A recipe is malformed: unknown key, bad value, missing file."""


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated by ``update``; nested mappings merge key by key, others replace."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.expanduser().resolve()
    if path in _seen:
        raise ConfigError(f"recipe {path}: circular 'defaults:' chain {[str(p) for p in _seen]}")
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r} does not exist")
    try:
        data = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {path}: invalid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(
            f"recipe {path}: expected a mapping at the top level, got {type(data).__name__}"
        )
    bases = data.pop("defaults", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    merged: dict[str, Any] = {}
    for base in bases:
        merged = deep_merge(merged, _read_yaml(path.parent / str(base), (*_seen, path)))
    return deep_merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``"a.b.c=value"`` into (``["a", "b", "c"]``, YAML-typed value).

    Raises:
        ConfigError: no ``=`` or an empty key.
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.sub=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(config: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides to a copy of ``config``."""
    out = copy.deepcopy(dict(config))
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return out


def _check_keys(
    config: Mapping[str, Any], schema: Mapping[str, Any], prefix: tuple[str, ...]
) -> None:
    for key, value in config.items():
        path = (*prefix, str(key))
        dotted = ".".join(path)
        if prefix == ("loss",):
            if key not in LOSS_TERMS:
                raise ConfigError(
                    f"unknown loss term {dotted!r}; known terms: {sorted(LOSS_TERMS)}"
                )
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"{dotted}: expected a mapping of parameters or null, got {value!r}"
                )
            _check_keys(value, LOSS_TERMS[key], path)
            continue
        if key not in schema:
            close = difflib.get_close_matches(str(key), [str(k) for k in schema], n=1)
            hint = f"; did you mean {'.'.join((*prefix, close[0]))!r}?" if close else ""
            raise ConfigError(f"unknown config key {dotted!r}{hint}")
        if path in _LISTS:
            if value is not None and not isinstance(value, list):
                raise ConfigError(f"{dotted}: expected a list or null, got {value!r}")
            continue
        if path in _FREE_FORM:
            if value is not None and not isinstance(value, Mapping):
                raise ConfigError(f"{dotted}: expected a mapping or null, got {value!r}")
            continue
        if isinstance(schema[key], Mapping) and path != ("loss",):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{dotted}: expected a mapping, got {value!r}")
            _check_keys(value, schema[key], path)
        elif path == ("loss",):
            if not isinstance(value, Mapping):
                raise ConfigError(f"loss: expected a mapping of loss terms, got {value!r}")
            _check_keys(value, {}, path)


@dataclass(frozen=True)
class Recipe:
    """A validated training recipe: one typed spec per section.

    Build one with :meth:`from_mapping` (unknown keys are named with a suggestion, every
    value is checked); :meth:`to_mapping` gives the resolved plain mapping (what
    ``config.yaml`` holds and :func:`validate` returns). ``loss`` stays a mapping term
    name → parameters (completed with :data:`LOSS_TERMS`' defaults).

    >>> r = Recipe.from_mapping({"data": {"kind": "synthetic"}, "optim": {"lr": 0.01}})
    >>> r.optim.lr, r.data.target_key, sorted(r.loss)
    (0.01, 'scribble', ['pce'])
    >>> Recipe.from_mapping(r.to_mapping()) == r
    True
    """

    seed: int = 0
    init_from: str | None = None
    classes: list[str] | None = None
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    trainer: TrainerSpec = field(default_factory=TrainerSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    loss: dict[str, dict[str, Any]] = field(default_factory=lambda: {"pce": {"weight": 1.0}})

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any], *, check_paths: bool = True) -> Recipe:
        """Check a raw recipe (after inheritance and overrides) and fill the defaults.

        Loss terms are completed with their defaults from :data:`LOSS_TERMS`; a term set
        to ``null`` is removed.

        Args:
            config: the raw recipe mapping.
            check_paths: check that ``data.root``, ``init_from`` and a local
                ``model.encoder_weights`` file exist.

        Raises:
            ConfigError: unknown key (with a suggestion), unknown architecture, encoder,
                loss term, data kind or supervision, bad numbers, missing data root or
                ``init_from`` checkpoint.
        """
        if not isinstance(config, Mapping):
            raise ConfigError(f"config: expected a mapping, got {type(config).__name__}")
        _check_keys(config, DEFAULTS, ())
        merged = deep_merge(
            {k: v for k, v in DEFAULTS.items() if k != "loss"},
            {k: v for k, v in config.items() if k != "loss"},
        )
        sections: dict[str, Any] = {}
        for name, spec_cls in _SECTIONS.items():
            values = dict(merged[name])
            if spec_cls is ModelSpec and isinstance(values["arch"], str):
                values["arch"] = values["arch"].lower()
            if spec_cls is DataSpec:
                values["synthetic"] = SyntheticSpec(**values["synthetic"])
                _check_fields(values["synthetic"], "data.synthetic")
            spec = spec_cls(**values)
            _check_fields(spec, name)
            sections[name] = spec
        terms = deep_merge(DEFAULTS["loss"], config.get("loss") or {})
        loss = {
            name: deep_merge(LOSS_TERMS[name], params)
            for name, params in terms.items()
            if params is not None
        }
        recipe = cls(
            seed=merged["seed"],
            init_from=merged["init_from"],
            classes=merged["classes"],
            loss=loss,
            **sections,
        )
        recipe._check(check_paths)
        return recipe

    def _check(self, check_paths: bool) -> None:
        INT("seed", self.seed)
        STR_OR_NULL("init_from", self.init_from)
        if "pce" not in self.loss:
            raise ConfigError(
                "loss.pce: the partial cross-entropy term is required (set its weight instead)"
            )
        for name, params in self.loss.items():
            NON_NEGATIVE(f"loss.{name}.weight", params.get("weight"))
            for key in ("sigma_rgb", "sigma_xy", "scale_factor"):
                if key in params:
                    POSITIVE(f"loss.{name}.{key}", params[key])
        m = self.model
        try:
            entry = models.get_model_entry(m.arch)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if entry.uses_encoder:
            enc = str(m.encoder)
            if not enc.startswith("tu-") and enc not in models.smp_encoders():
                close = difflib.get_close_matches(enc, models.smp_encoders(), n=3)
                raise ConfigError(
                    f"model.encoder: unknown encoder {enc!r}"
                    + (f"; did you mean {close}?" if close else "")
                    + " (list: segmentation_models_pytorch.encoders.get_encoder_names())"
                )
        weights = m.encoder_weights
        if weights is not None and weights != "imagenet":
            if check_paths and not Path(str(weights)).expanduser().is_file():
                raise ConfigError(
                    f"model.encoder_weights: {weights!r} is neither 'imagenet', null nor an "
                    "existing file"
                )
        d = self.data
        if d.kind != "synthetic":
            if d.root in (None, ""):
                raise ConfigError(
                    f"data.root: required for data.kind={d.kind!r} (set data.root=/path/to/data)"
                )
            if check_paths and not Path(str(d.root)).expanduser().is_dir():
                raise ConfigError(f"data.root: directory {str(d.root)!r} does not exist")
        init = self.init_from
        if init is not None and check_paths and not Path(str(init)).expanduser().is_file():
            raise ConfigError(f"init_from: checkpoint {str(init)!r} does not exist")

    def to_mapping(self) -> dict[str, Any]:
        """The resolved recipe as plain data (every key of :data:`DEFAULTS`)."""
        return _spec_to_mapping(self)


def validate(config: Mapping[str, Any], *, check_paths: bool = True) -> dict[str, Any]:
    """Check a raw recipe and return it merged over :data:`DEFAULTS`.

    The mapping form of :meth:`Recipe.from_mapping` (see there for the checks):
    ``Recipe.from_mapping(config).to_mapping()``.

    Raises:
        ConfigError: see :meth:`Recipe.from_mapping`.
    """
    return Recipe.from_mapping(config, check_paths=check_paths).to_mapping()


def load_config(
    source: str | Path | Mapping[str, Any],
    overrides: Iterable[str] = (),
    *,
    check_paths: bool = True,
) -> dict[str, Any]:
    """Load a recipe (YAML file or mapping), apply overrides, validate, fill defaults.

    Args:
        source: path of a YAML recipe, or an already-parsed mapping.
        overrides: dotted ``key.sub=value`` strings with YAML-typed values.
        check_paths: also check that ``data.root``/``init_from`` exist.

    Returns:
        The resolved config: every key of :data:`DEFAULTS` present.

    Raises:
        ConfigError: see :func:`validate`.
    """
    if isinstance(source, Mapping):
        raw = copy.deepcopy(dict(source))
        bases = raw.pop("defaults", None)
        if bases is not None:
            raise ConfigError(
                "defaults: only supported in recipe files (paths are relative to the file)"
            )
    else:
        raw = _read_yaml(Path(source))
    raw = apply_overrides(raw, overrides)
    return validate(raw, check_paths=check_paths)


def write_yaml_atomic(data: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``data`` as YAML to ``path`` via a temporary file and rename."""
    return atomic_write_text(path, yaml.safe_dump(to_plain(data), sort_keys=False))
