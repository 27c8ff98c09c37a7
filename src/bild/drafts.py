"""Loading a saved draft (`bild.load_draft`): a pruned token draft (`bild.vocabulary`) or a feature draft
(`bild.feature_draft`), from a local `save_pretrained` folder. Above both, since it knows both kinds."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import torch

from .feature_draft import CONFIG_KEY as FEATURE_KEY
from .feature_draft import FeatureDraft
from .vocabulary import CONFIG_KEY, _linear, _set_head


def load_draft(path: str | os.PathLike, model_class=None, **kwargs):
    """`model_class.from_pretrained(path, **kwargs)` (default `AutoModelForCausalLM`, or
    `AutoModelForSeq2SeqLM` for an encoder-decoder config), with a pruned head saved by `save_pretrained` put
    back: transformers loads the model with a full head (tied to the embeddings, or new) and reports the
    saved `<head>.rows.*` as unexpected; those rows then become the head again. A model saved without a map
    loads as `from_pretrained` loads it. Local folders of safetensors files only."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM
    from transformers.utils import logging as hf_logging

    config = kwargs.pop("config", None) or AutoConfig.from_pretrained(path)
    if model_class is None:
        model_class = FeatureDraft if getattr(config, FEATURE_KEY, None) else None
    if model_class is None:
        model_class = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    entry = getattr(config, CONFIG_KEY, None)
    if not entry:
        return model_class.from_pretrained(path, config=config, **kwargs)
    ids, full, name = [int(i) for i in entry["token_ids"]], int(entry["vocab_size"]), entry["head"]
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report lists the head's rows as unexpected
    try:
        model = model_class.from_pretrained(path, config=config, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    saved = _saved_tensors(path, [f"{name}.rows.weight", f"{name}.rows.bias"])
    weight, bias = saved.get(f"{name}.rows.weight"), saved.get(f"{name}.rows.bias")
    if weight is None or weight.shape[0] != len(ids):
        raise ValueError(
            f"`path` {path}: its safetensors files hold no pruned head `{name}.rows.weight` of {len(ids)} rows"
        )
    old = model.get_output_embeddings()
    _set_head(model, _linear(weight.to(old.weight), None if bias is None else bias.to(old.weight)), ids, full)
    return model


def _saved_tensors(path, keys: list[str]) -> dict[str, torch.Tensor]:
    """The tensors named `keys` found in a local save_pretrained folder's safetensors files (sharded or not)."""
    from safetensors import safe_open

    index = Path(path) / "model.safetensors.index.json"
    if index.exists():
        files = sorted(
            {str(Path(path) / f) for k, f in json.loads(index.read_text())["weight_map"].items() if k in keys}
        )
    else:
        files = sorted(glob.glob(str(Path(path) / "*.safetensors")))
    out = {}
    for f in files:
        with safe_open(f, framework="pt") as fh:
            out.update({k: fh.get_tensor(k) for k in keys if k in fh.keys()})
    return out
