"""Official DeepSeek-VL2 weights into :class:`~model_shapes.vlm.DeepseekVL2`: from a state dict, a
``.safetensors`` file, or a checkpoint folder (``config.json`` + ``*.safetensors``, as released).

Names must match exactly, both ways: a missing or unexpected key, or a tensor of the wrong shape, is a
:class:`WeightsError` that lists them. safetensors is imported only when files are read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from model_shapes.shape import from_official_config
from model_shapes.vlm import DeepseekVL2, build_model

_LISTED = 20


class WeightsError(ValueError):
    """A checkpoint does not fit the model: the message lists the missing, unexpected or mis-shaped keys."""


def _listing(title: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_LISTED])
    more = f" (+{len(keys) - _LISTED} more)" if len(keys) > _LISTED else ""
    return f"{len(keys)} {title}: {shown}{more}"


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All tensors (on the CPU) of one ``.safetensors`` file or of every ``*.safetensors`` in a folder."""
    from safetensors.torch import load_file

    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise WeightsError(f"no safetensors file at {path}")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        part = load_file(file)
        repeated = sorted(tensors.keys() & part.keys())
        if repeated:
            raise WeightsError(
                f"{file.name} repeats keys of an earlier file: {', '.join(repeated[:_LISTED])}"
            )
        tensors.update(part)
    return tensors


def load_official_weights(
    model: DeepseekVL2, source: Mapping[str, torch.Tensor] | str | os.PathLike[str]
) -> DeepseekVL2:
    """Fill ``model`` with the tensors of ``source`` (a state dict, a safetensors file or a folder of them),
    converted to the model's dtypes; returns the model.

    Every key must match the model's ``state_dict()`` names and shapes (WeightsError listing any that do not).
    A model built on the ``meta`` device (see :func:`build_model`) is not allocated twice: it takes the
    checkpoint's tensors themselves, on the CPU and in its dtypes, as its parameters.
    """
    state = dict(source) if isinstance(source, Mapping) else read_safetensors(source)
    own = model.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    misshaped = sorted(
        f"{key} {tuple(state[key].shape)} != {tuple(own[key].shape)}"
        for key in own.keys() & state.keys()
        if state[key].shape != own[key].shape
    )
    problems = [
        _listing(title, keys)
        for title, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("tensors of the wrong shape (checkpoint != model)", misshaped),
        )
        if keys
    ]
    if problems:
        raise WeightsError("checkpoint does not match the model: " + "; ".join(problems))
    on_meta = any(tensor.is_meta for tensor in own.values())
    if on_meta:
        state = {key: state[key].to(device="cpu", dtype=own[key].dtype) for key in own}
    model.load_state_dict(state, strict=True, assign=on_meta)
    return model


def from_pretrained(
    folder: str | os.PathLike[str], device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> DeepseekVL2:
    """The model of an official checkpoint folder: shape from its ``config.json``, weights from its
    ``*.safetensors`` files, on ``device`` in ``dtype`` (defaults: the CPU, float32)."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    model = build_model(from_official_config(config, name=folder.name), device="meta", dtype=dtype)
    load_official_weights(model, folder)
    return model.to(device) if device is not None else model
