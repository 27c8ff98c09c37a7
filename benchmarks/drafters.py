"""Which drafter pays on the SmolLM2 pair: prompt lookup, the small model, both, against transformers' own
prompt lookup and plain large greedy. Greedy; every bild method must give large greedy's text.

    python benchmarks/drafters.py --task xsum --limit 24                  # batch 1
    python benchmarks/drafters.py --task iwslt --limit 24
    python benchmarks/drafters.py --task xsum --limit 32 --batch_size 8   # batched (transformers cannot batch
                                                                          # its assisted generation)

Methods run in one process, interleaved per example with the order rotated from example to example, each
warmed up first on dev examples (the adaptive policies learn across calls, as in a long-running session).
Speedup = median over examples of (large time / method time). Per-example results are appended to
<out>/<task>_bs<B>.jsonl as they finish; `--resume` skips the examples already there.
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
from bild.pairs.smollm2 import chat_prompt, format_instruction, load_pair, read_jsonl, shared_data_dir  # noqa: E402

TASKS = {
    "xsum": ("xsum", "summarization"),
    "iwslt": ("iwslt2017_de_en", "translation"),
    "wmt": ("wmt14_de_en", "translation"),
}
METHODS = ("large", "tf_lookup", "bild_small", "bild_lookup", "bild_combined")
# also: tf_assisted (transformers' assisted generation with the same draft, full head) and bild_tuned
# (BiLD, rollback, at --tuned FALLBACK,ROLLBACK: thresholds swept on the dev split's tune half)
# bild_feature / bild_feature_combined: the feature (EAGLE) draft alone / with prompt lookup, exact at defaults
ALL_METHODS = METHODS + ("tf_assisted", "bild_tuned", "bild_feature", "bild_feature_combined")


def make_methods(
    small, large, kw, lookup: int, batch: int, tuned=None, assistant=None, feature=None, tuned_lookup: int = 0
):
    gens = {
        "bild_small": BiLDGenerator(small, large),
        "bild_lookup": BiLDGenerator(None, large),
        "bild_combined": BiLDGenerator(small, large),
    }
    lk = dict(prompt_lookup_num_tokens=lookup)
    m = {
        "large": lambda enc: (large.generate(**enc, **kw), None),
        "bild_small": lambda enc: (gens["bild_small"].generate(**enc, **kw), gens["bild_small"].stats),
        "bild_lookup": lambda enc: (gens["bild_lookup"].generate(**enc, **kw, **lk), gens["bild_lookup"].stats),
        "bild_combined": lambda enc: (gens["bild_combined"].generate(**enc, **kw, **lk), gens["bild_combined"].stats),
    }
    if tuned is not None:
        gens["bild_tuned"] = BiLDGenerator(
            small, large, verification="rollback", fallback_threshold=tuned[0], rollback_threshold=tuned[1]
        )
        tk = dict(prompt_lookup_num_tokens=tuned_lookup) if tuned_lookup else {}
        m["bild_tuned"] = lambda enc: (gens["bild_tuned"].generate(**enc, **kw, **tk), gens["bild_tuned"].stats)
    if feature is not None:
        gens["bild_feature"], gens["bild_feature_combined"] = (
            BiLDGenerator(feature, large),
            BiLDGenerator(feature, large),
        )
        m["bild_feature"] = lambda enc: (gens["bild_feature"].generate(**enc, **kw), gens["bild_feature"].stats)
        m["bild_feature_combined"] = lambda enc: (
            gens["bild_feature_combined"].generate(**enc, **kw, **lk),
            gens["bild_feature_combined"].stats,
        )
    if batch == 1:  # transformers' prompt lookup and assisted generation are batch 1 only
        m["tf_lookup"] = lambda enc: (large.generate(**enc, **kw, **lk), None)
        if assistant is not None:
            m["tf_assisted"] = lambda enc: (large.generate(**enc, **kw, assistant_model=assistant), None)
    return m


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(TASKS), default="xsum")
    p.add_argument("--limit", type=int, default=24, help="test examples (rows, with --batch_size)")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--max_new_tokens", type=int, default=48)
    p.add_argument("--max_source_chars", type=int, default=1500)
    p.add_argument("--lookup", type=int, default=10, help="prompt_lookup_num_tokens (transformers' default: 10)")
    p.add_argument("--warmup", type=int, default=3, help="dev examples each method runs first, untimed")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out_dir", default="bench_out/drafters")
    p.add_argument("--resume", action="store_true")
    p.add_argument(
        "--report_only",
        action="store_true",
        help="print the table from <out_dir>/<task>_bs<B>.jsonl (the rows written so far) without running anything",
    )
    p.add_argument(
        "--feature_weights",
        default=None,
        help="feature draft file for bild_feature* (`bild pair train-feature` writes one)",
    )
    p.add_argument(
        "--tuned",
        default=None,
        metavar="FALLBACK,ROLLBACK",
        help="thresholds of bild_tuned (from examples/sweep_thresholds.py on the tune half of dev); "
        "FALLBACK may be 'auto'",
    )
    p.add_argument(
        "--tuned_lookup",
        type=int,
        default=0,
        metavar="N",
        help="bild_tuned also drafts by prompt lookup, N tokens (the sweep's --prompt_lookup); 0: off",
    )
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()

    folder, task = TASKS[a.task]
    if a.report_only:
        report(Path(a.out_dir) / f"{a.task}_bs{a.batch_size}.jsonl", a.methods.split(","), a, task)
        return 0
    d = shared_data_dir()
    if d is None or not (d / folder / "test.jsonl").exists():
        print(f"skipped: no shared data for {a.task} (../shared/data/{folder}/test.jsonl)")
        return 0
    pr = load_pair()
    tok, small, large = pr.tokenizer, pr.small, pr.large
    tok.padding_side = "left"
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    kw = dict(do_sample=False, max_new_tokens=a.max_new_tokens, pad_token_id=pad)
    want = a.methods.split(",")
    unknown = sorted(set(want) - set(ALL_METHODS))
    if unknown or ("bild_tuned" in want and not a.tuned):
        raise SystemExit(f"--methods: unknown {unknown} (allowed: {', '.join(ALL_METHODS)}); bild_tuned needs --tuned")
    tuned = tuple(x if x == "auto" else float(x) for x in a.tuned.split(",")) if a.tuned else None
    assistant = None
    if "tf_assisted" in want:  # transformers reads a full-width head: the same draft, head not pruned
        from bild.pairs.smollm2 import default_draft_weights, load_draft_from_weights

        assistant = load_draft_from_weights(large, default_draft_weights(), prune=False)
    feature = None
    if any(w.startswith("bild_feature") for w in want):
        if not a.feature_weights:
            raise SystemExit("--methods bild_feature*: pass --feature_weights FILE (`bild pair train-feature`)")
        from bild.pairs.smollm2 import load_feature_draft

        feature = load_feature_draft(large, a.feature_weights)
    methods = {
        k: v
        for k, v in make_methods(
            small, large, kw, a.lookup, a.batch_size, tuned, assistant, feature, a.tuned_lookup
        ).items()
        if k in want
    }

    def encode(rows):
        texts = [chat_prompt(tok, format_instruction(r["source"], task, a.max_source_chars)) for r in rows]
        return dict(tok(texts, return_tensors="pt", padding=True, add_special_tokens=False))

    B = a.batch_size
    dev = read_jsonl(d / folder / "dev.jsonl", a.warmup * B)
    for i in range(0, len(dev), B):  # warm-up: layout probes, learned costs, the policies' first rounds
        for f in methods.values():
            f(encode(dev[i : i + B]))
    test = read_jsonl(d / folder / "test.jsonl", a.limit)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"{a.task}_bs{B}.jsonl"
    done = {json.loads(x)["example"] for x in log.read_text().splitlines()} if a.resume and log.exists() else set()
    if not a.resume:
        log.write_text("")
    names = list(methods)
    for e, i in enumerate(range(0, len(test), B)):
        if i in done:
            continue
        enc = encode(test[i : i + B])
        order = names[e % len(names) :] + names[: e % len(names)]
        res, seqs = (
            {
                "example": i,
                "prompt_tokens": int(enc["attention_mask"].sum(1).max()),
                "references": [r["target"] for r in test[i : i + B]],
            },
            {},
        )
        width = enc["input_ids"].shape[1]
        for name in order:
            t0 = time.perf_counter()
            seq, st = methods[name](enc)
            res[name] = {"s": time.perf_counter() - t0}
            seqs[name] = seq
            new = seq[:, width:]
            res[name]["texts"] = tok.batch_decode(new, skip_special_tokens=True)
            res[name]["new_tokens"] = int((new != pad).sum())
            if st is not None:
                res[name].update(
                    tokens_per_call=round(st.tokens_per_large_call, 3),
                    drafted_by=st.drafted_by,
                    accepted_by=st.accepted_by,
                    fallbacks=st.fallbacks,
                    rollbacks=st.rollbacks,
                )
        for name in names:
            res[name]["same_as_large"] = bool(torch.equal(seqs[name], seqs["large"])) if "large" in seqs else None
        with log.open("a") as fh:
            fh.write(json.dumps(res) + "\n")
        print(
            json.dumps(
                {k: (round(v["s"], 2) if isinstance(v, dict) else v) for k, v in res.items() if k != "references"}
            ),
            flush=True,
        )
    report(log, names, a, task)
    return 0


def report(log: Path, names: list[str], a, task: str) -> None:
    from bild.evaluation.metrics import quality

    rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    metric = "bleu" if task == "translation" else "rouge"
    refs = [t for r in rows for t in r.get("references", [])]
    print(
        f"\n`python benchmarks/drafters.py --task {a.task} --limit {a.limit} --batch_size {a.batch_size} "
        f"--lookup {a.lookup} --threads {a.threads}"
        + (f" --tuned {a.tuned}" if a.tuned else "")
        + (f" --tuned_lookup {a.tuned_lookup}" if a.tuned_lookup else "")
        + f" --methods {','.join(names)}` ({len(rows)} batches, "
        f"median prompt {statistics.median(r['prompt_tokens'] for r in rows)} tokens)\n"
    )
    name = "BLEU" if metric == "bleu" else "ROUGE-L"
    print(
        f"| method | speedup vs large (median of per-example ratios) | tokens / s | {name} | {name} against large's text | "
        "tokens / large call | accepted by drafter | same text as large |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n in names:
        ratios = [r["large"]["s"] / r[n]["s"] for r in rows]
        tps = sum(r[n].get("new_tokens", 0) for r in rows) / sum(r[n]["s"] for r in rows)
        texts = {
            m: [t.strip() for r in rows for t in r[m]["texts"]]
            for m in (n, "large")
            if m in names and all("texts" in r[m] for r in rows)
        }
        score = f"{quality(metric, texts[n], refs)['score']:.2f}" if refs and n in texts else "-"
        vs_large = f"{quality(metric, texts[n], texts['large'])['score']:.1f}" if {n, "large"} <= texts.keys() else "-"
        tpc = [r[n]["tokens_per_call"] for r in rows if "tokens_per_call" in r[n]]
        acc: dict[str, int] = {}
        for r in rows:
            for k, v in r[n].get("accepted_by", {}).items():
                acc[k] = acc.get(k, 0) + v
        same = sum(bool(r[n]["same_as_large"]) for r in rows)
        print(
            f"| {n} | {statistics.median(ratios):.2f}x | {tps:.1f} | {score} | {vs_large} | "
            f"{f'{statistics.mean(tpc):.2f}' if tpc else '-'} | {acc or '-'} | {same}/{len(rows)} |"
        )


if __name__ == "__main__":
    sys.exit(main())
