"""The whole DeepSeek-VL2 model: vision encoder, adaptor, visual-token assembly and language model, with the
official parameter names at the top level (``vision.*``, ``projector.*``, ``image_newline``,
``view_seperator``, ``language.*``), so that an official checkpoint's state dict loads with ``strict=True``.

``forward`` takes the batch the official processor (and our training reader) produces: left-padded
``input_ids``/``attention_mask``, ``images`` [batch, max_tiles, 3, 384, 384] (each sample's tiles, global view
first, zero slots after its last real tile), ``images_seq_mask`` (True at every visual position) and
``images_spatial_crop`` [batch, max_images, 2] ((width_tiles, height_tiles) per image, a zero row ending the
list). Packed rows add ``cu_seqlens`` (and optionally ``position_ids``); see :mod:`model_shapes.masks`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model_shapes.adaptor import Projector, visual_token_index
from model_shapes.language import CausalLM
from model_shapes.masks import document_ids
from model_shapes.shape import ModelShape
from model_shapes.vision import VisionTransformer

IGNORE_INDEX = -100


@dataclass
class ModelOutput:
    """``logits`` float32 [batch, seq, vocab]; ``loss`` the mean shifted cross-entropy, given labels."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None


class DeepseekVL2(nn.Module):
    """DeepSeek-VL2 for any :class:`ModelShape`; build it with :func:`build_model`."""

    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        if shape.language.tie_word_embeddings:
            raise ValueError(
                "language.tie_word_embeddings=true is not supported: DeepSeek-VL2 unties lm_head"
            )
        self.shape = shape
        hidden = shape.language.hidden_size
        self.vision = VisionTransformer(shape.vision)
        self.projector = Projector(shape.projector)
        self.image_newline = nn.Parameter(torch.empty(hidden))
        self.view_seperator = nn.Parameter(torch.empty(hidden))  # the official spelling
        self.language = CausalLM(shape.language)
        self.tokens_per_side = math.ceil(shape.vision.grid / shape.downsample_ratio)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Random weights for tests and smoke runs (real use loads a checkpoint): normal(0, 0.02) for
        projections, convolutions and embeddings, zero biases, unit norms, randn/√hidden for the newline and
        separator as the official constructor."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Conv2d | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif hasattr(module, "reset_parameters"):  # norms, router, ViT positions, pool latent
                module.reset_parameters()
        std = self.image_newline.numel() ** -0.5
        nn.init.normal_(self.image_newline, std=std)
        nn.init.normal_(self.view_seperator, std=std)

    def encode_tiles(self, pixels: torch.Tensor) -> torch.Tensor:
        """Adaptor tokens [tiles, t², hidden] of tiles [tiles, 3, image, image]."""
        return self.projector(self.vision(pixels.to(self.vision.pos_embed.dtype)))

    def prepare_inputs_embeds(
        self,
        input_ids: torch.Tensor,
        images: torch.Tensor | None,
        images_seq_mask: torch.Tensor | None,
        images_spatial_crop: torch.Tensor | None,
    ) -> torch.Tensor:
        """Token embeddings [batch, seq, hidden] with every sample's visual features written, in order, where
        ``images_seq_mask`` is True. Only the first 1 + w·h tile slots of each image are encoded; samples
        without images (spatial crop rows all zero) skip the vision encoder. The number of visual positions of
        each sample must equal its images' token count (ValueError otherwise), and every id must lie in the
        vocabulary (ValueError naming one that does not)."""
        _check_ids(input_ids, self.language.model.embed_tokens.num_embeddings, "input_ids")
        embeds = self.language.model.embed_tokens(input_ids)
        grids = _image_grids(images_spatial_crop if images is not None else None, len(input_ids))
        needed = [sum(len(visual_token_index(w, h, self.tokens_per_side)) for w, h in g) for g in grids]
        found = [0] * len(grids) if images_seq_mask is None else images_seq_mask.sum(dim=1).tolist()
        if found != needed:
            raise ValueError(
                f"images_seq_mask marks {found} visual positions per sample, but the images of "
                f"images_spatial_crop need {needed}"
            )
        tiles_per_sample = [sum(1 + w * h for w, h in g) for g in grids]
        if not any(tiles_per_sample):
            return embeds
        if max(tiles_per_sample) > images.shape[1]:
            raise ValueError(
                f"images has {images.shape[1]} tile slots per sample, but images_spatial_crop needs "
                f"{tiles_per_sample}"
            )
        tiles = [images[s, :n] for s, n in enumerate(tiles_per_sample) if n]
        tokens = self.encode_tiles(torch.cat(tiles))
        features = self._visual_features(tokens, [grid for g in grids for grid in g])
        mask = images_seq_mask.to(device=embeds.device, dtype=torch.bool)[..., None]
        return embeds.masked_scatter(mask, features.to(embeds.dtype))

    def _visual_features(self, tokens: torch.Tensor, grids: list[tuple[int, int]]) -> torch.Tensor:
        """The visual positions of all images, in order [positions, hidden], from their adaptor tokens
        [tiles, t², hidden] (each image's 1 + w·h tiles in turn) and the newline and separator parameters."""
        per_tile = tokens.shape[1]
        table = torch.cat((tokens.flatten(0, 1), self.image_newline[None], self.view_seperator[None]))
        newline_row = tokens.shape[0] * per_tile  # the separator follows it
        indices, first_row = [], 0
        for width_tiles, height_tiles in grids:
            index = visual_token_index(width_tiles, height_tiles, self.tokens_per_side)
            own_rows = (1 + width_tiles * height_tiles) * per_tile
            indices.append(torch.where(index < own_rows, index + first_row, index - own_rows + newline_row))
            first_row += own_rows
        return table[torch.cat(indices).to(table.device)]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        images_seq_mask: torch.Tensor | None = None,
        images_spatial_crop: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Logits for every position and, with ``labels``, the official loss: cross-entropy of position i's
        logits against labels[i + 1], averaged over targets that are not -100. In packed rows (``cu_seqlens``)
        the first token of a document is never a target of the previous document's last token."""
        embeds = self.prepare_inputs_embeds(input_ids, images, images_seq_mask, images_spatial_crop)
        logits = self.language(embeds, attention_mask, position_ids, cu_seqlens)
        if labels is None:
            return ModelOutput(logits=logits)
        _check_ids(labels, logits.shape[-1], "labels", ignore=IGNORE_INDEX)
        targets = labels[:, 1:].to(logits.device)
        if cu_seqlens is not None:
            docs = document_ids(cu_seqlens.to(logits.device), *labels.shape)
            targets = targets.masked_fill(docs[:, 1:] != docs[:, :-1], IGNORE_INDEX)
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
        )
        return ModelOutput(logits=logits, loss=loss)


def _check_ids(ids: torch.Tensor, vocab_size: int, name: str, ignore: int | None = None) -> None:
    """ValueError naming the largest id of `ids` at or past vocab_size (the smallest negative one when none
    is), the vocabulary size and how many ids lie outside [0, vocab_size) (`ignore` aside), instead of the
    bare IndexError (or, on a GPU, the device-side assert) an embedding or the loss would raise."""
    outside = (ids < 0) | (ids >= vocab_size)
    if ignore is not None:
        outside &= ids != ignore
    if not ids.numel() or not bool(outside.any()):
        return
    bad = ids[outside]
    # The largest id says how far the data's tokenizer overshoots this vocabulary; negative ids are
    # named only when nothing overshoots.
    worst = int(bad.max()) if int(bad.max()) >= vocab_size else int(bad.min())
    which = "largest" if worst >= vocab_size else "smallest"
    raise ValueError(
        f"{name} hold id {worst} outside the vocabulary [0, {vocab_size}) "
        f"(the {which} of {bad.numel()} such id{'s' * (bad.numel() != 1)}; vocabulary size {vocab_size})"
    )


def _image_grids(images_spatial_crop: torch.Tensor | None, batch: int) -> list[list[tuple[int, int]]]:
    """Each sample's (width_tiles, height_tiles) per image: its spatial-crop rows up to the first zero row."""
    grids: list[list[tuple[int, int]]] = [[] for _ in range(batch)]
    if images_spatial_crop is not None:
        for sample, rows in enumerate(images_spatial_crop.tolist()):
            for width_tiles, height_tiles in rows:
                if width_tiles == 0 or height_tiles == 0:
                    break
                grids[sample].append((width_tiles, height_tiles))
    return grids


def build_model(
    shape: ModelShape, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> DeepseekVL2:
    """DeepSeek-VL2 for ``shape`` on ``device`` (default: torch's default) in ``dtype`` (default float32).

    Parameters are allocated once, directly on the device and in the dtype, and filled by
    :meth:`DeepseekVL2.init_weights`; on ``device="meta"`` nothing is allocated (for key and shape checks, or
    for :func:`model_shapes.load_official_weights` to fill with a checkpoint's tensors).
    """
    with torch.device("meta"):
        model = DeepseekVL2(shape)
    if dtype is not None:
        model = model.to(dtype)
    target = torch.device(device) if device is not None else torch.get_default_device()
    if target.type == "meta":
        return model
    model.to_empty(device=target)
    model.init_weights()
    return model
