"""Yin et al. (NeurIPS 2024) Table 1 on the offline SmolLM2 pair: how far from the large model do
Decoding-UNO and Decoding-OPT drift, and how fast are they, at eps in {0.1, 0.2, 0.4, 0.8}?

    python benchmarks/yin_quality.py                                   # 24 prompts x 48 tokens (~20 min, 2 cores)
    python benchmarks/yin_quality.py --smoke                           # ~1 minute, checks the plumbing
    python benchmarks/yin_quality.py --limit 4 --max_new_tokens 32 --seeds 0 1
    python benchmarks/yin_quality.py --resume                          # go on after an interruption
    python benchmarks/yin_quality.py --eps 0.01 0.03 --methods large,uno,opt --out_dir runs/yin_quality/small_eps
    git archive HEAD src | tar -x -C /tmp/bild_head && \
        python benchmarks/yin_quality.py --src /tmp/bild_head/src --note "HEAD snapshot"  # pin the code

Methods, all sampling at temperature 1, top_k 0, top_p 1 (pure sampling, the papers' setting; transformers'
default top_k=50 is overridden), run in ONE process and interleaved per prompt (the order rotates from prompt
to prompt), each method starting from the same seed on a prompt:

    large        `large.generate(do_sample=True)`: the reference distribution, and the time base
    small        `small.generate(do_sample=True)`: how far "far" is (calibration of the scale)
    exact        `BiLDGenerator(verification="exact")`: lossless speculative sampling (eps 0)
    uno eps      `uno_epsilon=eps`: accept w.p. min(1, (p + eps) / q), resample from p on rejection
    opt eps      `opt_epsilon=eps`: same test, resample from norm(max(0, p - q)) on rejection

The draft is FIXED (`fallback_threshold=0, max_small_steps=4`: 4 drafted tokens per round, no fallback):
the adaptive default turns drafting off on this pair (the draft agrees ~19 % greedily), which would make
UNO/OPT equal to the large model.

Quality: every continuation (up to and including its first eos) is scored by the LARGE model,
teacher-forced in one forward pass over prompt + continuation: mean log p_large(token | prefix) per
generated token. A method is closer to the large model when its mean log-likelihood is closer to that of
the large model's own samples (whose expectation is minus the large model's entropy rate).
Speed: wall time summed over prompts; speedup = large time / method time (timing excludes scoring).

Prompts: the first --limit rows of each of ../shared/data/{iwslt2017_de_en,wmt14_de_en,xsum}/test.jsonl
(chat-formatted instructions, sources cut at --max_source_chars), or built-in general instructions when
that folder is absent. Writes <out>/outputs.jsonl (one line per prompt, seed and method, appended as each
finishes), <out>/results.json and <out>/results.md (rewritten after every prompt).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

# --src DIR: import bild from DIR (e.g. a `git archive` snapshot while the working tree is being edited)
_SRC = next((sys.argv[i + 1] for i, x in enumerate(sys.argv[:-1]) if x == "--src"), None)
sys.path.insert(0, str(Path(_SRC).resolve() if _SRC else Path(__file__).resolve().parents[1] / "src"))

import bild as _bild  # noqa: E402
from bild import BiLDGenerator  # noqa: E402
from bild.pairs.smollm2 import (  # noqa: E402
    GENERAL_INSTRUCTIONS,
    chat_prompt,
    format_instruction,
    load_pair,
    read_jsonl,
    shared_data_dir,
    task_for_file,
)

DEFAULT_SETS = ("iwslt2017_de_en", "wmt14_de_en", "xsum")
DEFAULT_EPS = (0.1, 0.2, 0.4, 0.8)


# ---- helpers ------------------------------------------------------------------------------------
def continuation(seq: torch.Tensor, width: int, eos: set[int]) -> list[int]:
    """The new tokens of a batch-1 output, up to and including the first eos."""
    out = []
    for t in seq[0, width:].tolist():
        out.append(t)
        if t in eos:
            break
    return out


@torch.no_grad()
def large_loglik(large, prompt_ids: torch.Tensor, cont: list[int]) -> list[float]:
    """log p_large(cont[i] | prompt, cont[:i]) for every i, teacher-forced in one forward pass."""
    if not cont:
        return []
    c = torch.tensor([cont], dtype=prompt_ids.dtype)
    ids = torch.cat([prompt_ids, c], dim=1)
    P = prompt_ids.shape[1]
    logits = large(input_ids=ids).logits[0, P - 1 : -1].float()
    return logits.log_softmax(-1).gather(-1, c[0, :, None])[:, 0].tolist()


def mean_se(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(xs) / n
    if n < 2:
        return m, float("nan")
    v = sum((x - m) ** 2 for x in xs) / (n - 1)
    return m, math.sqrt(v / n)


class WarperSpy:
    """Counts calls of transformers' top-k / top-p / temperature warpers (they must stay unused)."""

    def __init__(self):
        from transformers.generation import logits_process as lp

        self.calls = defaultdict(int)
        self._orig = {}
        for name in (
            "TopKLogitsWarper",
            "TopPLogitsWarper",
            "TemperatureLogitsWarper",
            "MinPLogitsWarper",
            "TypicalLogitsWarper",
            "EpsilonLogitsWarper",
            "EtaLogitsWarper",
        ):
            cls = getattr(lp, name, None)
            if cls is None:
                continue
            orig = cls.__call__
            self._orig[cls] = orig

            def wrapped(obj, *args, _orig=orig, _name=name, **kw):
                self.calls[_name] += 1
                return _orig(obj, *args, **kw)

            cls.__call__ = wrapped

    def restore(self):
        for cls, orig in self._orig.items():
            cls.__call__ = orig


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} logical CPUs, "
        f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} thread(s))"
    )


def git_state(root: Path) -> str:
    """HEAD and modified files under src/ of the checkout `root`."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        if not head:
            return f"{root} is not a git checkout"
        dirty = subprocess.run(
            ["git", "status", "--short", "--", "src"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.split("\n")
        dirty = [d.strip() for d in dirty if d.strip()]
        return head + (f" (src/ modified at start: {', '.join(dirty)})" if dirty else " (src/ clean at start)")
    except Exception:  # pragma: no cover
        return "?"


# ---- summary ------------------------------------------------------------------------------------
def summarize(records: list[dict], names: list[str]) -> dict:
    by = defaultdict(list)
    for r in records:
        by[r["method"]].append(r)
    units_done = {(r["example"], r["seed"]) for r in records}
    # only units every method finished, so all rows cover the same prompts
    complete = {u for u in units_done if all(any((r["example"], r["seed"]) == u for r in by[n]) for n in names)}
    rows = {}
    for n in names:
        rs = [r for r in by[n] if (r["example"], r["seed"]) in complete]
        tok = sum(r["n_tokens"] for r in rs)
        ll = sum(r["ll_sum"] for r in rs)
        per, se = mean_se([r["ll_sum"] / r["n_tokens"] for r in rs if r["n_tokens"]])
        t = sum(r["time_s"] for r in rs)
        st = defaultdict(int)
        for r in rs:
            for k, v in (r.get("stats") or {}).items():
                st[k] += v
        rows[n] = {
            "method": rs[0]["family"] if rs else n,
            "eps": rs[0]["eps"] if rs else None,
            "units": len(rs),
            "tokens": tok,
            "ll_token_mean": ll / tok if tok else float("nan"),
            "ll_unit_mean": per,
            "ll_unit_se": se,
            "time_s": t,
            "ms_per_token": 1000 * t / tok if tok else float("nan"),
            "acceptance": st["accepted"] / st["judged"] if st.get("judged") else None,
            "tokens_per_round": ((st["new_tokens"] - len(rs)) / st["rounds"]) if st.get("rounds") else None,
            "tokens_per_large_call": (st["new_tokens"] / st["large_forwards"]) if st.get("large_forwards") else None,
            "stats": dict(st),
        }
    base = rows.get("large", {}).get("time_s")
    for row in rows.values():
        row["speedup"] = base / row["time_s"] if base and row["time_s"] else float("nan")
    # paired (same prompt, same seed) differences of per-unit mean log-likelihoods
    unit_ll = {
        (r["method"], r["example"], r["seed"]): r["ll_sum"] / r["n_tokens"]
        for r in records
        if r["n_tokens"] and (r["example"], r["seed"]) in complete
    }
    paired = {}
    for n in names:
        if n.startswith("opt"):
            u = "uno" + n[3:]
            if u in rows:
                ds = [
                    unit_ll[(n, e, s)] - unit_ll[(u, e, s)]
                    for (e, s) in sorted(complete)
                    if (n, e, s) in unit_ll and (u, e, s) in unit_ll
                ]
                m, se = mean_se(ds)
                lar = rows.get("large", {}).get("ll_token_mean", float("nan"))
                gap_opt = abs(rows[n]["ll_token_mean"] - lar)
                gap_uno = abs(rows[u]["ll_token_mean"] - lar)
                paired[n[4:]] = {
                    "opt_minus_uno_mean": m,
                    "opt_minus_uno_se": se,
                    "n": len(ds),
                    "gap_opt": gap_opt,
                    "gap_uno": gap_uno,
                    "opt_closer": gap_opt < gap_uno,
                }
    return {"units": len(complete), "rows": rows, "opt_vs_uno": paired}


def write_reports(out: Path, summary: dict, meta: dict, names: list[str]) -> None:
    (out / "results.json").write_text(json.dumps({"meta": meta, **summary}, indent=1))

    def f(v, d=3):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"

    def closer(p):
        if abs(p["gap_opt"] - p["gap_uno"]) < 1e-9:
            return "tie (same outputs)" if p["opt_minus_uno_se"] == 0 else "tie"
        return "yes" if p["opt_closer"] else "NO"

    rows = summary["rows"]
    lines = [
        "# Decoding-UNO vs Decoding-OPT on the SmolLM2 pair (Yin et al. 2024, Table 1 direction)",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}; runtime {meta['runtime_s'] / 60:.1f} min{' (partial)' if meta.get('partial') else ''}",
        f"- machine: {meta['machine']}",
        f"- code: bild {meta['git']}",
        "- **the CPU was shared with other jobs** (other engineers' processes); methods are interleaved per "
        "prompt with a rotating order, so the speedup ratios are comparable, the absolute times are not",
        f"- prompts: {meta['prompts']}; {summary['units']} (prompt, seed) units complete; seeds {meta['seeds']}; "
        f"max_new_tokens {meta['max_new_tokens']}",
        f"- sampling: temperature 1.0, top_k 0, top_p 1.0 (pure sampling); warper calls seen: "
        f"{meta.get('warper_calls') or 'none'}",
        f"- draft: FIXED, `fallback_threshold=0, max_small_steps={meta['max_small_steps']}` "
        f'(the adaptive default would turn drafting off on this pair), `verification="exact"`',
        "- log-likelihood: the large model's mean log p(token | prefix) per generated token (eos included, "
        "teacher-forced over prompt + continuation); 'per-token' pools all tokens, 'per-prompt' is the mean "
        "over units of each unit's mean, ± its standard error",
        "- acceptance = accepted / judged drafts; tokens/round = (new tokens - the prefill token) / rounds; "
        "speedup = total large-sampling time / total method time",
        "",
        "| method | eps | LL per token | LL per prompt ± s.e. | Δ vs large | acceptance | tokens/round | ms/token | speedup |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lar = rows.get("large", {}).get("ll_token_mean", float("nan"))
    for n in names:
        r = rows[n]
        eps = "-" if r["eps"] is None else f"{r['eps']:g}"
        lines.append(
            f"| {r['method']} | {eps} | {f(r['ll_token_mean'])} | {f(r['ll_unit_mean'])} ± {f(r['ll_unit_se'])} | "
            f"{f(r['ll_token_mean'] - lar, 3) if n != 'large' else '0'} | {f(r['acceptance'])} | "
            f"{f(r['tokens_per_round'], 2)} | {f(r['ms_per_token'], 1)} | {f(r['speedup'], 2)}x |"
        )
    if summary["opt_vs_uno"]:
        lines += [
            "",
            "OPT vs UNO at each eps. gap = abs(LL per token - LL per token of large) (pooled); OPT is closer when its gap is smaller; the paired "
            "difference is OPT - UNO of the per-prompt means (same prompt and seed), mean ± s.e.",
            "",
            "| eps | gap UNO | gap OPT | OPT closer? | OPT - UNO (paired) ± s.e. |",
            "|---|---|---|---|---|",
        ]
        for eps, p in summary["opt_vs_uno"].items():
            lines.append(
                f"| {eps} | {f(p['gap_uno'])} | {f(p['gap_opt'])} | {closer(p)} | "
                f"{f(p['opt_minus_uno_mean'])} ± {f(p['opt_minus_uno_se'])} |"
            )
    (out / "results.md").write_text("\n".join(lines) + "\n")


# ---- main ---------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--test_file", nargs="*", default=None, help="JSONL files (default: the shared test sets)")
    p.add_argument("--limit", type=int, default=8, help="prompts per test file (built-in instructions: in all)")
    p.add_argument("--max_new_tokens", type=int, default=48)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds; every prompt runs once per seed")
    p.add_argument("--eps", type=float, nargs="+", default=list(DEFAULT_EPS))
    p.add_argument("--max_small_steps", type=int, default=4, help="fixed draft length per round")
    p.add_argument("--max_source_chars", type=int, default=600, help="truncate long sources (XSum documents)")
    p.add_argument("--methods", default="large,small,exact,uno,opt")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default=None, help="pair cache folder (default ~/.cache/bild/smollm2-pair)")
    p.add_argument("--out_dir", default=str(Path(__file__).resolve().parents[1] / "runs" / "yin_quality"))
    p.add_argument("--resume", action="store_true", help="keep outputs.jsonl and skip the units it has")
    p.add_argument("--smoke", action="store_true", help="~1 minute: 1 prompt per set, 12 tokens, eps 0.4")
    p.add_argument("--src", default=None, help="import bild from this folder instead of the checkout's src/")
    p.add_argument("--note", default="", help="free text for results.md (e.g. what --src holds)")
    a = p.parse_args(argv)
    if a.smoke:
        a.limit, a.max_new_tokens, a.eps = 1, 12, [0.4]
        if a.out_dir == p.get_default("out_dir"):
            a.out_dir = str(Path(a.out_dir) / "smoke")

    t_start = time.perf_counter()
    torch.set_num_threads(a.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    pr = load_pair(a.cache)
    tok, small, large = pr.tokenizer, pr.small, pr.large
    small.eval()
    large.eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = {int(tok.eos_token_id)}

    # ---- prompts ------------------------------------------------------------------------------
    files = a.test_file
    if files is None:
        d = shared_data_dir()
        files = [str(d / n / "test.jsonl") for n in DEFAULT_SETS if d and (d / n / "test.jsonl").exists()]
    examples = []  # (source name, prompt text)
    for fpath in files:
        task = task_for_file(fpath)
        for row in read_jsonl(fpath, a.limit):
            examples.append(
                (
                    Path(fpath).parent.name or Path(fpath).stem,
                    chat_prompt(tok, format_instruction(row["source"], task, a.max_source_chars)),
                )
            )
    if not examples:
        print("no test sets found (../shared/data absent): using the built-in general instructions", flush=True)
        n = 3 * a.limit
        examples = [("builtin", chat_prompt(tok, s)) for s in GENERAL_INSTRUCTIONS[:n]]
    # interleave the sets (translation, translation, summary, ...) so a partial run covers all of them
    by_src = defaultdict(list)
    for e in examples:
        by_src[e[0]].append(e)
    examples = [x for grp in zip(*by_src.values()) for x in grp] + [
        x for g in by_src.values() for x in g[min(map(len, by_src.values())) :]
    ]
    srcs = sorted(by_src)

    # ---- methods ------------------------------------------------------------------------------
    wanted = set(a.methods.split(","))
    skw = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=a.max_new_tokens, pad_token_id=pad)
    fixed = dict(fallback_threshold=0.0, max_small_steps=a.max_small_steps, verification="exact")
    methods = {}  # name -> (family, eps, callable(enc, max_new) -> (seqs, stats))

    def hf(model):
        return lambda enc, mnt: (model.generate(**enc, **{**skw, "max_new_tokens": mnt}), None)

    def bild(g):
        return lambda enc, mnt: (g.generate(**enc, **{**skw, "max_new_tokens": mnt}), g.stats)

    methods["large"] = ("large", None, hf(large))  # the time and quality reference: always run
    if "small" in wanted:
        methods["small"] = ("small", None, hf(small))
    if "exact" in wanted:
        methods["exact"] = ("exact", 0.0, bild(BiLDGenerator(small, large, **fixed)))
    for fam in ("uno", "opt"):
        if fam in wanted:
            for e in a.eps:
                g = BiLDGenerator(small, large, **fixed, **{f"{fam}_epsilon": e})
                methods[f"{fam} {e:g}"] = (fam, e, bild(g))
    names = list(methods)

    # ---- output files -------------------------------------------------------------------------
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jl = out / "outputs.jsonl"
    records = []
    if a.resume and jl.exists():
        records = [json.loads(x) for x in jl.read_text().splitlines() if x.strip()]
        print(f"resuming: {len(records)} records in {jl}", flush=True)
    elif jl.exists():
        jl.unlink()
    done = {(r["example"], r["seed"], r["method"]) for r in records}
    cmd = "python " + " ".join([os.path.relpath(__file__)] + list(sys.argv[1:] if argv is None else argv))
    meta = {
        "command": cmd,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_description(),
        "git": (
            f"imported from {Path(_bild.__file__).parent}; "
            + (git_state(Path(a.src).resolve().parent) if a.src else git_state(Path(__file__).resolve().parents[1]))
            + (f"; {a.note}" if a.note else "")
        ),
        "prompts": f"{len(examples)} ({', '.join(f'{s}: {len(by_src[s])}' for s in srcs)})",
        "seeds": a.seeds,
        "max_new_tokens": a.max_new_tokens,
        "max_small_steps": a.max_small_steps,
        "eps": a.eps,
        "threads": a.threads,
        "max_source_chars": a.max_source_chars,
        "methods": names,
    }
    units = [(i, s) for s in a.seeds for i in range(len(examples))]
    print(
        f"{len(examples)} prompts x {len(a.seeds)} seed(s) x {len(names)} methods ({', '.join(names)}), "
        f"max_new_tokens {a.max_new_tokens}, {torch.get_num_threads()} thread(s)",
        flush=True,
    )

    spy = WarperSpy()
    with torch.no_grad():
        # warm-up, untimed: every method once on the first prompt, a few tokens
        enc0 = tok(examples[0][1], return_tensors="pt", add_special_tokens=False)
        for name in names:
            torch.manual_seed(12345)
            methods[name][2](dict(**enc0), 6)
        if spy.calls:
            raise SystemExit(f"sampling warpers ran ({dict(spy.calls)}): top_k/top_p/temperature not neutral")

        for ui, (ex, seed) in enumerate(units):
            if all((ex, seed, n) in done for n in names):
                continue
            src, text = examples[ex]
            enc = tok(text, return_tensors="pt", add_special_tokens=False)
            width = enc.input_ids.shape[1]
            order = names[ui % len(names) :] + names[: ui % len(names)]
            line = []
            for name in order:
                if (ex, seed, name) in done:
                    continue
                fam, eps, fn = methods[name]
                torch.manual_seed(1_000_003 * seed + ex)
                t = time.perf_counter()
                seqs, st = fn(dict(**enc), a.max_new_tokens)
                dt = time.perf_counter() - t
                cont = continuation(seqs, width, eos)
                lls = large_loglik(large, enc.input_ids, cont)
                rec = {
                    "example": ex,
                    "seed": seed,
                    "source": src,
                    "method": name,
                    "family": fam,
                    "eps": eps,
                    "time_s": dt,
                    "n_tokens": len(cont),
                    "ll_sum": sum(lls),
                    "ll_mean": sum(lls) / len(lls) if lls else None,
                    "eos": bool(cont) and cont[-1] in eos,
                    "stats": None
                    if st is None
                    else {
                        k: getattr(st, k)
                        for k in (
                            "new_tokens",
                            "rounds",
                            "drafted",
                            "judged",
                            "accepted",
                            "rollbacks",
                            "fallbacks",
                            "large_forwards",
                            "small_forwards",
                        )
                    },
                    "text": tok.decode(cont, skip_special_tokens=True),
                }
                records.append(rec)
                with open(jl, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                line.append(f"{name}={dt:.1f}s/{rec['ll_mean'] if lls else float('nan'):.2f}")
            if spy.calls:
                raise SystemExit(f"sampling warpers ran ({dict(spy.calls)})")
            meta.update(runtime_s=time.perf_counter() - t_start, partial=ui + 1 < len(units))
            write_reports(out, summarize(records, names), meta, names)
            print(f"[{ui + 1}/{len(units)} {src} seed {seed}] " + " ".join(line), flush=True)
    spy.restore()

    meta.update(runtime_s=time.perf_counter() - t_start, partial=False, warper_calls=dict(spy.calls))
    summary = summarize(records, names)
    write_reports(out, summary, meta, names)
    print()
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.md, results.json, outputs.jsonl")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
