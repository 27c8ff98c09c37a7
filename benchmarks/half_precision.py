"""What exact mode guarantees in half precision, measured: outputs equal to `large.generate`'s, and the large
model's logits at each first difference.

    python benchmarks/half_precision.py --pair smollm2 --dtype bfloat16      # 8 prompts x {small, lookup}
    python benchmarks/half_precision.py --pair controlled --dtype bfloat16   # ~1B controlled Llama pair

Exact verification (`fallback_threshold=0, max_small_steps=4` so that the small model drafts; the lookup
column: no small model, `prompt_lookup_num_tokens=4`), greedy. Per prompt and drafter, both bild and
`large.generate` return the large model's raw logits of every new token (`output_logits=True`). Up to the first
difference the prefixes are the same, so the two logit vectors at each position are the large model's on the
same prefix, computed in different shapes (a 1-token step for `large.generate`, a verify pass over the drafts
for bild). Printed per output:

  equal      the output equals large.generate's
  t          the first differing new token (-)
  gap        large.generate's logit of its token minus its logit of bild's token at t: the large model's
             top-2 gap there, as large.generate computed it
  ulp        the bf16/fp16 spacing at the magnitude of large.generate's top logit at t
  drift      the largest |logit difference| between the two over the whole vocabulary at positions <= t
             (the rounding the two shapes produce), and the same in ulps of each position's top logit
A summary line counts equal outputs and lists the gaps. No timing is taken.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import bild  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def ulp(x: float, dtype) -> float:
    """The spacing of `dtype` at magnitude |x|."""
    e = torch.finfo(dtype).eps
    m = abs(x)
    return e * 2.0 ** torch.floor(torch.log2(torch.tensor(max(m, 1e-30)))).item()


def compare(large, gen, ids, mask, new_tokens, dtype, **kw):
    """One output: (equal, t, gap, ulp at t, max drift, max drift in ulps) (t, gap, ulp None when equal)."""
    g = dict(max_new_tokens=new_tokens, do_sample=False, return_dict_in_generate=True, output_logits=True)
    ref = large.generate(ids, attention_mask=mask, **g, **kw)
    got = gen.generate(ids, attention_mask=mask, **g, **kw)
    P = ids.shape[1]
    z, y = ref.sequences[0, P:].tolist(), got.sequences[0, P:].tolist()
    n = min(len(z), len(y))
    t = next((j for j in range(n) if z[j] != y[j]), None)
    last = t if t is not None else n - 1
    drift, drift_ulp = 0.0, 0.0
    for j in range(last + 1):
        a, b = ref.logits[j][0].float(), got.logits[j][0].float()
        d = (a - b).abs().max().item()
        drift = max(drift, d)
        drift_ulp = max(drift_ulp, d / ulp(a.max().item(), dtype))
    if t is None and len(z) == len(y):
        return True, None, None, None, drift, drift_ulp
    if t is None:  # one stopped earlier (eos): not a rounding difference
        return False, n, float("nan"), None, drift, drift_ulp
    a = ref.logits[t][0].float()
    return False, t, (a[z[t]] - a[y[t]]).item(), ulp(a.max().item(), dtype), drift, drift_ulp


def _cell(x, w: int, d: int) -> str:
    return f"{x:>{w}.{d}f}" if x is not None else f"{'-':>{w}}"


def smollm2_setup(dtype, n_prompts):
    from bild.pairs.recipe import HELDOUT_INSTRUCTIONS
    from bild.pairs.smollm2 import chat_prompt, load_pair

    pair = load_pair()
    small, large = pair.small.to(dtype), pair.large.to(dtype)
    prompts = []
    for text in HELDOUT_INSTRUCTIONS[:n_prompts]:
        enc = pair.tokenizer(chat_prompt(pair.tokenizer, text), return_tensors="pt", add_special_tokens=False)
        prompts.append((enc.input_ids, enc.attention_mask))
    return small, large, prompts, "SmolLM2-135M-Instruct + shipped 3-layer draft"


def controlled_setup(dtype, n_prompts, agreement, hidden, layers, alpha=None):
    from bild.pairs.controlled import build_controlled_pair, make_prompts

    small, large, info = build_controlled_pair(
        "llama",
        None if alpha is not None else agreement,
        hidden=hidden,
        layers=layers,
        vocab=32000,
        dtype=dtype,
        calib_prompts=4,
        max_iters=8,
        alpha=alpha,
    )
    n = sum(p.numel() for p in large.parameters())
    prompts = [(p, torch.ones_like(p)) for p in make_prompts(large.config.vocab_size, n_prompts, length=16, seed=7)]
    for m in (small, large):  # random token ids: no eos
        m.generation_config.eos_token_id = None
    return (
        small,
        large,
        prompts,
        (
            f"controlled llama, {n / 1e9:.2f}B parameters, hidden {hidden}, {layers} layers, "
            f"small = 1 layer, agreement {info.agreement:.2f}"
        ),
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", choices=("smollm2", "controlled"), default="smollm2")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--prompts", type=int, default=None, help="default: 8 (smollm2), 3 (controlled)")
    p.add_argument("--first", type=int, default=0, help="skip the first prompts (to resume a run)")
    p.add_argument("--new_tokens", type=int, default=48)
    p.add_argument("--agreement", type=float, default=0.7)
    p.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="the controlled pair's scale, as a calibration printed it (benchmarks/billion_pair.py): skips "
        "the calibration",
    )
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = DTYPES[a.dtype]
    if a.pair == "smollm2":
        small, large, prompts, name = smollm2_setup(dtype, a.first + (a.prompts or 8))
    else:
        small, large, prompts, name = controlled_setup(
            dtype, a.first + (a.prompts or 3), a.agreement, a.hidden, a.layers, a.alpha
        )
    print(
        f"# {name}; {a.dtype}; exact verification, greedy, {a.new_tokens} new tokens; "
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    drafters = {
        "small": (
            bild.BiLDGenerator(small, large, verification="exact", fallback_threshold=0.0, max_small_steps=4),
            {},
        ),
        "lookup": (bild.BiLDGenerator(None, large, verification="exact"), dict(prompt_lookup_num_tokens=4)),
    }
    print(f"{'prompt':>6} {'drafter':>7} {'equal':>5} {'t':>3} {'gap':>7} {'ulp':>6} {'drift':>7} {'drift/ulp':>9}")
    equal, gaps = 0, []
    for i, (ids, mask) in list(enumerate(prompts))[a.first :]:
        for label, (gen, kw) in drafters.items():
            eq, t, gap, u, drift, du = compare(large, gen, ids, mask, a.new_tokens, dtype, **kw)
            equal += eq
            if not eq:
                gaps.append(gap)
            print(
                f"{i:>6} {label:>7} {str(eq):>5} {('-' if t is None else t):>3} {_cell(gap, 7, 3)} {_cell(u, 6, 4)} "
                f"{drift:>7.3f} {du:>9.1f}",
                flush=True,
            )
    total = (len(prompts) - a.first) * len(drafters)
    print(
        f"# equal to large.generate: {equal} of {total}; gaps at first differences: "
        f"{', '.join(f'{g:.3f}' for g in sorted(gaps)) or '-'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
