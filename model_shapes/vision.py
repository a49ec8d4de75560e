"""The SigLIP vision encoder as DeepSeek-VL2 builds it from timm's VisionTransformer (timm parameter names).

Patch embedding (a stride-``patch`` conv, so 384 px at patch 14 gives 27×27 patches and the last 6 px of each
side are never seen), learned absolute positions (no class or register token), pre-LN blocks (LayerNorm eps
1e-6, attention with qkv bias and scale head_dim^-0.5, tanh-GELU MLP), then the final LayerNorm. The output is
the last block's tokens after that norm: [tiles, grid², width].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model_shapes.shape import VisionShape

LAYER_NORM_EPS = 1e-6


class PatchEmbed(nn.Module):
    """Non-overlapping patches → width channels (``proj``: Conv2d with bias), flattened row-major."""

    def __init__(self, shape: VisionShape) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, shape.width, kernel_size=shape.patch_size, stride=shape.patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Bidirectional multi-head self-attention with a fused ``qkv`` projection (with bias) and ``proj``."""

    def __init__(self, shape: VisionShape) -> None:
        super().__init__()
        self.heads = shape.heads
        self.qkv = nn.Linear(shape.width, 3 * shape.width)
        self.proj = nn.Linear(shape.width, shape.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tiles, tokens, width = x.shape
        q, k, v = self.qkv(x).view(tiles, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # default scale head_dim^-0.5
        return self.proj(out.transpose(1, 2).reshape(tiles, tokens, width))


class Mlp(nn.Module):
    """fc1 → GELU (tanh approximation, as SigLIP) → fc2."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)); no layer scale."""

    def __init__(self, shape: VisionShape) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(shape.width, eps=LAYER_NORM_EPS)
        self.attn = Attention(shape)
        self.norm2 = nn.LayerNorm(shape.width, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(shape.width, shape.mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class AttentionPoolHead(nn.Module):
    """The MAP attention-pool head (``attn_pool``) the official encoder builds for ``global_pool='map'``.

    DeepSeek-VL2 sets ``ignore_head`` and never runs it, but its weights ship in every checkpoint, so it is
    kept here as parameters only (timm's ``AttentionPoolLatent`` names), for strict loading; it has no
    forward.
    """

    def __init__(self, shape: VisionShape) -> None:
        super().__init__()
        width = shape.width
        self.latent = nn.Parameter(torch.empty(1, 1, width))
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(width, shape.mlp_hidden)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.latent, std=self.latent.shape[-1] ** -0.5)


class VisionTransformer(nn.Module):
    """tiles [n, 3, image, image] → features [n, grid², width] (after the final ``norm``)."""

    def __init__(self, shape: VisionShape) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(shape)
        self.pos_embed = nn.Parameter(torch.empty(1, shape.grid**2, shape.width))
        self.blocks = nn.Sequential(*(Block(shape) for _ in range(shape.layers)))
        self.norm = nn.LayerNorm(shape.width, eps=LAYER_NORM_EPS)
        self.attn_pool = AttentionPoolHead(shape)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.pos_embed, std=0.02)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels) + self.pos_embed
        return self.norm(self.blocks(x))
