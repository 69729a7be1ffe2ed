"""Evaluation: score models on a dataset's test split under a protocol (PROTOCOL.md), and report.

    score(entries, dataset, protocol)   encode the test images with each model (Ray Data batch
                                        inference or in-process) → one Score per entry
    write_report(scores, out, title)    report.md + results.csv + summary.csv + report.png
                                        (+ unreadable.csv: the test images left out, when asked)

Protocols:

- base-to-novel: base = first ⌈N/2⌉ classes; base-class test images are scored against the base
  class vectors only, novel-class images against the novel ones; HM = 2bn/(b+n);
- cross-dataset: all classes of the target dataset;
- domain generalisation: ImageNet-V2/-Sketch/-A/-R scored against the ImageNet class vectors
  restricted (by class name) to the classes the variant has.
Results of several seeds are reported as mean ± std. No checkpoint is ever selected on test data:
each student given is evaluated as it is. Reports are Markdown + CSV + a PNG bar chart, with the
published PromptKD numbers beside ours where they exist.

An unreadable test image (corrupt, truncated, not an image, or over the decode pixel limit)
changes the test set, so it is an error (`BadImageError`, one sentence naming the file) unless the
caller asks to skip such images; then their count is reported beside the score, and their names
and reasons under the table and in unreadable.csv.
"""

from __future__ import annotations

import csv
import io
import logging
import statistics
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from .core.artifacts import ModelRef, read_student_info
from .core.classvectors import ClassVectors, check_class_vectors, compute_class_vectors
from .core.metrics import accuracy, base_novel_accuracy, cosine_logits
from .data.decode import DecodeOptions
from .data.splits import num_base_classes
from .errors import BadImageError, ClassVectorsError
from .storage import Storage

log = logging.getLogger(__name__)

# PromptKD (ViT-B/16 student, ViT-L/14 teacher), base / novel / HM — PROTOCOL.md
PUBLISHED_B2N = {
    "Average": (86.96, 80.73, 83.73),
    "ImageNet": (80.83, 74.66, 77.62),
    "Caltech101": (98.91, 96.65, 97.77),
    "OxfordPets": (96.30, 98.01, 97.15),
    "StanfordCars": (82.80, 83.37, 83.13),
    "Flowers102": (99.42, 82.62, 90.24),
    "Food101": (92.43, 93.68, 93.05),
    "FGVCAircraft": (49.12, 41.81, 45.17),
    "SUN397": (83.69, 81.54, 82.60),
    "DTD": (85.84, 71.37, 77.94),
    "EuroSAT": (97.54, 82.08, 89.14),
    "UCF101": (89.71, 82.27, 86.10),
}
PUBLISHED_CROSS_DATASET_AVERAGE = 71.33


@dataclass(frozen=True)
class Score:
    dataset: str
    model: str  # e.g. "student", "teacher", "student zero-shot"
    seed: int
    metrics: dict  # {"base", "novel", "hm"} or {"accuracy"}
    unreadable: int = 0  # test images that could not be decoded and were left out (only when asked to skip)
    unreadable_files: tuple = ()  # their (path, reason), sorted by path


@dataclass(frozen=True)
class Entry:
    """One model to score: its name in the report, the model, and the class vectors it is scored
    against (None: class vectors its own text tower computes for the dataset's classes)."""

    name: str
    model: ModelRef
    class_vectors: Optional[ClassVectors] = None
    seed: int = 0


PROTOCOLS = ("base2novel", "cross", "dg")
MARKDOWN_FILES = 20  # unreadable test images named in report.md (unreadable.csv holds them all)


def score(
    entries: Sequence[Entry],
    dataset,
    protocol: str = "base2novel",
    templates: str = "single",
    use_ray: bool = True,
    batch_size: int = 64,
    actors: int = 1,
    skip_unreadable: bool = False,
    options: DecodeOptions = DecodeOptions(),
) -> list[Score]:
    """Score each entry on `dataset`'s test split under `protocol` (base2novel, cross or dg), its
    images decoded with `options` (pixel limit, EXIF rule)."""
    from .orchestration.inference import encode_items

    paths, labels = [it.path for it in dataset.test], [it.label for it in dataset.test]
    scores = []
    for entry in entries:
        cv = entry.class_vectors
        if cv is None:
            cv = compute_class_vectors(
                entry.model.build(),
                list(dataset.classnames),
                templates=templates,
                teacher_spec=entry.model.spec,
            )
        if protocol == "dg":
            cv = restrict_by_name(cv, dataset.classnames)
        encoded = encode_items(
            entry.model,
            paths,
            labels,
            use_ray=use_ray,
            batch_size=batch_size,
            num_actors=actors,
            options=options,
            pack=getattr(dataset, "pack", ""),
        )  # a pack: `data.pack.PackedSplits`
        _check_readable(encoded.unreadable, len(paths), dataset.name, skip_unreadable)
        metrics = (base_to_novel if protocol == "base2novel" else all_classes)(
            encoded.features, encoded.labels, cv, dataset.classnames, entry.model.classifier()
        )
        scores.append(
            Score(
                dataset.name,
                entry.name,
                entry.seed,
                metrics,
                len(encoded.unreadable),
                tuple(sorted(encoded.unreadable.items())),
            )
        )
        log.info(
            "%s %s seed %d: %s",
            dataset.name,
            entry.name,
            entry.seed,
            {k: round(v, 2) for k, v in metrics.items()},
        )
    return scores


def class_vectors_for(
    student: str, dataset, given: Sequence[ClassVectors], protocol: str, cache: Optional[dict] = None
) -> ClassVectors:
    """The class vectors a student is scored against on `dataset`: a given set holding the dataset's
    classes (in order; for dg: holding them all, restricted later), else the dataset's class vectors
    computed by the teacher the student was distilled from (its artifact records it) with the same
    templates — how a student distilled on one dataset (or over a vocabulary) is scored on another."""
    names = tuple(dataset.classnames)
    for cv in given:
        if cv.classnames == names or (protocol == "dg" and set(names) <= set(cv.classnames)):
            return cv
    info = read_student_info(student)
    ref = info.extra.get("teacher_ref")
    if not ref:
        raise ClassVectorsError(
            f"No class vectors given hold the {len(names)} classes of {dataset.name}, and the student {student} "
            f"records no teacher to compute them with; pass --class-vectors with a file of {dataset.name}'s classes."
        )
    cache = {} if cache is None else cache
    key = (ref["kind"], ref["source"], names)
    if key not in cache:
        templates = list(info.extra.get("class_vectors_templates") or ["single"])
        teacher = ModelRef(ref["kind"], ref["source"])
        log.info(
            "class vectors of %s's %d classes from the student's teacher %s",
            dataset.name,
            len(names),
            ref["source"],
        )
        cache[key] = compute_class_vectors(
            teacher.build(),
            list(names),
            teacher_spec=teacher.spec,
            templates="single" if templates == ["prompted"] else templates,
        )
    return cache[key]


def _check_readable(unreadable: dict, total: int, dataset: str, skip: bool) -> None:
    if not unreadable:
        return
    path, reason = next(iter(sorted(unreadable.items())))
    if len(unreadable) >= total:
        raise BadImageError(
            f"All {total} test images of {dataset} are unreadable (first: {path}: {reason}); "
            "there is nothing to score."
        )
    if not skip:
        raise BadImageError(
            f"{len(unreadable)} of {total} test images of {dataset} are unreadable (first: {path}: "
            f"{reason}); fix them, or pass --skip-unreadable to score without them and report "
            "their count beside the score."
        )
    log.warning(
        "%d of %d test images of %s are unreadable and left out (first: %s)",
        len(unreadable),
        total,
        dataset,
        path,
    )


def base_to_novel(
    features: torch.Tensor,
    labels: torch.Tensor,
    class_vectors: ClassVectors,
    classnames: Sequence[str],
    logits=cosine_logits,
) -> dict[str, float]:
    check_class_vectors(class_vectors, expected_classnames=classnames, source="class vectors")
    return base_novel_accuracy(
        features, labels, class_vectors.vectors, num_base_classes(len(classnames)), logits
    )


def all_classes(
    features: torch.Tensor,
    labels: torch.Tensor,
    class_vectors: ClassVectors,
    classnames: Sequence[str],
    logits=cosine_logits,
) -> dict[str, float]:
    check_class_vectors(class_vectors, expected_classnames=classnames, source="class vectors")
    return {"accuracy": accuracy(logits(features, class_vectors.vectors), labels)}


def restrict_by_name(class_vectors: ClassVectors, classnames: Sequence[str]) -> ClassVectors:
    """The class vectors of `classnames` (e.g. ImageNet-A's 200) picked by name from a larger set."""
    index = {name: i for i, name in enumerate(class_vectors.classnames)}
    missing = [n for n in classnames if n not in index]
    if missing:
        raise ClassVectorsError(
            f"class vectors lack {len(missing)} of the dataset's classes (first: {missing[0]!r})."
        )
    return class_vectors.subset([index[n] for n in classnames])


def summarize(scores: Sequence[Score]) -> list[dict]:
    """Mean ± std over seeds per (dataset, model)."""
    groups: dict[tuple[str, str], list[Score]] = {}
    for s in scores:
        groups.setdefault((s.dataset, s.model), []).append(s)
    rows = []
    for (dataset, model), group in groups.items():
        row = {
            "dataset": dataset,
            "model": model,
            "seeds": len(group),
            "unreadable": max(g.unreadable for g in group),
        }
        for key in group[0].metrics:
            values = [g.metrics[key] for g in group]
            row[key] = statistics.fmean(values)
            row[f"{key}_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def write_report(
    scores: Sequence[Score], out_dir: "str | Path", title: str, published: dict | None = None
) -> dict:
    """Write report.md, results.csv (per seed), summary.csv and report.png; returns their paths."""
    out = Storage(str(out_dir))  # a local folder or a URI (`--out s3://…`)
    rows = summarize(scores)
    keys = list(scores[0].metrics) if scores else []
    skipped = any(s.unreadable for s in scores)  # only then: the count of left-out test images per row
    written: dict[str, bytes] = {}  # every file is written at the end, together (Storage.write_files)
    with _text_file(written, "results.csv") as f:
        writer = csv.writer(f)
        writer.writerow(["dataset", "model", "seed", *keys] + ["unreadable"] * skipped)
        for s in scores:
            writer.writerow(
                [s.dataset, s.model, s.seed, *[f"{s.metrics[k]:.2f}" for k in keys]]
                + [s.unreadable] * skipped
            )
    with _text_file(written, "summary.csv") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["dataset", "model", "seeds", *[c for k in keys for c in (k, f"{k}_std")]]
            + ["unreadable"] * skipped
        )
        for r in rows:
            writer.writerow(
                [
                    r["dataset"],
                    r["model"],
                    r["seeds"],
                    *[f"{r[c]:.2f}" for k in keys for c in (k, f"{k}_std")],
                ]
                + [r["unreadable"]] * skipped
            )
    files = sorted({(s.dataset, path, reason) for s in scores for path, reason in s.unreadable_files})
    if files:
        with _text_file(written, "unreadable.csv") as f:
            csv.writer(f).writerows([("dataset", "path", "reason"), *files])
    written["report.png"] = _bar_chart(rows, keys, title)
    written["report.md"] = _markdown(rows, keys, title, published, skipped, files).encode("utf-8")
    out.write_files(written)  # each complete under a temporary name, then moved, report.md last
    log.info("report written to %s", out.path("report.md"))
    return {
        "markdown": out.path("report.md"),
        "csv": out.path("results.csv"),
        "summary": out.path("summary.csv"),
        "plot": out.path("report.png"),
        **({"unreadable": out.path("unreadable.csv")} if files else {}),
    }


def _markdown(
    rows: list[dict],
    keys: list[str],
    title: str,
    published: dict | None,
    skipped: bool,
    files: Sequence[tuple] = (),
) -> str:
    lines = [f"# {title}", "", "Mean ± std over seeds; no checkpoint was selected on test data.", ""]
    if skipped:
        lines += [
            "Unreadable test images were left out (--skip-unreadable); their count is in the last column.",
            "",
        ]
    header = ["dataset", "model", "seeds", *keys] + ["unreadable test images"] * skipped
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["dataset"], r["model"], str(r["seeds"])]
        cells += [f"{r[k]:.2f} ± {r[k + '_std']:.2f}" for k in keys] + [str(r["unreadable"])] * skipped
        lines.append("| " + " | ".join(cells) + " |")
    if files:
        lines += ["", f"Unreadable test images left out ({len(files)}; all in unreadable.csv):", ""]
        lines += [f"- {dataset}: `{path}` ({reason})" for dataset, path, reason in files[:MARKDOWN_FILES]]
        lines += [f"- … and {len(files) - MARKDOWN_FILES} more"] * (len(files) > MARKDOWN_FILES)
    shown = [r["dataset"] for r in rows if published and r["dataset"] in published]
    if shown and keys == ["base", "novel", "hm"]:
        lines += [
            "",
            "Published PromptKD (ViT-L/14 → ViT-B/16), for reference:",
            "",
            "| dataset | base | novel | hm |",
            "|---|---|---|---|",
        ]
        for name in dict.fromkeys(shown):
            b, n, h = published[name]
            lines.append(f"| {name} | {b:.2f} | {n:.2f} | {h:.2f} |")
    return "\n".join(lines) + "\n"


@contextmanager
def _text_file(written: dict, name: str):
    """A text buffer whose content becomes `written[name]` (UTF-8) when the block ends."""
    buffer = io.StringIO()
    yield buffer
    written[name] = buffer.getvalue().encode("utf-8")


def _bar_chart(rows: list[dict], keys: list[str], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['dataset']}\n{r['model']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(rows) * max(1, len(keys)) / 2), 4.5))
    width = 0.8 / max(1, len(keys))
    for j, key in enumerate(keys):
        xs = [i + (j - (len(keys) - 1) / 2) * width for i in range(len(rows))]
        bars = ax.bar(
            xs, [r[key] for r in rows], width, yerr=[r[key + "_std"] for r in rows], label=key, capsize=3
        )
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
