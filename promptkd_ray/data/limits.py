"""The decoder's rules as settings (no torch, no PIL: the config layer reads them too).

DEFAULT_MAX_IMAGE_PIXELS   `data.max_image_pixels` / `--max-image-pixels` default: PIL's own
                           Image.MAX_IMAGE_PIXELS (PIL warns above it and refuses above 2×)
PIL_REFUSAL_PIXELS         the highest limit that can hold: PIL refuses larger images itself
EXIF_ORIENTATIONS          `data.exif_orientation` / `--exif-orientation`: ignore (the authors) or apply
"""

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
PIL_REFUSAL_PIXELS = 2 * DEFAULT_MAX_IMAGE_PIXELS
EXIF_ORIENTATIONS = ("ignore", "apply")
