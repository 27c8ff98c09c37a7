"""Device helpers of the engine's lowest layer: where a model computes, and host lists moved to a device without
waiting for its queued work."""

from __future__ import annotations

import torch


def execution_device(model) -> torch.device:
    """Where the model computes: its parameters' device or, with accelerate hooks whose weights sit on "meta"
    (offloaded), the first hook's execution device."""
    dev = model.device
    if dev.type != "meta":
        return dev
    for m in model.modules():
        hooked = getattr(getattr(m, "_hf_hook", None), "execution_device", None)
        if hooked is not None:
            return torch.device(f"cuda:{hooked}" if isinstance(hooked, int) else hooked)
    return dev


def to_device(values, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A host list -> a tensor on `device` without waiting for the device's queued work: on CUDA through
    pinned memory and a non-blocking copy (a plain `torch.tensor(list, device=cuda)` synchronises)."""
    t = torch.tensor(values, dtype=dtype)
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
