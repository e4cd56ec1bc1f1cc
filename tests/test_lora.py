"""LoRA (`lora_rank=N`): the reference is the adapter-off model, only adapters train, checkpoints are
peft adapters (plus a merged final), they load as models everywhere, and resume is exact."""

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from helpers import save_tiny_model
from safetensors.torch import load_file

from cookbook.errors import RunStopped
from cookbook.models import load_model_and_tokenizer, make_tiny_model
from cookbook.recipes.preference.train import cli
from cookbook.renderers import get_renderer
from cookbook.training import checkpoint as ckpt
from cookbook.training import loop as loop_module
from cookbook.training import lora
from cookbook.training import metrics as metrics_module
from cookbook.training.logprobs import pad_batch, sequence_logprobs
from cookbook.training.metrics import read_metrics
from cookbook.training.resume_config import ResumeConfigError, check_resume_config

FAST = ["dataset.max_pairs=48", "dataset.test_size=16", "max_length=128", "show_example=false"]
LORA = ["lora_rank=8", "learning_rate=5e-3"]
DECODER_LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def run(tmp_path: Path, model: str, *args: str, name: str = "run") -> Path:
    log_path = tmp_path / name
    cli([f"log_path={log_path}", f"model_name={model}", *FAST, *args])
    return log_path


def train_records(log_path: Path) -> list[dict]:
    return [r for r in read_metrics(log_path) if "dpo_loss" in r]


def first_eval(log_path: Path) -> dict:
    return next(r for r in read_metrics(log_path) if "test/accuracy" in r)


def sample_batch(tokenizer, count: int = 4):
    renderer = get_renderer("chatml", tokenizer)
    examples = [renderer.build_completion_example([{"role": "user", "content": f"Question {i}: name a colour."}],
                                                  [{"role": "assistant", "content": "Blue, or perhaps green." * (i + 1)}])
                for i in range(count)]
    return pad_batch(examples, tokenizer.pad_token_id)


def logps(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return sequence_logprobs(model, *batch)


def randomize_adapters(model, scale: float = 0.05) -> None:
    """Give every adapter weight (B too, which starts at 0) a random value, so the adapters matter."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if lora.is_adapter_parameter(name):
                param.copy_(torch.randn(param.shape, generator=generator) * scale)


# ---------------------------------------------------------------------------------------------
# The adapters themselves


def test_adapter_off_logprobs_equal_the_base_model(tiny_model, tokenizer):
    batch = sample_batch(tokenizer)
    base = logps(tiny_model, batch)
    adapters = lora.add_adapters(tiny_model, lora.LoraSettings(8, 32.0, 0.0, "all-linear"))
    assert torch.equal(logps(tiny_model, batch), base)  # B = 0 at the start: nothing changes
    randomize_adapters(tiny_model)
    adapted = logps(tiny_model, batch)
    assert (adapted - base).abs().min() > 1e-2  # the adapters do change every sequence
    with adapters.adapters_off():
        assert torch.equal(logps(tiny_model, batch), base)
    assert torch.equal(logps(tiny_model, batch), adapted)  # and come back on after the context
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert trainable and all(lora.is_adapter_parameter(n) for n in trainable)


def test_saved_adapter_loads_in_peft_and_merged_matches(tmp_path, tokenizer, tiny_model_dir):
    """PeftModel.from_pretrained(base, dir) gives the trained model's log-probs exactly, and the
    merged model (W + scale * B @ A, one fp32 matmul instead of two) within 1e-4 on summed log-probs."""
    from peft import PeftModel

    batch = sample_batch(tokenizer)
    model, _ = load_model_and_tokenizer(tiny_model_dir, dtype="float32", device="cpu")
    adapters = lora.add_adapters(model, lora.LoraSettings(4, 16.0, 0.0, "q_proj,v_proj,up_proj"))
    randomize_adapters(model)
    adapted = logps(model, batch)
    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir()
    adapters.save(adapter_dir, adapters.adapter_state(model, lambda t: t), base_model_name=tiny_model_dir)
    tokenizer.save_pretrained(adapter_dir)
    assert load_file(adapter_dir / "adapter_model.safetensors").keys() == {
        f"base_model.model.model.layers.{i}.{part}.lora_{ab}.weight"
        for i in range(2) for part in ("self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj") for ab in "AB"}

    base, _ = load_model_and_tokenizer(tiny_model_dir, dtype="float32", device="cpu")
    in_peft = PeftModel.from_pretrained(base, str(adapter_dir))
    torch.testing.assert_close(logps(in_peft.get_base_model(), batch), adapted, rtol=0, atol=1e-6)
    merged, _ = load_model_and_tokenizer(str(adapter_dir), dtype="float32", device="cpu")  # base from the adapter
    assert type(merged).__name__ == "LlamaForCausalLM" and not any("lora" in n for n, _ in merged.named_parameters())
    assert (logps(merged, batch) - adapted).abs().max() < 1e-4


def test_target_modules_resolve_against_the_model(tiny_model, tokenizer):
    assert lora.resolve_target_modules(tiny_model, "all-linear") == DECODER_LINEAR
    with pytest.raises(ValueError, match="no module named 'qkv'.*q_proj"):
        lora.resolve_target_modules(tiny_model, "q_proj,qkv")
    # Tied embeddings: an adapter on either could not be merged, so it is refused.
    with pytest.raises(ValueError, match="lm_head share one weight matrix"):
        lora.resolve_target_modules(tiny_model, "all-linear,lm_head")
    untied = make_tiny_model(tokenizer, tie_word_embeddings=False)
    assert lora.resolve_target_modules(untied, "all-linear,lm_head,embed_tokens")[-2:] == ["lm_head", "embed_tokens"]


def test_head_and_embedding_adapters_merge_exactly_on_an_untied_model(tokenizer, tmp_path):
    """With lm_head adapted the log-probs take the full-logits path (the chunked head reads the bare
    weight); the merged model matches the adapter model."""
    model_dir = save_tiny_model(tmp_path / "untied", tokenizer, tie_word_embeddings=False)
    batch = sample_batch(tokenizer)
    model, _ = load_model_and_tokenizer(str(model_dir), dtype="float32", device="cpu")
    adapters = lora.add_adapters(model, lora.LoraSettings(4, 8.0, 0.0, "q_proj,lm_head,embed_tokens"))
    randomize_adapters(model)
    adapted = logps(model, batch)
    with adapters.adapters_off():
        assert (logps(model, batch) - adapted).abs().min() > 1e-2
    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir()
    adapters.save(adapter_dir, adapters.adapter_state(model, lambda t: t), base_model_name=str(model_dir))
    merged, _ = load_model_and_tokenizer(str(adapter_dir), dtype="float32", device="cpu")
    assert (logps(merged, batch) - adapted).abs().max() < 1e-4


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("lora_rank=-1", r"lora_rank must be >= 0 \(0: full fine-tuning\), got -1"),
        ("lora_alpha=0", "lora_alpha must be a finite number > 0, got 0"),
        ("lora_dropout=1", r"lora_dropout must be in \[0, 1\), got 1"),
        ("lora_target_modules=q_proj;v_proj", "'q_proj;v_proj' is not a module name"),
        ("lora_target_modules=,", "lora_target_modules is empty"),
        ("lora_alpha=16", r"lora_alpha=16.0 needs lora_rank > 0 \(lora_rank=0 is full fine-tuning\)"),
    ],
)
def test_bad_lora_options_fail_before_loading_a_model(tmp_path, arg, message, monkeypatch):
    monkeypatch.setattr(loop_module, "load_model_and_tokenizer", lambda *a, **k: pytest.fail("model loaded"))
    rank = [] if "needs lora_rank" in message or arg.startswith("lora_rank") else ["lora_rank=8"]
    with pytest.raises(Exception, match=message):
        cli([f"log_path={tmp_path / 'x'}", *rank, arg])


def test_an_unknown_target_module_names_the_option(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="lora_target_modules: the model has no module named 'qkv_proj'"):
        run(tmp_path, tiny_model_dir, "lora_rank=4", "lora_target_modules=qkv_proj", "max_steps=1")


def test_resume_refuses_a_changed_lora_option():
    stored = {"lora_rank": 8, "lora_alpha": 32.0, "eval_every": 10}
    with pytest.raises(ResumeConfigError, match="lora_rank 8 -> 16"):
        check_resume_config(stored, {**stored, "lora_rank": 16})
    assert check_resume_config(stored, {**stored, "eval_every": 5}) == {"eval_every": (10, 5)}


# ---------------------------------------------------------------------------------------------
# A LoRA run through the real CLI


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir):
    """4 LoRA steps with a resumable checkpoint at step 2 and a merged final."""
    log_path = tmp_path_factory.mktemp("lora") / "run"
    cli([f"log_path={log_path}", f"model_name={tiny_model_dir}", *FAST, *LORA, "max_steps=4", "batch_size=4",
         "micro_batch_size=2", "save_every=2", "eval_every=2", "precision=fp32"])
    return log_path


def test_step_zero_is_the_reference_and_the_run_learns(lora_run):
    assert first_eval(lora_run)["test/dpo_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first_eval(lora_run)["test/accuracy"] == 0.5
    records = train_records(lora_run)
    assert records[0]["dpo_loss"] == pytest.approx(math.log(2), abs=1e-6) and records[0]["margin"] == 0.0
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in records)
    last_eval = [r for r in read_metrics(lora_run) if "test/accuracy" in r][-1]
    assert last_eval["step"] == 4 and last_eval["test/dpo_loss"] < math.log(2) - 0.01


def test_checkpoints_are_peft_adapters_with_our_metadata(lora_run, tiny_model_dir):
    final = lora_run / "final"
    names = {p.name for p in final.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "cookbook_checkpoint.json",
            "merged"} <= names
    assert "model.safetensors" not in names and "config.json" not in names
    meta = json.loads((final / "cookbook_checkpoint.json").read_text())
    assert meta["base_model_name"] == tiny_model_dir and meta["renderer_name"] == "chatml"
    assert meta["lora"] == {"rank": 8, "alpha": 32.0, "dropout": 0.0, "target_modules": DECODER_LINEAR}
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["base_model_name_or_path"] == str(Path(tiny_model_dir).resolve())
    assert all(w.dtype == torch.float32 for w in load_file(final / "adapter_model.safetensors").values())
    step = lora_run / "step_000002"
    assert (step / "adapter_model.safetensors").exists() and (step / "training_state.pt").exists()
    assert ckpt.latest_resumable_checkpoint(lora_run)["name"] == "step_000002"
    assert ckpt.final_checkpoint(lora_run) == final


def test_only_the_adapted_weights_moved(lora_run, tiny_model_dir):
    """The merged model differs from the base exactly in the weights of the adapted linear layers."""
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(lora_run / "final" / "merged").state_dict()
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    for name, weight in start.items():
        adapted = any(f".{module}.weight" in name for module in DECODER_LINEAR)
        changed = not torch.equal(merged[name], weight)
        assert changed == adapted, name


def test_final_loads_as_a_model_everywhere(lora_run, tokenizer, tmp_path):
    """Through our loader (model_name=, load_checkpoint_path=, eval), PeftModel, and plain transformers
    on merged/: the same log-probs (tolerance: merging reorders one fp32 sum per weight)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    final = lora_run / "final"
    batch = sample_batch(tokenizer)
    base_name = json.loads((final / "cookbook_checkpoint.json").read_text())["base_model_name"]
    base, _ = load_model_and_tokenizer(base_name, dtype="float32", device="cpu")
    adapter_model = PeftModel.from_pretrained(base, str(final))
    expected = logps(adapter_model.get_base_model(), batch)
    ours, our_tokenizer = load_model_and_tokenizer(str(final), dtype="float32", device="cpu")
    plain = AutoModelForCausalLM.from_pretrained(final / "merged")
    assert our_tokenizer.get_vocab() == tokenizer.get_vocab()
    for model in (ours, plain):
        assert (logps(model, batch) - expected).abs().max() < 1e-4
    with adapter_model.disable_adapter():
        assert (logps(adapter_model.get_base_model(), batch) - expected).abs().max() > 1e-4  # it did train


def test_the_eval_provider_serves_an_adapter_checkpoint(lora_run):
    from inspect_ai.model import GenerateConfig, get_model

    final = lora_run / "final"
    model = get_model(f"cookbook/{final}", config=GenerateConfig(max_tokens=4), memoize=False, device="cpu")
    api = model.api
    assert api.spec.renderer_name == "chatml"
    merged = load_file(final / "merged" / "model.safetensors")
    served = api.model.state_dict()
    for name, weight in merged.items():
        torch.testing.assert_close(served[name], weight, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("option", ["model_name", "load_checkpoint_path"])
def test_a_run_can_start_from_an_adapter_checkpoint(lora_run, tmp_path, tiny_model_dir, option):
    """The adapter checkpoint starts the policy as base + adapter merged; its fresh adapters start at
    0, so the reference (adapters off) is that merged model and step 0 is exactly ln 2."""
    final = str(lora_run / "final")
    args = [f"{option}={final}"] if option == "load_checkpoint_path" else []
    model = final if option == "model_name" else tiny_model_dir
    log_path = run(tmp_path, model, *args, "lora_rank=4", "max_steps=1", "batch_size=4", "micro_batch_size=4",
                   "eval_every=0", "write_merged_final=false", "precision=fp32")
    assert train_records(log_path)[0]["dpo_loss"] == pytest.approx(math.log(2), abs=1e-6)
    meta = json.loads((log_path / "final" / "cookbook_checkpoint.json").read_text())
    assert meta["base_model_name"] == final and meta["renderer_name"] == "chatml"
    assert not (log_path / "final" / "merged").exists()
    # Its checkpoint stacks on the first: base -> first adapter (merged) -> second adapter.
    model_chain, _ = load_model_and_tokenizer(str(log_path / "final"), dtype="float32", device="cpu")
    assert model_chain is not None


def test_in_step_reference_is_the_adapter_off_policy(tmp_path, tiny_model_dir):
    common = ("max_steps=3", "batch_size=4", "micro_batch_size=2", "eval_every=0", "precision=fp32", *LORA)
    a = train_records(run(tmp_path, tiny_model_dir, *common, "precompute_reference=true", name="a"))
    b = train_records(run(tmp_path, tiny_model_dir, *common, "precompute_reference=false", name="b"))
    assert b[0]["dpo_loss"] == pytest.approx(math.log(2), abs=1e-6) and b[0]["margin"] == 0.0
    for ra, rb in zip(a, b):
        assert ra["dpo_loss"] == pytest.approx(rb["dpo_loss"], abs=1e-5)
        assert ra["margin"] == pytest.approx(rb["margin"], abs=1e-5)
    assert b[-1]["margin"] != 0.0  # the policy moved away from the reference


def test_the_run_prints_trainable_and_total_parameters(tmp_path, tiny_model_dir, capsys):
    run(tmp_path, tiny_model_dir, "lora_rank=2", "lora_target_modules=q_proj,v_proj", "max_steps=1",
        "batch_size=4", "micro_batch_size=4", "eval_every=0", "write_merged_final=false", "display=plain")
    out = capsys.readouterr().out
    # q_proj 64->64 and v_proj 64->32 in 2 layers, rank 2: 2 * (2*(64+64) + 2*(64+32)) = 896.
    assert "LoRA rank 2, alpha 32 (scale 16), dropout 0, on q_proj, v_proj" in out
    assert "Trainable parameters: 896 of " in out


# Each layout, loss and precision at least once (the full-fine-tuning tests cover their equivalences).
@pytest.mark.parametrize(
    ("layout", "loss_type", "precision", "extra"),
    [("padded", "dpo", "fp32", "gradient_checkpointing=true"), ("packed", "ipo", "bf16-mixed", "nll_weight=0.5"),
     ("prefix_shared", "hinge", "fp16-mixed", "lora_dropout=0.1"), ("prefix_shared", "dpo", "bf16-true", ""),
     ("packed", "simpo", "fp32", "lora_target_modules=q_proj,v_proj"),
     ("padded", "orpo", "bf16-mixed", "")],
)
def test_every_layout_loss_and_precision_trains(tmp_path, tiny_model_dir, layout, loss_type, precision, extra):
    log_path = run(tmp_path, tiny_model_dir, *LORA, f"layout={layout}", f"loss_type={loss_type}",
                   f"precision={precision}", "max_steps=2", "batch_size=4", "micro_batch_size=2", "eval_every=0",
                   "write_merged_final=false", "save_every=1", *([extra] if extra else []))
    records = train_records(log_path)
    assert len(records) == 2 and all(math.isfinite(r["dpo_loss"]) for r in records)
    if loss_type in ("dpo", "ipo", "hinge"):  # policy == reference at step 0, in every precision and layout
        assert records[0]["margin"] == 0.0
    if loss_type == "dpo":
        assert records[0]["dpo_loss"] == pytest.approx(math.log(2), abs=1e-6)
    start = load_file(log_path / "step_000001" / "adapter_model.safetensors")
    end = load_file(log_path / "final" / "adapter_model.safetensors")
    assert all(w.dtype == torch.float32 for w in end.values())
    assert any(not torch.equal(start[k], end[k]) for k in end)  # the second step moved the adapters


def test_sft_with_lora_then_dpo_from_its_adapter(tmp_path, tiny_model_dir):
    """The SFT recipe gets LoRA through the shared loop; DPO then starts from its adapter checkpoint."""
    from cookbook.recipes.sft.train import cli as sft_cli

    sft = tmp_path / "sft"
    sft_cli([f"log_path={sft}", f"model_name={tiny_model_dir}", "dataset.preference.max_pairs=48",
             "dataset.preference.test_size=16", "max_length=128", "show_example=false", "batch_size=8",
             "micro_batch_size=4", "max_steps=3", "eval_every=0", "lora_rank=8", "learning_rate=1e-2",
             "write_merged_final=false"])
    evals = [r for r in read_metrics(sft) if "test/nll" in r]
    assert evals[-1]["test/nll"] < evals[0]["test/nll"] - 0.05  # the adapters learned
    assert (sft / "final" / "adapter_model.safetensors").exists()
    dpo = run(tmp_path, str(sft / "final"), "lora_rank=4", "max_steps=1", "batch_size=4", "micro_batch_size=4",
              "eval_every=0", "write_merged_final=false", name="dpo")
    assert train_records(dpo)[0]["dpo_loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_bf16_true_keeps_fp32_adapters_on_a_bf16_base(tmp_path, tiny_model_dir, monkeypatch):
    seen = {}
    original = loop_module.Run.wrap

    def spy(self, model, causal_lm, trainable=True):
        wrapped = original(self, model, causal_lm, trainable)
        if trainable:
            seen["dtypes"] = {(lora.is_adapter_parameter(n), p.dtype, p.requires_grad) for n, p in model.named_parameters()}
            seen["optimizer"] = type(self.optimizer).__name__
        return wrapped

    monkeypatch.setattr(loop_module.Run, "wrap", spy)
    run(tmp_path, tiny_model_dir, *LORA, "precision=bf16-true", "max_steps=1", "batch_size=4", "micro_batch_size=4",
        "eval_every=0", "write_merged_final=false")
    assert seen["dtypes"] == {(True, torch.float32, True), (False, torch.bfloat16, False)}
    assert seen["optimizer"] == "AdamW"


def test_interrupted_and_resumed_lora_run_matches_uninterrupted(tmp_path, tiny_model_dir, monkeypatch):
    """Resume restores the adapters, the optimizer and the schedule exactly; the base and the cached
    reference are the starting model's."""
    common = ("max_steps=6", "batch_size=4", "micro_batch_size=2", "eval_every=3", "lr_schedule=cosine",
              "warmup_steps=2", "precision=fp32", "write_merged_final=false", *LORA)
    straight = run(tmp_path, tiny_model_dir, *common, name="straight")
    original = metrics_module.MetricLogger.log_metrics

    def log_and_interrupt(self, metrics, step):
        original(self, metrics, step)
        if step == 3 and "dpo_loss" in metrics:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(metrics_module.MetricLogger, "log_metrics", log_and_interrupt)
    with pytest.raises(RunStopped):
        run(tmp_path, tiny_model_dir, *common, name="resumed")
    monkeypatch.setattr(metrics_module.MetricLogger, "log_metrics", original)
    resumed = tmp_path / "resumed"
    stopped_at = max(r["step"] for r in train_records(resumed))
    assert 3 <= stopped_at < 6 and (resumed / f"step_{stopped_at:06d}" / "training_state.pt").exists()

    run(tmp_path, tiny_model_dir, *common, "behavior_if_log_dir_exists=resume", name="resumed")
    a = load_file(straight / "final" / "adapter_model.safetensors")
    b = load_file(resumed / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    ra, rb = read_metrics(straight), read_metrics(resumed)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb):
        for key in ("dpo_loss", "margin", "test/accuracy", "learning_rate"):
            if key in x:
                assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6), (x["step"], key)
