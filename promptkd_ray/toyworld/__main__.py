"""`python -m promptkd_ray.toyworld [--profile dialect|full|quick] [--seed S] [--cache-dir DIR]`: build the
toy world (or find it in the cache) and print where its parts are."""

from __future__ import annotations

import argparse
import logging
import time

from .world import DEFAULT_PROFILE, PROFILES, build_world


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m promptkd_ray.toyworld", description=__doc__)
    parser.add_argument("--profile", default=DEFAULT_PROFILE, choices=sorted(PROFILES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="default: $PROMPTKD_RAY_CACHE/toyworld, else ~/.cache/promptkd_ray/toyworld",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    start = time.time()
    world = build_world(args.cache_dir, seed=args.seed, profile=args.profile)
    print(f"toy world {world.path} ({time.time() - start:.1f} s)")
    print(f"teacher  {world.teacher_spec}")
    print(f"student  {world.student_spec}")
    for key, d in world.domains.items():
        print(f"domain   {key}: {d.name}, {d.num_classes} classes, {d.split_file}")


if __name__ == "__main__":
    main()
