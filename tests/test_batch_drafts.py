"""Batch speculative decoding (Yin et al. 2024, Alg. 4), `verify_batch_drafts`: exact in distribution, rejection
rate at the first position = Theorem 3's term, M = 1 = speculative sampling, edge cases.

Drafts are drawn from q exactly as the engine draws them: M i.i.d. drafts per row from the same prefix.
Notation: p = LARGE/target, q = SMALL/draft (Leviathan), as in bild.
"""

import pytest
import torch
from scipy import stats as sstats

from bild.analysis.theory import first_position_rejection, residual
from bild.verification import verify_batch_drafts, verify_exact_sampling

V, N = 5, 100_000
# root: the draft over-weights tokens 3 and 4; p never writes token 4 (so any output 4 is a bug)
P0 = torch.tensor([0.45, 0.30, 0.15, 0.10, 0.00])
Q0 = torch.tensor([0.10, 0.15, 0.20, 0.25, 0.30])


def chain(seed):
    """P1 [V, V], Q1 [V, V]: distributions after the first token; P2 [V, V, V]: after the first two."""
    g = torch.Generator().manual_seed(seed)
    d = lambda *s: (2 * torch.rand(*s, V, generator=g)).softmax(-1)  # noqa: E731
    return d(V), d(V), d(V, V)


P1, Q1, P2 = chain(0)


def sample(probs):
    """[..., V] -> [...] one draw per row."""
    return torch.multinomial(probs.reshape(-1, V), 1).reshape(probs.shape[:-1])


def draw(B, M, n_draft=None):
    """M i.i.d. drafts of length 2 per row, d1 ~ Q0, d2 ~ Q1[d1]; tensors as the engine passes them."""
    d1 = sample(Q0.expand(B, M, V))
    d2 = sample(Q1[d1])
    drafts = torch.stack([d1, d2], -1)
    p = torch.stack([P0.expand(B, M, V), P1[d1], P2[d1, d2]], 2)
    q = torch.stack([Q0.expand(B, M, V), Q1[d1]], 2)
    n = torch.full((B, M), 2) if n_draft is None else n_draft
    return drafts, n, p, q


def outputs(drafts, chosen, n_accept, next_token):
    """Written tokens [B, 3] (kept drafts, then next_token; -1 past it)."""
    kept = drafts[torch.arange(len(chosen)), chosen]
    out = torch.full((len(chosen), 3), -1)
    for j in range(2):
        out[:, j] = torch.where(j < n_accept, kept[:, j], torch.where(j == n_accept, next_token, -1))
    out[:, 2] = torch.where(n_accept == 2, next_token, -1)
    return out


def chi_square_pvalue(counts, probs, ddof=0):
    """Goodness of fit of counts to probs (any scale); cells expecting < 5 pooled; a count where probs is 0 gives 0."""
    counts, expected = counts.flatten().double(), probs.flatten().double()
    expected = expected * counts.sum() / expected.sum()
    if bool((counts[expected == 0] > 0).any()):
        return 0.0
    counts, expected = counts[expected > 0], expected[expected > 0]
    big = expected >= 5
    obs, exp = counts[big], expected[big]
    if not bool(big.all()):
        obs, exp = torch.cat([obs, counts[~big].sum()[None]]), torch.cat([exp, expected[~big].sum()[None]])
    return float(sstats.chisquare(obs.numpy(), (exp * obs.sum() / exp.sum()).numpy(), ddof=ddof).pvalue)


def conditional_pvalue(prev, nxt, cond):
    """prev [R] (flat context ids), nxt [R] tokens, cond [C, V] -> p-value of nxt ~ cond[prev] given prev."""
    counts = torch.bincount(prev * V + nxt, minlength=len(cond) * V).reshape(-1, V)
    expected = counts.sum(-1, keepdim=True) * cond
    return chi_square_pvalue(counts, expected, ddof=int((counts.sum(-1) > 0).sum()) - 1)


def broken_no_update(drafts, n_draft, p, q):
    """Broken root: every first token tested against p itself (r never updated); all rejected: residual(p, q)."""
    B, M, _ = drafts.shape
    chosen, found = torch.zeros(B, dtype=torch.long), torch.zeros(B, dtype=torch.bool)
    for m in range(M):
        a = drafts[:, m, :1]
        ratio = (p[:, 0, 0].gather(-1, a) / q[:, m, 0].gather(-1, a)).squeeze(-1).clamp(max=1)
        acc = ~found & (torch.rand(B) < ratio)
        chosen, found = torch.where(acc, m, chosen), found | acc
    return chosen, found.long(), sample(residual(p[:, 0, 0], q[:, 0, 0]))


def broken_resample_p(drafts, n_draft, p, q):
    """Broken root: residuals updated correctly, but all rejected resamples from p instead of r^{M+1}."""
    chosen, n_acc, nxt = verify_batch_drafts(drafts, n_draft, p, q)
    return chosen, n_acc, torch.where(n_acc == 0, sample(p[:, 0, 0]), nxt)


@pytest.mark.parametrize("ragged", [False, True])
def test_output_follows_p(ragged):
    n = torch.randint(0, 3, (N, 3)) if ragged else None  # ragged: lengths 0..2, some rows with no draft at all
    drafts, n, p, q = draw(N, 3, n)
    chosen, n_acc, nxt = verify_batch_drafts(drafts, n, p, q)
    assert bool((n_acc <= n[torch.arange(N), chosen]).all())
    assert 0.03 < float((n_acc == 0).float().mean()) < 0.5 and float((n_acc == 2).float().mean()) > 0.1  # all branches
    out = outputs(drafts, chosen, n_acc, nxt)
    assert chi_square_pvalue(torch.bincount(out[:, 0], minlength=V), P0) > 1e-4  # first token ~ p(.|prefix)
    first_kept = n_acc >= 1  # second token given the first (an accepted draft): ~ P1[t1]
    assert conditional_pvalue(out[first_kept, 0], out[first_kept, 1], P1) > 1e-4
    both = n_acc == 2  # bonus token after a fully accepted draft: ~ P2[t1, t2]
    assert conditional_pvalue(out[both, 0] * V + out[both, 1], out[both, 2], P2.reshape(V * V, V)) > 1e-4


@pytest.mark.parametrize("broken", [broken_no_update, broken_resample_p])
def test_broken_root_is_detected(broken):
    drafts, n, p, q = draw(N, 3)
    out = outputs(drafts, *broken(drafts, n, p, q))
    counts = torch.bincount(out[:, 0], minlength=V)
    assert chi_square_pvalue(counts, P0) < 1e-10 and 0.5 * (counts / N - P0).abs().sum() > 0.02


@pytest.mark.parametrize("M", [1, 2, 3, 4])
def test_first_position_rejection_is_theorem_3(M):
    drafts, n, p, q = draw(N, M)
    _, n_acc, _ = verify_batch_drafts(drafts, n, p, q)
    emp, th = float((n_acc == 0).double().mean()), float(first_position_rejection(P0.double(), Q0.double(), M))
    assert abs(emp - th) < 5 * (th * (1 - th) / N) ** 0.5 + 1e-6, (emp, th)
    if M > 1:  # more drafts, fewer rejections
        assert th < float(first_position_rejection(P0.double(), Q0.double(), M - 1))


def test_m1_matches_speculative_sampling():
    drafts, n, p, q = draw(N, 1)
    hist = []
    for rule in ("batch", "single"):
        if rule == "batch":
            _, n_acc, nxt = verify_batch_drafts(drafts, n, p, q)
        else:
            n_acc, nxt = verify_exact_sampling(drafts[:, 0], n[:, 0], p[:, 0], q[:, 0])
        hist.append(torch.bincount(n_acc * V + nxt, minlength=3 * V))
    table = torch.stack(hist).numpy()
    table = table[:, table.sum(0) > 0]
    assert sstats.chi2_contingency(table).pvalue > 1e-4
    assert (table[0] > 0).sum() >= 10  # rejections at both slots and bonus tokens occurred


def test_empty_drafts_are_skipped():
    B, M = 4000, 3
    drafts, _, p, q = draw(B, M)
    p[:, :, 0] = torch.eye(V)[2]  # the root writes token 2 for sure
    drafts[:, :, 0] = torch.tensor([2, 1, 2])  # drafts 0 and 2 would be accepted ...
    n = torch.tensor([[0, 2, 1]]).expand(B, M).clone()  # ... but draft 0 is empty
    q[:, 0] = float("nan")  # and its q (not written for an empty draft) is never read
    n[: B // 2, 2] = 0  # half the rows: no usable draft starts with 2
    chosen, n_acc, nxt = verify_batch_drafts(drafts, n, p, q)
    assert bool((chosen[B // 2 :] == 2).all() and (n_acc[B // 2 :] == 1).all())
    assert bool((n_acc[: B // 2] == 0).all() and (nxt[: B // 2] == 2).all())
    # no draft at all in any row: the token comes from p
    chosen, n_acc, nxt = verify_batch_drafts(drafts, torch.zeros(B, M, dtype=torch.long), p, q)
    assert bool((n_acc == 0).all() and (nxt == 2).all() and (chosen == 0).all())
    # K = 0 draft slots
    chosen, n_acc, nxt = verify_batch_drafts(drafts[:, :, :0], n[:, :] * 0, p[:, :, :1], q[:, :, :0])
    assert bool((n_acc == 0).all() and (nxt == 2).all())


def test_one_hot_argmax_draft_is_accepted():
    B, M = 4000, 3
    drafts, n, p, q = draw(B, M)
    p[:, :, 0] = torch.eye(V)[drafts[:, 1, 0]][:, None]  # root one-hot at draft 1's first token
    p[:, :, 1] = torch.eye(V)[drafts[:, :, 1]]  # each draft's second token: the argmax of a one-hot p
    chosen, n_acc, _ = verify_batch_drafts(drafts, n, p, q)
    assert bool((n_acc == 2).all())
    assert bool((drafts[torch.arange(B), chosen, 0] == drafts[:, 1, 0]).all())
    assert bool(((chosen == 0) == (drafts[:, 0, 0] == drafts[:, 1, 0])).all())  # draft 0 is tried first
    # root one-hot at a token no draft starts with: all M rejected, r stays one-hot, the root writes it
    hot = (torch.nn.functional.one_hot(drafts[:, :, 0], V).sum(1) == 0).float().argmax(-1)
    p[:, :, 0] = torch.eye(V)[hot][:, None]
    chosen, n_acc, nxt = verify_batch_drafts(drafts, n, p, q)
    assert bool((n_acc == 0).all() and (nxt == hot).all() and (chosen == 0).all())


def test_q_equal_p_never_rejects():
    B, M = 4000, 3
    p = torch.randn(B, M, 3, V).softmax(-1)
    p[:, :, 0] = p[:, :1, 0]  # common root
    drafts = sample(p[:, :, :2])  # drafts from q = p
    n = torch.full((B, M), 2)
    n[:, 0] = torch.randint(0, 3, (B,))
    chosen, n_acc, _ = verify_batch_drafts(drafts, n, p, p[:, :, :2].clone())
    first_live = (n > 0).long().argmax(-1)
    assert bool((chosen == first_live).all() and (n_acc == n[torch.arange(B), first_live]).all())


# -- the engine: `num_drafts` -----------------------------------------------------------------------
def _engine_token_after_prefill(family, monkeypatch=None, rule=None, n=3000, M=3, seed=0):
    """Sample n continuations of one prompt with num_drafts=M: the second new token is the first one a round
    writes (from M drafts). Returns its counts [V] and the large model's exact marginal for it."""
    from models import make_inputs, make_pair

    import bild

    small, large = make_pair(family)
    ids, mask = make_inputs(family, 1, seed=5)
    if rule is not None:
        monkeypatch.setattr("bild.acceptance.verify_batch_drafts", rule)
    gen = bild.BiLDGenerator(
        small, large, verification="exact", num_drafts=M, fallback_threshold=0.0, max_small_steps=2
    )
    torch.manual_seed(seed)
    out = gen.generate(
        ids.expand(n, -1),
        attention_mask=mask.expand(n, -1),
        max_new_tokens=3,
        do_sample=True,
        top_k=0,
        top_p=1.0,
        pad_token_id=0,
    )
    P = 1 if large.config.is_encoder_decoder else ids.shape[1]
    assert gen.stats.rounds >= 1 and gen.stats.drafted > 0
    Vm = large.config.vocab_size
    with torch.no_grad():  # exact: p(t2) = sum_t1 p(t1) p(t2 | t1), by teacher forcing every t1
        if large.config.is_encoder_decoder:
            enc = large.get_encoder()(input_ids=ids.expand(Vm, -1), attention_mask=mask.expand(Vm, -1))
            start = torch.full((Vm, 1), large.config.decoder_start_token_id)
            dec = torch.cat([start, torch.arange(Vm)[:, None]], 1)
            logits = large(encoder_outputs=enc, attention_mask=mask.expand(Vm, -1), decoder_input_ids=dec).logits
        else:
            seqs = torch.cat([ids.expand(Vm, -1), torch.arange(Vm)[:, None]], 1)
            logits = large(input_ids=seqs, attention_mask=torch.ones_like(seqs)).logits
        p1, p2 = logits[0, -2].softmax(-1), logits[:, -1].softmax(-1)
    marginal = (p1[:, None] * p2).sum(0)
    return torch.bincount(out[:, P + 1], minlength=Vm), marginal


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_engine_num_drafts_keeps_the_large_models_distribution(family):
    counts, marginal = _engine_token_after_prefill(family)
    assert chi_square_pvalue(counts, marginal) > 1e-4


def test_engine_num_drafts_broken_rule_is_detected(monkeypatch):
    """Control: the same test rejects an engine whose rule resamples from p when all M first tokens fail."""

    def broken(drafts, n_draft, p, q):
        chosen, n_acc, nxt = verify_batch_drafts(drafts, n_draft, p, q)
        return chosen, n_acc, torch.where(n_acc == 0, torch.multinomial(p[:, 0, 0], 1).squeeze(-1), nxt)

    counts, marginal = _engine_token_after_prefill("llama", monkeypatch, broken)
    assert chi_square_pvalue(counts, marginal) < 1e-6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_drafts=0), "`num_drafts` must be an integer >= 1"),
        (dict(num_drafts="3"), "`num_drafts` must be an integer >= 1"),
        (dict(num_drafts=True), "`num_drafts` must be an integer >= 1"),
        (dict(num_drafts=2, verification="rollback"), "needs verification='exact'"),  # 0.4: exact is the default,
        (dict(num_drafts=2, verification="exact", uno_epsilon=0.1), "takes no `uno_epsilon`"),
    ],
)
def test_num_drafts_bad_arguments(kwargs, match):
    from models import make_pair

    import bild

    small, large = make_pair("llama")
    with pytest.raises(ValueError, match=match):
        bild.BiLDGenerator(small, large, **kwargs)


def test_num_drafts_refuses_greedy_and_row_by_row_families():
    from models import make_inputs, make_pair

    import bild

    small, large = make_pair("llama")
    ids, mask = make_inputs("llama", 1, seed=0)
    with pytest.raises(ValueError, match="needs do_sample=True"):
        bild.BiLDGenerator(small, large, verification="exact", num_drafts=2).generate(
            ids, attention_mask=mask, max_new_tokens=4
        )
    small, large = make_pair("bart")
    ids, mask = make_inputs("bart", 1, seed=0)
    with pytest.raises(ValueError, match="decode row by row"):
        bild.BiLDGenerator(small, large, verification="exact", num_drafts=2).generate(
            ids, attention_mask=mask, do_sample=True, max_new_tokens=4
        )


def test_num_drafts_with_fallback_streams_each_token_once():
    """A numeric fallback threshold (steps where every row falls back) and a streamer: each new token is
    streamed once, and the statistics count prompts."""
    from models import make_inputs, make_pair
    from test_engine_features import Recorder

    import bild

    small, large = make_pair("llama")
    ids, mask = make_inputs("llama", 1, seed=0)
    for seed in range(4):
        torch.manual_seed(seed)
        rec = Recorder()
        gen = bild.BiLDGenerator(
            small, large, verification="exact", num_drafts=2, fallback_threshold=0.6, max_small_steps=4
        )
        out = gen.generate(ids, attention_mask=mask, do_sample=True, top_k=0, max_new_tokens=16, streamer=rec)
        P = ids.shape[1]
        streamed = [t for chunk in rec.chunks[1:] for t in chunk]
        assert streamed == out[0, P:].tolist() and gen.stats.new_tokens == out.shape[1] - P
        assert gen.stats.fallbacks > 0


def test_num_drafts_processors_see_each_prompt_at_its_batch_index():
    """prefix_allowed_tokens_fn is called with the prompt's batch id, whichever of its M drafts is scored."""
    from models import make_inputs, make_pair

    import bild

    small, large = make_pair("llama")
    ids, mask = make_inputs("llama", 2, seed=1)
    allowed = {0: [5, 6, 7, 8], 1: [40, 41, 42, 43]}
    gen = bild.BiLDGenerator(
        small, large, verification="exact", num_drafts=3, fallback_threshold=0.0, max_small_steps=3
    )
    out = gen.generate(
        ids,
        attention_mask=mask,
        do_sample=True,
        top_k=0,
        max_new_tokens=12,
        prefix_allowed_tokens_fn=lambda b, _: allowed[b],
    )
    P = ids.shape[1]
    for b in range(2):
        assert set(out[b, P:].tolist()) <= set(allowed[b])
    assert gen.stats.drafted > 0
