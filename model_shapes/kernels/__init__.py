"""Triton kernels for the language model, each beside the plain torch reference it must equal.

The model calls the dispatching functions of the kernel modules (``rmsnorm``, ``moe``, ``mla``); each one runs
its Triton kernel or its torch reference according to the backend chosen here:

- ``"auto"`` (the default): Triton when every tensor is on a CUDA device and Triton imports, the reference
  otherwise (CPU, or a machine without Triton);
- ``"triton"``: always the kernel (on CPU this works only in Triton's interpreter, ``TRITON_INTERPRET=1``);
- ``"torch"``: always the reference.

The environment variable ``VL2PREP_KERNELS`` sets the starting backend; :func:`use_kernels` overrides it for
a block of code and :func:`set_kernel_backend` for the process. Triton is imported only when a kernel runs.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Iterator

import torch

BACKENDS = ("auto", "triton", "torch")
ENV_VAR = "VL2PREP_KERNELS"


def _checked(name: str, where: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{where}: unknown kernel backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


_backend = _checked(os.environ.get(ENV_VAR, "auto"), ENV_VAR)


def kernel_backend() -> str:
    """The backend in force: ``"auto"``, ``"triton"`` or ``"torch"``."""
    return _backend


def set_kernel_backend(name: str) -> None:
    """Choose the backend for the rest of the process (ValueError for an unknown name)."""
    global _backend
    _backend = _checked(name, "set_kernel_backend")


@contextlib.contextmanager
def use_kernels(name: str) -> Iterator[None]:
    """Run the block with backend ``name``, then restore the previous one."""
    global _backend
    previous, _backend = _backend, _checked(name, "use_kernels")
    try:
        yield
    finally:
        _backend = previous


@functools.cache
def triton_available() -> bool:
    """Whether the ``triton`` package is installed (checked once, without importing it)."""
    return importlib.util.find_spec("triton") is not None


def use_triton(*tensors: torch.Tensor) -> bool:
    """Whether a kernel called on ``tensors`` should run its Triton version under the current backend."""
    if _backend == "torch":
        return False
    if _backend == "triton":
        return True
    return triton_available() and all(t.is_cuda for t in tensors)


def needs_autograd(*tensors: torch.Tensor) -> bool:
    """Whether autograd records an operation on ``tensors``: the kernels are forward-only, so their
    dispatchers run the reference then, whatever the backend."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "kernel_backend",
    "needs_autograd",
    "set_kernel_backend",
    "triton_available",
    "use_kernels",
    "use_triton",
]
