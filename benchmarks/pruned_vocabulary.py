"""What a pruned draft head (FR-Spec, bild.prune_draft_vocabulary) saves and costs on the SmolLM2 pair.

    BILD_CACHE=/work/pair-cache python benchmarks/pruned_vocabulary.py [--reps 40] [--context 400]

1. Time: one cached decoding step (1 new token, `logits_to_keep=1`) at a --context-token context, for the large
   model, the full draft and drafts whose head keeps the 8k / 16k / 32k most frequent tokens (counted in the
   chat prompts and targets of the first --per_file dev rows of each shared data set; special tokens always
   kept). A pruned step includes the engine's scatter back to 49,152 logits (`widen_logits`). Steps are
   interleaved (one of each model per repetition), on 1 torch thread; medians. The engine's softmax over the
   full width, which pruning does not save, is timed on its own.
2. Agreement: `greedy_agreement` of each draft along the large model's greedy outputs on held-out prompts (the
   last --heldout dev rows of each data set: neither the shipped draft's training rows nor the counted ones;
   never test.jsonl), and the share of those output tokens inside each head ("coverage").
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from transformers import DynamicCache

import bild
from bild.adapters import capabilities
from bild.pairs.alignment import frequent_token_ids, generate_teacher_outputs, greedy_agreement, token_frequencies
from bild.pairs.recipe import frequency_texts
from bild.pairs.smollm2 import DATASET_TASKS, chat_prompt, format_instruction, load_pair, read_jsonl, shared_data_dir
from bild.vocabulary import draft_vocabulary, widen_logits


def heldout_prompts(tok, data_dir: Path, n: int) -> list[str]:
    """Chat prompts of the last `n` dev rows of each data set."""
    out = []
    for name, task in DATASET_TASKS.items():
        f = data_dir / name / "dev.jsonl"
        if f.exists():
            out += [chat_prompt(tok, format_instruction(r["source"], task, 600)) for r in read_jsonl(f)[-n:]]
    return out


def context_ids(tok, data_dir: Path, length: int) -> torch.Tensor:
    """[1, length] tokens: held-out xsum documents in the chat template, cut to `length`."""
    text = " ".join(r["source"] for r in read_jsonl(data_dir / "xsum" / "dev.jsonl")[-3:])
    ids = tok(chat_prompt(tok, format_instruction(text, "summarization")), add_special_tokens=False)["input_ids"]
    if len(ids) < length:
        raise SystemExit(f"the context has only {len(ids)} tokens")
    return torch.tensor([ids[:length]])


@torch.no_grad()
def step_times(models: dict, ctx: torch.Tensor, reps: int) -> dict[str, float]:
    """Median ms of one cached 1-token step per model, interleaved."""
    caches, arg = {}, {}
    for name, m in models.items():
        caches[name], arg[name] = DynamicCache(config=m.config), capabilities(m).cache_arg
        m(input_ids=ctx, use_cache=True, logits_to_keep=1, **{arg[name]: caches[name]})
    tok = ctx[:, -1:]
    times = {name: [] for name in models}
    for rep in range(reps + 3):
        for name, m in models.items():
            known = draft_vocabulary(m)
            index = None if known is None else torch.tensor(known[0])
            t0 = time.perf_counter()
            logits = m(input_ids=tok, use_cache=True, logits_to_keep=1, **{arg[name]: caches[name]}).logits.float()
            if index is not None:
                logits = widen_logits(logits, index, known[1])
            dt = time.perf_counter() - t0
            caches[name].crop(-1)
            if rep >= 3:  # warm-up
                times[name].append(dt * 1e3)
    return {name: statistics.median(v) for name, v in times.items()}


def softmax_ms(width: int, reps: int) -> float:
    x = torch.randn(1, width)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        x.softmax(-1).argmax(-1)
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="8192,16384,32768")
    p.add_argument("--context", type=int, default=400)
    p.add_argument("--reps", type=int, default=40)
    p.add_argument("--per_file", type=int, default=150, help="dev rows per data set counted for frequencies")
    p.add_argument("--heldout", type=int, default=4, help="last dev rows per data set for the agreement")
    p.add_argument("--max_new_tokens", type=int, default=48)
    a = p.parse_args()
    torch.set_num_threads(1)
    t_start = time.time()
    data = shared_data_dir()
    if data is None:
        raise SystemExit("no shared data folder (../shared/data or $BILD_DATA)")
    pair = load_pair()
    tok, small, large = pair.tokenizer, pair.small, pair.large
    counts = token_frequencies(frequency_texts(tok, data, a.per_file), tok)
    drafts = {"full": small}
    for size in (int(s) for s in a.sizes.split(",")):
        ids = frequent_token_ids(counts, size, tokenizer=tok, model=small)
        drafts[f"{size // 1024}k"] = bild.prune_draft_vocabulary(copy.deepcopy(small), ids)
    print(f"counted {sum(counts.values())} tokens ({len(counts)} distinct) in {a.per_file} dev rows per data set")

    ctx = context_ids(tok, data, a.context)
    ms = step_times({"large": large, **drafts}, ctx, a.reps)
    sm = softmax_ms(int(large.config.vocab_size), 200)

    recs = generate_teacher_outputs(
        large,
        tok,
        heldout_prompts(tok, data, a.heldout),
        max_new_tokens=a.max_new_tokens,
        batch_size=4,
        topk=0,
        add_special_tokens=False,
        progress=False,
    )
    outputs = [t for r in recs for t in r.output_ids]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    print(
        f"\ncontext {ctx.shape[1]} tokens, {a.reps} interleaved reps, 1 thread; large step {ms['large']:.2f} ms; "
        f"softmax + argmax over {large.config.vocab_size} logits {sm:.3f} ms (paid by every draft step)"
    )
    print(f"agreement on {len(recs)} held-out prompts, {len(outputs)} large-model greedy tokens\n")
    print("| draft head | tokens | step ms | / large step | vs full head | coverage | greedy agreement |")
    print("|---|---|---|---|---|---|---|")
    for name, m in drafts.items():
        known = draft_vocabulary(m)
        inside = set(known[0]) if known else None
        cover = 1.0 if inside is None else sum(t in inside for t in outputs) / len(outputs)
        agree = greedy_agreement(m, recs, pad_token_id=pad)
        n = len(inside) if inside else int(large.config.vocab_size)
        print(
            f"| {name} | {n} | {ms[name]:.2f} | {ms[name] / ms['large']:.3f} | {ms[name] / ms['full']:.2f}x "
            f"| {cover:.3f} | {agree:.3f} |"
        )
    print(f"\n({time.time() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
