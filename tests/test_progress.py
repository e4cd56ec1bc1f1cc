"""The progress line (step / total, elapsed, ETA, tokens/s, loss, accuracy) in its live and plain
forms, the console a display mode gives, and the end-of-run summary."""

import io
import json
import re

import pytest
from rich.console import Console

from cookbook.training.display import (
    TrainingProgress,
    format_duration,
    format_wall_time,
    make_console,
    next_eval_command,
    print_run_summary,
    progress_line,
)
from cookbook.training.metrics import MetricLogger

# Anything but a newline below 0x20, and DEL: what a log file should never hold.
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def step_metrics(loss: float, accuracy: float, tokens: int = 1000, batch_time: float = 4.0) -> dict:
    return {"dpo_loss": loss, "accuracy": accuracy, "num_tokens": tokens, "batch_time": batch_time,
            "learning_rate": 1e-5}


def plain_console(width: int = 200) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=width), out


def test_durations_and_the_line_format():
    assert [format_duration(s) for s in (0, 59.6, 61, 3600 + 62, None, -1)] == ["0:00", "1:00", "1:01",
                                                                                  "1:01:02", "?", "?"]
    line = progress_line(12, 20, 83.0, 55.0, 273.4, {"dpo_loss": 0.47034, "accuracy": 0.875})
    assert line == "step 12/20 | elapsed 1:23 | ETA 0:55 | 273 tok/s | dpo_loss 0.4703 | accuracy 0.8750"
    assert progress_line(0, 20, 5.0, None, None, {}) == "step 0/20 | elapsed 0:05 | ETA ?"


def test_plain_lines_carry_eta_throughput_and_latest_metrics():
    """ETA = mean wall time per step so far x steps left; tok/s = tokens / the steps' batch_time."""
    console, out = plain_console()
    clock = FakeClock()
    with TrainingProgress(console, total_steps=5, clock=clock) as progress:
        assert not progress.live_line  # no terminal
        clock.now += 10  # step 1 took 10 s of wall time (4 s of it the step itself)
        progress.update(1, step_metrics(0.69, 0.5))
        clock.now += 20  # an eval ran too: 30 s for two steps
        progress.update(2, step_metrics(0.61, 0.75, tokens=2000, batch_time=6.0))
    lines = out.getvalue().splitlines()
    assert lines == [
        "step 1/5 | elapsed 0:10 | ETA 0:40 | 250 tok/s | dpo_loss 0.6900 | accuracy 0.5000",
        "step 2/5 | elapsed 0:30 | ETA 0:45 | 300 tok/s | dpo_loss 0.6100 | accuracy 0.7500",
    ]
    assert not CONTROL.search(out.getvalue())


def test_a_resumed_run_counts_eta_from_its_own_steps():
    console, out = plain_console()
    clock = FakeClock()
    progress = TrainingProgress(console, total_steps=100, start_step=90, clock=clock, shown_metrics=("loss",))
    progress.start()
    clock.now += 5
    progress.update(91, {"loss": 2.5, "num_tokens": 500, "batch_time": 5.0})
    progress.close()
    assert out.getvalue() == "step 91/100 | elapsed 0:05 | ETA 0:45 | 100 tok/s | loss 2.5000\n"


def test_live_line_on_a_terminal_pauses_and_prints_its_last_state():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160)
    clock = FakeClock()
    with TrainingProgress(console, total_steps=4, clock=clock) as progress:
        assert progress.live_line and progress._live is not None
        clock.now += 8
        progress.update(1, step_metrics(0.69, 0.5, batch_time=8.0))
        console.print("a table printed during the run")
        with progress.paused():
            assert progress._live is None  # another bar can draw now
        assert progress._live is not None
        clock.now += 8
        progress.update(2, step_metrics(0.6, 0.625, batch_time=8.0))
    assert progress._live is None
    text = out.getvalue()
    assert "a table printed during the run" in text
    assert "step 1/4 | elapsed 0:08 | ETA 0:24 | 125 tok/s | dpo_loss 0.6900 | accuracy 0.5000" in text
    final = "step 2/4 | elapsed 0:16 | ETA 0:16 | 125 tok/s | dpo_loss 0.6000 | accuracy 0.6250"
    assert text.rstrip().endswith(final)  # the last state stays in the scrollback


def test_display_plain_writes_no_control_characters_even_on_a_terminal(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("FORCE_COLOR", "1")  # behave as a terminal would
    assert make_console("rich").is_terminal
    console = make_console("plain")
    assert not console.is_terminal
    logger = MetricLogger(tmp_path, console)
    with TrainingProgress(console, total_steps=2, display="plain") as progress:
        logger.log_metrics(step_metrics(0.69, 0.5), 1)
        progress.update(1, step_metrics(0.69, 0.5))
    print_run_summary(console, tmp_path, tmp_path / "final", 12.0, "python -m x")
    text = capsys.readouterr().out
    assert "step 1/2 |" in text and "dpo_loss" in text and "final checkpoint:" in text
    assert not CONTROL.search(text), repr(CONTROL.search(text))


def test_rich_display_without_a_terminal_falls_back_to_plain_lines():
    console, out = plain_console()
    progress = TrainingProgress(console, total_steps=3, display="rich", clock=FakeClock())
    assert not progress.live_line
    progress.update(1, step_metrics(0.69, 0.5))
    progress.close()
    assert out.getvalue().startswith("step 1/3 |")


def test_a_quiet_console_shows_nothing_and_bad_display_is_refused():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, quiet=True)
    with TrainingProgress(console, total_steps=3) as progress:
        assert progress._live is None
        progress.update(1, step_metrics(0.69, 0.5))
    assert out.getvalue() == ""
    with pytest.raises(ValueError, match="display='fancy' is not one of rich, plain"):
        TrainingProgress(console, total_steps=3, display="fancy")


def test_run_summary_shows_checkpoint_held_out_change_wall_time_and_next_command(tmp_path):
    records = [
        {"step": 0, "data/train_pairs": 320},
        {"step": 0, "test/dpo_loss": 0.6931, "test/accuracy": 0.5, "test/margin": 0.0, "test/nll": 2.05,
         "test/chosen_reward": 0.0},
        {"step": 1, "dpo_loss": 0.69, "accuracy": 0.5},
        {"step": 2, "dpo_loss": 0.5, "accuracy": 0.9},
        {"step": 2, "test/dpo_loss": 0.4968, "test/accuracy": 0.78125, "test/margin": 0.5607, "test/nll": 2.0242,
         "test/chosen_reward": 0.31},
    ]
    log_path = tmp_path / "runs dir" / "dpo-demo"
    log_path.mkdir(parents=True)
    (log_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (log_path / "metrics.png").write_bytes(b"")
    final = log_path / "final"
    command = next_eval_command(final, "smollm2-135m-instruct", tasks="cookbook/ifeval,cookbook/preference")
    console, out = plain_console(width=60)  # narrower than the command: it must not be wrapped
    print_run_summary(console, log_path, final, 242.4, command)
    lines = out.getvalue().splitlines()
    assert "2 steps, 4 min 2 s wall clock" in lines
    assert f"final checkpoint: {final}" in lines
    assert "held-out, step 0 -> step 2:" in lines
    assert "  test/dpo_loss  0.6931 -> 0.4968" in lines
    assert "  test/accuracy  0.5000 -> 0.7812" in lines
    assert "  test/margin    0.0000 -> 0.5607" in lines
    assert not any("chosen_reward" in line for line in lines)  # headline metrics only
    assert f"curves: {log_path / 'metrics.png'}" in lines
    assert f"  {command}" in lines
    assert command == (f"python -m cookbook.eval.run_inspect_evals 'model_path={final}' "
                       "compare_model_path=smollm2-135m-instruct tasks=cookbook/ifeval,cookbook/preference")


def test_wall_time_wording():
    assert [format_wall_time(s) for s in (42.2, 242.4, 3600 * 2 + 180)] == ["42 s", "4 min 2 s", "2 h 3 min"]
