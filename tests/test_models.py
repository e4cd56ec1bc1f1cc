"""Model loading: the bundled GGUF model, local dirs, hub ids offline, tiny test models."""

import pytest
import torch

from cookbook import models
from cookbook.renderers import get_renderer


def test_bundled_tokenizer_has_the_gguf_special_tokens(tokenizer):
    # The GGUF metadata says eos = pad = <|im_end|> (id 2); some conversions get this wrong.
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|im_end|>"
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == 2


def test_bundled_model_config_matches_the_file():
    config_dir = models.bundled_model_dir()
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(config_dir)
    assert config.eos_token_id == 2 and config.pad_token_id == 2
    assert not hasattr(config, "quantization_config")
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (576, 30, 49152)


def test_hub_id_offline_fails_fast_with_advice(monkeypatch, network_attempts):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelNotFoundError, match=r"Qwen/Qwen3-0.6B.*model_name=DIR"):
        models.resolve_model_path("Qwen/Qwen3-0.6B")
    assert network_attempts == []


@pytest.mark.parametrize(("value", "offline"), [("1", True), ("TRUE", True), ("yes", True), ("on", True),
                                               ("0", False), ("false", False), ("no", False), ("", False),
                                               (" 1", False)])
def test_offline_variables_are_read_as_huggingface_hub_reads_them(monkeypatch, value, offline):
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert models.hub_offline() is offline
    assert models.hub_offline(for_datasets=True) is offline
    # HF_DATASETS_OFFLINE keeps `datasets` off the hub, not model downloads.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", value)
    assert models.hub_offline() is False and models.hub_offline(for_datasets=True) is offline


def test_hub_id_with_unreachable_hub_fails_fast(monkeypatch, network_attempts):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(models.ModelNotFoundError, match="cannot be reached"):
        models.resolve_model_path("someone/some-model")
    # One refused connect, then the advice: no retries and no download attempt.
    assert [attempt for attempt in network_attempts if attempt[0] == "connect"] == [("connect", ("127.0.0.1", 9))]


def test_a_broken_cache_entry_is_named_not_taken_for_a_missing_one(tmp_path, monkeypatch):
    """Only "not cached" falls through to the hub advice; a cache entry that cannot be read says so."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # read when called
    (tmp_path / "models--org--name" / "refs" / "main").mkdir(parents=True)  # refs/main must be a file
    with pytest.raises(models.ModelNotFoundError, match=r"reading the local Hugging Face cache failed \(IsADirectoryError"):
        models.resolve_model_path("org/name")
    with pytest.raises(models.ModelNotFoundError, match="not in the local Hugging Face cache"):
        models.resolve_model_path("org/other")
    with pytest.raises(models.ModelNotFoundError, match=r"'bad id!!' is neither a local directory nor a valid hub id"):
        models.resolve_model_path("bad id!!")


def test_local_paths(tmp_path, tiny_model_dir):
    assert models.resolve_model_path(tiny_model_dir) == tiny_model_dir
    with pytest.raises(models.ModelNotFoundError, match="holds no config.json"):
        models.resolve_model_path(str(tmp_path))
    with pytest.raises(models.ModelNotFoundError, match="does not exist"):
        models.resolve_model_path(str(tmp_path / "missing"))


def test_dtype_and_device_choices():
    assert models.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert models.resolve_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="dtype='half' is not one of"):
        models.resolve_dtype("half")


def test_tiny_model_uses_the_real_vocabulary(tokenizer):
    model = models.make_tiny_model(tokenizer, seed=3)
    again = models.make_tiny_model(tokenizer, seed=3)
    assert model.config.vocab_size == len(tokenizer)
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, len(tokenizer))


@pytest.mark.slow
def test_bundled_model_answers_a_simple_question():
    model, tokenizer = models.load_model_and_tokenizer(device="cpu")
    renderer = get_renderer("chatml", tokenizer)
    prompt = renderer.build_generation_prompt([{"role": "user", "content": "What is the capital of France?"}])
    out = model.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False,
                         eos_token_id=renderer.get_stop_token_ids())
    reply = renderer.parse_response(out[0, len(prompt):].tolist())
    assert "Paris" in reply.message["content"]
    assert reply.stop_reason == "stop_sequence"


def test_second_load_reuses_the_converted_copy(monkeypatch):
    first = models.bundled_model_dir()  # converted from the GGUF file once, then cached

    def no_conversion():
        raise AssertionError("the GGUF file was converted again")

    monkeypatch.setattr(models, "bundled_gguf_path", no_conversion)
    assert models.bundled_model_dir() == first
    assert models.resolve_model_path(models.DEFAULT_MODEL) == str(first)
