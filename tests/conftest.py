"""Shared fixtures: each model is loaded once per test session (offline models only)."""

import pytest
import torch

from kvlab.widgets import cached_model


@pytest.fixture(scope="session", autouse=True)
def _deterministic():
    torch.manual_seed(0)


def _load(name):
    return cached_model(name)  # one instance per name, shared with the panels under test


@pytest.fixture(scope="session")
def tiny_gpt2():
    return _load("random:tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_llama():
    return _load("random:tiny-llama")


@pytest.fixture(scope="session")
def distil():
    """DistilGPT-2's shapes and tokenizer, random weights (the real one needs the hub)."""
    return _load("random:distilgpt2")


@pytest.fixture(scope="session")
def smollm2():
    return _load("smollm2-135m")


MODEL_FIXTURES = ["tiny_gpt2", "tiny_llama", "distil", "smollm2"]
