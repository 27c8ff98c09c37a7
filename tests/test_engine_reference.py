"""The engine's tokens equal a slow cache-free reference of the same algorithm, and the large model's."""

import pytest
import torch
from models import ENCODER_DECODER, FAMILIES, make_inputs, make_pair
from reference import reference_generate

import bild

SETTINGS = [  # (fallback, rollback, max_small_steps, verification)
    (0.5, 2.0, 4, "rollback"),
    (0.8, 0.7, 6, "rollback"),
    (0.3, float("inf"), 3, "rollback"),
    (0.0, 0.0, 5, "exact"),
]
N_NEW = 14


def new_tokens(out: torch.Tensor, prompt_len: int, row: int, n: int) -> list[int]:
    return out[row, prompt_len : prompt_len + n].tolist()


def row_prompt(ids, mask, r):
    return ids[r][mask[r].bool()].tolist()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch", [1, 3])
def test_engine_matches_cache_free_reference(family, batch):
    small, large = make_pair(family)
    ids, mask = make_inputs(family, batch, seed=batch)
    is_ed = family in ENCODER_DECODER
    totals = dict(fallbacks=0, rollbacks=0, accepted=0)
    for fb, rb, steps, verification in SETTINGS:
        gen = bild.BiLDGenerator(
            small, large, fallback_threshold=fb, rollback_threshold=rb, max_small_steps=steps, verification=verification
        )
        out = gen.generate(ids, attention_mask=mask, max_new_tokens=N_NEW, do_sample=False)
        P = 1 if is_ed else ids.shape[1]
        for r in range(batch):
            p = row_prompt(ids, mask, r)
            ref = reference_generate(
                small, large, [] if is_ed else p, N_NEW, fb, rb, steps, verification, encoder_ids=p if is_ed else None
            )
            assert new_tokens(out, P, r, len(ref)) == ref, (fb, rb, steps, verification, r)
            assert (out[r, P + len(ref) :] == large.generation_config.pad_token_id).all()
        for k in totals:
            totals[k] += getattr(gen.stats, k)
    # the settings exercise every branch of the loop on this pair
    assert totals["accepted"] > 0 and totals["rollbacks"] > 0, totals
    if family not in ("t5", "marian"):
        assert totals["fallbacks"] > 0, totals


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch", [1, 3])
def test_large_only_and_exact_equal_large_generate(family, batch):
    small, large = make_pair(family)
    ids, mask = make_inputs(family, batch, seed=10 + batch)
    ref = large.generate(ids, attention_mask=mask, max_new_tokens=N_NEW, do_sample=False)
    # fallback threshold 1: the large model writes every token
    gen = bild.BiLDGenerator(small, large, fallback_threshold=1.0)
    assert torch.equal(gen.generate(ids, attention_mask=mask, max_new_tokens=N_NEW), ref)
    assert gen.stats.small_forwards == 0 and gen.stats.drafted == 0
    if batch == 1:
        assert gen.stats.large_forwards == gen.stats.new_tokens  # one large step per token
    # exact verification: identical to the large model, with fixed and dynamic drafts, and UNO eps=0
    for kwargs in (
        dict(fallback_threshold=0.0, max_small_steps=4),
        dict(fallback_threshold=0.4),
        dict(fallback_threshold=0.0, max_small_steps=2, draft_schedule="heuristic"),
        dict(fallback_threshold=0.0, max_small_steps=3, uno_epsilon=0.0),
    ):
        gen = bild.BiLDGenerator(small, large, verification="exact", **kwargs)
        out = gen.generate(ids, attention_mask=mask, max_new_tokens=N_NEW)
        assert torch.equal(out, ref), kwargs
        assert gen.stats.drafted > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_rows_equal_single_rows(family):
    small, large = make_pair(family)
    ids, mask = make_inputs(family, 3, seed=5)
    gen = bild.BiLDGenerator(small, large, fallback_threshold=0.5, rollback_threshold=1.5, max_small_steps=5)
    batched = gen.generate(ids, attention_mask=mask, max_new_tokens=N_NEW)
    is_ed = family in ENCODER_DECODER
    for r in range(3):
        keep = mask[r].bool() if not is_ed else torch.ones_like(mask[r]).bool()
        row_ids = ids[r][keep][None]
        row_mask = mask[r][keep][None]
        single = gen.generate(row_ids, attention_mask=row_mask, max_new_tokens=N_NEW)
        P_b, P_s = (1, 1) if is_ed else (ids.shape[1], row_ids.shape[1])
        n = single.shape[1] - P_s
        assert batched[r, P_b : P_b + n].tolist() == single[0, P_s:].tolist()
