"""The console of a training run: one progress bar per epoch and one line per epoch, on the driver
(and `BuildProgress`, the same for a soft-label cache build).

    rank 0 (a Ray Train worker)                  driver (`promptkd-ray distill`, `teacher`, `demo`)
    reporter.step(epoch, step, loss, …)  ──►  ProgressBoard actor  ──►  Console: tqdm bar per epoch
    reporter.epoch_end(epoch, metrics)   ──►   (a list of events)  ──►  "epoch 3/8: loss …" (logging)

Design decisions:
- Workers' output is not forwarded to the driver (`cluster.connect`), so rank 0 posts its progress
  to a tiny actor (`bookkeeping.ProgressBoard`, no CPU) and the driver polls it from a thread while
  `trainer.fit()` blocks. Posting is fire-and-forget and throttled (one event per second at most,
  plus each epoch's end), so training never waits on the console.
- The bar shows steps, loss, agreement (or accuracy) and images/s; images/s counts from the
  epoch's first batch, so the per-epoch start-up does not make it climb. The bar is drawn only
  on a terminal (tqdm's `disable=None`): job logs and CI get the epoch lines alone.
- The same board serves both stages; `ray.progress_bars: false` turns the bars off.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

from .bookkeeping import start_board

log = logging.getLogger(__name__)

POLL_S = 0.5
POST_EVERY_S = 1.0


class Reporter:
    """Rank 0's side: throttled step events and one event per epoch end to the board, and the same
    values to TensorBoard — every `log_every`-th global step under `STAGE/step/…`, each epoch's
    metrics under `STAGE/…` at the epoch's index. Other ranks pass neither and it does nothing."""

    def __init__(
        self,
        board,
        epochs: int,
        steps_per_epoch: int,
        tensorboard=None,
        log_every: int = 0,
        stage: str = "distill",
    ):
        self.board, self.epochs, self.steps_per_epoch = board, epochs, steps_per_epoch
        self.tensorboard, self.log_every, self.stage = tensorboard, log_every, stage
        self._last = 0.0

    def step(self, epoch: int, step_in_epoch: int, global_step: int = 0, **values: float) -> None:
        if self.tensorboard is not None and self.log_every and global_step % self.log_every == 0:
            self.tensorboard.scalars(values, step=global_step, prefix=f"{self.stage}/step/", flush=False)
        now = time.monotonic()
        if self.board is None or now - self._last < POST_EVERY_S:
            return
        self._last = now
        self.board.post.remote(
            {
                "type": "step",
                "epoch": epoch,
                "step": step_in_epoch,
                "epochs": self.epochs,
                "steps": self.steps_per_epoch,
                **values,
            }
        )

    def epoch_end(self, epoch: int, metrics: dict) -> None:
        if self.tensorboard is not None:
            self.tensorboard.scalars(metrics, step=epoch, prefix=f"{self.stage}/")
        if self.board is not None:
            self.board.post.remote(
                {"type": "epoch", "epoch": epoch, "epochs": self.epochs, "metrics": metrics}
            )

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


class Console:
    """Driver's side: `with Console(title, show_bars) as board:` — pass `board` to the workers."""

    def __init__(self, title: str, show_bars: bool = True, describe=None):
        self.title, self.show_bars = title, show_bars
        self.describe = describe or describe_epoch
        self.board = None
        self._bar = None
        self._bar_epoch: Optional[int] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self):
        self.board = start_board()
        self._thread = threading.Thread(target=self._poll, name="promptkd-progress", daemon=True)
        self._thread.start()
        return self.board

    def __exit__(self, *exc) -> None:
        import ray

        self._stop.set()
        self._thread.join(timeout=5)
        self._drain()
        self._close_bar()
        ray.kill(self.board)

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self._drain()
            except Exception as exc:  # the console must never end a run
                log.debug("progress polling failed: %s", exc)

    def _drain(self) -> None:
        import ray

        for event in ray.get(self.board.take.remote()):
            if event["type"] == "step":
                self._show_step(event)
            else:
                self._close_bar()
                log.info("%s", self.describe(event["epoch"], event["epochs"], event["metrics"]))

    def _show_step(self, event: dict) -> None:
        from tqdm import tqdm

        if not self.show_bars:
            return
        if self._bar_epoch != event["epoch"]:
            self._close_bar()
            self._bar = tqdm(
                total=event["steps"],
                desc=f"{self.title} epoch {event['epoch'] + 1}/{event['epochs']}",
                unit="step",
                disable=None,
                leave=False,
                dynamic_ncols=True,
            )
            self._bar_epoch = event["epoch"]
        self._bar.n = min(event["step"], event["steps"])
        values = {k: event[k] for k in ("loss", "agreement", "accuracy", "images_per_s") if k in event}
        self._bar.set_postfix(
            {k.replace("images_per_s", "img/s"): f"{v:.4g}" for k, v in values.items()}, refresh=True
        )

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._bar_epoch = None, None


class BuildProgress:
    """The driver's view of a soft-label cache build: a bar over all views (on a terminal) and a
    line per finished part with its rate. `with BuildProgress(total_views, show_bar) as p:`."""

    def __init__(self, total: int, show_bar: bool = True):
        self.total, self.show_bar, self.written, self.reused = total, show_bar, 0, 0
        self._bar = None
        self._started = time.perf_counter()

    def __enter__(self):
        from tqdm import tqdm

        self._bar = tqdm(
            total=self.total,
            desc="soft-label cache",
            unit="view",
            disable=None if self.show_bar else True,
            dynamic_ncols=True,
        )
        return self

    def __exit__(self, *exc) -> None:
        self._bar.close()

    def rows(self, n: int, reused: bool = False) -> None:
        self.written += n
        self.reused += n if reused else 0
        self._bar.update(n)

    def part(self, name: str, rows: int, done: int, total: int) -> None:
        seconds = time.perf_counter() - self._started
        log.info(
            "%s: %d views written (%d/%d parts; %d/%d views in %.0f s, %.1f views/s)",
            name,
            rows,
            done,
            total,
            self.written,
            self.total,
            seconds,
            (self.written - self.reused) / max(seconds, 1e-9),
        )


def describe_epoch(epoch: int, epochs: int, metrics: dict) -> str:
    """`epoch 3/8: loss 0.1234, agreement 81.2%, held-out agreement 80.1%, …` from a metrics dict."""
    names = {
        "loss": "loss {:.4g}",
        "kd_loss": "kd {:.4g}",
        "train_agreement": "agreement {:.1f}%",
        "heldout_agreement": "held-out agreement {:.1f}%",
        "heldout_kl": "held-out KL {:.4g}",
        "accuracy": "accuracy {:.1f}%",
        "lr": "lr {:.3g}",
        "images_per_s": "{:.0f} img/s",
        "bad_images": "{} unreadable image(s) skipped",
    }
    parts = [fmt.format(metrics[key]) for key, fmt in names.items() if metrics.get(key) not in (None, 0)]
    return f"epoch {epoch + 1}/{epochs}: " + ", ".join(parts)
