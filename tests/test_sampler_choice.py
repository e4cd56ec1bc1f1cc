"""`sampler=`: what `auto` picks with and without vLLM and why, and `sampler=vllm` failing with the reason
(tests not marked `vllm` see vLLM as not installed, see conftest, unless they name a version)."""

import pytest

from cookbook.cli import run_cli
from cookbook.on_policy.train_on_policy import main
from cookbook.sampling import vllm_engine
from cookbook.sampling.vllm_engine import choose_sampler


def test_auto_falls_back_to_native_and_says_why():
    choice = choose_sampler("auto", lora=True)
    assert choice.name == "native"
    assert choice.reason == "vLLM is not installed (scripts/setup.sh installs it, see docs/sampling.md); using the native sampler"


def test_auto_takes_vllm_under_several_processes_with_an_engine_on_each(monkeypatch):
    monkeypatch.setattr(vllm_engine, "vllm_version", lambda: "0.32.0")
    choice = choose_sampler("auto", world_size=2, lora=True)
    assert choice.name == "vllm"
    assert choice.reason == ("vLLM 0.32.0 is installed (an engine on each of 2 processes; LoRA: the engine gets "
                             "merged weights)")
    assert choose_sampler("auto").reason == "vLLM 0.32.0 is installed"


def test_sampler_vllm_without_vllm_is_one_error_naming_the_option(tmp_path, tiny_model_dir, capsys):
    argv = [f"log_path={tmp_path / 'run'}", f"model_name={tiny_model_dir}", "sampler=vllm", "rounds=1",
            "max_new_tokens=8", "max_length=128", "display=plain", "show_example=false"]
    assert run_cli(main, argv) == 2
    assert "sampler=vllm: vLLM is not installed (scripts/setup.sh installs it" in capsys.readouterr().err


def test_an_unknown_sampler_is_rejected_at_the_command_line(tmp_path, capsys):
    assert run_cli(main, [f"log_path={tmp_path}", "sampler=fast"]) == 2
    assert "sampler" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["native"])
def test_native_is_native(name):
    assert choose_sampler(name).name == "native"
