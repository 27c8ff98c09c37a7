"""The dtypes a pair may be in, checked before any work.

The two models exchange only token ids, and every logit the engine compares is cast to float32
(`ModelAdapter.feed`), so any two of `DTYPES` combine (a bfloat16 large model with a float32 draft and the
reverse); a feature draft casts the large model's features to its own dtype. Other dtypes (float8, complex,
integer weights reported as the model's dtype) give logits no argmax or softmax of the engine is meant for,
and a device may not run a dtype at all (a half-precision matmul on an old CPU build, bfloat16 on an old
MPS): both are refused with a ValueError naming the two models' dtypes. The device check runs one 1x1 matmul
per (device, dtype) in the process, not a forward.

What exact verification guarantees in half precision is stated in README.md ("Half precision"): the verify
pass over k+1 tokens rounds differently from `large.generate`'s 1-token step, so the output equals
`large.generate`'s up to the first position where the large model's top-2 logits are within that rounding.
"""

from __future__ import annotations

import torch

from .devices import execution_device

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_RUNS: dict[tuple[str, torch.dtype], str | None] = {}  # (device, dtype) -> None if it runs, else the error


def runs_on(device, dtype: torch.dtype) -> str | None:
    """None if a `dtype` matmul runs on `device`, else the error it raised (cached per process)."""
    key = (str(device), dtype)
    if key not in _RUNS:
        try:
            x = torch.ones(1, 1, dtype=dtype, device=device)
            (x @ x).sum()
            _RUNS[key] = None
        except (RuntimeError, TypeError, NotImplementedError) as e:
            _RUNS[key] = f"{type(e).__name__}: {e}".splitlines()[0]
    return _RUNS[key]


def check_dtypes(small, large) -> None:
    """ValueError, naming both models' dtypes, for a model in a dtype outside `DTYPES` or one its device cannot
    run. `small` may be None (prompt lookup alone)."""
    models = [("small_model", small), ("large_model", large)] if small is not None else [("large_model", large)]
    both = ", ".join(f"{role} {m.dtype} on {execution_device(m)}" for role, m in models)
    allowed = ", ".join(str(d).removeprefix("torch.") for d in DTYPES)
    for role, m in models:
        if m.dtype not in DTYPES:
            raise ValueError(
                f"`{role}` is in {m.dtype}, which bild cannot decode with (the pair: {both}); "
                f"allowed: {allowed}, in any combination"
            )
        err = runs_on(execution_device(m), m.dtype)
        if err is not None:
            raise ValueError(
                f"`{role}`'s dtype {m.dtype} does not run on {execution_device(m)} ({err}; the pair: {both}): "
                f"cast it, e.g. `{role}.to(torch.float32)`"
            )
