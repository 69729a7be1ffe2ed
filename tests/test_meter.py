"""A Train worker's epoch pieces (`orchestration/meter.py`): the batches a worker reads and the meter."""

import pytest
from stage2_fakes import make_split_json, tiny_job

from promptkd_ray.config import distill_job_from_dict
from promptkd_ray.data.sources import ParquetSource, PathSource, resolve_source
from promptkd_ray.orchestration.audit import IdAudit
from promptkd_ray.orchestration.meter import BatchPlan, EpochMeter, epoch_batches


class FakeShard:
    """A dataset shard yielding `sizes`-long batches of ids; remembers how it was asked."""

    def __init__(self, sizes):
        self.sizes, self.asked = sizes, None

    def iter_torch_batches(self, **options):
        self.asked = options
        start = 0
        for n in self.sizes:
            if options["drop_last"] and n < options["batch_size"]:
                return
            yield {"id": [f"i{start + k}" for k in range(n)]}
            start += n


def test_the_short_last_batch_is_recorded_by_the_audit_but_never_trained():
    plain, audited = FakeShard([4, 4, 3]), FakeShard([4, 4, 3])
    audit = IdAudit()
    assert [len(b["id"]) for b in epoch_batches(plain, BatchPlan(4, seed=1), 0)] == [4, 4]
    assert [len(b["id"]) for b in epoch_batches(audited, BatchPlan(4, seed=1), 0, audit)] == [4, 4]
    assert plain.asked["drop_last"] and not audited.asked["drop_last"]
    assert len(audit.trained) == 8 and audit.dropped == ["i8", "i9", "i10"]


def test_a_local_shuffle_is_seeded_by_seed_and_epoch_and_only_with_a_buffer():
    shard = FakeShard([2])
    list(epoch_batches(shard, BatchPlan(2, seed=3, local_shuffle=8), 5))
    assert (
        shard.asked["local_shuffle_buffer_size"] == 8 and shard.asked["local_shuffle_seed"] == 3 * 100_003 + 5
    )
    list(epoch_batches(shard, BatchPlan(2, seed=3), 5))
    assert shard.asked["local_shuffle_seed"] is None and shard.asked["local_shuffle_buffer_size"] is None


def test_the_meter_averages_over_images_and_counts_time_from_the_first_batch():
    meter = EpochMeter(world=1)
    for _ in meter.timed(iter([1, 2])):
        pass
    meter.add({"loss": 1.0, "kd": 0.5, "agreement": 50.0}, 2)
    meter.add({"loss": 4.0, "agreement": 100.0}, 6)  # no "kd": the loss is the KD loss
    result = meter.result()
    assert result["loss"] == pytest.approx((2 + 24) / 8) and result["kd_loss"] == pytest.approx((1 + 24) / 8)
    assert result["train_agreement"] == pytest.approx((100 + 600) / 8) and result["images"] == 8
    assert result["epoch_seconds"] == pytest.approx(result["startup_s"] + 8 / result["images_per_s"])


def test_an_empty_epoch_reports_zero_images_without_dividing_by_zero():
    result = EpochMeter(world=2).result()
    assert result["images"] == 0 and result["loss"] == 0.0


def test_data_limit_is_read_by_resolve_source_for_every_kind(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, _ = make_split_json(tmp_path, per_class=5)
    job = distill_job_from_dict(
        tiny_job(root, tmp_path / "runs", "l", data={"limit": 6, "heldout_images": 0})
    )
    paths = resolve_source(job.data, job.seed)
    assert type(paths) is PathSource and paths.num_train == 6
    pq.write_table(pa.table({"image": pa.array([b"x"] * 10, pa.binary())}), tmp_path / "t.parquet")
    data = {"source": "parquet", "parquet": str(tmp_path / "t.parquet"), "limit": 4, "heldout_images": 0}
    job = distill_job_from_dict({**tiny_job(root, tmp_path / "runs", "p"), "data": data})
    table = resolve_source(job.data, job.seed)
    assert type(table) is ParquetSource and table.limit == 4 and table.parquet_rows == 10
    assert table.num_train == 4  # the stream reads 4 rows: steps per epoch count those, not the table's


def test_a_runs_phases_add_up_from_the_driver_and_rank_0_marks():
    from promptkd_ray.orchestration.timeline import phases

    driver = {"start": 0.0, "setup": 2.0, "datasets": 5.0, "fit": 6.0, "fitted": 40.0, "finished": 41.5}
    worker = {"start": 20.0, "ready": 22.0}
    for e, at in enumerate((22.0, 30.0)):  # epoch e starts when e − 1 was reported
        worker.update({f"trained_{e}": at + 5, f"scored_{e}": at + 6, f"reported_{e}": at + 8})
    out = phases(driver, worker)
    assert out == {
        "setup_s": 2.0,
        "datasets_s": 4.0,
        "worker_group_start_s": 14.0,
        "worker_setup_s": 2.0,
        "training_s": 10.0,
        "heldout_scoring_s": 2.0,
        "reports_s": 4.0,
        "shutdown_s": 2.0,
        "finish_s": 1.5,
        "total_s": 41.5,
    }
    assert sum(v for k, v in out.items() if k != "total_s") == out["total_s"]  # every second in one phase
    assert phases(driver, {}) == {}
