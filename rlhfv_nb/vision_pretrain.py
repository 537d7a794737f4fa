"""Pretrain the tiny model's vision tower before SFT, as real VLMs start from a pretrained vision encoder.

LLaVA starts from CLIP, Muffin from BEiT-3; a tower trained from scratch through the language loss alone
never learns to tell the world's shapes apart (measured: kind accuracy at chance after SFT). Here the tower
learns to tag each image patch with the class of its grid cell (the world's (kind, colour) pair, or "empty"),
then the head is thrown away and SFT starts from the tower's weights, as from any pretrained encoder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, ProcessorMixin

from rlhfv_nb.data import decode_image
from rlhfv_nb.families import resolve_family

log = logging.getLogger(__name__)


def patch_labels(cells: Sequence[Sequence[int]], patches_per_side: int) -> torch.Tensor:
    """Per-patch class ids (row-major) from a `grid x grid` table of class ids: each patch takes its cell's."""
    grid = len(cells)
    return torch.tensor([
        cells[row * grid // patches_per_side][col * grid // patches_per_side]
        for row in range(patches_per_side) for col in range(patches_per_side)
    ])


def pretrain_vision_tower(
    model: PreTrainedModel, processor: ProcessorMixin, images: Sequence[bytes],
    cells: Sequence[Sequence[Sequence[int]]], num_classes: int, steps: int, lr: float = 2e-3, batch_size: int = 32,
    seed: int = 0,
) -> list[float]:
    """Train `model`'s vision tower in place to tag patches with their cell's class; returns the loss per step.

    `cells[i]` is image i's `grid x grid` table of class ids. The patch features are those the language
    model reads (`vision_feature_layer`, CLS dropped), so the tower is trained where it will be used. The
    model is the tiny LLaVA (a CLIP tower), found where its family keeps its vision encoder.
    """
    tower = model.get_submodule(resolve_family(model).vision[0])
    layer = model.config.vision_feature_layer
    side = model.config.vision_config.image_size // model.config.vision_config.patch_size
    pixels = processor.image_processor([decode_image(i) for i in images], return_tensors="pt")["pixel_values"]
    labels = torch.stack([patch_labels(c, side) for c in cells])
    head = torch.nn.Linear(model.config.vision_config.hidden_size, num_classes)
    params = list(tower.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    tower.train()
    losses = []
    for _ in range(steps):
        batch = torch.randint(0, len(pixels), (batch_size,), generator=generator)
        hidden = tower(pixel_values=pixels[batch], output_hidden_states=True).hidden_states[layer][:, 1:]
        loss = torch.nn.functional.cross_entropy(head(hidden).flatten(0, 1), labels[batch].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    log.info("vision tower pretrained for %d steps, final loss %.3f", steps, losses[-1] if losses else float("nan"))
    return losses
