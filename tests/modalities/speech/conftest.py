"""Fixtures shared by the speech tests: single-threaded tiny convolutions and a random-init WavLM directory."""

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny convolutions run fastest single-threaded, and xdist runs two workers on the two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def wavlm_dir(tmp_path_factory) -> Path:
    """A random-init tiny WavLM (32-d: semantic_vae_tiny's distill_hidden_dim) saved like a facebook/wavlm-large
    download (a transformers directory)."""
    from transformers import WavLMConfig, WavLMModel

    torch.manual_seed(0)
    cfg = WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                      num_buckets=32, max_bucket_distance=64, feat_extract_norm="layer")  # fmt: skip
    path = tmp_path_factory.mktemp("wavlm")
    WavLMModel(cfg).save_pretrained(path)
    return path
