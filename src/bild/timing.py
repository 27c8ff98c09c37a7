"""Time records of model calls, the engine's lowest layer for costs.

`ModelTimes`: recent host times of a model's forwards, kept per (device, dtype, torch threads) and held weakly by
the model (`model_times`); `bild.adapters.ModelAdapter.feed` records every forward after the prefill, and the
loop records each round's host time beyond its forwards (`record_round`). `bild.online_costs` fits a pair's
`DraftCosts` from them. `CostTable`: median seconds per model call measured once by
`bild.analysis.cost_model.measure_costs` (which re-exports it), that `costs=` takes.

Nothing here imports the rest of the engine: the model layer records into it, the cost layer reads it.
"""

from __future__ import annotations

import statistics
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

KEEP = 32  # times kept per (rows, tokens)
MAX_TOKENS = 64  # wider forwards (long catch-ups) are not recorded
MAX_BATCH_SIZES = 16  # batch sizes whose times are kept per model setting (least recently timed dropped)
MIN_ROUND_SAMPLES = 3  # timed rounds of a kind before their overhead replaces the prior (host work varies little)
clock = time.perf_counter  # the timer; tests patch it


class ModelTimes:
    """Recent forward times of one model on one (device, dtype, threads): `times[(rows, tokens)]`; for a large
    model also the host time of the engine's rounds beyond their forwards: `rounds[(rows, kind)]`, kind
    "small" (the small model ran), "lookup" (a lookup draft, no small model) or "plain"
    (`bild.decoding.round_kind`)."""

    def __init__(self):
        self.times: dict[tuple[int, int], deque] = {}
        self.rounds: dict[tuple[int, str], deque] = {}
        self.batch_sizes: dict[int, None] = {}  # batch sizes timed, least recently recorded first
        self.lock = threading.Lock()  # calls from several threads record and read at once

    def record(self, rows: int, tokens: int, seconds: float) -> None:
        if 0 < tokens <= MAX_TOKENS and seconds > 0:
            with self.lock:
                self._touch(rows)
                self.times.setdefault((rows, tokens), deque(maxlen=KEEP)).append(seconds)

    def record_round(self, rows: int, kind: str, seconds: float) -> None:
        with self.lock:
            self._touch(rows)
            self.rounds.setdefault((rows, kind), deque(maxlen=KEEP)).append(max(0.0, seconds))

    def _touch(self, rows: int) -> None:
        """Keep the tables bounded: the times of at most `MAX_BATCH_SIZES` batch sizes, the least recently
        recorded dropped first."""
        self.batch_sizes.pop(rows, None)
        self.batch_sizes[rows] = None
        if len(self.batch_sizes) > MAX_BATCH_SIZES:
            old = next(iter(self.batch_sizes))
            del self.batch_sizes[old]
            for table in (self.times, self.rounds):
                for key in [k for k in table if k[0] == old]:
                    del table[key]

    def medians(self, rows: int) -> dict[int, tuple[float, int]]:
        """tokens -> (median seconds, samples) at this batch size."""
        with self.lock:
            return {n: (statistics.median(d), len(d)) for (b, n), d in self.times.items() if b == rows and d}

    def round_overhead(self, rows: int, kind: str) -> float | None:
        """Seconds a round drafting with `kind` spends on the host beyond its forwards, more than a plain round
        does (median against median; against nothing before a plain round is timed), or None until
        `MIN_ROUND_SAMPLES` such rounds are timed at this batch size."""
        with self.lock:
            d = self.rounds.get((rows, kind))
            if d is None or len(d) < MIN_ROUND_SAMPLES:
                return None
            plain = self.rounds.get((rows, "plain"))
            return max(0.0, statistics.median(d) - (statistics.median(plain) if plain else 0.0))


_TIMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TIMES_LOCK = threading.Lock()


def _key(model):
    return (str(model.device), str(model.dtype), torch.get_num_threads())


def synchronous(device) -> bool:
    """A forward on `device` has run when its call returns (the CPU): it is timed around the call. Elsewhere a
    `ReadClock` times it. Tests patch this to run the asynchronous path on the CPU."""
    return torch.device(device).type == "cpu"


class ReadClock:
    """Times the forwards of one generate call on an asynchronous device at the host reads that follow them
    (module docstring). `ModelAdapter.feed` reports each forward's launch (`launched`); the engine calls
    `read` right after each of its host reads, and `reset` where a round starts (a forward launched and
    never read, the prefill's, is dropped)."""

    def __init__(self):
        self.queue: list[tuple] = []  # (adapter, rows, tokens, launch time, recorded) since the last read

    def launched(self, adapter, rows: int, tokens: int, t0: float, record: bool) -> None:
        self.queue.append((adapter, rows, tokens, t0, record))

    def read(self) -> None:
        """The host has just read a tensor: every forward launched so far has finished."""
        if not self.queue:
            return
        queue, self.queue = self.queue, []
        dt = clock() - queue[0][3]
        for adapter, *_ in queue:  # seconds in forwards (the round's overhead is what they leave)
            adapter.seconds += dt / len(queue)
        adapter, rows, tokens, _, record = queue[0]
        if len(queue) == 1 and record:
            adapter.times.record(rows, tokens, dt)

    def reset(self) -> None:
        self.queue.clear()


def read_clock(*adapters) -> ReadClock | None:
    """A `ReadClock` attached to those of `adapters` (None skipped) whose forwards are timed on an
    asynchronous device; None (and nothing attached) where there are none."""
    late = [
        a
        for a in adapters
        if a is not None and a.times is not None and not synchronous(getattr(a, "device", None) or a.model.device)
    ]
    if not late:
        return None
    rc = ReadClock()
    for a in late:
        a.read_clock = rc
    return rc


def model_times(model) -> ModelTimes | None:
    """The shared timing record of this model in its current setting; None where the model cannot be held
    weakly."""
    try:
        with _TIMES_LOCK:
            per = _TIMES.get(model)
            if per is None:
                per = _TIMES[model] = {}
            return per.setdefault(_key(model), ModelTimes())
    except (TypeError, AttributeError):
        return None


def forget(model=None) -> None:
    """Drop learned times (of one model, or of all)."""
    with _TIMES_LOCK:
        if model is None:
            _TIMES.clear()
        else:
            _TIMES.pop(model, None)


def _interp(table: Mapping[int, float], n: int) -> float:
    """Piecewise-linear interpolation of ``table`` (tokens -> seconds) at ``n``; linear
    extrapolation from the two nearest points outside the measured range."""
    if not table:
        raise ValueError("empty cost table")
    if n in table:
        return float(table[n])
    xs = sorted(table)
    if len(xs) == 1:
        return float(table[xs[0]])
    if n < xs[0]:
        x0, x1 = xs[0], xs[1]
    elif n > xs[-1]:
        x0, x1 = xs[-2], xs[-1]
    else:
        x1 = next(x for x in xs if x > n)
        x0 = max(x for x in xs if x < n)
    y0, y1 = table[x0], table[x1]
    return float(max(0.0, y0 + (y1 - y0) * (n - x0) / (x1 - x0)))


@dataclass
class CostTable:
    """Median seconds per model call, measured with caches in place.

    ``small_forward[n]`` / ``large_forward[n]``: a forward over ``n`` new tokens on top of a
    cache of ``past_len`` tokens (``n = 1`` is one decoding step; ``n = k+1`` is a verify pass
    over ``k`` drafts).  ``*_prefill[L]``: a first forward over ``L`` tokens with an empty
    cache (decoder-only: the prompt; encoder-decoder: the decoder's first tokens, the encoder
    pass being ``*_encoder``).  All times are for ``batch_size`` rows.
    """

    small_forward: dict[int, float]
    large_forward: dict[int, float]
    small_prefill: dict[int, float]
    large_prefill: dict[int, float]
    small_encoder: float = 0.0
    large_encoder: float = 0.0
    prompt_len: int = 0
    past_len: int = 0
    batch_size: int = 1
    is_encoder_decoder: bool = False
    device: str = "cpu"
    dtype: str = "float32"
    repeats: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    # -- lookups -----------------------------------------------------------------------
    @property
    def small_step(self) -> float:
        """One small-model decoding step (one new token)."""
        return self.small(1)

    def small(self, n: int) -> float:
        return _interp(self.small_forward, n)

    def large(self, n: int) -> float:
        return _interp(self.large_forward, n)

    def small_prefill_time(self, length: int | None = None) -> float:
        return _interp(self.small_prefill, self._prefill_len(length))

    def large_prefill_time(self, length: int | None = None) -> float:
        return _interp(self.large_prefill, self._prefill_len(length))

    def _prefill_len(self, length):
        if length is not None:
            return length
        return 1 if self.is_encoder_decoder else self.prompt_len

    @property
    def cost_ratio(self) -> float:
        """``c`` of the papers: small step / large step."""
        return self.small(1) / self.large(1)

    # -- (de)serialisation ---------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CostTable:
        d = dict(d)
        for k in ("small_forward", "large_forward", "small_prefill", "large_prefill"):
            d[k] = {int(n): float(t) for n, t in d[k].items()}
        return cls(**d)
