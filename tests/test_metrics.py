"""The metrics sink: metrics.jsonl (a torn last line is skipped, any other bad line is named),
and the trackers beside it receive the same keys and values (TensorBoard read back from its
event file)."""

import io
import json
import sys

import pytest
from rich.console import Console

from cookbook.training.metrics import (
    MetricLogger,
    MetricsFileError,
    TensorBoardTracker,
    read_metrics,
    start_trackers,
    truncate_metrics,
)


def quiet_console() -> Console:
    return Console(file=io.StringIO(), force_terminal=False)


class RecordingTracker:
    def __init__(self):
        self.logged, self.closed = [], False

    def log(self, metrics, step):
        self.logged.append((step, dict(metrics)))

    def close(self):
        self.closed = True


def test_logger_writes_jsonl_and_fans_out_to_trackers(tmp_path):
    tracker = RecordingTracker()
    logger = MetricLogger(tmp_path, quiet_console(), trackers=[tracker])
    logger.log_metrics({"dpo_loss": 0.69, "num_pairs": 16}, 1)
    logger.log_metrics({}, 1)  # an eval with no held-out data logs nothing
    logger.log_metrics({"test/accuracy": 0.75}, 1)
    logger.close()
    assert read_metrics(tmp_path) == [{"step": 1, "dpo_loss": 0.69, "num_pairs": 16},
                                      {"step": 1, "test/accuracy": 0.75}]
    assert tracker.logged == [(1, {"dpo_loss": 0.69, "num_pairs": 16}), (1, {"test/accuracy": 0.75})]
    assert tracker.closed
    # A single tracker (or None) is accepted where a list is expected.
    assert MetricLogger(tmp_path, quiet_console(), trackers=tracker).trackers == [tracker]
    assert MetricLogger(tmp_path, quiet_console(), trackers=None).trackers == []


def test_torn_last_line_is_skipped_and_truncation_removes_it(tmp_path):
    good = [{"step": 0, "test/nll": 2.0}, {"step": 1, "loss": 1.5}, {"step": 2, "loss": 1.4}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"step": 3, "lo')
    assert read_metrics(tmp_path) == good
    truncate_metrics(tmp_path, 1)
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in good[:2])
    # The next record starts on a line of its own.
    MetricLogger(tmp_path, quiet_console()).log_metrics({"loss": 1.45}, 2)
    assert read_metrics(tmp_path)[-1] == {"step": 2, "loss": 1.45}


def test_a_bad_line_in_the_middle_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "loss": 1}\n{"step": 1, "loss": \n\n{"step": 2, "loss": 3}\n')
    with pytest.raises(MetricsFileError, match=rf"{path}:2: not a JSON record"):
        read_metrics(tmp_path)
    path.write_text('{"step": 0, "loss": 1}\n[1, 2]\n{"step": 2, "loss": 3}\n')
    with pytest.raises(MetricsFileError, match=r"metrics.jsonl:2: a record must be a JSON object with an integer 'step'"):
        read_metrics(tmp_path)
    assert read_metrics(tmp_path / "no-run-yet") == []


def test_tensorboard_gets_the_same_keys_and_values(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records = [(0, {"data/train_pairs": 320, "test/accuracy": 0.5}),
               (1, {"dpo_loss": 0.6931, "accuracy": 0.5, "learning_rate": 1e-5, "num_pairs": 16}),
               (2, {"dpo_loss": 0.61, "accuracy": 0.75, "learning_rate": 5e-6, "num_pairs": 16}),
               (2, {"test/accuracy": 0.78125})]
    trackers = start_trackers({}, tmp_path, tensorboard_dir=str(tmp_path / "tb"))
    assert [type(t) for t in trackers] == [TensorBoardTracker]
    logger = MetricLogger(tmp_path, quiet_console(), trackers=trackers)
    for step, metrics in records:
        logger.log_metrics(metrics, step)
    logger.close()

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    logged_keys = {key for record in read_metrics(tmp_path) for key in record if key != "step"}
    assert set(events.Tags()["scalars"]) == logged_keys
    for key in logged_keys:
        expected = [(step, metrics[key]) for step, metrics in records if key in metrics]
        got = [(event.step, event.value) for event in events.Scalars(key)]
        assert [s for s, _ in got] == [s for s, _ in expected], key
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6), key


def test_missing_tensorboard_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were absent
    with pytest.raises(SystemExit, match=r"tensorboard_dir='.*tb' needs the tensorboard package: pip install 'cookbook\[tensorboard\]'"):
        start_trackers({}, tmp_path, tensorboard_dir=str(tmp_path / "tb"))
    assert start_trackers({}, tmp_path) == []
