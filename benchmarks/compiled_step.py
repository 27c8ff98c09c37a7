"""Does a static cache + torch.compile make a decoding step cheaper?  (the issue's "try it, keep it
only if it wins")

    python benchmarks/compiled_step.py                                   # CPU, fp32
    python benchmarks/compiled_step.py --device cuda --dtype bfloat16    # GPU: compile uses CUDA graphs

For the small and the large model of a controlled Llama pair, times one single-token decoding step
(median over --steps steps after a warm-up, caches in place) three ways, side by side in one run:

  eager dynamic     what bild does today: DynamicCache, plain forward
  eager static      transformers' StaticCache (preallocated, rollback = move the write position)
  compiled static   StaticCache + torch.compile(forward) ("reduce-overhead" on CUDA = CUDA graphs;
                    inductor's C++ kernels on CPU), compile time printed separately

The engine keeps the eager dynamic path (see docs/performance.md for the numbers and why).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import DynamicCache, StaticCache

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from controlled_pair import DTYPES, sync  # noqa: E402  (this folder is on sys.path when run as a script)

from bild.adapters import capabilities  # noqa: E402
from bild.pairs.controlled import build_controlled_pair  # noqa: E402


@torch.no_grad()
def step_times(model, prompt, steps, static, fn=None):
    """Median seconds of a one-token step after a prefill of `prompt` [1, P]."""
    fn = fn or model
    dev, P = prompt.device, prompt.shape[1]
    arg = capabilities(model).cache_arg  # `cache` on transformers >= 5.24, `past_key_values` before
    if static:
        cache = StaticCache(config=model.config, max_cache_len=P + steps + 8)
        out = model(input_ids=prompt, use_cache=True, cache_position=torch.arange(P, device=dev), **{arg: cache})
    else:
        cache = DynamicCache(config=model.config)
        out = model(input_ids=prompt, use_cache=True, **{arg: cache})
    tok = out.logits[:, -1:].argmax(-1)
    times = []
    for i in range(steps):
        kw = {"input_ids": tok, "use_cache": True, arg: cache}
        if static:
            kw["cache_position"] = torch.tensor([P + i], device=dev)
            kw["position_ids"] = torch.tensor([[P + i]], device=dev)
        sync(dev)
        t0 = time.perf_counter()
        out = fn(**kw)
        tok = out.logits[:, -1:].argmax(-1)
        sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    small, large, info = build_controlled_pair("llama", None, alpha=0.01, device=dev, dtype=DTYPES[args.dtype])
    prompt = torch.randint(3, info.vocab, (1, 16), device=dev)
    mode = "reduce-overhead" if dev.type == "cuda" else "default"
    print(
        f"controlled Llama pair on {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}), "
        f"{args.dtype}; torch.compile mode {mode!r}"
    )
    print(
        f"{'model':6s} {'eager dynamic':>14s} {'eager static':>13s} {'compiled static':>16s} {'compile s':>10s} "
        f"{'compiled / eager dynamic':>25s}"
    )
    for name, model in (("small", small), ("large", large)):
        eager = step_times(model, prompt, args.steps, static=False)
        static = step_times(model, prompt, args.steps, static=True)
        compiled_fn = torch.compile(model.forward, mode=mode, dynamic=False)
        t0 = time.perf_counter()
        step_times(model, prompt, 4, static=True, fn=compiled_fn)  # compiles (prefill eager, step shape)
        compile_s = time.perf_counter() - t0
        compiled = step_times(model, prompt, args.steps, static=True, fn=compiled_fn)
        eager2 = step_times(model, prompt, args.steps, static=False)  # again, against drift
        eager = min(eager, eager2)
        print(
            f"{name:6s} {eager * 1e3:11.2f} ms {static * 1e3:10.2f} ms {compiled * 1e3:13.2f} ms "
            f"{compile_s:10.1f} {compiled / eager:25.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
