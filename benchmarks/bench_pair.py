"""Benchmark the offline SmolLM2 pair: large greedy vs assisted generation vs BiLD vs exact
speculative decoding vs small alone, in ONE process, interleaved per example (the method order
rotates from example to example) so machine drift hits all methods alike.

    python benchmarks/bench_pair.py --limit 20 --max_new_tokens 48            # batch 1
    python benchmarks/bench_pair.py --limit 16 --batch_size 8                  # batched, left padded
    python benchmarks/bench_pair.py --test_file my.jsonl --task translation   # own data

Inputs: JSONL with {"source", "target"}; by default ../shared/data/{iwslt2017_de_en,wmt14_de_en,
xsum}/test.jsonl when present, formatted as chat instructions ("Translate to English: ...",
"Summarize in one sentence: ...").  Quality: BLEU (sacrebleu) for translation, ROUGE-L
(rouge_score) for summarisation, against the references and against the large model's own
outputs.  Writes <out>/results.csv, <out>/results.md, <out>/speedup.png, <out>/outputs.jsonl.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bild import BiLDGenerator  # noqa: E402
from bild.pairs.smollm2 import chat_prompt, format_instruction, load_pair, read_jsonl, shared_data_dir, task_for_file  # noqa: E402

DEFAULT_SETS = ("iwslt2017_de_en", "wmt14_de_en", "xsum")


class ForwardCounter:
    """Counts top-level forward calls and token positions fed to a model (via a forward hook)."""

    def __init__(self, model):
        self.calls = 0
        self.tokens = 0
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("decoder_input_ids")
        self.calls += 1
        if ids is not None:
            self.tokens += ids.numel()

    def reset(self):
        self.calls = self.tokens = 0


def new_token_counts(seqs: torch.Tensor, prompt_width: int, eos: set[int], pad: int | None) -> list[int]:
    counts = []
    for row in seqs[:, prompt_width:].tolist():
        n = len(row)
        for i, t in enumerate(row):
            if t in eos:
                n = i + 1
                break
        counts.append(n)
    return counts


def metric_fns(task: str):
    if task == "translation":
        import sacrebleu

        def score(hyps, refs):
            return sacrebleu.corpus_bleu(hyps, [refs]).score

        return "BLEU", score
    from rouge_score import rouge_scorer

    sc = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    def score(hyps, refs):
        return 100 * sum(sc.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)) / max(len(hyps), 1)

    return "ROUGE-L", score


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--test_file", nargs="*", default=None, help="JSONL files (default: shared test sets)")
    p.add_argument("--task", choices=["translation", "summarization", "auto"], default="auto")
    p.add_argument("--limit", type=int, default=10, help="examples per test file")
    p.add_argument("--max_new_tokens", type=int, default=48)
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--max_source_chars", type=int, default=1200, help="truncate long sources (XSum docs)")
    p.add_argument(
        "--bild",
        action="append",
        default=None,
        metavar="FB,RB",
        help="BiLD fallback,rollback thresholds, or 'auto' for the library's defaults (adaptive "
        "policy, rollback 5) (repeatable; default: auto and 0.6,3)",
    )
    p.add_argument("--max_small_steps", default="auto", help="'auto' or an integer (the fixed-threshold rows)")
    p.add_argument("--exact_fallback", default="auto", help="fallback threshold of the exact (SD) run, or 'auto'")
    p.add_argument("--methods", default="large,assisted,bild,exact,small")
    p.add_argument("--cache", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out_dir", default="bench_out")
    p.add_argument("--no_plot", action="store_true")
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    files = a.test_file
    if not files:
        d = shared_data_dir()
        files = [str(d / n / "test.jsonl") for n in DEFAULT_SETS if d and (d / n / "test.jsonl").exists()]
        if not files:
            p.error("no --test_file given and no ../shared/data test sets found")
    pr = load_pair(a.cache)
    tok, small, large = pr.tokenizer, pr.small, pr.large
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = {int(tok.eos_token_id)}
    tok.padding_side = "left"
    cl, cs = ForwardCounter(large), ForwardCounter(small)

    steps = a.max_small_steps if a.max_small_steps == "auto" else int(a.max_small_steps)
    wanted = a.methods.split(",")
    gens = {}
    for setting in a.bild or ["auto", "0.6,3"]:
        if setting == "auto":
            gens["bild(auto)"] = BiLDGenerator(small, large, verification="rollback")  # BiLD's rule, thresholds auto
            continue
        fb, rb = (float(x) for x in setting.split(","))
        gens[f"bild(fb={fb:g},rb={rb:g})"] = BiLDGenerator(
            small, large, fallback_threshold=fb, rollback_threshold=rb, max_small_steps=steps
        )
    exact_fb = a.exact_fallback if a.exact_fallback == "auto" else float(a.exact_fallback)
    exact = BiLDGenerator(
        small,
        large,
        fallback_threshold=exact_fb,
        verification="exact",
        max_small_steps=steps if exact_fb != "auto" else "auto",
    )
    kw = dict(do_sample=False, max_new_tokens=a.max_new_tokens, pad_token_id=pad)

    methods = {}
    if "large" in wanted:
        methods["large"] = lambda enc: (large.generate(**enc, **kw), None)
    if "assisted" in wanted and a.batch_size == 1:
        methods["assisted"] = lambda enc: (large.generate(**enc, assistant_model=small, **kw), None)
    if "bild" in wanted:
        for name, g in gens.items():
            methods[name] = (lambda g: lambda enc: (g.generate(**enc, **kw), g.stats))(g)
    if "exact" in wanted:
        methods[f"exact-SD(fb={a.exact_fallback})"] = lambda enc: (exact.generate(**enc, **kw), exact.stats)
    if "small" in wanted:
        methods["small"] = lambda enc: (small.generate(**enc, **kw), None)
    names = list(methods)

    # ---- data -------------------------------------------------------------------------------
    examples = []  # (dataset, task, prompt_text, reference)
    for f in files:
        task = task_for_file(f) if a.task == "auto" else a.task
        if task == "instruction":
            task = "translation"
        for row in read_jsonl(f, a.limit):
            instr = format_instruction(row["source"], task, a.max_source_chars)
            examples.append((Path(f).parent.name or Path(f).stem, task, chat_prompt(tok, instr), row["target"]))
    batches = [examples[i : i + a.batch_size] for i in range(0, len(examples), a.batch_size)]
    print(
        f"{len(examples)} examples from {len(files)} file(s), batch {a.batch_size}, methods: {', '.join(names)}",
        flush=True,
    )

    # ---- run --------------------------------------------------------------------------------
    rec = defaultdict(lambda: defaultdict(float))
    outputs = defaultdict(dict)  # method -> example index -> text
    with torch.no_grad():
        # warm-up, not timed, at the benchmark's batch size (the adaptive policy measures its costs per batch
        # size once, and starts learning, as in any first call)
        enc0 = tok([e[2] for e in batches[0]], return_tensors="pt", padding=True, add_special_tokens=False)
        for name in names:
            methods[name](dict(**enc0)) if name != "assisted" else large.generate(
                **enc0, assistant_model=small, do_sample=False, max_new_tokens=4, pad_token_id=pad
            )
        for bi, batch in enumerate(batches):
            enc = tok([e[2] for e in batch], return_tensors="pt", padding=True, add_special_tokens=False)
            width = enc.input_ids.shape[1]
            order = names[bi % len(names) :] + names[: bi % len(names)]
            for name in order:
                cl.reset()
                cs.reset()
                t = time.perf_counter()
                seqs, st = methods[name](dict(**enc))
                dt = time.perf_counter() - t
                n_new = new_token_counts(seqs, width, eos, pad)
                r = rec[name]
                r["time"] += dt
                r["batches"] += 1
                r["tokens"] += sum(n_new)
                # per row: a batched forward counts once for every row it advanced
                r["large_calls"] += cl.calls * len(batch)
                r["small_calls"] += cs.calls * len(batch)
                if st is not None:
                    r["fallbacks"] += st.fallbacks
                    r["rollbacks"] += st.rollbacks
                    r["drafted"] += st.drafted
                    r["accepted"] += st.accepted
                    r["stats_tokens"] += st.new_tokens
                for j in range(len(batch)):
                    k = bi * a.batch_size + j
                    outputs[name][k] = tok.decode(seqs[j, width : width + n_new[j]], skip_special_tokens=True).strip()
            line = " ".join(f"{n}={rec[n]['time'] / rec[n]['batches']:.2f}s" for n in names)
            print(f"[{bi + 1}/{len(batches)}] {line}", flush=True)

    # ---- table ------------------------------------------------------------------------------
    by_ds = defaultdict(list)
    for i, e in enumerate(examples):
        by_ds[(e[0], e[1])].append(i)
    rows = []
    base_t = rec["large"]["time"] if "large" in rec else None
    asst_t = rec["assisted"]["time"] if "assisted" in rec else None
    for name in names:
        r = rec[name]
        row = {
            "method": name,
            "batch_size": a.batch_size,
            "examples": len(examples),
            "latency_s": r["time"] / r["batches"],
            "ms_per_token": 1000 * r["time"] / max(r["tokens"], 1),
            "speedup_vs_large": (base_t / r["time"]) if base_t else float("nan"),
            "speedup_vs_assisted": (asst_t / r["time"]) if asst_t else float("nan"),
            "tokens_per_large_call": r["tokens"] / r["large_calls"] if r["large_calls"] else float("nan"),
            "large_fwd_per_token": r["large_calls"] / max(r["tokens"], 1),
            "small_fwd_per_token": r["small_calls"] / max(r["tokens"], 1),
            "fallback_rate": r["fallbacks"] / r["stats_tokens"] if r["stats_tokens"] else float("nan"),
            "rollback_rate": r["rollbacks"] / r["stats_tokens"] if r["stats_tokens"] else float("nan"),
            "acceptance": r["accepted"] / r["drafted"] if r["drafted"] else float("nan"),
            "same_as_large": (
                sum(outputs[name][i] == outputs["large"][i] for i in range(len(examples))) / len(examples)
            )
            if "large" in outputs
            else float("nan"),
        }
        for (ds, task), idx in by_ds.items():
            mname, fn = metric_fns(task)
            hyps = [outputs[name][i] for i in idx]
            row[f"{ds} {mname} ref"] = fn(hyps, [examples[i][3] for i in idx])
            if "large" in outputs:
                row[f"{ds} {mname} vs-large"] = fn(hyps, [outputs["large"][i] for i in idx])
        rows.append(row)

    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"bs{a.batch_size}"
    keys = list(rows[0].keys())
    with open(out / f"results_{tag}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)

    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) and abs(v) < 10 else (f"{v:.1f}" if isinstance(v, float) else str(v))

    md = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    md += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    cmd = "python " + " ".join([os.path.relpath(__file__)] + list(sys.argv[1:] if argv is None else argv))
    header = (
        f"# bench_pair ({tag}, {len(examples)} examples, max_new_tokens {a.max_new_tokens}, "
        f"{torch.get_num_threads()} threads, small layers {getattr(small.config, 'bild_source_layers', '?')})\n\n"
        f"`{cmd}`\n\n"
    )
    (out / f"results_{tag}.md").write_text(header + "\n".join(md) + "\n")
    with open(out / f"outputs_{tag}.jsonl", "w") as fh:
        for i, e in enumerate(examples):
            fh.write(json.dumps({"dataset": e[0], "reference": e[3], **{n: outputs[n][i] for n in names}}) + "\n")
    print()
    print(header + "\n".join(md))
    if not a.no_plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(8, 3.5))
            ax.bar([r["method"] for r in rows], [r["speedup_vs_large"] for r in rows], color="tab:blue")
            ax.axhline(1.0, color="k", lw=0.8)
            ax.set_ylabel("speedup over large greedy")
            ax.set_title(f"SmolLM2 pair, CPU, batch {a.batch_size}, {len(examples)} examples")
            plt.xticks(rotation=20, ha="right", fontsize=8)
            fig.tight_layout()
            fig.savefig(out / f"speedup_{tag}.png", dpi=120)
        except Exception as e:  # pragma: no cover
            print("plot skipped:", e)
    print(f"\nwrote {out}/results_{tag}.csv/.md, speedup_{tag}.png, outputs_{tag}.jsonl")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
