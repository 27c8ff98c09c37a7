"""The recipe of the shipped SmolLM2 draft, as ``bild pair`` commands: training data from the dev splits'
train half (never test), alignment, compression to a delta, the pruned head, and greedy agreement per task.

    bild pair gen-data      the large model's outputs on the train half (+ sampled paths: --temperature;
                            more prompts from the same half and general topics: --prompts extra)
    bild pair teacher-force the large model's top-k along whole sequences (prompt positions too)
    bild pair train         cut a draft from the large model and align it
    bild pair compress      a fully fine-tuned draft as a low-rank delta (the file that ships)
    bild pair agreement     greedy agreement of draft files per task (+ held-out free writing), along the
                            large model's outputs
    bild pair tune-split    the tune half of each dev split, for threshold sweeps
    bild pair prune         the draft with its head over the most frequent tokens

docs/pair.md has the commands that made the shipped draft, with their times on this machine.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from .smollm2 import (
    DATASET_TASKS,
    DEV_PARTS,
    DRAFT_WEIGHTS_NAME,
    FEATURE_WEIGHTS_NAME,
    GENERAL_INSTRUCTIONS,
    SAMPLE_PROMPT,
    VOCABULARY_KEY,
    chat_prompt,
    default_draft_weights,
    format_instruction,
    is_feature_file,
    load_draft_from_weights,
    load_feature_draft,
    load_large,
    load_pair,
    make_small_from_large,
    read_jsonl,
    save_draft_weights,
    save_feature_draft_weights,
    shared_data_dir,
)


def dev_rows(path, part: str = "all", limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a ``dev.jsonl`` split in two: ``"train"`` is the first half (it trains the draft),
    ``"tune"`` the second half (it tunes thresholds, so tuning never sees the draft's training data);
    ``"all"`` is both.  ``limit`` keeps the first rows of the part."""
    if part not in DEV_PARTS:
        raise ValueError(f"part must be one of {DEV_PARTS}, got {part!r}")
    rows = read_jsonl(path)
    half = len(rows) // 2
    rows = rows[:half] if part == "train" else rows[half:] if part == "tune" else rows
    return rows[:limit] if limit is not None else rows


def training_instructions(
    data_dir: Path | None = None, per_file: int | None = None, max_source_chars: int = 1500, part: str = "train"
) -> list[str]:
    """Chat instructions for alignment: the ``part`` half of the dev splits of the shared data (never
    test; see :func:`dev_rows`) + the general ones."""
    out: list[str] = []
    data_dir = data_dir or shared_data_dir()
    if data_dir is not None:
        for name, task in DATASET_TASKS.items():
            f = data_dir / name / "dev.jsonl"
            if f.exists():
                for row in dev_rows(f, part, per_file):
                    out.append(format_instruction(row["source"], task, max_source_chars))
    out += GENERAL_INSTRUCTIONS
    return out


# general topics x instruction templates: free-writing prompts for the extra set (the demo's SAMPLE_PROMPT and
# any travel topic are left out, so `bild demo`'s default prompt stays unseen)
EXTRA_TOPICS = (
    "the ocean",
    "honey bees",
    "the moon",
    "volcanoes",
    "the Roman Empire",
    "electric cars",
    "coffee",
    "chess",
    "rain forests",
    "the internet",
    "bicycles",
    "friendship",
    "music lessons",
    "the human brain",
    "deserts",
    "public libraries",
    "gardening",
    "solar power",
    "the printing press",
    "penguins",
    "city parks",
    "baking bread",
    "the Olympic Games",
    "trains",
    "mountains",
    "recycling plastic",
    "vaccines",
    "smartphones",
    "dinosaurs",
    "the stock market",
    "learning a language",
    "football",
    "the weather",
    "birthdays",
    "museums",
    "rivers",
    "robots",
    "the French Revolution",
    "clean water",
    "sleep",
    "volunteering",
    "classical music",
    "bridges",
    "the night sky",
    "farming",
    "newspapers",
    "wolves",
    "tea",
    "painting",
    "earthquakes",
    "online shopping",
    "the Amazon river",
    "snow",
    "elections",
    "the immune system",
    "kites",
    "space stations",
    "forests in winter",
    "working from home",
    "old castles",
    "cooking pasta",
    "the Great Wall of China",
    "whales",
    "teachers",
    "board games",
    "the wheel",
    "hospitals",
    "islands",
    "birds migrating",
    "money",
    "photography",
    "cheese",
    "the Arctic",
    "social media",
    "mathematics",
    "firefighters",
    "theatre",
    "wind turbines",
    "ants",
    "cities at night",
)
EXTRA_TEMPLATES = (
    "Write a short paragraph about {t}.",
    "Explain {t} to a ten-year-old.",
    "Give three interesting facts about {t}.",
    "Write a short story that involves {t}.",
    "What are the advantages and disadvantages of {t}?",
    "Describe {t} in a few sentences.",
    "Write a short news report about {t}.",
)


# free-writing prompts no training set holds (the "general" column of `bild pair agreement`): the demo's
# default prompt first, then topics outside EXTRA_TOPICS and GENERAL_INSTRUCTIONS
HELDOUT_INSTRUCTIONS = (
    SAMPLE_PROMPT,
    "Write a short paragraph about why people keep pets.",
    "Explain how a rainbow forms.",
    "Give three tips for keeping a room tidy.",
    "Describe a busy market in the morning.",
    "Write a short story about a lost umbrella.",
    "What are the benefits of reading books?",
    "Explain how bread rises.",
    "Write a short paragraph about your favourite season.",
    "What makes a good friend?",
    "Describe how a lighthouse works.",
    "Write a short letter inviting a neighbour to dinner.",
    "Explain why leaves change colour in autumn.",
    "Give three facts about octopuses.",
    "What are the advantages of walking to work?",
    "Write a short paragraph about the history of the bicycle helmet.",
    "Explain what a budget is.",
    "Describe a thunderstorm in a few sentences.",
    "Write a short poem about a quiet street.",
    "What should you pack for a picnic?",
    "Explain how a refrigerator keeps food cold.",
    "Write a short paragraph about learning to swim.",
    "Why do people celebrate the new year?",
    "Describe the smell of a bakery.",
)


def extra_instructions(data_dir: Path | None = None, max_source_chars: int = 1500) -> list[str]:
    """More chat instructions from the same sources as :func:`training_instructions` (train half only, never
    tune or test): consecutive pairs of the translation sources, the second chunk and the opening of each
    summarization document, and the general topics x templates (:data:`EXTRA_TOPICS`)."""
    out: list[str] = []
    data_dir = data_dir or shared_data_dir()
    if data_dir is not None:
        for name, task in DATASET_TASKS.items():
            f = data_dir / name / "dev.jsonl"
            if not f.exists():
                continue
            src = [r["source"] for r in dev_rows(f, "train")]
            if task == "translation":
                out += [format_instruction(a + " " + b, task, max_source_chars) for a, b in zip(src, src[1:])]
            else:
                out += [format_instruction(s[:700], task, max_source_chars) for s in src]
                out += [
                    format_instruction(s[max_source_chars:], task, max_source_chars)
                    for s in src
                    if len(s) > max_source_chars + 200
                ]
    out += [tm.format(t=t) for t in EXTRA_TOPICS for tm in EXTRA_TEMPLATES]
    return out


def resumed_teacher_outputs(large, tok, prompts: list[list[int]], path: Path, **kw) -> list:
    """:func:`~bild.pairs.alignment.generate_teacher_outputs` for token-id ``prompts``, saved to ``path`` after
    every batch; records already in ``path`` are kept and their prompts skipped (an interrupted run resumes)."""
    from .alignment import generate_teacher_outputs, load_teacher_records, save_teacher_records

    kept = load_teacher_records(path) if path.exists() else []
    done = {tuple(r.prompt_ids) for r in kept}
    todo = [p for p in prompts if tuple(p) not in done]
    print(f"{len(prompts)} prompts, {len(prompts) - len(todo)} already in {path}", flush=True)
    if todo:
        kept = kept + generate_teacher_outputs(
            large, tok, todo, on_batch=lambda new: save_teacher_records(kept + new, path), **kw
        )
        save_teacher_records(kept, path)
    return kept


def _cmd_gen_data(a) -> None:
    """The large model's outputs on the train half's chat prompts (resumable, see resumed_teacher_outputs)."""
    if a.prompts == "extra" and (a.part != "train" or a.per_file is not None):
        raise SystemExit(
            "gen-data --prompts extra reads the whole train half: --part must be train and "
            f"--per_file unset (got --part {a.part}, --per_file {a.per_file})"
        )
    torch.manual_seed(a.seed)
    tok, large = load_large(a.cache)
    data = Path(a.data) if a.data else None
    instr = (
        extra_instructions(data, a.max_source_chars)
        if a.prompts == "extra"
        else training_instructions(data, a.per_file, a.max_source_chars, a.part)
    )
    prompts = [tok(chat_prompt(tok, x), add_special_tokens=False)["input_ids"] for x in instr]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    recs = resumed_teacher_outputs(
        large,
        tok,
        prompts,
        out,
        max_new_tokens=a.max_new_tokens,
        batch_size=a.batch_size,
        topk=a.topk,
        temperature=a.temperature,
    )
    print(f"{len(recs)} records, {sum(len(r.output_ids) for r in recs)} tokens, {time.time() - t0:.0f}s -> {out}")


def _cmd_train(a) -> None:
    """Align a draft cut from the large model on saved teacher records, for --minutes."""
    from transformers import TrainerCallback

    from .alignment import align_small_model, greedy_agreement, load_teacher_records

    torch.manual_seed(a.seed)
    tok, large = load_large(a.cache)
    files = [load_teacher_records(f) for f in a.records.split(",")]
    # held out by prompt: the first file's records of --heldout prompts; no record of those prompts trains
    rng = random.Random(a.seed)
    idx = list(range(len(files[0])))
    rng.shuffle(idx)
    held = [files[0][i] for i in idx[: a.heldout]]
    held_prompts = {tuple(r.prompt_ids) for r in held}

    def of_held(r) -> bool:  # a record of a held-out prompt (teacher-forced records cut the prompt short)
        seq = tuple(r.prompt_ids) + tuple(r.output_ids)
        return any(seq[: len(h)] == h for h in held_prompts)

    train = [r for recs in files for r in recs if not of_held(r)]
    print(
        f"{len(train)} train records ({sum(len(r.output_ids) for r in train)} tokens), {len(held)} held out", flush=True
    )
    layers = [int(x) for x in a.layers.split(",")]
    small = make_small_from_large(large, layers)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    before = greedy_agreement(small, held, pad_token_id=pad)
    print(f"layers={layers} agreement before={before:.4f}", flush=True)
    if a.lora_rank > 0:  # ship a low-rank delta, not the layers (bild.pairs.delta)
        from .delta import inject_lora

        inject_lora(small, a.lora_rank)
    vocabulary = None
    if a.vocab_size > 0:  # the pruned head (FR-Spec) the shipped draft loads with: the train records' tokens
        from .alignment import frequent_token_ids, token_frequencies

        vocabulary = frequent_token_ids(token_frequencies(train), a.vocab_size, tokenizer=tok, model=small)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + a.minutes * 60
    log = open(out / "train_log.jsonl", "a")

    class Budget(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            log.write(json.dumps({"step": state.global_step, "t": round(time.time() - t0, 1), **(logs or {})}) + "\n")
            log.flush()

        best = -1.0

        def on_step_end(self, args, state, control, **kw):
            if a.ckpt_every and state.global_step % a.ckpt_every == 0:
                # held-out agreement; keep the best weights (checkpoint survives an interrupted run)
                agree = greedy_agreement(small, held, pad_token_id=pad)
                small.train()
                log.write(
                    json.dumps({"step": state.global_step, "t": round(time.time() - t0, 1), "heldout_agreement": agree})
                    + "\n"
                )
                log.flush()
                print(f"step {state.global_step} t={time.time() - t0:.0f}s heldout agreement {agree:.4f}", flush=True)
                if agree > Budget.best:
                    Budget.best = agree
                    save_draft_weights(
                        small,
                        out / ("best_" + DRAFT_WEIGHTS_NAME),
                        extra={"step": state.global_step, "agreement_after": agree, "agreement_before": before},
                        vocabulary=vocabulary,
                    )
            if time.time() > deadline:
                control.should_training_stop = True

    n_batches = (len(train) + a.batch_size - 1) // a.batch_size
    steps = a.max_steps if a.max_steps > 0 else int(a.epochs * n_batches)
    if a.max_steps <= 0 and a.minutes > 0:
        # size the cosine schedule to the time budget: time a few training steps first
        from .alignment import AlignmentCollator, AlignmentDataset, alignment_loss, freeze_embeddings

        freeze_embeddings(small)

        ds, coll = AlignmentDataset(train), AlignmentCollator(pad)
        probe = torch.optim.SGD([q for q in small.parameters() if q.requires_grad], lr=0.0)
        small.train()
        tp = time.time()
        for i in range(3):
            feats = [ds[j % len(ds)] for j in range(i * a.batch_size, (i + 1) * a.batch_size)]
            loss, _ = alignment_loss(small, coll(feats), kl_weight=a.kl_weight)
            loss.backward()
            probe.zero_grad()
        per_step = (time.time() - tp) / 3
        steps = min(steps, max(10, int(a.minutes * 60 * 0.92 / per_step)))
        print(
            f"~{per_step:.2f}s/step -> {steps} steps ({steps * a.batch_size / max(len(train), 1):.1f} epochs)",
            flush=True,
        )
    t0 = time.time()
    align_small_model(
        small,
        large,
        tok,
        records=train,
        output_dir=None,
        callbacks=[Budget()],
        learning_rate=a.lr,
        max_steps=steps,
        per_device_train_batch_size=a.batch_size,
        kl_weight=a.kl_weight,
        logging_steps=10,
        seed=a.seed,
        warmup_ratio=0.03,
    )
    train_s = time.time() - t0
    after = greedy_agreement(small, held, pad_token_id=pad)
    path = save_draft_weights(
        small,
        out / DRAFT_WEIGHTS_NAME,
        extra={
            "agreement_before": before,
            "agreement_after": after,
            "train_s": train_s,
            "layers": layers,
            "seed": a.seed,
            "lora_rank": a.lora_rank,
        },
        vocabulary=vocabulary,
    )
    if Budget.best > after:  # an earlier evaluation was better: ship that one
        after = Budget.best
        shutil.copyfile(out / ("best_" + DRAFT_WEIGHTS_NAME), path)
    shipped = load_draft_from_weights(large, path)  # as users get it: fp16 delta merged, head pruned
    after_shipped = greedy_agreement(shipped, held, pad_token_id=pad)
    summary = {
        "layers": layers,
        "agreement_before": before,
        "agreement_after": after,
        "agreement_after_as_shipped": after_shipped,
        "vocab_size": a.vocab_size,
        "lora_rank": a.lora_rank,
        "train_s": round(train_s, 1),
        "train_records": len(train),
        "heldout_records": len(held),
        "weights": str(path),
        "weights_bytes": path.stat().st_size,
        "args": vars(a),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


def task_records(
    tok, large, name: str, split: str, n: int, out_dir: Path, max_new_tokens: int = 64, max_source_chars: int = 1500
) -> list:
    """The large model's greedy outputs on the first ``n`` rows of ``<name>/<split>.jsonl`` (``split``
    "test", or a dev part "train"/"tune"), cached in ``out_dir`` and resumed from there.  ``name``
    ``"general"``: the first ``n`` of :data:`HELDOUT_INSTRUCTIONS` (any split)."""
    if name == "general":  # the held-out free-writing prompts (HELDOUT_INSTRUCTIONS)
        instructions = list(HELDOUT_INSTRUCTIONS[:n])
        stem = f"general_heldout_{len(instructions)}"
    else:
        data = shared_data_dir()
        if data is None or not (data / name).is_dir():
            raise FileNotFoundError(f"no {name} data (../shared/data or $BILD_DATA)")
        rows = (
            read_jsonl(data / name / "test.jsonl", n)
            if split == "test"
            else dev_rows(data / name / "dev.jsonl", split, n)
        )
        instructions = [format_instruction(r["source"], DATASET_TASKS[name], max_source_chars) for r in rows]
        stem = f"{name}_{split}_{len(rows)}"
    prompts = [tok(chat_prompt(tok, x), add_special_tokens=False)["input_ids"] for x in instructions]
    path = out_dir / f"{stem}_{max_new_tokens}.pt"
    return resumed_teacher_outputs(large, tok, prompts, path, max_new_tokens=max_new_tokens, batch_size=16, topk=0)


def _cmd_agreement(a) -> None:
    """Greedy agreement of draft files with the large model, per task, along the large model's own outputs."""
    from .alignment import greedy_agreement

    tok, large = load_large(a.cache)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out_dir = Path(a.records_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [n for n in DATASET_TASKS if shared_data_dir() and (shared_data_dir() / n).is_dir()] + ["general"]
    recs = {n: task_records(tok, large, n, a.split, a.per_file, out_dir, a.max_new_tokens) for n in names}
    rows, feats = [], {}
    for w in a.weights or [str(default_draft_weights())]:
        row = {"weights": w, "split": a.split}
        if is_feature_file(w):  # first-draft agreement: with the large model's features of the context
            from .feature_training import feature_agreement, teacher_feature_records

            draft = load_feature_draft(large, w)
            for n in names:
                if n not in feats:  # once per task, for every feature file
                    feats[n] = teacher_feature_records(large, recs[n], progress=False)
                first, second = feature_agreement(draft, feats[n])
                row[n], row[n + "_second"] = round(first, 4), round(second, 4)
        else:
            small = load_draft_from_weights(large, w)
            for n in names:
                row[n] = round(greedy_agreement(small, recs[n], pad_token_id=pad), 4)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=2))


def frequency_texts(
    tokenizer, data_dir: Path | None = None, per_file: int | None = None, max_source_chars: int = 1500
) -> list[str]:
    """Texts to count draft-vocabulary tokens in: the chat prompts of :func:`training_instructions` and the
    ``target`` of the same dev rows, the train half (what the large model is asked to write; never test)."""
    texts = [chat_prompt(tokenizer, x) for x in training_instructions(data_dir, per_file, max_source_chars)]
    data_dir = data_dir or shared_data_dir()
    if data_dir is not None:
        for name in DATASET_TASKS:
            f = data_dir / name / "dev.jsonl"
            if f.exists():
                texts += [row["target"] for row in dev_rows(f, "train", per_file) if row.get("target")]
    return texts


def _cmd_prune(a) -> None:
    """Save the pair's draft with its head pruned to the --size most frequent tokens (FR-Spec)."""
    from ..vocabulary import prune_draft_vocabulary
    from .alignment import frequent_token_ids, load_teacher_records, token_frequencies

    pair = load_pair(a.cache)
    if a.records:
        counts = token_frequencies(load_teacher_records(a.records))
    else:
        counts = token_frequencies(
            frequency_texts(pair.tokenizer, Path(a.data) if a.data else None, a.per_file), pair.tokenizer
        )
    ids = frequent_token_ids(counts, a.size, tokenizer=pair.tokenizer, model=pair.small)
    prune_draft_vocabulary(pair.small, ids)
    pair.small.save_pretrained(a.out)
    pair.tokenizer.save_pretrained(a.out)
    seen = sum(c for t, c in counts.items() if t in set(ids)) / max(sum(counts.values()), 1)
    print(
        f"head over {len(ids)} tokens ({seen:.1%} of the {sum(counts.values())} counted) -> {a.out}; "
        "load it with bild.load_draft"
    )


def _cmd_tune_split(a) -> None:
    """The tune half of each dev split as ``<data set>.tune.jsonl`` (for threshold sweeps)."""
    data = shared_data_dir()
    if data is None:
        raise SystemExit("no shared data folder (../shared/data or $BILD_DATA)")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    for name in DATASET_TASKS:
        if (data / name / "dev.jsonl").exists():
            rows = dev_rows(data / name / "dev.jsonl", "tune")
            path = Path(a.out) / f"{name}.tune.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            print(f"{name}: {len(rows)} rows -> {path}")


def _cmd_compress(a) -> None:
    """A 'layers' draft file as a rank --rank delta from the large model's layers (its vocabulary kept)."""
    from safetensors import safe_open

    from .delta import low_rank_delta

    _, large = load_large(a.cache)
    tuned = load_draft_from_weights(large, a.weights, prune=False)
    base = make_small_from_large(large, tuned.config.bild_source_layers)
    with safe_open(a.weights, framework="pt") as fh:
        meta = {
            k: json.loads(v) for k, v in (fh.metadata() or {}).items() if k not in ("bild_source_layers", "bild_format")
        }
        vocabulary = fh.get_tensor(VOCABULARY_KEY).tolist() if VOCABULARY_KEY in fh.keys() else None
    path = save_draft_weights(
        tuned,
        a.out,
        vocabulary=vocabulary,
        delta=low_rank_delta(tuned, base, a.rank),
        extra={**meta, "compressed_rank": a.rank},
    )
    print(f"{a.weights} ({Path(a.weights).stat().st_size / 1e6:.1f} MB) -> {path} ({path.stat().st_size / 1e6:.1f} MB)")


def _cmd_teacher_force(a) -> None:
    """Records over whole sequences from gen-data records: one large forward each."""
    from .alignment import load_teacher_records, save_teacher_records, teacher_forced_records

    _, large = load_large(a.cache)
    t0 = time.time()
    recs = teacher_forced_records(large, load_teacher_records(a.records), start=a.start, batch_size=a.batch_size)
    save_teacher_records(recs, a.out)
    print(f"{len(recs)} records, {sum(len(r.output_ids) for r in recs)} positions, {time.time() - t0:.0f}s -> {a.out}")


def cached_feature_records(large, teacher_file: str, out_dir: Path) -> list:
    """:func:`~bild.pairs.feature_training.feature_records` along gen-data records (prompt + output), saved in
    ``out_dir`` as ``<name>.features.pt`` and read from there on later runs."""
    from .alignment import load_teacher_records
    from .feature_training import load_feature_records, save_feature_records, teacher_feature_records

    path = out_dir / (Path(teacher_file).stem + ".features.pt")
    if path.is_file():
        return load_feature_records(path)
    feats = teacher_feature_records(large, load_teacher_records(teacher_file))
    save_feature_records(feats, path)
    return feats


def _cmd_train_feature(a) -> None:
    """A feature (EAGLE) draft started from a token draft file and trained on the large model's features along
    gen-data records. Held out: the first file's records of --heldout prompts picked as `train` picks them (same
    seed: the token draft's own held-out prompts), excluded from every file."""
    from ..feature_draft import FeatureDraft
    from .feature_training import feature_agreement, train_feature_draft

    torch.manual_seed(a.seed)
    tok, large = load_large(a.cache)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    files = [cached_feature_records(large, f, out) for f in a.records.split(",")]
    idx = list(range(len(files[0])))
    random.Random(a.seed).shuffle(idx)
    held = [files[0][i] for i in idx[: a.heldout]]
    held_tokens = {tuple(r.tokens[: r.prompt_len].tolist()) for r in held}
    train = [r for recs in files for r in recs if tuple(r.tokens[: r.prompt_len].tolist()) not in held_tokens]
    print(
        f"{len(train)} train sequences ({sum(len(r.tokens) for r in train)} positions), {len(held)} held out",
        flush=True,
    )
    draft = FeatureDraft.from_draft(load_draft_from_weights(large, a.init or default_draft_weights()))
    print("held-out agreement before (first, second):", feature_agreement(draft, held), flush=True)
    summary = train_feature_draft(
        draft,
        large,
        train,
        held,
        minutes=a.minutes,
        max_steps=a.max_steps,
        lr=a.lr,
        batch_size=a.batch_size,
        reg_weight=a.reg_weight,
        unroll=a.unroll,
        seed=a.seed,
        log=lambda s: print(s, flush=True),
    )
    path = save_feature_draft_weights(
        draft,
        large,
        out / FEATURE_WEIGHTS_NAME,
        rank=a.rank,
        extra={"recipe": vars(a) | {"cmd": "train-feature"}, **summary},
    )
    print(json.dumps(summary), "->", path)


COMMANDS = {
    "gen-data": _cmd_gen_data,
    "teacher-force": _cmd_teacher_force,
    "train": _cmd_train,
    "compress": _cmd_compress,
    "agreement": _cmd_agreement,
    "tune-split": _cmd_tune_split,
    "prune": _cmd_prune,
    "train-feature": _cmd_train_feature,
}


def run_command(a) -> None:
    """Run the recipe subcommand ``a.cmd`` (parsed by :func:`bild.pairs.cli.add_recipe_commands`)."""
    COMMANDS[a.cmd](a)
