"""Which device `accelerate` should use, so that CPU-only processes started by a launcher join one process group."""

from __future__ import annotations

import os

import torch


def wants_cpu(cpu: bool = False, device: str | torch.device | None = None) -> bool:
    """Whether to run on the CPU: asked for (`cpu`, a CPU `device`, ``ACCELERATE_USE_CPU=1``) or no accelerator.

    `accelerate`'s `PartialState` forms a multi-process group on the CPU (gloo) only when told to use the CPU; without
    this, processes started by ``accelerate launch`` / ``torchrun`` on a machine without GPUs would each work alone
    on the whole corpus.
    """
    if cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes", "y", "on"):
        return True
    if device is not None:
        return torch.device(device).type == "cpu"
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return not accelerator.is_available()
    return not torch.cuda.is_available()
