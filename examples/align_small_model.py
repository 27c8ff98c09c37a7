"""Prediction alignment (BiLD paper, Sec. 3.3): fine-tune a small model on a large model's outputs.

The large model greedily decodes the inputs; the small model is then trained (transformers
``Trainer``) to predict those outputs, optionally also matching the large model's top-k
distribution (``--kl_weight``).  Works for decoder-only and encoder-decoder pairs that share a
tokenizer.  The result is a normal ``save_pretrained`` folder.

Examples::

    # decoder-only, local JSONL, chat-formatted instructions
    python examples/align_small_model.py --large HuggingFaceTB/SmolLM2-360M-Instruct \
        --small HuggingFaceTB/SmolLM2-135M-Instruct --data ../shared/data/wmt14_de_en/dev.jsonl \
        --template "Translate to English: {text}" --chat --limit 400 --output_dir aligned-135m

    # encoder-decoder, Hub dataset
    python examples/align_small_model.py --large google-t5/t5-base --small google-t5/t5-small \
        --data cnn_dailymail --dataset_config 3.0.0 --field article --template "summarize: {text}" \
        --limit 2000 --output_dir aligned-t5-small

    # the offline SmolLM2 pair's draft: see `python -m bild.pairs.cli train -h`
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from bild.pairs.alignment import (
    align_small_model,
    generate_teacher_outputs,
    greedy_agreement,
    load_prompts,
    load_teacher_records,
    save_teacher_records,
)


def load(name, dtype):
    cfg = AutoConfig.from_pretrained(name)
    cls = AutoModelForSeq2SeqLM if cfg.is_encoder_decoder else AutoModelForCausalLM
    return cls.from_pretrained(name, dtype=dtype)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--large", required=True, help="large model name or folder")
    p.add_argument("--small", required=True, help="small model name or folder (same tokenizer)")
    p.add_argument("--tokenizer", default=None, help="default: the large model's")
    p.add_argument("--data", required=True, help="local .jsonl/.json/.txt file or a datasets name")
    p.add_argument("--dataset_config", default=None)
    p.add_argument("--split", default="train")
    p.add_argument("--field", default="source")
    p.add_argument("--template", default=None, help='e.g. "Translate to English: {text}"')
    p.add_argument("--chat", action="store_true", help="wrap inputs in the tokenizer's chat template")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--heldout", type=int, default=50, help="inputs kept out for the agreement measurement")
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--max_prompt_tokens", type=int, default=512)
    p.add_argument("--gen_batch_size", type=int, default=8)
    p.add_argument("--records", default=None, help="cache file for the large model's outputs (reused if present)")
    p.add_argument("--kl_weight", type=float, default=0.5, help="0 = plain sequence-level alignment")
    p.add_argument("--topk", type=int, default=32)
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--max_steps", type=int, default=-1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--grad_accum", type=int, default=1)
    p.add_argument("--train_embeddings", action="store_true", help="also train embeddings / LM head")
    p.add_argument("--save_steps", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--output_dir", required=True)
    a = p.parse_args(argv)

    torch.manual_seed(a.seed)
    dtype = getattr(torch, a.dtype)
    tok = AutoTokenizer.from_pretrained(a.tokenizer or a.large)
    large = load(a.large, dtype).eval()
    small = load(a.small, dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    large.to(device)
    small.to(device)
    if not large.config.is_encoder_decoder and tok.pad_token is None:
        tok.pad_token = tok.eos_token

    texts = load_prompts(
        a.data, field=a.field, split=a.split, config=a.dataset_config, limit=a.limit, template=a.template, seed=a.seed
    )
    add_special = True
    if a.chat:
        texts = [
            tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False)
            for t in texts
        ]
        add_special = False
    t0 = time.time()
    if a.records and __import__("os").path.exists(a.records):
        records = load_teacher_records(a.records)
    else:
        records = generate_teacher_outputs(
            large,
            tok,
            texts,
            max_new_tokens=a.max_new_tokens,
            batch_size=a.gen_batch_size,
            topk=a.topk if a.kl_weight > 0 else 0,
            max_prompt_tokens=a.max_prompt_tokens,
            add_special_tokens=add_special,
        )
        if a.records:
            save_teacher_records(records, a.records)
    t_gen = time.time() - t0
    held, train = records[: a.heldout], records[a.heldout :]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    before = greedy_agreement(small, held, pad_token_id=pad) if held else float("nan")
    print(f"agreement with the large model's greedy tokens on {len(held)} held-out inputs: before {before:.3f}")
    t0 = time.time()
    align_small_model(
        small,
        large,
        tok,
        records=train,
        output_dir=a.output_dir,
        kl_weight=a.kl_weight,
        learning_rate=a.lr,
        num_train_epochs=a.epochs,
        max_steps=a.max_steps,
        per_device_train_batch_size=a.batch_size,
        gradient_accumulation_steps=a.grad_accum,
        freeze_embeddings=not a.train_embeddings,
        save_steps=a.save_steps,
        seed=a.seed,
    )
    t_train = time.time() - t0
    after = greedy_agreement(small, held, pad_token_id=pad) if held else float("nan")
    summary = {
        "agreement_before": before,
        "agreement_after": after,
        "train_records": len(train),
        "heldout_records": len(held),
        "generation_s": round(t_gen, 1),
        "train_s": round(t_train, 1),
    }
    print(json.dumps(summary, indent=2))
    with open(f"{a.output_dir}/alignment_summary.json", "w") as fh:
        json.dump({**summary, "args": vars(a)}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
