"""A draft whose head covers a subset of the vocabulary (bild.prune_draft_vocabulary, FR-Spec): exact decoding
stays exact, drafts come from the subset only, the map survives save/load, and the frequency-based choice of
tokens keeps the special tokens."""

import collections
import copy

import pytest
import torch
from models import V, make_inputs, make_pair
from test_sampling import PROMPT, TEMP, N, chi_square_pvalue, exact_joint, tiny_llama
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import bild
import bild.acceptance
from bild.pairs.alignment import TeacherRecord, frequent_token_ids, special_token_ids, token_frequencies
from bild.verification import verify_exact_sampling

SPECIALS = [0, 1, 2]  # pad, bos, eos of tests/models.py
SUBSET = SPECIALS + list(range(3, V, 2))  # every other ordinary token: the large model often writes the others


def pruned(family: str, ids=SUBSET):
    small, large = make_pair(family)
    full = copy.deepcopy(small)
    return bild.prune_draft_vocabulary(small, ids), full, large


def new_tokens(family, out, ids):
    return out[:, ids.shape[1] :] if family != "t5" else out[:, 1:]


# -- exact stays exact ------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "t5"])
def test_greedy_exact_with_a_pruned_draft_equals_large_generate(family, one_thread):
    small, _, large = pruned(family)
    ids, mask = make_inputs(family, 3)  # left padding (decoder-only) / right-padded encoder input
    ref = large.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False)
    gen = bild.BiLDGenerator(small, large, fallback_threshold=0.0, max_small_steps=4)
    out = gen.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False)
    assert torch.equal(out, ref)
    outside = ~torch.isin(new_tokens(family, ref, ids), torch.tensor(SUBSET))
    assert bool(outside.any()), "the large model never left the subset: the test would not see a wrong rule"
    assert 0 < gen.stats.accepted < gen.stats.drafted


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_logits_processors_that_ban_the_whole_subset(family, one_thread):
    """With every ordinary subset token suppressed the draft's row has no finite subset entry left: it must
    not turn into NaN probabilities, and the output stays the large model's."""
    small, _, large = pruned(family)
    ids, mask = make_inputs(family, 3)
    kw = dict(max_new_tokens=10, do_sample=False, repetition_penalty=1.3, suppress_tokens=SUBSET[3:] + [2])
    ref = large.generate(ids, attention_mask=mask, **kw)
    out = bild.BiLDGenerator(small, large, fallback_threshold=0.0, max_small_steps=3).generate(
        ids, attention_mask=mask, **kw
    )
    assert torch.equal(out, ref)


def test_sampling_with_a_pruned_draft_keeps_the_large_distribution(monkeypatch, one_thread):
    """Leviathan's rule with q = 0 outside the subset: the residual max(0, p - q) writes the other tokens."""
    small, large = tiny_llama(1), tiny_llama(2)  # V = 8, unrelated models
    keep = [0, 1, 3, 4, 6]
    bild.prune_draft_vocabulary(small, keep)
    truth = exact_joint(large)

    def joint(num_drafts=1):
        gen = bild.BiLDGenerator(
            small, large, fallback_threshold=0.0, max_small_steps=2, verification="exact", num_drafts=num_drafts
        )
        torch.manual_seed(0)
        out = gen.generate(torch.tensor([PROMPT] * N), max_new_tokens=4, do_sample=True, temperature=TEMP, top_k=0)
        t2, t3 = out[:, len(PROMPT) + 1], out[:, len(PROMPT) + 2]
        return torch.bincount(t2 * 8 + t3, minlength=64).reshape(8, 8).double(), gen.stats

    for m in (1, 2):  # speculative sampling; batch speculative decoding (Yin et al.'s Alg. 4)
        counts, st = joint(m)
        assert st.drafted > 0 and 0 < st.accepted < st.drafted
        tv = 0.5 * (counts / N - truth).abs().sum()
        assert chi_square_pvalue(counts, truth) > 1e-4 and tv < 0.05, (m, tv)

    # control: verifying in the draft's vocabulary (p renormalised over the subset) is detected
    def in_subset(drafts, n_draft, p, q, *args):
        mask = torch.zeros(p.shape[-1], dtype=torch.bool)
        mask[keep] = True
        p = torch.where(mask, p, 0.0)
        return verify_exact_sampling(drafts, n_draft, p / p.sum(-1, keepdim=True), q, *args)

    monkeypatch.setattr(bild.acceptance, "verify_exact_sampling", in_subset)
    bad, _ = joint()
    assert chi_square_pvalue(bad, truth) < 1e-10 and 0.5 * (bad / N - truth).abs().sum() > 0.1


@pytest.mark.parametrize("engine", [dict(uno_epsilon=0.2), dict(opt_epsilon=0.2), dict(num_drafts=2)])
def test_relaxed_and_batch_rules_run_and_draft_subset_tokens(engine, one_thread):
    small, _, large = pruned("llama")
    ids, mask = make_inputs("llama", 3)
    gen = bild.BiLDGenerator(small, large, fallback_threshold=0.0, max_small_steps=3, **engine)
    torch.manual_seed(0)
    out = gen.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=True)
    assert gen.stats.drafted > 0 and gen.stats.accepted > 0
    assert ((out >= 0) & (out < V)).all()
    _assert_small_tokens_in_subset(new_tokens("llama", out, ids), gen.stats.token_sources)


# -- what the pruned draft proposes ------------------------------------------------------------------------
def _assert_small_tokens_in_subset(new, sources):
    small_written = [int(t) for row, src in zip(new, sources) for t, s in zip(row, src) if s == "small"]
    assert small_written and set(small_written) <= set(SUBSET)


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_rollback_runs_and_drafts_only_subset_tokens(family, one_thread):
    small, _, large = pruned(family)
    ids, mask = make_inputs(family, 3)
    gen = bild.BiLDGenerator(small, large, fallback_threshold=0.0, max_small_steps=4, rollback_threshold=3.0)
    out = gen.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False)
    _assert_small_tokens_in_subset(new_tokens(family, out, ids), gen.stats.token_sources)


def test_pruned_draft_greedy_is_the_full_drafts_argmax_over_the_subset(one_thread):
    """With rollback_threshold=inf every draft is kept, so each small-written token is the pruned draft's
    greedy choice after the tokens before it; reference: the full (unpruned) draft run without a cache over the
    output, its logits restricted to the subset."""
    small, full, large = pruned("llama")
    ids, mask = make_inputs("llama", 3)
    gen = bild.BiLDGenerator(small, large, fallback_threshold=0.0, max_small_steps=5, rollback_threshold=float("inf"))
    out = gen.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False)
    P, sub = ids.shape[1], torch.tensor(SUBSET)
    checked = 0
    for r in range(out.shape[0]):
        row = out[r][mask[r].bool().tolist() + [True] * (out.shape[1] - P)]  # the row without its padding
        n_prompt = int(mask[r].sum())
        with torch.no_grad():
            logits = full(row[None]).logits[0]  # [T, V]
        want = sub[logits[:, sub].argmax(-1)]  # the full draft's argmax over the subset, after each prefix
        for j, s in enumerate(gen.stats.token_sources[r]):
            if s == "small":
                assert int(row[n_prompt + j]) == int(want[n_prompt + j - 1]), (r, j)
                checked += 1
    assert checked >= 10


def test_adapter_widens_the_narrow_logits(one_thread):
    small, full, _ = pruned("llama")
    ids = torch.tensor([[5, 9, 17, 40]])
    a = bild.adapters.ModelAdapter(small)
    a.start(1, ids.device)
    got = a.feed(ids, [[True] * 4], keep=2)
    ref = full(ids).logits[:, -2:]
    inside = torch.zeros(V, dtype=torch.bool)
    inside[SUBSET] = True
    assert got.shape == (1, 2, V)
    torch.testing.assert_close(got[..., inside], ref[..., inside], rtol=1e-5, atol=1e-5)
    assert bool((got[..., ~inside] < -1e29).all()) and float(got.softmax(-1)[..., ~inside].sum()) == 0.0


# -- save / load ------------------------------------------------------------------------------------------
def tied_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )  # tied, as SmolLM2
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("family", ["tied-llama", "llama", "t5"])
def test_save_and_load_round_trip(family, tmp_path, one_thread):
    if family == "tied-llama":
        small, large = tied_llama(), make_pair("llama")[1]
        emb = small.model.embed_tokens.weight.detach().clone()
        bild.prune_draft_vocabulary(small, SUBSET)
        assert small.model.embed_tokens.weight.shape[0] == V and torch.equal(small.model.embed_tokens.weight, emb)
        fam = "llama"
    else:
        small, _, large = pruned(family)
        fam = family
    small.save_pretrained(tmp_path)
    back = bild.load_draft(tmp_path)
    assert type(back) is type(small)
    assert bild.draft_vocabulary(back) == (SUBSET, V)
    assert back.get_output_embeddings().weight.shape == (len(SUBSET), small.get_output_embeddings().in_features)
    ids, mask = make_inputs(fam, 3)
    kw = {} if fam != "t5" else dict(decoder_input_ids=torch.zeros(3, 2, dtype=torch.long))
    with torch.no_grad():
        assert torch.equal(
            back(input_ids=ids, attention_mask=mask, **kw).logits,
            small(input_ids=ids, attention_mask=mask, **kw).logits,
        )
    back.tie_weights()  # transformers' re-tie must not put the full embedding back into the head
    assert back.get_output_embeddings().weight.shape[0] == len(SUBSET)
    args = dict(attention_mask=mask, max_new_tokens=10, do_sample=False)
    assert torch.equal(
        bild.BiLDGenerator(back, large, fallback_threshold=0.0, max_small_steps=3).generate(ids, **args),
        large.generate(ids, **args),
    )


def test_plain_from_pretrained_of_a_pruned_draft_is_refused_with_a_hint(tmp_path):
    small, large = tied_llama(), make_pair("llama")[1]
    bild.prune_draft_vocabulary(small, SUBSET)
    small.save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)  # full tied head, map in its config
    with pytest.raises(ValueError, match="bild.load_draft"):
        bild.BiLDGenerator(plain, large)


def test_load_draft_of_an_unpruned_model_is_from_pretrained(tmp_path):
    small, _ = make_pair("llama")
    small.save_pretrained(tmp_path)
    back = bild.load_draft(tmp_path)
    assert bild.draft_vocabulary(back) is None and torch.equal(back.lm_head.weight, small.lm_head.weight)


def test_pruning_twice_takes_a_subset(one_thread):
    small, full, _ = pruned("llama")
    bild.prune_draft_vocabulary(small, SPECIALS + [5, 7, 9])
    assert bild.draft_vocabulary(small) == ([0, 1, 2, 5, 7, 9], V)
    torch.testing.assert_close(small.lm_head.weight, full.lm_head.weight[[0, 1, 2, 5, 7, 9]])
    with pytest.raises(ValueError, match="`token_ids`.*pruned head lacks"):
        bild.prune_draft_vocabulary(small, [4])


# -- refusals ---------------------------------------------------------------------------------------------
def test_check_pair_refuses_a_narrower_head_without_a_map():
    small, large = make_pair("llama")
    small.set_output_embeddings(torch.nn.Linear(32, len(SUBSET), bias=False))
    with pytest.raises(ValueError, match=r"differ in width \(50 vs 96\).*prune_draft_vocabulary"):
        bild.BiLDGenerator(small, large)
    other, _ = make_pair("llama")
    other.set_output_embeddings(torch.nn.Linear(32, V + 4, bias=False))  # another vocabulary, wider
    with pytest.raises(ValueError, match=r"differ in width \(100 vs 96\)"):
        bild.BiLDGenerator(other, large)


def test_check_pair_refuses_a_pruned_large_model_and_a_map_of_another_vocabulary():
    small, full, large = pruned("llama")
    with pytest.raises(ValueError, match="large model's head is pruned"):
        bild.BiLDGenerator(full, bild.prune_draft_vocabulary(copy.deepcopy(large), SUBSET))
    small.config.bild_draft_vocabulary = dict(small.config.bild_draft_vocabulary, vocab_size=V * 2)
    with pytest.raises(ValueError, match="records a pruned vocabulary"):
        bild.BiLDGenerator(small, large)


@pytest.mark.parametrize(
    "ids,match",
    [
        ([], "empty"),
        ([0, V], r"\[0, 96\)"),
        ([-1, 3], r"\[0, 96\)"),
        (["a"], "integer"),
        ([1.5], "integer"),
        ([True, 3], "integer"),
    ],
)
def test_bad_token_ids_are_refused(ids, match):
    small, _ = make_pair("llama")
    with pytest.raises(ValueError, match=match) as err:
        bild.prune_draft_vocabulary(small, ids)
    assert "`token_ids`" in str(err.value)


# -- frequency-based selection -----------------------------------------------------------------------------
class StubTokenizer:
    """What frequent_token_ids reads of a tokenizer: special ids, added special tokens, a chat template."""

    all_special_ids = [0, 2]
    added_tokens_decoder = {50: type("T", (), {"special": True})(), 51: type("T", (), {"special": False})()}
    chat_template = "<|x|>"

    def apply_chat_template(self, msgs, tokenize=False):
        return "<<>>"

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [60, 61] if text == "<<>>" else [ord(c) % 40 for c in text]}

    def __len__(self):
        return 64


def test_frequent_token_ids_keep_special_tokens_and_the_most_frequent():
    records = [
        TeacherRecord(prompt_ids=[9, 9, 9, 9], output_ids=[5, 5, 5, 7, 7, 3]),
        TeacherRecord(prompt_ids=[9], output_ids=[5, 7, 8]),
    ]
    counts = token_frequencies(records)
    assert counts == collections.Counter({9: 5, 5: 4, 7: 3, 3: 1, 8: 1})
    assert token_frequencies(records, prompts=False)[9] == 0
    model = make_pair("llama")[0]  # generation config: bos 1, eos 2, pad 0
    tok = StubTokenizer()
    assert special_token_ids(tok, model) == {0, 1, 2, 50, 60, 61}
    ids = frequent_token_ids(records, 9, tokenizer=tok, model=model)
    assert ids == [0, 1, 2, 5, 7, 9, 50, 60, 61]  # 6 special, then 9 (5 uses), 5 (4), 7 (3)
    assert frequent_token_ids(records, 11, tokenizer=tok, model=model) == [0, 1, 2, 3, 5, 7, 8, 9, 50, 60, 61]
    # fewer distinct tokens than asked: unseen ids in ascending order fill the head, up to the vocabulary
    assert frequent_token_ids(records, 13, tokenizer=tok, model=model)[:6] == [0, 1, 2, 3, 4, 5]
    assert len(frequent_token_ids(records, 200, tokenizer=tok, model=model)) == V
    assert frequent_token_ids(["ab", "b"], 8, tokenizer=tok)[-2:] == [60, 61]  # strings tokenised
    with pytest.raises(ValueError, match="`size`"):
        frequent_token_ids(records, 3, tokenizer=tok, model=model)
    with pytest.raises(ValueError, match="`size`"):
        frequent_token_ids(records, 0)
    # the selection prunes a draft that still decodes exactly
    small, large = make_pair("llama")
    bild.prune_draft_vocabulary(small, frequent_token_ids(records, 40, model=small))
    ids_, mask = make_inputs("llama", 3)
    args = dict(attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert torch.equal(
        bild.BiLDGenerator(small, large, fallback_threshold=0.0).generate(ids_, **args), large.generate(ids_, **args)
    )


def test_greedy_agreement_reads_a_pruned_head_through_its_map(one_thread):
    """Reference: the full draft's argmax over the subset, teacher forced along the large model's output."""
    from bild.pairs.alignment import greedy_agreement

    small, full, large = pruned("llama")
    prompts = [[1, 5, 9, 14], [1, 33, 8]]
    recs = []
    for p in prompts:
        out = large.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False)[0, len(p) :].tolist()
        recs.append(TeacherRecord(prompt_ids=p, output_ids=out))
    sub, hit, tot = torch.tensor(SUBSET), 0, 0
    for r in recs:
        seq = torch.tensor([r.prompt_ids + r.output_ids])
        with torch.no_grad():
            pred = sub[full(seq).logits[0, :-1, sub].argmax(-1)][len(r.prompt_ids) - 1 :]
        hit += int((pred == torch.tensor(r.output_ids)).sum())
        tot += len(r.output_ids)
    assert 0 < hit < tot
    assert greedy_agreement(small, recs) == pytest.approx(hit / tot)
