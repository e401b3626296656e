"""Shared fixtures: the embedded model (loaded once per session) and a tiny random Llama stand-in."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smol():
    """SmolLM2-135M-Instruct in float32: (model, tokenizer)."""
    from helpers.models import load_model

    return load_model("smollm2-135m-instruct", dtype="float32")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smol):
    """A random-init 2-block Llama with SmolLM2's tokenizer, saved as a local checkpoint: the small local
    stand-in for paper-profile models (same code path as a hub checkpoint)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tok = smol
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg)
    d = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny(tiny_llama_dir):
    from helpers.models import load_model

    return load_model(str(tiny_llama_dir), dtype="float32")
