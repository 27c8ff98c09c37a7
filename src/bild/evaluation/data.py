"""Loading evaluation examples from a local JSONL file or a Hub dataset (through ``datasets``).

Every example gets a stable integer ``id``: its position in the (limited) split. Resuming and
multi-process sharding rely on these ids. The first record is checked for the requested fields
before anything else happens, so a wrong field name fails before any model is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError, EvalConfig


@dataclass(frozen=True)
class Example:
    """One source text and its reference, with its position in the split as ``id``."""

    id: int
    source: str
    target: str


def read_jsonl(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Read up to ``limit`` JSON objects, one per non-empty line; a bad line is reported by number."""
    records: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"--test_file: {path}, line {number} is not valid JSON: {exc}") from None
            if not isinstance(record, dict):
                raise ConfigError(f"--test_file: {path}, line {number} is not a JSON object")
            records.append(record)
            if limit is not None and len(records) >= limit:
                break
    return records


def make_extractor(
    cfg: EvalConfig, first: dict[str, Any], origin: str, local: bool
) -> Callable[[dict], tuple[str, str]]:
    """Return a function mapping a record to ``(source, target)``, after checking ``first`` has the fields.

    Local JSONL files use ``source``/``target`` when present. Otherwise translation data is read
    from ``translation_field`` (a ``{lang: text}`` dict), and anything else from
    ``source_field``/``target_field``.
    """
    fields = ", ".join(sorted(first)) or "none"
    if local and "source" in first and "target" in first:
        return lambda r: (r["source"], r["target"])
    if cfg.task == "translation" and cfg.translation_field in first:
        pair = first[cfg.translation_field]
        if not isinstance(pair, dict):
            raise ConfigError(
                f"--translation_field {cfg.translation_field!r} of {origin} is not a {{language: text}} mapping"
            )
        for flag, lang in (("--source_lang", cfg.source_lang), ("--target_lang", cfg.target_lang)):
            if lang not in pair:
                raise ConfigError(
                    f"{flag} {lang!r} not found in the {cfg.translation_field!r} field of {origin} "
                    f"(languages: {', '.join(sorted(pair))})"
                )
        tf, sl, tl = cfg.translation_field, cfg.source_lang, cfg.target_lang
        return lambda r: (r[tf][sl], r[tf][tl])
    for flag, name in (("--source_field", cfg.source_field), ("--target_field", cfg.target_field)):
        if name not in first:
            hint = " (local JSONL files need 'source' and 'target')" if local else ""
            raise ConfigError(f"{flag} {name!r} not found in the first record of {origin}; its fields: {fields}{hint}")
    sf, tf = cfg.source_field, cfg.target_field
    return lambda r: (r[sf], r[tf])


def load_records(cfg: EvalConfig) -> tuple[Sequence[dict[str, Any]], str, bool]:
    """Raw records (limited to ``cfg.limit``), a description of where they came from, and whether local."""
    if cfg.test_file:
        return read_jsonl(cfg.test_file, cfg.limit), cfg.test_file, True
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is in the [eval] extra
        raise ConfigError(
            "--dataset_name needs the 'datasets' package (pip install big-little-decoder[eval])"
        ) from None
    split = cfg.split if cfg.limit is None else f"{cfg.split}[:{cfg.limit}]"
    origin = f"{cfg.dataset_name}" + (f"/{cfg.dataset_config}" if cfg.dataset_config else "") + f" [{split}]"
    try:
        ds = datasets.load_dataset(cfg.dataset_name, cfg.dataset_config, split=split)
    except Exception as exc:  # noqa: BLE001 - any loading failure is a user-facing data error
        raise ConfigError(
            f"--dataset_name: could not load {origin}: {type(exc).__name__}: {exc}. "
            "Without Hub access, pass a local JSONL with --test_file"
        ) from None
    return ds, origin, False


def load_examples(cfg: EvalConfig) -> list[Example]:
    """Load the evaluation examples; fails with :class:`ConfigError` on missing fields or empty data."""
    records, origin, local = load_records(cfg)
    if len(records) == 0:
        raise ConfigError(f"{'--test_file' if local else '--dataset_name'}: {origin} holds no examples")
    extract = make_extractor(cfg, records[0], origin, local)
    examples = []
    for index, record in enumerate(records):
        try:
            source, target = extract(record)
        except (KeyError, TypeError):
            raise ConfigError(f"record {index} of {origin} lacks the fields the first record had") from None
        examples.append(Example(index, str(source), str(target)))
    return examples
