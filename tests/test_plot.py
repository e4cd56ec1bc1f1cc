"""Plots of metrics.jsonl: the PNG is written, and the lines drawn carry exactly the logged values
(read back from each Line2D), for a finished run, a killed run with a torn last line, an SFT-style
run with other keys, and several runs in one figure."""

import json
import math

import pytest

from cookbook.training.metrics import MetricsFileError, read_metrics
from cookbook.training.plot import PLOT_NAME, RunPlot, draw_runs, load_run, main, plot_runs, write_run_plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def dpo_records(num_steps: int = 6, eval_every: int = 3, beta: float = 0.1) -> list[dict]:
    """What the DPO loop logs: the data summary and an eval at step 0, a record per step, evals."""
    records = [{"step": 0, "data/train_pairs": 48}, eval_record(0, beta)]
    for step in range(1, num_steps + 1):
        records.append({
            "step": step, "dpo_loss": math.log(2) - 0.05 * step * beta, "accuracy": 0.5 + 0.05 * step,
            "logp_accuracy": 0.6, "margin": 0.1 * step, "chosen_reward": 0.06 * step,
            "rejected_reward": -0.04 * step, "nll": 2.0 - 0.01 * step, "learning_rate": 1e-5 * (1 - step / num_steps),
            "grad_norm": 3.0 / step, "num_pairs": 16, "num_tokens": 1600 + step, "tokens_per_second": 250.0,
        })
        if step % eval_every == 0:
            records.append(eval_record(step, beta))
    return records


def eval_record(step: int, beta: float) -> dict:
    return {"step": step, "test/dpo_loss": math.log(2) - 0.04 * step * beta, "test/accuracy": 0.5 + 0.04 * step,
            "test/margin": 0.08 * step, "test/chosen_reward": 0.05 * step, "test/rejected_reward": -0.03 * step,
            "test/nll": 2.02 - 0.01 * step, "test/logp_accuracy": 0.65}


def write_run(path, records, torn_tail: str = ""):
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + torn_tail)
    return path


def lines_by_label(figure) -> dict[str, tuple[list, list]]:
    found = {}
    for axes in figure.axes:
        for line in axes.get_lines():
            found[line.get_label()] = (list(line.get_xdata()), list(line.get_ydata()))
    return found


def logged(records, key):
    points = [(r["step"], r[key]) for r in records if key in r]
    return [s for s, _ in points], [v for _, v in points]


def assert_lines_are_the_logged_values(figure, records, keys, prefix=""):
    lines = lines_by_label(figure)
    for key in keys:
        steps, values = logged(records, key)
        assert steps, key
        drawn_steps, drawn_values = lines[prefix + key]
        assert drawn_steps == steps, key
        assert drawn_values == pytest.approx(values, rel=1e-12), key


DPO_KEYS = ["dpo_loss", "accuracy", "logp_accuracy", "margin", "chosen_reward", "rejected_reward", "nll",
            "learning_rate", "grad_norm", "test/dpo_loss", "test/accuracy", "test/logp_accuracy", "test/margin",
            "test/chosen_reward", "test/rejected_reward", "test/nll"]


def test_run_plot_draws_the_logged_values_and_writes_a_png(tmp_path):
    records = dpo_records()
    run = write_run(tmp_path / "run", records)
    assert write_run_plot(run) == run / PLOT_NAME
    assert (run / PLOT_NAME).read_bytes().startswith(PNG_MAGIC)

    figure = draw_runs([load_run(run)])
    assert_lines_are_the_logged_values(figure, records, DPO_KEYS)
    titles = [axes.get_title() for axes in figure.axes]
    assert titles == ["loss", "accuracy", "log-prob accuracy", "margin", "rewards", "NLL", "learning rate", "grad norm"]
    # Held-out points are marked, training lines are not.
    for axes in figure.axes:
        for line in axes.get_lines():
            assert (line.get_marker() != "None") == line.get_label().startswith("test/"), line.get_label()


def test_the_training_plot_is_redrawn_at_most_every_refresh_interval_and_at_the_end(tmp_path):
    run = write_run(tmp_path / "run", dpo_records())
    plot = RunPlot(run, refresh_s=3600)
    assert plot.refresh() is None and not (run / PLOT_NAME).exists()  # an eval soon after the start
    assert plot.refresh(final=True) == run / PLOT_NAME
    assert (run / PLOT_NAME).read_bytes().startswith(PNG_MAGIC)
    (run / PLOT_NAME).unlink()
    assert RunPlot(run, refresh_s=0).refresh() == run / PLOT_NAME  # the interval has passed


def test_a_killed_run_with_a_torn_last_line_plots_what_was_written(tmp_path):
    records = dpo_records(num_steps=4, eval_every=2)
    run = write_run(tmp_path / "killed", records, torn_tail='{"step": 5, "dpo_loss": 0.6, "accur')
    assert read_metrics(run) == records
    out = plot_runs([run], tmp_path / "killed.png")
    assert out.read_bytes().startswith(PNG_MAGIC)
    figure = draw_runs([load_run(run)])
    assert_lines_are_the_logged_values(figure, records, DPO_KEYS)
    assert lines_by_label(figure)["dpo_loss"][0] == [1, 2, 3, 4]


def test_a_bad_line_before_the_last_names_file_and_line(tmp_path):
    run = tmp_path / "bad"
    run.mkdir()
    lines = [json.dumps(r) for r in dpo_records(num_steps=2)]
    lines[2] = lines[2][:20]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(MetricsFileError, match=r"bad/metrics.jsonl:3: not a JSON record"):
        read_metrics(run)
    # The plot written during training reports the problem instead of stopping the run.
    assert write_run_plot(run) is None


def test_sft_keys_draw_only_the_panels_with_data(tmp_path):
    records = [{"step": 0, "test/nll": 2.5}]
    for step in range(1, 5):
        records.append({"step": step, "loss": 2.4 - 0.1 * step, "nll": 2.4 - 0.1 * step, "num_tokens": 900,
                        "learning_rate": 2e-5, "grad_norm": 1.5, "tokens_per_second": 300.0, "progress": step / 4})
    records.append({"step": 4, "test/nll": 2.1})
    run = write_run(tmp_path / "sft", records)
    figure = draw_runs([load_run(run)])
    assert [axes.get_title() for axes in figure.axes] == ["loss", "NLL", "learning rate", "grad norm"]
    assert_lines_are_the_logged_values(figure, records, ["loss", "nll", "test/nll", "learning_rate", "grad_norm"])


def test_comparing_runs_labels_each_and_keeps_their_values_apart(tmp_path, capsys, monkeypatch):
    first = dpo_records(beta=0.1)
    second = dpo_records(num_steps=4, eval_every=2, beta=0.3)
    run_a = write_run(tmp_path / "beta0.1", first)
    run_b = write_run(tmp_path / "beta0.3", second, torn_tail='{"step": 5, "dpo_lo')
    out = tmp_path / "compare.png"
    assert main([str(run_a), str(run_b), f"out={out}"]) == out
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert f"wrote {out}" in capsys.readouterr().out

    figure = draw_runs([load_run(run_a), load_run(run_b)])
    assert_lines_are_the_logged_values(figure, first, DPO_KEYS, prefix="beta0.1 (step 6): ")
    assert_lines_are_the_logged_values(figure, second, DPO_KEYS, prefix="beta0.3 (step 4): ")
    assert [text.get_text() for text in figure.legends[0].get_texts()] == ["beta0.1 (step 6)", "beta0.3 (step 4)"]
    loss_axes = next(axes for axes in figure.axes if axes.get_title() == "loss")
    colors = {line.get_label().split(":")[0]: line.get_color() for line in loss_axes.get_lines()}
    assert colors["beta0.1 (step 6)"] != colors["beta0.3 (step 4)"]

    # One run with no out=: its own metrics.png; several: compare.png in the working directory.
    monkeypatch.chdir(tmp_path)
    assert main([str(run_a)]) == run_a / PLOT_NAME
    assert main([str(run_a / "metrics.jsonl"), str(run_b)]).name == "compare.png"


def test_runs_with_the_same_directory_name_are_told_apart(tmp_path):
    from cookbook.training.plot import run_names

    paths = [write_run(tmp_path / sweep / "run", dpo_records()) for sweep in ("sweep1", "sweep2")]
    assert run_names(paths) == [str(p) for p in paths]
    assert run_names([paths[0], tmp_path / "other" / "metrics.jsonl"]) == ["run", "other"]


def test_cli_errors_name_the_problem(tmp_path):
    with pytest.raises(SystemExit, match="usage: python -m cookbook.plot"):
        main([])
    with pytest.raises(SystemExit, match=r"nowhere: no metrics.jsonl here"):
        main([str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match=r"unknown option 'output=x.png'"):
        main([str(tmp_path), "output=x.png"])
    empty = write_run(tmp_path / "empty", [])
    with pytest.raises(SystemExit, match="nothing to plot yet"):
        main([str(empty)])


def test_an_on_policy_run_plots_its_sampled_rewards_and_ifeval(tmp_path):
    records = [{"step": 0, "test/ifeval_prompt_strict": 0.125, "test/ifeval_instruction_strict": 0.37}]
    for step in range(1, 5):
        record = {"step": step, "dpo_loss": 0.69 - 0.05 * step, "learning_rate": 1e-5}
        if step % 2 == 1:
            record.update({"samples/reward_best": 0.5 + step / 100, "samples/reward_mean": 0.3,
                           "samples/reward_worst": 0.2})
        records.append(record)
    records.append({"step": 4, "test/ifeval_prompt_strict": 0.2, "test/ifeval_instruction_strict": 0.45})
    figure = draw_runs([load_run(write_run(tmp_path / "run", records))])
    assert [axes.get_title() for axes in figure.axes] == ["loss", "learning rate", "sampled reward", "IFEval"]
    assert_lines_are_the_logged_values(figure, records, ["samples/reward_best", "samples/reward_mean",
                                                         "samples/reward_worst", "test/ifeval_prompt_strict",
                                                         "test/ifeval_instruction_strict"])
