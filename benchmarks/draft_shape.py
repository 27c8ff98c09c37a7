"""The draft's shape by measurement: what one decoding step of a draft cut from SmolLM2 costs, by its number of
decoder layers and its head size, as a fraction of the large model's step.

    BILD_CACHE=/work/pair-cache python benchmarks/draft_shape.py --layers 1,2,3,4 --sizes 4096,8192 --threads 2

One cached 1-token step at a --context-token context (held-out XSum dev text), drafts cut from the large model
with `make_small_from_large` (timing does not depend on the weights' values), heads pruned to the most
frequent tokens of the dev splits' train half (`prune_draft_vocabulary`; the step includes the scatter back
to the full width). All models interleaved, one step of each per repetition; medians.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pruned_vocabulary import context_ids, step_times  # noqa: E402

import bild  # noqa: E402
from bild.pairs.alignment import frequent_token_ids, token_frequencies  # noqa: E402
from bild.pairs.recipe import frequency_texts  # noqa: E402
from bild.pairs.smollm2 import load_pair, make_small_from_large, shared_data_dir  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", default="1,2,3,4", help="draft depths (the large model's first N layers)")
    p.add_argument("--sizes", default="4096,8192", help="pruned head sizes (the full head is always timed)")
    p.add_argument("--context", type=int, default=400)
    p.add_argument("--reps", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    data = shared_data_dir()
    if data is None:
        raise SystemExit("no shared data folder (../shared/data or $BILD_DATA)")
    t0 = time.time()
    pair = load_pair()
    tok, large = pair.tokenizer, pair.large
    counts = token_frequencies(frequency_texts(tok, data), tok)
    drafts = {}
    for n in (int(x) for x in a.layers.split(",")):
        cut = make_small_from_large(large, range(n))
        drafts[f"{n}L full"] = cut
        for size in (int(s) for s in a.sizes.split(",")):
            ids = frequent_token_ids(counts, size, tokenizer=tok, model=cut)
            drafts[f"{n}L {size // 1024}k"] = bild.prune_draft_vocabulary(copy.deepcopy(cut), ids)
    ms = step_times({"large": large, **drafts}, context_ids(tok, data, a.context), a.reps)
    print(
        f"\n`python benchmarks/draft_shape.py --layers {a.layers} --sizes {a.sizes} --threads {a.threads}`: "
        f"context {a.context}, {a.reps} interleaved reps; large step {ms['large']:.2f} ms ({time.time() - t0:.0f} s)\n"
    )
    print("| draft | step ms | / large step |")
    print("|---|---|---|")
    for name in drafts:
        print(f"| {name} | {ms[name]:.2f} | {ms[name] / ms['large']:.3f} |")


if __name__ == "__main__":
    main()
