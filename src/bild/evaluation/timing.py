"""Generation-only timing: device synchronisation around each timed call, and latency summaries."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any


def synchronize(device: Any) -> None:
    """Wait for queued GPU work on ``device`` (a torch.device or string); a no-op on CPU."""
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    if kind == "cuda":
        import torch

        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: Any = "cpu") -> tuple[Any, float]:
    """Run ``fn()`` and return ``(result, seconds)``, synchronising the device before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between order statistics.

    Same definition as ``numpy.percentile``'s default: position ``(n - 1) * q / 100`` in the sorted list.
    """
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """Mean, p50, p90, min and max of per-example latencies (seconds), and their count."""
    if not seconds:
        return {"n": 0, "mean": math.nan, "p50": math.nan, "p90": math.nan, "min": math.nan, "max": math.nan}
    return {
        "n": len(seconds),
        "mean": sum(seconds) / len(seconds),
        "p50": percentile(seconds, 50),
        "p90": percentile(seconds, 90),
        "min": min(seconds),
        "max": max(seconds),
    }


def tokens_per_second(total_tokens: int, total_seconds: float) -> float:
    """Throughput; NaN when nothing was timed."""
    return total_tokens / total_seconds if total_seconds > 0 else math.nan
