"""Model-call costs learned online, from the forwards a generate call runs anyway.

No warm-up on the user's clock: `costs="auto"` never times a dedicated forward. It starts from a prior
that needs no timing and refines it with the host-side wall time of the engine's own forwards:

prior   a small step costs c = (small model's parameters) / (large model's parameters) large steps, input
        embeddings left out (a lookup, not compute), the LM head counted at `HEAD_WEIGHT` (one matmul, against
        a layer's many smaller ops: measured c was 0.087 for the controlled pair of benchmarks/, prior 0.081;
        0.15 for the SmolLM2 pair, prior 0.19; counting the head in full gave 0.13 and 0.32); a verify pass over k drafts costs
        1 + s k large steps, s = `CPU_SLOPE` x sqrt(batch) on a CPU (a forward over 11 tokens measured at
        2.3 large steps at batch 1 and 2.3-4.2 at batch 8 on the 2-core machine of this project) and
        `GPU_SLOPE` on other devices (a short forward is memory-bound there: the papers' assumption).
learned `ModelAdapter.feed` reports (rows, new tokens, seconds) of every forward after the prefill to the
        `ModelTimes` of its model, keyed by (device, dtype, torch threads) and held weakly by the model, so
        every generator (and every `bild.generate` call) of the same models in the process shares it.
        Per (rows, tokens) the last `KEEP` times are kept; a pair's `DraftCosts` at batch B are fitted from
        their medians (`learned_costs`): the small step from the small model's 1-token forwards, the large
        step and the verify slope by least squares through the large model's widths (the prior slope where
        only one width was seen), the verify costs per width (`verify_table`, for the small model's drafts
        and prompt lookup's alike). Until a model has `MIN_SAMPLES` such forwards at that batch size, the
        prior stands.
rounds  the engine times each round on the host and records what its forwards did not take
        (`ModelTimes.record_round`, on the large model's record, by what the round ran): a round's
        overhead is the median of its kind's less the median of plain rounds', in large steps (sampling,
        host reads, the policy, cache bookkeeping; the small model's per-step host work lands here too, at the
        draft lengths the policy ran). Until `MIN_ROUND_SAMPLES` rounds of a kind are timed the prior stands
        (`DraftCosts.ROUND_OVERHEAD`, `DraftCosts.LOOKUP_OVERHEAD`). 0.10 charged every small-model round the
        prior's 0.4 large steps and priced verify widths on a line; on the SmolLM2 pair the learned overhead is
        0.03-0.06 and a 2-token verify 1.1-1.2 steps (docs/performance.md, "The round overhead ... learned").
devices where a forward returns before it has run (CUDA; `synchronous` says which), timing one around its call
        would need a synchronisation in the hot loop. There a `ReadClock` times it instead at the host reads the
        engine makes anyway (one per draft step, one per round for the verdict; `tests/test_host_reads.py`):
        a read waits for everything queued before it, so a forward's time is from its launch to the first
        read after it (the host work up to the launch is the round's, as on the CPU; the host work between
        the launch and the read runs while the device computes). A read after exactly one forward records
        it, as `ModelAdapter.feed` does on the CPU; several forwards between two reads count as forward time
        but record nothing. The same tables, fits and round overheads follow, with no read added.

Nothing is written to disk. Learned costs only steer the adaptive policy in exact verification, where they
cannot change the output under greedy decoding (see `bild.generator.make_policy`).
"""

from __future__ import annotations

import math

import torch

from .policies import DraftCosts

# the time records moved to bild.timing (below the model layer); re-exported for `bild.online_costs.X` of 0.12
from .timing import (  # noqa: F401
    KEEP,
    MAX_BATCH_SIZES,
    MAX_TOKENS,
    MIN_ROUND_SAMPLES,
    ModelTimes,
    ReadClock,
    clock,
    forget,
    model_times,
    read_clock,
    synchronous,
)

CPU_SLOPE = 0.13
HEAD_WEIGHT = 0.25
GPU_SLOPE = 0.02
MIN_SAMPLES = 6  # forwards after the prefill before a model's learned times replace the prior
MIN_WIDTH_SAMPLES = 3  # times before a width enters a per-width verify table


def compute_params(model) -> float:
    """Parameters that cost compute per token: all of them but the input embeddings (a lookup), the LM head
    (tied to the embeddings or not) counted at `HEAD_WEIGHT`. Cached on the model."""
    n = model.__dict__.get("_bild_compute_params")
    if n is None:
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        weight = {}
        if emb is not None and getattr(emb, "weight", None) is not None:
            weight[id(emb.weight)] = 0.0
        if head is not None and getattr(head, "weight", None) is not None:
            weight[id(head.weight)] = HEAD_WEIGHT
        seen, n = set(), 0.0
        for p in model.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            n += weight.get(id(p), 1.0) * p.numel()
        n = max(n, 1.0)
        model.__dict__["_bild_compute_params"] = n
    return n


def prior_slope(device, batch_size: int) -> float:
    """The prior's verify slope s (a pass over k drafts costs 1 + s k large steps), by device kind."""
    return CPU_SLOPE * math.sqrt(max(1, batch_size)) if torch.device(device).type == "cpu" else GPU_SLOPE


def prior_costs(small, large, batch_size: int = 1, device=None):
    """The timing-free `DraftCosts`: parameter-count ratio, verify slope by device kind (module docstring)."""
    c = compute_params(small) / compute_params(large)
    slope = prior_slope(device if device is not None else large.device, batch_size)
    return DraftCosts(
        float(c), tuple(1.0 + slope * k for k in range(DraftCosts.MAX_DRAFTS + 1)), DraftCosts.ROUND_OVERHEAD
    )


def _medians(model, batch_size: int) -> dict[int, tuple[float, int]]:
    """The model's timed forwards at this batch size: tokens -> (median seconds, samples); {} if none."""
    t = model_times(model)
    return t.medians(batch_size) if t is not None else {}


def _line_fit(ml: dict[int, tuple[float, int]], prior_slope: float) -> tuple[float, float] | None:
    """(seconds per large step, verify slope) fitted from per-width medians (tokens -> (seconds, samples)) of the
    large model's timed forwards, or None until they hold `MIN_SAMPLES` forwards."""
    if sum(k for _, k in ml.values()) < MIN_SAMPLES:
        return None
    # t(n) = a (1 + s (n - 1)), least squares over the widths seen (weights: samples, capped)
    pts = [(n - 1, t, min(k, 8)) for n, (t, k) in ml.items()]
    if len({x for x, _, _ in pts}) >= 2:
        w = sum(k for _, _, k in pts)
        mx = sum(k * x for x, _, k in pts) / w
        my = sum(k * y for _, y, k in pts) / w
        sxx = sum(k * (x - mx) ** 2 for x, _, k in pts)
        b = max(0.0, sum(k * (x - mx) * (y - my) for x, y, k in pts) / sxx)
        a = my - b * mx
        if a <= 0:  # noisy: keep the prior's shape through the mean
            a = my / (1.0 + prior_slope * mx)
            b = a * prior_slope
        return a, b / a
    ((x, y, _),) = pts
    return y / (1.0 + prior_slope * x), prior_slope


def _overhead(large, batch_size: int, kind: str, step: float, prior: float) -> float:
    """A `kind` round's learned host overhead (`ModelTimes.round_overhead`) in large steps of `step` seconds,
    else `prior`."""
    t = model_times(large)
    o = t.round_overhead(batch_size, kind) if t is not None else None
    return prior if o is None else o / step


def learned_costs(small, large, batch_size: int = 1):
    """The pair's `DraftCosts` at this batch size: learned where both models have enough forwards timed,
    else the prior. Verify passes per width as timed (`verify_table`, the fitted line where no table can be
    made); the round overhead as timed over the engine's small-model rounds (the prior until it has been)."""
    prior = prior_costs(small, large, batch_size)
    ms = _medians(small, batch_size)
    ml = _medians(large, batch_size)
    fit = _line_fit(ml, prior.verify[1] - 1.0)
    if fit is None or sum(k for _, k in ms.values()) < MIN_SAMPLES:
        return prior
    a, slope = fit
    # small: its 1-token step (a catch-up of n tokens scaled by the large model's shape where that is all)
    if 1 in ms:
        small_step = ms[1][0]
    else:
        n, (t, _) = min(ms.items())
        small_step = t / (1.0 + slope * (n - 1))
    verify = verify_table(ml, slope, DraftCosts.MAX_DRAFTS) or tuple(
        1.0 + slope * k for k in range(DraftCosts.MAX_DRAFTS + 1)
    )
    return DraftCosts(small_step / a, verify, _overhead(large, batch_size, "small", a, DraftCosts.ROUND_OVERHEAD))


def verify_table(medians: dict[int, tuple[float, int]], slope: float, n: int) -> tuple[float, ...] | None:
    """verify[k], k = 0..n, in 1-token steps, from per-width medians (tokens -> (seconds, samples)): the widths
    with `MIN_WIDTH_SAMPLES` times, made non-decreasing (pool-adjacent-violators, weights: samples capped at 8),
    linear between measured widths, `slope` per token past the widest. None without a measured 1-token step.
    A table, not a line: on a CPU a forward's cost climbs in steps (MKL's fp32 matmul costs the same for 1-3
    rows and jumps at 4 and 7: SmolLM2-135M at a 339-token context, 2 threads, 2026-11-29, 1 / 1.17 / 1.27 /
    1.61 / 1.67 / 1.76 / 1.90 steps for 1-7 tokens, `benchmarks/lookup_replay.py`), which a line through
    all widths smears into a wrong price for every length."""
    pts = sorted((w, t, min(k, 8)) for w, (t, k) in medians.items() if k >= MIN_WIDTH_SAMPLES)
    if not pts or pts[0][0] != 1:
        return None
    step = pts[0][1]
    blocks = []  # [widths, value, weight], pooled left to right so that values never decrease
    for w, t, k in pts:
        blocks.append([[w], t / step, float(k)])
        while len(blocks) > 1 and blocks[-2][1] > blocks[-1][1]:
            (w0, v0, k0), (w1, v1, k1) = blocks[-2], blocks.pop()
            blocks[-1] = [w0 + w1, (v0 * k0 + v1 * k1) / (k0 + k1), k0 + k1]
    fitted = {w: v for ws, v, _ in blocks for w in ws}
    fitted[1] = 1.0
    ws = sorted(fitted)
    out = []
    for k in range(n + 1):
        w = k + 1
        if w >= ws[-1]:
            out.append(fitted[ws[-1]] + slope * (w - ws[-1]))
            continue
        hi = next(x for x in ws if x >= w)
        lo = max(x for x in ws if x <= w)
        out.append(fitted[lo] if hi == lo else fitted[lo] + (fitted[hi] - fitted[lo]) * (w - lo) / (hi - lo))
    return tuple(max(1.0, x) for x in out)


def lookup_costs(large, batch_size: int = 1, learned: bool = True):
    """`DraftCosts` of prompt lookup: a draft costs no model call (`DraftCosts.LOOKUP_STEP`), a round
    `DraftCosts.LOOKUP_OVERHEAD` beyond its verify pass; the verify pass per width as timed for the large
    model (`learned`: `verify_table`, once `MIN_SAMPLES` forwards are timed, extended past the widest timed
    width with the fitted slope; the fitted line where no table can be made), else the prior slope. The lookup's
    policy prices each draft length from this table, so a step in the cost curve is seen where it is."""
    slope = prior_slope(large.device, batch_size)
    n = DraftCosts.MAX_DRAFTS
    if learned:
        ml = _medians(large, batch_size)  # once: the line and the table are both fitted from these
        fit = _line_fit(ml, slope)
        if fit is not None:
            a, slope = fit  # the fitted line: past the widest timed width, and where no table can be made
            table = verify_table(ml, slope, n)
            if table is not None:
                return DraftCosts(
                    DraftCosts.LOOKUP_STEP, table, _overhead(large, batch_size, "lookup", a, DraftCosts.LOOKUP_OVERHEAD)
                )
    return DraftCosts(DraftCosts.LOOKUP_STEP, tuple(1.0 + slope * k for k in range(n + 1)), DraftCosts.LOOKUP_OVERHEAD)
