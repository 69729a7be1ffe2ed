"""Patient teaching: the student's test HM against the schedule's length, for K cached views per image.

Beyer et al. (CVPR 2022) found a distilled student keeps improving over very long schedules when the
teacher sees the student's very view each step ("consistent"), and that one fixed teacher output per
image overfits. A soft-label cache makes a long schedule cost the student's step alone; this benchmark
measures what it buys on the toy world, against the labelled ceiling.

Per seed S (toy world and job seed), the job (default jobs/toy_b2n.yaml: doodles, the authors' SGD),
one point per (epochs E, views K), each a fresh student trained E epochs with the job's cosine over
E, then scored base-to-novel on doodles and zero-shot on the neon domain (its own class vectors):

    K = 1, 8, 64     a soft-label cache of K views per image: epoch e reads view slot e mod K
    K = E            (--views 0) a fresh view every epoch: what a streaming run, or a cache of E views, sees

K is capped at E (a slot past the last epoch never replays). Slot s holds the views a streaming run
draws in its epoch s (`decode.view_rng` with the job's seed and crop scale), so a point of K = E is
the streaming run's math and every (E, K) point replays the same views its cache would hold.

How a point trains: in this process, the project's own pieces — as `benchmarks/limit.py`'s plain loop:
the images decoded once; every epoch its order (`epochs.epoch_order`), each image's seeded view of
slot e mod K rendered, the teacher's normalised features of those views read from the slot's stored
features (computed once per seed and slot, kept under --out/features), the step
`core.step.distill_step` with the job's student, loss, optimiser, schedule and class vectors. Named
differences from a Ray run: one process takes the job's global batch (2 DDP workers take halves:
same mean gradient, but the projector's BatchNorm sees 8 images, not 4); epochs e ≥ K draw a fresh
order over the images, where the cache's replay permutes its files' rows. Nothing is selected on
test: every student is its last epoch.

Wall time per point, both as measured here: "cached" = the teacher over K slots once (the cache's
build) + E epochs of render + step; "streaming" = E epochs of render + teacher + step (the teacher's
seconds per slot, measured). References per seed: the teacher and the student zero-shot, and the
labelled ceiling (`benchmarks/ceiling.py`'s: true labels, the job's recipe) at --ceiling-epochs.

    .venv/bin/python benchmarks/patient_teaching.py --seeds 0 --threads 1 --out runs/patient
    .venv/bin/python benchmarks/patient_teaching.py --seeds 0 --schedules 8 32 --views 1 0 \\
        --set train.grad_clip_norm=1 --tag clip --out runs/patient           # a variant, same --out
    .venv/bin/python benchmarks/patient_teaching.py --seeds 0 --views 0 --set data.mixup_alpha=1.0 \\
        --tag "mixup a1.0" --out runs/patient                                # consistent mixup, α = 1
    .venv/bin/python benchmarks/patient_teaching.py --seeds 0 --schedules 8 --views 8 --members 1 \\
        --tag "ensemble mean" --out runs/patient                             # a teacher ensemble
    .venv/bin/python benchmarks/patient_teaching.py --profile quick --seeds 0 --schedules 2 4 \\
        --views 1 0 --ceiling-epochs 2 --out /tmp/pt                          # smoke test

A teacher ensemble (--members M): M further teachers of the same world (`toyworld.further_teacher`: the
world's teacher recipe from other model seeds), each with its own class vectors (its text tower, the job's
templates) and its features of the same slots (kept under features/…/member-i), combined with the job's
teacher per step by `teacher.combine` (`core.step.ensemble_step`, as a Train worker does); their zero-shot
scores join the references. The held-out KL stays against the job's own teacher, as a run's does.

Every point is saved under --out/points as it finishes and reused by a later invocation with the same
--out, --tag, seed, E and K (one trained with another job, --set or profile is refused, not reused), so
two invocations with disjoint --views or --schedules share the cores and one report. patient.md,
patient.csv and patient.png (HM against epochs, one curve per K and tag, the ceiling and the teacher as
lines) are written from every point there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ceiling import CEILING, LabelledRow, labelled_images, labelled_student, score_in_process
from method_comparison import DEMO_JOB, seed_overrides, seeds_parser
from patient_report import write_report

log = logging.getLogger("patient_teaching")


def parse_args(argv=None):
    p = seeds_parser(__doc__.splitlines()[0], "runs/patient")
    p.set_defaults(seeds=[0])
    p.add_argument("--job", default=str(DEMO_JOB), help="the distill job (default jobs/toy_b2n.yaml)")
    p.add_argument("--schedules", type=int, nargs="+", default=[8, 16, 32, 64, 128], help="epochs E")
    p.add_argument("--views", type=int, nargs="+", default=[1, 8, 64, 0], help="K (0: K = E)")
    p.add_argument("--set", nargs="*", default=[], help="further job overrides KEY=VALUE (a variant)")
    p.add_argument("--tag", default="", help="the variant's name in the tables (default: --set joined)")
    p.add_argument("--ceiling-epochs", type=int, default=32, help="the labelled ceiling's epochs")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument(
        "--members",
        type=int,
        default=0,
        help="a teacher ensemble: this many further teachers of the world (toyworld.further_teacher), "
        "combined with the job's by teacher.combine",
    )
    p.add_argument("--report-only", action="store_true", help="write the report from --out's points")
    p.add_argument(
        "--grid-seeds", type=int, nargs="+", default=[0], help="the seeds whose points the curves show"
    )
    args = p.parse_args(argv)
    if any(e < 1 for e in args.schedules) or any(k < 0 for k in args.views) or args.members < 0:
        p.error("--schedules must be ≥ 1, --views ≥ 0 (0: as many views as epochs) and --members ≥ 0.")
    args.tag = args.tag or ", ".join(args.set) or "job"
    return args


@dataclass
class SeedWorld:
    """One seed's job, its setup, its train images decoded once, and the splits it is scored on."""

    job: object
    setup: object
    ids: list
    images: list
    doodles: object
    neon: object
    recipe: dict  # what trains its points beyond (tag, seed, E, K): the job file, --set, the world profile
    members: list = field(default_factory=list)  # further teachers: (ModelRef, their class vectors)
    vectors: str = ""  # where the job's class vectors are stored (the setup's run folder)
    slots: dict = field(default_factory=dict)  # view slot → the teacher's features, read once per seed
    heldout: list = field(default_factory=list)  # the held-out slice's batches, built once per seed

    def __post_init__(self):
        self.index = {ident: i for i, ident in enumerate(self.ids)}  # id → its place in `images`


def open_seed(args, seed: int, out: Path) -> SeedWorld:
    from promptkd_ray.config import load_distill_job
    from promptkd_ray.data.decode import read_image
    from promptkd_ray.data.sources import domain_splits
    from promptkd_ray.distill_setup import prepare
    from promptkd_ray.storage import Storage
    from promptkd_ray.toyworld import build_world

    overrides = [*seed_overrides(args, seed, f"patient-seed{seed}"), *args.set]
    job = load_distill_job(args.job, overrides)
    job = dataclasses.replace(job, teacher=dataclasses.replace(job.teacher, vocabulary="", cache=""))
    run = Storage(str(out / "runs" / f"setup-seed{seed}"))
    setup = prepare(job, run)
    world = build_world(args.cache_dir or None, seed=seed, profile=args.profile)
    ids = list(setup.source.train_paths)
    images = [read_image(i, setup.stream.decode.options) for i in ids]
    doodles, neon = (domain_splits(world.domain(d)) for d in (job.data.dataset, "neon"))
    recipe = {"job": Path(args.job).name, "set": list(args.set), "profile": args.profile}
    if args.members:
        recipe["members"] = args.members
    members = [
        member(world, i, setup.class_vectors, job.teacher.templates) for i in range(1, args.members + 1)
    ]
    return SeedWorld(
        job, setup, ids, images, doodles, neon, recipe, members, vectors=run.path("class_vectors")
    )


def member(world, index: int, class_vectors, templates: str) -> tuple:
    """Further teacher `index` of the toy world (pretrained now if new) and its class vectors of the
    job's classes (its own text tower, the job's templates)."""
    from promptkd_ray.core.artifacts import ModelRef
    from promptkd_ray.core.classvectors import compute_class_vectors
    from promptkd_ray.toyworld import further_teacher

    teacher = ModelRef("zeroshot", further_teacher(world, index))
    names = list(class_vectors.classnames)
    return teacher, compute_class_vectors(teacher.build("cpu"), names, templates=templates)


def render_slot(world: SeedWorld, slot: int, order) -> np.ndarray:
    """The views of view slot `slot` of the images at `order`, uint8 [len(order), S, S, 3] (mixed
    views too, with the job's `data.mixup_alpha`: the same draw as the decode tasks')."""
    from promptkd_ray.data.decode import render, view_rng
    from promptkd_ray.data.mixup import draw_view, with_partners

    spec = world.setup.stream.decode
    mixup = with_partners(spec.mixup, world.ids)

    def partner(ident: str):
        return world.images[world.index[ident]]

    views = []
    for i in order:
        rng = view_rng(spec.seed, world.ids[i], slot)
        view = draw_view(world.images[i], world.ids[i], rng, spec.crop_scale_min, mixup, partner)
        views.append(render(world.images[i], view, spec.size, partner))
    return np.stack(views)


def slot_features(world: SeedWorld, slots: int, folder: Path, member: int = 0) -> tuple[list, float]:
    """The teacher's normalised features of slots 0 … slots−1 (each [N, d] float16, image order),
    computed once and kept in `folder`; → (features per slot, the teacher's mean seconds per slot).
    `member` i ≥ 1: further teacher i's (`world.members[i - 1]`), in `folder`/member-i."""
    from promptkd_ray.orchestration.encoder import ImageEncoder

    teacher, kept = world.setup.stream.teacher, world.slots
    if member:
        teacher, folder = world.members[member - 1][0], folder / f"member-{member}"
        kept = world.slots.setdefault(f"member-{member}", {})
    folder.mkdir(parents=True, exist_ok=True)
    encoder, features, seconds = None, [], []
    for slot in range(slots):
        path, timing = folder / f"slot_{slot:04d}.npy", folder / f"slot_{slot:04d}.json"
        if not (path.exists() and timing.exists()):
            encoder = encoder or ImageEncoder(teacher, world.job.train.precision)
            began = time.perf_counter()
            views = render_slot(world, slot, range(len(world.ids)))
            rendered = time.perf_counter()
            encoded = torch.cat([encoder.encode(views[i : i + 256]) for i in range(0, len(views), 256)])
            written = {"teacher_s": time.perf_counter() - rendered}
            atomic_write(path, lambda f: np.save(f, encoded.numpy().astype(np.float16)))
            atomic_write(timing, lambda f: f.write(json.dumps(written).encode()))
            log.info(
                "seed %d slot %d: views rendered in %.1f s, the teacher's features in %.1f s",
                world.job.seed,
                slot,
                rendered - began,
                written["teacher_s"],
            )
        if slot not in kept:
            kept[slot] = np.load(path)
        features.append(kept[slot])
        seconds.append(json.loads(timing.read_text())["teacher_s"])
    return features, statistics.fmean(seconds) if seconds else 0.0


def atomic_write(path: Path, write) -> None:
    """`write(file)` into a temporary file beside `path`, then renamed onto it: a concurrent
    invocation on the same --out never reads half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    with open(temporary, "wb") as f:
        write(f)
    os.replace(temporary, path)


def heldout_batches(world: SeedWorld, folder: Path) -> list:
    """The job's label-free held-out slice as the training loop scores it: full views of the held-out
    images and the teacher's features of them (computed once, kept in `folder`), batches of 64."""
    from promptkd_ray.data.decode import decode_views
    from promptkd_ray.orchestration.encoder import ImageEncoder

    spec, paths = world.setup.stream.decode, np.asarray(world.setup.source.heldout_paths, dtype=object)
    if not len(paths):
        raise SystemExit(
            f"error: {world.job.name} holds no held-out images (data.heldout_split, data.heldout_images); "
            "the label-free choice needs them."
        )
    rows, bad = decode_views(
        {"id": paths}, spec.size, "heldout", spec.seed, 0, spec.crop_scale_min, spec.options
    )
    if bad:
        raise OSError(f"{len(bad)} unreadable held-out image(s), first {bad[0][0]}: {bad[0][1]}")
    path = folder / "heldout.npy"
    if not path.exists():
        encoder = ImageEncoder(world.setup.stream.teacher, world.job.train.precision)
        encoded = encoder.encode(rows["image"]).numpy()
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: np.save(f, encoded))
    features, images = torch.from_numpy(np.load(path)), torch.from_numpy(rows["image"])
    return [
        {"image": images[i : i + 64], "teacher_feature": features[i : i + 64]}
        for i in range(0, len(images), 64)
    ]


def heldout_scores(world: SeedWorld, student, folder: Path) -> dict:
    """The label-free selection metrics of `student` (held-out KL at T = 1, agreement %)."""
    from promptkd_ray.distill import heldout_metrics

    cv = world.setup.class_vectors
    with torch.no_grad():
        world.heldout = world.heldout or heldout_batches(world, folder)
        found = heldout_metrics(student, world.heldout, cv.vectors, cv.logit_scale)
    return {"heldout_kl": found["heldout_kl"], "heldout_agreement": found["heldout_agreement"]}


def train_point(world: SeedWorld, epochs: int, views: int, features: list):
    """A fresh student trained `epochs` epochs, epoch e on view slot e mod `views`; → (student, s).
    `features`: per teacher (the job's, then each of `world.members`), its features per slot."""
    from promptkd_ray.core.ensemble import Teacher
    from promptkd_ray.core.schedule import build_optimizer, build_scheduler
    from promptkd_ray.core.step import autocast_dtype, ensemble_step
    from promptkd_ray.data.decode import to_model_input
    from promptkd_ray.distill_setup import new_student
    from promptkd_ray.orchestration.epochs import epoch_order

    job, cv, spec = world.job, world.setup.class_vectors, world.setup.stream.decode
    vectors = [cv] + [w for _, w in world.members]
    optim = dataclasses.replace(job.train, epochs=epochs)
    torch.manual_seed(job.seed)
    student = new_student(job, world.setup.student_spec, cv.dim)
    optimizer = build_optimizer(student.trainable_parameters(), optim)
    scheduler = build_scheduler(optimizer, optim)
    autocast, batch, began = autocast_dtype(optim.precision, "cpu"), optim.batch_size, time.perf_counter()
    if len(world.ids) < batch:
        raise SystemExit(f"error: {len(world.ids)} train images make no full batch of {batch}.")
    for epoch in range(epochs):
        slot = epoch % views
        order = epoch_order(spec.seed, epoch, len(world.ids), spec.shuffle)
        pixels = to_model_input(torch.from_numpy(render_slot(world, slot, order)))
        teachers = [torch.from_numpy(f[slot][order].astype(np.float32)) for f in features]
        for first in range(0, len(order) - batch + 1, batch):
            take = slice(first, first + batch)
            batch_teachers = [Teacher(t[take], w.vectors, w.logit_scale) for t, w in zip(teachers, vectors)]
            out = ensemble_step(
                student,
                pixels[take],
                batch_teachers,
                job.teacher.combine,
                cv.vectors,
                optimizer,
                job.loss,
                autocast,
            )
        scheduler.step()
        if (epoch + 1) % max(1, epochs // 8) == 0 or epoch + 1 == epochs:
            log.info(
                "seed %d E=%d K=%d: epoch %d, loss %.4f, agreement %.1f%%",
                job.seed,
                epochs,
                views,
                epoch + 1,
                out["loss"],
                out["agreement"],
            )
    return student.eval(), time.perf_counter() - began


def score_student(world: SeedWorld, name: str, artifact: str) -> dict:
    """Base / novel / HM on the job's domain and accuracy on neon of a saved student."""
    from promptkd_ray.core.artifacts import ModelRef
    from promptkd_ray.evaluate import Entry, class_vectors_for, score
    from promptkd_ray.orchestration.inference import Encoding

    b2n = score_in_process(
        [Entry(name, ModelRef("student", artifact), world.setup.class_vectors, world.job.seed)],
        world.doodles,
        world.job.teacher.templates,
    )[0].metrics
    cv = class_vectors_for(artifact, world.neon, [world.setup.class_vectors], "cross")
    entry = Entry(name, ModelRef("student", artifact), cv, world.job.seed)
    neon = score([entry], world.neon, "cross", how=Encoding(use_ray=False, batch_size=128))[0].metrics
    return {"base": b2n["base"], "novel": b2n["novel"], "hm": b2n["hm"], "neon": neon["accuracy"]}


def point_name(tag: str, seed: int, epochs: int, views: int) -> str:
    return f"{tag.replace(' ', '_').replace('=', '-').replace(',', '')}-seed{seed}-e{epochs}-k{views}"


def features_key(world: SeedWorld) -> str:
    """The folder name of a seed's stored teacher features: what they depend on beyond the seed (the job
    file and world profile fix the teacher and images; the crop setting, image size and mixup the views)."""
    spec = world.setup.stream.decode
    job, profile = Path(world.recipe["job"]).stem, world.recipe["profile"]
    mix = f"-mixup{spec.mixup.alpha}-p{spec.mixup.prob}" if spec.mixup.on else ""
    return f"{job}-{profile}-seed{world.job.seed}-crop{spec.crop_scale_min}-size{spec.size}{mix}"


def run_point(world: SeedWorld, tag: str, epochs: int, views: int, out: Path) -> dict:
    """One (E, K) point of `tag` at the world's seed, trained and scored now or read from --out."""
    from promptkd_ray.core.artifacts import save_student

    name = point_name(tag, world.job.seed, epochs, views)
    path = out / "points" / f"{name}.json"
    folder = out / "features" / features_key(world)
    if path.exists():
        point = json.loads(path.read_text())
        if point.get("recipe") != world.recipe:
            raise SystemExit(
                f"error: {path} was trained with {point.get('recipe')}, not {world.recipe}; give this "
                "variant another --tag or another --out."
            )
        if "val_accuracy" not in point:  # a point scored before val accuracy was: its saved student
            point["val_accuracy"] = val_score(world, str(out / "students" / name))
            atomic_write(path, lambda f: f.write(json.dumps(point, indent=1).encode()))
        return point
    found = [slot_features(world, views, folder, i) for i in range(len(world.members) + 1)]
    teacher_s = sum(seconds for _, seconds in found)
    student, train_s = train_point(world, epochs, views, [features for features, _ in found])
    info = world.setup.student_info(world.job, student, patient=tag, epochs=epochs, views=views)
    artifact = save_student(student, info, str(out / "students" / name))
    point = {
        "tag": tag,
        "seed": world.job.seed,
        "epochs": epochs,
        "views": views,
        "recipe": world.recipe,
        **score_student(world, name, artifact),
        **heldout_scores(world, student, folder),
        "val_accuracy": val_score(world, artifact),
        "train_s": train_s,
        "cached_s": views * teacher_s + train_s,
        "streaming_s": epochs * teacher_s + train_s,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(json.dumps(point, indent=1).encode()))
    log.info("%s: HM %.2f, neon %.2f (%.0f s)", name, point["hm"], point["neon"], train_s)
    return point


def val_score(world: SeedWorld, artifact: str, shots: int = 16) -> float:
    """The student's top-1 % on `shots` labelled val images per base class (`evaluate.val_accuracy`, a
    sweep's `metric: val_accuracy`, the rule for choosing among teachers and ensembles; never test)."""
    from promptkd_ray.evaluate import val_accuracy
    from promptkd_ray.orchestration.inference import Encoding

    how, job = Encoding(use_ray=False, batch_size=128), world.job
    return val_accuracy(job.data, job.seed, artifact, world.vectors, shots, job.train.precision, how)


def references(args, seed: int, out: Path) -> dict:
    """{teacher, student zero-shot, labelled ceiling (and --members' teachers): scores} of `seed` (the
    job without --set)."""
    from promptkd_ray.data.sources import open_splits, open_world

    name = f"references-{Path(args.job).stem}-{args.profile}-seed{seed}-ceiling{args.ceiling_epochs}.json"
    path = out / "points" / name
    if path.exists():
        return member_references(args, seed, out, path)
    world = open_seed(argparse.Namespace(**{**vars(args), "set": []}), seed, out)
    job, setup = world.job, world.setup
    splits = open_splits(job.data, job.data.split, open_world(job.data))
    row = LabelledRow(CEILING, args.ceiling_epochs)
    artifact, _ = labelled_student(
        job, setup, labelled_images(setup.source, splits, job.data.split), row, out
    )
    found = {f"labelled ceiling ({args.ceiling_epochs} epochs)": score_student(world, "ceiling", artifact)}
    for name, spec in (("teacher zero-shot", setup.teacher_spec), ("student zero-shot", setup.student_spec)):
        found[name] = zero_shot_scores(world, name, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(json.dumps(found, indent=1).encode()))
    return member_references(args, seed, out, path)


def zero_shot_scores(world: SeedWorld, name: str, spec: str) -> dict:
    """Base / novel / HM on the job's domain and accuracy on neon of the zero-shot model `spec`."""
    from promptkd_ray.core.artifacts import ModelRef
    from promptkd_ray.evaluate import Entry, score
    from promptkd_ray.orchestration.inference import Encoding

    entry = Entry(name, ModelRef("zeroshot", spec), None, world.job.seed)
    b2n = score_in_process([entry], world.doodles, world.job.teacher.templates)[0].metrics
    neon = score([entry], world.neon, "cross", how=Encoding(use_ray=False, batch_size=128))[0].metrics
    return {**{k: b2n[k] for k in ("base", "novel", "hm")}, "neon": neon["accuracy"]}


def member_references(args, seed: int, out: Path, path: Path) -> dict:
    """The references in `path`, with further teachers 1 … --members scored zero-shot and the ensemble of
    them all (mean and confidence, `teacher_ensemble.py`) added if new."""
    from teacher_ensemble import ensemble_scores

    found = json.loads(path.read_text())
    missing = [i for i in range(1, args.members + 1) if f"teacher {i} zero-shot" not in found]
    together = {f"teachers 0–{args.members}, {rule}": rule for rule in ("mean", "confidence")}
    together = {name: rule for name, rule in together.items() if args.members and name not in found}
    if missing or together:
        world = open_seed(argparse.Namespace(**{**vars(args), "set": []}), seed, out)
        for i in missing:
            found[f"teacher {i} zero-shot"] = zero_shot_scores(
                world, f"teacher {i}", world.members[i - 1][0].source
            )
        teachers = [world.setup.stream.teacher] + [ref for ref, _ in world.members]
        for name, rule in together.items():
            found[name] = ensemble_scores(
                teachers, world.doodles, world.neon, world.job.teacher.templates, rule
            )
        atomic_write(path, lambda f: f.write(json.dumps(found, indent=1).encode()))
    return found


def main(argv=None) -> int:
    from cost import start_benchmark

    args, out = start_benchmark(parse_args, argv)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/patient_teaching.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if not args.report_only:
        for seed in args.seeds:
            references(args, seed, out)
            world = open_seed(args, seed, out)
            for epochs in args.schedules:
                for views in args.views:
                    run_point(world, args.tag, epochs, epochs if views == 0 else min(views, epochs), out)
    print(write_report(out, args.grid_seeds, command.strip()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
