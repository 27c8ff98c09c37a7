"""Which batch layout (or refusal) each zoo family gets on the installed transformers.

    python benchmarks/families_census.py [--json out.json]

Builds every tests/zoo.py pair (tiny, random) and asks the engine what it would do: "holes", "aligned",
"rows", "refused: <reason>", or "absent" (no such class in this release). Run it under two releases and diff
the JSON files to list the families that behave differently (docs/versions.md). Correctness is checked by
tests/test_families.py; this only reports the routing.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=None, help="write {family: outcome} here")
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    import torch
    import transformers
    from zoo import ZOO, available, make_zoo_pair

    import bild
    from bild.adapters import batch_layout

    torch.set_num_threads(1)
    outcome = {}
    for name in sorted(ZOO):
        if not available(name):
            outcome[name] = "absent"
            continue
        small, large = make_zoo_pair(name)
        try:
            bild.BiLDGenerator(small, large)
        except ValueError as e:
            outcome[name] = "refused: " + str(e).split(") ", 1)[-1][:90]
            continue
        layouts = {batch_layout(large), batch_layout(small)}
        outcome[name] = "rows" if "rows" in layouts else layouts.pop() if len(layouts) == 1 else "aligned"
    counts = collections.Counter(v.split(":")[0] for v in outcome.values())
    print(f"transformers {transformers.__version__}: " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())))
    for name, v in outcome.items():
        print(f"  {name:28s} {v}")
    if a.json:
        Path(a.json).write_text(json.dumps({"transformers": transformers.__version__, "families": outcome}, indent=1))


if __name__ == "__main__":
    main()
