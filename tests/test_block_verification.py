"""Block verification (Sun et al., ICLR 2025): lossless, and never fewer kept drafts than token-wise speculative
sampling in expectation.

Function level, a toy pair over V tokens whose distributions depend on the whole prefix (`Tree`):
- an independent float64 reference of the paper's Alg. 2, enumerated over every draft path, is exactly
  lossless and gives the paper's own example (11/9 against 10/9 kept drafts);
- `verify_block` sampled many times commits tokens that, completed by the target to K+1 tokens, follow the
  target exactly (chi-square against the enumerated distribution); two deliberately broken variants fail the
  same test;
- its mean kept drafts match the enumerated expectation, which is >= the token-wise rule's.
End to end: `BiLDGenerator(verification="block")` samples the large model's distribution, and equals
`large.generate` under greedy decoding.
"""

import itertools

import pytest
import torch
from models import make_inputs, make_pair
from test_host_reads import READS, count_reads
from test_sampling import PROMPT, TEMP, chi_square_pvalue, tiny_llama

import bild
import bild.verification as verification
from bild.generator import check_options, lossy
from bild.verification import verify_block, verify_exact_sampling

N = 100_000  # samples per function-level case


# ---- a toy pair with context ----------------------------------------------------------------------
class Tree:
    """Target P(.|prefix) and draft Q(.|prefix) [V] for every prefix of length 0..depth, float64, seeded.

    q_kind: "dense" (a noisy copy of the target), "onehot" (a deterministic drafter: all mass on one token),
    "pruned" (dense on a random half of the vocabulary, zero elsewhere: a pruned draft head)."""

    def __init__(self, V: int, depth: int, seed: int, q_kind: str = "dense"):
        g = torch.Generator().manual_seed(seed)
        self.V, self.offset = V, [sum(V**j for j in range(n)) for n in range(depth + 2)]
        n = self.offset[depth + 1]
        logits = torch.randn(n, V, generator=g, dtype=torch.float64) * 1.5
        self.P = logits.softmax(-1)
        q_logits = 0.6 * logits + torch.randn(n, V, generator=g, dtype=torch.float64)
        if q_kind == "onehot":
            self.Q = torch.nn.functional.one_hot(q_logits.argmax(-1), V).double()
        elif q_kind == "pruned":
            keep = torch.rand(n, V, generator=g).argsort(-1) < (V + 1) // 2
            self.Q = q_logits.masked_fill(~keep, float("-inf")).softmax(-1)
        else:
            self.Q = q_logits.softmax(-1)

    def row(self, length: int, code: torch.Tensor) -> torch.Tensor:
        """Row of the prefix of `length` tokens whose base-V code is `code` (any shape)."""
        return self.offset[length] + code

    def path(self, x: tuple) -> tuple[list, list]:
        """P and Q along the prefixes of x: P(.|x[:j]) for j = 0..len(x), Q(.|x[:j]) for j < len(x)."""
        rows = [
            self.row(j, torch.tensor(sum(t * self.V ** (j - 1 - k) for k, t in enumerate(x[:j]))))
            for j in range(len(x) + 1)
        ]
        return [self.P[r] for r in rows], [self.Q[r] for r in rows[:-1]]

    def target(self, L: int) -> torch.Tensor:
        """P(s) for every string s of L tokens, indexed by its base-V code [V**L]."""
        prob = torch.ones(1, dtype=torch.float64)
        for n in range(L):
            prob = (prob[:, None] * self.P[self.offset[n] : self.offset[n] + self.V**n]).reshape(-1)
        return prob


# ---- the reference: the paper's Alg. 2 on one draft path, in float64 -------------------------------
def reference_round(P: list, Q: list, x: tuple):
    """Returns P(tau = i) for i = 0..gamma and the distribution of the next token after tau = i."""
    gamma = len(x)
    w = [1.0]
    for i in range(gamma):
        w.append(min(1.0, w[-1] * float(P[i][x[i]] / Q[i][x[i]])))
    h, nxt = [], []
    for i in range(gamma + 1):
        if i == gamma:
            nxt.append(P[gamma])
            h.append(w[gamma])
            continue
        r = (w[i] * P[i] - Q[i]).clamp(min=0)
        z = float(r.sum())
        nxt.append(r / z if z > 0 else P[i])
        h.append(z / (z + 1 - w[i]) if z + 1 - w[i] > 0 else 1.0)
    h[0] = 1.0  # tau = 0 when no i >= 1 passes
    p_tau = [
        h[i] * float(torch.tensor([1 - hj for hj in h[i + 1 :]], dtype=torch.float64).prod()) for i in range(gamma + 1)
    ]
    return p_tau, nxt


def reference_tokenwise_accepts(P: list, Q: list, x: tuple) -> float:
    """E[kept drafts | x] under Leviathan et al.'s token-wise rule: sum_i prod_{j <= i} min(1, p/q)."""
    acc, keep = 0.0, 1.0
    for i, t in enumerate(x):
        keep *= min(1.0, float(P[i][t] / Q[i][t]))
        acc += keep
    return acc


def paths(tree: Tree, gamma: int):
    """Every draft path of gamma tokens with Q(path) > 0: (x, P along x, Q along x, Q(x))."""
    for x in itertools.product(range(tree.V), repeat=gamma):
        P, Q = tree.path(x)
        qx = float(torch.stack([Q[i][t] for i, t in enumerate(x)]).prod()) if gamma else 1.0
        if qx > 0:
            yield x, P, Q, qx


def exact_round(tree: Tree, gamma: int):
    """One round of the reference, enumerated: {committed tokens: probability}, E[tau], E[token-wise accepts]."""
    out, e_block, e_token = {}, 0.0, 0.0
    for x, P, Q, qx in paths(tree, gamma):
        p_tau, nxt = reference_round(P, Q, x)
        for i, pt in enumerate(p_tau):
            for y in range(tree.V):
                key = x[:i] + (y,)
                out[key] = out.get(key, 0.0) + qx * pt * float(nxt[i][y])
        e_block += qx * sum(i * pt for i, pt in enumerate(p_tau))
        e_token += qx * reference_tokenwise_accepts(P, Q, x)
    return out, e_block, e_token


def completed(tree: Tree, round_out: dict, L: int) -> torch.Tensor:
    """Distribution of the first L tokens when the round's tokens are continued by the target [V**L]."""
    targets = [tree.target(n) for n in range(L + 1)]
    code = lambda s: sum(t * tree.V ** (len(s) - 1 - k) for k, t in enumerate(s))  # noqa: E731
    d = torch.zeros_like(targets[L])
    for s in itertools.product(range(tree.V), repeat=L):
        for n in range(1, L + 1):  # s = (the round's n tokens) + (the target's continuation)
            if s[:n] in round_out:
                d[code(s)] += round_out[s[:n]] * float(targets[L][code(s)] / targets[n][code(s[:n])])
    return d


# ---- sampling the implementation --------------------------------------------------------------------
def sample_rounds(tree: Tree, K: int, n_draft: torch.Tensor, rule=verify_block):
    """N rounds of `rule` on drafts sampled from the tree's Q (float32, as the engine passes them).
    Returns the code of the first K+1 committed tokens (continued by the target) [N] and n_accept [N]."""
    B, V = n_draft.shape[0], tree.V
    code = torch.zeros(B, dtype=torch.long)
    drafts, p, q = [], [], []
    for j in range(K):
        r = tree.row(j, code)
        x = torch.multinomial(tree.Q[r], 1).squeeze(-1)
        drafts.append(x), p.append(tree.P[r]), q.append(tree.Q[r])
        code = code * V + x
    p.append(tree.P[tree.row(K, code)])
    drafts = torch.stack(drafts, 1) if K else torch.zeros(B, 0, dtype=torch.long)
    q = torch.stack(q, 1).float() if K else torch.zeros(B, 0, V)
    n_acc, nxt = rule(drafts, n_draft, torch.stack(p, 1).float(), q)
    code = torch.zeros(B, dtype=torch.long)
    for t in range(K + 1):
        cont = torch.multinomial(tree.P[tree.row(t, code)], 1).squeeze(-1)
        tok = torch.where(t == n_acc, nxt, cont)
        if t < K:
            tok = torch.where(t < n_acc, drafts[:, t], tok)
        code = code * V + tok
    return code, n_acc


def block_pvalue(tree: Tree, K: int, n_draft: torch.Tensor, rule=verify_block) -> tuple[float, float]:
    """Chi-square p-value and TV of the sampled first K+1 tokens against the target."""
    truth = tree.target(K + 1)
    code, _ = sample_rounds(tree, K, n_draft, rule)
    counts = torch.bincount(code, minlength=truth.numel()).double()
    return chi_square_pvalue(counts, truth), float(0.5 * (counts / counts.sum() - truth).abs().sum())


def drafts_per_row(K: int, ragged: bool, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, K + 1, (N,), generator=g) if ragged else torch.full((N,), K)


CASES = [  # V, K, q_kind, ragged
    (5, 1, "dense", False),
    (5, 2, "dense", True),
    (6, 3, "dense", False),
    (5, 4, "dense", True),
    (5, 3, "onehot", True),
    (8, 2, "pruned", True),
    (6, 3, "pruned", False),
]


# ---- tests: the reference -----------------------------------------------------------------------------
def test_reference_reproduces_the_papers_example():
    """Sun et al. Sec. 2: context-free M_b = (1/3, 2/3), M_s = (2/3, 1/3), gamma = 2: 11/9 kept drafts
    against 10/9 token by token."""
    P, Q = (
        [torch.tensor([1 / 3, 2 / 3], dtype=torch.float64)] * 3,
        [torch.tensor([2 / 3, 1 / 3], dtype=torch.float64)] * 2,
    )
    e_block = e_token = 0.0
    for x in itertools.product(range(2), repeat=2):
        qx = float(Q[0][x[0]] * Q[1][x[1]])
        p_tau, _ = reference_round(P, Q, x)
        e_block += qx * sum(i * pt for i, pt in enumerate(p_tau))
        e_token += qx * reference_tokenwise_accepts(P, Q, x)
    assert e_block == pytest.approx(11 / 9, abs=1e-12) and e_token == pytest.approx(10 / 9, abs=1e-12)


@pytest.mark.parametrize("V,K,q_kind", [(5, 1, "dense"), (4, 3, "dense"), (5, 2, "onehot"), (6, 2, "pruned")])
def test_reference_is_exactly_lossless(V, K, q_kind):
    tree = Tree(V, K, seed=V * 10 + K, q_kind=q_kind)
    for gamma in range(K + 1):  # a row with fewer drafts is the same rule at a smaller gamma
        out, _, _ = exact_round(tree, gamma)
        assert abs(sum(out.values()) - 1) < 1e-12
        assert torch.allclose(completed(tree, out, K + 1), tree.target(K + 1), atol=1e-12, rtol=0)


def test_weights_and_h_match_the_reference():
    """The vectorised clamped product (log space) and h against plain loops, ragged ratios included."""
    g = torch.Generator().manual_seed(0)
    ratio = torch.rand(64, 6, generator=g, dtype=torch.float64) * 3
    ratio[::7, 2] = 0.0
    w = verification._block_weights(ratio)
    for b in range(64):
        want = [1.0]
        for r in ratio[b].tolist():
            want.append(min(1.0, want[-1] * r))
        assert torch.allclose(w[b], torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-300)
    mass = torch.rand(64, 7, generator=g, dtype=torch.float64)
    mass[0, 0], w[0, 0] = 0.0, 1.0  # 0/0 -> 1
    assert torch.allclose(verification._block_h(mass, w)[1:], (mass / (mass + 1 - w))[1:])
    assert float(verification._block_h(mass, w)[0, 0]) == 1.0


# ---- tests: the implementation ------------------------------------------------------------------------
@pytest.mark.parametrize("V,K,q_kind,ragged", CASES)
def test_committed_tokens_follow_the_target(V, K, q_kind, ragged):
    tree = Tree(V, K, seed=V * 10 + K, q_kind=q_kind)
    torch.manual_seed(V * 100 + K)
    pval, tv = block_pvalue(tree, K, drafts_per_row(K, ragged))
    # the chi-square is the test; TV a sanity bound: E[TV] of N samples <= sqrt(cells / (2 pi N)) (Cauchy-Schwarz),
    # 0.07 at the largest case (3125 cells); measured 0.004-0.034, the broken variants below 0.06-0.58
    assert pval > 1e-4 and tv < 0.08, (pval, tv)


def skip_h_normalisation(mass, w):
    """Broken: h_i = Z_i (the division by Z_i + 1 - p_i left out)."""
    return mass.clamp(max=1.0)


def tokenwise_residual(w, p, q_next):
    """Broken: the token-wise residual max(0, p - q) in place of max(0, p_i p - q)."""
    return (p - q_next).clamp(min=0)


@pytest.mark.parametrize("name,broken", [("_block_h", skip_h_normalisation), ("_block_residual", tokenwise_residual)])
def test_broken_variants_fail_the_same_test(name, broken, monkeypatch):
    """The control: the distribution test above rejects a rule with one piece of the algorithm wrong."""
    V, K = 5, 3
    tree = Tree(V, K, seed=V * 10 + K)
    monkeypatch.setattr(verification, name, broken)
    torch.manual_seed(0)
    pval, tv = block_pvalue(tree, K, drafts_per_row(K, ragged=False))
    assert pval < 1e-10, (pval, tv)


@pytest.mark.parametrize("V,K,q_kind", [(5, 2, "dense"), (5, 4, "dense"), (6, 3, "onehot"), (8, 2, "pruned")])
def test_expected_accepts_dominate_tokenwise(V, K, q_kind):
    """Enumerated E[kept drafts]: block >= token-wise; both rules' sample means match their expectation."""
    tree = Tree(V, K, seed=V * 10 + K + 1, q_kind=q_kind)
    _, e_block, e_token = exact_round(tree, K)
    assert e_block >= e_token - 1e-12
    n_draft = torch.full((N,), K)
    for rule, expect in ((verify_block, e_block), (verify_exact_sampling, e_token)):
        torch.manual_seed(1)
        _, n_acc = sample_rounds(tree, K, n_draft, rule)
        mean, se = float(n_acc.double().mean()), float(n_acc.double().std()) / N**0.5
        assert abs(mean - expect) < 4.5 * se, (rule.__name__, mean, expect, se)


def test_block_keeps_strictly_more_on_some_pairs():
    gains = []
    for seed in range(6):
        tree = Tree(5, 3, seed=seed)
        _, e_block, e_token = exact_round(tree, 3)
        assert e_block >= e_token - 1e-12
        gains.append(e_block - e_token)
    assert max(gains) > 0.02, gains


# ---- edge cases ---------------------------------------------------------------------------------------
def test_no_drafts_samples_the_large_distribution_not_a_residual():
    """K = 0, and rows with n_draft = 0 among rows that draft: the next token comes from p[:, 0] (q there
    is ignored, even if it is garbage)."""
    p0 = torch.tensor([0.1, 0.5, 0.2, 0.2])
    q0 = torch.tensor([0.7, 0.1, 0.1, 0.1])
    B = 40000
    for K in (0, 3):
        drafts = torch.zeros(B, K, dtype=torch.long)
        n_draft = torch.zeros(B, dtype=torch.long)
        n_draft[::2] = K  # half the rows draft K
        p = p0.expand(B, K + 1, 4).clone()
        q = q0.expand(B, K, 4).clone()
        q[1::2] = float("nan")  # rows without drafts: q is never read
        n_acc, nxt = verify_block(drafts, n_draft, p, q)
        assert bool((n_acc[1::2] == 0).all()) and bool((n_acc <= n_draft).all())
        counts = torch.bincount(nxt[1::2], minlength=4).double()
        assert chi_square_pvalue(counts, p0) > 1e-4
        residual = (p0 - q0).clamp(min=0)
        assert chi_square_pvalue(counts, residual / residual.sum()) < 1e-10


def test_one_hot_drafter():
    """q one-hot on the drafted token (a deterministic drafter): p = q keeps every draft, then a bonus token
    from p after the block; a draft the large model cannot write is never kept."""
    B, K, V = 1000, 3, 6
    drafts = torch.randint(0, V, (B, K))
    q = torch.nn.functional.one_hot(drafts, V).float()
    p = torch.cat([q, torch.full((B, 1, V), 1 / V)], 1)
    n_acc, nxt = verify_block(drafts, torch.full((B,), K), p, q)
    assert bool((n_acc == K).all()) and int(nxt.min()) >= 0 and int(nxt.max()) < V
    p[:, 1] = torch.where(q[:, 1] > 0, 0.0, 1 / (V - 1))  # the second draft is impossible under p
    n_acc, nxt = verify_block(drafts, torch.full((B,), K), p, q)
    assert bool((n_acc <= 1).all())
    assert not bool(((n_acc == 1) & (nxt == drafts[:, 1])).any())  # the residual excludes it


def test_padding_beyond_the_drafts_is_ignored():
    """Slots past a row's n_draft (and extra q slots) hold garbage: the result is the same."""
    tree = Tree(5, 3, seed=7)
    n_draft = drafts_per_row(3, ragged=True)[:5000]
    torch.manual_seed(3)
    code = torch.zeros(5000, dtype=torch.long)
    drafts, p, q = [], [], []
    for j in range(3):
        r = tree.row(j, code)
        x = torch.multinomial(tree.Q[r], 1).squeeze(-1)
        drafts.append(x), p.append(tree.P[r]), q.append(tree.Q[r])
        code = code * 5 + x
    p.append(tree.P[tree.row(3, code)])
    drafts, p, q = torch.stack(drafts, 1), torch.stack(p, 1).float(), torch.stack(q, 1).float()
    q_extra = torch.cat([q, torch.rand(5000, 1, 5)], 1)  # the engine's q can have one more slot
    slot = torch.arange(4)[None, :, None]
    p_bad = p.masked_fill(slot > n_draft[:, None, None], float("nan"))  # p[:, n_draft] is read: the bonus
    q_bad = q_extra.masked_fill(slot >= n_draft[:, None, None], float("nan"))
    torch.manual_seed(5)
    want = verify_block(drafts, n_draft, p, q)
    torch.manual_seed(5)
    got = verify_block(drafts, n_draft, p_bad, q_bad)
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])


def test_no_host_reads():
    tree = Tree(5, 2, seed=1)
    torch.manual_seed(0)
    reads = {"n": 0}
    originals = {name: getattr(torch.Tensor, name) for name in READS}
    inputs = (
        torch.randint(0, 5, (8, 2)),
        torch.tensor([2, 1, 0, 2, 2, 1, 0, 2]),
        tree.P[:24].reshape(8, 3, 5).float(),
        tree.Q[:16].reshape(8, 2, 5).float(),
    )

    def shim(name):
        def read(self, *a, **k):
            reads["n"] += 1
            return originals[name](self, *a, **k)

        return read

    try:
        for name in READS:
            setattr(torch.Tensor, name, shim(name))
        verify_block(*inputs)
    finally:
        for name, f in originals.items():
            setattr(torch.Tensor, name, f)
    assert reads["n"] == 0


# ---- options ------------------------------------------------------------------------------------------
def test_options():
    opts = check_options(verification="block")
    assert opts.exact_rule and not lossy(opts)
    assert check_options(verification="exact").exact_rule and not check_options(verification="rollback").exact_rule
    for kw, name in (
        (dict(uno_epsilon=0.1), "uno_epsilon"),
        (dict(opt_epsilon=0.1), "opt_epsilon"),
        (dict(num_drafts=2), "num_drafts"),
    ):
        with pytest.raises(ValueError, match=name):
            check_options(verification="block", **kw)


# ---- end to end ---------------------------------------------------------------------------------------
V_E2E, N_E2E = 8, 20000


def exact_tail(large) -> torch.Tensor:
    """P(t2, t3, t4) [V**3] under the large model's sampling distribution (temperature TEMP), t1 summed out."""
    seqs = torch.tensor([PROMPT + list(t) for t in itertools.product(range(V_E2E), repeat=4)])
    with torch.no_grad():
        logp = (large(seqs).logits[:, -5:-1] / TEMP).log_softmax(-1)  # predicts t1 .. t4
    lp = sum(logp[:, i].gather(-1, seqs[:, len(PROMPT) + i, None]).squeeze(-1) for i in range(4))
    return lp.exp().reshape(V_E2E, -1).sum(0)


def sampled_tail(small, large, fallback_threshold=0.0) -> tuple[torch.Tensor, bild.GenerationStats]:
    gen = bild.BiLDGenerator(
        small, large, fallback_threshold=fallback_threshold, max_small_steps=3, verification="block"
    )
    torch.manual_seed(0)
    out = gen.generate(torch.tensor([PROMPT] * N_E2E), max_new_tokens=5, do_sample=True, temperature=TEMP, top_k=0)
    t = out[:, len(PROMPT) + 1 : len(PROMPT) + 4]
    code = (t[:, 0] * V_E2E + t[:, 1]) * V_E2E + t[:, 2]
    return torch.bincount(code, minlength=V_E2E**3).double(), gen.stats


def test_engine_samples_the_large_distribution(monkeypatch):
    """Two unrelated tiny models (so keeping every draft would be visibly wrong), drafts of 3: tokens 2-4 are
    one block. Control: the same test rejects the engine with the h normalisation left out."""
    small, large = tiny_llama(1), tiny_llama(2)
    truth = exact_tail(large)
    counts, st = sampled_tail(small, large)
    assert st.drafted >= N_E2E and 0 < st.accepted < st.drafted
    tv = 0.5 * (counts / N_E2E - truth).abs().sum()
    assert chi_square_pvalue(counts, truth) > 1e-4 and tv < 0.1, tv
    monkeypatch.setattr(verification, "_block_h", skip_h_normalisation)
    bad, _ = sampled_tail(small, large)
    assert chi_square_pvalue(bad, truth) < 1e-10


def test_engine_batch_fill_keeps_the_large_distribution():
    """With a fallback, rows that stopped draft on while others drive (batch fill): each row's block then has
    a length set by its confidences and the other rows, and the output still follows the large model."""
    small, large = tiny_llama(1), tiny_llama(2)
    truth = exact_tail(large)
    counts, st = sampled_tail(small, large, fallback_threshold=0.4)
    assert st.fallbacks > 0 and st.fill_drafted > 0 and st.fill_accepted > 0
    assert chi_square_pvalue(counts, truth) > 1e-4 and 0.5 * (counts / N_E2E - truth).abs().sum() < 0.1


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_greedy_equals_large_generate(family):
    small, large = make_pair(family)
    ids, mask = make_inputs(family, 3, seed=5)
    ref = large.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False)
    gen = bild.BiLDGenerator(small, large, fallback_threshold=0.3, max_small_steps=4, verification="block")
    out = gen.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False)
    assert torch.equal(out, ref)
    assert gen.stats.accepted > 0 and gen.stats.accepted < gen.stats.drafted


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_engine_sampling_reads_the_device_once_per_round(family):
    """Batch 3 with padding and batch fill: one read per draft step and one per round, as for "exact"."""
    small, large = make_pair(family)
    ids, mask = make_inputs(family, 3, seed=4)
    gen = bild.BiLDGenerator(small, large, fallback_threshold=0.3, max_small_steps=4, verification="block")
    kw = dict(attention_mask=mask, max_new_tokens=24, do_sample=True, top_k=0)
    gen.generate(ids, **kw)  # warm: layout probes run once per model
    torch.manual_seed(0)
    with count_reads([small, large]) as state:
        gen.generate(ids, **kw)
    s = gen.stats
    assert s.rounds > 3 and s.accepted > 0
    assert state["reads"] <= s.small_forwards + s.rounds + 3, (state["reads"], s.small_forwards, s.rounds)
