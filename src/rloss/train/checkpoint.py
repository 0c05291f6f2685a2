"""Checkpoints: weights-only reading, loading into a network, rebuilding a trained network.

Two files carry a trained network:

* ``RUN/checkpoints/*.ckpt``: Lightning checkpoints (weights, optimiser and loop state,
  and our metadata under the ``"rloss"`` key);
* ``RUN/model.pt`` (:data:`MODEL_FILE`): ``{"state_dict": weights, "rloss": metadata}``.

Both are read with ``torch.load(..., weights_only=True)``: no code is unpickled. The
metadata is ``{"config": resolved recipe, "num_classes": K, "class_names": [...]}``.

This module also holds the plain-data conversion and the atomic JSON / torch writers
of the training package (:func:`to_plain`, :func:`write_json_atomic`,
:func:`torch_save_atomic`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rloss._io import atomic_path, to_plain, write_json_atomic
from rloss.train.models import build_model, state_dict_mismatch

__all__ = [
    "MODEL_FILE",
    "load_model",
    "load_weights",
    "read_checkpoint",
    "save_model_file",
    "to_plain",
    "torch_save_atomic",
    "write_json_atomic",
]

#: Name of the weights-only export in a run folder.
MODEL_FILE = "model.pt"


# --------------------------------------------------------------------------- plain data
#: Compatibility names: the one JSON/YAML-safe conversion and JSON writer are in rloss._io.
_json_safe = to_plain


def torch_save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` via a temporary file and rename."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


_torch_save_atomic = torch_save_atomic


# --------------------------------------------------------------------------- weights
def read_checkpoint(checkpoint: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read network weights and metadata from a checkpoint without unpickling code.

    Accepts a Lightning checkpoint written by :func:`rloss.train.fit.train` (``*.ckpt``)
    or the weights-only export ``model.pt``; both are loaded with ``weights_only=True``.

    Returns:
        (state dict of the network (keys without the ``model.`` prefix), metadata dict
        with ``config``, ``num_classes``, ``class_names``; empty when the file has none).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a checkpoint of this project (or needs unpickling).
    """
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"checkpoint {str(path)!r} cannot be read with weights_only=True ({err}); "
            "it is either not a torch checkpoint or holds pickled code, which is refused"
        ) from err
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise ValueError(f"checkpoint {str(path)!r} has no 'state_dict'")
    state = ckpt["state_dict"]
    if any(k.startswith("model.") for k in state):
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    meta = dict(ckpt.get("rloss") or {})
    return dict(state), meta


def load_weights(model: nn.Module, checkpoint: str | Path) -> None:
    """Load a checkpoint's network weights into ``model`` (``init_from``), strictly.

    Raises:
        ValueError: architecture or class count differ (names the mismatching keys).
    """
    state, _ = read_checkpoint(checkpoint)
    mismatch = state_dict_mismatch(model.state_dict(), state)
    if mismatch:
        raise ValueError(
            f"init_from: checkpoint {str(checkpoint)!r} does not fit this model: "
            f"{mismatch} (same model.arch/encoder/num_classes needed)"
        )
    model.load_state_dict(state)


def load_model(
    checkpoint: str | Path, *, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained network from a checkpoint (``weights_only=True``, no download).

    Args:
        checkpoint: ``RUN/checkpoints/*.ckpt`` or ``RUN/model.pt``.
        map_location: device for the returned model.

    Returns:
        ``(model, config)``: the network in eval mode mapping ``(N, 3, H, W)``
        ImageNet-normalised float32 images to logits ``(N, K, H, W)``, and the resolved
        recipe it was trained with; ``config["model"]["num_classes"]`` is K and
        ``config["classes"]`` the K class names.
    """
    state, meta = read_checkpoint(checkpoint)
    if "config" not in meta:
        raise ValueError(
            f"checkpoint {str(checkpoint)!r} carries no rloss config; it was not written by "
            "rloss train (use rloss.train.checkpoint.load_weights on a model you build yourself)"
        )
    config = json.loads(json.dumps(meta["config"]))  # deep copy of plain data
    k = int(meta["num_classes"])
    spec = dict(config["model"], encoder_weights=None, num_classes=k)
    model = build_model(spec, k)
    mismatch = state_dict_mismatch(model.state_dict(), state)
    if mismatch:
        raise ValueError(
            f"checkpoint {str(checkpoint)!r}: its weights do not fit the network its recipe "
            f"describes ({mismatch})"
        )
    model.load_state_dict(state)
    config["model"]["num_classes"] = k
    config["classes"] = list(meta.get("class_names") or [f"class_{i}" for i in range(k)])
    return model.to(map_location).eval(), config


def save_model_file(model: nn.Module, meta: Mapping[str, Any], path: str | Path) -> Path:
    """Write the weights-only export ``{"state_dict", "rloss": meta}`` atomically."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return torch_save_atomic({"state_dict": state, "rloss": to_plain(meta)}, path)
