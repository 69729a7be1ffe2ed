"""Reports of evaluation scores: report.md + results.csv (per seed) + summary.csv (mean ± std over
seeds) + report.png (+ unreadable.csv: the test images left out, when asked), with the published
PromptKD numbers beside ours where they exist; and `png_bytes`, the one way a report's figure
becomes a PNG (also the sweep report's).

    write_report(scores, out, title)    every file written together (Storage.write_files), report.md last
"""

from __future__ import annotations

import csv
import io
import logging
import statistics
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .storage import Storage

if TYPE_CHECKING:  # scoring imports torch, which writing a report does not need
    from .evaluate import Score

log = logging.getLogger(__name__)

# PromptKD (ViT-B/16 student, ViT-L/14 teacher), base / novel / HM — docs/protocol.md
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
MARKDOWN_FILES = 20  # unreadable test images named in report.md (unreadable.csv holds them all)


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
    plt = pyplot()
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
    return png_bytes(fig)


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: only reports draw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes (110 dpi); the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    pyplot().close(fig)
    return buffer.getvalue()
