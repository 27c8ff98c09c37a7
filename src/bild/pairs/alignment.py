"""Prediction alignment of a small (draft) model to a large model.

The BiLD paper ("Speculative Decoding with Big Little Decoder", Kim et al., 2023) fine-tunes
the small model on the *large model's own greedy outputs* instead of the dataset references, so
that the small model predicts what the large model would say.  This module implements that
recipe for decoder-only and encoder-decoder models with HuggingFace ``Trainer``:

1. :func:`generate_teacher_outputs` runs the large model greedily over a set of prompts and
   keeps, for every generated token, the large model's top-k next-token log-probabilities.
2. :func:`align_small_model` fine-tunes the small model on these sequences with a loss that is
   a mix of cross entropy on the large model's greedy tokens and (optionally) a distillation
   term on the large model's top-k distribution (``kl_weight``).
3. :func:`greedy_agreement` measures how often the small model's argmax equals the large
   model's greedy token along the large model's own greedy continuation (teacher forced),
   which is the per-token acceptance rate that matters for BiLD / speculative decoding.

Example::

    from bild.pairs.alignment import align_small_model, load_prompts
    prompts = load_prompts("train.jsonl", field="source", limit=1000)
    align_small_model(small, large, tokenizer, prompts, output_dir="aligned-small")
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = [
    "AlignmentConfig",
    "TeacherRecord",
    "load_prompts",
    "generate_teacher_outputs",
    "save_teacher_records",
    "load_teacher_records",
    "AlignmentDataset",
    "AlignmentCollator",
    "AlignmentTrainer",
    "align_small_model",
    "greedy_agreement",
    "freeze_embeddings",
    "token_frequencies",
    "special_token_ids",
    "frequent_token_ids",
]


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------
def load_prompts(
    source: str | os.PathLike,
    *,
    field: str = "source",
    split: str = "train",
    config: str | None = None,
    limit: int | None = None,
    template: str | None = None,
    seed: int | None = None,
) -> list[str]:
    """Load input texts from a local ``.jsonl`` / ``.json`` / text file or a Hub dataset.

    * ``*.jsonl`` / ``*.json``: one JSON object per line, the text is ``obj[field]``
      (a plain JSON string per line is accepted too).
    * any other existing file: one input per non-empty line.
    * otherwise ``source`` is a ``datasets`` name (``config``/``split``/``field`` apply).

    ``template`` (e.g. ``"Translate to English: {text}"``) is applied with ``str.format``.
    ``seed`` shuffles before ``limit`` is applied.
    """
    path = Path(source)
    texts: list[str] = []
    if path.exists():
        if path.suffix in (".jsonl", ".json"):
            with open(path, encoding="utf-8") as fh:
                first = fh.read(1)
                fh.seek(0)
                if path.suffix == ".json" and first == "[":
                    rows = json.load(fh)
                else:
                    rows = [json.loads(line) for line in fh if line.strip()]
            for row in rows:
                texts.append(row if isinstance(row, str) else str(row[field]))
        else:
            with open(path, encoding="utf-8") as fh:
                texts = [line.rstrip("\n") for line in fh if line.strip()]
    else:
        import datasets  # optional dependency

        ds = datasets.load_dataset(str(source), config, split=split)
        texts = [str(x) for x in ds[field]]
    if seed is not None:
        random.Random(seed).shuffle(texts)
    if limit is not None:
        texts = texts[:limit]
    if template is not None:
        texts = [template.format(text=t) for t in texts]
    return texts


# ----------------------------------------------------------------------------------------------
# teacher outputs
# ----------------------------------------------------------------------------------------------
@dataclass
class TeacherRecord:
    """One prompt and the large model's greedy continuation.

    ``topk_ids``/``topk_logprobs`` (shape ``[len(output_ids), k]``) hold the large model's top-k
    next-token log-probabilities at each generated position (row ``t`` is the distribution the
    large model used to pick ``output_ids[t]``).
    """

    prompt_ids: list[int]
    output_ids: list[int]
    topk_ids: torch.Tensor | None = None
    topk_logprobs: torch.Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_ids": torch.tensor(self.prompt_ids, dtype=torch.int32),
            "output_ids": torch.tensor(self.output_ids, dtype=torch.int32),
            "topk_ids": self.topk_ids,
            "topk_logprobs": self.topk_logprobs,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TeacherRecord:
        return cls(
            prompt_ids=[int(x) for x in d["prompt_ids"]],
            output_ids=[int(x) for x in d["output_ids"]],
            topk_ids=d.get("topk_ids"),
            topk_logprobs=d.get("topk_logprobs"),
        )


def save_teacher_records(records: Sequence[TeacherRecord], path: str | os.PathLike) -> None:
    tmp = str(path) + ".tmp"
    torch.save([r.to_dict() for r in records], tmp)
    os.replace(tmp, path)


def load_teacher_records(path: str | os.PathLike) -> list[TeacherRecord]:
    return [TeacherRecord.from_dict(d) for d in torch.load(path, weights_only=True)]


def _is_encoder_decoder(model) -> bool:
    return bool(getattr(model.config, "is_encoder_decoder", False))


def _pad_id(tokenizer, model) -> int:
    for cand in (
        getattr(tokenizer, "pad_token_id", None),
        getattr(model.generation_config, "pad_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    ):
        if cand is not None:
            return int(cand[0] if isinstance(cand, (list, tuple)) else cand)
    return 0


def _eos_ids(tokenizer, model) -> set[int]:
    ids: set[int] = set()
    for cand in (getattr(model.generation_config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if cand is None:
            continue
        ids.update(int(c) for c in (cand if isinstance(cand, (list, tuple)) else [cand]))
    return ids


@torch.no_grad()
def _length_batches(lengths: Sequence[int], batch_size: int, progress: bool, desc: str) -> Iterable[list[int]]:
    """Indices in length-sorted batches of ``batch_size`` (a tqdm bar over them when ``progress``)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if progress:
        try:
            from tqdm.auto import tqdm

            return tqdm(batches, desc=desc)
        except ImportError:  # pragma: no cover
            pass
    return batches


def _topk_rows(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids int32, log-probs float16) of the top ``k`` of each row of ``logits`` [T, V]."""
    lp = torch.log_softmax(logits, dim=-1)
    vals, ids = lp.topk(min(k, lp.shape[-1]), dim=-1)
    return ids.to(torch.int32), vals.to(torch.float16)


def generate_teacher_outputs(
    large,
    tokenizer,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    topk: int = 32,
    max_prompt_tokens: int | None = None,
    add_special_tokens: bool = True,
    progress: bool = True,
    on_batch: Callable[[list[TeacherRecord]], None] | None = None,
    temperature: float = 0.0,
) -> list[TeacherRecord]:
    """Greedy-decode ``prompts`` with ``large`` and keep its outputs (+ top-k log-probs).

    ``temperature`` > 0 samples the outputs instead (more paths near the greedy one to align on; the
    top-k log-probs stay those of the large model's untempered distribution).

    ``prompts`` are strings (tokenised with ``tokenizer``) or already tokenised id lists.
    Prompts are processed in length-sorted batches (left padding for decoder-only models) and
    returned in the input order.  Each continuation is cut after the first EOS token.
    ``on_batch`` is called with the records done so far after each batch (for checkpoints).
    """
    large.eval()
    device = next(large.parameters()).device
    enc_dec = _is_encoder_decoder(large)
    pad_id = _pad_id(tokenizer, large)
    eos = _eos_ids(tokenizer, large)
    encoded: list[list[int]] = []
    for p in prompts:
        ids = tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] if isinstance(p, str) else list(p)
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            ids = ids[:max_prompt_tokens] if enc_dec else ids[-max_prompt_tokens:]
        encoded.append(ids)
    results: dict[int, TeacherRecord] = {}
    for idx in _length_batches([len(x) for x in encoded], batch_size, progress, "teacher generation"):
        seqs = [encoded[i] for i in idx]
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for r, s in enumerate(seqs):
            if enc_dec:  # right padding for encoders
                input_ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            else:
                input_ids[r, width - len(s) :] = torch.tensor(s)
                mask[r, width - len(s) :] = 1
        out = large.generate(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            **({"temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else {}),
            num_beams=1,
            output_logits=topk > 0,
            return_dict_in_generate=True,
            pad_token_id=pad_id,
        )
        seq = out.sequences.cpu()
        gen = seq[:, 1:] if enc_dec else seq[:, width:]  # enc-dec output starts with decoder_start
        logits = torch.stack(out.logits, dim=1).float().cpu() if topk > 0 else None  # [B, T, V]
        for r, i in enumerate(idx):
            toks = gen[r].tolist()
            n = len(toks)
            for t, tok in enumerate(toks):
                if tok in eos:
                    n = t + 1
                    break
            toks = toks[:n]
            rec = TeacherRecord(prompt_ids=seqs[r], output_ids=toks)
            if logits is not None:
                rec.topk_ids, rec.topk_logprobs = _topk_rows(logits[r, :n], topk)
            results[i] = rec
        if on_batch is not None:
            on_batch([results[i] for i in sorted(results)])
    return [results[i] for i in range(len(encoded))]


@torch.no_grad()
def teacher_forced_records(
    large,
    records: Sequence[TeacherRecord],
    *,
    start: int = 16,
    topk: int = 32,
    batch_size: int = 8,
    progress: bool = True,
    on_batch: Callable[[list[TeacherRecord]], None] | None = None,
) -> list[TeacherRecord]:
    """Records that also align the draft on the prompt's positions (decoder-only models).

    For each record (prompt P, output O), one forward of ``large`` over P + O gives its top-k next-token
    distribution at every position; the new record is (P[:start], P[start:] + O) with those rows, so the
    draft learns the large model's predictions along the prompt text too (German sources, documents), from
    one forward per record instead of a decode.  Training takes the teacher's top token as the target there
    (:func:`alignment_loss`), not the text's own next token.
    """
    large.eval()
    device = next(large.parameters()).device
    done: dict[int, TeacherRecord] = {}
    lengths = [len(r.prompt_ids) + len(r.output_ids) for r in records]
    for idx in _length_batches(lengths, batch_size, progress, "teacher forcing"):
        seqs = [list(records[i].prompt_ids) + list(records[i].output_ids) for i in idx]
        width = max(len(x) for x in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, x in enumerate(seqs):  # right padding: positions need no offsets
            ids[r, : len(x)] = torch.tensor(x)
            mask[r, : len(x)] = 1
        logits = large(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
        for r, i in enumerate(idx):
            rec, n = records[i], len(seqs[r])
            s = min(start, len(rec.prompt_ids) - 1)
            tids, vals = _topk_rows(logits[r, s - 1 : n - 1], topk)  # row t predicts token s + t
            done[i] = TeacherRecord(prompt_ids=seqs[r][:s], output_ids=seqs[r][s:], topk_ids=tids, topk_logprobs=vals)
        if on_batch is not None:
            on_batch([done[i] for i in sorted(done)])
    return [done[i] for i in range(len(records))]


# ----------------------------------------------------------------------------------------------
# training data
# ----------------------------------------------------------------------------------------------
class AlignmentDataset(torch.utils.data.Dataset):
    """Turns :class:`TeacherRecord` objects into training features.

    Decoder-only: ``input_ids = prompt + output``; ``labels`` are -100 on the prompt.
    Encoder-decoder: ``input_ids = prompt``; ``labels = output``.
    """

    def __init__(self, records: Sequence[TeacherRecord], encoder_decoder: bool = False):
        self.records = [r for r in records if len(r.output_ids) > 0]
        self.encoder_decoder = encoder_decoder

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self.records[i]
        item: dict[str, Any] = {}
        if self.encoder_decoder:
            item["input_ids"] = list(r.prompt_ids)
            item["labels"] = list(r.output_ids)
        else:
            item["input_ids"] = list(r.prompt_ids) + list(r.output_ids)
            item["labels"] = [-100] * len(r.prompt_ids) + list(r.output_ids)
        if r.topk_ids is not None:
            item["teacher_ids"] = r.topk_ids
            item["teacher_logprobs"] = r.topk_logprobs
        return item


@dataclass
class AlignmentCollator:
    """Right-pads features; teacher top-k rows are packed in label order (flattened)."""

    pad_token_id: int
    encoder_decoder: bool = False

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        B = len(features)
        input_ids = torch.full((B, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((B, width), dtype=torch.long)
        for r, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[r, :n] = torch.tensor(f["input_ids"])
            attention_mask[r, :n] = 1
        lwidth = max(len(f["labels"]) for f in features)
        labels = torch.full((B, lwidth), -100, dtype=torch.long)
        for r, f in enumerate(features):
            labels[r, : len(f["labels"])] = torch.tensor(f["labels"])
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if all("teacher_ids" in f for f in features):
            # rows in the order of (row, position) of labels != -100 after the causal shift
            batch["teacher_ids"] = torch.cat([f["teacher_ids"].long() for f in features], 0)
            batch["teacher_logprobs"] = torch.cat([f["teacher_logprobs"].float() for f in features], 0)
        return batch


def _decoder_hidden_and_head(model):
    """(inner decoder module, output head) for HF causal LMs with the usual layout, else None."""
    inner = getattr(model, "model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if inner is None or head is None:
        return None
    if getattr(model.config, "final_logit_softcapping", None):
        return None
    return inner, head


def alignment_loss(
    model,
    inputs: dict[str, torch.Tensor],
    *,
    kl_weight: float = 0.0,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss on the positions that predict the large model's tokens.

    ``(1 - kl_weight) * CE(large greedy token) + kl_weight * T^2 * CE(teacher top-k dist)``; with teacher
    top-k rows the CE target is the teacher's top token (the output token itself along greedy outputs).
    For decoder-only models the LM head is applied only at those positions (saves the
    vocabulary projection over long prompts).
    """
    labels = inputs["labels"]
    enc_dec = _is_encoder_decoder(model)
    if enc_dec:
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels)
        logits = out.logits  # [B, T, V], aligned with labels
        sel = labels != -100
        logits = logits[sel]
        targets = labels[sel]
    else:
        shift_labels = labels[:, 1:]
        sel = shift_labels != -100
        targets = shift_labels[sel]
        parts = _decoder_hidden_and_head(model)
        if parts is not None:
            inner, head = parts
            hidden = inner(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
            logits = head(hidden[:, :-1][sel])
        else:
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, :-1][sel]
    logits = logits.float()
    if "teacher_ids" in inputs and inputs["teacher_ids"].shape[0] == targets.shape[0]:
        # the large model's top token: the label itself along greedy outputs, its argmax along sampled ones
        targets = inputs["teacher_ids"][:, 0].to(targets)
    ce = F.cross_entropy(logits, targets)
    metrics = {"ce": float(ce.detach())}
    loss = ce
    if kl_weight > 0 and "teacher_ids" in inputs:
        t_ids = inputs["teacher_ids"].to(logits.device)
        t_lp = inputs["teacher_logprobs"].to(logits.device)
        if t_ids.shape[0] != logits.shape[0]:
            raise ValueError(f"teacher rows {t_ids.shape[0]} != label positions {logits.shape[0]}")
        # teacher distribution renormalised over its top-k, softened by temperature
        p_t = torch.softmax(t_lp / temperature, dim=-1)
        logq = torch.log_softmax(logits / temperature, dim=-1).gather(-1, t_ids)
        soft = -(p_t * logq).sum(-1).mean() * temperature**2
        metrics["soft_ce"] = float(soft.detach())
        loss = (1 - kl_weight) * ce + kl_weight * soft
    with torch.no_grad():
        metrics["agree"] = float((logits.argmax(-1) == targets).float().mean())
    return loss, metrics


try:
    from transformers import Trainer as _Trainer
except Exception:  # pragma: no cover
    _Trainer = object  # type: ignore[misc,assignment]


class AlignmentTrainer(_Trainer):  # type: ignore[misc,valid-type]
    """``transformers.Trainer`` with the alignment / distillation loss."""

    def __init__(self, *args, kl_weight: float = 0.0, temperature: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.kl_weight = kl_weight
        self.temperature = temperature
        self._last_metrics: dict[str, float] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, metrics = alignment_loss(model, inputs, kl_weight=self.kl_weight, temperature=self.temperature)
        self._last_metrics = metrics
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:
            logs = {**logs, **{f"train_{k}": round(v, 4) for k, v in self._last_metrics.items()}}
        super().log(logs, *args, **kwargs)


def freeze_embeddings(model) -> int:
    """Freeze input embeddings and the (possibly tied) output head. Returns #frozen params."""
    n = 0
    mods = [model.get_input_embeddings()]
    if hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None:
        mods.append(model.get_output_embeddings())
    for m in mods:
        for p in m.parameters():
            if p.requires_grad:
                p.requires_grad_(False)
                n += p.numel()
    return n


@dataclass
class AlignmentConfig:
    """Hyper-parameters of :func:`align_small_model` (mostly ``TrainingArguments``)."""

    max_new_tokens: int = 64
    gen_batch_size: int = 8
    topk: int = 32
    kl_weight: float = 0.5
    temperature: float = 1.0
    learning_rate: float = 1e-3
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    lr_scheduler_type: str = "cosine"
    max_grad_norm: float = 1.0
    freeze_embeddings: bool = True
    max_prompt_tokens: int | None = 512
    logging_steps: int = 10
    save_steps: int = 0  # 0: no intermediate checkpoints
    seed: int = 0
    extra_training_args: dict[str, Any] = field(default_factory=dict)


def align_small_model(
    small,
    large,
    tokenizer,
    prompts: Sequence[str] | None = None,
    *,
    output_dir: str | os.PathLike | None = None,
    records: Sequence[TeacherRecord] | None = None,
    config: AlignmentConfig | None = None,
    callbacks: list | None = None,
    resume_from_checkpoint: str | bool | None = None,
    **overrides,
):
    """Fine-tune ``small`` to predict ``large``'s greedy outputs on ``prompts``.

    Either ``prompts`` (the large model is run over them first) or pre-computed ``records`` from
    :func:`generate_teacher_outputs` must be given.  Keyword ``overrides`` update
    :class:`AlignmentConfig` fields.  If ``output_dir`` is given the aligned model and the
    tokenizer are saved there with ``save_pretrained`` (Trainer checkpoints go to
    ``output_dir/checkpoints`` when ``save_steps`` > 0).  Returns the trained small model.
    """
    from transformers import TrainingArguments, set_seed

    cfg = config or AlignmentConfig()
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise TypeError(f"unknown alignment option {k!r}")
        setattr(cfg, k, v)
    set_seed(cfg.seed)
    if records is None:
        if prompts is None:
            raise ValueError("give prompts or records")
        records = generate_teacher_outputs(
            large,
            tokenizer,
            prompts,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.gen_batch_size,
            topk=cfg.topk if cfg.kl_weight > 0 else 0,
            max_prompt_tokens=cfg.max_prompt_tokens,
        )
    enc_dec = _is_encoder_decoder(small)
    dataset = AlignmentDataset(records, encoder_decoder=enc_dec)
    if len(dataset) == 0:
        raise ValueError("no training sequences (all teacher outputs empty)")
    if cfg.freeze_embeddings:
        freeze_embeddings(small)
    small.train()
    run_dir = Path(output_dir) if output_dir is not None else None
    args = TrainingArguments(
        output_dir=str(run_dir / "checkpoints") if run_dir else "/tmp/bild-align-unused",
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        warmup_steps=max(0, int(cfg.warmup_ratio * _total_steps(cfg, len(dataset)))),
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler_type,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if (cfg.save_steps and run_dir) else "no",
        save_steps=cfg.save_steps or 500,
        save_total_limit=2,
        report_to=[],
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        **cfg.extra_training_args,
    )
    trainer = AlignmentTrainer(
        model=small,
        args=args,
        train_dataset=dataset,
        data_collator=AlignmentCollator(_pad_id(tokenizer, small), encoder_decoder=enc_dec),
        callbacks=callbacks,
        kl_weight=cfg.kl_weight,
        temperature=cfg.temperature,
    )
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    small.eval()
    if run_dir is not None:
        small.save_pretrained(run_dir)
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(run_dir)
    return small


def _total_steps(cfg: AlignmentConfig, n: int) -> int:
    if cfg.max_steps and cfg.max_steps > 0:
        return cfg.max_steps
    per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    return int(math.ceil(n / per_step) * cfg.num_train_epochs)


# ----------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def greedy_agreement(small, records: Sequence[TeacherRecord], *, batch_size: int = 8, pad_token_id: int = 0) -> float:
    """Fraction of the large model's greedy tokens that are also the small model's argmax.

    Teacher forced along the large model's own continuation (the records from
    :func:`generate_teacher_outputs`), which equals the per-token acceptance rate of greedy
    speculative decoding with this pair. A pruned draft head (:func:`bild.prune_draft_vocabulary`)
    is read through its token map.
    """
    was_training = small.training
    small.eval()
    enc_dec = _is_encoder_decoder(small)
    ds = AlignmentDataset(records, encoder_decoder=enc_dec)
    coll = AlignmentCollator(pad_token_id, encoder_decoder=enc_dec)
    hit = tot = 0
    device = next(small.parameters()).device
    pruned = _draft_token_ids(small, device)
    for i in range(0, len(ds), batch_size):
        feats = [ds[j] for j in range(i, min(len(ds), i + batch_size))]
        for f in feats:
            f.pop("teacher_ids", None)
            f.pop("teacher_logprobs", None)
        b = {k: v.to(device) for k, v in coll(feats).items()}
        if enc_dec:
            logits = small(**b).logits
            sel = b["labels"] != -100
            pred, tgt = logits.argmax(-1)[sel], b["labels"][sel]
        else:
            logits = small(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
            lab = b["labels"][:, 1:]
            sel = lab != -100
            pred, tgt = logits.argmax(-1)[sel], lab[sel]
        if pruned is not None:  # a pruned head's argmax is a row of its subset
            pred = pruned[pred]
        hit += int((pred == tgt).sum())
        tot += int(sel.sum())
    if was_training:
        small.train()
    return hit / max(tot, 1)


def _draft_token_ids(model, device) -> torch.Tensor | None:
    """The token ids of a pruned head's rows (bild.prune_draft_vocabulary), or None for a full head."""
    from ..vocabulary import draft_vocabulary

    known = draft_vocabulary(model)
    return None if known is None else torch.tensor(known[0], device=device)


# ----------------------------------------------------------------------------------------------
# draft vocabulary (FR-Spec): the tokens a pruned draft head keeps
# ----------------------------------------------------------------------------------------------
def token_frequencies(data: Iterable, tokenizer=None, *, prompts: bool = True) -> collections.Counter:
    """Token id -> count over ``data``: :class:`TeacherRecord` objects (``prompt_ids`` + ``output_ids``;
    ``output_ids`` only with ``prompts=False``), lists of token ids, or strings (tokenised with ``tokenizer``,
    no special tokens added)."""
    counts: collections.Counter = collections.Counter()
    for item in data:
        if isinstance(item, TeacherRecord):
            counts.update(int(t) for t in item.output_ids)
            if prompts:
                counts.update(int(t) for t in item.prompt_ids)
        elif isinstance(item, str):
            if tokenizer is None:
                raise ValueError("`tokenizer` is needed to count tokens in strings")
            counts.update(tokenizer(item, add_special_tokens=False)["input_ids"])
        else:
            counts.update(int(t) for t in item)
    return counts


def special_token_ids(tokenizer=None, model=None) -> set[int]:
    """Ids a draft head must keep however rare: the tokenizer's special and special added tokens (bos, eos,
    pad, unk, chat-template markers such as ``<|im_start|>``), the tokens of its chat template's skeleton, and
    the model's generation-config bos / eos / pad / decoder-start ids."""
    ids: set[int] = set()
    if tokenizer is not None:
        ids.update(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])
        for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
            if getattr(tok, "special", False):
                ids.add(int(i))
        if getattr(tokenizer, "chat_template", None):
            msgs = [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]
            try:
                text = tokenizer.apply_chat_template(msgs, tokenize=False)
                ids.update(tokenizer(text, add_special_tokens=False)["input_ids"])
            except Exception:  # noqa: BLE001 - a template that takes other messages: its special tokens suffice
                pass
    if model is not None:
        gc = model.generation_config
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
            v = getattr(gc, name, None)
            ids.update(int(x) for x in (v if isinstance(v, (list, tuple)) else [v]) if x is not None)
    return ids


def frequent_token_ids(
    data, size: int, *, tokenizer=None, model=None, vocab_size: int | None = None, prompts: bool = True
) -> list[int]:
    """The ``size`` token ids a pruned draft head keeps (FR-Spec): every :func:`special_token_ids`, then the
    most frequent tokens of ``data`` (a ``Counter`` from :func:`token_frequencies`, or what it takes), ties by
    ascending id; when ``data`` has fewer distinct tokens, unseen ids in ascending order (BPE vocabularies
    number their early, frequent merges first) up to ``vocab_size`` (default: the model's logits width,
    else ``len(tokenizer)``). Returns sorted ids; pass them to :func:`bild.prune_draft_vocabulary`."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"`size` must be an integer >= 1, got {size!r}")
    counts = data if isinstance(data, collections.Counter) else token_frequencies(data, tokenizer, prompts=prompts)
    if vocab_size is None:
        from ..adapters import vocab_width

        vocab_size = vocab_width(model) if model is not None else len(tokenizer) if tokenizer is not None else None
    keep = set(special_token_ids(tokenizer, model))
    if len(keep) > size:
        raise ValueError(f"`size` {size} is below the {len(keep)} special tokens a draft head must keep")
    for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(keep) >= size:
            break
        if vocab_size is None or t < vocab_size:
            keep.add(int(t))
    for t in range(vocab_size or 0):
        if len(keep) >= size:
            break
        keep.add(t)
    return sorted(keep)
