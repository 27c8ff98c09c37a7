"""A draft stored as a low-rank difference from the large model's own layers (LoRA, Hu et al. 2022).

A draft cut from the large model (:func:`bild.pairs.smollm2.make_small_from_large`) starts as copies of some
of its decoder layers.  Aligning it with LoRA adapters instead of full fine-tuning means the file that ships
holds only the adapters, the norms and the draft's vocabulary (a few MB), not the layers (28 MB for 4 layers
in float16): the repository grows by the delta per retraining, and everything else comes from the large
model the user already has.

    inject_lora(small, rank=64)              # training: adapters on every Linear of the decoder layers
    state = lora_delta(small)                # {"<linear>.lora_A": [r, in], "<linear>.lora_B": [out, r]}
    merge_lora_delta(plain_small, state)     # loading: W += B @ A, in place (no peft needed)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SUFFIX_A, SUFFIX_B = ".lora_A", ".lora_B"


def inject_lora(
    model, rank: int, alpha: float | None = None, targets: Sequence[str] = LORA_TARGETS, train_norms: bool = True
):
    """Add LoRA adapters (peft, in place, no wrapper) to ``targets`` and freeze everything else, except
    the RMS/LayerNorm weights when ``train_norms``.  Returns ``model``."""
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise ValueError(f"`rank` must be >= 1, got {rank}")
    cfg = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        lora_dropout=0.0,
        target_modules=list(targets),
        bias="none",
    )
    for p in model.parameters():
        p.requires_grad_(False)
    inject_adapter_in_model(cfg, model)
    for name, p in model.named_parameters():
        if "lora_" in name or (train_norms and "norm" in name.rsplit(".", 2)[-2]):
            p.requires_grad_(True)
    return model


def _lora_layers(model):
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # without peft no model has LoRA layers
        return

    for name, m in model.named_modules():
        if isinstance(m, LoraLayer):
            yield name, m


def lora_delta(model) -> dict[str, torch.Tensor]:
    """The adapters of an :func:`inject_lora` model, scale folded into B: ``{<linear>.lora_A: [r, in],
    <linear>.lora_B: [out, r]}``, keyed by the plain model's Linear names (``W += B @ A`` restores it)."""
    out = {}
    for name, m in _lora_layers(model):
        a = m.lora_A["default"].weight.detach()
        b = m.lora_B["default"].weight.detach() * m.scaling["default"]
        out[name + SUFFIX_A], out[name + SUFFIX_B] = a.clone(), b.clone()
    return out


def without_lora(model, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``model.state_dict()``-style entries of a LoRA model renamed to the plain model's keys
    (``<linear>.base_layer.weight`` -> ``<linear>.weight``), adapters dropped."""
    return {k.replace(".base_layer.", "."): v for k, v in state.items() if "lora_" not in k}


@torch.no_grad()
def merge_lora_delta(model, delta: dict[str, torch.Tensor]):
    """``W += B @ A`` for every adapter pair in ``delta`` (from :func:`lora_delta`), in place; ValueError
    naming the first key that does not fit ``model``."""
    mods = dict(model.named_modules())
    for key_a in [k for k in delta if k.endswith(SUFFIX_A)]:
        name = key_a[: -len(SUFFIX_A)]
        lin = mods.get(name)
        b = delta.get(name + SUFFIX_B)
        if lin is None or not isinstance(lin, torch.nn.Linear) or b is None:
            raise ValueError(f"draft delta entry {key_a!r} has no Linear {name!r} (or no {SUFFIX_B}) in the model")
        w = lin.weight
        upd = b.to(torch.float32) @ delta[key_a].to(torch.float32)
        if upd.shape != w.shape:
            raise ValueError(f"draft delta for {name!r} is {tuple(upd.shape)}, the layer is {tuple(w.shape)}")
        w.add_(upd.to(w.dtype))
    return model


def is_delta(state: dict[str, torch.Tensor]) -> bool:
    return any(k.endswith(SUFFIX_A) for k in state)


@torch.no_grad()
def low_rank_delta(tuned, base, rank: int, targets: Sequence[str] = LORA_TARGETS) -> dict[str, torch.Tensor]:
    """A fully fine-tuned draft's change from ``base`` (the same cut of the large model, untrained) as rank-``rank``
    adapters in the :func:`lora_delta` format: the truncated SVD of each targeted Linear's difference (the best
    rank-``rank`` approximation in the Frobenius norm)."""
    mods = dict(base.named_modules())
    out = {}
    for name, m in tuned.named_modules():
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets and name in mods:
            d = m.weight.float() - mods[name].weight.float()
            u, s, vh = torch.linalg.svd(d, full_matrices=False)
            r = min(rank, s.numel())
            out[name + SUFFIX_A], out[name + SUFFIX_B] = vh[:r].clone(), (u[:, :r] * s[:r]).clone()
    return out
