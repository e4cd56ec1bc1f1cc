"""Curves of a run's metrics.jsonl, or of several runs in one figure.

    python -m cookbook.plot runs/dpo-demo                    # writes runs/dpo-demo/metrics.png
    python -m cookbook.plot runs/beta0.1 runs/beta0.3 out=compare.png

Each panel is one quantity against the optimizer step: training values as lines, held-out
(`test/...`) values as dashed lines with a marker at every eval. Only panels with data are drawn,
so the same code plots any recipe (DPO's dpo_loss and rewards, SFT's loss and nll). A run that is
still going or was killed plots as far as it got: a torn last line of metrics.jsonl is skipped.
The training loop redraws `log_path/metrics.png` after an eval at most once every
`PLOT_REFRESH_S` seconds, and always at the end, so the picture follows a long run while a short
run does not draw (about half a CPU-second each) after every eval.

Figures are drawn with matplotlib's object API on the Agg canvas: no display is needed and no
global pyplot state is touched, so it is safe inside a training process.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cookbook.training.metrics import JSONL_NAME, read_metrics

PLOT_NAME = "metrics.png"
PLOT_REFRESH_S = 60.0
HELD_OUT_PREFIX = "test/"


@dataclass(frozen=True)
class Panel:
    title: str
    keys: tuple[str, ...]  # training keys; each is drawn with its held-out `test/` twin


PANELS: tuple[Panel, ...] = (
    Panel("loss", ("loss", "dpo_loss")),
    Panel("accuracy", ("accuracy",)),
    Panel("log-prob accuracy", ("logp_accuracy",)),
    Panel("margin", ("margin",)),
    Panel("rewards", ("chosen_reward", "rejected_reward")),
    Panel("NLL", ("nll",)),
    Panel("learning rate", ("learning_rate",)),
    Panel("grad norm", ("grad_norm",)),
    # The on-policy recipe: how its samples scored each round, and IFEval on the bundled set.
    Panel("sampled reward", ("samples/reward_best", "samples/reward_mean", "samples/reward_worst")),
    Panel("IFEval", ("ifeval_prompt_strict", "ifeval_instruction_strict")),
)
LINE_STYLES = ("-", ":", "-.", (0, (5, 1)))
HELD_OUT_MARKERS = ("o", "s", "^", "D")


@dataclass(frozen=True)
class RunMetrics:
    label: str
    records: list[dict]


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key`, one point per step; a step logged twice keeps its last value."""
    by_step: dict[int, float] = {}
    for record in records:
        value = record.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            by_step[record["step"]] = float(value)
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def panels_with_data(runs: list[RunMetrics]) -> list[Panel]:
    present = {key for run in runs for record in run.records for key in record}
    return [p for p in PANELS if any(k in present or HELD_OUT_PREFIX + k in present for k in p.keys)]


def draw_runs(runs: list[RunMetrics]):
    """A matplotlib Figure with one subplot per panel that has data. Line labels are the logged
    keys (prefixed `label: ` when several runs are drawn), so the data can be read back by label."""
    from matplotlib.figure import Figure

    panels = panels_with_data(runs)
    columns = min(4, max(1, len(panels)))
    rows = max(1, -(-len(panels) // columns))
    figure = Figure(figsize=(4.2 * columns, 3.1 * rows), layout="constrained")
    if not panels:
        axes = figure.add_subplot()
        axes.text(0.5, 0.5, "no metrics yet", ha="center", va="center")
        axes.set_axis_off()
        return figure
    several = len(runs) > 1
    for index, panel in enumerate(panels):
        axes = figure.add_subplot(rows, columns, index + 1)
        _draw_panel(axes, panel, runs, several)
    if several:
        # One colour per run, named once above the panels; each panel's legend names line styles.
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=f"C{i}", label=run.label) for i, run in enumerate(runs)]
        figure.legend(handles=handles, loc="outside upper center", ncols=min(len(runs), 4))
    else:
        figure.suptitle(runs[0].label)
    return figure


def _draw_panel(axes, panel: Panel, runs: list[RunMetrics], several: bool) -> None:
    from matplotlib.ticker import MaxNLocator

    present = {key for run in runs for record in run.records for key in record}
    keys = [k for k in panel.keys if k in present or HELD_OUT_PREFIX + k in present]
    for run_index, run in enumerate(runs):
        for key_index, key in enumerate(keys):
            # Several runs: a colour per run, a line style per key. One run: a colour per key.
            color = f"C{run_index if several else key_index}"
            style = LINE_STYLES[key_index % len(LINE_STYLES)] if several else "-"
            prefix = f"{run.label}: " if several else ""
            steps, values = series(run.records, key)
            if steps:
                axes.plot(steps, values, color=color, linestyle=style, linewidth=1.3, label=prefix + key)
            held_out = HELD_OUT_PREFIX + key
            steps, values = series(run.records, held_out)
            if steps:
                axes.plot(steps, values, color=color, linestyle="--", marker=_marker(key_index), markersize=4,
                          linewidth=1.0, label=prefix + held_out)
    axes.set_title(panel.title)
    axes.set_xlabel("step")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    if several:
        axes.legend(handles=_style_handles(keys, present), fontsize="x-small")
    else:
        axes.legend(fontsize="x-small")


def _marker(key_index: int) -> str:
    return HELD_OUT_MARKERS[key_index % len(HELD_OUT_MARKERS)]


def _style_handles(keys: list[str], present: set[str]) -> list:
    """Grey legend entries for the line style of each key drawn in a panel (colour is the run)."""
    from matplotlib.lines import Line2D

    handles = []
    for key_index, key in enumerate(keys):
        if key in present:
            style = LINE_STYLES[key_index % len(LINE_STYLES)]
            handles.append(Line2D([], [], color="0.35", linestyle=style, label=key))
        if HELD_OUT_PREFIX + key in present:
            handles.append(Line2D([], [], color="0.35", linestyle="--", marker=_marker(key_index), markersize=4,
                                  label=HELD_OUT_PREFIX + key))
    return handles


def run_label(path: Path, records: list[dict], name: str | None = None) -> str:
    last_step = max((r["step"] for r in records), default=0)
    return f"{name or path.resolve().name} (step {last_step})"


def run_dir(path: str | Path) -> Path:
    """A run's log_path, given it or its metrics.jsonl."""
    path = Path(path)
    return path.parent if path.name == JSONL_NAME else path


def load_run(path: str | Path, name: str | None = None) -> RunMetrics:
    """A run's records from its log_path (or its metrics.jsonl), labelled `name` (default: the
    directory's name) and its last step; SystemExit if it has none."""
    log_path = run_dir(path)
    if not (log_path / JSONL_NAME).exists():
        raise SystemExit(f"{path}: no {JSONL_NAME} here (pass a run's log_path)")
    records = read_metrics(log_path)
    return RunMetrics(run_label(log_path, records, name), records)


def run_names(paths: list[str | Path]) -> list[str]:
    """Short names that tell runs apart: the directory names, or the paths when two share a name
    (`sweep1/run` and `sweep2/run`)."""
    names = [run_dir(path).resolve().name for path in paths]
    if len(set(names)) == len(names):
        return names
    return [str(run_dir(path)) for path in paths]


def save_figure(figure, out: str | Path) -> Path:
    """Write the PNG under a temporary name and rename it into place, so an image viewer or a
    second writer never sees half a file."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    figure.savefig(tmp, format="png", dpi=110)
    tmp.replace(out)
    return out


def plot_runs(paths: list[str | Path], out: str | Path) -> Path:
    runs = [load_run(path, name) for path, name in zip(paths, run_names(paths))]
    if not any(run.records for run in runs):
        raise SystemExit(f"nothing to plot yet: {', '.join(str(p) for p in paths)} hold no records")
    return save_figure(draw_runs(runs), out)


def write_run_plot(log_path: str | Path, console=None) -> Path | None:
    """Refresh `log_path/metrics.png` (the training loop calls this after each eval). A failure is
    reported and swallowed: a plot is never worth stopping a run for."""
    try:
        return save_figure(draw_runs([load_run(log_path)]), Path(log_path) / PLOT_NAME)
    except (Exception, SystemExit) as error:
        message = f"could not write {Path(log_path) / PLOT_NAME}: {error}"
        if console is not None:
            console.print(f"[yellow]{message}", highlight=False)
        else:
            print(message, file=sys.stderr)
        return None


@dataclass
class RunPlot:
    """`log_path/metrics.png`, redrawn during a run at most every `refresh_s` seconds (the first
    time `refresh_s` after the start), and whenever `final`."""

    log_path: str | Path
    console: object = None
    refresh_s: float = PLOT_REFRESH_S
    last_drawn: float = field(default_factory=time.monotonic)

    def refresh(self, final: bool = False) -> Path | None:
        if not final and time.monotonic() - self.last_drawn < self.refresh_s:
            return None
        self.last_drawn = time.monotonic()
        return write_run_plot(self.log_path, self.console)


USAGE = """usage: python -m cookbook.plot RUN [RUN ...] [out=FILE.png]

Draws the curves of each run's metrics.jsonl (loss, accuracy, margin, rewards, NLL, learning rate,
grad norm; held-out points marked) into one PNG. Default out: RUN/metrics.png for one run,
compare.png for several."""


def parse_argv(argv: list[str]) -> tuple[list[str], Path]:
    paths, out = [], None
    for arg in argv:
        if arg.startswith("out="):
            out = Path(arg.removeprefix("out="))
        elif "=" in arg and not Path(arg).exists():
            raise SystemExit(f"unknown option {arg!r}; the only option is out=FILE.png\n\n{USAGE}")
        else:
            paths.append(arg)
    if not paths:
        raise SystemExit(USAGE)
    if out is None:
        out = run_dir(paths[0]) / PLOT_NAME if len(paths) == 1 else Path("compare.png")
    return paths, out


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help", "help") for arg in argv):
        print(USAGE)
        raise SystemExit(0)
    paths, out = parse_argv(argv)
    written = plot_runs(paths, out)
    print(f"wrote {written}")
    return written

