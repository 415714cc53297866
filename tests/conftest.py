"""Shared fixtures: every backbone, every adapter form (the helpers they use are in tests/helpers.py)."""

from __future__ import annotations

import pytest
import torch

from orchestrator.moss import MossConfig
from tests.helpers import ADAPTERS, BACKBONE_NAMES, spec_for

torch.set_num_threads(2)


@pytest.fixture(params=BACKBONE_NAMES)
def spec(request):
    return spec_for(request.param)


@pytest.fixture(params=list(ADAPTERS))
def adapter(request) -> MossConfig:
    return ADAPTERS[request.param]
