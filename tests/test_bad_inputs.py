"""Bad inputs to the training command, run in-process through `run_cli` with argv lists.

Each must end in exit status 2 and one `error: ...` line on stderr (no traceback) that names the
field, file or line at fault, and leave nothing behind but files a run of ours writes: inputs are
untouched, nothing appears outside log_path, and log_path holds no lock, staging directory or
foreign file. The table in docs/troubleshooting.md lists the same cases.
"""

import gzip
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import chz
import pytest
import torch

from cookbook.cli import run_cli
from cookbook.preference.train_dpo import Config, main
from cookbook.training import loop
from cookbook.training.checkpoint import STAGING_NAME
from cookbook.training.config import config_as_dict
from cookbook.training.log_dir import LOCK_NAME, is_run_file

REPO = Path(__file__).resolve().parents[1]


def pairs(n: int, start: int = 0) -> list[str]:
    return [json.dumps({"prompt": f"What is {i} + {i}?", "chosen": str(2 * i), "rejected": str(2 * i + 1)})
            for i in range(start, start + n)]


def write(path: Path, content: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def lines(rows: list[str]) -> str:
    return "".join(row + "\n" for row in rows)


# Each setup makes the input in `inputs/` (or the log_path) and returns the values its argv names.
SETUPS = {
    "blocker": lambda d: {"blocker": write(d / "inputs" / "a-file", "")},
    "empty_model_dir": lambda d: (d / "inputs" / "model").mkdir(parents=True) or {"model": str(d / "inputs" / "model")},
    "data_dir": lambda d: (d / "inputs" / "prefs").mkdir(parents=True) or {"data": str(d / "inputs" / "prefs")},
    "empty": lambda d: {"data": write(d / "inputs" / "prefs.jsonl", "")},
    "blank": lambda d: {"data": write(d / "inputs" / "prefs.jsonl", "\n  \n\n")},
    "latin1": lambda d: {"data": write(d / "inputs" / "prefs.jsonl", lines(pairs(1)).encode()
                                       + '{"prompt": "caf\u00e9", "chosen": "a", "rejected": "b"}\n'.encode("latin-1")
                                       + lines(pairs(20, 1)).encode())},
    "utf16": lambda d: {"data": write(d / "inputs" / "prefs.jsonl", lines(pairs(20)).encode("utf-16"))},
    "fake_gz": lambda d: {"data": write(d / "inputs" / "prefs.jsonl.gz", lines(pairs(20)))},
    "truncated_gz": lambda d: {"data": write(d / "inputs" / "prefs.jsonl.gz", gzip.compress(lines(pairs(200)).encode())[:300])},
    "bad_json_line": lambda d: {"data": write(d / "inputs" / "prefs.jsonl", lines(pairs(2) + ['{"prompt": "x",'] + pairs(20, 2)))},
    "missing_rejected": lambda d: {"data": write(d / "inputs" / "prefs.jsonl", lines(
        pairs(5) + [json.dumps({"prompt": "p", "chosen": "c"})] + pairs(20, 5)))},
    "chosen_number": lambda d: {"data": write(d / "inputs" / "prefs.jsonl", lines(
        pairs(1) + [json.dumps({"prompt": "p", "chosen": 5, "rejected": "r"})] + pairs(20, 1)))},
    "json_syntax": lambda d: {"data": write(d / "inputs" / "prefs.json", "[\n" + pairs(1)[0] + ",\n{oops}\n]")},
    "json_object": lambda d: {"data": write(d / "inputs" / "prefs.json", json.dumps({"rows": []}))},
    "json_latin1": lambda d: {"data": write(d / "inputs" / "prefs.json", b'[\n{"prompt": "a", "chosen": "b", "rejected": "c"},\n'
                                            + '{"prompt": "\u00e9"}]'.encode("latin-1"))},
    "csv": lambda d: {"data": write(d / "inputs" / "prefs.csv", "prompt,chosen,rejected\n")},
    "four_pairs": lambda d: {"data": write(d / "inputs" / "prefs.jsonl", lines(pairs(4)))},
    "identical": lambda d: {"data": write(d / "inputs" / "prefs.jsonl", lines(
        [json.dumps({"prompt": f"q{i}", "chosen": "same", "rejected": "same"}) for i in range(6)]))},
    "fake_parquet": lambda d: {"data": write(d / "inputs" / "prefs.parquet", "not parquet")},
    "foreign_log_dir": lambda d: {"note": write(d / "run" / "notes.txt", "mine")},
    "run_of_ours": lambda d: _run_of_ours(d / "run"),
    "run_and_foreign": lambda d: {**_run_of_ours(d / "run"), "note": write(d / "run" / "notes.txt", "mine")},
}


def _run_of_ours(log_path: Path) -> dict:
    write(log_path / "config.json", "{}")
    write(log_path / "metrics.jsonl", json.dumps({"step": 1, "dpo_loss": 0.69}) + "\n")
    return {}


@dataclass(frozen=True)
class BadInput:
    id: str
    argv: list[str]
    message: str  # regex searched in the error line
    setup: str | None = None
    marks: list = field(default_factory=list)


CASES = [
    # Options, refused while the config is built.
    BadInput("beta-zero", ["dpo_beta=0"], r"dpo_beta must be a finite number > 0, got 0\.0"),
    BadInput("beta-inf", ["dpo_beta=inf"], r"dpo_beta must be a finite number > 0, got inf"),
    BadInput("beta-text", ["dpo_beta=abc"], r"dpo_beta=abc: Could not cast 'abc' to float"),
    BadInput("lr-negative", ["learning_rate=-1"], r"learning_rate must be a finite number > 0, got -1"),
    BadInput("lr-nan", ["learning_rate=nan"], r"learning_rate must be a finite number > 0, got nan"),
    BadInput("batch-zero", ["batch_size=0"], r"batch_size must be a finite number > 0, got 0"),
    BadInput("batch-fraction", ["batch_size=2.5"], r"batch_size=2\.5: Could not cast '2\.5' to int"),
    BadInput("micro-batch", ["micro_batch_size=3"], r"batch_size=16 must be a multiple of micro_batch_size=3"),
    BadInput("smoothing", ["label_smoothing=0.7"], r"label_smoothing must be in \[0, 0\.5\), got 0\.7"),
    BadInput("loss-type", ["loss_type=kto"], r"loss_type=kto: Could not cast 'kto' to Literal\['dpo', 'ipo'"),
    BadInput("schedule", ["lr_schedule=exponential"], r"lr_schedule=exponential: Could not cast"),
    BadInput("precision", ["precision=fp8"], r"precision=fp8: Could not cast 'fp8' to Literal\['auto', 'fp32'"),
    BadInput("old-dtype", ["dtype=bfloat16"], r"dtype='bfloat16' was replaced by precision="),
    BadInput("max-steps", ["max_steps=0"], r"max_steps must be > 0, got 0"),
    BadInput("warmup", ["warmup_steps=-1"], r"warmup_steps must be a finite number >= 0, got -1"),
    BadInput("max-length", ["max_length=0"], r"max_length must be a finite number > 0, got 0"),
    BadInput("behavior", ["behavior_if_log_dir_exists=overwrite"], r"behavior_if_log_dir_exists=overwrite: Could not cast"),
    BadInput("typo", ["dpo_bta=0.2"], r"Extraneous argument 'dpo_bta'; Did you mean 'dpo_beta'\?"),
    BadInput("dataset-name", ["dataset=nope"], r"dataset=nope: Unknown dataset 'nope'\. Registered datasets: demo"),
    BadInput("file-no-path", ["dataset=file"], r"Missing required arguments for parameter\(s\): dataset\.path"),
    BadInput("path-without-file", ["dataset.path=prefs.jsonl"], r"Extraneous argument 'dataset\.path'.*DemoBuilder"),
    BadInput("builder-module", ["dataset=no_such_module:Builder"], r"^error: dataset=no_such_module:Builder: could not import module 'no_such_module'"),
    # log_path.
    BadInput("log-path-under-file", ["log_path={blocker}/run"], r"log_path='.*a-file/run' cannot be created", "blocker"),
    BadInput("foreign-log-dir", [], r"log_path='.*run' holds files that no run of ours wrote \(notes\.txt\)", "foreign_log_dir"),
    BadInput("run-exists", [], r"log_path='.*run' already holds a run\. Pass behavior_if_log_dir_exists=resume", "run_of_ours"),
    BadInput("delete-foreign", ["behavior_if_log_dir_exists=delete"],
             r"delete refused: log_path='.*run' holds files that no run of ours wrote \(notes\.txt\)\. Nothing was deleted",
             "run_and_foreign"),
    # Models.
    BadInput("model-missing", ["model_name=/nonexistent/model"], r"model directory '/nonexistent/model' does not exist"),
    BadInput("model-empty-dir", ["model_name={model}"], r"inputs/model is a directory but holds no config\.json", "empty_model_dir"),
    BadInput("checkpoint-missing", ["load_checkpoint_path=/nonexistent/ckpt"], r"model directory '/nonexistent/ckpt' does not exist"),
    # Data files.
    BadInput("data-missing", ["dataset={tmp}/inputs/missing.jsonl"], r"data file '.*inputs/missing\.jsonl' does not exist"),
    BadInput("data-is-dir", ["dataset=file", "dataset.path={data}"], r"inputs/prefs is a directory; give a data file", "data_dir"),
    BadInput("data-empty", ["dataset={data}"], r"inputs/prefs\.jsonl is empty", "empty"),
    BadInput("data-blank", ["dataset={data}"], r"inputs/prefs\.jsonl is empty", "blank"),
    BadInput("data-not-utf8", ["dataset={data}"], r"inputs/prefs\.jsonl:2: not valid UTF-8 \(byte 0xe9 at byte 16", "latin1"),
    BadInput("data-utf16", ["dataset={data}"], r"inputs/prefs\.jsonl is UTF-16 encoded; save it as UTF-8", "utf16"),
    BadInput("data-fake-gz", ["dataset={data}"], r"inputs/prefs\.jsonl\.gz is not gzip-compressed", "fake_gz"),
    BadInput("data-truncated-gz", ["dataset={data}"], r"inputs/prefs\.jsonl\.gz: the gzip data ends early", "truncated_gz"),
    BadInput("data-bad-json", ["dataset={data}"], r"inputs/prefs\.jsonl:3: invalid JSON .*skip_malformed=true", "bad_json_line"),
    BadInput("data-missing-field", ["dataset={data}"], r"inputs/prefs\.jsonl:6: missing field 'rejected'", "missing_rejected"),
    BadInput("data-wrong-type", ["dataset={data}"], r"inputs/prefs\.jsonl:2: field 'chosen' must be", "chosen_number"),
    BadInput("json-syntax", ["dataset={data}"], r"inputs/prefs\.json:3: invalid JSON", "json_syntax"),
    BadInput("json-not-array", ["dataset={data}"], r"inputs/prefs\.json: expected a JSON array of objects", "json_object"),
    BadInput("json-not-utf8", ["dataset={data}"], r"inputs/prefs\.json:3: not valid UTF-8 \(byte 0xe9", "json_latin1"),
    BadInput("data-csv", ["dataset=file", "dataset.path={data}"], r"inputs/prefs\.csv: unsupported file type", "csv"),
    BadInput("parquet-fake", ["dataset={data}"], r"inputs/prefs\.parquet: not a Parquet file", "fake_parquet"),
    BadInput("too-few-pairs", ["dataset={data}", "dataset.test_size=10"],
             r"only 4 usable pairs, so carving out dataset\.test_size=10 .* lower dataset\.test_size", "four_pairs"),
    BadInput("no-usable-pairs", ["dataset={data}"], r"no usable training pairs .*6 rows read.*identical=6", "identical"),
    BadInput("hub-offline", ["dataset=hhh"], r"Cannot load the data set 'Anthropic/hh-rlhf'.*dataset\.local_path="),
    BadInput("hub-local-missing", ["dataset=hhh", "dataset.local_path={tmp}/inputs/hh.jsonl"], r"data file '.*inputs/hh\.jsonl' does not exist"),
    # Found once the run starts (cookbook.errors.InvalidOptionError).
    BadInput("renderer", ["renderer_name=nope"], r"unknown renderer 'nope'"),
    BadInput("cuda-missing", ["device=cuda"], r"device=cuda, but no CUDA device is available",
             marks=[pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")]),
    BadInput("batch-over-data", ["dataset={data}", "dataset.test_size=0", "batch_size=8", "micro_batch_size=8"],
             r"batch_size=8 is larger than the 4 training pairs", "four_pairs"),
]


@pytest.fixture
def no_model_load(monkeypatch):
    # Every case fails before the weights are needed; loading them would mean a check came too late.
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr(loop, "load_model_and_tokenizer", refuse)


def snapshot(root: Path) -> dict[Path, bytes | None]:
    return {p: (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


def run_case(tmp_path: Path, tiny_model_dir: str, argv: list[str], capsys) -> tuple[int, str]:
    status = run_cli(main, [f"log_path={tmp_path / 'run'}", f"model_name={tiny_model_dir}", "show_example=false",
                            *argv])
    return status, capsys.readouterr().err


def assert_only_ours_left(tmp_path: Path, before: dict) -> None:
    after = snapshot(tmp_path)
    for path, content in before.items():
        assert after.get(path, "gone") == content, f"{path} was changed or removed"
    log_path = tmp_path / "run"
    for path in set(after) - set(before):
        assert path.is_relative_to(log_path), f"{path} was written outside log_path"
    if log_path.is_dir():
        for entry in log_path.iterdir():
            if (tmp_path / "run" / entry.name) not in before:
                assert is_run_file(entry), f"{entry} is not a file of ours"
                assert entry.name != LOCK_NAME and not STAGING_NAME.fullmatch(entry.name), f"{entry} left behind"


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_ends_in_one_clean_error_line(case, tmp_path, tiny_model_dir, capsys, monkeypatch, no_model_load):
    monkeypatch.chdir(tmp_path)  # anything written to a relative path would show up in the snapshot
    monkeypatch.delenv("COOKBOOK_DEBUG", raising=False)
    values = {"tmp": str(tmp_path), **(SETUPS[case.setup](tmp_path) if case.setup else {})}
    before = snapshot(tmp_path)
    status, err = run_case(tmp_path, tiny_model_dir, [arg.format(**values) for arg in case.argv], capsys)
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2, err
    assert "Traceback" not in err and len(error_lines) == 1 and err.rstrip().endswith(error_lines[0]), err
    assert re.search(case.message, error_lines[0]), error_lines[0]
    assert_only_ours_left(tmp_path, before)


def test_there_are_at_least_thirty_cases():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


def test_a_utf8_bom_is_accepted(tmp_path):
    from cookbook.datasets.preference import FileBuilder

    for name, text in (("prefs.jsonl", lines(pairs(6))), ("prefs.json", "[" + ",".join(pairs(6)) + "]")):
        path = write(tmp_path / name, b"\xef\xbb\xbf" + text.encode())
        splits = FileBuilder(path=path, test_size=2)()
        assert len(splits.train) == 4 and len(splits.test) == 2 and not splits.skipped.counts, name


def test_the_training_command_as_a_program(tmp_path):
    """`python -m cookbook.recipes.preference.train`: status 2 and one line, as in-process."""
    result = subprocess.run([sys.executable, "-m", "cookbook.recipes.preference.train", f"log_path={tmp_path / 'run'}",
                             "dpo_beta=-1"], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "COOKBOOK_DEBUG": "0"})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1] == "error: dpo_beta must be a finite number > 0, got -1.0"


# -- bad inputs whose check the training loop makes (issue 13, points 2 and 11) ---------------------


def test_a_second_run_in_a_live_log_path_fails_naming_the_holder(tmp_path, tiny_model_dir, capsys, no_model_load):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from cookbook.training.log_dir import RunLock; "
         "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); sys.stdin.readline()", str(tmp_path / "run")],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    (tmp_path / "run").mkdir()
    try:
        assert holder.stdout.readline().strip() == "locked"
        status, err = run_case(tmp_path, tiny_model_dir, ["behavior_if_log_dir_exists=delete"], capsys)
    finally:
        holder.communicate("\n", timeout=30)
    assert status == 2 and re.search(rf"error: log_path=.* is in use by process {holder.pid}", err), err


def test_resuming_with_a_changed_beta_is_refused(tmp_path, tiny_model_dir, capsys, no_model_load):
    argv = [f"log_path={tmp_path / 'run'}", f"model_name={tiny_model_dir}", "show_example=false"]
    stored = config_as_dict(chz.Blueprint(Config).make_from_argv([*argv, "dpo_beta=0.1", "learning_rate=1e-5"]))
    _run_of_ours(tmp_path / "run")
    write(tmp_path / "run" / "config.json", json.dumps(stored, default=str))
    # A resumable checkpoint: options are compared only when a run will continue from one.
    checkpoint = tmp_path / "run" / "step_000001"
    write(checkpoint / "config.json", "{}")
    write(checkpoint / "cookbook_checkpoint.json", json.dumps({"step": 1}))
    torch.save({"step": 1}, checkpoint / "training_state.pt")
    write(tmp_path / "run" / "checkpoints.jsonl", json.dumps(
        {"name": "step_000001", "step": 1, "path": str(checkpoint), "resumable": True}) + "\n")
    status, err = run_case(tmp_path, tiny_model_dir, ["behavior_if_log_dir_exists=resume", "dpo_beta=0.3",
                                                      "learning_rate=1e-4"], capsys)
    assert status == 2 and "dpo_beta 0.1 -> 0.3" in err and "learning_rate 1e-05 -> 0.0001" in err, err
