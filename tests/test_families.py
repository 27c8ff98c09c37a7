"""Every model family in the zoo (tests/zoo.py: tiny random configs of transformers' generate()-capable LMs)
is decoded correctly or refused with a ValueError before any work: nothing silently wrong.

Per family, greedy, 16 new tokens: exact speculative decoding equals `large.generate` at batch 1 and on a
left-padded batch of prompts of 9, 7 and 5 tokens (past the zoo's 4-token sliding windows); the large
model alone through the engine (fallback 1) and the library at default arguments (as users call it) equal
`large.generate` on the batch (row-by-row families: the padded batch, each row decoded with its padding as
transformers decodes it; batched layouts: each row as it is alone); in BiLD's rollback mode, with fixed
thresholds and at "auto" (the per-row policy), each row of the batch equals the row decoded alone (row-by-row
families: the row with its padding).
"""

import pytest
import torch
import transformers
from zoo import ZOO, ZOO_INFO, available, make_zoo_pair

import bild

N_NEW = 16
# zoo entries the engine refuses, and what its ValueError must say; any other refusal fails the test
NO_CACHE, NOT_CONTINUED = "has no KV cache", "does not continue from its KV cache"
NOT_ROLLED_BACK = "does not give the logits of an uncached forward"
NO_RELEASE = "no transformers release bild was tested with"  # a recurrent state no release rolls back
REFUSED = {
    "openai-gpt": NO_CACHE,
    "xlm": f"{NO_CACHE}|{NOT_CONTINUED}",
    # memories / own states, not filled through a cache (5.17's RecurrentGemma cache shows no recurrent layer)
    **{n: NO_CACHE for n in ("xlnet", "rwkv", "reformer", "recurrent_gemma")},
    # a recurrent state the engine cannot roll back on any release it knows: refused with the reason and saying so
    **{
        n: f"({NO_CACHE}|{NOT_CONTINUED}|{NOT_ROLLED_BACK}).*{NO_RELEASE}"
        for n in ("mamba", "falcon_mamba", "bamba", "jamba", "zamba", "zaya", "deepseek_v4", "minimax")
    },
    "prophetnet": "one cached token",
    "prophetnet_causal": "one cached token",
    "fsmt": "builds the causal mask only without a cache",
    "fsmt_default_beams": "builds the causal mask only without a cache",
    "cpmant": "multi-token verify",
    "moshi": "full causal mask over sliding-window cache layers",
}


# families whose behaviour differs between the ends of the supported transformers range: refused (by the
# capability probes, with this reason) on releases before the one named, exact from it on. Measured on every
# release in the range (0.9: 5.17.0, 5.18.0, 5.19.0, 5.20.2, 5.21.1, 5.22.2, 5.23.0, 5.24.0): refused on 5.17,
# exact from 5.18 on.
CHANGED_IN = {
    **{
        n: (NOT_CONTINUED, (5, 18)) for n in ("big_bird", "doge", "git", "megatron-bert", "rembert", "roformer", "umt5")
    },
    "inkling_text": ("cannot roll sliding-window layers back", (5, 18)),
    # linear-attention / state-space hybrids and Mamba2: 5.25 records recurrent states for `crop`
    # (`recurrent_states_to_keep`); before it every probe that fails must name that release
    **{
        n: (r"transformers 5\.25\.0 or later rolls its recurrent state back", (5, 25))
        for n in bild.families.RECURRENT_EXACT_FROM
    },
}
RELEASE = tuple(int(x) for x in transformers.__version__.split(".")[:2])
for _name, (_why, _fixed) in CHANGED_IN.items():
    if RELEASE < _fixed:
        REFUSED[_name] = _why


def test_recurrent_table_matches_the_zoo():
    """Every family bild's own table says is exact from 5.25 is a zoo entry the test below runs (so the table is
    checked on both ends of the range), and no zoo family refused everywhere is in it."""
    assert set(bild.families.RECURRENT_EXACT_FROM) <= set(ZOO)
    assert not set(bild.families.RECURRENT_EXACT_FROM) & {n for n, why in REFUSED.items() if NO_RELEASE in why}


def padded_batch(kind: str):
    g = torch.Generator().manual_seed(3)
    lengths, L = (9, 7, 5), 9
    ids = torch.zeros(3, L, dtype=torch.long)
    mask = torch.zeros(3, L, dtype=torch.long)
    for i, n in enumerate(lengths):
        toks = torch.randint(3, 96, (n,), generator=g)
        if kind == "encoder-decoder":  # right-padded encoder input ending in eos
            ids[i, :n], mask[i, :n] = toks, 1
            ids[i, n - 1] = 2
        else:
            ids[i, L - n :], mask[i, L - n :] = toks, 1
    return ids, mask


def row(ids, mask, r, kind):
    keep = mask[r].bool() if kind != "encoder-decoder" else torch.ones_like(mask[r]).bool()
    return ids[r][keep][None], mask[r][keep][None]


@pytest.mark.parametrize("name", sorted(ZOO))
def test_family_is_exact_or_refused(name):
    if not available(name):
        pytest.skip(f"{ZOO_INFO[name]['model_class']} is not in transformers {transformers.__version__}")
    small, large = make_zoo_pair(name)
    kind = ZOO_INFO[name]["kind"]
    ids, mask = padded_batch(kind)
    if name in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[name]):
            bild.BiLDGenerator(small, large)
        return
    kw = dict(max_new_tokens=N_NEW, do_sample=False)
    exact = bild.BiLDGenerator(small, large, verification="exact", fallback_threshold=0.0, max_small_steps=4)
    one, one_mask = row(ids, mask, 0, kind)
    assert torch.equal(
        exact.generate(one, attention_mask=one_mask, **kw), large.generate(one, attention_mask=one_mask, **kw)
    ), "batch 1"
    P = ids.shape[1] if kind != "encoder-decoder" else 1
    alone = []  # each row's new tokens from large.generate on the row alone: the reference
    for r in range(3):
        x, m = row(ids, mask, r, kind)
        out = large.generate(x, attention_mask=m, **kw)
        alone.append(out[0, (x.shape[1] if kind != "encoder-decoder" else 1) :].tolist())
    want = large.generate(ids, attention_mask=mask, **kw)
    # transformers' own padded batch can differ from the rows alone (e.g. Whisper's decoder, sliding windows
    # over the padding). Row-by-row families decode each row with its padding where transformers has it: the
    # padded batch is their reference. The batched layouts decode each row as it is alone: where the padded
    # batch differs from that, the rows alone are their reference
    by_rows = bild.adapters.batch_layout(large) == "rows"
    padding_sensitive = any(want[r, P : P + len(a)].tolist() != a for r, a in enumerate(alone))
    for label, gen in (
        ("exact", exact),
        ("large alone", bild.BiLDGenerator(small, large, fallback_threshold=1.0)),
        ("defaults", bild.BiLDGenerator(small, large)),
    ):
        # defaults: called as users do (no decoding arguments but the length): the large model's greedy output
        got = gen.generate(ids, attention_mask=mask, **(kw if label != "defaults" else dict(max_new_tokens=N_NEW)))
        if by_rows:
            assert torch.equal(got, want), f"padded batch, {label} vs large.generate"
            continue
        assert all(got[r, P : P + len(a)].tolist() == a for r, a in enumerate(alone)), f"padded batch, {label}"
        assert padding_sensitive or torch.equal(got, want), f"padded batch, {label} vs large.generate"
    for label, bild_gen in (
        (
            "rollback",
            bild.BiLDGenerator(small, large, fallback_threshold=0.5, rollback_threshold=2.0, max_small_steps=4),
        ),
        ("rollback at auto", bild.BiLDGenerator(small, large, rollback_threshold=2.0)),
    ):  # per-row policy
        batched = bild_gen.generate(ids, attention_mask=mask, **kw)
        for r in range(3):
            x, m = (ids[r : r + 1], mask[r : r + 1]) if by_rows else row(ids, mask, r, kind)
            single = bild_gen.generate(x, attention_mask=m, **kw)
            new = single[0, (x.shape[1] if kind != "encoder-decoder" else 1) :]
            assert batched[r, P : P + new.numel()].tolist() == new.tolist(), f"{label} row {r}"
