"""The offline toy world: procedural image domains and tiny pretrained CLIPs.

Nothing can be downloaded here, yet the method must be shown working. The toy world provides:
- a renderer of coloured shapes in several styles (`render`, `styles`), with captions (`concepts`);
- "web" corpora and CPU contrastive pretraining of a teacher and a student CLIP (`corpus`,
  `pretrain`), saved as safetensors that `promptkd_ray.core.models.load_clip` reads;
- named domains written in the real benchmarks' on-disk layout (`domains`);
- `build_world`, which builds all of it once per (profile, seed) and caches it (`world`), and
  `further_teacher`, another teacher of the same world from another model seed (an ensemble member).

Usage:
    world = build_world(profile="quick")          # or "dialect" (the demo's world), "full"
    teacher = build_teacher(world.teacher_spec)
    domain = world.domain()                        # default: "doodles"
    domain.root, domain.dataset_folder, domain.split_file, domain.classnames

Importing this package does no work (no rendering, no training, no file access).
"""

from .concepts import vocabulary
from .domains import DEFAULT_DOMAIN, DOMAINS, DomainSpec, write_domain
from .render import IMAGE_SIZE, render_batch, render_image
from .world import PROFILES, ToyDomain, ToyWorld, build_world, default_cache_dir, further_teacher

__all__ = [
    "DEFAULT_DOMAIN",
    "DOMAINS",
    "DomainSpec",
    "write_domain",
    "IMAGE_SIZE",
    "render_batch",
    "render_image",
    "PROFILES",
    "ToyDomain",
    "ToyWorld",
    "build_world",
    "default_cache_dir",
    "further_teacher",
    "vocabulary",
]
