"""Verification rules: which drafted tokens the large model keeps, and what it writes next.

All rules take the same tensors (B rows, K draft slots, V vocabulary):
    drafts    [B, K]      drafted tokens (entries at j >= n_draft[b] are ignored)
    n_draft   [B]         drafted tokens per row
    p         [B, K+1, V] large-model probabilities after the logits processors; p[:, j] is the
                          distribution for draft slot j, p[b, n_draft[b]] the one after the last draft
    q         [B, K, V]   small-model probabilities the drafts were drawn from (sampling rules only)
and return `n_accept` [B] (kept drafts) and `next_token` [B] (the large model's token after them).

Notation. Leviathan et al. (2023) call the large (target) model p and the small (draft) model q;
Yin et al. (2024, Decoding-UNO) use the opposite letters, q for the target and p for the draft.
This code follows Leviathan: `p` is always the LARGE model, `q` the SMALL one.
"""
from __future__ import annotations

import torch


def _first_rejection(accept: torch.Tensor, n_draft: torch.Tensor) -> torch.Tensor:
    """accept [B, K] bool -> number of leading accepted drafts per row, capped at n_draft [B]."""
    in_draft = torch.arange(accept.shape[1], device=accept.device)[None, :] < n_draft[:, None]
    return (accept & in_draft).long().cumprod(-1).sum(-1)


def _at(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, T, ...] -> x[b, idx[b]] [B, ...]."""
    return x[torch.arange(x.shape[0], device=x.device), idx]


def _choose(dist: torch.Tensor, do_sample: bool) -> torch.Tensor:
    """[B, V] probabilities -> [B] tokens (argmax, or a sample)."""
    return torch.multinomial(dist, 1).squeeze(-1) if do_sample else dist.argmax(-1)


def verify_rollback(drafts, n_draft, p, threshold: float, do_sample: bool):
    """BiLD (Kim et al. 2023): reject at the first draft whose cross-entropy -log p(x) under the large
    model exceeds `threshold`; the large model's own token (argmax, or a sample of p) goes there.
    With greedy decoding a draft equal to the large model's argmax is always kept (as BiLD's code
    does): rolling it back would write the same token again."""
    p_draft = p[:, :-1].gather(-1, drafts[..., None]).squeeze(-1)
    ok = -torch.log(p_draft) <= threshold
    if not do_sample:
        ok |= drafts == p[:, :-1].argmax(-1)
    n_accept = _first_rejection(ok, n_draft)
    return n_accept, _choose(_at(p, n_accept), do_sample)


def verify_exact_greedy(drafts, n_draft, p):
    """Speculative decoding, greedy: keep drafts while they equal the large model's argmax.
    (Only the argmax of p is used, so logits may be passed in its place.)"""
    best = p.argmax(-1)
    n_accept = _first_rejection(drafts == best[:, :-1], n_draft)
    return n_accept, _at(best, n_accept)


def verify_exact_sampling(drafts, n_draft, p, q, epsilon: float = 0.0, resample: str = "residual"):
    """Speculative sampling (Leviathan et al. 2023, Alg. 1) and Yin et al.'s (2024) biased variants.

    Accept draft x with probability min(1, (p(x) + eps) / q(x)). On rejection, `resample="residual"`
    samples from norm(max(0, p - q)): lossless at eps = 0 (the output follows p exactly) and
    Decoding-OPT for eps > 0; `resample="target"` samples from p: Decoding-UNO (eps > 0).
    After a fully accepted draft, one more token is sampled from p.
    """
    p_draft = p[:, :-1].gather(-1, drafts[..., None]).squeeze(-1)
    q_draft = q.gather(-1, drafts[..., None]).squeeze(-1)
    ratio = ((p_draft + epsilon) / q_draft).clamp(max=1.0)
    n_accept = _first_rejection(torch.rand_like(ratio) < ratio, n_draft)
    p_next = _at(p, n_accept)
    rejected = n_accept < n_draft
    if resample == "residual" and bool(rejected.any()):
        q_pad = torch.cat([q, torch.zeros_like(q[:, :1])], dim=1)  # no q after the last draft
        residual = (p_next - _at(q_pad, n_accept)).clamp(min=0)
        mass = residual.sum(-1, keepdim=True)
        use = rejected[:, None] & (mass > 0)
        p_next = torch.where(use, residual / mass.clamp(min=1e-30), p_next)
    return n_accept, _choose(p_next, True)
