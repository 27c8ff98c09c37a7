"""The ``bild`` command line: ``bild demo`` (the offline SmolLM2 pair against the large model alone) and
``bild pair`` (build, inspect and remove that pair's cache; the recipe of its draft: :mod:`bild.pairs.cli`).

Parsing imports neither torch nor transformers (``import bild`` is light), so ``bild --help``,
``bild --version`` and a wrong argument answer at once; a command imports what it needs once its
arguments are checked.  A wrong or missing argument prints one line naming it (and the allowed
values) and exits with status 2.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

from .cli_parser import Parser

DESCRIPTION = "Big Little Decoder (BiLD) and speculative decoding for transformers models."
COMMANDS = {
    "demo": "run the offline SmolLM2 pair and the large model, timed",
    "pair": "build, inspect or remove the pair's cache; its recipe",
}

GREEN = "\033[32m"
CYAN = "\033[36m"
BOLD_BLUE = "\033[1;34m"
DIM = "\033[2m"
RESET = "\033[0m"


def token_provenance(gen) -> list[str]:
    """'small' / 'lookup' / 'large' for each new token of row 0, from the engine's record."""
    return list(gen.stats.token_sources[0])


def render(tokenizer, ids: Sequence[int], sources: Sequence[str], color: bool) -> str:
    parts = []
    for tok, src in zip(ids, sources):
        text = tokenizer.decode([int(tok)], skip_special_tokens=False)
        if color:
            parts.append({"small": GREEN, "lookup": CYAN}.get(src, BOLD_BLUE) + text + RESET)
        else:
            parts.append(f"[{text}]" if src == "large" else f"{{{text}}}" if src == "lookup" else text)
    return "".join(parts)


def rule_text(opts) -> str:
    """The verification rule in force, in words."""
    if opts.verification == "block":
        return "block (lossless)"
    if opts.verification == "exact" and not (opts.uno_epsilon or opts.opt_epsilon):
        return "exact (lossless)"
    if opts.verification == "exact":
        name, eps = ("Decoding-UNO", opts.uno_epsilon) if opts.uno_epsilon else ("Decoding-OPT", opts.opt_epsilon)
        return f"{name}, epsilon {eps:g} (lossy)"
    return f"rollback, threshold {opts.rollback_threshold:g} (BiLD, lossy)"


def _auto(kind):
    """argparse type: 'auto' or a number of `kind`."""

    def parse(text):
        return "auto" if text == "auto" else kind(text)

    parse.__name__ = f"auto or {kind.__name__}"
    return parse


def demo(argv: Sequence[str] | None = None) -> int:
    p = Parser(
        prog="bild demo",
        description="BiLD with the offline SmolLM2 pair: builds it into the cache folder on "
        "first use (about 0.8 GB, `bild pair clean` removes it), generates with the pair, then with the large "
        "model alone on the same prompt, and prints the text, both latencies, the speedup and which tokens "
        "each model wrote. Defaults are the library's: lossless exact verification, the adaptive draft "
        "policy, drafts from the small model and prompt lookup (--prompt_lookup 10).",
    )
    p.add_argument("--prompt", default=None, help="instruction (chat-formatted automatically)")
    p.add_argument("--raw", action="store_true", help="do not apply the chat template to --prompt")
    p.add_argument("--max_new_tokens", type=int, default=48)
    p.add_argument(
        "--fallback_threshold",
        type=_auto(float),
        default="auto",
        help="'auto' (adaptive draft policy, default) or a number in [0, 1]",
    )
    p.add_argument(
        "--rollback_threshold",
        type=float,
        default=None,
        help="BiLD's rollback rule with this threshold (default: none, the lossless exact rule)",
    )
    p.add_argument("--max_small_steps", type=_auto(int), default="auto", help="'auto' (default) or an integer >= 1")
    p.add_argument(
        "--verification",
        choices=["rollback", "exact", "block"],
        default=None,
        help="default: exact, or rollback when --rollback_threshold is given (the library's defaults)",
    )
    p.add_argument(
        "--prompt_lookup",
        type=int,
        default=10,
        metavar="N",
        help="also draft by prompt lookup (prompt_lookup_num_tokens=N, default 10): copies from the prompt "
        "and output, where they match, in place of the small model; 0: the small model alone",
    )
    p.add_argument(
        "--feature_weights",
        default=None,
        metavar="FILE",
        help="draft with a feature (EAGLE) draft from this file (`bild pair train-feature` writes one) "
        "instead of the shipped token draft",
    )
    p.add_argument(
        "--cache", default=None, help="pair cache folder (default $BILD_CACHE or ~/.cache/bild/smollm2-pair)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    a = p.parse_args(argv)
    if a.prompt_lookup < 0:
        p.error(f"argument --prompt_lookup: must be >= 0 (0: no prompt lookup), got {a.prompt_lookup}")
    if a.fallback_threshold != "auto" and not 0 <= a.fallback_threshold <= 1:
        p.error(f"argument --fallback_threshold: 'auto' or a number in [0, 1], got {a.fallback_threshold:g}")
    if a.max_small_steps != "auto" and a.max_small_steps < 1:
        p.error(f"argument --max_small_steps: 'auto' or an integer >= 1, got {a.max_small_steps}")
    if a.threads is not None and a.threads < 1:
        p.error(f"argument --threads: an integer >= 1, got {a.threads}")

    import torch
    from transformers.utils import logging as hf_logging

    from . import BiLDGenerator
    from .pairs.smollm2 import SAMPLE_PROMPT, chat_prompt, load_pair

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    pr = load_pair(a.cache)
    small, kind = pr.small, "token draft"
    if a.feature_weights:
        from .pairs.smollm2 import load_feature_draft

        small, kind = load_feature_draft(pr.large, a.feature_weights), "feature draft"
    print(
        f"loaded pair from {pr.path} in {time.perf_counter() - t0:.1f}s "
        f"(large {pr.large.config.num_hidden_layers} layers, small: {kind}, {small.config.num_hidden_layers} layers "
        f"{getattr(small.config, 'bild_source_layers', '')})"
    )
    tok = pr.tokenizer
    instruction = a.prompt or SAMPLE_PROMPT
    text = instruction if a.raw else chat_prompt(tok, instruction)
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    n_prompt = enc.input_ids.shape[1]
    gen = BiLDGenerator(
        small,
        pr.large,
        fallback_threshold=a.fallback_threshold,
        rollback_threshold=a.rollback_threshold,
        max_small_steps=a.max_small_steps,
        verification=a.verification,
    )
    kw = dict(max_new_tokens=a.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    lookup = {"prompt_lookup_num_tokens": a.prompt_lookup} if a.prompt_lookup else {}
    with torch.no_grad():
        # warm-up (first calls allocate; the adaptive policy starts learning acceptance and costs, as in any
        # first call of a session); then time both on the same prompt
        pr.large.generate(**enc, max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id)
        gen.generate(**enc, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id, **lookup)
        t = time.perf_counter()
        ref = pr.large.generate(**enc, **kw)
        t_large = time.perf_counter() - t
        t = time.perf_counter()
        out = gen.generate(**enc, return_dict_in_generate=True, **kw, **lookup)
        t_bild = time.perf_counter() - t
    seq = out.sequences if hasattr(out, "sequences") else out
    new = seq[0, n_prompt:]
    eos = tok.eos_token_id
    shown = [int(x) for x in new if int(x) != eos]
    sources = token_provenance(gen)[: len(shown)]
    color = a.color == "always" or (a.color == "auto" and sys.stdout.isatty() and os.environ.get("NO_COLOR") is None)
    n_new = len(new)
    st = gen.stats
    print(f"\nprompt: {instruction}\n")
    print(f"rule: {rule_text(gen.options)}")
    print("BiLD output:", tok.decode(new, skip_special_tokens=True).strip())
    same = torch.equal(seq[0, : ref.shape[1]], ref[0]) and seq.shape[1] == ref.shape[1]
    print(
        "large alone:",
        tok.decode(ref[0, n_prompt:], skip_special_tokens=True).strip(),
        "(identical)" if same else "(differs)",
    )
    legend = (
        f"{GREEN}small model{RESET}, {CYAN}prompt lookup{RESET}, {BOLD_BLUE}large model{RESET}"
        if color
        else "plain = small model, {braced} = prompt lookup, [bracketed] = large model"
    )
    print(f"\nwho wrote which token ({legend}):")
    print(render(tok, shown, sources, color))
    n_small, n_lookup = sum(s == "small" for s in sources), sum(s == "lookup" for s in sources)
    print(f"\nsmall model wrote {n_small}/{len(sources)} tokens" + (f", prompt lookup {n_lookup}" if lookup else ""))
    n_ref = ref.shape[1] - n_prompt
    print(f"large alone: {t_large:.2f}s for {n_ref} tokens ({1000 * t_large / max(n_ref, 1):.0f} ms/token)")
    print(f"BiLD:        {t_bild:.2f}s for {n_new} tokens ({1000 * t_bild / max(n_new, 1):.0f} ms/token)")
    print(
        f"speedup:     {t_large / t_bild:.2f}x  (large forwards {st.large_forwards}, small forwards "
        f"{st.small_forwards}, fallbacks {st.fallbacks}, rollbacks {st.rollbacks})"
    )
    pol = st.policy
    if pol.get("policy") == "combined":
        pol = pol["small"]
    if pol.get("policy") == "adaptive per row":
        rows = pol["rows"][0] if pol.get("rows") else {}
        print(
            f"policy:      adaptive per row (timing-free costs: small step = {pol['costs']['small']:.2f} large "
            f"steps), drafting {'on' if rows.get('drafting') else 'off'}, acceptance {rows.get('alpha', 0):.2f}, "
            f"rounds without a draft {st.draftless_rounds}/{st.rounds}"
        )
    elif pol.get("policy") == "adaptive":
        print(
            f"policy:      adaptive, drafting {'on' if pol['drafting'] else 'off (probing)'}, draft length "
            f"{pol['draft_length']}, acceptance {pol['alpha']:.2f}, small step = {pol['costs']['small']:.2f} "
            f"large steps, rounds without a draft {st.draftless_rounds}/{st.rounds}"
        )
    return 0


def parser() -> Parser:
    from . import __version__

    p = Parser(
        prog="bild",
        description=DESCRIPTION,
        epilog="`bild COMMAND --help` shows a command's options; the library's API and the docs: README.md and docs/.",
    )
    p.add_argument("--version", action="version", version=f"bild {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND", title="commands")
    for name, text in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    if not argv:
        p.print_help()
        return 0
    cmd = p.parse_args(argv[:1]).cmd  # --help, --version, an unknown command: argparse answers and exits
    if cmd == "demo":
        return demo(argv[1:])
    from .pairs.cli import main as pair_main

    return pair_main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
