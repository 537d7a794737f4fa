"""The miniature's labeler: a small classifier trained on its own world images, not the truth.

RLAIF-V's labeler is an MLLM that answers "Is there a red ball in the top left?" about the image, right most of
the time. In miniature, `CellClassifier` (a two-layer CNN, seconds on a CPU) predicts each grid cell's class
(`rlhfv_nb.world.cell_classes`: every (kind, colour) pair, or empty) from the cell's pixels, and
`WorldLabeler` answers the world claims' yes/no questions from those predictions: P(some cell at the asked place
holds such an object), the cells taken as independent. It never sees a scene: its mistakes are its own, and its
accuracy against the truth (`WorldClaim.holds`) is measured, not assumed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhfv_nb import world
from rlhfv_nb.data import decode_image, encode_image, image_bytes
from rlhfv_nb.files import read_json, write_json
from rlhfv_nb.rlaifv.claims import WorldClaim, WorldClaims
from rlhfv_nb.world import Scene, WorldConfig


@dataclass(frozen=True)
class LabelerTraining:
    """How the world labeler is trained: on `images` fresh scenes of its own (seeded `seed`), `steps` Adam steps."""

    images: int = 200
    steps: int = 150
    lr: float = 3e-3
    batch_size: int = 64
    seed: int = 0


def cell_pixels(images: Sequence[Any], cfg: WorldConfig) -> torch.Tensor:
    """Every image's cells as (images * grid * grid, 3, side, side) floats in [0, 1], cells in reading order."""
    side = cfg.image_size // cfg.grid
    crops = []
    for image in images:
        pixels = np.asarray(decode_image(image).resize((cfg.image_size, cfg.image_size)), dtype=np.float32) / 255
        crops += [pixels[r * side:(r + 1) * side, c * side:(c + 1) * side]
                  for r in range(cfg.grid) for c in range(cfg.grid)]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


class CellClassifier(torch.nn.Module):
    """A grid cell's pixels -> logits over the world's cell classes."""

    def __init__(self, num_classes: int, side: int) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
        )
        self.head = torch.nn.Linear(32 * (side // 4) ** 2, num_classes)

    def forward(self, cells: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(cells))


def _labelled_cells(scenes: Sequence[Scene], cfg: WorldConfig) -> tuple[torch.Tensor, torch.Tensor]:
    images = [world.render(scene, cfg) for scene in scenes]
    labels = [label for scene in scenes for row in world.cell_classes(scene, cfg) for label in row]
    return cell_pixels(images, cfg), torch.tensor(labels)


def train_classifier(cfg: WorldConfig, training: LabelerTraining) -> tuple[CellClassifier, list[float]]:
    """A `CellClassifier` trained on `training.images` fresh scenes of its own; returns it and its loss per step."""
    torch.manual_seed(training.seed)
    cells, labels = _labelled_cells(world.make_fresh_scenes(cfg, training.images, training.seed, "fresh"), cfg)
    model = CellClassifier(world.num_cell_classes(cfg), cfg.image_size // cfg.grid)
    optimizer = torch.optim.Adam(model.parameters(), lr=training.lr)
    generator = torch.Generator().manual_seed(training.seed)
    losses = []
    for _ in range(training.steps):
        batch = torch.randint(0, len(cells), (training.batch_size,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(cells[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), losses


def cell_accuracy(model: CellClassifier, scenes: Sequence[Scene], cfg: WorldConfig) -> float:
    """The share of the scenes' cells whose class the classifier gets right."""
    cells, labels = _labelled_cells(scenes, cfg)
    with torch.no_grad():
        return (model(cells).argmax(-1) == labels).float().mean().item()


class WorldLabeler:
    """A `rlhfv_nb.rlaifv.labeler.Labeler` on the world's yes/no claim questions, from a `CellClassifier`.

    A question is read back as a `WorldClaim` (`WorldClaims.parse`: "Is there a red ball in the top left?");
    P(yes) = 1 - prod over the cells at its place (all cells for "in the image") of (1 - P(the cell holds an
    object of its kind, and colour when asked)).
    """

    def __init__(self, model: CellClassifier, cfg: WorldConfig) -> None:
        self.model, self.cfg, self.claims = model, cfg, WorldClaims(cfg)
        self._places = [world.cell_phrase(r, c, cfg) for r in range(cfg.grid) for c in range(cfg.grid)]

    def _class_matches(self, claim: WorldClaim) -> torch.Tensor:
        """A 0/1 mask of the cell classes holding an object such as `claim` names."""
        colours = self.cfg.color_names
        mask = torch.zeros(world.num_cell_classes(self.cfg))
        kind = self.cfg.kind_names.index(claim.kind)
        for index, colour in enumerate(colours):
            if claim.color in (None, colour):
                mask[kind * len(colours) + index] = 1.0
        return mask

    def cell_probabilities(self, images: Sequence[Any]) -> torch.Tensor:
        """(images, cells, classes) class probabilities, cells in reading order."""
        with torch.no_grad():
            probs = self.model(cell_pixels(images, self.cfg)).softmax(-1)
        return probs.view(len(images), self.cfg.grid ** 2, -1)

    def p_yes(self, images: Sequence[Any], questions: Sequence[str]) -> list[float]:
        """P(yes) of every (image, question); each distinct image is classified once."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images for {len(questions)} questions: need one image per question")
        keys = [image_bytes(image) for image in images]
        distinct = list(dict.fromkeys(keys))
        probs = dict(zip(distinct, self.cell_probabilities(distinct))) if distinct else {}
        answers = []
        for key, question in zip(keys, questions):
            claim = self.claims.parse(question)
            at_place = torch.tensor([claim.place in (None, place) for place in self._places])
            p_cells = (probs[key] @ self._class_matches(claim))[at_place]
            answers.append(1.0 - math.prod(1.0 - float(p) for p in p_cells))
        return answers


def _files(folder: Path) -> tuple[Path, Path]:
    return folder / "classifier.pt", folder / "report.json"


def train_or_load(folder: Path, cfg: WorldConfig, training: LabelerTraining, check_scenes: Sequence[Scene]
                  ) -> tuple[WorldLabeler, dict[str, Any]]:
    """The world labeler saved in `folder` if trained there with these settings, else trained now and saved.

    Returns it with its report: the training settings, the last loss and its cell accuracy on `check_scenes`
    (scenes it never trained on).
    """
    weights, report_path = _files(folder)
    report = read_json(report_path)
    model = CellClassifier(world.num_cell_classes(cfg), cfg.image_size // cfg.grid)
    settings = {"training": asdict(training), "world": hashlib.sha256(repr(cfg).encode()).hexdigest()[:16]}
    if report is not None and report.get("settings") == settings and weights.exists():
        model.load_state_dict(torch.load(weights, weights_only=True))
        return WorldLabeler(model.eval(), cfg), report
    model, losses = train_classifier(cfg, training)
    folder.mkdir(parents=True, exist_ok=True)
    partial = weights.with_suffix(".partial")
    torch.save(model.state_dict(), partial)
    partial.replace(weights)
    report = {"settings": settings, "final_loss": losses[-1] if losses else None,
              "cell_accuracy": cell_accuracy(model, check_scenes, cfg), "check_images": len(check_scenes)}
    write_json(report_path, report)
    return WorldLabeler(model, cfg), report


def scene_images(scenes: Sequence[Scene], cfg: WorldConfig) -> list[bytes]:
    """The scenes rendered and encoded (PNG bytes), as the labeler and the generation code take them."""
    return [encode_image(world.render(scene, cfg)) for scene in scenes]
