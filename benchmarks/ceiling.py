"""The labelled ceiling of a distill job's student, beside the teacher, the zero-shot student and the distilled one.

Per seed S (the toy world's seed, also the job's), on the job's domain (default jobs/toy_b2n.yaml:
doodles), every row scored base-to-novel on the test split (base / novel / HM, `evaluate.score`):

    teacher zero-shot           the job's teacher, as every benchmark here scores it
    student zero-shot           the student CLIP with its own text tower
    labelled ceiling            the job's student — same prompts (n_ctx, depth), projector, frozen backbone,
                                the teacher's class vectors as its classifier — trained with cross-entropy
                                on the TRUE labels of every train image of ALL classes (the images the job
                                distils on), with the job's optimiser, schedule, batch, views and epochs:
                                the most this student can learn at the job's budget
    labelled ceiling, 4×        the same at --longer (4) × the epochs (the cosine stretched over them)
    labelled base-only          the same supervised training on the base-class images only, against the
                                base classes' vectors (CoOp-style prompt learning, as the papers compare);
                                the job's epochs
    distilled                   the job itself, run by `promptkd_ray.distill` (on Ray), or read from
                                finished runs (--distilled RUN_DIR …; their job.yaml gives the seed)

and two ratios of HM, per seed, then mean ± std over seeds (and of the mean HMs):
distillation efficiency = (distilled − zero-shot) / (ceiling − zero-shot), against the ceiling at the job's
epochs and at 4×; teacher-gap closure = (distilled − zero-shot) / (teacher − zero-shot).

How the labelled rows train: the project's own pieces, in this process, no second step.
- The step is `core.step.distill_step` with a *label teacher*: an image's teacher feature is the class
  vector of its true label, and the teacher's logit scale is LABEL_SCALE (10,000), so the teacher's
  softmax is the one-hot label (to float precision: the nearest other class is LABEL_SCALE · (1 − its
  cosine to the label's vector) logits behind: 89 on the quick toy world, whose two nearest class
  vectors have cosine 0.991); with the loss KL at T = 1, batch-mean, weight 1
  (`CROSS_ENTROPY`), KL(one-hot ‖ student) = −log p_student(label): the cross-entropy
  (tests/test_ceiling.py checks it against F.cross_entropy). The step's `agreement` is then the
  train accuracy.
- The student is `distill_setup.new_student` after `torch.manual_seed(job.seed)`, as a Train worker
  builds it; the optimiser and schedule are `core.schedule`'s builders on the job's train section;
  each epoch's order is `orchestration.epochs.epoch_order(seed, epoch)` and each image's view is
  `data.decode.decode_views` with the job's seed, view slot = epoch and `data.crop_scale_min`: the
  order and views the distillation's stream draws. The class vectors and the images are the job's
  own (`distill_setup.prepare`: the run folder keeps the class vectors; `data.split`, `data.limit`).
- Differences from a distilled run, named: one process takes the global batch in the epoch's order
  (the job's 2 DDP workers take halves of it: the gradient is the same mean, but the projector's
  BatchNorm normalises over 32 images instead of 16 per worker); no held-out slice is scored.
- Nothing is selected on test: every student is its last epoch.

    .venv/bin/python benchmarks/ceiling.py --threads 1 --out runs/ceiling            # default world, seeds 0 1 2
    .venv/bin/python benchmarks/ceiling.py --profile quick --seeds 0 --epochs 2 \\
        --out runs/ceiling_smoke                                                         # smoke test (Ray)
    .venv/bin/python benchmarks/ceiling.py --distilled runs/method_comparison/runs/promptkd-seed{0,1,2} \\
        --out runs/ceiling                                                              # finished runs, no Ray

Re-running with the same --out reuses finished students (labelled ones by row, epochs and seed; runs
by name), so an interrupted run resumes. ceiling.md, results.csv (per seed and row) and ratios.csv
(per seed) go to --out.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from method_comparison import seed_overrides, seeds_parser

from promptkd_ray.core.losses import LossConfig

REPO = Path(__file__).resolve().parents[1]
DEMO_JOB = REPO / "jobs" / "toy_b2n.yaml"
LABEL_SCALE = 1e4  # the label teacher's logit scale: its softmax is the one-hot label
CROSS_ENTROPY = LossConfig(kd="kl", temperature=1.0, normalization="batchmean", kd_weight=1.0)
TEACHER, ZERO_SHOT, DISTILLED = "teacher zero-shot", "student zero-shot", "distilled"
CEILING, CEILING_LONG, BASE_ONLY = "labelled ceiling", "labelled ceiling, longer", "labelled base-only"
ROWS = (TEACHER, ZERO_SHOT, CEILING, CEILING_LONG, BASE_ONLY, DISTILLED)
log = logging.getLogger("ceiling")


@dataclass(frozen=True)
class Labelled:
    """The images a job trains on, with their true labels (never seen by the distillation)."""

    paths: tuple[str, ...]
    labels: tuple[int, ...]


@dataclass(frozen=True)
class LabelledRow:
    """One supervised row: its name, its epochs and whether it sees the base classes only."""

    name: str
    epochs: int
    base_only: bool = False

    @property
    def key(self) -> str:
        return f"{'base_only' if self.base_only else 'all_classes'}-e{self.epochs}"


def parse_args(argv=None):
    p = seeds_parser(__doc__.splitlines()[0], "runs/ceiling")
    p.add_argument("--job", default=str(DEMO_JOB), help="the distill job (default jobs/toy_b2n.yaml)")
    p.add_argument("--longer", type=int, default=4, help="the second ceiling's epochs, × the job's")
    p.add_argument("--distilled", nargs="+", default=[], metavar="RUN_DIR", help="finished runs of the job")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p.parse_args(argv)


def seed_job(args, seed: int, name: str, extra: Sequence[str] = ()):
    """The job at toy-world seed `seed` (the run's seed too), its epochs from --epochs if given;
    `extra`: further overrides."""
    from promptkd_ray.config import load_distill_job

    return load_distill_job(args.job, [*seed_overrides(args, seed, name), *extra])


def seed_setup(args, seed: int, extra: Sequence[str] = ()) -> tuple:
    """(job, setup, splits, labelled images) of the labelled rows at `seed`: the job's images and
    the class vectors of the dataset's classes (a vocabulary or a cache of the job does not apply)."""
    from promptkd_ray.data.sources import open_splits, open_world
    from promptkd_ray.distill_setup import prepare
    from promptkd_ray.storage import Storage

    job = seed_job(args, seed, f"labelled-seed{seed}", extra)
    job = dataclasses.replace(job, teacher=dataclasses.replace(job.teacher, vocabulary="", cache=""))
    setup = prepare(job, Storage(Path(job.storage_path) / job.name))  # the class vectors are stored there
    splits = open_splits(job.data, job.data.split, open_world(job.data))
    return job, setup, splits, labelled_images(setup.source, splits, job.data.split)


def labelled_rows(epochs: int, longer: int) -> list[LabelledRow]:
    return [
        LabelledRow(CEILING, epochs),
        LabelledRow(CEILING_LONG, epochs * longer),
        LabelledRow(BASE_ONLY, epochs, base_only=True),
    ]


def labelled_images(source, splits, split: str) -> Labelled:
    """The source's train paths (the job's images) with their labels from the dataset's split."""
    label_of = {item.path: item.label for item in getattr(splits, split)}
    return Labelled(tuple(source.train_paths), tuple(label_of[p] for p in source.train_paths))


@dataclass(frozen=True)
class Supervision:
    """What the labelled steps read: the images, their labels and the classifier (class vectors)."""

    paths: np.ndarray  # [M] object: image paths
    labels: torch.Tensor  # [M] long, each < the number of class vectors
    vectors: torch.Tensor  # [N, d] the teacher's class vectors of the classes trained on


def train_labelled(job, setup, images: Labelled, row: LabelledRow):
    """The job's student trained with cross-entropy on `images`' labels (`row`: epochs, base only),
    through `core.step.distill_step` and its label teacher (module docstring). → the student."""
    from promptkd_ray.core.schedule import build_optimizer, build_scheduler
    from promptkd_ray.core.step import autocast_dtype
    from promptkd_ray.data.splits import num_base_classes
    from promptkd_ray.distill_setup import new_student

    cv = setup.class_vectors
    classes = num_base_classes(len(cv.classnames)) if row.base_only else len(cv.classnames)
    keep = [i for i, y in enumerate(images.labels) if y < classes]
    data = Supervision(
        np.asarray([images.paths[i] for i in keep], dtype=object),
        torch.tensor([images.labels[i] for i in keep], dtype=torch.long),
        cv.vectors[:classes].float(),
    )
    optim = dataclasses.replace(job.train, epochs=row.epochs)
    torch.manual_seed(job.seed)
    student = new_student(job, setup.student_spec, cv.dim)
    optimizer = build_optimizer(student.trainable_parameters(), optim)
    scheduler = build_scheduler(optimizer, optim)
    autocast = autocast_dtype(optim.precision, "cpu")
    for epoch in range(row.epochs):
        began = time.perf_counter()
        loss, accuracy, n = labelled_epoch(
            student, optimizer, data, setup.stream.decode, epoch, optim, autocast
        )
        scheduler.step()
        log.info(
            "%s (%d epochs) seed %d: epoch %d/%d, %d images, cross-entropy %.4f, train accuracy %.2f%% (%.1f s)",
            row.name,
            row.epochs,
            job.seed,
            epoch + 1,
            row.epochs,
            n,
            loss,
            accuracy,
            time.perf_counter() - began,
        )
    return student.eval()


def labelled_epoch(student, optimizer, data: Supervision, spec, epoch: int, optim, autocast) -> tuple:
    """One epoch of labelled steps: the job's order and views of epoch `epoch` (`spec`: the stream's
    `DecodeSpec`), full batches of `optim.batch_size`; → (mean loss, train accuracy %, images)."""
    from promptkd_ray.core.step import distill_step

    sums, n = np.zeros(2), 0
    for take, images, _ in seeded_batches(data.paths, spec, epoch, optim.batch_size):
        y = data.labels[take]
        out = distill_step(
            student, images, data.vectors[y], data.vectors, optimizer, CROSS_ENTROPY, LABEL_SCALE, autocast
        )
        sums += np.array([out["loss"], out["agreement"]]) * len(take)
        n += len(take)
    return *(sums / max(n, 1)), n


def seeded_batches(paths: np.ndarray, spec, epoch: int, batch: int):
    """Epoch `epoch`'s full batches (drop_last) of `paths` in the job's order, with the job's seeded
    views (`spec`: the stream's `DecodeSpec`): yields (positions into `paths`, model input [B, 3, S, S],
    the views as uint8 [B, S, S, 3])."""
    from promptkd_ray.data.decode import decode_views, to_model_input
    from promptkd_ray.orchestration.epochs import epoch_order

    order = epoch_order(spec.seed, epoch, len(paths), spec.shuffle)
    for first in range(0, len(order) - batch + 1, batch):
        take = order[first : first + batch]
        rows, bad = decode_views(
            {"id": paths[take]}, spec.size, "train", spec.seed, epoch, spec.crop_scale_min, spec.options
        )
        if bad:
            raise OSError(f"{len(bad)} unreadable train image(s), first {bad[0][0]}: {bad[0][1]}")
        yield take, to_model_input(torch.from_numpy(rows["image"])), rows["image"]


def labelled_student(job, setup, images: Labelled, row: LabelledRow, out: Path) -> tuple[str, float]:
    """The artifact of `row`'s student at the job's seed, trained now or found in --out from an earlier
    run; → (its path, seconds trained now)."""
    path = out / "students" / f"{row.key}-seed{job.seed}"
    if Path(f"{path}.safetensors").exists() and Path(f"{path}.json").exists():
        from promptkd_ray.core.artifacts import read_student_info

        info = read_student_info(str(path))
        made, now = (info.spec, info.class_vectors_sha256), (setup.student_spec, setup.class_vectors.sha256)
        if made != now:  # another world, profile or job wrote this folder
            raise SystemExit(
                f"error: {path}.safetensors was trained from {made[0]} against class vectors "
                f"{made[1][:12]}, not {now[0]} and {now[1][:12]}; use another --out."
            )
        log.info("%s (%d epochs) seed %d: reusing %s.safetensors", row.name, row.epochs, job.seed, path)
        return f"{path}.safetensors", 0.0
    began = time.perf_counter()
    student = train_labelled(job, setup, images, row)
    return save_labelled(student, job, setup, row, str(path)), time.perf_counter() - began


def save_labelled(student, job, setup, row: LabelledRow, path: str) -> str:
    """A labelled student as a student artifact (what `evaluate.score` reads); → the .safetensors."""
    from promptkd_ray.core.artifacts import save_student

    info = setup.student_info(job, student, labelled=row.name, epochs=row.epochs, base_only=row.base_only)
    save_student(student, info, path)
    return f"{path}.safetensors"


def run_seeds(runs: list[str]) -> dict[int, str]:
    """{seed: run folder} of finished runs (--distilled), read from each run's job.yaml."""
    import yaml

    found = {}
    for run in runs:
        job_file = Path(run) / "job.yaml"
        if not (job_file.exists() and (Path(run) / "student.safetensors").exists()):
            raise SystemExit(
                f"error: {run} is not a finished run (expected job.yaml and student.safetensors)."
            )
        raw = yaml.safe_load(job_file.read_text())
        seed, world_seed = int(raw["seed"]), int(raw["data"].get("toyworld_seed", -1))
        if world_seed != seed:
            raise SystemExit(
                f"error: {run} ran seed {seed} on toy world seed {world_seed}; expected the same."
            )
        found[seed] = str(run)
    return found


def distilled_entry(args, seed: int, given: dict, splits):
    """The distilled student of `seed`: a given finished run, or the job run now (on Ray)."""
    from promptkd_ray.core.artifacts import ModelRef
    from promptkd_ray.core.classvectors import load_class_vectors
    from promptkd_ray.evaluate import Entry, class_vectors_for

    if args.distilled:
        if seed not in given:
            raise SystemExit(
                f"error: --distilled gives no run of seed {seed} (runs of seeds {sorted(given)})."
            )
        run_dir, artifact = given[seed], f"{given[seed]}/student.safetensors"
    else:
        from promptkd_ray.distill import run_distillation

        result = run_distillation(seed_job(args, seed, f"distilled-seed{seed}"))
        run_dir, artifact = result.run_dir, result.student_artifact
    cv = class_vectors_for(artifact, splits, [load_class_vectors(f"{run_dir}/class_vectors")], "base2novel")
    return Entry(DISTILLED, ModelRef("student", artifact), cv, seed)


def score_seed(args, seed: int, given: dict, out: Path) -> tuple[list, dict]:
    """Every row of `seed`, scored base-to-novel in this process; → (scores, seconds trained per row)."""
    from promptkd_ray.core.artifacts import ModelRef
    from promptkd_ray.evaluate import Entry

    job, setup, splits, images = seed_setup(args, seed)
    entries = [
        Entry(TEACHER, ModelRef("zeroshot", setup.teacher_spec), None, seed),
        Entry(ZERO_SHOT, ModelRef("zeroshot", setup.student_spec), None, seed),
    ]
    seconds = {}
    for row in labelled_rows(job.train.epochs, args.longer):
        artifact, seconds[row.name] = labelled_student(job, setup, images, row, out)
        entries.append(Entry(row.name, ModelRef("student", artifact), setup.class_vectors, seed))
    entries.append(distilled_entry(args, seed, given, splits))
    return score_in_process(entries, splits, job.teacher.templates), seconds


def score_in_process(entries: list, splits, templates: str) -> list:
    """`evaluate.score` base-to-novel, the images encoded in this process."""
    from promptkd_ray.evaluate import score
    from promptkd_ray.orchestration.inference import Encoding

    return score(
        entries, splits, "base2novel", templates=templates, how=Encoding(use_ray=False, batch_size=128)
    )


def ratios(hm: dict) -> dict:
    """The ratios of one seed's HMs ({row name: HM})."""
    zero, gain = hm[ZERO_SHOT], hm[DISTILLED] - hm[ZERO_SHOT]
    return {
        "distillation efficiency (ceiling)": gain / (hm[CEILING] - zero),
        "distillation efficiency (longer ceiling)": gain / (hm[CEILING_LONG] - zero),
        "teacher-gap closure": gain / (hm[TEACHER] - zero),
    }


def mean_std(values: list, digits: int = 2) -> str:
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"


def tables(scores: list, names: dict) -> tuple[str, list]:
    """The rows' table (mean ± std over seeds) and the ratios' table; → (markdown, ratio rows per seed)."""
    seeds = sorted({s.seed for s in scores})
    hm = {seed: {s.model: s.metrics["hm"] for s in scores if s.seed == seed} for seed in seeds}
    lines = ["| model | base | novel | HM | HM per seed |", "|---|---|---|---|---|"]
    for model, label in names.items():
        rows = [s for s in scores if s.model == model]
        means = [mean_std([r.metrics[k] for r in rows]) for k in ("base", "novel", "hm")]
        each = " / ".join(f"{r.metrics['hm']:.2f}" for r in rows)
        lines.append(f"| {label} | {' | '.join(means)} | {each} |")
    per_seed = [{"seed": seed, **ratios(hm[seed])} for seed in seeds]
    of_means = ratios({m: statistics.fmean(hm[seed][m] for seed in seeds) for m in names})
    lines += ["", "| ratio (HM) | mean ± std over seeds | per seed | of the mean HMs |", "|---|---|---|---|"]
    for key, value in of_means.items():
        values = [r[key] for r in per_seed]
        lines.append(
            f"| {key} | {mean_std(values, 3)} | {' / '.join(f'{v:.3f}' for v in values)} | {value:.3f} |"
        )
    return "\n".join(lines), per_seed


def write_csvs(out: Path, scores: list, per_seed: list) -> None:
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["seed", "model", "base", "novel", "hm"])
        for s in scores:
            writer.writerow([s.seed, s.model, *(f"{s.metrics[k]:.2f}" for k in ("base", "novel", "hm"))])
    with open(out / "ratios.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(per_seed[0]))
        writer.writeheader()
        writer.writerows([{k: v if k == "seed" else f"{v:.4f}" for k, v in r.items()} for r in per_seed])


def main(argv=None) -> int:
    from cost import start_benchmark

    args, out = start_benchmark(parse_args, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    given = run_seeds(args.distilled) if args.distilled else {}
    if args.distilled and set(args.seeds) - set(given):
        raise SystemExit(f"error: --distilled gives runs of seeds {sorted(given)}, not of {args.seeds}.")
    job = seed_job(args, args.seeds[0], "ceiling")
    epochs = job.train.epochs
    began, scores, seconds = time.perf_counter(), [], {}
    for seed in args.seeds:
        seed_scores, trained = score_seed(args, seed, given, out)
        scores += seed_scores
        for row, value in trained.items():
            seconds[row] = seconds.get(row, 0.0) + value
    names = {
        TEACHER: "teacher zero-shot",
        ZERO_SHOT: "student zero-shot",
        CEILING: f"labelled ceiling: all classes, true labels ({epochs} epochs)",
        CEILING_LONG: f"labelled ceiling: all classes, true labels ({epochs * args.longer} epochs)",
        BASE_ONLY: f"labelled, base classes only ({epochs} epochs; CoOp-style)",
        DISTILLED: f"distilled: {Path(args.job).name}, no labels ({epochs} epochs)",
    }
    table, per_seed = tables(scores, names)
    command = "python benchmarks/ceiling.py " + " ".join(argv if argv is not None else sys.argv[1:])
    trained = ", ".join(f"{row} {value / 60:.1f} min" for row, value in seconds.items())
    text = "\n".join(
        [
            f"# The labelled ceiling: {Path(args.job).name} on the toy world "
            f"({args.profile}, seeds {', '.join(map(str, args.seeds))})",
            "",
            f"Command: `{command.strip()}`. Labelled training time in this invocation, all seeds (0.0 where "
            "a finished student was reused): "
            f"{trained}; wall time {(time.perf_counter() - began) / 60:.1f} min. Distilled: "
            + ("the runs given (--distilled)." if args.distilled else "run now (Ray) or reused from --out."),
            "",
            "Base-to-novel on the job's domain, mean ± std (population) over seeds:",
            "",
            table,
            "",
        ]
    )
    (out / "ceiling.md").write_text(text)
    write_csvs(out, scores, per_seed)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
