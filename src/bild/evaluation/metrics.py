"""Quality metrics (BLEU, ROUGE) and the aggregation of per-example records into run results."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from .timing import latency_summary, tokens_per_second

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def bleu(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Corpus BLEU with sacrebleu's defaults (13a tokenisation), one reference per example."""
    import sacrebleu

    metric = sacrebleu.BLEU()
    result = metric.corpus_score(list(predictions), [list(references)])
    return {
        "bleu": result.score,
        "bleu_precisions": list(result.precisions),
        "bleu_brevity_penalty": result.bp,
        "bleu_signature": str(metric.get_signature()),
    }


def split_sentences(text: str) -> str:
    """One sentence per line, as ROUGE-Lsum expects.

    Text that already has line breaks (CNN/DailyMail highlights) is kept as is; otherwise it is
    split after ``.``, ``!`` or ``?`` followed by whitespace. (The Hugging Face scripts use nltk's
    punkt model, which needs a download; this rule needs nothing.)
    """
    text = text.strip()
    if "\n" in text:
        return "\n".join(line.strip() for line in text.splitlines() if line.strip())
    return "\n".join(part for part in _SENTENCE_END.split(text) if part)


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean F-measure x 100 of ROUGE-1/2/L/Lsum (rouge_score, ``use_stemmer=True``)."""
    from rouge_score import rouge_scorer

    keys = ("rouge1", "rouge2", "rougeL", "rougeLsum")
    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
    totals = dict.fromkeys(keys, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(split_sentences(reference), split_sentences(prediction))
        for key in keys:
            totals[key] += scores[key].fmeasure
    n = len(predictions)
    return {key: (100.0 * value / n if n else math.nan) for key, value in totals.items()}


def quality(metric: str, predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """BLEU or ROUGE scores plus ``score``: the headline number (BLEU, or ROUGE-L)."""
    if metric == "bleu":
        scores = bleu(predictions, references)
        scores["score"] = scores["bleu"]
    elif metric == "rouge":
        scores = rouge(predictions, references)
        scores["score"] = scores["rougeL"]
    else:
        raise ValueError(f"unknown metric {metric!r}")
    return scores


def _batch_level(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per generate call (records of a batch share ``batch_first_id``)."""
    seen, firsts = set(), []
    for record in records:
        key = record.get("batch_first_id", record["id"])
        if key not in seen:
            seen.add(key)
            firsts.append(record)
    return firsts


def engine_totals(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Sum of the engine's numeric counters over all generate calls (lists are summed too)."""
    totals: dict[str, float] = {}
    for record in _batch_level(records):
        for key, value in (record.get("stats") or {}).items():
            if isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and not key.endswith(("_rate", "_per_large_call")):
                totals[key] = totals.get(key, 0) + value
            elif isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
                totals[key] = totals.get(key, 0) + sum(value)
    return totals


def summarize_records(records: Sequence[dict[str, Any]], mode: str) -> dict[str, Any]:
    """Latency, throughput and engine rates over the given prediction records.

    * latency: per-example ``generation_seconds`` (a batch's time split evenly over its examples);
    * tokens_per_second: all new tokens / all timed seconds;
    * fallback_rate, rollback_rate: fallbacks (rollbacks) per generated token, from the engine's counters;
    * large_calls_per_token: large-model forward passes (prefill included) per generated token
      (1 for ``large``, 0 for ``small``; not measured for ``assisted``);
    * acceptance_rate (engine runs): accepted / drafted tokens.
    """
    seconds = [r["generation_seconds"] for r in records]
    total_seconds = sum(r.get("batch_seconds", r["generation_seconds"]) for r in _batch_level(records))
    total_tokens = sum(r["new_tokens"] for r in records)
    out: dict[str, Any] = {
        "num_examples": len(records),
        "latency": latency_summary(seconds),
        "total_generation_seconds": total_seconds,
        "total_new_tokens": total_tokens,
        "tokens_per_second": tokens_per_second(total_tokens, total_seconds),
        "fallback_rate": None,
        "rollback_rate": None,
        "large_calls_per_token": {"large": 1.0, "small": 0.0}.get(mode),
    }
    totals = engine_totals(records)
    if totals:
        tokens = totals.get("new_tokens") or total_tokens
        out["engine_totals"] = totals
        if tokens:
            for key, name in (
                ("fallbacks", "fallback_rate"),
                ("rollbacks", "rollback_rate"),
                ("large_forwards", "large_calls_per_token"),
            ):
                if key in totals:
                    out[name] = totals[key] / tokens
        if totals.get("drafted"):
            out["acceptance_rate"] = totals.get("accepted", 0) / totals["drafted"]
    return out
