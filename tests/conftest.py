"""Shared fixtures: tiny models built from configs, never downloaded."""

from __future__ import annotations

import pytest
import torch

from hf_fastrm.testing_utils import tiny_head, tiny_llava


@pytest.fixture(scope="session")
def llava64():
    """A tiny LLaVA in float64 (incremental decoding then matches a full forward to ~1e-12)."""
    return tiny_llava(seed=0, dtype=torch.float64)


@pytest.fixture(scope="session")
def llava():
    return tiny_llava(seed=0)


@pytest.fixture()
def head(llava):
    return tiny_head(llava)


@pytest.fixture()
def head64(llava64):
    return tiny_head(llava64).double()


def hook_snapshot(model: torch.nn.Module) -> dict[str, tuple]:
    """The forward hooks and pre-hooks of every module of `model` (transformers adds some of its own)."""
    return {
        name: (tuple(module._forward_hooks), tuple(module._forward_pre_hooks))
        for name, module in model.named_modules()
        if module._forward_hooks or module._forward_pre_hooks
    }
