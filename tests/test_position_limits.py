"""Absolute-position families at the edge of their position table, batched (issue found on GPT-2 with 256
positions: finished rows fed filler at positions that advanced every round, past what the row reaches).

Left-padded prompts of 1..20 tokens, no eos, the longest row needing exactly the table: prompt + new tokens
= n_positions. Every row must equal the row decoded alone by `large.generate`, and no forward may receive a
position at or beyond a row's own last position."""

import pytest
import torch
from transformers import BioGptConfig, BioGptForCausalLM, GPT2Config, GPT2LMHeadModel, OPTConfig, OPTForCausalLM

import bild

LONGEST, NEW = 20, 44
LIMIT = LONGEST + NEW  # positions the longest row uses: 0 .. LIMIT - 1


def _pair(family: str):
    special = dict(pad_token_id=0, bos_token_id=1, eos_token_id=None, vocab_size=64)
    if family == "gpt2":

        def make(n):
            return GPT2LMHeadModel(
                GPT2Config(
                    n_embd=32,
                    n_layer=n,
                    n_head=4,
                    n_positions=LIMIT,  # noqa: E731
                    initializer_range=0.3,
                    **special,
                )
            )
    elif family == "opt":

        def make(n):
            return OPTForCausalLM(
                OPTConfig(
                    hidden_size=32,
                    ffn_dim=64,
                    num_hidden_layers=n,  # noqa: E731
                    num_attention_heads=4,
                    word_embed_proj_dim=32,
                    max_position_embeddings=LIMIT,
                    init_std=0.3,
                    **special,
                )
            )
    else:

        def make(n):
            return BioGptForCausalLM(
                BioGptConfig(
                    hidden_size=32,
                    intermediate_size=64,  # noqa: E731
                    num_hidden_layers=n,
                    num_attention_heads=4,
                    max_position_embeddings=LIMIT,
                    initializer_range=0.3,
                    **special,
                )
            )

    torch.manual_seed(0)
    large = make(3).eval()
    small = make(1).eval()
    small.load_state_dict(large.state_dict(), strict=False)
    return small, large


def _batch(lengths):
    g = torch.Generator().manual_seed(1)
    P = max(lengths)
    ids = torch.zeros(len(lengths), P, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, n in enumerate(lengths):
        ids[r, P - n :] = torch.randint(3, 64, (n,), generator=g)
        mask[r, P - n :] = 1
    return ids, mask


@pytest.mark.parametrize("family", ["gpt2", "opt", "biogpt"])
@pytest.mark.parametrize("verification", ["exact", "rollback"])
def test_padded_batch_at_the_position_limit(family, verification):
    small, large = _pair(family)
    lengths = [1, 20, 7, 13, 3, 20]
    ids, mask = _batch(lengths)
    seen = []  # (batch row count, max position fed) per forward of either model
    for m in (small, large):
        m.register_forward_pre_hook(lambda mod, a, kw: seen.append(kw.get("position_ids")), with_kwargs=True)
    gen = bild.BiLDGenerator(
        small, large, verification=verification, fallback_threshold=0.0, max_small_steps=4, rollback_threshold=2.0
    )
    out = gen.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False)
    for r, n in enumerate(lengths):
        alone = bild.BiLDGenerator(
            small, large, verification=verification, fallback_threshold=0.0, max_small_steps=4, rollback_threshold=2.0
        ).generate(ids[r : r + 1, -n:], max_new_tokens=NEW, do_sample=False)
        assert torch.equal(out[r, -NEW:], alone[0, -NEW:]), f"row {r}"
        if verification == "exact":
            ref = large.generate(ids[r : r + 1, -n:], max_new_tokens=NEW, do_sample=False)
            assert torch.equal(alone, ref), f"row {r}"
    fed = [p for p in seen if p is not None and p.shape[0] == len(lengths)]
    assert fed, "the batch must go through the models with per-row positions"
    for p in fed:  # no row is ever fed a position beyond the last one it can reach
        top = p.max(dim=1).values
        for r, n in enumerate(lengths):
            assert int(top[r]) < n + NEW, f"row {r} fed position {int(top[r])} (its last is {n + NEW - 1})"
