"""TensorBoard for both stages: a run's scalars as event files under its `tensorboard/` folder."""

from __future__ import annotations

import shutil
import tempfile

from ..storage import Storage


class TensorBoardLog:
    """Scalars to TensorBoard event files under the run's `tensorboard/` (rank 0 only); written to a
    local staging folder and copied to the run folder after each epoch when the run is remote."""

    def __init__(self, run: Storage, rel: str = "tensorboard"):
        from torch.utils.tensorboard import SummaryWriter

        self.run, self.rel = run, rel
        local = run.local_path(rel)
        self._staging = None if local else tempfile.mkdtemp(prefix="promptkd_tb_")
        self.writer = SummaryWriter(local or self._staging)

    def scalars(self, metrics: dict, step: int, prefix: str = "", flush: bool = True) -> None:
        """Numeric values of `metrics` at `step`; `flush` also syncs the files (each epoch's end)."""
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}{key}", value, step)
        if not flush:
            return
        self.writer.flush()
        if self._staging:
            self.run.upload(self._staging, self.rel)

    def close(self) -> None:
        self.writer.close()
        if self._staging:
            self.run.upload(self._staging, self.rel)
            shutil.rmtree(self._staging, ignore_errors=True)
