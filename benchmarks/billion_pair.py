"""A billion-parameter controlled pair in half precision: large greedy, bild at defaults, bild's fixed chains (the
best one reported), bild's tree drafts (where this bild has them), transformers' assisted generation at its defaults
and the cost-model optimum, side by side, interleaved, in ONE process.

    python benchmarks/billion_pair.py                          # CPU: ~1B pair, bf16, agreements 0.5/0.7/0.9, batch 1, 4
    python benchmarks/billion_pair.py --device cuda            # the GPU table: agreements 0.6/0.9, batch 1, 8 (< 8 min)
    python benchmarks/billion_pair.py --size tiny              # seconds, fp32 (the test suite runs this)
    python benchmarks/billion_pair.py --from results.jsonl     # re-print the tables of a finished or interrupted run

The pair (``bild.pairs.controlled.build_controlled_pair``, built from a config, nothing downloaded): a random Llama,
hidden 2048 x 16 layers, vocab 32000 (0.93B parameters), and a small model made of its first layer (sharing the
embeddings, final norm and LM head); the later layers are scaled until the greedy agreement on a few calibration
prompts is the target (calibration is kept cheap at this size: 4 prompts x 24 tokens, tolerance 0.04). Weights are
initialised in fp32 on the CPU (same weights on every device), then cast (bf16 by default at 1b). The measured
agreement on the benchmark prompts (the small model's argmax on large greedy's own continuation) is printed next to
the target.

Presets (``--preset``, default: ``gpu`` with ``--device cuda``, else ``cpu``; every flag below overrides them):

  cpu  agreements 0.5 0.7 0.9, batch 1 and 4, 3 prompts x 48 tokens, chains 2 3 4 6 8
  gpu  agreements 0.6 0.9,     batch 1 and 8, 4 prompts x 128 tokens, chains 2 4 6

Methods, per prompt in a rotating order after one untimed warm-up run of each (the warm-up is where bild's adaptive
default learns its costs and acceptance, as a user's first call would):

  large greedy              ``large.generate(do_sample=False)``: the reference time and output
  transformers assisted     ``large.generate(assistant_model=small)`` at transformers' defaults (batch 1 only:
                            transformers refuses larger batches)
  bild defaults             ``bild.BiLDGenerator(small, large)``
  bild chain k=K            ``BiLDGenerator(small, large, fallback_threshold=0, max_small_steps=K)``: fixed drafts of K
  bild tree k=K             ``BiLDGenerator(small, large, draft_tree=K)`` where this bild accepts ``draft_tree``;
                            "n/a (this bild has no tree drafts)" otherwise

Speedup: median over prompts of t(large greedy) / t(method), both measured in the same repetition. "identical": outputs
equal to large greedy's (in bf16 a verify pass and a single step may round a near-tie differently). Optimum:
``bild.analysis.cost_model.best_fixed_draft`` (the papers' expected tokens per round, Leviathan et al. Thm 3.8, with the
measured small-step cost and the measured cost of a verify pass of each width, ``measure_costs`` at the run's batch
size) at the agreement measured on the benchmark prompts; ``bild.expected_speedup`` (a verify pass priced as one
large step) at the same draft length is printed beside it.

Every measurement is appended to a JSONL file (``--out``) as it is taken, so an interrupted run loses nothing; the
tables are computed from that file (``--from`` re-prints them).
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import platform
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from controlled_pair import DTYPES, assistant_config, sync  # noqa: E402

import bild  # noqa: E402
from bild import BiLDGenerator, expected_speedup  # noqa: E402
from bild.analysis.cost_model import CostTable, best_fixed_draft, measure_costs  # noqa: E402
from bild.pairs.controlled import agreement_on, build_controlled_pair, make_prompts  # noqa: E402

PRESETS = {
    "cpu": dict(agreements=[0.5, 0.7, 0.9], batch_sizes=[1, 4], prompts=3, new_tokens=48, chains=[2, 3, 4, 6, 8]),
    "gpu": dict(agreements=[0.6, 0.9], batch_sizes=[1, 8], prompts=4, new_tokens=128, chains=[2, 4, 6]),
}
# model size -> build_controlled_pair arguments (and the dtype used unless --dtype says otherwise)
SIZES = {
    "tiny": dict(hidden=64, layers=4, vocab=512, calib_prompts=4, calib_new_tokens=24, tolerance=0.05, dtype="float32"),
    "1b": dict(
        hidden=2048, layers=16, vocab=32000, calib_prompts=4, calib_new_tokens=24, tolerance=0.04, dtype="bfloat16"
    ),
}
LARGE, ASSISTED, DEFAULTS = "large greedy", "transformers assisted", "bild defaults"
NO_TREE = "n/a (this bild has no tree drafts)"


def has_tree_drafts() -> bool:
    """Whether this bild's BiLDGenerator takes ``draft_tree`` (tree drafts)."""
    return "draft_tree" in inspect.signature(BiLDGenerator.__init__).parameters


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {torch.get_num_threads()} torch thread(s)"


# --------------------------------------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------------------------------------


def make_methods(small, large, batch: int, chains, trees):
    """(name -> callable(x, **kw) -> output ids, name -> reason it is not run)."""
    methods = {LARGE: lambda x, **kw: large.generate(x, **kw)}
    missing = {}
    if batch == 1:

        def assisted(x, **kw):
            with assistant_config(small, None):  # defaults, restored after each call (its schedule mutates them)
                return large.generate(x, assistant_model=small, **kw)

        methods[ASSISTED] = assisted
    else:
        missing[ASSISTED] = "n/a (transformers: batch 1 only)"
    gens = {DEFAULTS: BiLDGenerator(small, large)}
    gens.update(
        {f"bild chain k={k}": BiLDGenerator(small, large, fallback_threshold=0.0, max_small_steps=k) for k in chains}
    )
    for k in trees:
        name = f"bild tree k={k}"
        if not has_tree_drafts():
            missing[name] = NO_TREE
            continue
        try:
            gens[name] = BiLDGenerator(small, large, draft_tree=k)
        except (ValueError, NotImplementedError) as e:
            missing[name] = f"n/a ({e})"
    for name, g in gens.items():
        methods[name] = (lambda g: lambda x, **kw: g.generate(x, **kw))(g)
    return methods, gens, missing


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def run_block(small, large, info, target, batch, args, device, emit, log):
    """One (agreement, batch size): the cost table, then every method on every prompt, interleaved."""
    kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    key = dict(target=target, batch=batch)
    lens = sorted({1, 2, 3, 4, 5} | {k + 1 for k in args.chains})
    t0 = time.perf_counter()
    costs = measure_costs(
        small,
        large,
        prompt_len=args.prompt_len,
        new_tokens=args.new_tokens,
        batch_size=batch,
        repeats=args.cost_repeats,
        warmup=1,
        forward_lens=lens,
        prefill_lens=[args.prompt_len],
    )
    emit(dict(type="costs", **key, costs=costs.as_dict(), seconds=time.perf_counter() - t0))
    log(
        f"  batch {batch}: cost table in {time.perf_counter() - t0:.0f}s: small step {costs.small(1) * 1e3:.1f} ms, "
        f"large step {costs.large(1) * 1e3:.1f} ms, verify of {lens[-1]} tokens {costs.large(lens[-1]) * 1e3:.1f} ms"
    )

    methods, gens, missing = make_methods(small, large, batch, args.chains, args.trees)
    prompts = make_prompts(
        info.vocab, args.prompts + 1, args.prompt_len, batch_size=batch, seed=args.seed + 1, device=device
    )
    warm, prompts = prompts[0], prompts[1:]
    for name in list(methods):  # warm-up, untimed; a method this bild refuses here is reported, not run
        try:
            methods[name](warm, attention_mask=torch.ones_like(warm), **kw)
        except (ValueError, NotImplementedError) as e:
            if name == LARGE:
                raise
            missing[name] = f"n/a ({e})"
            del methods[name]
    for name, reason in missing.items():
        emit(dict(type="missing", **key, method=name, reason=reason))
    names = list(methods)
    continuations = []
    for i, x in enumerate(prompts):
        order = names[i % len(names) :] + names[: i % len(names)]
        outs, times = {}, {}
        for name in order:
            times[name], outs[name] = timed(lambda: methods[name](x, attention_mask=torch.ones_like(x), **kw), device)
        ref = outs[LARGE]
        continuations.append((x, ref[:, x.shape[1] :]))
        for name in names:
            rec = dict(
                type="run",
                **key,
                prompt=i,
                method=name,
                seconds=times[name],
                identical=bool(torch.equal(outs[name], ref)),
                tokens=args.new_tokens * batch,
            )
            if name in gens:
                st = gens[name].stats
                rec.update(
                    tokens_per_large_call=st.tokens_per_large_call,
                    acceptance=st.acceptance_rate,
                    draft_length=(st.policy or {}).get("draft_length"),
                )
            emit(rec)
        log(f"    prompt {i}: " + ", ".join(f"{n} {times[LARGE] / times[n]:.2f}x" for n in names if n != LARGE))
    agree = statistics.mean(agreement_on(small, x, c) for x, c in continuations)
    emit(dict(type="agreement", **key, agreement=agree))


def run(args, emit, log):
    device = torch.device(args.device)
    size = SIZES[args.size]
    dtype = DTYPES[args.dtype or size["dtype"]]
    build = {k: v for k, v in size.items() if k != "dtype"}
    t_all = time.perf_counter()
    for target in args.agreements:
        t0 = time.perf_counter()
        small, large, info = build_controlled_pair(
            "llama", target, device=device, dtype=dtype, seed=args.seed, max_iters=args.calib_iters, **build
        )
        build_s = time.perf_counter() - t0
        params = sum(p.numel() for p in large.parameters())
        small_params = sum(p.numel() for p in small.parameters())
        emit(
            dict(
                type="pair",
                target=target,
                info=info.as_dict(),
                build_seconds=build_s,
                large_params=params,
                small_params=small_params,
            )
        )
        log(
            f"agreement {target}: pair built and calibrated in {build_s:.0f}s ({len(info.history)} calibration "
            f"rounds; alpha {info.alpha:.4g}, calibration agreement {info.agreement:.3f}, "
            f"{'converged' if info.converged else 'NOT converged'})"
        )
        for batch in args.batch_sizes:
            run_block(small, large, info, target, batch, args, device, emit, log)
            log(f"  elapsed {time.perf_counter() - t_all:.0f}s")
        del small, large
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    emit(dict(type="done", seconds=time.perf_counter() - t_all))


# --------------------------------------------------------------------------------------------------------------------
# the tables (from the records alone, so that a saved file re-prints them)
# --------------------------------------------------------------------------------------------------------------------


def summarise(records):
    """Per (target, batch): method -> dict(speedup, identical, n, ms_per_token, ...), plus costs, agreement."""
    blocks = {}
    for r in records:
        if r["type"] not in ("run", "missing", "costs", "agreement"):
            continue
        b = blocks.setdefault((r["target"], r["batch"]), dict(runs={}, missing={}, costs=None, agreement=None))
        if r["type"] == "run":
            b["runs"].setdefault(r["method"], {})[r["prompt"]] = r
        elif r["type"] == "missing":
            b["missing"][r["method"]] = r["reason"]
        elif r["type"] == "costs":
            b["costs"] = CostTable.from_dict(r["costs"])
        else:
            b["agreement"] = r["agreement"]
    out = {}
    for key, b in blocks.items():
        base = b["runs"].get(LARGE, {})
        rows = {}
        for name, by_prompt in b["runs"].items():
            done = [p for p in by_prompt if p in base]  # prompts whose large greedy run finished too
            if not done:
                continue
            runs = [by_prompt[p] for p in done]
            rows[name] = dict(
                speedup=statistics.median(base[p]["seconds"] / by_prompt[p]["seconds"] for p in done),
                identical=sum(r["identical"] for r in runs),
                n=len(runs),
                ms_per_token=1e3 * statistics.median(r["seconds"] / r["tokens"] for r in runs),
                tokens_per_large_call=(
                    statistics.mean(r["tokens_per_large_call"] for r in runs)
                    if "tokens_per_large_call" in runs[0]
                    else None
                ),
                draft_length=runs[-1].get("draft_length"),
            )
        opt = None
        if b["costs"] is not None and b["agreement"] is not None:
            a = min(b["agreement"], 0.999)
            max_gamma = max(b["costs"].large_forward) - 1
            best = best_fixed_draft(b["costs"], a, max_gamma=max_gamma)
            opt = dict(best, flat_verify=expected_speedup(a, best["gamma"], b["costs"].cost_ratio))
        out[key] = dict(rows=rows, missing=b["missing"], agreement=b["agreement"], optimum=opt)
    return out


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def _best(rows, prefix):
    named = [(r["speedup"], n) for n, r in rows.items() if n.startswith(prefix)]
    return max(named) if named else None


def _cell(rows, missing, name, with_name=False):
    if name in rows:
        r = rows[name]
        tag = f" {name.rsplit(' ', 1)[-1]}" if with_name else ""
        return f"{r['speedup']:.2f}x{tag} ({r['identical']}/{r['n']})"
    return missing.get(name, "not run")


def tables(records) -> str:
    """The markdown the run prints: a header naming the conditions, the summary table, every method, the targets."""
    meta = next((r for r in records if r["type"] == "meta"), {})
    pairs = {r["target"]: r for r in records if r["type"] == "pair"}
    a = meta.get("args", {})
    lines = []
    if meta:
        p = next(iter(pairs.values()), None)
        size = (
            f"Llama hidden {p['info']['hidden']} x {p['info']['layers']} layers, vocab {p['info']['vocab']}: "
            f"large {_count(p['large_params'])} parameters, small (layer 1 + the shared embeddings, norm and "
            f"head) {_count(p['small_params'])}"
            if p
            else ""
        )
        lines += [
            f"Device: **{meta['device_name']}** ({meta['device']}); {meta['dtype']}; torch {meta['torch']}, "
            f"transformers {meta['transformers']}, bild {meta['bild']}; {meta['date']}",
            f"Command: `{meta['command']}`",
            f"Pair: {size}; {a.get('prompts')} prompt(s) of {a.get('prompt_len')} tokens x "
            f"{a.get('new_tokens')} new tokens per row, greedy; ms/token = wall time per generated token, all "
            f"rows; methods interleaved per prompt after one warm-up each; speedup = median over prompts of "
            f"t(large greedy) / t(method); (k/n) = outputs identical to large greedy's.",
            "",
        ]
        if pairs:
            lines.append(
                "Build (init + calibration) per pair: "
                + ", ".join(f"{t}: {r['build_seconds']:.0f}s" for t, r in pairs.items())
            )
            lines.append("")
    summary = summarise(records)
    trees = meta.get("tree_available", has_tree_drafts())
    lines += [
        "| agreement (target / measured) | batch | large greedy ms/token | bild defaults | best fixed chain "
        "| bild tree | transformers assisted | optimum (measured costs) | defaults / best chain "
        "| defaults / assisted |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    checks = []
    for (target, batch), s in summary.items():
        rows, missing = s["rows"], s["missing"]
        measured = f"{s['agreement']:.2f}" if s["agreement"] is not None else "?"
        large = f"{rows[LARGE]['ms_per_token']:.1f}" if LARGE in rows else "?"
        chain, tree = _best(rows, "bild chain"), _best(rows, "bild tree")
        chain_cell = _cell(rows, missing, chain[1], with_name=True) if chain else "not run"
        if tree:
            tree_cell = _cell(rows, missing, tree[1], with_name=True)
        else:
            tree_cell = next(
                (v for n, v in missing.items() if n.startswith("bild tree")), NO_TREE if not trees else "not run"
            )
        opt = s["optimum"]
        opt_cell = f"{opt['speedup']:.2f}x at k={opt['gamma']} (flat verify {opt['flat_verify']:.2f}x)" if opt else "?"
        d = rows.get(DEFAULTS, {}).get("speedup")
        vs_chain = f"{d / chain[0]:.2f}" if d and chain else "n/a"
        vs_assisted = f"{d / rows[ASSISTED]['speedup']:.2f}" if d and ASSISTED in rows else "n/a"
        lines.append(
            f"| {target:.2f} / {measured} | {batch} | {large} | {_cell(rows, missing, DEFAULTS)} | "
            f"{chain_cell} | {tree_cell} | {_cell(rows, missing, ASSISTED)} | {opt_cell} | {vs_chain} | "
            f"{vs_assisted} |"
        )
        if d:
            c = []
            if chain:
                c.append(f"defaults / best chain {vs_chain} (>= 0.95: {'yes' if d / chain[0] >= 0.95 else 'no'})")
            if ASSISTED in rows:
                ok = d / rows[ASSISTED]["speedup"] >= 1.15
                c.append(f"defaults / assisted {vs_assisted} (>= 1.15: {'yes' if ok else 'no'})")
            weak_ok = "yes" if d >= 0.95 else "no"
            c.append(f"defaults / large greedy {d:.2f} (>= 0.95 where the draft is weak: {weak_ok})")
            checks.append(f"- agreement {target:.2f}, batch {batch}: " + "; ".join(c))
    lines += [
        "",
        "| agreement | batch | method | speedup | identical | ms/token | tokens per large call "
        "| draft length (last call) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (target, batch), s in summary.items():
        for name, r in s["rows"].items():
            tpc = f"{r['tokens_per_large_call']:.2f}" if r["tokens_per_large_call"] is not None else ""
            dl = "" if r["draft_length"] is None else str(r["draft_length"])
            lines.append(
                f"| {target:.2f} | {batch} | {name} | {r['speedup']:.2f}x | {r['identical']}/{r['n']} | "
                f"{r['ms_per_token']:.2f} | {tpc} | {dl} |"
            )
        for name, reason in s["missing"].items():
            lines.append(f"| {target:.2f} | {batch} | {name} | {reason} | | | | |")
    if checks:
        lines += ["", "Targets (issue 34):"] + checks
    done = next((r for r in records if r["type"] == "done"), None)
    lines += ["", f"Total {done['seconds']:.0f}s." if done else "(run not finished: the tables show what was measured)"]
    return "\n".join(lines)


def read_records(path) -> list[dict]:
    """The records of a JSONL file; a last line cut short by an interrupted write is skipped."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise
    return records


# --------------------------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------------------------


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", choices=sorted(SIZES), default="1b")
    ap.add_argument("--preset", choices=sorted(PRESETS), help="default: gpu with --device cuda, else cpu")
    ap.add_argument("--agreements", type=float, nargs="+")
    ap.add_argument("--batch-sizes", "--batch_sizes", dest="batch_sizes", type=int, nargs="+")
    ap.add_argument("--prompts", type=int)
    ap.add_argument("--new-tokens", "--new_tokens", dest="new_tokens", type=int)
    ap.add_argument("--prompt-len", "--prompt_len", dest="prompt_len", type=int, default=16)
    ap.add_argument("--chains", type=int, nargs="+", help="fixed draft lengths swept (the best is reported)")
    ap.add_argument(
        "--trees",
        type=int,
        nargs="+",
        default=[2],
        help="tree branchings k (draft_tree=k) run where this bild has tree drafts",
    )
    ap.add_argument("--dtype", choices=sorted(DTYPES), help="default: bfloat16 at 1b, float32 at tiny")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--calib-iters",
        "--calib_iters",
        dest="calib_iters",
        type=int,
        default=8,
        help="bisection steps of the agreement calibration at most",
    )
    ap.add_argument("--cost-repeats", "--cost_repeats", dest="cost_repeats", type=int, default=5)
    ap.add_argument(
        "--out", help="JSONL file the records are appended to (default: billion_pair_<device>_<time>.jsonl)"
    )
    ap.add_argument("--from", dest="from_file", help="print the tables of this JSONL file and exit")
    args = ap.parse_args(argv)
    preset = PRESETS[args.preset or ("gpu" if torch.device(args.device).type == "cuda" else "cpu")]
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    for name in ("prompts", "new_tokens", "prompt_len", "cost_repeats", "calib_iters"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    if min(args.batch_sizes) < 1 or min(args.chains) < 1 or min(args.trees) < 1:
        raise SystemExit("--batch-sizes, --chains and --trees must be >= 1")
    if not all(0 < a <= 1 for a in args.agreements):
        raise SystemExit("--agreements must be in (0, 1]")
    return args


def main(argv=None) -> str:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.from_file:
        text = tables(read_records(args.from_file))
        print(text)
        return text
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    warnings.simplefilter("ignore")
    device = torch.device(args.device)
    out = Path(args.out or f"billion_pair_{device.type}_{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
    records = []

    def emit(rec):
        records.append(rec)
        with out.open("a") as f:
            f.write(json.dumps(rec, default=str) + "\n")

    def log(s):
        print(s, flush=True)

    argv_used = sys.argv[1:] if argv is None else list(argv)
    emit(
        dict(
            type="meta",
            device=str(device),
            device_name=device_name(device),
            dtype=args.dtype or SIZES[args.size]["dtype"],
            torch=torch.__version__,
            transformers=transformers.__version__,
            bild=bild.__version__,
            date=time.strftime("%Y-%m-%d %H:%M"),
            command=shlex.join(["python", "benchmarks/billion_pair.py", *argv_used]),
            args=vars(args),
            tree_available=has_tree_drafts(),
        )
    )
    log(f"writing records to {out}")
    run(args, emit, log)
    text = tables(records)
    print("\n" + text)
    return text


if __name__ == "__main__":
    main()
