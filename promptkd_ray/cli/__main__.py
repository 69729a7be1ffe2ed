"""`python -m promptkd_ray.cli …` is `promptkd-ray …`."""

import sys

from . import main

sys.exit(main())
