"""Prediction: the top-k classes of a student for a folder (or URI) of images.

    predict(student, class_vectors, images, out, top_k, how)   encode the images (`inference`), score
                                                              them against the class vectors, write
                                                              the table; → the table

Writes one row per readable image: path, then k columns each of label, class name and
probability (softmax of the student's logits over all classes). Output format from the suffix:
`.parquet` or `.csv`. Images go through the one decoder with the training jobs' rules (pixel
limit, EXIF orientation); unreadable files (including one over the pixel limit) are skipped and
counted in the log.
"""

from __future__ import annotations

import logging

from .config.sections import RayConfig
from .core.artifacts import ModelRef, read_student_info
from .core.classvectors import load_class_vectors
from .data.folders import list_images
from .orchestration import cluster
from .orchestration.inference import Encoding, encode_items
from .storage import write_bytes

log = logging.getLogger(__name__)


def predict(
    student: str, class_vectors: str, images: str, out: str, top_k: int = 5, how: Encoding = Encoding()
):
    """The top-k predictions of the student artifact for the images under `images`, against the class
    vectors at `class_vectors`, written to `out` (.parquet or .csv); → the table (pyarrow)."""
    info = read_student_info(student)
    cv = load_class_vectors(class_vectors, expected_dim=info.teacher_dim)
    if info.class_vectors_sha256 and info.class_vectors_sha256 != cv.sha256:
        log.warning(
            "the student was distilled against other class vectors (sha256 %s…, given %s…)",
            info.class_vectors_sha256[:12],
            cv.sha256[:12],
        )
    paths = list(list_images(images))
    if how.use_ray:
        cluster.connect(RayConfig(), cpus_needed=2 + how.actors)
    model = ModelRef("student", student)
    encoded = encode_items(model, paths, [-1] * len(paths), how)
    table = predictions_table(encoded, cv, top_k, model.classifier())
    write_table(table, out)
    log.info(
        "%d predictions written to %s (%d unreadable images skipped%s)",
        table.num_rows,
        out,
        encoded.skipped,
        f", first: {sorted(encoded.unreadable)[0]}" if encoded.skipped else "",
    )
    return table


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

    sink = pa.BufferOutputStream()
    if out.endswith(".parquet"):
        import pyarrow.parquet as pq

        pq.write_table(table, sink)
    else:
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, sink)
    write_bytes(out, sink.getvalue().to_pybytes())
