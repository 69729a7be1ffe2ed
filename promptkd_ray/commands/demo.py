"""`promptkd-ray demo`: the whole method offline, on the toy world, on a local Ray.

1. build (or load from the cache) the toy world: a tiny pretrained teacher CLIP that knows the
   "doodles" style, a smaller student CLIP that never saw it, and the domain on disk in the CoOp
   split-JSON layout;
2. distil the student on the domain's unlabeled train split (all classes) through the Ray pipeline
   (teacher actor pool → Ray Train DDP workers), class vectors from the teacher's text;
3. evaluate base / novel / HM (PROTOCOL.md) of the teacher (zero-shot), the student (zero-shot, its
   own text tower) and the distilled student; write report.md / CSV / PNG under --out;
4. end with one line: RESULT teacher_hm=… student_zero_shot_hm=… student_distilled_hm=…
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = "Build the offline toy world, distil a student on it and write the report."
log = logging.getLogger(__name__)

DEMO_JOB = {
    "teacher": {"templates": "single"},
    "student": {"n_ctx": 4, "depth": 3, "projector": "mlp2"},
    "data": {"source": "toyworld", "dataset": "doodles", "split": "train", "heldout_split": "val",
             "heldout_images": 150, "decode_batch_size": 64},
    "teacher_pool": {"size": 1, "batch_size": 64},
    "train": {"batch_size": 32, "optimizer": "adamw", "lr": 0.002, "weight_decay": 0.0005,
              "schedule": "cosine", "warmup_epochs": 0, "num_workers": 2, "log_every": 20},
    "loss": {"preset": "promptkd"},
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=["full", "quick"], default="full", help="toy world size (quick: tests)")
    p.add_argument("--seed", type=int, default=0, help="world and distillation seed")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--workers", type=int, default=2, help="Ray Train DDP workers")
    p.add_argument("--out", default="runs/demo", help="folder for the run and the report")
    p.add_argument("--cache-dir", default="", help="toy world cache (default ~/.cache/promptkd_ray)")


def run(args) -> int:
    import copy

    from ..config import job_from_dict
    from ..distill import run_distillation
    from ..toyworld import build_world

    world = build_world(args.cache_dir or None, seed=args.seed, profile=args.profile)
    raw = copy.deepcopy(DEMO_JOB)
    raw.update(name=f"demo-{args.profile}-seed{args.seed}", storage_path=str(Path(args.out).resolve()),
               seed=args.seed)
    raw["data"].update(root=args.cache_dir, toyworld_profile=args.profile, toyworld_seed=args.seed)
    raw["train"].update(epochs=args.epochs, num_workers=args.workers)
    result = run_distillation(job_from_dict(raw, source="demo"))
    scores = evaluate_demo(world, result)
    from ..evaluate import write_report

    paths = write_report(scores, Path(args.out) / "report",
                         f"PromptKD on the toy world ({world.domain().name}, seed {args.seed})")
    hm = {s.model: s.metrics["hm"] for s in scores}
    log.info("report: %s", paths["markdown"])
    print(Path(paths["markdown"]).read_text())
    print(f"RESULT teacher_hm={hm['teacher zero-shot']:.2f} student_zero_shot_hm={hm['student zero-shot']:.2f} "
          f"student_distilled_hm={hm['student distilled']:.2f}")
    return 0


def evaluate_demo(world, result) -> list:
    from ..classvectors import compute_class_vectors, load_class_vectors
    from ..data.benchmarks import load_split_json_dataset
    from ..evaluate import Score, base_to_novel
    from ..inference import EncoderSpec, encode_items

    domain = world.domain()
    split = Path(domain.split_file)
    dataset = load_split_json_dataset(split.parent.parent, split.parent.name, domain.image_folder, split.name,
                                      domain.name)
    paths, labels = [it.path for it in dataset.test], [it.label for it in dataset.test]
    run_dir = Path(result.run_dir)
    jobs = [("teacher zero-shot", EncoderSpec("zeroshot", world.teacher_spec), None),
            ("student zero-shot", EncoderSpec("zeroshot", world.student_spec), None),
            ("student distilled", EncoderSpec("student", result.student_artifact), run_dir / "class_vectors")]
    scores = []
    for name, spec, cv_path in jobs:
        if cv_path is None:
            model, _ = spec.build()
            cv = compute_class_vectors(model, list(dataset.classnames), templates="single")
        else:
            cv = load_class_vectors(cv_path)
        encoded = encode_items(spec, paths, labels, use_ray=True, batch_size=128)
        metrics = base_to_novel(encoded.features, encoded.labels, cv, dataset.classnames)
        log.info("%s: base %.2f novel %.2f HM %.2f", name, metrics["base"], metrics["novel"], metrics["hm"])
        scores.append(Score(dataset.name, name, 0, metrics))
    return scores
