"""Training a feature draft (EAGLE, Li et al., ICML 2024; `bild.feature_draft.FeatureDraft`) on the large model's
features along sequences it wrote.

    data = feature_records(large, sequences, prompt_lens)     # one large forward per sequence: h_t and argmax
    draft = FeatureDraft.from_large(large); bild.prune_draft_vocabulary(draft, ids)
    train_feature_draft(draft, large, train, held, minutes=25)
    feature_agreement(draft, test)                            # (first draft, second draft) agreement

At position t the draft reads (x_t, h_{t-1}) and is trained, EAGLE's way, to give the large model's feature
h_t (smooth L1) and its next-token distribution (KL over the head's tokens, plus cross entropy on the large
model's argmax). `feature_agreement` measures, along the large model's outputs, how often the draft's argmax is
the large model's with the large model's features (the first draft of a round) and with its own previous
prediction in place of h_{t-1} (the second).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .alignment import _draft_token_ids, _length_batches


@dataclass
class FeatureRecord:
    """One sequence (prompt + the large model's output) with the large model's features along it.

    tokens [T] int; feats [T, d] (fp16: h_t, the last hidden state after the final norm); argmax [T] (the large
    model's next token after t); prompt_len: tokens of the prompt (agreement counts the output only)."""

    tokens: torch.Tensor
    feats: torch.Tensor
    argmax: torch.Tensor
    prompt_len: int


@torch.no_grad()
def feature_records(
    large,
    sequences: Sequence[Sequence[int]],
    prompt_lens: Sequence[int],
    *,
    batch_size: int = 8,
    pad_token_id: int = 0,
    progress: bool = True,
) -> list[FeatureRecord]:
    """The large model's features and argmax along each sequence (right-padded batches, length-sorted)."""
    out: list[FeatureRecord | None] = [None] * len(sequences)
    head = large.get_output_embeddings()
    for idx in _length_batches([len(s) for s in sequences], batch_size, progress, "features"):
        L = max(len(sequences[i]) for i in idx)
        ids = torch.full((len(idx), L), pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(idx), L, dtype=torch.long)
        for j, i in enumerate(idx):
            ids[j, : len(sequences[i])] = torch.as_tensor(sequences[i])
            mask[j, : len(sequences[i])] = 1
        h = large.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        top = head(h).argmax(-1)
        for j, i in enumerate(idx):
            n = len(sequences[i])
            out[i] = FeatureRecord(ids[j, :n].clone(), h[j, :n].half().clone(), top[j, :n].clone(), int(prompt_lens[i]))
    return out


def teacher_feature_records(large, records, **kwargs) -> list[FeatureRecord]:
    """:func:`feature_records` along gen-data :class:`~bild.pairs.alignment.TeacherRecord` objects (prompt +
    the large model's output)."""
    return feature_records(
        large, [r.prompt_ids + r.output_ids for r in records], [len(r.prompt_ids) for r in records], **kwargs
    )


def save_feature_records(records: Sequence[FeatureRecord], path) -> None:
    torch.save([r.__dict__ for r in records], path)


def load_feature_records(path) -> list[FeatureRecord]:
    return [FeatureRecord(**d) for d in torch.load(path, weights_only=True)]


def feature_batch(records: Sequence[FeatureRecord]):
    """Right-padded batch: tokens [B, L], h [B, L, d] (float), prev [B, L, d] (h shifted right by one, zeros
    first), argmax [B, L] (-1 on padding), mask [B, L], output [B, L] (positions whose next token is output)."""
    B, L, d = len(records), max(len(r.tokens) for r in records), records[0].feats.shape[1]
    tok = torch.zeros(B, L, dtype=torch.long)
    h = torch.zeros(B, L, d)
    tgt = torch.full((B, L), -1, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.long)
    output = torch.zeros(B, L, dtype=torch.bool)
    for j, r in enumerate(records):
        n = len(r.tokens)
        tok[j, :n], h[j, :n], tgt[j, :n], mask[j, :n] = r.tokens, r.feats.float(), r.argmax, 1
        output[j, r.prompt_len - 1 : n - 1] = True
    return tok, h, shifted(h), tgt, mask, output


def shifted(h: torch.Tensor) -> torch.Tensor:
    """[B, L, d] -> the same one position later, zeros first: what position t reads as h_{t-1}."""
    return torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], 1)


@torch.no_grad()
def feature_agreement(draft, records: Sequence[FeatureRecord], batch_size: int = 8) -> tuple[float, float]:
    """(first, second): over output positions, the fraction where the draft's argmax is the large model's, reading
    the large model's h_{t-1} (first draft of a round) or its own prediction of h_{t-1} (second draft)."""
    was = draft.training
    draft.eval()
    ids = _draft_token_ids(draft, "cpu")
    hits1 = hits2 = n = 0
    for s in range(0, len(records), batch_size):
        tok, _, prev, tgt, mask, output = feature_batch(records[s : s + batch_size])
        o = draft(input_ids=tok, attention_mask=mask, features=prev, use_cache=False)
        o2 = draft(input_ids=tok, attention_mask=mask, features=shifted(o.hidden_states[0]), use_cache=False)
        p1, p2 = o.logits.argmax(-1), o2.logits.argmax(-1)
        if ids is not None:
            p1, p2 = ids[p1], ids[p2]
        hits1 += int(((p1 == tgt) & output).sum())
        hits2 += int(((p2 == tgt) & output).sum())
        n += int(output.sum())
    draft.train(was)
    return hits1 / max(n, 1), hits2 / max(n, 1)


def feature_loss(
    draft, teacher_rows: torch.Tensor, batch, noise: float = 0.0, reg_weight: float = 1.0, unroll: int = 1
) -> dict[str, torch.Tensor]:
    """EAGLE's loss on one `feature_batch`: smooth L1 to h_t, KL to the large model's distribution over the
    draft head's tokens (`teacher_rows` [V_head, d]: the large model's head rows), cross entropy on its argmax.
    `unroll` = k > 1 adds the same token losses for drafts 2..k of a round: pass i reads the draft's own
    features of pass i - 1 in place of h_{t-1} (as `feature_agreement`'s second draft does; EAGLE-3's
    training-time test, along the sequence)."""
    tok, h, prev, tgt, mask, _ = batch
    if noise:
        prev = prev + noise * torch.randn_like(prev)
    m = mask.bool()
    t_lp = (h @ teacher_rows.T).log_softmax(-1)
    ids = _draft_token_ids(draft, "cpu")
    if ids is None:
        target, ok = tgt.clamp(min=0), m & (tgt >= 0)
    else:
        where = torch.full((int(ids.max()) + 2,), -1, dtype=torch.long)
        where[ids] = torch.arange(len(ids))
        target = where[tgt.clamp(min=0, max=len(where) - 1)]
        ok = m & (tgt >= 0) & (target >= 0)
    parts = {"ce": 0.0, "kl": 0.0}
    for i in range(unroll):
        o = draft(input_ids=tok, attention_mask=mask, features=prev, use_cache=False)
        d_lp = o.logits.float().log_softmax(-1)
        parts["kl"] = parts["kl"] + (t_lp.exp() * (t_lp - d_lp)).sum(-1)[m].mean() / unroll
        ce = F.cross_entropy(d_lp[ok], target[ok]) if ok.any() else d_lp.sum() * 0
        parts["ce"] = parts["ce"] + ce / unroll
        if i == 0:
            parts["reg"] = F.smooth_l1_loss(o.hidden_states[0][m], h[m])
        prev = shifted(o.hidden_states[0])
    parts["loss"] = parts["ce"] + parts["kl"] + reg_weight * parts["reg"]
    return parts


def train_feature_draft(
    draft,
    large,
    train: Sequence[FeatureRecord],
    held: Sequence[FeatureRecord] = (),
    *,
    minutes: float | None = None,
    max_steps: int | None = None,
    lr: float = 1e-3,
    batch_size: int = 8,
    noise: float = 0.0,
    reg_weight: float = 1.0,
    unroll: int = 1,
    eval_every: int = 150,
    seed: int = 0,
    log: Callable[[str], None] = print,
    checkpoint: Callable[[dict], None] | None = None,
) -> dict:
    """AdamW with warm-up and cosine decay over `minutes` (wall clock) or `max_steps`, the input embeddings
    frozen. Every `eval_every` steps the held-out first-draft agreement is measured and the best weights kept
    (loaded back at the end; `checkpoint(state_dict)` is called with them). Returns a summary."""
    if minutes is None and max_steps is None:
        raise ValueError("give `minutes` or `max_steps`")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    ids = _draft_token_ids(draft, "cpu")
    full = large.get_output_embeddings().weight.detach()
    teacher_rows = full if ids is None else full[ids]
    draft.model.embed_tokens.weight.requires_grad_(False)
    params = [p for p in draft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    order = sorted(range(len(train)), key=lambda i: len(train[i].tokens))
    batches = [[train[i] for i in order[s : s + batch_size]] for s in range(0, len(order), batch_size)]
    t0, step, best, best_state = time.time(), 0, -1.0, None

    def progress() -> float:
        t = (time.time() - t0) / (60 * minutes) if minutes is not None else 0.0
        return max(t, step / max_steps if max_steps else 0.0)

    def evaluate():
        nonlocal best, best_state
        if not held:
            return
        a = feature_agreement(draft, held)
        log(f"step {step}: held-out agreement first {a[0]:.3f} second {a[1]:.3f}")
        if a[0] > best:
            best = a[0]
            best_state = {k: v.detach().clone() for k, v in draft.state_dict().items() if "embed_tokens" not in k}
            if checkpoint is not None:
                checkpoint(best_state)

    draft.train()
    while progress() < 1.0:
        rng.shuffle(batches)
        for b in batches:
            frac = progress()
            if frac >= 1.0:
                break
            for g in opt.param_groups:
                g["lr"] = lr * min(1.0, (step + 1) / 30) * 0.5 * (1 + math.cos(math.pi * frac))
            parts = feature_loss(draft, teacher_rows, feature_batch(b), noise, reg_weight, unroll)
            opt.zero_grad()
            parts["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            if step % 25 == 0:
                log(f"step {step} {time.time() - t0:.0f}s " + " ".join(f"{k} {v.item():.3f}" for k, v in parts.items()))
            if step % eval_every == 0:
                evaluate()
    evaluate()
    if best_state is not None:
        draft.load_state_dict(best_state, strict=False)
    draft.eval()
    return {"steps": step, "seconds": round(time.time() - t0, 1), "held_best": best}
