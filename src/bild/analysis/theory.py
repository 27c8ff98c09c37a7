"""Closed forms from Yin, Chen, Huang, Wang (NeurIPS 2024), "A Theoretical Perspective for Speculative
Decoding Algorithm", as pure functions over probability tensors.

Shapes: p, q [..., V] are distributions over the vocabulary V; leading dims are batch dims and
broadcast; a result written [...] drops the last dim. TV(p, q) = sum_x max(0, p(x) - q(x)).

Notation. As in verification.py (Leviathan et al.), `p` is the LARGE (target) model and `q` the
SMALL (draft) one. Yin et al. use the opposite letters: their p is the draft, their q the target,
their residual [q - p]_+ is our norm(max(0, p - q)).

Rules covered (everything per token, at one conditioning prefix, except `expected_rejections`):
    speculative sampling  x ~ q accepted w.p. min(1, p(x)/q(x)); else y ~ norm(max(0, p - q))
    batch SD (Alg. 4)     M i.i.d. drafts at a round's first position, tested depth-first against
                          r^1 = p, r^{m+1} = norm(max(0, r^m - q)); all M rejected: y ~ r^{M+1}
    eps-rule (Sec. 4)     x ~ q accepted w.p. b(x) = min(1, (p(x) + eps)/q(x)), eps >= 0; on
                          rejection Decoding-UNO samples y ~ p, Decoding-OPT y ~ norm(max(0, p - q))
At eps = 0 the eps-rule with OPT's resampling is speculative sampling (lossless); UNO's is not.
"""

from __future__ import annotations

import torch


def tv_distance(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """p, q [..., V] -> [...]: sum_x max(0, p - q) (= 1/2 |p - q|_1 when both sum to 1)."""
    return (p - q).clamp(min=0).sum(-1)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """p, q [..., V] -> [..., V]: norm(max(0, p - q)); p itself where max(0, p - q) is all zero
    (p == q: no rejection can happen, so any choice is exact)."""
    d = (p - q).clamp(min=0)
    mass = d.sum(-1, keepdim=True)
    return torch.where(mass > 0, d / mass.clamp(min=torch.finfo(d.dtype).tiny), p)


def expected_rejections(p: torch.Tensor, q: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Theorem 1: E[N_rej] = sum_t E_{x_<t ~ p}[TV(p_t, q_t)(x_<t)] for speculative sampling drafting
    to the horizon T (the paper's K = infinity; with finite drafts and bonus tokens it is an upper bound).

    p, q [..., T, V]: p[..., t, :] = p(. | x_<t), q[..., t, :] = q(. | x_<t) along trajectories x drawn
    from the TARGET p (not the draft). Returns [...], the sum over T per trajectory; with `weights`
    [...] (trajectory probabilities under p, or 1/N for N samples) returns the scalar sum(weights * .)."""
    n = tv_distance(p, q).sum(-1)
    return n if weights is None else (weights * n).sum()


def residual_chain(p: torch.Tensor, q: torch.Tensor, num_drafts: int) -> torch.Tensor:
    """p, q [..., V] -> [..., M+1, V]: r^1 = p, r^{m+1} = residual(r^m, q), m = 1..M (Alg. 4's
    first-position targets; r^{M+1} is the resampling distribution after M rejections)."""
    if int(num_drafts) != num_drafts or num_drafts < 1:
        raise ValueError(f"num_drafts must be an integer >= 1, got {num_drafts!r}")
    r = [p]
    for _ in range(int(num_drafts)):
        r.append(residual(r[-1], q))
    return torch.stack(torch.broadcast_tensors(*r), dim=-2)


def first_position_rejection(p: torch.Tensor, q: torch.Tensor, num_drafts: int) -> torch.Tensor:
    """p, q [..., V] -> [...]: P(all M first tokens of batch SD, Alg. 4, are rejected)
    = prod_{m=1..M} TV(r^m, q) (Theorem 3). M = 1 gives TV(p, q)."""
    r = residual_chain(p, q, num_drafts)[..., :-1, :]
    return tv_distance(r, q.unsqueeze(-2)).prod(-1)


def batch_improvement(p: torch.Tensor, q: torch.Tensor, num_drafts: int) -> torch.Tensor:
    """p, q [..., V] -> [...]: TV(p, q) - prod_m TV(r^m, q) >= 0, Theorem 3's per-position gain of M
    drafts at a round's first position (0 for M = 1)."""
    return tv_distance(p, q) - first_position_rejection(p, q, num_drafts)


def _eps(eps, p: torch.Tensor) -> torch.Tensor:
    """eps float or [...] -> tensor broadcastable against p [..., V]; eps < 0 is not a valid slack."""
    e = torch.as_tensor(eps, dtype=p.dtype, device=p.device)
    if bool((e < 0).any()) or bool(e.isnan().any()):
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    return e.unsqueeze(-1) if e.dim() else e


def accept_prob(p: torch.Tensor, q: torch.Tensor, eps=0.0) -> torch.Tensor:
    """p, q [..., V], eps float or [...] -> b [..., V] = min(1, (p + eps)/q); 1 where q = 0 (never drafted)."""
    e = _eps(eps, p)
    return torch.where(q > 0, ((p + e) / q).clamp(max=1), torch.ones_like(q))


def _accepted(p: torch.Tensor, q: torch.Tensor, eps) -> torch.Tensor:
    """[..., V]: b(x) q(x) = min(q, p + eps), the output mass of accepted drafts."""
    return torch.minimum(q, p + _eps(eps, p))


def uno_rejection(p: torch.Tensor, q: torch.Tensor, eps=0.0) -> torch.Tensor:
    """p, q [..., V], eps float or [...] -> [...]: P(reject) = 1 - sum b q = sum_x max(0, q - p - eps)
    under the eps-rule (the same for UNO and OPT, which share the test). eps = 0: TV(p, q)."""
    return (q - _accepted(p, q, eps)).sum(-1)


def uno_distribution(p: torch.Tensor, q: torch.Tensor, eps=0.0) -> torch.Tensor:
    """p, q [..., V], eps -> [..., V]: one token of Decoding-UNO, min(q, p + eps) + P(reject) * p.
    Not p even at eps = 0 (min(p, q) + TV(p, q) p); bild's sampler switches to the residual at
    eps = 0, i.e. follows `opt_distribution(p, q, 0) == p` there."""
    a = _accepted(p, q, eps)
    return a + (q - a).sum(-1, keepdim=True) * p


def opt_distribution(p: torch.Tensor, q: torch.Tensor, eps=0.0) -> torch.Tensor:
    """p, q [..., V], eps -> [..., V]: one token of Decoding-OPT, min(q, p + eps) + P(reject) * residual(p, q).
    The paper's choice [A]_+ (App. G) equals the plain residual; it is in Theorem 4's optimal set for
    every eps >= 0 (P(reject) <= TV(p, q)), so its loss is `optimal_loss(p, q, accept_prob(p, q, eps))`.
    eps = 0: exactly p (speculative sampling)."""
    a = _accepted(p, q, eps)
    return a + (q - a).sum(-1, keepdim=True) * residual(p, q)


def tv_loss(dist: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """dist, p [..., V] -> [...]: TV(dist, p), the bias of a produced distribution against the target.
    Theorem 5: uno_rejection + tv_loss(opt_distribution, p) == TV(p, q) for every eps >= 0."""
    return tv_distance(dist, p)


def optimal_loss(p: torch.Tensor, q: torch.Tensor, accept: torch.Tensor) -> torch.Tensor:
    """p, q [..., V], accept b [..., V] in [0, 1] (any acceptance rule) -> [...]: Theorem 4's
    Loss*(b) = min over resampling distributions of TV(output, p) = sum_x max(0, b q - p).

    General form of Theorem 5: P(reject) + Loss*(b) = TV(p, q) + sum_x max(0, min(p, q) - b q),
    with P(reject) = sum_x (1 - b) q. The line is exact iff b >= min(1, p/q) wherever q > 0, which the
    eps-rule satisfies for every eps >= 0; an under-accepting b lies above it."""
    return (accept * q - p).clamp(min=0).sum(-1)
