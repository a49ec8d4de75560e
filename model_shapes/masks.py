"""Which keys each query may attend to, and default positions, for left-padded and packed batches.

A batch row holds either one sample (left padding marked by ``attention_mask == 0``) or several documents
packed one after another. Packed documents are given as ``cu_seqlens``: the cumulative lengths over the
flattened [batch · seq] token stream (the flash-attention "varlen" convention), starting at 0, ending at
batch · seq, with every row start among the boundaries so that no document spans two rows. Attention is causal
inside a document and never crosses a document boundary, so a packed row computes what its documents would
compute one by one.
"""

from __future__ import annotations

import torch


def document_ids(cu_seqlens: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
    """The document index [batch, seq] of each token, from ``cu_seqlens`` (ValueError if malformed)."""
    total = batch * seq
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(
            f"cu_seqlens must be 1-D with at least 2 entries, got shape {tuple(cu_seqlens.shape)}"
        )
    bounds = cu_seqlens.to(torch.long)
    if bounds[0].item() != 0 or bounds[-1].item() != total:
        raise ValueError(
            f"cu_seqlens must start at 0 and end at batch*seq={total}, "
            f"got {bounds[0].item()}..{bounds[-1].item()}"
        )
    if bool((bounds[1:] < bounds[:-1]).any()):
        raise ValueError("cu_seqlens must be non-decreasing")
    row_starts = torch.arange(0, total + 1, seq, device=bounds.device)
    if not bool(torch.isin(row_starts, bounds).all()):
        raise ValueError(
            f"cu_seqlens must hold every row start (multiples of seq={seq}): a document spans rows"
        )
    tokens = torch.arange(total, device=bounds.device)
    return (torch.searchsorted(bounds, tokens, right=True) - 1).view(batch, seq)


def default_position_ids(
    batch: int, seq: int, device: torch.device, cu_seqlens: torch.Tensor | None
) -> torch.Tensor:
    """Positions [batch, seq] when none are given: 0..seq-1 on every row, as the official model does (left
    padding included: RoPE depends only on position differences, so the shift does not change real tokens),
    or, for packed rows, the offset of each token inside its document."""
    if cu_seqlens is None:
        return torch.arange(seq, device=device).expand(batch, seq)
    bounds = cu_seqlens.to(device=device, dtype=torch.long)
    docs = document_ids(bounds, batch, seq)
    return torch.arange(batch * seq, device=device).view(batch, seq) - bounds[docs]


def attention_mask_4d(
    attention_mask: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    batch: int,
    seq: int,
    device: torch.device,
) -> torch.Tensor | None:
    """Boolean [batch, 1, seq, seq] mask (True = may attend), or None when plain causal attention is exact.

    A query sees earlier-or-equal keys that are real (``attention_mask == 1``) and in its own document. Every
    query also sees itself, so that a padding query, whose row would otherwise be empty, stays finite; padding
    rows are meaningless, as in the official code.
    """
    padded = attention_mask is not None and not bool(attention_mask.all())
    if not padded and cu_seqlens is None:
        return None
    positions = torch.arange(seq, device=device)
    allowed = (positions[None, :] <= positions[:, None]).expand(batch, seq, seq)
    if padded:
        allowed = allowed & attention_mask.to(device=device, dtype=torch.bool)[:, None, :]
    if cu_seqlens is not None:
        docs = document_ids(cu_seqlens.to(device), batch, seq)
        allowed = allowed & (docs[:, :, None] == docs[:, None, :])
    allowed = allowed | torch.eye(seq, dtype=torch.bool, device=device)
    return allowed[:, None]


def documents_from_mask(
    mask: torch.Tensor | None, batch: int, seq: int, device: torch.device
) -> torch.Tensor | None:
    """``cu_seqlens`` over the flattened [batch · seq] stream whose documents allow exactly the keys that
    ``mask`` (from :func:`attention_mask_4d`; None = plain causal, one document a row) allows, or None when no
    documents do (a hole inside a query's keys, as right padding makes).

    Packed rows give back their documents. A left-padded row gives one document per padding token (a padding
    query sees only itself) and one for its real tokens, so kernels that take documents compute what the mask
    says for every token, padding included.
    """
    total = batch * seq
    if mask is None:
        return torch.arange(0, total + 1, seq, device=device, dtype=torch.int32)
    if mask.dtype != torch.bool or mask.shape != (batch, 1, seq, seq):
        return None
    allowed = mask[:, 0]
    positions = torch.arange(seq, device=device)
    # A document starts at each query whose first allowed key is itself (and at every row start).
    starts_here = allowed.to(torch.uint8).argmax(dim=-1) == positions
    starts_here[:, 0] = True
    doc_start = torch.where(starts_here, positions, 0).cummax(dim=-1).values
    expected = (positions[None, None, :] >= doc_start[:, :, None]) & (
        positions[None, None, :] <= positions[:, None]
    )
    if not torch.equal(allowed, expected):
        return None
    bounds = torch.cat((starts_here.flatten().nonzero()[:, 0], torch.tensor([total], device=device)))
    return bounds.to(torch.int32)
