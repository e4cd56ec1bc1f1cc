"""Shared fixtures: the real bundled tokenizer and tiny random-init models built from a config."""

import os

import pytest
import torch
from helpers import save_tiny_model

from cookbook.models import load_tokenizer, make_tiny_model
from cookbook.sampling import vllm_engine


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_vllm = pytest.mark.skip(reason="vllm is not installed (scripts/setup.sh installs it)")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "vllm" in item.keywords and vllm_engine.vllm_version() is None:
            item.add_marker(skip_vllm)


@pytest.fixture(autouse=True)
def _native_sampler_unless_marked(request, monkeypatch):
    # sampler=auto picks vLLM when it is installed; only the tests marked `vllm` start an engine
    # (one per process, slow to start), every other test sees the setup without vLLM.
    if "vllm" not in request.keywords:
        monkeypatch.setattr(vllm_engine, "vllm_version", lambda: None)


@pytest.fixture(scope="session")
def tokenizer():
    """The real SmolLM2-135M-Instruct tokenizer (converted from the bundled GGUF once, then cached)."""
    return load_tokenizer()


@pytest.fixture
def tiny_model(tokenizer):
    return make_tiny_model(tokenizer)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A tiny random-init HF checkpoint directory, for tests that go through `model_name=`."""
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny-model"), tokenizer))


@pytest.fixture(scope="session", autouse=True)
def _own_data_cache(tmp_path_factory):
    # Tokenized data sets go to a cache of this test session, not the user's (and start empty).
    os.environ["COOKBOOK_DATA_CACHE"] = str(tmp_path_factory.mktemp("data-cache"))
    yield


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch):
    # Tests never reach the hub; make any accidental hub call fail fast.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    yield


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Parallel test workers share the cores: one torch thread each (and in the processes they
        # start), or their OpenMP threads spin waiting for each other.
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture
def network_attempts(monkeypatch):
    """Every host name looked up and every address connected to during the test, in order: a test of
    the offline paths asserts on these instead of on wall-clock time."""
    import socket

    attempts = []
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        attempts.append(("lookup", host))
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(sock, address):
        attempts.append(("connect", address[:2] if isinstance(address, tuple) else address))
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts
