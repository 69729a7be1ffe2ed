"""`promptkd-ray predict`: top-k class predictions of a student for a folder (or URI) of images.

Writes one row per readable image: path, then k columns each of label, class name and
probability (softmax of the student's logits over all classes). Output format from the suffix:
`.parquet` or `.csv`. Images go through the one decoder with the training jobs' rules
(--max-image-pixels, --exif-orientation); unreadable files (including one over the pixel limit) are
skipped and counted in the log.
"""

from __future__ import annotations

import argparse
import logging

from .args import add_decode_arguments, decode_options

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--student", required=True, help="student artifact")
    p.add_argument("--class-vectors", required=True, help="class vectors the student was distilled against")
    p.add_argument("--images", required=True, help="folder or URI of images (searched recursively)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--out", required=True, help="predictions file: .parquet or .csv")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--no-ray", action="store_true", help="encode in-process instead of Ray Data")
    add_decode_arguments(p)


def run(args) -> int:
    from ..config.sections import RayConfig
    from ..core.artifacts import ModelRef, read_student_info
    from ..core.classvectors import load_class_vectors
    from ..data.folders import list_images
    from ..errors import UsageError
    from ..orchestration import cluster
    from ..orchestration.inference import encode_items

    if not args.out.endswith((".parquet", ".csv")):
        raise UsageError(f"--out must end in .parquet or .csv, got {args.out!r}.")
    options = decode_options(args)
    info = read_student_info(args.student)
    cv = load_class_vectors(args.class_vectors, expected_dim=info.teacher_dim)
    if info.class_vectors_sha256 and info.class_vectors_sha256 != cv.sha256:
        log.warning(
            "the student was distilled against other class vectors (sha256 %s…, given %s…)",
            info.class_vectors_sha256[:12],
            cv.sha256[:12],
        )
    paths = list(list_images(args.images))
    if not args.no_ray:
        cluster.connect(RayConfig(), cpus_needed=2 + args.actors)
    student = ModelRef("student", args.student)
    encoded = encode_items(
        student,
        paths,
        [-1] * len(paths),
        use_ray=not args.no_ray,
        batch_size=args.batch_size,
        num_actors=args.actors,
        options=options,
    )
    table = predictions_table(encoded, cv, args.top_k, student.classifier())
    write_table(table, args.out)
    log.info(
        "%d predictions written to %s (%d unreadable images skipped%s)",
        table.num_rows,
        args.out,
        encoded.skipped,
        f", first: {sorted(encoded.unreadable)[0]}" if encoded.skipped else "",
    )
    return 0


def predictions_table(encoded, class_vectors, top_k: int, classifier):
    """path + top-k (label, class, probability) per image; `classifier(features, W)` is the student's
    (cosine similarity, through its EduAttention for a ComKD student), scaled by the logit scale."""
    import pyarrow as pa
    import torch

    k = min(top_k, class_vectors.num_classes)
    logits = class_vectors.logit_scale * classifier(encoded.features, class_vectors.vectors)
    probs, labels = torch.softmax(logits, dim=-1).topk(k, dim=-1)
    columns = {"path": encoded.paths}
    for j in range(k):
        columns[f"top{j + 1}_label"] = labels[:, j].tolist()
        columns[f"top{j + 1}_class"] = [class_vectors.classnames[i] for i in labels[:, j].tolist()]
        columns[f"top{j + 1}_prob"] = [round(p, 6) for p in probs[:, j].tolist()]
    return pa.table(columns)


def write_table(table, out: str) -> None:
    """Parquet (`.parquet`) or CSV, written atomically (a local path or a URI)."""
    import pyarrow as pa

    from ..storage import write_bytes

    sink = pa.BufferOutputStream()
    if out.endswith(".parquet"):
        import pyarrow.parquet as pq

        pq.write_table(table, sink)
    else:
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, sink)
    write_bytes(out, sink.getvalue().to_pybytes())
