"""Speculative sampling keeps the large model's distribution; Decoding-UNO relaxes it as specified."""

import itertools

import pytest
import torch
from scipy import stats as sstats
from transformers import LlamaConfig, LlamaForCausalLM

import bild
import bild.acceptance
import bild.decoding
from bild.verification import verify_exact_sampling

V, N, TEMP = 8, 20000, 0.9
PROMPT = [1, 5, 3]


def tiny_llama(seed):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        initializer_range=0.5,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=None,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def pair():
    return tiny_llama(1), tiny_llama(2)  # small, large: unrelated, so accepting every draft is visibly wrong


def exact_joint(large) -> torch.Tensor:
    """P(t2, t3) [V, V] under the large model's sampling distribution (temperature TEMP), t1 summed out."""
    seqs = torch.tensor([PROMPT + list(t) for t in itertools.product(range(V), repeat=3)])
    with torch.no_grad():
        logp = (large(seqs).logits[:, -4:-1] / TEMP).log_softmax(-1)  # predicts t1, t2, t3
    lp = sum(logp[:, i].gather(-1, seqs[:, len(PROMPT) + i, None]).squeeze(-1) for i in range(3))
    return lp.exp().reshape(V, V, V).sum(0)


def sampled_joint(small, large, fallback_threshold=0.0, **engine) -> tuple[torch.Tensor, bild.GenerationStats]:
    gen = bild.BiLDGenerator(
        small, large, fallback_threshold=fallback_threshold, max_small_steps=2, verification="exact", **engine
    )
    torch.manual_seed(0)
    out = gen.generate(torch.tensor([PROMPT] * N), max_new_tokens=4, do_sample=True, temperature=TEMP, top_k=0)
    t2, t3 = out[:, len(PROMPT) + 1], out[:, len(PROMPT) + 2]
    return torch.bincount(t2 * V + t3, minlength=V * V).reshape(V, V).double(), gen.stats


def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs.flatten().double() * counts.sum()
    counts = counts.flatten()
    if bool((counts[expected == 0] > 0).any()):
        return 0.0  # a sample the distribution cannot produce
    counts, expected = counts[expected > 0], expected[expected > 0]
    big = expected >= 5
    obs, exp = counts[big], expected[big]
    if not bool(big.all()):  # pool the rare cells into one
        obs = torch.cat([obs, counts[~big].sum()[None]])
        exp = torch.cat([exp, expected[~big].sum()[None]])
    exp = exp * obs.sum() / exp.sum()
    return float(sstats.chisquare(obs.numpy(), exp.numpy()).pvalue)


def accept_every_draft(drafts, n_draft, p, q, *_):
    """A broken rule: keep all drafts, then sample the next token from p."""
    rows = torch.arange(p.shape[0])
    return n_draft.clone(), torch.multinomial(p[rows, n_draft], 1).squeeze(-1)


def test_speculative_sampling_preserves_the_large_distribution(pair, monkeypatch):
    small, large = pair
    truth = exact_joint(large)
    counts, st = sampled_joint(small, large)
    assert st.drafted >= N and 0 < st.accepted < st.drafted  # both branches ran
    tv = 0.5 * (counts / N - truth).abs().sum()
    assert chi_square_pvalue(counts, truth) > 1e-4 and tv < 0.05, tv

    # control: the same test rejects a rule that accepts every draft
    monkeypatch.setattr(bild.acceptance, "verify_exact_sampling", accept_every_draft)
    bad, _ = sampled_joint(small, large)
    assert chi_square_pvalue(bad, truth) < 1e-10 and 0.5 * (bad / N - truth).abs().sum() > 0.1


def test_batch_fill_after_fallback_keeps_sampling_exact(pair, monkeypatch):
    """In a batch, rows that fell back keep drafting while others do (exact verification only)."""
    small, large = pair
    truth = exact_joint(large)
    counts, st = sampled_joint(small, large, fallback_threshold=0.4)
    assert st.fallbacks > 0
    tv = 0.5 * (counts / N - truth).abs().sum()
    assert chi_square_pvalue(counts, truth) > 1e-4 and tv < 0.05, tv
    # control: without the fill, fewer tokens are drafted (so the fill did run above)
    monkeypatch.setattr(bild.decoding.DraftVerifyLoop, "fill_batch_drafts", False)
    _, st_off = sampled_joint(small, large, fallback_threshold=0.4)
    assert st_off.fallbacks > 0 and st_off.fill_drafted == 0 and st_off.drafted < st.drafted + st.fill_drafted
    assert st.fill_drafted > 0


def test_uno_epsilon_zero_is_exact_and_positive_accepts_more(pair):
    small, large = pair
    ids = torch.tensor([PROMPT] * 2000)
    runs = {}
    for eps in (None, 0.0, 0.1):
        extra = {} if eps is None else {"uno_epsilon": eps}
        gen = bild.BiLDGenerator(small, large, fallback_threshold=0.0, max_small_steps=3, verification="exact", **extra)
        torch.manual_seed(3)
        runs[eps] = (gen.generate(ids, max_new_tokens=6, do_sample=True), gen.stats.acceptance_rate)
    assert torch.equal(runs[None][0], runs[0.0][0])
    assert runs[0.1][1] > runs[0.0][1]


def synthetic(B=40000):
    """One draft slot, fixed p (large) and q (small) in every row; the draft token 0 is likely under q."""
    p = torch.tensor([0.05, 0.45, 0.30, 0.20])
    q = torch.tensor([0.70, 0.10, 0.10, 0.10])
    drafts = torch.zeros(B, 1, dtype=torch.long)
    return drafts, torch.ones(B, dtype=torch.long), p.expand(B, 2, 4).clone(), q.expand(B, 1, 4).clone(), p, q


def test_uno_acceptance_dominates_exact_row_by_row():
    drafts, n, P, Q, _, _ = synthetic()
    torch.manual_seed(0)
    exact, _ = verify_exact_sampling(drafts, n, P, Q, 0.0)
    torch.manual_seed(0)  # same uniforms: (p + eps)/q >= p/q, so every accepted row stays accepted
    uno, _ = verify_exact_sampling(drafts, n, P, Q, 0.2)
    assert bool((uno >= exact).all()) and uno.sum() > exact.sum()
    assert abs(float(exact.float().mean()) - 0.05 / 0.70) < 0.01
    assert abs(float(uno.float().mean()) - 0.25 / 0.70) < 0.01


@pytest.mark.parametrize("eps,resample", [(0.0, "residual"), (0.2, "target"), (0.2, "residual")])
def test_rejection_resamples_from_residual_or_p(eps, resample):
    """Lossless (eps 0) and Decoding-OPT resample from norm(max(0, p - q)); Decoding-UNO from p."""
    drafts, n, P, Q, p, q = synthetic()
    torch.manual_seed(1)
    n_acc, nxt = verify_exact_sampling(drafts, n, P, Q, eps, resample)
    rejected = nxt[n_acc == 0]
    counts = torch.bincount(rejected, minlength=4).double()
    residual = (p - q).clamp(min=0)
    target = p if resample == "target" else residual / residual.sum()
    other = residual / residual.sum() if resample == "target" else p
    assert chi_square_pvalue(counts, target) > 1e-4
    assert chi_square_pvalue(counts, other) < 1e-10


def test_default_arguments_sample_the_large_distribution(pair):
    """BiLDGenerator(small, large) at default arguments (0.4: exact verification, adaptive policy) samples
    the large model's distribution."""
    small, large = pair
    truth = exact_joint(large)
    gen = bild.BiLDGenerator(small, large)
    torch.manual_seed(0)
    out = gen.generate(torch.tensor([PROMPT] * N), max_new_tokens=4, do_sample=True, temperature=TEMP, top_k=0)
    t2, t3 = out[:, len(PROMPT) + 1], out[:, len(PROMPT) + 2]
    counts = torch.bincount(t2 * V + t3, minlength=V * V).reshape(V, V).double()
    assert gen.stats.drafted > 0  # the draft path ran
    assert chi_square_pvalue(counts, truth) > 1e-4 and 0.5 * (counts / N - truth).abs().sum() < 0.05
