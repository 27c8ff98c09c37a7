"""Tree drafts (`draft_tree=k`, `bild.tree`): exact under greedy decoding and sampling, refused where they cannot
be served, and the caches keep exactly the accepted path."""

import pytest
import torch
from models import DECODER_ONLY, make_inputs, make_pair
from test_sampling import PROMPT, TEMP, V, chi_square_pvalue, exact_joint, tiny_llama
from transformers import DynamicCache, GenerationConfig, LogitsProcessorList, TemperatureLogitsWarper
from zoo import available, make_zoo_pair

import bild
import bild.tree
from bild.adapters import ModelAdapter
from bild.generator import check_options
from bild.policies import ThresholdPolicy
from bild.tree import TreeCache, TreeLoop

ZOO_TREE = ("qwen2_nosw", "gemma", "phi", "olmo", "gptj")  # decoder families whose caches are full attention


def _prompts(n=3, length=6):
    g = torch.Generator().manual_seed(3)
    return [torch.randint(3, 90, (1, length), generator=g) for _ in range(n)]


@pytest.mark.parametrize("family", DECODER_ONLY + ZOO_TREE)
def test_greedy_tree_equals_large_generate(family, one_thread):
    if family in DECODER_ONLY:
        small, large = make_pair(family)
    else:
        if not available(family):
            pytest.skip(f"{family} not in this transformers release")
        small, large = make_zoo_pair(family)
    accepted = 0
    for ids in _prompts():
        ids = ids % large.config.get_text_config().vocab_size
        want = large.generate(ids, max_new_tokens=24, do_sample=False)
        for k in (2, 3, 4):
            gen = bild.BiLDGenerator(small, large, draft_tree=k, fallback_threshold=0, max_small_steps=4)
            assert torch.equal(gen.generate(ids, max_new_tokens=24, do_sample=False), want), (family, k)
            accepted += gen.stats.accepted
            assert gen.stats.large_forwards == gen.stats.rounds + 1  # one verify pass per round
    assert accepted > 0  # drafts were kept, so paths other than the first token were gathered


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_tree_mask_on_both_attention_paths(impl, one_thread):
    """The 4D additive mask is added by eager attention and passed to sdpa as a float mask."""
    small, large = make_pair("llama")
    for m in (small, large):
        m.set_attn_implementation(impl)
    for ids in _prompts(2):
        want = large.generate(ids, max_new_tokens=24, do_sample=False)
        gen = bild.BiLDGenerator(small, large, draft_tree=3, fallback_threshold=0, max_small_steps=4)
        assert torch.equal(gen.generate(ids, max_new_tokens=24, do_sample=False), want)


def test_greedy_tree_default_policy_padding_and_eos(one_thread):
    """The adaptive policy's depths, a left-padded prompt at batch 1, an eos in the way."""
    small, large = make_pair("llama")
    ids, mask = make_inputs("llama", 3, seed=4)
    for r in range(3):
        kw = dict(attention_mask=mask[r : r + 1], max_new_tokens=30, do_sample=False)
        want = large.generate(ids[r : r + 1], **kw)
        for k in (2, 4):
            got = bild.BiLDGenerator(small, large, draft_tree=k).generate(ids[r : r + 1], **kw)
            assert torch.equal(got, want)
        eos = int(want[0, ids.shape[1] + 5])  # a token it writes: generation stops there
        got = bild.BiLDGenerator(small, large, draft_tree=3, fallback_threshold=0, max_small_steps=4).generate(
            ids[r : r + 1], eos_token_id=eos, **kw
        )
        assert torch.equal(got, large.generate(ids[r : r + 1], eos_token_id=eos, **kw))


def test_tree_accepts_more_per_round_than_the_chain(one_thread):
    """The same depth: the tree's first position has k chances, so it keeps at least as many tokens per round."""
    small, large = make_pair("llama")
    per_round = {}
    for k in (None, 4):
        acc = rounds = 0
        for ids in _prompts(4):
            gen = bild.BiLDGenerator(small, large, draft_tree=k, fallback_threshold=0, max_small_steps=4)
            gen.generate(ids, max_new_tokens=30, do_sample=False)
            acc, rounds = acc + gen.stats.new_tokens, rounds + gen.stats.rounds + 1
        per_round[k] = acc / rounds
    assert per_round[4] > per_round[None], per_round


# -- sampling --------------------------------------------------------------------------------------------
N = 3000


def tree_joint(small, large, k=3, n=N) -> torch.Tensor:
    """Counts of (t2, t3) over n batch-1 runs of the tree loop (driven directly: generate's own setup per call
    would dominate)."""
    opts = check_options(fallback_threshold=0.0, max_small_steps=2, verification="exact", draft_tree=k)
    gc = GenerationConfig(do_sample=True, temperature=TEMP, top_k=0, pad_token_id=0)
    policy = ThresholdPolicy(0.0, 2)
    lp = TreeLoop(
        ModelAdapter(small),
        ModelAdapter(large),
        opts,
        policy.open(1, None),
        gc,
        LogitsProcessorList([TemperatureLogitsWarper(TEMP)]),
        None,
        width=k,
    )
    ids = torch.tensor([PROMPT])
    torch.manual_seed(0)
    counts = torch.zeros(V * V, dtype=torch.float64)
    for _ in range(n):
        seq = lp.run(ids, None, 4)[0][0]
        counts[int(seq[len(PROMPT) + 1]) * V + int(seq[len(PROMPT) + 2])] += 1
    assert lp.stats.rounds >= 1
    return counts.reshape(V, V)


def test_tree_sampling_preserves_the_large_distribution(one_thread, monkeypatch):
    small, large = tiny_llama(1), tiny_llama(2)  # unrelated: accepting every draft is visibly wrong
    truth = exact_joint(large)
    counts = tree_joint(small, large)
    tv = 0.5 * (counts / N - truth).abs().sum()
    assert chi_square_pvalue(counts, truth) > 1e-4 and tv < 0.09, tv

    # control: the same test rejects a tree rule that follows the first draft and keeps it whole
    def follow_first(drafts, n_draft, p, q):
        B = drafts.shape[0]
        zero = torch.zeros(B, dtype=torch.long)
        return zero, n_draft[:, 0], torch.multinomial(p[torch.arange(B), 0, n_draft[:, 0]], 1).squeeze(-1)

    monkeypatch.setattr(bild.tree, "verify_batch_drafts", follow_first)
    bad = tree_joint(small, large, n=1000)
    assert chi_square_pvalue(bad, truth) < 1e-6


# -- caches ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_kept_path_equals_an_uncached_forward(family):
    """TreeCache: a prefix, two tree levels of three branches, the third branch's path kept: the cache's keys and
    values equal those of one cache-free pass over prefix + path."""
    _, model = make_pair(family)
    a = ModelAdapter(model)
    a.times = None
    a.start(1, torch.device("cpu"))
    prefix = [5, 9, 14, 20]
    a.feed(torch.tensor([prefix]), [[True] * 4], keep=1)
    tree = TreeCache(a)
    tree.feed(torch.tensor([30, 31, 32]), [-1, -1, -1])
    tree.feed(torch.tensor([40, 41, 42]), [0, 1, 2])
    tree.keep([2, 5])  # 32 then 42
    ref = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([prefix + [32, 42]]), use_cache=True, **{a.caps.cache_arg: ref})
    assert a.length == 6 and a.n_valid == [6] and a.slots == [list(range(6))]
    for got, want in zip(a.cache.layers, ref.layers):
        assert got.keys.shape == want.keys.shape
        torch.testing.assert_close(got.keys, want.keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got.values, want.values, atol=1e-5, rtol=1e-4)


def test_returned_cache_continues_like_the_large_models(one_thread):
    """The large model's cache after tree rounds (gathered paths) is the one its own generate returns."""
    small, large = make_pair("llama")
    ids = _prompts(1)[0]
    kw = dict(max_new_tokens=20, do_sample=False, return_dict_in_generate=True)
    out = bild.BiLDGenerator(small, large, draft_tree=3, fallback_threshold=0, max_small_steps=4).generate(ids, **kw)
    want = large.generate(ids, **kw)
    assert torch.equal(out.sequences, want.sequences)
    field = "cache" if "cache" in type(out).__dataclass_fields__ else "past_key_values"
    for got, ref in zip(getattr(out, field).layers, getattr(want, field).layers):
        torch.testing.assert_close(got.keys, ref.keys, atol=1e-5, rtol=1e-4)


# -- what trees cannot serve -----------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [1, 0, True, 2.0, "tree"])
def test_bad_draft_tree_values(bad):
    small, large = make_pair("llama")
    with pytest.raises(ValueError, match="draft_tree"):
        bild.BiLDGenerator(small, large, draft_tree=bad)


@pytest.mark.parametrize(
    "kw",
    [
        dict(num_drafts=2),
        dict(verification="rollback"),
        dict(verification="block"),
        dict(rollback_threshold=2.0),
        dict(uno_epsilon=0.1),
    ],
)
def test_tree_refuses_options_it_cannot_serve(kw):
    small, large = make_pair("llama")
    with pytest.raises(ValueError, match="draft_tree"):
        bild.BiLDGenerator(small, large, draft_tree=3, **kw)


def test_tree_refuses_families_without_tree_masks():
    small, large = make_pair("t5")
    with pytest.raises(ValueError, match="draft_tree.*encoder-decoder"):
        bild.BiLDGenerator(small, large, draft_tree=2)
    if available("mistral"):
        small, large = make_zoo_pair("mistral")  # sliding-window layers
        with pytest.raises(ValueError, match="draft_tree.*window"):
            bild.BiLDGenerator(small, large, draft_tree=2)
    if available("falcon_alibi"):
        small, large = make_zoo_pair("falcon_alibi")  # ALiBi: the probe finds the tree forward wrong
        with pytest.raises(ValueError, match="draft_tree.*tree_mask_is_exact"):
            bild.BiLDGenerator(small, large, draft_tree=2)


def test_tree_refuses_prompt_lookup_and_no_small_model():
    small, large = make_pair("llama")
    ids = _prompts(1)[0]
    with pytest.raises(ValueError, match="draft_tree.*prompt"):
        bild.BiLDGenerator(small, large, draft_tree=2).generate(ids, max_new_tokens=5, prompt_lookup_num_tokens=3)
    with pytest.raises(ValueError, match="draft_tree"):
        bild.BiLDGenerator(None, large, draft_tree=2)
    with pytest.raises(ValueError, match="draft_tree"):
        large.generate(
            ids,
            max_new_tokens=5,
            custom_generate=bild.generate,
            small_model=small,
            draft_tree=2,
            num_drafts=2,
            do_sample=True,
        )


def test_batch_falls_back_to_chains_with_a_warning(one_thread):
    small, large = make_pair("llama")
    ids, mask = make_inputs("llama", 3, seed=4)
    gen = bild.BiLDGenerator(small, large, draft_tree=3)
    with pytest.warns(UserWarning, match="draft_tree.*batch 1"):
        got = gen.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False)
    assert torch.equal(got, large.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False))


@pytest.mark.parametrize("do_sample", [False, True])
def test_tree_host_reads(do_sample):
    """The host-read budget of tests/test_host_reads.py: one read per draft depth, one per round."""
    from test_host_reads import count_reads

    small, large = make_pair("llama")
    ids = _prompts(1)[0]
    gen = bild.BiLDGenerator(small, large, draft_tree=3, fallback_threshold=0.3, max_small_steps=4)
    kw = dict(max_new_tokens=24, do_sample=do_sample, top_k=0)
    gen.generate(ids, **kw)  # warm: probes run once per model
    with count_reads([small, large]) as state:
        gen.generate(ids, **kw)
    s = gen.stats
    assert s.rounds > 3
    assert state["reads"] <= s.small_forwards + s.rounds + 3, (state["reads"], s.small_forwards, s.rounds)


def test_auto_chooses_widths_exactly_and_falls_back_to_chains(one_thread):
    """draft_tree="auto": chain or tree per round from the measured tokens per cost; output exact either way;
    chains where trees cannot be served (an encoder-decoder, num_drafts), with no error."""
    from bild.tree import WidthChooser

    small, large = make_pair("llama")
    for ids in _prompts(4):
        want = large.generate(ids, max_new_tokens=30, do_sample=False)
        assert torch.equal(
            bild.BiLDGenerator(small, large, draft_tree="auto").generate(ids, max_new_tokens=30, do_sample=False), want
        )
    chooser = WidthChooser._shared[large][(id(small), False)]
    assert all(n >= WidthChooser.EXPLORE for n in chooser.rounds.values())  # both widths ran
    assert bild.BiLDGenerator(small, large, draft_tree="auto", num_drafts=2).options.draft_tree is None
    s5, l5 = make_pair("t5")
    ids = _prompts(1)[0]
    got = bild.BiLDGenerator(s5, l5, draft_tree="auto").generate(ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(got, l5.generate(ids, max_new_tokens=12, do_sample=False))
