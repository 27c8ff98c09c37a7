"""Prompt lookup on an encoder-decoder whose output copies from its input: exact, and how much faster.

    python benchmarks/lookup_encoder_decoder.py                      # trains once (cached), then measures
    python benchmarks/lookup_encoder_decoder.py --prompts 24 --doc   # ... and appends the table to docs/performance.md
    python benchmarks/lookup_encoder_decoder.py --retrain            # ignore the cached models

The copy model is trained here, from a config with a fixed seed (no Hub): by default a BART (d_model 256,
3+3 layers, vocab 512; `--family t5` for a T5 of the same sizes), and optionally (`--small_steps`) a 1+1-layer
draft of the same family, taught an "edited copy" task: the source is a random sequence of 24-48 distinct
content tokens, the target the same sequence with every token t where t % 8 == 1 replaced by t + 1, then eos.
So the output copies spans of about 8 tokens from the input, and each edit breaks a span: a lookup draft is
right up to the next edit, and wrong there. The models are saved under --cache (default
bench_out/<family>_copy/) and reused by later runs; training time and held-out exact-copy accuracy are
printed either way.

Why BART, and guided alignment: the copy is positional (target position i reads source position i). BART has
learned absolute positions, and with the guided-alignment loss term (see train(); on by default) it leaves the
loss plateau after ~100 steps on one CPU thread; without the term it still sat on the plateau (loss ~6.0, near
ln(vocab)) after 225 steps. T5 has no absolute positions, so the copy needs an induction-like circuit; at these
sizes it did not leave the plateau within minutes at 1 thread, even with the term.

Methods, greedy, run interleaved per prompt in one process (the order rotating from prompt to prompt), each
warmed up first on separate prompts (the adaptive policies learn across calls, as in a long-running session):

  large             large.generate(...)                               the reference output and time
  lookup auto       BiLDGenerator(None, large).generate(..., prompt_lookup_num_tokens=k)   default ("auto") policy
  lookup fixed k    BiLDGenerator(None, large, fallback_threshold=0.0, max_small_steps=1)   numeric thresholds:
                    the lookup drafts exactly prompt_lookup_num_tokens (k = 10 and --fixed_k)
  small             BiLDGenerator(small, large)                                  the small draft alone (--small_steps)
  combined          BiLDGenerator(small, large).generate(..., prompt_lookup_num_tokens=k)  lookup, else the small draft

at batch 1 and batch 4 (encoder inputs of different lengths, right-padded with an attention mask; the decoder
starts from its start token, so there is no decoder-side padding). Every output must equal large.generate's
(asserted). Speedup = median over prompts (batches) of t(large) / t(method).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bild import BiLDGenerator  # noqa: E402
from bild.adapters import batch_layout  # noqa: E402

PAD, EOS, FIRST = 0, 1, 3  # token ids: padding (and the decoder start), eos, first content token
VOCAB = 512
MOD = 8  # t % MOD == 1: replaced by t + 1
SIZES = {"large": dict(d_model=256, d_ff=1024, layers=3), "small": dict(d_model=256, d_ff=1024, layers=1)}
DOC = Path(__file__).resolve().parents[1] / "docs" / "performance.md"
HEADING = "## Prompt lookup on an encoder-decoder (`python benchmarks/lookup_encoder_decoder.py`)"


# ---------------------------------------------------------------------------------------------- the task


def edit(src: list[int]) -> list[int]:
    """The target for a source: a copy with every t % MOD == 1 replaced by t + 1, then eos."""
    return [t + 1 if t % MOD == 1 else t for t in src] + [EOS]


def alignment(src: list[int]) -> list[int]:
    """For each target token, the source position it comes from (-100 for eos)."""
    return list(range(len(src))) + [-100]


def sources(n: int, gen: torch.Generator, lo: int = 24, hi: int = 48) -> list[list[int]]:
    """n random sources of lo..hi distinct content tokens."""
    lengths = torch.randint(lo, hi + 1, (n,), generator=gen).tolist()
    return [(torch.randperm(VOCAB - FIRST, generator=gen)[:L] + FIRST).tolist() for L in lengths]


def pad(rows: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, L] and attention mask."""
    L = max(map(len, rows))
    ids = torch.tensor([r + [value] * (L - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (L - len(r)) for r in rows])
    return ids, mask


# ---------------------------------------------------------------------------------------------- the models


def model_class(family: str):
    import transformers

    return {"bart": transformers.BartForConditionalGeneration, "t5": transformers.T5ForConditionalGeneration}[family]


def make_config(family: str, d_model: int, d_ff: int, layers: int):
    if family == "bart":
        from transformers import BartConfig

        return BartConfig(
            vocab_size=VOCAB,
            d_model=d_model,
            encoder_layers=layers,
            decoder_layers=layers,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=d_ff,
            decoder_ffn_dim=d_ff,
            max_position_embeddings=128,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            pad_token_id=PAD,
            eos_token_id=EOS,
            bos_token_id=2,
            decoder_start_token_id=PAD,
            forced_bos_token_id=None,
            forced_eos_token_id=None,
        )
    from transformers import T5Config

    return T5Config(
        vocab_size=VOCAB,
        d_model=d_model,
        d_kv=d_model // 4,
        d_ff=d_ff,
        num_heads=4,
        num_layers=layers,
        num_decoder_layers=layers,
        dropout_rate=0.0,
        pad_token_id=PAD,
        eos_token_id=EOS,
        decoder_start_token_id=PAD,
    )


def train(
    family: str,
    size: dict,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    guide: bool,
    lengths: tuple[int, int] = (8, 48),
):
    """A model trained from scratch on the edited-copy task (AdamW, linear warm-up then cosine decay), on sources
    of `lengths` tokens. Guided alignment (Garg et al., 2019): a second loss term, the NLL of the first head
    of the last decoder layer's cross-attention at the source position each target token copies, on with
    `guide` (default; --no-guide drops it): it gets BART off the loss plateau within ~100 steps (it sat there
    without it); T5, which has no absolute positions, did not leave it at these sizes within minutes even
    with it. Returns the model and its last loss."""
    torch.manual_seed(seed)
    model = model_class(family)(make_config(family, **size))
    if guide:
        model.set_attn_implementation("eager")  # for the cross-attention weights; sdpa again afterwards
    model.generation_config.update(decoder_start_token_id=PAD, pad_token_id=PAD, eos_token_id=EOS)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / steps)).item())
    )
    gen = torch.Generator().manual_seed(seed + 1)
    model.train()
    for step in range(steps):
        src = sources(batch, gen, *lengths)
        ids, mask = pad(src, PAD)
        labels, _ = pad([edit(s) for s in src], -100)
        align, _ = pad([alignment(s) for s in src], -100)
        out = model(input_ids=ids, attention_mask=mask, labels=labels, output_attentions=guide)
        if guide:
            attn = out.cross_attentions[-1][:, 0]  # [B, T, S]
            g = torch.nn.functional.nll_loss(attn.clamp_min(1e-9).log().transpose(1, 2), align, ignore_index=-100)
        else:
            g = torch.zeros(())
        loss = out.loss + g
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 25 == 0 or step == steps - 1:
            print(f"    step {step:4d}  loss {out.loss.item():.4f}  alignment {g.item():.4f}", flush=True)
    if guide:
        model.set_attn_implementation("sdpa")
    return model.eval(), out.loss.item()


def load_or_train(
    folder: Path, family: str, size: dict, steps: int, batch: int, lr: float, seed: int, guide: bool, retrain: bool
):
    """The model cached in `folder`, or a freshly trained one saved there; and its training time (s)."""
    stamp = folder / "training.json"
    if not retrain and stamp.exists():
        return model_class(family).from_pretrained(folder).eval(), json.loads(stamp.read_text())
    t0 = time.perf_counter()
    model, loss = train(family, size, steps, batch, lr, seed, guide)
    info = dict(
        seconds=round(time.perf_counter() - t0, 1),
        steps=steps,
        batch=batch,
        lr=lr,
        seed=seed,
        guide=guide,
        final_loss=round(loss, 4),
    )
    model.save_pretrained(folder)
    stamp.write_text(json.dumps(info))
    return model, info


@torch.no_grad()
def copy_accuracy(model, srcs: list[list[int]], batch: int = 16) -> float:
    """Share of sources whose greedy output is exactly the target."""
    hit = 0
    for i in range(0, len(srcs), batch):
        part = srcs[i : i + batch]
        ids, mask = pad(part, PAD)
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=64)
        for s, o in zip(part, out.tolist()):
            o = o[1:]  # the decoder start token
            o = o[: o.index(EOS) + 1] if EOS in o else o
            hit += o == edit(s)
    return hit / len(srcs)


# ---------------------------------------------------------------------------------------------- the methods


def make_methods(small, large, k: int, fixed_k: list[int]) -> dict:
    """name -> f(ids, mask) -> (sequences, GenerationStats or None)."""
    kw = dict(do_sample=False, max_new_tokens=64)
    gens = {"lookup auto": (BiLDGenerator(None, large), k)}
    for n in dict.fromkeys([k, *fixed_k]):
        gens[f"lookup fixed {n}"] = (BiLDGenerator(None, large, fallback_threshold=0.0, max_small_steps=1), n)
    if small is not None:
        gens["small"] = (BiLDGenerator(small, large), None)
        gens["combined"] = (BiLDGenerator(small, large), k)

    def bild(gen, n):
        lk = {} if n is None else dict(prompt_lookup_num_tokens=n)
        return lambda ids, mask: (gen.generate(input_ids=ids, attention_mask=mask, **kw, **lk), gen.stats)

    methods = {"large": lambda ids, mask: (large.generate(input_ids=ids, attention_mask=mask, **kw), None)}
    methods.update({name: bild(g, n) for name, (g, n) in gens.items()})
    return methods


def generated(seqs: torch.Tensor) -> int:
    """New tokens in all rows (after the decoder start token, up to and including eos)."""
    n = 0
    for row in seqs[:, 1:].tolist():
        n += row.index(EOS) + 1 if EOS in row else len(row)
    return n


@torch.no_grad()
def measure(methods: dict, batches: list[list[list[int]]], warmup: list[list[list[int]]]) -> list[dict]:
    """Per batch, per method: seconds, large forwards, new tokens, accepted/drafted by drafter, same output
    as large. Methods run interleaved, the order rotating from batch to batch."""
    for b in warmup:
        for f in methods.values():
            f(*pad(b, PAD))
    names, rows = list(methods), []
    for i, b in enumerate(batches):
        ids, mask = pad(b, PAD)
        order = names[i % len(names) :] + names[: i % len(names)]
        res, seqs = {}, {}
        for name in order:
            t0 = time.perf_counter()
            seqs[name], st = methods[name](ids, mask)
            r = res[name] = {"s": time.perf_counter() - t0, "tokens": generated(seqs[name])}
            if st is None:  # plain decoding: one forward per decoder position
                r.update(forwards=seqs[name].shape[1] - 1, drafted={}, accepted={})
            else:
                r.update(forwards=st.large_forwards, drafted=dict(st.drafted_by), accepted=dict(st.accepted_by))
        for name in names:
            res[name]["same"] = torch.equal(seqs[name], seqs["large"])
        rows.append(res)
    return rows


# ---------------------------------------------------------------------------------------------- the report


def summarize(rows: list[dict], names: list[str], B: int, layout: str) -> list[dict]:
    """Per method. `layout`: bild's batch layout for the large model; under "rows" each of its forwards runs one
    row (a batch is decoded row by row), so tokens per large call are counted per call, not per B rows."""
    out = []
    for n in names:
        drafted, accepted = {}, {}
        for r in rows:
            for src, v in r[n]["drafted"].items():
                drafted[src] = drafted.get(src, 0) + v
            for src, v in r[n]["accepted"].items():
                accepted[src] = accepted.get(src, 0) + v
        tokens, forwards = sum(r[n]["tokens"] for r in rows), sum(r[n]["forwards"] for r in rows)
        seconds = sum(r[n]["s"] for r in rows)
        per_call = 1 if (n != "large" and layout == "rows") else B  # rows each large forward runs
        out.append(
            dict(
                method=n,
                batch=B,
                calls=forwards / len(rows),
                rows_per_call=per_call,
                speedup=statistics.median(r["large"]["s"] / r[n]["s"] for r in rows),
                ms_per_batch=1000 * seconds / len(rows),
                ms_per_call=1000 * seconds / forwards,
                tok_per_call=tokens / per_call / forwards,
                same=sum(r[n]["same"] for r in rows),
                n=len(rows),
                by_drafter={s: (accepted.get(s, 0), drafted[s]) for s in sorted(drafted)},
                lookup_share=accepted.get("lookup", 0) / tokens,
            )
        )
    return out


def table(summary: list[dict]) -> str:
    lines = [
        "| batch | method | speedup vs large (median of per-prompt ratios) | ms / prompt (batch) | "
        "large calls / prompt (batch) | rows / large call | new tokens / row / large call | ms / large call | "
        "accepted / drafted, by drafter | tokens from lookup | same output as large |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        acc = ", ".join(f"{k}: {a}/{d} ({a / d:.0%})" for k, (a, d) in s["by_drafter"].items()) or "-"
        lines.append(
            f"| {s['batch']} | {s['method']} | {s['speedup']:.2f}x | {s['ms_per_batch']:.0f} | "
            f"{s['calls']:.1f} | {s['rows_per_call']} | {s['tok_per_call']:.2f} | {s['ms_per_call']:.1f} | {acc} | {s['lookup_share']:.0%} | "
            f"{s['same']}/{s['n']} |"
        )
    return "\n".join(lines)


def verdict(summary: list[dict]) -> list[str]:
    """One line per batch size and lookup method: faster or not, and the measured reason."""
    lines = []
    for B in sorted({s["batch"] for s in summary}):
        base = next(s for s in summary if s["batch"] == B and s["method"] == "large")
        for s in summary:
            if s["batch"] != B or "lookup" not in s["method"]:
                continue
            why = (
                f"{s['calls']:.1f} large calls per batch against {base['calls']:.1f}"
                + (
                    f" (bild decodes the batch row by row: {s['rows_per_call']} row per call, against "
                    f"{base['rows_per_call']} for large.generate)"
                    if s["rows_per_call"] != base["rows_per_call"]
                    else ""
                )
                + f", {s['tok_per_call']:.2f} new tokens per row per call against {base['tok_per_call']:.2f}, "
                f"at {s['ms_per_call']:.1f} ms per call (verify pass + drafting) against "
                f"{base['ms_per_call']:.1f} ms per plain decoding step"
            )
            word = "faster" if s["speedup"] > 1.0 else "NOT faster"
            lines.append(f"- batch {B}, {s['method']}: {word} than large.generate ({s['speedup']:.2f}x): {why}.")
    return lines


def append_doc(command: str, machine: str, date: str, train_lines: list[str], tbl: str, verdict_lines: list[str]):
    text = DOC.read_text()
    block = "\n".join(
        [
            "",
            HEADING,
            "",
            "```bash",
            command,
            "```",
            "",
            f"Machine: {machine}. Date: {date}.",
            "",
            *train_lines,
            "",
            tbl,
            "",
            *verdict_lines,
            "",
            "- *ms / large call*: the method's whole time over its large-model forwards (prefill included): the "
            "cost of one verify pass with its drafting and bookkeeping, against one plain decoding step for large.",
            "- *new tokens / row / large call*: new tokens over (rows per call x large forwards); under 1 for large at "
            "batch 4 since the batch decodes until its longest row ends. bild decodes a BART batch row by row (its "
            '"rows" layout, over one batched encoder pass), so its large calls run 1 row each.',
            "",
        ]
    )
    DOC.write_text(text.rstrip("\n") + "\n" + block)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--family",
        choices=["bart", "t5"],
        default="bart",
        help="model family (t5 does not learn the copy within the default budget)",
    )
    p.add_argument("--cache", default=None, help="folder of the trained models (default bench_out/<family>_copy/)")
    p.add_argument("--retrain", action="store_true", help="train even if the cache holds the models")
    p.add_argument("--steps", type=int, default=600, help="training steps of the large model")
    p.add_argument("--small_steps", type=int, default=0, help="training steps of the small draft model (0: none)")
    p.add_argument("--train_batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--guide",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the guided-alignment loss term in training (--no-guide: plain cross-entropy)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompts", type=int, default=16, help="prompts at batch 1; batches of that many at batch > 1")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 4])
    p.add_argument("--lookup", type=int, default=10, help="prompt_lookup_num_tokens")
    p.add_argument("--fixed_k", type=int, nargs="*", default=[4], help="more fixed lookup lengths to measure")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches each method runs first")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--machine", default="2-core CPU shared with another 1-thread benchmark, 1 torch thread, niced")
    p.add_argument("--date", default="2026-11-29")
    p.add_argument("--doc", action="store_true", help=f"append the table to {DOC.relative_to(DOC.parents[1])}")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()

    cache = Path(a.cache or f"bench_out/{a.family}_copy/")
    train_lines = []
    models = {}
    for role, steps in (("large", a.steps), ("small", a.small_steps)):
        if steps <= 0:
            models[role] = None
            continue
        size = SIZES[role]
        print(
            f"{role}: {a.family} d_model {size['d_model']}, {size['layers']}+{size['layers']} layers, vocab {VOCAB}",
            flush=True,
        )
        model, info = load_or_train(
            cache / role, a.family, size, steps, a.train_batch, a.lr, a.seed, a.guide, a.retrain
        )
        acc = copy_accuracy(model, sources(64, torch.Generator().manual_seed(a.seed + 1000)))
        params = sum(x.numel() for x in model.parameters()) / 1e6
        c = model.config  # the cached model's own sizes and training record
        if a.family == "bart":
            sizes = (
                f"d_model {c.d_model}, ffn {c.encoder_ffn_dim}, {c.encoder_layers}+{c.decoder_layers} layers, "
                f"{c.encoder_attention_heads} heads, learned absolute positions"
            )
        else:
            sizes = f"d_model {c.d_model}, d_ff {c.d_ff}, {c.num_layers}+{c.num_decoder_layers} layers"
        line = (
            f"- {role}: {c.model_type.upper()} {sizes}, vocab {c.vocab_size} ({params:.1f} M parameters), "
            f"random init (seed {info['seed']}); {info['steps']} steps of {info['batch']} examples (sources of "
            f"8-48 tokens; AdamW, lr {info['lr']}, warm-up then cosine"
            f"{', guided alignment' if info['guide'] else ''}) in {info['seconds']:.0f} s at 1 thread, final loss {info['final_loss']:.4f}; exact output "
            f"(greedy = target) on 64 held-out sources: {acc:.0%}"
        )
        print(line, flush=True)
        train_lines.append(line)
        models[role] = model

    gen = torch.Generator().manual_seed(a.seed + 2000)  # benchmark prompts: unseen sources
    summary = []
    for B in a.batch_sizes:
        methods = make_methods(models["small"], models["large"], a.lookup, a.fixed_k)
        batches = [sources(B, gen) for _ in range(a.prompts)]
        warmup = [sources(B, gen) for _ in range(a.warmup)]
        t0 = time.perf_counter()
        rows = measure(methods, batches, warmup)
        print(f"batch {B}: {len(rows)} batches in {time.perf_counter() - t0:.0f} s", flush=True)
        summary += summarize(rows, list(methods), B, batch_layout(models["large"]))

    command = "python benchmarks/lookup_encoder_decoder.py " + " ".join(argv if argv is not None else sys.argv[1:])
    tbl, lines = table(summary), verdict(summary)
    print(f"\n`{command.strip()}` ({a.machine}; {a.date})\n")
    print("\n".join(train_lines) + "\n\n" + tbl + "\n\n" + "\n".join(lines))
    bad = [f"batch {s['batch']} {s['method']}: {s['same']}/{s['n']}" for s in summary if s["same"] != s["n"]]
    assert not bad, f"outputs differ from large.generate: {bad}"
    if a.doc:
        append_doc(command.strip(), a.machine, a.date, train_lines, tbl, lines)
        print(f"appended to {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
