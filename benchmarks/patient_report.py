"""The report of benchmarks/patient_teaching.py, written from the points under its --out: patient.md (the
curves of the grid seeds, the label-free choice, every point measured on several seeds, the
references), patient.csv (every point) and patient.png (HM against epochs, one line per curve)."""

from __future__ import annotations

import csv
import json
import re
import statistics
from pathlib import Path

CSV_KEYS = "tag seed epochs views base novel hm neon heldout_kl heldout_agreement val_accuracy train_s cached_s streaming_s".split()


def mean_std(values: list, digits: int = 2) -> str:
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"


def curves(points: list) -> dict:
    """{(tag, curve): {E: [points of the seeds]}}. A point of K = E views belongs to the "K = E" curve
    and to every fixed-K curve of its variant with K ≥ E (K is capped at E); a variant's fixed Ks are
    those of its points."""
    fixed: dict = {}
    for p in points:
        if p["views"] < p["epochs"]:
            fixed.setdefault(p["tag"], set()).add(p["views"])
    found: dict = {}
    for p in points:
        labels = [f"K = {p['views']}"] if p["views"] < p["epochs"] else ["K = E"]
        if p["views"] == p["epochs"]:
            labels += [f"K = {k}" for k in sorted(fixed.get(p["tag"], ())) if k >= p["epochs"]]
        for label in labels:
            found.setdefault((p["tag"], label), {}).setdefault(p["epochs"], []).append(p)
    return found


def curve_order(key: tuple) -> tuple:
    tag, label = key
    return tag, 10**9 if label == "K = E" else int(label.split("= ")[1])


def report_tables(points: list, refs: list) -> str:
    """The HM (and neon) table of every curve against epochs, and the references, mean ± std over seeds."""
    found = curves(points)
    epochs = sorted({p["epochs"] for p in points})
    lines = ["| variant | views | " + " | ".join(f"E = {e}" for e in epochs) + " |"]
    lines.append("|---|---|" + "---|" * len(epochs))
    for (tag, label), by_epochs in sorted(found.items(), key=lambda kv: curve_order(kv[0])):
        cells = []
        for e in epochs:
            got = by_epochs.get(e, [])
            cells.append(
                f"{mean_std([p['hm'] for p in got])} (neon {mean_std([p['neon'] for p in got])}; "
                f"{statistics.fmean(p['cached_s'] for p in got):.0f} s / "
                f"{statistics.fmean(p['streaming_s'] for p in got):.0f} s; n={len(got)})"
                if got
                else ""
            )
        lines.append(f"| {tag} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", reference_table(refs)])


def reference_table(refs: list) -> str:
    """The teacher, the zero-shot student and the labelled ceiling, mean ± std over `refs`' seeds."""
    lines = ["| reference | base | novel | HM | neon | seeds |", "|---|---|---|---|---|---|"]
    for name in dict.fromkeys(name for r in refs for name in r):  # every reference, in first-seen order
        rows = [r[name] for r in refs if name in r]
        cells = " | ".join(mean_std([r[k] for r in rows]) for k in ("base", "novel", "hm", "neon"))
        lines.append(f"| {name} | {cells} | {len(rows)} |")
    return "\n".join(lines)


def seeds_table(points: list, refs: dict) -> str:
    """Every (variant, E, K) measured on two seeds or more: base, novel, HM, neon, teacher-gap closure
    ((HM − student zero-shot) / (teacher − student zero-shot), per seed) and wall time, mean ± std."""
    runs: dict = {}
    for p in points:
        runs.setdefault((p["tag"], p["epochs"], p["views"]), []).append(p)
    lines = [
        "| variant | E | K | base | novel | HM | neon | teacher-gap closure | cached s | streaming s | seeds |"
    ]
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for (tag, epochs, views), got in sorted(runs.items()):
        if len(got) < 2:
            continue
        closure = []
        for p in got:
            ref = refs.get(p["seed"])
            if ref:
                zero, teacher = ref["student zero-shot"]["hm"], ref["teacher zero-shot"]["hm"]
                closure.append((p["hm"] - zero) / (teacher - zero))
        cells = [mean_std([p[k] for p in got]) for k in ("base", "novel", "hm", "neon")]
        cells += [mean_std(closure, 3) if closure else ""]
        cells += [f"{statistics.fmean(p[k] for p in got):.0f}" for k in ("cached_s", "streaming_s")]
        seeds = "/".join(str(p["seed"]) for p in sorted(got, key=lambda p: p["seed"]))
        lines.append(f"| {tag} | {epochs} | {views} | {' | '.join(cells)} | {seeds} |")
    return "\n".join(lines)


def label_free_choice(points: list, metric: str = "heldout_kl") -> str:
    """Per seed, the point a sweep's selection picks: the lowest held-out KL at T = 1 (`metric:
    heldout_kl`, no labels), or the highest `val_accuracy` (16 labelled val images per base class, the
    rule among teachers and ensembles; never test); its test HM, the regret (the best test HM of the
    seed's points minus the picked one's) and the Spearman correlation of the metric with test HM."""
    from label_free_selection import spearman

    sign, words = (-1, "lowest held-out KL") if metric == "heldout_kl" else (1, "highest val accuracy")
    lines = [f"| seed | points | picked ({words}) | its {metric} | its HM | best HM | regret | Spearman |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    for seed in sorted({p["seed"] for p in points}):
        mine = [p for p in points if p["seed"] == seed and metric in p]
        if len(mine) < 2:
            continue
        picked, best = max(mine, key=lambda p: sign * p[metric]), max(p["hm"] for p in mine)
        rho = spearman([sign * p[metric] for p in mine], [p["hm"] for p in mine])
        lines.append(
            f"| {seed} | {len(mine)} | {picked['tag']}, E = {picked['epochs']}, K = {picked['views']} | "
            f"{picked[metric]:.{4 if sign < 0 else 2}f} | {picked['hm']:.2f} | {best:.2f} | {best - picked['hm']:.2f} | {rho:+.3f} |"
        )
    return "\n".join(lines)


def plot(points: list, refs: list, path: Path) -> None:
    """HM against epochs (log scale), one line per curve (mean over seeds), the references as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.5))
    styles = {tag: ("-", "--", "-.", ":")[i % 4] for i, tag in enumerate(sorted({p["tag"] for p in points}))}
    colours = plt.get_cmap("tab20").colors  # one colour per curve: a single point is a diamond
    ordered = sorted(curves(points).items(), key=lambda kv: curve_order(kv[0]))
    for i, ((tag, label), by_epochs) in enumerate(ordered):
        xs = sorted(by_epochs)
        ys = [statistics.fmean(p["hm"] for p in by_epochs[e]) for e in xs]
        marker = "o" if len(xs) > 1 else "D"
        ax.plot(xs, ys, marker=marker, ls=styles[tag], color=colours[i % 20], label=f"{tag}: {label}")
    for name, style in (
        ("teacher zero-shot", ":"),
        *((n, "--") for n in refs[0] if n.startswith("labelled")),
    ):
        value = statistics.fmean(r[name]["hm"] for r in refs)
        ax.axhline(value, color="black", ls=style, label=f"{name}: {value:.2f}")
    zero = statistics.fmean(r["student zero-shot"]["hm"] for r in refs)
    ax.set_xscale("log", base=2)
    ticks = sorted({p["epochs"] for p in points})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("epochs E (each point: a fresh student, cosine over E)")
    ax.set_ylabel("test HM, base-to-novel (%)")
    seeds = sorted({p["seed"] for p in points})
    ax.set_title(
        f"Patient teaching on the toy world (seeds {', '.join(map(str, seeds))}; "
        f"student zero-shot {zero:.2f}, off the axis)"
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, grid_seeds: list, command: str) -> str:
    """patient.md (the curves of --grid-seeds, the label-free choice per seed, every point measured on
    two seeds or more), patient.csv (every point) and patient.png (the curves)."""
    points = [json.loads(p.read_text()) for p in sorted((out / "points").glob("*-e*-k*.json"))]
    by_seed = {
        int(re.search(r"-seed(\d+)-", p.name).group(1)): json.loads(p.read_text())
        for p in sorted((out / "points").glob("references-*.json"))
    }
    refs = list(by_seed.values())
    grid = [p for p in points if p["seed"] in grid_seeds]
    grid_refs = [by_seed[seed] for seed in grid_seeds if seed in by_seed]
    if not grid or not grid_refs:
        raise SystemExit(f"error: {out / 'points'} holds no points and references of seeds {grid_seeds} yet.")
    with open(out / "patient.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_KEYS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(points)
    plot(grid, grid_refs, out / "patient.png")
    text = "\n".join(
        [
            "# Patient teaching: test HM against epochs, per number of cached views K",
            "",
            f"Last command: `{command}`. Each cell: HM mean ± std over seeds (neon accuracy; wall time "
            "cached / streaming, mean over seeds, this machine, one process; seeds).",
            "",
            report_tables(grid, grid_refs),
            "",
            "Chosen without labels, over every point of a --grid-seeds seed (the held-out slice: the job's "
            "`data.heldout_split` images, full views, the teacher's features of them):",
            "",
            label_free_choice(grid),
            "",
            "Chosen on 16 labelled val images per base class (`val_accuracy`, a sweep's rule among teachers "
            "and ensembles; never test), over the points that have it:",
            "",
            label_free_choice(grid, "val_accuracy"),
            "",
            "Every point measured on two seeds or more (wall time: mean over seeds):",
            "",
            seeds_table(points, by_seed),
            "",
            f"The references on seeds {', '.join(map(str, sorted(by_seed)))}:",
            "",
            reference_table(refs),
            "",
        ]
    )
    (out / "patient.md").write_text(text)
    return text
