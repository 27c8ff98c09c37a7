"""Every model family in the zoo (tests/zoo.py: tiny random configs of transformers' generate()-capable LMs)
is decoded correctly or refused with a ValueError before any work: nothing silently wrong.

Per family, greedy, 16 new tokens: exact speculative decoding equals `large.generate` at batch 1 and on a
left-padded batch of prompts of 9, 7 and 5 tokens (past the zoo's 4-token sliding windows); the large
model alone through the engine (fallback 1) and the library at default arguments (as users call it) equal
`large.generate` on the batch; in BiLD's rollback mode, with fixed thresholds and at "auto" (the per-row
policy), each row of the batch equals the row decoded alone.
"""
import pytest
import torch
from zoo import ZOO, ZOO_INFO, make_zoo_pair

import bild

N_NEW = 16
# zoo entries the engine refuses, and what its ValueError must say; any other refusal fails the test
NO_CACHE, RECURRENT = "has no KV cache", "recurrent or custom cache that cannot be cropped"
REFUSED = {
    "openai-gpt": NO_CACHE, "xlnet": NO_CACHE, "xlm": NO_CACHE, "rwkv": NO_CACHE, "reformer": NO_CACHE,
    "mamba": NO_CACHE, "mamba2": NO_CACHE, "falcon_mamba": NO_CACHE,
    **{n: RECURRENT for n in ("bailing_hybrid", "bamba", "deepseek_v4", "falcon_h1", "granitemoehybrid", "jamba",
                              "kimi_linear", "minimax", "nemotron_h", "olmo_hybrid", "qwen3_5_moe_text",
                              "qwen3_5_text", "qwen3_next", "recurrent_gemma", "zamba", "zamba2", "zaya")},
    "prophetnet": "one cached token", "prophetnet_causal": "one cached token",
    "fsmt": "builds the causal mask only without a cache", "fsmt_default_beams": "builds the causal mask only without a cache",
    "cpmant": "multi-token verify", "moshi": "full causal mask over sliding-window cache layers",
}


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
            ids[i, L - n:], mask[i, L - n:] = toks, 1
    return ids, mask


def row(ids, mask, r, kind):
    keep = mask[r].bool() if kind != "encoder-decoder" else torch.ones_like(mask[r]).bool()
    return ids[r][keep][None], mask[r][keep][None]


@pytest.mark.parametrize("name", sorted(ZOO))
def test_family_is_exact_or_refused(name):
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
    assert torch.equal(exact.generate(one, attention_mask=one_mask, **kw),
                       large.generate(one, attention_mask=one_mask, **kw)), "batch 1"
    P = ids.shape[1] if kind != "encoder-decoder" else 1
    alone = []  # each row's new tokens from large.generate on the row alone: the reference
    for r in range(3):
        x, m = row(ids, mask, r, kind)
        out = large.generate(x, attention_mask=m, **kw)
        alone.append(out[0, (x.shape[1] if kind != "encoder-decoder" else 1):].tolist())
    want = large.generate(ids, attention_mask=mask, **kw)
    # transformers' own padded batch can differ from the rows alone (e.g. Whisper's decoder): then the rows
    # alone are the reference, and equality with the padded batch is not asked
    padding_sensitive = any(want[r, P : P + len(a)].tolist() != a for r, a in enumerate(alone))
    for label, gen in (("exact", exact), ("large alone", bild.BiLDGenerator(small, large, fallback_threshold=1.0)),
                       ("defaults", bild.BiLDGenerator(small, large))):
        # defaults: called as users do (no decoding arguments but the length): the large model's greedy output
        got = gen.generate(ids, attention_mask=mask, **(kw if label != "defaults" else dict(max_new_tokens=N_NEW)))
        assert all(got[r, P : P + len(a)].tolist() == a for r, a in enumerate(alone)), f"padded batch, {label}"
        assert padding_sensitive or torch.equal(got, want), f"padded batch, {label} vs large.generate"
    for label, bild_gen in (
            ("rollback", bild.BiLDGenerator(small, large, fallback_threshold=0.5, rollback_threshold=2.0,
                                            max_small_steps=4)),
            ("rollback at auto", bild.BiLDGenerator(small, large, rollback_threshold=2.0))):  # per-row policy
        batched = bild_gen.generate(ids, attention_mask=mask, **kw)
        for r in range(3):
            x, m = row(ids, mask, r, kind)
            single = bild_gen.generate(x, attention_mask=m, **kw)
            new = single[0, (x.shape[1] if kind != "encoder-decoder" else 1):]
            assert batched[r, P : P + new.numel()].tolist() == new.tolist(), f"{label} row {r}"
