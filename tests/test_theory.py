"""bild.analysis.theory against independent references: exact enumeration of speculative decoding on tiny
Markov chains (Theorem 1), Monte Carlo of batch SD's first position (Alg. 4, Theorem 3) and of one
step of Decoding-UNO / -OPT (Theorems 4-5), linear programs for Theorem 4's optimum.

References use numpy (float64, numpy's own RNG) and plain Python loops; only bild.analysis.theory is imported.
Notation: p = LARGE/target, q = SMALL/draft (Leviathan), as in bild.
"""

from functools import cache
from itertools import product

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from scipy.stats import chisquare

from bild.analysis.theory import (
    accept_prob,
    batch_improvement,
    expected_rejections,
    first_position_rejection,
    opt_distribution,
    optimal_loss,
    residual,
    residual_chain,
    tv_distance,
    tv_loss,
    uno_distribution,
    uno_rejection,
)

N_MC = 200_000


def T64(x):
    return torch.tensor(np.asarray(x), dtype=torch.float64)


def _rand_dist(rng, v, zeros=0.0):
    x = rng.dirichlet(np.full(v, 0.7))
    if zeros:
        x = np.where(rng.random(v) < zeros, 0.0, x)
        if x.sum() == 0:
            x[rng.integers(v)] = 1.0
    return x / x.sum()


def _res_np(p, q):
    d = np.maximum(p - q, 0.0)
    return d / d.sum()


def _pair(seed, v=6, zeros=True):
    """A target/draft pair where each side has tokens the other gives probability 0."""
    rng = np.random.default_rng(seed)
    p, q = _rand_dist(rng, v), _rand_dist(rng, v)
    if zeros:
        p[0], q[1] = 0.0, 0.0
        p, q = p / p.sum(), q / q.sum()
    return p, q


# ---------------------------------------------------------------- Theorem 1: exact enumeration


def _markov(rng, v, t, zeros):
    """Non-stationary chain: init [V] and one [V, V] transition matrix per position 2..T."""
    trans = [np.stack([_rand_dist(rng, v, zeros) for _ in range(v)]) for _ in range(t - 1)]
    return _rand_dist(rng, v, zeros), trans


def _cond(chain, prefix):
    init, trans = chain
    return init if not prefix else trans[len(prefix) - 1][prefix[-1]]


def _enumerate_sd(target, draft, v, t):
    """Leviathan et al.'s speculative sampling, drafting to the horizon, enumerated exactly:
    returns (E[#rejections], {output sequence: probability})."""

    @cache
    def run(prefix):  # one round starting at the output `prefix`, then the rest
        n = len(prefix)
        if n == t:
            return 0.0, {prefix: 1.0}
        rej_total, dist = 0.0, {}

        def add(d, w):
            for k, val in d.items():
                dist[k] = dist.get(k, 0.0) + w * val

        for drafts in product(range(v), repeat=t - n):
            pr, ctx = 1.0, prefix
            for d in drafts:  # draft probability, autoregressive under q
                pr *= _cond(draft, ctx)[d]
                ctx = ctx + (d,)
            if pr == 0:
                continue
            alive = 1.0  # P(drafts[:j] all accepted)
            for j, d in enumerate(drafts):
                ctx = prefix + drafts[:j]
                pj, qj = _cond(target, ctx), _cond(draft, ctx)
                a = min(1.0, pj[d] / qj[d])
                if a < 1.0:
                    res = _res_np(pj, qj)
                    for y in range(v):
                        if res[y] > 0:
                            r_rest, d_rest = run(ctx + (y,))
                            w = pr * alive * (1 - a) * res[y]
                            rej_total += w * (1.0 + r_rest)
                            add(d_rest, w)
                alive *= a
            if alive > 0:
                add({prefix + drafts: 1.0}, pr * alive)
        return rej_total, dist

    return run(())


def _along_trajectories(target, draft, v, t, weigh_by):
    """Conditionals p(.|x_<t), q(.|x_<t) for every x_{1:T-1}, and its probability under `weigh_by`."""
    ps, qs, ws = [], [], []
    for x in product(range(v), repeat=t - 1):
        ps.append([_cond(target, x[:i]) for i in range(t)])
        qs.append([_cond(draft, x[:i]) for i in range(t)])
        ws.append(np.prod([_cond(weigh_by, x[:i])[x[i]] for i in range(t - 1)]))
    return T64(ps), T64(qs), T64(ws)


@pytest.mark.parametrize("seed,t,zeros", [(0, 3, 0.0), (1, 3, 0.0), (2, 3, 0.3), (3, 4, 0.0), (4, 4, 0.25)])
def test_theorem1_exact_enumeration(seed, t, zeros):
    v = 3
    rng = np.random.default_rng(seed)
    target, draft = _markov(rng, v, t, zeros), _markov(rng, v, t, zeros)
    # with zeros: each chain has tokens the other never proposes (the residual covers them)
    e_rej, dist = _enumerate_sd(target, draft, v, t)

    # the reference procedure is itself right: lossless output, and it does reject
    for x in product(range(v), repeat=t):
        want = np.prod([_cond(target, x[:i])[x[i]] for i in range(t)])
        assert dist.get(x, 0.0) == pytest.approx(want, abs=1e-12)
    assert 0.05 < e_rej < t

    P, Q, W = _along_trajectories(target, draft, v, t, weigh_by=target)
    assert expected_rejections(P, Q).shape == W.shape
    assert float(expected_rejections(P, Q, weights=W)) == pytest.approx(e_rej, abs=1e-12)
    assert float((W * expected_rejections(P, Q)).sum()) == pytest.approx(e_rej, abs=1e-12)
    # control: the expectation over DRAFT trajectories is a different (wrong) number
    P2, Q2, W2 = _along_trajectories(target, draft, v, t, weigh_by=draft)
    assert abs(float(expected_rejections(P2, Q2, weights=W2)) - e_rej) > 1e-3


# ---------------------------------------------------------------- Theorem 3: batch SD, first position


def _simulate_first_position(p, q, m_drafts, n, rng, update=True):
    """Alg. 4's root: M i.i.d. drafts x ~ q tested depth-first, accept w.p. min(1, r(x)/q(x)),
    r <- norm(max(0, r - q)) after each rejection; all rejected: y ~ r. `update=False` is a broken
    variant (r stays p between drafts; one residual step at the end). -> (tokens [n], rejected [n])."""
    v = len(p)
    r = p.copy()
    out = np.full(n, -1)
    active = np.ones(n, bool)
    for _ in range(m_drafts):
        idx = np.flatnonzero(active)
        x = rng.choice(v, size=len(idx), p=q)
        acc = rng.random(len(idx)) * q[x] < r[x]
        out[idx[acc]] = x[acc]
        active[idx[acc]] = False
        if update:
            d = np.maximum(r - q, 0.0)
            r = d / d.sum() if d.sum() > 0 else r
    final = r if update else _res_np(p, q)
    idx = np.flatnonzero(active)
    out[idx] = rng.choice(v, size=len(idx), p=final)
    return out, active


def _mc_failures(tokens, rejected, target, p_reject):
    """The same checks for the correct and the broken rule: rejection frequency within 5 sigma of
    `p_reject`, token histogram consistent with `target` (chi-square p-value > 1e-4)."""
    fails = []
    n = len(tokens)
    sd = np.sqrt(max(p_reject * (1 - p_reject), 1e-12) / n)
    if abs(rejected.mean() - p_reject) > 5 * sd + 1e-9:
        fails.append(f"rejection {rejected.mean():.4f} vs {p_reject:.4f}")
    fails += _hist_failures(tokens, target)
    return fails


def _hist_failures(tokens, target):
    counts = np.bincount(tokens, minlength=len(target))
    pos = target > 1e-15
    fails = [] if counts[~pos].sum() == 0 else [f"{counts[~pos].sum()} tokens of probability 0"]
    if pos.sum() > 1:
        exp = target[pos] / target[pos].sum() * counts[pos].sum()
        pval = chisquare(counts[pos], exp).pvalue
        if pval < 1e-4:
            fails.append(f"chi-square p={pval:.2g}")
    return fails


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("m_drafts", [1, 2, 3, 4])
def test_first_position_monte_carlo(seed, m_drafts):
    p, q = _pair(10 + seed, v=6, zeros=bool(seed))
    rng = np.random.default_rng(100 * seed + m_drafts)
    want = float(first_position_rejection(T64(p), T64(q), m_drafts))
    tokens, rejected = _simulate_first_position(p, q, m_drafts, N_MC, rng)
    assert _mc_failures(tokens, rejected, p, want) == []
    assert float(batch_improvement(T64(p), T64(q), m_drafts)) == pytest.approx(
        float(tv_distance(T64(p), T64(q))) - want, abs=1e-15
    )
    if m_drafts >= 2:  # control: the same checks catch a rule without residual updates
        tokens, rejected = _simulate_first_position(p, q, m_drafts, N_MC, rng, update=False)
        assert _mc_failures(tokens, rejected, p, want) != []


def test_first_position_closed_forms():
    # paper's examples (App. D / Sec. 3.2), in Leviathan letters
    for v, v_sub, m in [(6, 2, 1), (6, 2, 3), (10, 7, 4), (5, 5, 2)]:
        p = T64([1 / v_sub] * v_sub + [0.0] * (v - v_sub))  # target uniform on V' subset V
        q = T64([1 / v] * v)  # draft uniform on V
        a = 1 - v_sub / v
        assert float(batch_improvement(p, q, m)) == pytest.approx(a - a**m, abs=1e-12)
    for u, w, m in [(0.7, 0.2, 1), (0.7, 0.2, 2), (0.9, 0.5, 5), (0.4, 0.4, 3)]:
        p, q = T64([1 - w, w]), T64([1 - u, u])  # target Ber(w), draft Ber(u), u >= w
        assert float(batch_improvement(p, q, m)) == pytest.approx((u - w) * (1 - u ** (m - 1)), abs=1e-12)
    # residual chain against a plain loop; rejection non-increasing in M; improvement <= TV
    p, q = _pair(3)
    r, chain = p.copy(), [p.copy()]
    for _ in range(5):
        d = np.maximum(r - q, 0)
        r = d / d.sum() if d.sum() > 0 else r
        chain.append(r)
    np.testing.assert_allclose(residual_chain(T64(p), T64(q), 5).numpy(), np.stack(chain), atol=1e-14)
    rej = [float(first_position_rejection(T64(p), T64(q), m)) for m in range(1, 7)]
    assert all(a >= b - 1e-15 for a, b in zip(rej, rej[1:])) and rej[0] > rej[-1]
    assert rej[0] == pytest.approx(0.5 * np.abs(p - q).sum(), abs=1e-14)
    with pytest.raises(ValueError):
        residual_chain(T64(p), T64(q), 0)


# ---------------------------------------------------------------- Theorems 4-5: UNO and OPT

EPS = [0.0, 0.01, 0.05, 0.15, 0.4, 2.0]


def _simulate_eps_rule(p, q, eps, n, rng):
    """One token: x ~ q accepted w.p. min(1, (p(x)+eps)/q(x)); rejection resamples from p (UNO)
    or norm(max(0, p - q)) (OPT). -> (uno tokens, opt tokens, rejected)."""
    v = len(p)
    x = rng.choice(v, size=n, p=q)
    rej = ~(rng.random(n) * q[x] < p[x] + eps)
    uno, opt = x.copy(), x.copy()
    uno[rej] = rng.choice(v, size=rej.sum(), p=p)
    if rej.any():
        opt[rej] = rng.choice(v, size=rej.sum(), p=_res_np(p, q))
    return uno, opt, rej


def _lp_min_tv(p, q, b):
    """min over resampling distributions R of TV(b q + P_rej R, p), as a linear program."""
    v = len(p)
    a, prej = b * q, float(((1 - b) * q).sum())
    # variables [R (V), t (V)]: minimise sum t / 2, t >= |a + prej R - p|, sum R = 1, R >= 0
    c = np.r_[np.zeros(v), np.full(v, 0.5)]
    eye = np.eye(v)
    a_ub = np.block([[prej * eye, -eye], [-prej * eye, -eye]])
    b_ub = np.r_[p - a, a - p]
    res = linprog(
        c,
        A_ub=a_ub,
        b_ub=b_ub,
        A_eq=np.r_[np.ones(v), np.zeros(v)][None],
        b_eq=[1.0],
        bounds=[(0, None)] * (2 * v),
        method="highs",
    )
    assert res.status == 0
    return res.fun


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_uno_opt_monte_carlo(seed):
    p, q = _pair(20 + seed, v=6, zeros=seed != 1)
    rng = np.random.default_rng(seed)
    for eps in EPS:
        uno, opt, rej = _simulate_eps_rule(p, q, eps, N_MC, rng)
        prej = float(uno_rejection(T64(p), T64(q), eps))
        assert prej == pytest.approx(np.maximum(q - p - eps, 0).sum(), abs=1e-14)
        sd = np.sqrt(max(prej * (1 - prej), 1e-12) / N_MC)
        assert abs(rej.mean() - prej) <= 5 * sd + 1e-9, eps
        d_uno = uno_distribution(T64(p), T64(q), eps).numpy()
        d_opt = opt_distribution(T64(p), T64(q), eps).numpy()
        assert _hist_failures(uno, d_uno) == [], eps
        assert _hist_failures(opt, d_opt) == [], eps
        for tok, d in [(uno, d_uno), (opt, d_opt)]:
            emp = np.bincount(tok, minlength=len(p)) / N_MC
            assert 0.5 * np.abs(emp - p).sum() == pytest.approx(float(tv_loss(T64(d), T64(p))), abs=0.01)
        if eps == 0.0:  # OPT at 0 is speculative sampling: p itself; UNO at 0 is not
            np.testing.assert_allclose(d_opt, p, atol=1e-15)
            assert _hist_failures(opt, p) == []
            assert _hist_failures(uno, p) != []


@pytest.mark.parametrize("seed", range(6))
def test_theorems_4_5_exact(seed):
    p, q = _pair(30 + seed, v=5, zeros=seed % 2 == 0)
    P, Q = T64(p), T64(q)
    tv = 0.5 * np.abs(p - q).sum()
    eps = T64(EPS + [1e-9, 0.3, 100.0])
    # eps as a batch dim: [E]
    prej, d_opt, d_uno = uno_rejection(P, Q, eps), opt_distribution(P, Q, eps), uno_distribution(P, Q, eps)
    assert prej.shape == eps.shape and d_opt.shape == (len(eps), len(p))
    np.testing.assert_allclose(d_opt.sum(-1).numpy(), 1.0, atol=1e-14)
    np.testing.assert_allclose(d_uno.sum(-1).numpy(), 1.0, atol=1e-14)
    loss_opt, loss_uno = tv_loss(d_opt, P).numpy(), tv_loss(d_uno, P).numpy()
    # Theorem 5's line, for every eps >= 0, and the notes' per-token algebra
    np.testing.assert_allclose(prej.numpy() + loss_opt, tv, atol=1e-14)
    for e, lo in zip(eps.tolist(), loss_opt):
        assert lo == pytest.approx(np.minimum(e, np.maximum(q - p, 0)).sum(), abs=1e-14)
    # Theorem 4: OPT attains the LP optimum, and the closed form Loss*(b) agrees; UNO does no better
    for i, e in enumerate(eps.tolist()):
        b = np.where(q > 0, np.minimum(1, (p + e) / np.where(q > 0, q, 1)), 1.0)
        np.testing.assert_allclose(accept_prob(P, Q, e).numpy(), b, atol=1e-15)
        lp = _lp_min_tv(p, q, b)
        assert loss_opt[i] == pytest.approx(lp, abs=1e-7)  # HiGHS tolerance
        assert float(optimal_loss(P, Q, T64(b))) == pytest.approx(lp, abs=1e-7)
        assert loss_uno[i] >= lp - 1e-7
        # OPT's resampling distribution lies in Theorem 4's optimal set: 0 on A-, <= A on A+
        if prej[i] > 1e-12:
            A = (p - b * q) / float(prej[i])
            r = residual(P, Q).numpy()
            assert np.all(r[A < 0] == 0) and np.all(r[A >= 0] <= A[A >= 0] + 1e-12)
    assert loss_uno[0] > 1e-3  # UNO at eps = 0 is biased
    # general b (some tokens under-accepted): Loss* vs LP, and the line's excess
    rng = np.random.default_rng(seed)
    for _ in range(3):
        b = rng.random(len(p))
        lp = _lp_min_tv(p, q, b)
        assert float(optimal_loss(P, Q, T64(b))) == pytest.approx(lp, abs=1e-7)
        excess = ((1 - b) * q).sum() + lp - tv
        assert excess == pytest.approx(np.maximum(np.minimum(p, q) - b * q, 0).sum(), abs=1e-7)
        assert excess > 1e-6  # below the SD threshold the line does not hold


# ---------------------------------------------------------------- degenerate cases and shapes


def test_degenerate_cases():
    p, q = _pair(40)
    P, Q = T64(p), T64(q)
    # p == q: nothing is ever rejected and every output is p
    for e in [0.0, 0.1]:
        assert float(uno_rejection(P, P, e)) == 0.0
        torch.testing.assert_close(opt_distribution(P, P, e), P, rtol=0, atol=1e-15)
        torch.testing.assert_close(uno_distribution(P, P, e), P, rtol=0, atol=1e-15)
    assert float(tv_distance(P, P)) == 0.0
    torch.testing.assert_close(residual(P, P), P, rtol=0, atol=0)
    assert float(first_position_rejection(P, P, 3)) == 0.0 and float(batch_improvement(P, P, 3)) == 0.0
    # eps = 0 is lossless speculative sampling for OPT; rejection is TV
    assert float(uno_rejection(P, Q, 0.0)) == pytest.approx(0.5 * np.abs(p - q).sum(), abs=1e-15)
    torch.testing.assert_close(opt_distribution(P, Q, 0.0), P, rtol=0, atol=1e-15)
    # q with zeros: finite, b = 1 where the draft never proposes
    assert q[1] == 0 and p[0] == 0
    b = accept_prob(P, Q, 0.0)
    assert torch.isfinite(b).all() and b[1] == 1.0 and b[0] == 0.0
    for f in (uno_distribution, opt_distribution):
        assert torch.isfinite(f(P, Q, 0.05)).all()
    # eps large: everything accepted, output q, loss TV
    torch.testing.assert_close(opt_distribution(P, Q, 5.0), Q, rtol=0, atol=1e-15)
    assert float(uno_rejection(P, Q, 5.0)) == 0.0
    # one-hot draft that the target rejects in part
    oh = T64([0, 0, 1.0, 0, 0, 0])
    assert float(first_position_rejection(P, oh, 1)) == pytest.approx(1 - p[2], abs=1e-15)
    with pytest.raises(ValueError):
        uno_rejection(P, Q, -0.1)
    with pytest.raises(ValueError):
        opt_distribution(P, Q, T64([0.1, -0.1]))


def test_batch_dims_match_rows():
    rng = np.random.default_rng(50)
    p = np.stack([[_rand_dist(rng, 7, 0.2) for _ in range(3)] for _ in range(2)])
    q = np.stack([[_rand_dist(rng, 7, 0.2) for _ in range(3)] for _ in range(2)])
    eps = np.array([[0.0, 0.1, 0.3], [0.05, 0.0, 1.0]])
    P, Q, E = T64(p), T64(q), T64(eps)
    batched = {
        "tv": tv_distance(P, Q),
        "res": residual(P, Q),
        "fpr": first_position_rejection(P, Q, 3),
        "bi": batch_improvement(P, Q, 3),
        "chain": residual_chain(P, Q, 3),
        "rej": uno_rejection(P, Q, E),
        "uno": uno_distribution(P, Q, E),
        "opt": opt_distribution(P, Q, E),
        "b": accept_prob(P, Q, E),
    }
    for i, j in product(range(2), range(3)):
        pr, qr, e = P[i, j], Q[i, j], float(eps[i, j])
        rows = {
            "tv": tv_distance(pr, qr),
            "res": residual(pr, qr),
            "fpr": first_position_rejection(pr, qr, 3),
            "bi": batch_improvement(pr, qr, 3),
            "chain": residual_chain(pr, qr, 3),
            "rej": uno_rejection(pr, qr, e),
            "uno": uno_distribution(pr, qr, e),
            "opt": opt_distribution(pr, qr, e),
            "b": accept_prob(pr, qr, e),
        }
        for k, val in rows.items():
            torch.testing.assert_close(batched[k][i, j], val, rtol=0, atol=1e-15)
    # expected_rejections: [..., T, V] -> [...]
    assert expected_rejections(P, Q).shape == (2,)
    torch.testing.assert_close(expected_rejections(P, Q), tv_distance(P, Q).sum(-1))
    # float32 works too
    assert residual(P.float(), Q.float()).dtype == torch.float32
