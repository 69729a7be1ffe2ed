"""Prompt templates for zero-shot class vectors.

`IMAGENET_TEMPLATES` are the 60 templates of CLIP's ImageNet prompt-engineering notebook in the
order PromptSRC uses them (its frozen-CLIP text targets average over all 60).
"""

SINGLE_TEMPLATE = "a photo of a {}."

IMAGENET_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
)

TEMPLATE_SETS = {
    "single": (SINGLE_TEMPLATE,),
    "imagenet60": IMAGENET_TEMPLATES,
}


def resolve_templates(templates: "str | tuple[str, ...] | list[str]") -> tuple[str, ...]:
    """A template-set name ("single", "imagenet60") or an explicit list → tuple of templates."""
    if isinstance(templates, str):
        if templates in TEMPLATE_SETS:
            return TEMPLATE_SETS[templates]
        if "{}" in templates:
            return (templates,)
        raise ValueError(
            f"Unknown template set {templates!r}; expected one of {sorted(TEMPLATE_SETS)} or a '{{}}' template."
        )
    out = tuple(templates)
    bad = [t for t in out if "{}" not in t]
    if not out or bad:
        raise ValueError(
            f"Every template needs a '{{}}' placeholder for the class name, got {bad or 'none'}."
        )
    return out
