"""The feed-forward blocks of the language model: the SwiGLU MLP (dense layers, each routed expert, the shared
experts) and the DeepSeek MoE layer with its router (spec §5 "MoE gate")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model_shapes.kernels.moe import StackedExperts, moe_experts
from model_shapes.shape import LanguageShape


class SwiGLU(nn.Module):
    """down(silu(gate(x)) · up(x)), bias-free (``gate_proj``, ``up_proj``, ``down_proj``)."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    """Picks ``num_experts_per_tok`` experts per token and their weights, in float32.

    Scores: softmax or sigmoid of x·Wᵀ. Choice: ``greedy`` takes the top-k scores; ``group_limited_greedy``
    first keeps the ``topk_group`` groups with the highest max score; ``noaux_tc`` ranks score +
    e_score_correction_bias (groups by the sum of their top-2), but the weights are the plain scores of the
    chosen experts: the bias only selects. Dropped groups are masked with 0, as in the official code. Weights
    are renormalised to sum 1 when ``norm_topk_prob`` is set and k > 1, then multiplied by
    ``routed_scaling_factor`` in every case.

    The bias is a buffer: the released code has no rule that trains it, and no gradient reaches it.
    """

    def __init__(self, shape: LanguageShape) -> None:
        super().__init__()
        self.top_k = shape.num_experts_per_tok
        self.scoring_func = shape.scoring_func
        self.topk_method = shape.topk_method
        self.n_group = shape.n_group
        self.topk_group = shape.topk_group
        self.norm_topk_prob = shape.norm_topk_prob
        self.routed_scaling_factor = shape.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(shape.n_routed_experts, shape.hidden_size))
        if self.topk_method == "noaux_tc":
            self.register_buffer("e_score_correction_bias", torch.empty(shape.n_routed_experts))

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=0.02)
        if self.topk_method == "noaux_tc":
            nn.init.zeros_(self.e_score_correction_bias)

    def _keep_top_groups(self, choice: torch.Tensor, group_score: torch.Tensor) -> torch.Tensor:
        """``choice`` [tokens, experts] with every expert outside the best ``topk_group`` groups set to 0."""
        if self.n_group == 1:
            return choice
        kept = group_score.topk(self.topk_group, dim=-1).indices
        group_mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, kept, True)
        expert_mask = group_mask.repeat_interleave(choice.shape[-1] // self.n_group, dim=-1)
        return choice.masked_fill(~expert_mask, 0.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert indices (int64) and weights (float32), both [tokens, top_k], for ``x`` [tokens, hidden]."""
        logits = F.linear(x.float(), self.weight.float())
        scores = logits.softmax(dim=-1) if self.scoring_func == "softmax" else logits.sigmoid()
        tokens = scores.shape[0]
        if self.topk_method == "noaux_tc":
            choice = scores + self.e_score_correction_bias.float()
            group_score = choice.view(tokens, self.n_group, -1).topk(2, dim=-1).values.sum(dim=-1)
            index = self._keep_top_groups(choice, group_score).topk(self.top_k, dim=-1).indices
            weight = scores.gather(1, index)
        else:
            if self.topk_method == "group_limited_greedy":
                group_score = scores.view(tokens, self.n_group, -1).amax(dim=-1)
                choice = self._keep_top_groups(scores, group_score)
            else:
                choice = scores
            weight, index = choice.topk(self.top_k, dim=-1)
        if self.norm_topk_prob and self.top_k > 1:
            weight = weight / (weight.sum(dim=-1, keepdim=True) + 1e-20)
        return index, weight * self.routed_scaling_factor


class MoE(nn.Module):
    """Routed experts (``experts.{e}``) weighted by the :class:`Router` (``gate``), plus the shared experts
    (``shared_experts``, one SwiGLU of n_shared · moe_intermediate; absent when n_shared_experts is 0).

    The routed experts run through :func:`model_shapes.kernels.moe.moe_experts`; its fused kernels read the
    experts' weights stacked, a copy the layer caches (:class:`~model_shapes.kernels.moe.StackedExperts`)."""

    def __init__(self, shape: LanguageShape) -> None:
        super().__init__()
        hidden, width = shape.hidden_size, shape.moe_intermediate_size
        self.experts = nn.ModuleList(SwiGLU(hidden, width) for _ in range(shape.n_routed_experts))
        self.gate = Router(shape)
        self._stacked_experts = StackedExperts()
        if shape.n_shared_experts:
            self.shared_experts = SwiGLU(hidden, width * shape.n_shared_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        index, weight = self.gate(flat)
        routed = moe_experts(
            flat,
            index,
            weight,
            [expert.gate_proj.weight for expert in self.experts],
            [expert.up_proj.weight for expert in self.experts],
            [expert.down_proj.weight for expert in self.experts],
            self._stacked_experts,
        )
        y = routed.view(x.shape)
        if hasattr(self, "shared_experts"):
            y = y + self.shared_experts(x)
        return y
