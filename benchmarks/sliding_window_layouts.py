"""Why sliding-window families decode their batches row by row: force each batched layout on them.

    python benchmarks/sliding_window_layouts.py

For zoo families with a 4-token window (tests/zoo.py), a left-padded batch of prompts of 9, 7 and 5 tokens is
decoded by exact speculative decoding with the batch layout forced to "holes" and to "aligned"; each row is
compared with `large.generate` on the row alone. Prints, per family and layout, which rows are right (or the
error). The engine's own choice for these families is "rows", which tests/test_families.py checks exact.
"""

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    warnings.simplefilter("ignore")
    import torch
    import transformers
    from test_families import padded_batch, row
    from zoo import make_zoo_pair

    import bild

    torch.set_num_threads(1)
    print(f"transformers {transformers.__version__}")
    kw = dict(max_new_tokens=16, do_sample=False)
    for name in ("mistral", "qwen2", "gemma2", "phi3"):
        for layout in ("holes", "aligned"):
            small, large = make_zoo_pair(name)
            for m in (small, large):
                m._bild_layout = layout  # what bild.adapters.batch_layout would otherwise decide ("rows")
            ids, mask = padded_batch("decoder")
            alone = []
            for r in range(3):
                x, m = row(ids, mask, r, "decoder")
                alone.append(large.generate(x, attention_mask=m, **kw)[0, x.shape[1] :].tolist())
            gen = bild.BiLDGenerator(small, large, verification="exact", fallback_threshold=0.0, max_small_steps=4)
            try:
                got = gen.generate(ids, attention_mask=mask, **kw)
                right = [got[r, ids.shape[1] : ids.shape[1] + len(a)].tolist() == a for r, a in enumerate(alone)]
                result = f"{sum(right)} of 3 rows equal large.generate on the row alone"
            except Exception as e:  # noqa: BLE001 - the point is to show it
                result = f"fails: {type(e).__name__}: {str(e)[:80]}"
            print(f"  {name:8s} {layout:8s} {result}")


if __name__ == "__main__":
    main()
