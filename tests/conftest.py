"""Shared fixtures: every backbone, every adapter form (the helpers they use are in tests/helpers.py)."""

from __future__ import annotations

import os

import pytest
import torch

from orchestrator.moss import MossConfig
from tests.helpers import ADAPTERS, BACKBONE_NAMES, spec_for

# 2 cores: one thread per pytest-xdist worker (two workers each spinning two OpenMP threads can run a batched
# matmul 50x slower), two when the tests run in one process
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(params=BACKBONE_NAMES)
def spec(request):
    return spec_for(request.param)


@pytest.fixture(params=list(ADAPTERS))
def adapter(request) -> MossConfig:
    return ADAPTERS[request.param]
