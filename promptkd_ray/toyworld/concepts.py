"""The toy world's vocabulary: shapes, colours, styles, and the captions that describe them.

Design decisions:
- A concept is a (colour, shape) pair; its class name is "<colour> <shape>" ("red star"), two
  common English words that open_clip's BPE tokenizer keeps as single tokens, so a caption fits
  the toy models' 16-token context.
- Colours are RGB anchors that the renderer jitters per image; shapes are drawn by
  `render.py`. Every name here is a plain string, so a domain's class list is readable data.
- Captions come from several *caption styles* (plain, photo-like, descriptive, alt-text), each a
  list of templates; some templates name the image style ("a sketch of a red star."), as web
  captions do. Zero-shot class vectors use the single template "a photo of a {}.", which is
  one of the "photo" captions, so teacher and student are scored with a prompt both have seen.
"""

from __future__ import annotations

import numpy as np

# RGB anchors, jittered per image by the renderer.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (235, 215, 30),
    "green": (40, 165, 55),
    "cyan": (40, 200, 215),
    "blue": (35, 65, 215),
    "purple": (135, 45, 185),
    "pink": (245, 120, 190),
    "brown": (125, 75, 35),
}

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "heart",
    "diamond",
    "hexagon",
    "ring",
    "arrow",
    "moon",
    "pentagon",
)

# Words a caption may use for an image style (only some templates mention the style).
STYLE_WORDS: dict[str, tuple[str, ...]] = {
    "photo": ("photo", "picture"),
    "noisy": ("grainy photo", "noisy photo"),
    "blurry": ("blurry photo", "soft photo"),
    "cartoon": ("cartoon", "clipart"),
    "striped": ("photo", "pattern"),
    "pixel": ("pixel art", "pixelated image"),
    "sketch": ("sketch", "drawing"),
    "neon": ("neon sign", "glowing sign"),
    "doodle": ("doodle", "sketch"),
    "dotted": ("print", "pattern"),
}

CAPTION_STYLES: dict[str, tuple[str, ...]] = {
    "plain": ("{c} {s}", "a {c} {s}", "{c} {s}.", "the {c} {s}."),
    "photo": (
        "a photo of a {c} {s}.",
        "a picture of a {c} {s}.",
        "a photo of the {c} {s}.",
        "an image of a {c} {s}.",
    ),
    "descriptive": ("a {s} that is {c}.", "the {s} is {c}.", "a {c} colored {s}.", "one {c} {s}."),
    "styled": ("a {w} of a {c} {s}.", "{c} {s} {w}", "a {c} {s} {w}."),
    "alt": ("{c} {s} icon", "{c} {s} image", "small {c} {s}", "a {c} {s} on a background"),
}

ZERO_SHOT_TEMPLATE = "a photo of a {}."

# Dialects: other words for the colours and shapes, which a corpus's captions may use instead of the
# class names' English ones (the function words and the style words stay English). A model pretrained
# on such captions sees the same images but has never read a class name ("red star"): its text tower
# knows "rojo estrella" and meets "red star" as tokens it was never trained on.
DIALECTS: dict[str, dict[str, str]] = {
    "es": {
        "red": "rojo",
        "orange": "naranja",
        "yellow": "amarillo",
        "green": "verde",
        "cyan": "turquesa",
        "blue": "azul",
        "purple": "morado",
        "pink": "rosa",
        "brown": "marron",
        "circle": "circulo",
        "square": "cuadrado",
        "triangle": "triangulo",
        "star": "estrella",
        "cross": "cruz",
        "heart": "corazon",
        "diamond": "rombo",
        "hexagon": "hexagono",
        "ring": "anillo",
        "arrow": "flecha",
        "moon": "luna",
        "pentagon": "pentagono",
    },
}
DIALECTS["es_shapes"] = {word: DIALECTS["es"][word] for word in SHAPES}  # English colours, Spanish shapes


def class_name(colour: str, shape: str) -> str:
    """The class name of a concept: "<colour> <shape>"."""
    if colour not in COLOURS or shape not in SHAPES:
        raise ValueError(
            f"Unknown concept ({colour!r}, {shape!r}); colours {list(COLOURS)}, shapes {list(SHAPES)}."
        )
    return f"{colour} {shape}"


def parse_class_name(name: str) -> tuple[str, str]:
    """ "red star" → ("red", "star")."""
    colour, _, shape = name.partition(" ")
    class_name(colour, shape)  # validates
    return colour, shape


def all_concepts() -> list[tuple[str, str]]:
    """Every (colour, shape) pair, colour-major."""
    return [(c, s) for c in COLOURS for s in SHAPES]


def vocabulary() -> list[str]:
    """The toy world's whole name space: every colour × shape class name (108), sorted; larger than
    any domain's class list (KDPL-CA distils over a vocabulary, not over the domain's classes)."""
    return sorted(class_name(c, s) for c, s in all_concepts())


def make_caption(
    colour: str,
    shape: str,
    style: str,
    caption_styles: dict[str, float],
    rng: np.random.Generator,
    dialect: str = "",
) -> str:
    """One caption of a concept rendered in `style`; `caption_styles` weights the caption styles;
    `dialect` ("" = English, else a key of DIALECTS) names the colour and the shape."""
    names = list(caption_styles)
    weights = np.asarray([caption_styles[n] for n in names], dtype=np.float64)
    kind = names[rng.choice(len(names), p=weights / weights.sum())]
    templates = CAPTION_STYLES[kind]
    template = templates[rng.integers(len(templates))]
    words = STYLE_WORDS[style]
    names_of = DIALECTS[dialect] if dialect else {}
    return template.format(
        c=names_of.get(colour, colour), s=names_of.get(shape, shape), w=words[rng.integers(len(words))]
    )
