"""Rank 0's reporter: every `log_every`-th global step and every epoch's metrics reach TensorBoard
(local folder or URI); the driver's epoch line."""

import pytest

from promptkd_ray.orchestration.progress import Reporter, describe_epoch
from promptkd_ray.orchestration.tensorboard import TensorBoardLog
from promptkd_ray.storage import Storage


def _scalars(folder, tag) -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0}).Reload()
    return (
        [(e.step, round(e.value, 6)) for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []
    )


@pytest.mark.parametrize("uri", [False, True])
def test_steps_every_log_every_and_each_epoch_reach_tensorboard(tmp_path, uri):
    run = Storage(f"file://{tmp_path}" if uri else tmp_path)
    reporter = Reporter(
        None, epochs=2, steps_per_epoch=5, tensorboard=TensorBoardLog(run), log_every=3, stage="teacher"
    )
    for epoch in range(2):
        for i in range(1, 6):
            reporter.step(epoch, i, epoch * 5 + i, loss=float(epoch * 5 + i), accuracy=50.0)
        reporter.epoch_end(epoch, {"epoch": epoch, "loss": 10.0 - epoch, "bad_images": 0, "flag": True})
    reporter.close()
    folder = tmp_path / "tensorboard"
    assert _scalars(folder, "teacher/step/loss") == [(3, 3.0), (6, 6.0), (9, 9.0)]
    assert _scalars(folder, "teacher/loss") == [(0, 10.0), (1, 9.0)]
    assert _scalars(folder, "teacher/flag") == []  # booleans are not scalars


def test_the_epoch_line_reads_well():
    assert (
        describe_epoch(0, 8, {"loss": 0.5, "train_agreement": 81.23, "bad_images": 2})
        == "epoch 1/8: loss 0.5, agreement 81.2%, 2 unreadable image(s) skipped"
    )
