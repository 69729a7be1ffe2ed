"""The "web" pretraining corpus: random concepts in random styles with varied captions.

Design decisions:
- The corpus is a distribution, not a file: `sample_batch` renders fresh items from a
  `numpy.random.Generator`, so a seed fixes all; pretraining renders a pool once
  (`render_pool`) and re-captions its items every time it draws them.
- Concepts are drawn uniformly from every (colour, shape) pair, so every class of every domain
  is in the corpus (CLIP's web covers the downstream class names); what separates the teacher's
  corpus from the student's is the *styles* (and caption variety), weighted per corpus.
- Each item carries its concept id, so the contrastive loss can treat two captions of the same
  concept in one batch as positives instead of false negatives (`pretrain.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .concepts import CAPTION_STYLES, COLOURS, DIALECTS, SHAPES, make_caption
from .render import IMAGE_SIZE, render_batch
from .styles import STYLES


@dataclass(frozen=True)
class CorpusSpec:
    """A web corpus: which styles and caption styles it contains, and how often."""

    styles: dict = field(default_factory=lambda: {"photo": 1.0})  # style name → sampling weight
    caption_styles: dict = field(default_factory=lambda: {"plain": 1.0, "photo": 1.0})  # → weight
    colours: tuple = tuple(COLOURS)  # colours the corpus mentions
    shapes: tuple = SHAPES  # shapes the corpus mentions
    dialect: str = ""  # words its captions use for colours and shapes: "" English, else a DIALECTS key

    def __post_init__(self):
        unknown = [s for s in self.styles if s not in STYLES]
        unknown += [c for c in self.caption_styles if c not in CAPTION_STYLES]
        unknown += [c for c in self.colours if c not in COLOURS] + [s for s in self.shapes if s not in SHAPES]
        unknown += [self.dialect] if self.dialect and self.dialect not in DIALECTS else []
        if unknown:
            raise ValueError(
                f"CorpusSpec names unknown styles / caption styles / colours / shapes / dialect: {unknown}."
            )
        if not self.styles or min(self.styles.values()) <= 0:
            raise ValueError(
                f"CorpusSpec needs at least one style with a positive weight, got {self.styles}."
            )

    @property
    def num_concepts(self) -> int:
        return len(self.colours) * len(self.shapes)

    def as_dict(self) -> dict:
        english = {} if not self.dialect else {"dialect": self.dialect}  # English worlds keep their hash
        return {
            "styles": dict(self.styles),
            "caption_styles": dict(self.caption_styles),
            "colours": list(self.colours),
            "shapes": list(self.shapes),
            **english,
        }


@dataclass
class CorpusBatch:
    images: np.ndarray  # uint8 [B, H, W, 3]
    captions: list  # [B] str
    concept_ids: np.ndarray  # int64 [B]: colour index · len(shapes) + shape index
    styles: list  # [B] style names


def sample_batch(
    spec: CorpusSpec, batch_size: int, rng: np.random.Generator, size: int = IMAGE_SIZE
) -> CorpusBatch:
    """Render `batch_size` random (concept, style, caption) items of the corpus."""
    names = list(spec.styles)
    weights = np.asarray([spec.styles[n] for n in names], dtype=np.float64)
    style_idx = rng.choice(len(names), size=batch_size, p=weights / weights.sum())
    concept_ids = rng.integers(0, spec.num_concepts, size=batch_size)
    concepts = [(spec.colours[i // len(spec.shapes)], spec.shapes[i % len(spec.shapes)]) for i in concept_ids]
    styles = [names[i] for i in style_idx]
    images = render_batch(concepts, styles, rng, size)
    return CorpusBatch(
        images=images,
        captions=caption_batch(spec, concept_ids, styles, rng),
        concept_ids=concept_ids.astype(np.int64),
        styles=styles,
    )


def caption_batch(spec: CorpusSpec, concept_ids, styles, rng: np.random.Generator) -> list:
    """A fresh caption for each (concept id, style) pair."""
    n = len(spec.shapes)
    return [
        make_caption(spec.colours[i // n], spec.shapes[i % n], st, spec.caption_styles, rng, spec.dialect)
        for i, st in zip(concept_ids, styles)
    ]


def render_pool(
    spec: CorpusSpec, size: int, rng: np.random.Generator, chunk: int = 512, progress: bool = True
) -> CorpusBatch:
    """A fixed pool of `size` corpus items, rendered once (pretraining samples batches from it)."""
    from tqdm.auto import tqdm

    parts = []
    with tqdm(total=size, desc="render corpus", unit="img", disable=not progress) as bar:
        for start in range(0, size, chunk):
            parts.append(sample_batch(spec, min(chunk, size - start), rng))
            bar.update(len(parts[-1].captions))
    return CorpusBatch(
        images=np.concatenate([p.images for p in parts]),
        captions=[c for p in parts for c in p.captions],
        concept_ids=np.concatenate([p.concept_ids for p in parts]),
        styles=[s for p in parts for s in p.styles],
    )
