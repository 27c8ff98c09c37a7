"""A slow, cache-free reference of the BiLD / speculative loop (greedy), for one unpadded row.

Every probability comes from a full forward pass over the whole sequence: no KV cache, no masks,
no batching. It follows the algorithm as written in the issue, independently of src/bild.
"""

from __future__ import annotations

import math

import torch


def _next_probs(model, prefix: list[int], encoder_ids: list[int] | None) -> torch.Tensor:
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            start = model.generation_config.decoder_start_token_id
            out = model(input_ids=torch.tensor([encoder_ids]), decoder_input_ids=torch.tensor([[start] + prefix]))
        else:
            out = model(input_ids=torch.tensor([prefix]))
    return out.logits[0, -1].float().softmax(-1)


def _ce(p: float) -> float:
    return -math.log(p) if p > 0 else math.inf


def reference_generate(
    small,
    large,
    prompt: list[int],
    max_new_tokens: int,
    fallback_threshold: float,
    rollback_threshold: float,
    max_small_steps: int,
    verification: str = "rollback",
    eos: int = 2,
    encoder_ids: list[int] | None = None,
    counts: dict | None = None,
) -> list[int]:
    """Returns the new tokens of one row (greedy). `counts` (a dict) receives the statistics as docs/guide.md
    defines them: drafted, judged (up to and including the first rejection), accepted, rollbacks (rounds
    ending in a rejection), fallbacks; only what was committed counts."""
    c = counts if counts is not None else {}
    for key in ("drafted", "judged", "accepted", "rollbacks", "fallbacks"):
        c.setdefault(key, 0)
    base = [] if encoder_ids is not None else list(prompt)
    probs = lambda m, new: _next_probs(m, base + new, encoder_ids)  # noqa: E731
    out = [int(probs(large, []).argmax())]
    while len(out) < max_new_tokens and out[-1] != eos:
        drafts = []
        budget = min(max_small_steps, max_new_tokens - len(out) - 1)
        while fallback_threshold < 1 and len(drafts) < budget:
            q = probs(small, out + drafts)
            if q.max() < fallback_threshold:
                c["fallbacks"] += 1
                break  # fallback: the low-confidence token is dropped
            drafts.append(int(q.argmax()))
            if drafts[-1] == eos:
                break
        kept = []
        for tok in drafts:
            p = probs(large, out + kept)
            if verification == "rollback":  # BiLD's rule; a draft equal to the large argmax is always kept
                ok = _ce(float(p[tok])) <= rollback_threshold or tok == int(p.argmax())
            else:
                ok = tok == int(p.argmax())
            if not ok:
                break
            kept.append(tok)
        n_acc = len(kept)
        kept.append(int(probs(large, out + kept).argmax()))  # the large model's correction, or one more token
        committed = 0
        for tok in kept:
            out.append(tok)
            committed += 1
            if tok == eos or len(out) == max_new_tokens:
                break
        if drafts:
            judged = min(n_acc + 1, len(drafts), committed)
            c["drafted"] += len(drafts)
            c["judged"] += judged
            c["accepted"] += min(n_acc, judged)
            c["rollbacks"] += int(n_acc < len(drafts) and n_acc < committed)
    return out
