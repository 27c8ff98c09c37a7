"""Verification rules: which drafted tokens the large model keeps, and what it writes next.

All rules take the same tensors (B rows, K draft slots, V vocabulary):
    drafts    [B, K]      drafted tokens (entries at j >= n_draft[b] are ignored)
    n_draft   [B]         drafted tokens per row
    p         [B, K+1, V] large-model probabilities after the logits processors; p[:, j] is the
                          distribution for draft slot j, p[b, n_draft[b]] the one after the last draft
    q         [B, K, V]   small-model probabilities the drafts were drawn from (sampling rules only)
and return `n_accept` [B] (kept drafts) and `next_token` [B] (the large model's token after them).
`verify_block` judges the drafts jointly (Sun et al. 2025) instead of one by one.
`verify_batch_drafts` takes M drafts per row (an extra dim after B) and also returns which one it followed.

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
    if resample == "residual":  # (computed for every row: no host read)
        q_pad = torch.cat([q, q.new_zeros(q.shape[0], 1, q.shape[-1])], dim=1)  # no q after the last draft
        residual = (p_next - _at(q_pad, n_accept)).clamp(min=0)
        mass = residual.sum(-1, keepdim=True)
        use = rejected[:, None] & (mass > 0)
        p_next = torch.where(use, residual / mass.clamp(min=1e-30), p_next)
    return n_accept, _choose(p_next, True)


def _block_weights(ratio: torch.Tensor) -> torch.Tensor:
    """ratio [B, K] -> [B, K+1]: w_0 = 1, w_i = min(1, w_{i-1} * ratio_i) (the paper's p_i).
    A clamped running product, in log space: log w_i = S_i - max_{j<=i} S_j with S_i = sum_{j<=i} log ratio_j."""
    s = torch.cat([ratio.new_zeros(ratio.shape[0], 1), ratio.log().cumsum(-1)], dim=1)
    return (s - s.cummax(-1).values).exp()


def _block_residual(w: torch.Tensor, p: torch.Tensor, q_next: torch.Tensor) -> torch.Tensor:
    """w [B, K+1], p and q_next [B, K+1, V] -> max(0, w_i p(.|X^i) - q(.|X^i)) [B, K+1, V]."""
    return (w[..., None] * p - q_next).clamp(min=0)


def _block_h(mass: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """h_i = Z_i / (Z_i + 1 - w_i) [B, K+1]; 0/0 (Z_i = 0, w_i = 1: p(.|X^i) = q(.|X^i)) is 1."""
    den = mass + (1 - w)
    return torch.where(den > 0, mass / den.clamp(min=torch.finfo(den.dtype).tiny), torch.ones_like(den))


def verify_block(drafts, n_draft, p, q):
    """Block verification (Sun et al., ICLR 2025, "Block Verification Accelerates Speculative Decoding",
    Alg. 2): the drafts are judged as one block. Lossless (the output follows p exactly), and in expectation
    it keeps at least as many drafts as `verify_exact_sampling` (eps 0) on the same p, q.

    Shapes as in the module docstring (q may have more than K slots: the extra ones are ignored).
    Paper -> here: M_b = p (large), M_s = q (small), gamma = n_draft[b], X_i = drafts[b, i-1],
    M_b(.|c, X^i) = p[b, i], M_s(.|c, X^i) = q[b, i]. Per row, with p_0 = 1 and eta_i ~ U(0, 1):
        p_i  = min(1, p_{i-1} * M_b(X_i | X^{i-1}) / M_s(X_i | X^{i-1}))             i = 1..gamma
        Z_i  = sum_x max(0, p_i M_b(x | X^i) - M_s(x | X^i))                         i = 0..gamma-1
        h_i  = Z_i / (Z_i + 1 - p_i) for i < gamma;  h_gamma = p_gamma
        tau  = max{i in 1..gamma : eta_i <= h_i}, or 0 if there is none
    n_accept = tau (X_1..X_tau kept). next_token ~ norm(max(0, p_tau M_b(.|X^tau) - M_s(.|X^tau))) if
    tau < gamma (tau = 0: the token-wise residual norm(max(0, p - q))), ~ M_b(.|X^gamma) if tau = gamma
    (the bonus token). Unlike the token-wise rule, tau is the LAST index that passes: a later pass keeps
    drafts an earlier failure would have dropped.
    Here M_s(.|X^gamma) is taken as 0, which makes i = gamma the same formulas: Z_gamma = p_gamma, so
    h_gamma = p_gamma and the residual is M_b(.|X^gamma). A residual of mass 0 (a rounding case) samples
    M_b(.|X^tau). A draft with q = 0 (not drawn from q) counts as a ratio of 1/tiny. The paper's p_i is `w`
    in the code (p is the large model's probabilities here).
    gamma may depend on the drafts (a fallback, eos, batch fill): a stop is a draft of an end symbol that M_b
    never writes, so the output stays exact. Sampling only: under greedy decoding the engine uses
    `verify_exact_greedy`.
    """
    h, residual, mass = _block_terms(drafts, n_draft, p, q)
    i = torch.arange(h.shape[1], device=h.device)
    n_accept = ((torch.rand_like(h) < h) * i).amax(-1)  # tau: the last eta_i < h_i, else 0
    res, z = _at(residual, n_accept), _at(mass, n_accept)[:, None]
    nxt = torch.where(z > 0, res / z.clamp(min=torch.finfo(z.dtype).tiny), _at(p, n_accept))
    return n_accept, _choose(nxt, True)


def _block_terms(drafts, n_draft, p, q):
    """`verify_block`'s deterministic part -> h [B, K+1] (h_i; 0 outside i in 1..gamma), the residuals
    max(0, p_i M_b(.|X^i) - M_s(.|X^i)) [B, K+1, V] and their masses Z_i [B, K+1]."""
    B, K = drafts.shape
    q = q[:, :K]
    i = torch.arange(K + 1, device=p.device)
    in_draft = i[None, :K] < n_draft[:, None]  # [B, K]
    p_draft = p[:, :K].gather(-1, drafts[..., None]).squeeze(-1)
    q_draft = q.gather(-1, drafts[..., None]).squeeze(-1)
    ratio = torch.where(in_draft, p_draft / q_draft.clamp(min=torch.finfo(q.dtype).tiny), 1.0)
    w = _block_weights(ratio)  # p_0 .. p_K  [B, K+1]
    q_next = torch.where(in_draft[..., None], q, 0.0)  # M_s(.|X^i), 0 from X^gamma on
    q_next = torch.cat([q_next, q.new_zeros(B, 1, q.shape[-1])], dim=1)  # [B, K+1, V]
    residual = _block_residual(w, p, q_next)  # [B, K+1, V]
    mass = residual.sum(-1)  # Z_0 .. Z_K  [B, K+1]
    candidate = (i >= 1) & (i <= n_draft[:, None])
    return torch.where(candidate, _block_h(mass, w), 0.0), residual, mass


def verify_batch_drafts(drafts, n_draft, p, q):
    """Batch speculative decoding (Yin et al. 2024, Alg. 4): M i.i.d. drafts per row, all continuing the
    same committed prefix, verified depth-first; lossless (the output follows p exactly).

        drafts   [B, M, K]      long; entries at j >= n_draft[b, m] are ignored
        n_draft  [B, M]         drafted tokens per draft (may differ within a row; 0 = no draft, never chosen)
        p        [B, M, K+1, V] large-model probabilities; p[b, m, j] follows draft m's first j tokens, so
                                p[b, m, 0] is the same for every m (only p[:, 0, 0] is read at the root)
        q        [B, M, K, V]   small-model probabilities the drafts were drawn from (q[b, m, 0] equal for all m)
    Returns (chosen [B], n_accept [B], next_token [B]), long: the draft followed, its kept tokens
    drafts[b, chosen[b], :n_accept[b]], and the large model's token written after them.

    Root (first position): r^1 = p(.|prefix); draft m's first token a is accepted w.p. min(1, r^m(a)/q(a)),
    else r^{m+1} = norm(max(0, r^m - q)); drafts with n_draft 0 are skipped (no test, no update). If no
    first token is accepted: chosen = 0, n_accept = 0, next_token ~ r after the last update.
    After an accepted first token: `verify_exact_sampling` (plain p, eps 0) on that draft's remaining
    tokens, with its bonus token from p after a fully accepted draft. M = 1 is `verify_exact_sampling`.
    """
    B, M, K = drafts.shape
    chosen = torch.zeros(B, dtype=torch.long, device=drafts.device)
    n_accept = torch.zeros_like(chosen)
    r = p[:, 0, 0]  # r^1 = p
    if K == 0:
        return chosen, n_accept, _choose(r, True)
    found = torch.zeros(B, dtype=torch.bool, device=drafts.device)
    for m in range(M):
        live = ~found & (n_draft[:, m] > 0)
        a = drafts[:, m, :1]
        q_root = q[:, m, 0]  # draft m's own copy: only read where live
        r_a, q_a = r.gather(-1, a).squeeze(-1), q_root.gather(-1, a).squeeze(-1)
        acc = live & (torch.rand_like(r_a) < (r_a / q_a).clamp(max=1.0))  # 0/0 = nan: rejected
        chosen = torch.where(acc, m, chosen)
        found |= acc
        # r^{m+1} = norm(max(0, r^m - q)); all-zero only if r^m == q (then a rejection has probability 0):
        # keep r^m, as verify_exact_sampling keeps p
        d = (r - q_root).clamp(min=0)
        mass = d.sum(-1, keepdim=True)
        upd = (live & ~acc)[:, None] & (mass > 0)
        r = torch.where(upd, d / mass.clamp(min=torch.finfo(d.dtype).tiny), r)
    next_token = _choose(r, True)  # used where all first tokens were rejected
    # followed draft: plain speculative sampling from slot 1 (computed for every row, kept where found:
    # no host read)
    rows = torch.arange(B, device=drafts.device)
    n_rest, nxt = verify_exact_sampling(
        drafts[rows, chosen, 1:], (n_draft[rows, chosen] - 1).clamp(min=0), p[rows, chosen, 1:], q[rows, chosen, 1:]
    )
    n_accept = torch.where(found, 1 + n_rest, n_accept)
    next_token = torch.where(found, nxt, next_token)
    return chosen, n_accept, next_token
