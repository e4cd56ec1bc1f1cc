"""Issue 13, the parts outside the training loop: the log directory (what is a run, what `delete`
may remove, the lock), checkpoints (weights_only loading, stale staging, pruning, a full disk, a
torn index), the resume-config check, and how `run_cli` ends a command."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import chz
import pytest
import torch

from cookbook.cli import run_cli
from cookbook.errors import RunStopped, UserError
from cookbook.models import METADATA_NAME
from cookbook.training import checkpoint as ckpt
from cookbook.training.log_dir import (
    LOCK_NAME,
    LockFileError,
    LogDirExistsError,
    RunLock,
    RunLockedError,
    decide_log_dir,
    delete_run_files,
    foreign_entries,
    holds_run,
)
from cookbook.training.resume_config import ResumeConfigError, check_resume_config
from cookbook.training.schedule import make_scheduler

REPO = Path(__file__).resolve().parents[1]


# -- log_path: what counts as a run, what delete may remove ------------------------------------------


def _fake_checkpoint(log_path: Path, name: str, step: int, resumable: bool) -> Path:
    directory = log_path / name
    directory.mkdir(parents=True)
    (directory / "config.json").write_text("{}")
    (directory / METADATA_NAME).write_text(json.dumps({"step": step}))
    if resumable:
        torch.save({"step": step}, directory / ckpt.TRAINING_STATE_NAME)
    with (log_path / ckpt.INDEX_NAME).open("a") as index:
        index.write(json.dumps({"name": name, "step": step, "path": str(directory), "resumable": resumable}) + "\n")
    return directory


def _run_of_ours(log_path: Path) -> None:
    log_path.mkdir(parents=True, exist_ok=True)
    (log_path / "config.json").write_text("{}")
    (log_path / "metrics.jsonl").write_text(json.dumps({"step": 0, "test/accuracy": 0.5}) + "\n"
                                            + json.dumps({"step": 1, "dpo_loss": 0.69}) + "\n")
    (log_path / "reference_logps.pt").write_bytes(b"cache")
    _fake_checkpoint(log_path, "step_000001", 1, resumable=True)
    (log_path / ".step_000002.tmp-x1y2").mkdir()
    (log_path / ".step_000002.tmp-x1y2" / "model.safetensors").write_bytes(b"half")
    for directory in ("tb", "rounds"):
        (log_path / directory).mkdir()
        (log_path / directory / "events").write_text("x")
    (log_path / "metrics.png").write_bytes(b"png")


def test_delete_refuses_a_directory_holding_files_of_someone_else(tmp_path):
    log_path = tmp_path / "run"
    _run_of_ours(log_path)
    (log_path / "notes.txt").write_text("mine")
    (log_path / "data").mkdir()
    (log_path / "data" / "prefs.jsonl").write_text("{}")
    before = sorted(p.relative_to(log_path) for p in log_path.rglob("*"))
    with pytest.raises(LogDirExistsError, match=r"delete refused.*holds files that no run of ours wrote \(data/, notes\.txt\)"):
        decide_log_dir(str(log_path), "delete")
    assert sorted(p.relative_to(log_path) for p in log_path.rglob("*")) == before  # nothing deleted


def test_delete_removes_everything_of_ours_but_the_lock(tmp_path):
    log_path = tmp_path / "run"
    _run_of_ours(log_path)
    with RunLock(log_path):
        assert decide_log_dir(str(log_path), "delete") == "fresh"
        assert [p.name for p in log_path.iterdir()] == [LOCK_NAME]
    assert list(log_path.iterdir()) == []


def test_a_directory_named_like_a_checkpoint_without_our_metadata_is_not_ours(tmp_path):
    log_path = tmp_path / "run"
    _run_of_ours(log_path)
    (log_path / "final").mkdir()
    (log_path / "final" / "weights.bin").write_bytes(b"someone's")
    assert [p.name for p in foreign_entries(log_path)] == ["final"]
    with pytest.raises(LogDirExistsError, match=r"final/"):
        delete_run_files(log_path)
    assert (log_path / "final" / "weights.bin").exists()


def test_only_a_run_that_reached_training_counts(tmp_path):
    """A run that failed before its first step (config.json, a step-0 eval, the reference cache) is
    started over whatever the behavior says; one with a training step or a checkpoint is a run."""
    log_path = tmp_path / "run"
    log_path.mkdir()
    (log_path / "config.json").write_text("{}")
    (log_path / "reference_logps.pt").write_bytes(b"cache")
    (log_path / "metrics.jsonl").write_text(json.dumps({"step": 0, "data/train_pairs": 8}) + "\n" + '{"step": 1, "dpo')
    assert not holds_run(log_path)
    assert decide_log_dir(str(log_path), "raise") == "fresh"
    assert (log_path / "reference_logps.pt").exists()  # a fresh start may reuse its cache

    (log_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "dpo_loss": 0.6}) + "\n")
    assert holds_run(log_path)
    with pytest.raises(LogDirExistsError, match="already holds a run.*behavior_if_log_dir_exists=resume"):
        decide_log_dir(str(log_path), "raise")

    (log_path / "metrics.jsonl").unlink()
    _fake_checkpoint(log_path, "step_000002", 2, resumable=True)
    assert holds_run(log_path)
    assert decide_log_dir(str(log_path), "resume") == "resume"


def test_a_foreign_directory_without_a_run_is_refused_but_a_run_with_extra_files_resumes(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    with pytest.raises(LogDirExistsError, match=r"'.*mine' holds files that no run of ours wrote \(thesis\.tex\)"):
        decide_log_dir(str(foreign), "delete")
    assert (foreign / "thesis.tex").exists()

    log_path = tmp_path / "run"
    _run_of_ours(log_path)
    (log_path / "notes.txt").write_text("what I tried")
    assert decide_log_dir(str(log_path), "resume") == "resume"


# -- the lock, with real processes ------------------------------------------------------------------

HOLDER = ("import sys, time\n"
          "from cookbook.training.log_dir import RunLock\n"
          "lock = RunLock(sys.argv[1]).acquire()\n"
          "print('locked', flush=True)\n"
          "sys.stdin.readline()\n"
          "lock.release() if sys.argv[2] == 'release' else None\n")


def _start_holder(log_path: Path, ending: str = "release") -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(log_path), ending], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_process_fails_at_once_naming_the_holder(tmp_path):
    holder = _start_holder(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=rf"in use by process {holder.pid} on {socket.gethostname()}"):
            RunLock(tmp_path).acquire()
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid  # untouched
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0 and not (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path) as lock:
        assert lock.stale_holder is None


def test_a_lock_left_by_a_killed_run_is_stale_and_taken_over(tmp_path):
    holder = _start_holder(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert (tmp_path / LOCK_NAME).exists()  # the file stays; the kernel dropped the OS lock
    with RunLock(tmp_path) as lock:
        assert lock.stale_holder["pid"] == holder.pid
        assert f"process {holder.pid}" in lock.stale_message and "gone" in lock.stale_message
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_a_holder_that_exits_without_releasing_frees_the_lock(tmp_path):
    holder = _start_holder(tmp_path, ending="keep")
    holder.communicate("\n", timeout=30)
    with RunLock(tmp_path):
        pass


def test_the_lock_is_released_when_the_run_raises(tmp_path):
    with pytest.raises(ZeroDivisionError), RunLock(tmp_path):
        raise ZeroDivisionError
    assert not (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path):
        with pytest.raises(RunLockedError, match=rf"process {os.getpid()}"):
            RunLock(tmp_path).acquire()  # a second acquisition in the same process is refused too


def test_a_log_path_where_no_lock_can_be_created_is_a_user_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(LockFileError, match=r"log_path=.*a-file' is not writable: cannot create .*run\.lock \(Not a"):
        RunLock(blocker).acquire()


# -- training_state.pt loads with weights_only=True -----------------------------------------------


def test_a_real_training_state_loads_with_weights_only_and_restores(tmp_path):
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = make_scheduler(optimizer, total_steps=10, schedule="cosine", warmup_steps=2)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    for _ in range(3):
        model(torch.randn(2, 4)).sum().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    random.seed(5)
    torch.manual_seed(5)
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": ckpt.capture_rng_state(), "step": 3, "grad_scaler": scaler.state_dict()}
    torch.save(state, tmp_path / ckpt.TRAINING_STATE_NAME)
    expected = (random.random(), torch.rand(3))

    loaded = ckpt.load_training_state(tmp_path)  # the checkpoint directory or the file itself
    fresh = torch.optim.AdamW(torch.nn.Linear(4, 3).parameters(), lr=1e-3)
    fresh.load_state_dict(loaded["optimizer"])
    fresh_scheduler = make_scheduler(fresh, total_steps=10, schedule="cosine", warmup_steps=2)
    fresh_scheduler.load_state_dict(loaded["scheduler"])
    assert fresh_scheduler.get_last_lr() == scheduler.get_last_lr() and loaded["step"] == 3
    torch.testing.assert_close(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    ckpt.restore_rng_state(loaded["rng"])
    assert random.random() == expected[0]
    torch.testing.assert_close(torch.rand(3), expected[1])


class _Planted:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["PLANTED_MARKER"]),))


def test_a_planted_training_state_is_refused_without_running_its_code(tmp_path, monkeypatch):
    marker = tmp_path / "code-ran"
    monkeypatch.setenv("PLANTED_MARKER", str(marker))
    torch.save({"step": 3, "payload": _Planted()}, tmp_path / ckpt.TRAINING_STATE_NAME)
    with pytest.raises(ckpt.UnsafeTrainingStateError, match=r"training_state\.pt holds objects other than tensors"):
        ckpt.load_training_state(tmp_path / ckpt.TRAINING_STATE_NAME)
    assert not marker.exists()


# -- staging, pruning, a full disk, a torn index ---------------------------------------------------


def test_stale_staging_directories_of_ours_are_removed_and_nothing_else(tmp_path):
    for name in (".step_000040.tmp-abc123", ".final.tmp-q9"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"x" * 100)
    (tmp_path / ".cache").mkdir()
    (tmp_path / "step_000020").mkdir()
    assert ckpt.clean_stale_staging(tmp_path) == [".final.tmp-q9", ".step_000040.tmp-abc123"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cache", "step_000020"]


def test_pruning_keeps_the_newest_final_and_the_checkpoint_resume_would_use(tmp_path):
    for step in (1, 2, 3, 4):
        # Step 2 is the resumable one; 3 and 4 were listed as not resumable (e.g. weights-only saves).
        _fake_checkpoint(tmp_path, ckpt.checkpoint_name(step), step, resumable=step == 2)
    _fake_checkpoint(tmp_path, "final", 4, resumable=False)
    assert ckpt.latest_resumable_checkpoint(tmp_path)["name"] == "step_000002"

    assert ckpt.prune_checkpoints(tmp_path, keep=1) == ["step_000001", "step_000003"]
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert names == ["final", "step_000002", "step_000004"]
    assert [e["name"] for e in ckpt.read_index(tmp_path)] == ["step_000002", "step_000004", "final"]
    assert ckpt.latest_resumable_checkpoint(tmp_path)["name"] == "step_000002"
    assert ckpt.prune_checkpoints(tmp_path, keep=None) == []
    with pytest.raises(ValueError, match="keep_last_checkpoints must be >= 1"):
        ckpt.prune_checkpoints(tmp_path, keep=0)


def _save(log_path: Path, model, tokenizer, name: str, step: int) -> Path:
    return ckpt.save_checkpoint(log_path, name, step, model.state_dict(), model, tokenizer,
                                {"renderer_name": "chatml"}, {"step": step, "rng": ckpt.capture_rng_state()})


def test_pruning_real_checkpoints_after_each_save(tmp_path, tiny_model, tokenizer):
    for step in (1, 2, 3):
        _save(tmp_path, tiny_model, tokenizer, ckpt.checkpoint_name(step), step)
        ckpt.prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["step_000002", "step_000003"]
    assert [e["name"] for e in ckpt.read_index(tmp_path)] == ["step_000002", "step_000003"]
    entry = ckpt.latest_resumable_checkpoint(tmp_path)
    assert entry["name"] == "step_000003" and ckpt.load_training_state(entry["path"])["step"] == 3


@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1664 vs 1552"),
    OSError(28, "No space left on device"),
])
def test_a_full_disk_during_a_save_names_the_last_good_checkpoint(tmp_path, tiny_model, tokenizer, monkeypatch, failure):
    good = _save(tmp_path, tiny_model, tokenizer, "step_000001", 1)
    index_before = (tmp_path / ckpt.INDEX_NAME).read_text()

    def full_disk(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise failure

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(ckpt.DiskFullError, match=rf"disk holding .* is full: checkpoint step_000002 \(step 2\).*"
                                                 rf"last good checkpoint is {good}.*\(step 1\)"):
        _save(tmp_path, tiny_model, tokenizer, "step_000002", 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.INDEX_NAME, "step_000001"]  # no staging left
    assert (tmp_path / ckpt.INDEX_NAME).read_text() == index_before
    assert isinstance(ckpt.DiskFullError("x"), UserError)


def test_a_torn_last_index_line_is_ignored_and_repaired_by_the_next_save(tmp_path, tiny_model, tokenizer):
    _save(tmp_path, tiny_model, tokenizer, "step_000001", 1)
    with (tmp_path / ckpt.INDEX_NAME).open("a") as index:
        index.write('{"name": "step_000002", "st')  # a kill in the middle of the write
    assert [e["name"] for e in ckpt.read_index(tmp_path)] == ["step_000001"]
    assert ckpt.latest_resumable_checkpoint(tmp_path)["name"] == "step_000001"
    _save(tmp_path, tiny_model, tokenizer, "step_000002", 2)
    assert [e["name"] for e in ckpt.read_index(tmp_path)] == ["step_000001", "step_000002"]


def test_a_bad_index_line_before_the_last_names_file_and_line(tmp_path):
    (tmp_path / ckpt.INDEX_NAME).write_text(
        json.dumps({"name": "step_000001", "step": 1}) + "\nnot json\n" + json.dumps({"name": "final", "step": 2}) + "\n"
    )
    with pytest.raises(ckpt.CheckpointIndexError, match=r"checkpoints\.jsonl:2: not a JSON record"):
        ckpt.read_index(tmp_path)


def test_a_moved_log_dir_still_resumes_from_its_checkpoint(tmp_path):
    old = tmp_path / "old"
    _fake_checkpoint(old, "step_000003", 3, resumable=True)
    old.rename(tmp_path / "new")
    entry = ckpt.latest_resumable_checkpoint(tmp_path / "new")
    assert entry["path"] == str(tmp_path / "new" / "step_000003")


# -- resuming with changed options ----------------------------------------------------------------

STORED = {"log_path": "runs/a", "model_name": "m", "dpo_beta": 0.1, "learning_rate": 1e-5, "eval_every": 10,
          "lora_rank": 8, "behavior_if_log_dir_exists": "raise",
          "dataset": {"builder": "cookbook.datasets.preference:FileBuilder", "path": "a.jsonl", "test_size": 4}}


def test_changes_that_alter_the_run_are_refused_naming_each_field():
    new = {**STORED, "dpo_beta": 0.2, "learning_rate": 1e-4, "eval_every": 5, "behavior_if_log_dir_exists": "resume",
           "dataset": {**STORED["dataset"], "path": "b.jsonl"}}
    with pytest.raises(ResumeConfigError, match=r"dpo_beta 0\.1 -> 0\.2, learning_rate 1e-05 -> 0\.0001, "
                                                r'dataset\.path "a\.jsonl" -> "b\.jsonl"\. .*override=yes') as error:
        check_resume_config(STORED, new, override_option="override=yes")
    assert "eval_every" not in str(error.value) and "behavior_if_log_dir_exists" not in str(error.value)
    assert check_resume_config(STORED, new, allow_meaning_changes=True) == {
        "dpo_beta": (0.1, 0.2), "learning_rate": (1e-5, 1e-4), "eval_every": (10, 5),
        "dataset.path": ("a.jsonl", "b.jsonl")}


def test_harmless_and_unrecorded_changes_are_returned_for_the_record():
    new = {**STORED, "eval_every": 5, "precision": "auto"}  # precision: an option the stored run predates
    assert check_resume_config(STORED, new) == {"eval_every": (10, 5), "precision": ("<not recorded>", "auto")}
    assert check_resume_config(STORED, dict(STORED)) == {}


def test_meaning_fields_are_a_parameter_with_patterns():
    with pytest.raises(ResumeConfigError, match="lora_rank 8 -> 16"):
        check_resume_config(STORED, {**STORED, "lora_rank": 16})
    # An SFT recipe with its own set: here only the model matters.
    assert check_resume_config(STORED, {**STORED, "lora_rank": 16}, meaning_fields=("model_name",)) == {
        "lora_rank": (8, 16)}


# -- run_cli: how a command ends -------------------------------------------------------------------


@chz.chz
class ToyConfig:
    rate: float = 1.0
    outcome: str = "ok"

    @chz.validate
    def _check(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")


def toy_main(config: ToyConfig):
    """Ends the way `outcome` says, as a training or eval main may."""
    if config.outcome == "user":
        raise UserError("data file 'x.jsonl' is empty")
    if config.outcome == "bug":
        return {}["missing"]
    if config.outcome == "stopped":
        raise RunStopped(3, "runs/x/step_000003")
    if config.outcome == "returned_stop":
        return RunStopped(3)
    if config.outcome == "interrupt":
        raise KeyboardInterrupt
    if config.outcome == "status":
        return 1
    return Path("runs/x/final")


@pytest.mark.parametrize(("argv", "status", "message"), [
    (["rate=0"], 2, "error: rate must be > 0, got 0.0"),
    (["rate=abc"], 2, "error: rate=abc: Could not cast 'abc' to float"),
    (["rat=1"], 2, "error: Extraneous argument 'rat'; Did you mean 'rate'?"),
    (["outcome=user"], 2, "error: data file 'x.jsonl' is empty"),
    (["outcome=interrupt"], 130, "error: interrupted"),
])
def test_user_errors_end_in_one_line_and_status_2(capsys, monkeypatch, argv, status, message):
    monkeypatch.delenv("COOKBOOK_DEBUG", raising=False)
    assert run_cli(toy_main, argv) == status
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err


def test_stops_bugs_status_and_help(capsys):
    assert run_cli(toy_main, ["outcome=stopped"]) == 130
    assert run_cli(toy_main, ["outcome=returned_stop"]) == 130
    assert run_cli(toy_main, ["outcome=status"]) == 1
    assert run_cli(toy_main, []) == 0
    with pytest.raises(KeyError, match="missing"):  # our bug: the traceback stays
        run_cli(toy_main, ["outcome=bug"])
    capsys.readouterr()
    assert run_cli(toy_main, ["--help"]) == 0
    out = capsys.readouterr()
    assert "rate" in out.out and "outcome" in out.out and out.err == ""


def test_debug_variable_shows_the_traceback_of_user_errors(capsys, monkeypatch):
    monkeypatch.setenv("COOKBOOK_DEBUG", "1")
    assert run_cli(toy_main, ["outcome=user"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("error: data file 'x.jsonl' is empty")


def test_eval_help_is_printed_not_raised(capsys):
    from cookbook.eval.run_inspect_evals import main as eval_main

    assert run_cli(eval_main, ["--help"]) == 0
    out = capsys.readouterr()
    assert "model_path" in out.out and "compare_model_path" in out.out and "Traceback" not in out.err


def test_eval_as_a_program_prints_a_bad_option_as_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cookbook.eval.run_inspect_evals",
                             f"model_path={tmp_path / 'missing'}", "display=none"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: model_path=") and "Traceback" not in result.stderr
