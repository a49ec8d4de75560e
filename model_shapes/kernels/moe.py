"""The routed experts of an MoE layer (SwiGLU experts weighted by the router): the dispatcher of the fused
Triton kernels, the plain torch reference they must equal (one pass per expert), and the cache of stacked
expert weights the kernels read."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from model_shapes.kernels import needs_autograd, use_triton

# The weights of the E experts: one stacked tensor ([E, I, H] for gate and up, [E, H, I] for down) or a
# sequence of E per-expert tensors; ``weights[e]`` is expert e's in both.
ExpertWeights = torch.Tensor | Sequence[torch.Tensor]


def moe_experts_reference(
    x: torch.Tensor,
    index: torch.Tensor,
    weight: torch.Tensor,
    w_gate: ExpertWeights,
    w_up: ExpertWeights,
    w_down: ExpertWeights,
) -> torch.Tensor:
    """Σ_k weight[t, k] · expert_{index[t, k]}(x[t]) for ``x`` [tokens, hidden], in x's dtype.

    The (token, slot) picks are grouped by expert and each expert runs once on its tokens; the weighted
    outputs are added in float32, expert by expert in id order (the official inference path also combines in
    the router's float32).
    """
    picks = index.flatten()
    order = picks.argsort()
    counts = torch.bincount(picks, minlength=len(w_gate)).tolist()
    routed = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    start = 0
    for expert, count in enumerate(counts):
        if count:
            slots = order[start : start + count]
            tokens = slots // index.shape[1]
            chosen = x[tokens]
            hidden = F.silu(F.linear(chosen, w_gate[expert])) * F.linear(chosen, w_up[expert])
            out = F.linear(hidden, w_down[expert]).float() * weight.flatten()[slots, None]
            routed.index_add_(0, tokens, out)
            start += count
    return routed.to(x.dtype)


def moe_experts(
    x: torch.Tensor,
    index: torch.Tensor,
    weight: torch.Tensor,
    w_gate: ExpertWeights,
    w_up: ExpertWeights,
    w_down: ExpertWeights,
    stack: StackedExperts | None = None,
) -> torch.Tensor:
    """The routed experts' weighted sum for ``x`` [tokens, hidden], routed by ``index`` [tokens, top_k]
    (expert ids) and ``weight`` [tokens, top_k] (float32), in x's dtype.

    Runs the fused Triton kernels when :func:`~model_shapes.kernels.use_triton` says so and no gradient is
    needed (they are forward-only), the reference otherwise. The kernels read stacked weights: per-expert
    sequences are stacked through ``stack`` (a cache kept by the caller) when given, on every call otherwise.
    """
    groups = (w_gate, w_up, w_down)
    parts = [w for group in groups for w in ([group] if isinstance(group, torch.Tensor) else group)]
    if use_triton(x, index, weight) and not needs_autograd(x, weight, *parts):
        from model_shapes.kernels._moe_triton import moe_experts_triton

        if all(isinstance(group, torch.Tensor) for group in groups):
            stacked = groups
        elif stack is not None:
            stacked = stack.get(w_gate, w_up, w_down)
        else:
            stacked = tuple(torch.stack(list(group)) for group in groups)
        return moe_experts_triton(x, index, weight, *stacked)
    return moe_experts_reference(x, index, weight, w_gate, w_up, w_down)


class StackedExperts:
    """The experts' weights stacked into [E, I, H] / [E, I, H] / [E, H, I] tensors for the kernels, built on
    first use and rebuilt when any expert parameter is replaced (``to()``, ``load_state_dict(assign=True)``)
    or changed in place (``load_state_dict``, an optimizer step): each parameter's identity, storage and
    version counter are compared on every call (inference tensors have no version counter: for them a change
    in place inside inference mode goes unseen).

    The stack is a copy: it costs the memory of the routed experts' weights once more, in exchange for the
    per-expert ``experts.{e}.*_proj.weight`` parameters (and state-dict keys) staying those of the release.
    Not part of the state dict.
    """

    def __init__(self) -> None:
        self._key: tuple[tuple[int, int, int], ...] = ()
        self._stacked: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def get(
        self, w_gate: Sequence[torch.Tensor], w_up: Sequence[torch.Tensor], w_down: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stacked (gate, up, down), from the cache when no parameter changed since it was built."""
        key = tuple((id(w), w.data_ptr(), _version(w)) for w in (*w_gate, *w_up, *w_down))
        if self._stacked is None or key != self._key:
            self._stacked = None  # free the stale copy before the new one is built
            with torch.no_grad():
                self._stacked = (
                    torch.stack(list(w_gate)),
                    torch.stack(list(w_up)),
                    torch.stack(list(w_down)),
                )
            self._key = key
        return self._stacked


def _version(tensor: torch.Tensor) -> int:
    """The tensor's version counter; inference tensors have none (and cannot be changed in place outside
    inference mode), so only their identity and storage tell a change."""
    return -1 if tensor.is_inference() else tensor._version


__all__ = ["ExpertWeights", "StackedExperts", "moe_experts", "moe_experts_reference"]
