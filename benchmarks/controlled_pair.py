"""Engine speed on a controlled-agreement pair: large greedy vs transformers' assisted generation
vs bild (exact speculative decoding and BiLD), side by side in ONE process.

    python benchmarks/controlled_pair.py --agreement 0.9                    # llama, batch 1 and 8
    python benchmarks/controlled_pair.py --agreement 0.77 --batch_size 1
    python benchmarks/controlled_pair.py --agreement 0.4 --family t5 --hidden 256 --layers 8
    python benchmarks/controlled_pair.py --agreement 0.9 --device cuda --dtype bfloat16

The pair (``bild.pairs.controlled.build_controlled_pair``) is a random Llama-like (or T5) large model and
a small model made of its first layer, with the large model's later layers scaled so that the
greedy agreement between the two is the requested value (measured, and printed, on the
calibration prompts and on the benchmark prompts).  Prompts are random token ids; every method
generates exactly ``--new_tokens`` tokens (EOS is disabled).

Methods (interleaved per prompt, the order rotating from prompt to prompt, after one untimed
warm-up run of each):

  large greedy       ``large.generate(do_sample=False)``: the reference output and time
  assisted default   ``large.generate(assistant_model=small)`` with transformers' defaults
  assisted tuned     the same with ``num_assistant_tokens`` / schedule / ``assistant_confidence_threshold``
                     picked over a small grid on separate tuning prompts (fastest median)
  bild exact         ``bild.BiLDGenerator(small, large, verification="exact")``, default thresholds
  bild BiLD          ``bild.BiLDGenerator(small, large, verification="rollback")``, default thresholds
  bild exact/BiLD tuned  the same with ``max_small_steps`` picked over ``BILD_GRID`` on the tuning prompts
                     (at the benchmark's batch size; fastest median), as assisted generation is tuned;
                     skipped with ``--no_tune_bild``

Columns:

  speedup     median over prompts of t(large greedy) / t(method)
  fwd%        share of the measured time spent inside model forwards, timed by hooks in the same run
              (CPU only; the complement is what the method does around its forwards)
  eff         engine efficiency: the time the method's model calls alone would take (cost model:
              ``bild.analysis.cost_model``; forwards timed with caches in place, median of repeats) over the
              measured time, median over prompts.  bild: predicted from ``gen.stats``; the
              transformers methods: from the forwards seen by forward hooks
  tok/call    new tokens per row per large-model forward (prefill included; hooks; a forward over B rows
              counts B times)
  small/call  small-model forwards per large-model forward (hooks, counted the same way)
  identical   outputs equal to large greedy on k of n prompts
  ms/tok      median wall time per generated token and row

At batch size > 1, transformers' assisted generation is not available (n/a) and the reference is
batched large greedy.  Families that bild decodes row by row (``bild.adapters.batch_layout``: BART-like
encoder-decoders, sliding-window models) are accounted for with batch-1 decoder costs; T5 batches are
batched ("aligned" layout).

CPU timings on a shared machine are noisy: the script uses ``--threads`` (default 1) torch
threads, which on a loaded 2-core machine is much more stable than 2.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bild.adapters import batch_layout  # noqa: E402
from bild.analysis.cost_model import CallRecord, ForwardCounter, best_fixed_draft, measure_costs, predict_time  # noqa: E402
from bild.pairs.controlled import build_controlled_pair, make_prompts, measure_agreement  # noqa: E402

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

# (num_assistant_tokens, num_assistant_tokens_schedule, assistant_confidence_threshold)
TUNING_GRID = [(k, "constant", thr) for k in (3, 5, 8, 12) for thr in (0.0, 0.2, 0.4)] + [
    (5, "heuristic", 0.0),
    (5, "heuristic", 0.4),
]
BILD_GRID = (2, 3, 4, 6, 10, 16)  # max_small_steps


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@contextmanager
def assistant_config(small, setting):
    """Apply an assisted-generation setting to the assistant's generation config, restore it after.

    ``setting=None`` is transformers' default (whatever the assistant's config says; a pristine copy
    is restored after every call so that no state leaks between calls)."""
    saved = copy.deepcopy(small.generation_config)
    try:
        if setting is not None:
            k, schedule, thr = setting
            small.generation_config.num_assistant_tokens = k
            small.generation_config.num_assistant_tokens_schedule = schedule
            small.generation_config.assistant_confidence_threshold = thr
        yield
    finally:
        small.generation_config = saved


def label(setting):
    if setting is None:
        return "default"
    k, schedule, thr = setting
    return f"k={k},{schedule},thr={thr:g}"


class Runner:
    """Runs one method on one prompt batch; returns (seconds, output, CallRecord, engine stats)."""

    def __init__(self, small, large, args, device):
        from bild import BiLDGenerator

        self.small, self.large, self.args, self.device = small, large, args, device
        self.gens = {
            "bild exact": BiLDGenerator(small, large, verification="exact"),
            "bild BiLD": BiLDGenerator(small, large, verification="rollback"),
        }
        self.counter = ForwardCounter(small=small, large=large)
        # in-run forward timing (CPU only: on CUDA the synchronisations it needs would change the run)
        self.timer = ForwardTimer(device, small, large) if torch.device(device).type == "cpu" else None
        self.tuned = None

    def fwd_time(self):
        return self.timer.total if self.timer is not None else float("nan")

    def remove(self):
        self.counter.remove()
        if self.timer is not None:
            self.timer.remove()

    def kwargs(self, x):
        kw = dict(max_new_tokens=self.args.new_tokens, min_new_tokens=self.args.new_tokens, do_sample=False)
        kw["attention_mask"] = torch.ones_like(x)
        return kw

    def run(self, method, x):
        kw = self.kwargs(x)
        self.counter.reset()
        if self.timer is not None:
            self.timer.total = 0.0
        stats = None
        sync(self.device)
        if method == "large greedy":
            t0 = time.perf_counter()
            out = self.large.generate(x, **kw)
        elif method.startswith("assisted"):
            setting = self.tuned if method == "assisted tuned" else None
            with assistant_config(self.small, setting):
                t0 = time.perf_counter()
                out = self.large.generate(x, assistant_model=self.small, **kw)
                sync(self.device)
                dt = time.perf_counter() - t0
            return dt, out, self.counter.record(), None
        else:
            gen = self.gens[method]
            t0 = time.perf_counter()
            out = gen.generate(x, **kw)
            sync(self.device)
            dt = time.perf_counter() - t0
            return dt, out, self.counter.record(), copy.deepcopy(gen.stats)
        sync(self.device)
        return time.perf_counter() - t0, out, self.counter.record(), stats


def predicted(method, rec: CallRecord, stats, costs, costs_row, row_by_row, batch):
    """Cost-model time of one run.  bild: from its stats; transformers: from the hook record."""
    if stats is not None:
        if row_by_row:
            # a family bild decodes row by row: batch-1 decoder calls, one batched encoder pass per model
            dec = predict_time(stats, costs_row, small_prefills=batch, large_prefills=batch, encoder_calls=(0, 0))
            return dec + costs.small_encoder + costs.large_encoder
        return predict_time(stats, costs)
    return predict_time(rec, costs)


def tune_assisted(runner, prompts, base, log):
    """Pick the fastest assisted setting (median time ratio to large greedy, whose times on the tuning
    prompts are `base`)."""
    best = None
    results = []
    for setting in [None] + TUNING_GRID:
        runner.tuned = setting
        ratios = []
        for i, x in enumerate(prompts):
            dt = runner.run("assisted tuned", x)[0]
            ratios.append(base[i] / dt)
        sp = statistics.median(ratios)
        results.append((label(setting), sp))
        if best is None or sp > best[1]:
            best = (setting, sp)
    runner.tuned = best[0]
    log(f"assisted tuning on {len(prompts)} prompt(s): " + ", ".join(f"{n}: {s:.2f}x" for n, s in results))
    log(f"assisted tuned setting: {label(best[0])}")
    return results


def tune_bild(runner, prompts, base, log):
    """Pick the fastest ``max_small_steps`` of BILD_GRID for each verification rule (median time ratio to
    large greedy, whose times on the tuning prompts are `base`); adds "bild exact tuned" and "bild BiLD
    tuned" to the runner."""
    from bild import BiLDGenerator

    picked = {}
    for name, verification in (("bild exact", "exact"), ("bild BiLD", "rollback")):
        results = []
        for k in BILD_GRID:
            runner.gens["grid"] = BiLDGenerator(
                runner.small, runner.large, verification=verification, max_small_steps=k
            )
            ratios = [b / runner.run("grid", x)[0] for b, x in zip(base, prompts)]
            results.append((k, statistics.median(ratios)))
        k = max(results, key=lambda kv: kv[1])[0]
        runner.gens[f"{name} tuned"] = BiLDGenerator(
            runner.small, runner.large, verification=verification, max_small_steps=k
        )
        picked[f"{name} tuned"] = f"max_small_steps={k}; "
        log(
            f"{name} tuning on {len(prompts)} prompt(s): "
            + ", ".join(f"max_small_steps={k}: {sp:.2f}x" for k, sp in results)
            + f" -> {k}"
        )
    runner.gens.pop("grid", None)
    return picked


def run_batch(small, large, info, args, batch, device, log):
    is_ed = bool(large.config.is_encoder_decoder)
    prompts = make_prompts(
        info.vocab, args.prompts, args.prompt_len, batch_size=batch, seed=args.seed + 1, device=device
    )
    bench_agree = measure_agreement(small, large, prompts if batch == 1 else [p[:1] for p in prompts], args.new_tokens)
    t0 = time.perf_counter()
    costs = measure_costs(
        small,
        large,
        prompt_len=args.prompt_len,
        new_tokens=args.new_tokens,
        batch_size=batch,
        max_verify=12,
        repeats=args.cost_repeats,
    )
    row_by_row = is_ed and batch > 1 and batch_layout(large) == "rows"
    costs_row = (
        costs
        if not row_by_row
        else measure_costs(
            small,
            large,
            prompt_len=args.prompt_len,
            new_tokens=args.new_tokens,
            batch_size=1,
            max_verify=12,
            repeats=args.cost_repeats,
        )
    )
    log(
        f"\n== batch {batch}: {args.prompts} prompts x {args.new_tokens} new tokens; greedy agreement on these "
        f"prompts {bench_agree:.3f}; cost table in {time.perf_counter() - t0:.1f}s: small step "
        f"{costs.small(1) * 1e3:.2f} ms, large step {costs.large(1) * 1e3:.2f} ms, large verify(11) "
        f"{costs.large(11) * 1e3:.2f} ms, c = {costs.cost_ratio:.3f}"
    )

    costs_ref = costs
    runner = Runner(small, large, args, device)
    methods = ["large greedy", "bild exact", "bild BiLD"]
    tune_assisted_here = batch == 1 and not args.no_assisted
    picked = {}
    if tune_assisted_here or not args.no_tune_bild:
        tune_prompts = make_prompts(
            info.vocab, args.tune_prompts, args.prompt_len, batch_size=batch, seed=args.seed + 2, device=device
        )
        base = [runner.run("large greedy", x)[0] for x in tune_prompts]
        if tune_assisted_here:
            methods[1:1] = ["assisted default", "assisted tuned"]
            tune_assisted(runner, tune_prompts, base, log)
        if not args.no_tune_bild:
            picked = tune_bild(runner, tune_prompts, base, log)
            methods += list(picked)
    warm = make_prompts(info.vocab, 1, args.prompt_len, batch_size=batch, seed=args.seed + 3, device=device)[0]
    for m in methods:
        runner.run(m, warm)

    rows = {
        m: dict(
            time=[], pred=[], eff=[], out=[], calls=[], small=[], stats=[], check=[], fwd=[], row_calls=[], row_small=[]
        )
        for m in methods
    }
    quick = dict(
        prompt_len=args.prompt_len,
        new_tokens=args.new_tokens,
        max_verify=12,
        forward_lens=[1, 2, 3, 5, 8, 12],
        repeats=args.cost_repeats_per_prompt,
        warmup=1,
    )
    for i, x in enumerate(prompts):
        order = methods[i % len(methods) :] + methods[: i % len(methods)]
        if args.cost_mode == "interleaved":
            # a quick cost table measured next to this prompt's runs, so that machine load drifting
            # between the table and the runs does not show up as (in)efficiency
            costs = measure_costs(small, large, batch_size=batch, **quick)
            if row_by_row:
                costs_row = measure_costs(small, large, batch_size=1, **quick)
            else:
                costs_row = costs
        for m in order:
            dt, out, rec, stats = runner.run(m, x)
            rows[m]["fwd"].append(runner.fwd_time() / dt)
            # row-calls: a batched forward over B rows counts B (bild runs encoder-decoder batches row by row)
            rows[m]["row_calls"].append(
                sum(c.batch for c in runner.counter.calls if c.model == "large" and c.kind != "encoder")
            )
            rows[m]["row_small"].append(
                sum(c.batch for c in runner.counter.calls if c.model == "small" and c.kind != "encoder")
            )
            r = rows[m]
            r["time"].append(dt)
            r["out"].append(out)
            r["calls"].append(rec.large_forwards)
            r["small"].append(rec.small_forwards)
            p = predicted(m, rec, stats, costs, costs_row, row_by_row, batch)
            r["pred"].append(p)
            r["eff"].append(p / dt)
            if stats is not None:
                r["stats"].append(stats.as_dict())
                # the engine's own counters against what the hooks saw
                r["check"].append(
                    stats.small_forwards == rec.small_forwards
                    and stats.large_forwards == rec.large_forwards
                    and list(stats.verify_widths) == list(rec.verify_lengths)
                )
    runner.remove()

    ref = rows["large greedy"]
    table = []
    new_tok = args.new_tokens
    for m in methods:
        r = rows[m]
        speed = statistics.median(t0 / t1 for t0, t1 in zip(ref["time"], r["time"]))
        same = sum(torch.equal(a, b) for a, b in zip(ref["out"], r["out"]))
        table.append(
            dict(
                method=m,
                setting=label(runner.tuned) if m == "assisted tuned" else picked.get(m, ""),
                speedup=speed,
                efficiency=statistics.median(r["eff"]),
                forward_share=statistics.median(r["fwd"]),
                tokens_per_large_call=new_tok * batch * len(prompts) / sum(r["row_calls"]),
                small_per_large_call=sum(r["row_small"]) / sum(r["row_calls"]),
                large_forwards=sum(r["calls"]) / len(prompts),
                identical=f"{same}/{len(prompts)}",
                ms_per_token=statistics.median(r["time"]) / new_tok * 1e3,
                predicted_ms=statistics.median(r["pred"]) * 1e3,
                measured_ms=statistics.median(r["time"]) * 1e3,
                stats_match_hooks=(all(r["check"]) if r["check"] else None),
                acceptance=(
                    sum(s["accepted"] for s in r["stats"]) / max(1, sum(s["drafted"] for s in r["stats"]))
                    if r["stats"]
                    else None
                ),
            )
        )
    if batch > 1 and not args.no_assisted:
        table.insert(1, dict(method="assisted (any)", setting="n/a: transformers supports batch 1 only"))
    print_table(table, log)
    from bild import expected_speedup

    bound = best_fixed_draft(costs_ref, bench_agree)
    log(
        f"cost-model ceiling for greedy speculative decoding with a fixed draft length at agreement "
        f"{bench_agree:.3f}: gamma={bound['gamma']}, {bound['tokens_per_round']:.2f} tokens/round, "
        f"{bound['speedup']:.2f}x over large steps (bild.expected_speedup, which takes a verify pass to cost one "
        f"large step: {expected_speedup(min(bench_agree, 0.999), bound['gamma'], costs_ref.cost_ratio):.2f}x)"
    )
    return dict(batch=batch, benchmark_agreement=bench_agree, costs=costs_ref.as_dict(), table=table, ceiling=bound)


def print_table(table, log):
    head = (
        f"{'method':<17} {'speedup':>7} {'eff':>5} {'fwd%':>5} {'tok/call':>8} {'small/call':>10} {'identical':>9} "
        f"{'ms/tok':>7} {'pred ms':>8} {'meas ms':>8}  notes"
    )
    log(head)
    log("-" * len(head))
    for t in table:
        if "speedup" not in t:
            log(
                f"{t['method']:<17} {'n/a':>7} {'n/a':>5} {'n/a':>5} {'n/a':>8} {'n/a':>10} {'n/a':>9} {'':>7} {'':>8} {'':>8}  "
                f"{t['setting']}"
            )
            continue
        notes = t["setting"]
        if t["acceptance"] is not None:
            notes += f"acceptance {t['acceptance']:.2f}"
        if t["stats_match_hooks"] is False:
            notes += " STATS != HOOKS"
        log(
            f"{t['method']:<17} {t['speedup']:>6.2f}x {t['efficiency']:>5.2f} {t['forward_share']:>5.0%} "
            f"{t['tokens_per_large_call']:>8.2f} "
            f"{t['small_per_large_call']:>10.2f} {t['identical']:>9} {t['ms_per_token']:>7.2f} "
            f"{t['predicted_ms']:>8.1f} {t['measured_ms']:>8.1f}  {notes}"
        )


class ForwardTimer:
    """Wall time spent inside the top-level forwards (and encoders) of the given models."""

    def __init__(self, device, *models):
        self.device, self.total, self._t0, self._handles = device, 0.0, [], []
        mods = []
        for m in models:
            mods.append(m)
            if m.config.is_encoder_decoder and all(m.get_encoder() is not x for x in mods):
                mods.append(m.get_encoder())
        for m in mods:
            self._handles.append(m.register_forward_pre_hook(self._pre))
            self._handles.append(m.register_forward_hook(self._post))

    def _pre(self, *_):
        sync(self.device)
        self._t0.append(time.perf_counter())

    def _post(self, *_):
        sync(self.device)
        self.total += time.perf_counter() - self._t0.pop()

    def remove(self):
        for h in self._handles:
            h.remove()


class _Exclusive:
    """Exclusive wall time per wrapped function; model forwards (hooks) count as their own entry."""

    def __init__(self):
        self.stack, self.excl, self.calls, self._undo = [], {}, {}, []

    def enter(self, name):
        self.stack.append([name, time.perf_counter(), 0.0])

    def leave(self):
        name, t0, child = self.stack.pop()
        el = time.perf_counter() - t0
        self.excl[name] = self.excl.get(name, 0.0) + el - child
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.stack:
            self.stack[-1][2] += el

    def wrap(self, owner, attr, name):
        import functools
        import inspect

        raw = inspect.getattr_static(owner, attr)
        if isinstance(raw, staticmethod):
            return  # not worth the special case
        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def wrapper(*a, **k):
            self.enter(name)
            try:
                return fn(*a, **k)
            finally:
                self.leave()

        setattr(owner, attr, wrapper)
        self._undo.append((owner, attr, raw))

    def unwrap(self):
        for owner, attr, raw in reversed(self._undo):
            setattr(owner, attr, raw)
        self._undo.clear()


def profile(small, large, info, args, device, log):
    """Where the engine's own time goes: exclusive wall time of the engine's functions (wrapped at run
    time, nothing edited), model forwards timed by hooks and excluded."""
    from transformers.generation.utils import GenerationMixin

    import bild
    import bild.acceptance as acceptance
    import bild.adapters as adapters
    import bild.batch as batch_state
    import bild.decoding as decoding
    import bild.generator as generator
    import bild.proposers as proposers
    import bild.scoring as scoring

    batch = args.batch_size[0]
    prompts = make_prompts(
        info.vocab, args.prompts, args.prompt_len, batch_size=batch, seed=args.seed + 1, device=device
    )
    kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    for method in args.profile:
        ex = _Exclusive()
        ex.wrap(GenerationMixin, "generate", "transformers generate (set-up)")
        ex.wrap(generator, "generate", "bild.generator.generate")
        ex.wrap(generator.BiLDGenerator, "generate", "BiLDGenerator.generate")
        for owner, names in (
            (decoding.DraftVerifyLoop, ("run", "_round", "_accept", "_commit", "_choose")),
            (proposers.ModelProposer, ("propose", "_draft", "settle")),
            (proposers.PromptLookupProposer, ("propose", "settle")),
            (scoring.Scorer, ("prefill", "score")),
            (batch_state.CacheReader, ("catch_up", "keep", "even_out")),
            (batch_state.RowProcessors, ("__call__",)),
        ):
            for m in names:
                ex.wrap(owner, m, f"{owner.__name__}.{m}")
        for m in ("feed", "keep_first", "start", "encode"):
            ex.wrap(adapters.ModelAdapter, m, f"ModelAdapter.{m}")
        for f in ("verify_exact_greedy", "verify_rollback", "verify_exact_sampling", "verify_block"):
            ex.wrap(acceptance, f, f"verification.{f}")
        handles = []

        def pre(*_):  # hooks must return None (a value would replace the inputs / outputs)
            sync(device)
            ex.enter("MODEL FORWARDS")

        def post(*_):
            sync(device)
            ex.leave()

        mods = [small, large] + ([large.get_encoder()] if large.config.is_encoder_decoder else [])
        for mod in mods:
            handles.append(mod.register_forward_pre_hook(pre))
            handles.append(mod.register_forward_hook(post))
        try:
            if method == "greedy":
                call = lambda x: large.generate(x, attention_mask=torch.ones_like(x), **kw)  # noqa: E731
            else:
                gen = bild.BiLDGenerator(small, large, verification="exact" if method == "exact" else "rollback")
                call = lambda x, gen=gen: gen.generate(x, attention_mask=torch.ones_like(x), **kw)  # noqa: E731
            call(prompts[0])  # warm-up
            ex.excl.clear()
            ex.calls.clear()
            t0 = time.perf_counter()
            for x in prompts:
                call(x)
            sync(device)
            wall = time.perf_counter() - t0
        finally:
            ex.unwrap()
            for h in handles:
                h.remove()
        fwd = ex.excl.get("MODEL FORWARDS", 0.0)
        over = wall - fwd
        steps = len(prompts) * args.new_tokens
        log(
            f"\n== profile {method} (batch {batch}, {len(prompts)} prompts x {args.new_tokens} tokens): wall "
            f"{wall:.3f}s; inside model forwards {fwd:.3f}s ({fwd / wall:.1%}); around them {over:.3f}s "
            f"({over / wall:.1%}, {over / steps * 1e3:.2f} ms per generated token of a row)"
        )
        log(f"{'excl. s':>8} {'% wall':>7} {'% around':>8} {'calls':>6} {'us/call':>8}  function")
        for name, t in sorted(ex.excl.items(), key=lambda kv: -kv[1]):
            share = "" if name == "MODEL FORWARDS" else f"{t / over:.1%}"
            log(f"{t:8.4f} {t / wall:7.1%} {share:>8} {ex.calls[name]:6d} {t / ex.calls[name] * 1e6:8.0f}  {name}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agreement", type=float, default=0.9)
    ap.add_argument("--family", default="llama", choices=["llama", "t5"])
    ap.add_argument("--batch_size", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt_len", type=int, default=16)
    ap.add_argument("--tune_prompts", type=int, default=2, help="prompts for the assisted-generation grid")
    ap.add_argument("--no_assisted", action="store_true")
    ap.add_argument("--no_tune_bild", action="store_true", help="skip the max_small_steps grid for bild")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--cost_repeats", type=int, default=15, help="repeats of the up-front cost table")
    ap.add_argument(
        "--cost_mode",
        choices=["interleaved", "once"],
        default="interleaved",
        help="interleaved: a quick cost table next to each prompt's runs (robust to load drift); "
        "once: only the up-front table",
    )
    ap.add_argument("--cost_repeats_per_prompt", type=int, default=5)
    ap.add_argument("--json", help="write all results to this file")
    ap.add_argument(
        "--profile",
        nargs="+",
        choices=["exact", "bild", "greedy"],
        help="instead of the benchmark: split the wall time of these methods into model forwards "
        "and the exclusive time of each engine function (uses the first --batch_size)",
    )
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()  # the per-call deprecation notes would drown the tables
    device = torch.device(args.device)
    log = lambda s="": print(s, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    small, large, info = build_controlled_pair(
        args.family,
        args.agreement,
        hidden=args.hidden,
        layers=args.layers,
        vocab=args.vocab,
        device=device,
        dtype=DTYPES[args.dtype],
        seed=args.seed,
    )
    log(
        f"pair: {args.family} hidden {args.hidden}, {args.layers} layers (small: 1), vocab {args.vocab}, "
        f"{args.dtype} on {device}, {args.threads} thread(s); alpha {info.alpha:.4g} -> greedy agreement "
        f"{info.agreement:.3f} on {info.positions} calibration positions (target {args.agreement}, "
        f"{'converged' if info.converged else 'NOT converged'}), distinct-token fraction {info.distinct_fraction:.2f}, "
        f"small mean confidence {info.small_confidence:.2f}; built in {time.perf_counter() - t0:.1f}s"
    )
    if args.profile:
        profile(small, large, info, args, device, log)
        return
    results = dict(args=vars(args), pair=info.as_dict(), batches=[])
    for b in args.batch_size:
        results["batches"].append(run_batch(small, large, info, args, b, device, log))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    log(f"\ntotal {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
