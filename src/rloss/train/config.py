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
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

#: Loss terms a recipe may enable, with their default parameters.
LOSS_TERMS: dict[str, dict[str, Any]] = {
    "pce": {"weight": 1.0},
    "densecrf": {
        "weight": 2e-9,
        "sigma_rgb": 15.0,
        "sigma_xy": 100.0,
        "scale_factor": 0.5,
        "normalize": False,
        "backend": None,
    },
    "ncut": {
        "weight": 0.5,
        "sigma_rgb": 15.0,
        "sigma_xy": 100.0,
        "scale_factor": 0.5,
        "backend": None,
    },
    "size": {"weight": 1e-6, "margin": 0.1},
}

#: Every recipe key with its default value. ``loss`` terms are validated against
#: :data:`LOSS_TERMS`; ``model.kwargs`` is passed to smp unchecked.
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "init_from": None,
    "classes": None,
    "model": {
        "arch": "deeplabv3plus",
        "encoder": "mobilenet_v2",
        "encoder_weights": "imagenet",
        "num_classes": None,
        "output_stride": 16,
        "msc": None,
        "kwargs": {},
    },
    "data": {
        "kind": "voc_scribble",
        "root": None,
        "supervision": "scribble",
        "train_split": "train",
        "val_split": "val",
        "crop_size": 513,
        "scale_range": [0.5, 2.0],
        "flip": True,
        "batch_size": 12,
        "val_batch_size": 1,
        "num_workers": 4,
        # acdc: data.kind acdc (rloss.data.acdc); patients as ranges, null = fold 1
        "train_patients": None,
        "val_patients": None,
        "test_patients": None,
        "intensity_scale": None,
        "rotate": None,
        "synthetic": {
            "num_train": 32,
            "num_val": 8,
            "size": [64, 64],
            "seed": 0,
            "scribble_fraction": 0.03,
        },
    },
    "loss": {"pce": {"weight": 1.0}},
    "optim": {
        "name": "sgd",
        "lr": 0.007,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "nesterov": False,
        "head_lr_mult": 1.0,
        "schedule": "poly",
        "power": 0.9,
        "total_iters": None,
    },
    "trainer": {
        "max_epochs": 60,
        "max_steps": -1,
        "accelerator": "auto",
        "devices": 1,
        "num_nodes": 1,
        "strategy": "auto",
        "sync_batchnorm": "auto",
        "precision": "32-true",
        "check_val_every_n_epoch": 1,
        "limit_train_batches": None,
        "limit_val_batches": None,
        "log_every_n_steps": 10,
        "checkpoint_every_n_steps": None,
        "gradient_clip_val": None,
        "deterministic": False,
        "threads": "auto",
    },
    "eval": {"scales": [1.0], "flip": False, "crf": None},
}

#: Keys whose value is a free-form mapping (not checked key by key).
_FREE_FORM = {("model", "kwargs"), ("eval", "crf")}

#: Keys whose value is a list or null (not checked key by key).
_LISTS = {("classes",)}

DATA_KINDS = ("voc_scribble", "folder", "synthetic", "acdc")  # acdc: rloss.data.acdc
SUPERVISION = ("scribble", "full")
SCHEDULES = ("poly", "constant")
OPTIMIZERS = ("sgd", "adamw")


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


def _num(
    config: Mapping[str, Any], dotted: str, *, positive: bool = False, allow_zero=True
) -> None:
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        raise ConfigError(f"{dotted}: expected a number, got {node!r}")
    if positive and (node < 0 or (node == 0 and not allow_zero)):
        raise ConfigError(
            f"{dotted}: expected a {'non-negative' if allow_zero else 'positive'} number, "
            f"got {node!r}"
        )


def validate(config: Mapping[str, Any], *, check_paths: bool = True) -> dict[str, Any]:
    """Check a raw recipe and return it merged over :data:`DEFAULTS`.

    Loss terms are completed with their defaults from :data:`LOSS_TERMS`; a term set
    to ``null`` is removed.

    Args:
        config: the raw recipe (after inheritance and overrides).
        check_paths: check that ``data.root`` and ``init_from`` exist.

    Raises:
        ConfigError: unknown key (with a suggestion), unknown architecture, encoder,
            loss term, data kind or supervision, bad numbers, missing data root or
            ``init_from`` checkpoint.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"config: expected a mapping, got {type(config).__name__}")
    _check_keys(config, DEFAULTS, ())
    loss = config.get("loss")
    cfg = deep_merge(
        {k: v for k, v in DEFAULTS.items() if k != "loss"},
        {k: v for k, v in config.items() if k != "loss"},
    )
    terms = deep_merge(DEFAULTS["loss"], loss or {})
    cfg["loss"] = {
        name: deep_merge(LOSS_TERMS[name], params)
        for name, params in terms.items()
        if params is not None
    }
    if "pce" not in cfg["loss"]:
        raise ConfigError(
            "loss.pce: the partial cross-entropy term is required (set its weight instead)"
        )

    from rloss.train import models

    arch = str(cfg["model"]["arch"]).lower()
    if arch not in models.known_archs():
        raise ConfigError(
            f"model.arch: unknown architecture {arch!r}; known: {list(models.known_archs())}"
        )
    cfg["model"]["arch"] = arch
    if arch not in models.OWN_ARCHS:
        enc = str(cfg["model"]["encoder"])
        if not enc.startswith("tu-") and enc not in models.smp_encoders():
            close = difflib.get_close_matches(enc, models.smp_encoders(), n=3)
            raise ConfigError(
                f"model.encoder: unknown encoder {enc!r}"
                + (f"; did you mean {close}?" if close else "")
                + " (list: segmentation_models_pytorch.encoders.get_encoder_names())"
            )
    weights = cfg["model"]["encoder_weights"]
    if weights is not None and weights != "imagenet":
        if check_paths and not Path(str(weights)).expanduser().is_file():
            raise ConfigError(
                f"model.encoder_weights: {weights!r} is neither 'imagenet', null nor an "
                "existing file"
            )
    nc = cfg["model"]["num_classes"]
    if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or nc < 1):
        raise ConfigError(f"model.num_classes: expected a positive int or null, got {nc!r}")
    msc = cfg["model"]["msc"]
    if msc not in (None, False, True) and (
        not isinstance(msc, list)
        or not msc
        or not all(isinstance(s, (int, float)) and s > 0 for s in msc)
    ):
        raise ConfigError(
            f"model.msc: expected null, true or a list of positive scales, got {msc!r}"
        )

    data = cfg["data"]
    if data["kind"] not in DATA_KINDS:
        raise ConfigError(f"data.kind: expected one of {list(DATA_KINDS)}, got {data['kind']!r}")
    if data["supervision"] not in SUPERVISION:
        raise ConfigError(
            f"data.supervision: expected one of {list(SUPERVISION)}, got {data['supervision']!r}"
        )
    if data["kind"] != "synthetic":
        if data["root"] in (None, ""):
            raise ConfigError(
                f"data.root: required for data.kind={data['kind']!r} (set data.root=/path/to/data)"
            )
        if check_paths and not Path(str(data["root"])).expanduser().is_dir():
            raise ConfigError(f"data.root: directory {str(data['root'])!r} does not exist")
    for key in ("crop_size", "batch_size", "val_batch_size"):
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"data.{key}: expected a positive int, got {value!r}")
    sr = data["scale_range"]
    if not (
        isinstance(sr, list)
        and len(sr) == 2
        and all(isinstance(s, (int, float)) and s > 0 for s in sr)
        and sr[0] <= sr[1]
    ):
        raise ConfigError(
            f"data.scale_range: expected [low, high] with 0 < low <= high, got {sr!r}"
        )

    optim = cfg["optim"]
    if optim["name"] not in OPTIMIZERS:
        raise ConfigError(f"optim.name: expected one of {list(OPTIMIZERS)}, got {optim['name']!r}")
    if optim["schedule"] not in SCHEDULES:
        raise ConfigError(
            f"optim.schedule: expected one of {list(SCHEDULES)}, got {optim['schedule']!r}"
        )
    for key in ("lr", "momentum", "weight_decay", "head_lr_mult", "power"):
        _num(cfg, f"optim.{key}", positive=True)
    for name, params in cfg["loss"].items():
        _num(cfg, f"loss.{name}.weight", positive=True)
        for key in ("sigma_rgb", "sigma_xy", "scale_factor"):
            if key in params:
                _num(cfg, f"loss.{name}.{key}", positive=True, allow_zero=False)

    tr = cfg["trainer"]
    me, ms = tr["max_epochs"], tr["max_steps"]
    if not isinstance(me, int) or isinstance(me, bool) or me < 1:
        raise ConfigError(f"trainer.max_epochs: expected a positive int, got {me!r}")
    if not isinstance(ms, int) or isinstance(ms, bool) or (ms < 1 and ms != -1):
        raise ConfigError(f"trainer.max_steps: expected a positive int or -1, got {ms!r}")
    if tr["threads"] != "auto" and (not isinstance(tr["threads"], int) or tr["threads"] < 1):
        raise ConfigError(
            f"trainer.threads: expected 'auto' or a positive int, got {tr['threads']!r}"
        )

    init = cfg["init_from"]
    if init is not None and check_paths and not Path(str(init)).expanduser().is_file():
        raise ConfigError(f"init_from: checkpoint {str(init)!r} does not exist")
    ev = cfg["eval"]
    if (
        not isinstance(ev["scales"], list)
        or not ev["scales"]
        or not all(isinstance(s, (int, float)) and s > 0 for s in ev["scales"])
    ):
        raise ConfigError(f"eval.scales: expected a list of positive numbers, got {ev['scales']!r}")
    return cfg


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
    from rloss.data.io import atomic_write_text

    return atomic_write_text(path, yaml.safe_dump(_plain(data), sort_keys=False))


def _plain(obj: Any) -> Any:
    """Convert tuples/Paths to YAML-safe plain types."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
