"""Shared fixtures: the parity references of ../shared/parity and deterministic seeds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("UNITOK_SHARED", REPO.parent / "shared"))
VTP_PARITY = SHARED / "parity" / "vtp_small_default"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def vtp_parity_dir() -> Path:
    if not (VTP_PARITY / "model.safetensors").is_file():
        pytest.skip(f"VTP parity reference not found at {VTP_PARITY} (set UNITOK_SHARED)")
    return VTP_PARITY


@pytest.fixture(scope="session")
def vtp_reference(vtp_parity_dir) -> dict:
    return torch.load(vtp_parity_dir / "reference.pt", weights_only=False)
