"""The console of a run: Ctrl-C is one line saying where the run was and how to resume it; Ray Data's
advice (`UserWarning`s) stays off the console; a sweep's live table shows each trial's epoch and the
space's metric."""

import logging
import warnings

import pytest

import promptkd_ray.cli as cli
from promptkd_ray.orchestration.progress import describe_epoch

CONCURRENCY_ADVICE = (
    "The maximum number of concurrent tasks for 'MapBatches(decode)' is set to 2, but the operator only "
    "received 1 input(s)."
)


class _Interrupted:
    """A command module whose run prints `done` epoch lines through the console, then gets Ctrl-C."""

    def __init__(self, done: int, total: int):
        self.done, self.total = done, total

    def add_arguments(self, parser) -> None:
        parser.add_argument("--config")

    def run(self, args) -> int:
        console = logging.getLogger("promptkd_ray.orchestration.progress")
        for epoch in range(self.done):
            console.info("%s", describe_epoch(epoch, self.total, {"loss": 0.5}))
        raise KeyboardInterrupt


@pytest.mark.parametrize(
    "done, total, line",
    [
        (3, 8, "interrupted at epoch 4/8; run the same command again to resume"),
        (0, 8, "interrupted; run the same command again to resume"),
        (8, 8, "interrupted after the last epoch (8/8); run the same command again to resume"),
    ],
)
def test_ctrl_c_is_one_line_naming_the_epoch_and_how_to_resume(done, total, line, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_module", lambda command: _Interrupted(done, total))
    assert cli.main(["distill", "--config", "jobs/toy_b2n.yaml"]) == 130
    err = capsys.readouterr().err
    assert err.splitlines() == [line]
    assert "Traceback" not in err


def test_the_epoch_handler_is_removed_after_the_command(monkeypatch):
    monkeypatch.setattr(cli, "_module", lambda command: _Interrupted(1, 2))
    before = list(logging.getLogger("promptkd_ray").handlers)
    cli.main(["distill"])
    assert logging.getLogger("promptkd_ray").handlers == before


def test_ray_data_user_warnings_stay_off_the_console_and_others_stay():
    from promptkd_ray.orchestration.cluster import configure_ray_data

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        logging.getLogger().setLevel(logging.INFO)
        configure_ray_data()
        module = "ray.data._internal.execution.operators.task_pool_map_operator"
        warnings.warn_explicit(CONCURRENCY_ADVICE, UserWarning, "task_pool_map_operator.py", 319, module)
        warnings.warn_explicit("a warning of ours", UserWarning, "decode.py", 1, "promptkd_ray.data.decode")
        warnings.warn_explicit("deprecated", DeprecationWarning, "util.py", 1, "ray.data._internal.util")
    ours = {CONCURRENCY_ADVICE, "a warning of ours", "deprecated"}  # importing Ray warns too
    assert [str(w.message) for w in shown if str(w.message) in ours] == ["a warning of ours", "deprecated"]


def test_the_live_table_shows_each_trials_epoch_and_the_spaces_metric():
    from ray.tune.experiment import Trial
    from ray.tune.progress_reporter import _trial_progress_table

    from promptkd_ray.config.space import read_space
    from promptkd_ray.orchestration.tuning import live_table

    space = read_space("tune_spaces/toy.yaml")
    table = live_table(space)
    trial = Trial("trial", config={"loss.temperature": 2}, stub=True, trial_id="t1")
    trial.update_last_result({"training_iteration": 3, "epoch": 2, space.metric: 0.8466, "loss": 1.5})
    lines = "\n".join(_trial_progress_table([trial], table._metric_columns, table._parameter_columns))
    header, row = (
        [cell.strip() for cell in line.split("|")]
        for line in lines.splitlines()
        if "Trial name" in line or "t1" in line
    )
    cells = dict(zip(header, row))
    assert cells["epoch"] == "3" and cells[space.metric] == "0.8466" and "loss" not in cells
    assert table._metric == space.metric and table._mode == space.mode
