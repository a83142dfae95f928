"""Shared fixtures: small configs that keep the unit suite fast on two CPU cores."""

import os

import pytest
import torch

from minimind_ref import MiniMindConfig

if os.environ.get("PYTEST_XDIST_WORKER"):
    # two xdist workers on two cores: a second intra-op thread per worker only oversubscribes the CPU
    # (OpenMP threads spin-wait on each other; seen here as a 10x slow-down under load)
    torch.set_num_threads(1)


def tiny_config(**overrides) -> MiniMindConfig:
    """4 heads of 16 dims over 2 KV heads, 2 layers, 97 tokens: every code path at toy size."""
    kw = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=97,
        max_position_embeddings=256,
    )
    kw.update(overrides)
    return MiniMindConfig(**kw)


@pytest.fixture
def cfg() -> MiniMindConfig:
    return tiny_config()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
