"""Hybrid models (linear-attention / state-space layers beside a few attention layers) and pure state-space
models under speculation, on transformers releases that roll recurrent states back (5.25 on: the adapter
records the state after each token of a forward, `recurrent_states_to_keep`, and crops every round). Before
that release these families are refused (tests/test_families.py, `CHANGED_IN`).

Families: Qwen3-Next (gated delta rule), Granite 4 (`granitemoehybrid`, Mamba2 mixers), Falcon-H1 (Mamba2 and
attention in one layer), Mamba2 (no attention layer). They decode batches row by row (bild.adapters: a masked
slot would enter the recurrent state), each row with its prompt padding as transformers' generate has it.

Checked against independent references: BiLD's rollback rule against the cache-free reference
(tests/reference.py), greedy exact decoding with every drafter (small model, prompt lookup, both) against
`large.generate`, sampling against the large model's exact distribution (chi-square, with a broken-rule
control), and mixed pairs (a hybrid draft for a dense large model and the reverse).
"""

import pytest
import torch
import transformers
from models import make_pair
from reference import reference_generate
from test_families import padded_batch
from test_sampling import accept_every_draft, chi_square_pvalue, exact_joint
from zoo import make_zoo_pair

import bild
import bild.acceptance

RECORDS_STATES = hasattr(transformers.DynamicCache, "get_recurrent_states_to_keep")
pytestmark = pytest.mark.skipif(
    not RECORDS_STATES,
    reason=f"transformers {transformers.__version__} cannot roll "
    "recurrent states back (5.25 can); these families are refused there",
)
HYBRIDS = ["qwen3_next", "granitemoehybrid", "falcon_h1", "mamba2"]
N_NEW = 14
SETTINGS = [  # (fallback, rollback, max_small_steps, verification), as tests/test_engine_reference.py
    (0.5, 2.0, 4, "rollback"),
    (0.3, float("inf"), 3, "rollback"),
    (0.0, 0.0, 5, "exact"),
]


def padded():
    """Left-padded prompts of 9, 7 and 5 tokens (the family test's batch)."""
    return padded_batch("decoder")


@pytest.fixture(scope="module", params=HYBRIDS)
def hybrid(request):
    return request.param, *make_zoo_pair(request.param)


def test_hybrids_are_recorded_and_rows(hybrid):
    """The engine sees these caches as holding recurrent state (it records and crops them) and decodes their
    batches row by row."""
    _, small, large = hybrid
    for m in (small, large):
        assert bild.adapters.state_layers(bild.adapters.new_cache(m))
        assert bild.adapters.batch_layout(m) == "rows"
        assert bild.families.rollback_is_exact(m)


def test_rollback_rule_matches_cache_free_reference(hybrid):
    name, small, large = hybrid
    ids, mask = padded()
    totals = dict(accepted=0, rollbacks=0)
    for fb, rb, steps, verification in SETTINGS:
        gen = bild.BiLDGenerator(
            small, large, fallback_threshold=fb, rollback_threshold=rb, max_small_steps=steps, verification=verification
        )
        out = gen.generate(ids, attention_mask=mask, max_new_tokens=N_NEW, do_sample=False)
        for r in range(ids.shape[0]):
            ref = reference_generate(small, large, ids[r][mask[r].bool()].tolist(), N_NEW, fb, rb, steps, verification)
            assert out[r, ids.shape[1] : ids.shape[1] + len(ref)].tolist() == ref, (name, fb, rb, r)
        for k in totals:
            totals[k] += getattr(gen.stats, k)
    assert totals["accepted"] > 0 and totals["rollbacks"] > 0, totals  # drafts kept and rolled back


def echo_prompts(large):
    """A left-padded batch whose first row is p + c + p, c the large model's own greedy continuation of p:
    the text after it tends to repeat c, so prompt lookup finds candidates."""
    ids, mask = padded()
    p = ids[2][mask[2].bool()][None]
    c = large.generate(p, max_new_tokens=4, do_sample=False)[0, p.shape[1] :]
    row = torch.cat([p[0], c, p[0]])
    L = row.numel()
    ids = torch.cat([torch.zeros(3, L - ids.shape[1], dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(3, L - mask.shape[1], dtype=torch.long), mask], 1)
    ids[0], mask[0] = row, 1
    return ids, mask


@pytest.mark.parametrize("drafter", ["small", "lookup", "combined"])
def test_greedy_equals_large_generate_with_every_drafter(hybrid, drafter):
    """Exact decoding with the small model, prompt lookup alone and both, at default arguments and with fixed
    drafts, at batch 1 and on a left-padded batch: `large.generate`'s tokens."""
    name, small, large = hybrid
    ids, mask = echo_prompts(large)
    lookup = {} if drafter == "small" else {"prompt_lookup_num_tokens": 4}
    draft_model = None if drafter == "lookup" else small
    drafted = {}
    for x, m in ((ids[:1], mask[:1]), (ids, mask)):
        want = large.generate(x, attention_mask=m, max_new_tokens=N_NEW, do_sample=False)
        for opts in ({}, dict(fallback_threshold=0.0, max_small_steps=4)):
            gen = bild.BiLDGenerator(draft_model, large, **opts)
            got = gen.generate(x, attention_mask=m, max_new_tokens=N_NEW, **lookup)
            assert torch.equal(got, want), (name, drafter, opts, x.shape)
            for src, k in gen.stats.drafted_by.items():
                drafted[src] = drafted.get(src, 0) + k
    assert all(
        drafted.get(src, 0) > 0
        for src in {"small": ["small"], "lookup": ["lookup"], "combined": ["small", "lookup"]}[drafter]
    ), drafted


def test_bild_rule_over_lookup_matches_single_rows(hybrid):
    """BiLD's rule over lookup and small-model drafts: each row of a padded batch as the row alone (the rule's
    text is a function of the row)."""
    _, small, large = hybrid
    ids, mask = echo_prompts(large)
    gen = bild.BiLDGenerator(small, large, rollback_threshold=2.0)
    kw = dict(max_new_tokens=N_NEW, do_sample=False, prompt_lookup_num_tokens=4)
    batched = gen.generate(ids, attention_mask=mask, **kw)
    for r in range(3):
        single = gen.generate(ids[r : r + 1], attention_mask=mask[r : r + 1], **kw)
        assert torch.equal(batched[r, : single.shape[1]], single[0]), r


# -- sampling ---------------------------------------------------------------------------------------------
V, TEMP, N = 8, 0.9, 600


def tiny_qwen3_next(seed):
    torch.manual_seed(seed)
    cfg = transformers.Qwen3NextConfig(
        vocab_size=V,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        linear_num_key_heads=2,
        linear_num_value_heads=2,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
        layer_types=["linear_attention", "full_attention"],
        num_experts=0,
        max_position_embeddings=32,
        initializer_range=0.5,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=None,
        tie_word_embeddings=False,
    )
    return transformers.Qwen3NextForCausalLM(cfg).eval()


def sampled_joint(small, large, n):
    gen = bild.BiLDGenerator(small, large, fallback_threshold=0.0, max_small_steps=2, verification="exact")
    torch.manual_seed(0)
    out = gen.generate(torch.tensor([[1, 5, 3]] * n), max_new_tokens=4, do_sample=True, temperature=TEMP, top_k=0)
    t2, t3 = out[:, 4], out[:, 5]
    return torch.bincount(t2 * V + t3, minlength=V * V).reshape(V, V).double(), gen.stats


def test_sampling_follows_the_large_hybrids_distribution(monkeypatch):
    """Speculative sampling with a Qwen3-Next-shaped large model (and an unrelated draft of the same shape):
    the joint of the 2nd and 3rd new tokens, which follow rejected drafts and so a rolled-back recurrent state,
    is the large model's (chi-square); a rule that keeps every draft fails the same test."""
    small, large = tiny_qwen3_next(1), tiny_qwen3_next(2)
    truth = exact_joint(large)
    counts, st = sampled_joint(small, large, N)
    assert st.drafted >= N and 0 < st.accepted < st.drafted and st.rollbacks > 0
    assert chi_square_pvalue(counts, truth) > 1e-4, 0.5 * (counts / N - truth).abs().sum()
    monkeypatch.setattr(bild.acceptance, "verify_exact_sampling", accept_every_draft)
    bad, _ = sampled_joint(small, large, N // 2)
    assert chi_square_pvalue(bad, truth) < 1e-6


# -- mixed pairs --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hybrid_role", ["small", "large"])
def test_mixed_pairs(hybrid_role):
    """A hybrid draft for a dense large model and the reverse (one vocabulary): greedy exact equals
    `large.generate` (defaults and fixed drafts), BiLD's rule equals the cache-free reference."""
    dense_small, dense_large = make_pair("llama")
    hybrid_small, hybrid_large = make_zoo_pair("qwen3_next")
    small, large = (hybrid_small, dense_large) if hybrid_role == "small" else (dense_small, hybrid_large)
    ids, mask = padded()
    want = large.generate(ids, attention_mask=mask, max_new_tokens=N_NEW, do_sample=False)
    for opts in ({}, dict(fallback_threshold=0.0, max_small_steps=4)):
        got = bild.BiLDGenerator(small, large, **opts).generate(ids, attention_mask=mask, max_new_tokens=N_NEW)
        assert torch.equal(got, want), opts
    fb, rb, steps = 0.3, 1.5, 4
    gen = bild.BiLDGenerator(small, large, fallback_threshold=fb, rollback_threshold=rb, max_small_steps=steps)
    out = gen.generate(ids[:1], attention_mask=mask[:1], max_new_tokens=N_NEW, do_sample=False)
    ref = reference_generate(small, large, ids[0].tolist(), N_NEW, fb, rb, steps)
    assert out[0, ids.shape[1] :].tolist()[: len(ref)] == ref
    assert gen.stats.drafted > 0


def test_returned_cache_of_a_hybrid_is_none():
    """return_dict_in_generate: a hybrid's cache is not returned (None, as documented): its recurrent state's
    record goes with each round's rollback, so it cannot be cut back to the returned context."""
    small, large = make_zoo_pair("qwen3_next")
    ids = torch.tensor([[5, 9, 13, 17]])
    out = bild.BiLDGenerator(small, large).generate(ids, max_new_tokens=8, return_dict_in_generate=True)
    field = "cache" if "cache" in type(out).__dataclass_fields__ else "past_key_values"
    assert getattr(out, field) is None
    assert torch.equal(out.sequences, large.generate(ids, max_new_tokens=8, do_sample=False))
