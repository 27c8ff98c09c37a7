"""A zoo of tiny seeded model pairs over transformers' generate()-capable language models (no downloads).

`ZOO[name](layers)` returns `(model_class, config)`; `make_zoo_pair(name, seed)` returns `(small, large)`
built with tests/models.py's recipe: a 3-layer large model (seeded init, LM head scaled to std 2, 2-D
weights of layers >= 1 scaled by 0.7, 0.4 for encoder-decoder pairs) and a 1-layer small model with the same
config that loads the large state dict (strict=False, tensors whose shape depends on the depth skipped), so the
pair agrees on some tokens and not on others. Hybrid families (convolution / linear-attention / state-space
layers) get a 2-layer small model so that it holds one layer of each kind (`small_layers`).

Every config is tiny: vocab 96, hidden 32, 4 heads (2 kv heads where supported), intermediate 64, special
ids pad=0 bos=1 eos=2, an untied LM head where the config allows, and a SHORT sliding window (4 tokens)
in families that have one, so that sequences go past it. Families whose config has convolution /
linear-attention / recurrent layers are built anyway (the engine is expected to refuse some of them).

Variants beyond one entry per model type: qwen2_nosw (Qwen2 default: no window), gpt_bigcode_mha, falcon_alibi,
falcon_new_arch, blenderbot_enc_ngram1 (encoder_no_repeat_ngram_size=1), fsmt_default_beams (num_beams=5),
bart_causal / prophetnet_causal (decoder-only halves), whisper_decoder, trocr, git, moshi.

`ZOO_INFO[name]` records the model type, class name, kind ("decoder" / "encoder-decoder") and small depth;
`SKIPPED` lists the model types that were not put in the zoo, with the reason.
"""

from __future__ import annotations

import dataclasses
import re

import torch
from transformers import CONFIG_MAPPING

V = 96
D = 32
HEADS = 4
KV = 2
FF = 64
SPECIAL = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
SLIDING_WINDOW = 4
SHARPNESS = 2.0
DEPTH_SCALE = 0.7  # decoder-only
DEPTH_SCALE_ED = 0.4  # encoder-decoder: at 0.7 the 1-layer encoder + decoder almost never agrees with the large pair

# -- generic field values (set only where the config class has the field) -------------------------------
_LAYER_FIELDS = (
    "num_hidden_layers",
    "n_layer",
    "num_layers",
    "n_layers",
    "decoder_layers",
    "encoder_layers",
    "num_decoder_layers",
    "num_encoder_layers",
)
_GENERIC = dict(
    vocab_size=V,
    hidden_size=D,
    n_embd=D,
    d_model=D,
    dim=D,
    n_embed=D,
    emb_dim=D,
    embedding_size=D,
    num_attention_heads=HEADS,
    n_head=HEADS,
    num_heads=HEADS,
    n_heads=HEADS,
    encoder_attention_heads=HEADS,
    decoder_attention_heads=HEADS,
    num_encoder_attention_heads=HEADS,
    num_decoder_attention_heads=HEADS,
    attention_heads=HEADS,
    num_key_value_heads=KV,
    num_kv_heads=KV,
    multi_query_group_num=KV,
    intermediate_size=FF,
    ffn_dim=FF,
    n_inner=FF,
    d_ff=FF,
    encoder_ffn_dim=FF,
    decoder_ffn_dim=FF,
    ffn_hidden_size=FF,
    dff=FF,
    feed_forward_size=FF,
    head_dim=D // HEADS,
    d_kv=D // HEADS,
    kv_channels=D // HEADS,
    max_position_embeddings=128,
    n_positions=128,
    n_ctx=128,
    max_seq_len=128,
    max_encoder_position_embeddings=128,
    max_decoder_position_embeddings=128,
    initializer_range=0.2,
    init_std=0.2,
    # mixture of experts
    num_experts=4,
    num_local_experts=4,
    n_routed_experts=4,
    moe_num_experts=4,
    num_experts_per_tok=2,
    moe_topk=2,
    moe_k=2,
    top_k_experts=2,
    moe_intermediate_size=32,
    shared_expert_intermediate_size=32,
    moe_shared_expert_intermediate_size=32,
    n_shared_experts=1,
    num_shared_experts=1,
    n_group=1,
    topk_group=1,
    first_k_dense_replace=0,
    # multi-head latent attention
    kv_lora_rank=16,
    q_lora_rank=16,
    qk_rope_head_dim=4,
    qk_nope_head_dim=4,
    v_head_dim=8,
    # sliding window
    sliding_window=SLIDING_WINDOW,
    use_cache=True,  # MPT's config defaults to use_cache=False, which the engine refuses
    **SPECIAL,
)
_PER_LAYER_FIELDS = ("layer_types", "mlp_layer_types", "layers_block_type", "block_types", "attention_types")


@dataclasses.dataclass
class Spec:
    model_type: str
    class_name: str
    kind: str  # "decoder" | "encoder-decoder"
    extra: dict = dataclasses.field(default_factory=dict)  # fixed overrides
    per_layer: dict = dataclasses.field(default_factory=dict)  # field -> list for the LARGE model (3 layers)
    init_factor: float | None = None  # T5-style `initializer_factor`
    layers_fn: object = None  # callable(layers) -> dict of extra overrides that depend on the depth
    small_layers: int = 1  # 2 where a 1-layer model of the family cannot be built


def _fields(cfg_cls) -> set[str]:
    names = {f.name for f in dataclasses.fields(cfg_cls)} if dataclasses.is_dataclass(cfg_cls) else set()
    return names | set(getattr(cfg_cls, "attribute_map", {}) or {})


def _model_class(name: str):
    import transformers

    return getattr(transformers, name)


def _config(spec: Spec, layers: int, large_layers: int = 3):
    """The config of a `layers`-deep model. Per-layer lists (`layer_types`, ...) of a shallower model are the
    first `layers` entries of the `large_layers`-deep model's, so the small model's layer 0 is the large one's."""
    cfg_cls = CONFIG_MAPPING[spec.model_type]
    fields = _fields(cfg_cls)
    kw = {k: v for k, v in _GENERIC.items() if k in fields}
    amap = getattr(cfg_cls, "attribute_map", {}) or {}
    for k in _LAYER_FIELDS:
        if k in fields:
            kw[k] = layers
    for alias, target in amap.items():  # one value per real field: drop aliases whose target is also set
        if alias in kw and target in kw:
            del kw[alias]
    if spec.kind == "encoder-decoder":
        kw.setdefault("decoder_start_token_id", 0)
        kw["is_encoder_decoder"] = True
    if spec.init_factor is not None:
        kw.pop("initializer_range", None)
        kw["initializer_factor"] = spec.init_factor
    if "forced_eos_token_id" in fields:
        kw["forced_eos_token_id"] = None
    if "kv_lora_rank" in fields:  # multi-head latent attention: no grouped kv heads (GQA breaks the padded path)
        kw["num_key_value_heads"] = HEADS
    kw.update(spec.extra)
    if spec.layers_fn is not None:
        kw.update(spec.layers_fn(layers))
    for k, full in spec.per_layer.items():
        kw[k] = list(full[:layers])
    if layers < large_layers:
        big = _config(spec, large_layers, large_layers)
        data_fields = {f.name for f in dataclasses.fields(cfg_cls)}
        for k in _PER_LAYER_FIELDS:
            val = getattr(big, k, None)
            if k not in kw and k in data_fields and isinstance(val, (list, tuple)) and len(val) == large_layers:
                kw[k] = list(val[:layers])
    return cfg_cls(**kw)


SPECS: dict[str, Spec] = {}


def _add(
    name,
    model_type,
    class_name,
    kind="decoder",
    per_layer=None,
    init_factor=None,
    layers_fn=None,
    small_layers=1,
    **extra,
):
    SPECS[name] = Spec(model_type, class_name, kind, extra, dict(per_layer or {}), init_factor, layers_fn, small_layers)


SW3 = ["sliding_attention", "full_attention", "sliding_attention"]  # small model (= layer 0) is sliding too
SW = dict(per_layer=dict(layer_types=SW3))
QWEN_SW = dict(use_sliding_window=True, max_window_layers=0, per_layer=dict(layer_types=SW3))
# hybrids: the small model is 2 layers deep, so that it has both kinds of layer (a linear-attention /
# convolution / state-space layer first, then an attention layer; a model without attention layer cannot run)
HYBRID = ["linear_attention", "full_attention", "linear_attention"]
GATED_DELTA = dict(
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=8,
    linear_value_head_dim=8,
    per_layer=dict(layer_types=HYBRID),
    small_layers=2,
)
MAMBA2 = dict(mamba_n_heads=4, mamba_d_state=16, mamba_chunk_size=8)
MLA_NO_GQA = dict(num_key_value_heads=HEADS)  # multi-head latent attention: kv heads must equal heads
BERT = dict(is_decoder=True)


def _gpt_neo(layers):
    return dict(attention_types=[[["local", "global", "local"][:layers], 1]])


# -- decoder-only: the families the engine documents, then everything else that builds ------------------
_add("gpt2", "gpt2", "GPT2LMHeadModel")
_add("llama", "llama", "LlamaForCausalLM")
_add("gpt_neox", "gpt_neox", "GPTNeoXForCausalLM")
_add("opt", "opt", "OPTForCausalLM", word_embed_proj_dim=D)
_add("mistral", "mistral", "MistralForCausalLM")
_add("mixtral", "mixtral", "MixtralForCausalLM")
_add("qwen2", "qwen2", "Qwen2ForCausalLM", **QWEN_SW)
_add("qwen2_moe", "qwen2_moe", "Qwen2MoeForCausalLM", **QWEN_SW)
_add("qwen3", "qwen3", "Qwen3ForCausalLM", **QWEN_SW)
_add("qwen3_moe", "qwen3_moe", "Qwen3MoeForCausalLM", use_sliding_window=True)
_add("qwen2_nosw", "qwen2", "Qwen2ForCausalLM")  # the default Qwen2 config: no sliding window
_add("gemma", "gemma", "GemmaForCausalLM")
_add("gemma2", "gemma2", "Gemma2ForCausalLM", **SW)
_add("gemma3_text", "gemma3_text", "Gemma3ForCausalLM", **SW)
# per-layer inputs / depth-dependent head shapes: a few small-model tensors do not match and stay as initialised
_add("gemma3n_text", "gemma3n_text", "Gemma3nForCausalLM", num_kv_shared_layers=0, **SW)
_add("gemma4_text", "gemma4_text", "Gemma4ForCausalLM", num_kv_shared_layers=0, **SW)
_add("gemma4_unified_text", "gemma4_unified_text", "Gemma4UnifiedForCausalLM", num_kv_shared_layers=0, **SW)
_add("phi", "phi", "PhiForCausalLM")
_add("phi3", "phi3", "Phi3ForCausalLM")
_add("phimoe", "phimoe", "PhimoeForCausalLM")
_add("gptj", "gptj", "GPTJForCausalLM", rotary_dim=4)
_add("gpt_neo", "gpt_neo", "GPTNeoForCausalLM", window_size=SLIDING_WINDOW, layers_fn=_gpt_neo)
_add("gpt_bigcode", "gpt_bigcode", "GPTBigCodeForCausalLM")
_add("gpt_bigcode_mha", "gpt_bigcode", "GPTBigCodeForCausalLM", multi_query=False)
_add("codegen", "codegen", "CodeGenForCausalLM", rotary_dim=4)
_add("falcon", "falcon", "FalconForCausalLM")
_add("falcon_alibi", "falcon", "FalconForCausalLM", alibi=True)
_add("falcon_new_arch", "falcon", "FalconForCausalLM", new_decoder_architecture=True)
_add("stablelm", "stablelm", "StableLmForCausalLM")
_add("starcoder2", "starcoder2", "Starcoder2ForCausalLM")
_add("olmo", "olmo", "OlmoForCausalLM")
_add("olmo2", "olmo2", "Olmo2ForCausalLM")
_add("olmo3", "olmo3", "Olmo3ForCausalLM", **SW)
_add("olmoe", "olmoe", "OlmoeForCausalLM")
_add("flex_olmo", "flex_olmo", "FlexOlmoForCausalLM")
_add("cohere", "cohere", "CohereForCausalLM")
_add("cohere2", "cohere2", "Cohere2ForCausalLM", **SW)
_add("cohere2_moe", "cohere2_moe", "Cohere2MoeForCausalLM", **SW)
_add("granite", "granite", "GraniteForCausalLM")
_add("granite_swa", "granite_swa", "GraniteSWAForCausalLM", **SW)
_add("granitemoe", "granitemoe", "GraniteMoeForCausalLM")
_add("granitemoe_swa", "granitemoe_swa", "GraniteMoeSWAForCausalLM", **SW)
_add("granitemoeshared", "granitemoeshared", "GraniteMoeSharedForCausalLM")
_add("bloom", "bloom", "BloomForCausalLM")
_add("mpt", "mpt", "MptForCausalLM")
_add("openai-gpt", "openai-gpt", "OpenAIGPTLMHeadModel")
_add("ctrl", "ctrl", "CTRLLMHeadModel")
_add("xglm", "xglm", "XGLMForCausalLM")
_add("biogpt", "biogpt", "BioGptForCausalLM")
_add("persimmon", "persimmon", "PersimmonForCausalLM")
_add("gpt_neox_japanese", "gpt_neox_japanese", "GPTNeoXJapaneseForCausalLM")
_add("lfm2", "lfm2", "Lfm2ForCausalLM", per_layer=dict(layer_types=["conv", "full_attention", "conv"]), small_layers=2)
_add(
    "lfm2_moe",
    "lfm2_moe",
    "Lfm2MoeForCausalLM",
    num_dense_layers=1,
    small_layers=2,
    per_layer=dict(layer_types=["conv", "full_attention", "conv"]),
)
_add(
    "lfm3",
    "lfm3",
    "Lfm3ForCausalLM",
    small_layers=2,
    per_layer=dict(layer_types=["conv", "sliding_attention", "full_attention"]),
)
_add("afmoe", "afmoe", "AfmoeForCausalLM", **SW)
_add("apertus", "apertus", "ApertusForCausalLM")
_add("arcee", "arcee", "ArceeForCausalLM")
_add("aria_text", "aria_text", "AriaTextForCausalLM")
_add("axk1", "axk1", "AXK1ForCausalLM")
_add("axk2", "axk2", "AXK2ForCausalLM", **MLA_NO_GQA)
_add("beam", "beam", "BeamForCausalLM", **SW)
_add("bitnet", "bitnet", "BitNetForCausalLM")
_add("cwm", "cwm", "CwmForCausalLM", **SW)
_add(
    "dbrx",
    "dbrx",
    "DbrxForCausalLM",
    attn_config={"kv_n_heads": KV, "rope_theta": 10000.0, "clip_qkv": 8.0},
    ffn_config={"ffn_hidden_size": FF, "moe_num_experts": 4, "moe_top_k": 2},
)
_add("deepseek_v2", "deepseek_v2", "DeepseekV2ForCausalLM")
_add("deepseek_v3", "deepseek_v3", "DeepseekV3ForCausalLM")
_add("deepseek_v32", "deepseek_v32", "DeepseekV32ForCausalLM", **MLA_NO_GQA)
_add("deepseek_v4", "deepseek_v4", "DeepseekV4ForCausalLM")
_add("diffllama", "diffllama", "DiffLlamaForCausalLM")
_add("doge", "doge", "DogeForCausalLM")
_add("dots1", "dots1", "Dots1ForCausalLM", **SW)
_add("dots3_note_text", "dots3_note_text", "Dots3NoteForCausalLM", **MLA_NO_GQA)
_add("ernie4_5", "ernie4_5", "Ernie4_5ForCausalLM")
_add("ernie4_5_moe", "ernie4_5_moe", "Ernie4_5_MoeForCausalLM")
_add("exaone4", "exaone4", "Exaone4ForCausalLM", **SW)
_add("exaone_moe", "exaone_moe", "ExaoneMoeForCausalLM", **SW)
_add("flint", "flint", "FlintForCausalLM", **SW)
_add("glm", "glm", "GlmForCausalLM")
_add("glm4", "glm4", "Glm4ForCausalLM")
_add("glm4_moe", "glm4_moe", "Glm4MoeForCausalLM")
_add("glm4_moe_lite", "glm4_moe_lite", "Glm4MoeLiteForCausalLM")
_add("glm_moe_dsa", "glm_moe_dsa", "GlmMoeDsaForCausalLM", **MLA_NO_GQA)
_add("gpt_oss", "gpt_oss", "GptOssForCausalLM", **SW)
_add("helium", "helium", "HeliumForCausalLM")
_add("hrm_text", "hrm_text", "HrmTextForCausalLM")
_add("hunyuan_v1_dense", "hunyuan_v1_dense", "HunYuanDenseV1ForCausalLM")
_add("hunyuan_v1_moe", "hunyuan_v1_moe", "HunYuanMoEV1ForCausalLM")
_add("hy_v3", "hy_v3", "HYV3ForCausalLM")
_add("hy_v4", "hy_v4", "HYV4ForCausalLM")
_add("hyperclovax", "hyperclovax", "HyperCLOVAXForCausalLM")
_add("inkling_text", "inkling_text", "InklingForCausalLM")
_add("inkling2_text", "inkling2_text", "Inkling2ForCausalLM", unpadded_vocab_size=V)  # 5.24: head width
_add("jais2", "jais2", "Jais2ForCausalLM")
_add("jetmoe", "jetmoe", "JetMoeForCausalLM")
_add("kolibri1", "kolibri1", "Kolibri1ForCausalLM", **SW)
_add("laguna", "laguna", "LagunaForCausalLM", **SW)
_add("llama4_text", "llama4_text", "Llama4ForCausalLM", attention_chunk_size=SLIDING_WINDOW)
_add(
    "longcat_flash",
    "longcat_flash",
    "LongcatFlashForCausalLM",
    head_dim=4,
    expert_ffn_hidden_size=32,
    zero_expert_num=2,
)
_add("mellum", "mellum", "MellumForCausalLM", **SW)
_add("mimo_v2_flash", "mimo_v2_flash", "MiMoV2FlashForCausalLM", **SW)
_add("minicpm3", "minicpm3", "MiniCPM3ForCausalLM")
_add("minimax", "minimax", "MiniMaxForCausalLM", per_layer=dict(layer_types=HYBRID), small_layers=2)
_add("minimax_m2", "minimax_m2", "MiniMaxM2ForCausalLM")
_add("minimax_m3_vl_text", "minimax_m3_vl_text", "MiniMaxM3VLForCausalLM")
_add("ministral", "ministral", "MinistralForCausalLM", **SW)
_add("ministral3", "ministral3", "Ministral3ForCausalLM")
_add(
    "modernbert-decoder",
    "modernbert-decoder",
    "ModernBertDecoderForCausalLM",
    local_attention=2 * SLIDING_WINDOW,
    per_layer=dict(layer_types=SW3),
)
_add("nanochat", "nanochat", "NanoChatForCausalLM")
_add("nemotron", "nemotron", "NemotronForCausalLM")
_add("seed_oss", "seed_oss", "SeedOssForCausalLM")
_add("smollm3", "smollm3", "SmolLM3ForCausalLM", use_sliding_window=True, per_layer=dict(layer_types=SW3))
_add("solar_open", "solar_open", "SolarOpenForCausalLM")
_add("vaultgemma", "vaultgemma", "VaultGemmaForCausalLM", **SW)
_add("youtu", "youtu", "YoutuForCausalLM")
_add("cpmant", "cpmant", "CpmAntForCausalLM")
# state-space / linear-attention / recurrent layers (engine refusals expected)
_add("jamba", "jamba", "JambaForCausalLM", attn_layer_period=2, attn_layer_offset=1, mamba_d_state=8, small_layers=2)
_add("bamba", "bamba", "BambaForCausalLM", attn_layer_indices=[1], small_layers=2, **MAMBA2)
_add(
    "granitemoehybrid",
    "granitemoehybrid",
    "GraniteMoeHybridForCausalLM",
    small_layers=2,
    per_layer=dict(layer_types=["mamba", "attention", "mamba"]),
    **MAMBA2,
)
_add("falcon_h1", "falcon_h1", "FalconH1ForCausalLM", mamba_d_ssm=64, **MAMBA2)
_add(
    "nemotron_h",
    "nemotron_h",
    "NemotronHForCausalLM",
    small_layers=2,
    per_layer=dict(layers_block_type=["linear_attention", "full_attention", "moe"]),
)
_add("mamba", "mamba", "MambaForCausalLM")
_add("mamba2", "mamba2", "Mamba2ForCausalLM", num_heads=4, head_dim=16, n_groups=1, state_size=16, chunk_size=8)
_add("falcon_mamba", "falcon_mamba", "FalconMambaForCausalLM")
_add(
    "rwkv",
    "rwkv",
    "RwkvForCausalLM",
    attention_hidden_size=D,
    intermediate_size=FF,
    context_length=128,
    rescale_every=0,
    small_layers=2,
)  # RWKV's init divides by num_hidden_layers - 1
_add(
    "recurrent_gemma",
    "recurrent_gemma",
    "RecurrentGemmaForCausalLM",
    attention_window_size=SLIDING_WINDOW,
    per_layer=dict(block_types=["recurrent", "attention", "recurrent"]),
    small_layers=2,
)
_add("qwen3_next", "qwen3_next", "Qwen3NextForCausalLM", **GATED_DELTA)
_add("qwen3_5_text", "qwen3_5_text", "Qwen3_5ForCausalLM", **GATED_DELTA)
_add("qwen3_5_moe_text", "qwen3_5_moe_text", "Qwen3_5MoeForCausalLM", **GATED_DELTA)
_add("olmo_hybrid", "olmo_hybrid", "OlmoHybridForCausalLM", **GATED_DELTA)
_add(
    "kimi_linear",
    "kimi_linear",
    "KimiLinearForCausalLM",
    linear_head_dim=8,
    linear_num_heads=4,
    per_layer=dict(layer_types=HYBRID),
    small_layers=2,
)
_add("bailing_hybrid", "bailing_hybrid", "BailingHybridForCausalLM", per_layer=dict(layer_types=HYBRID), small_layers=2)
_add("zaya", "zaya", "ZayaForCausalLM", num_experts_per_tok=1)
_add(
    "zamba", "zamba", "ZambaForCausalLM", per_layer=dict(layers_block_type=["mamba", "hybrid", "mamba"]), small_layers=2
)
_add(
    "zamba2",
    "zamba2",
    "Zamba2ForCausalLM",
    n_mamba_heads=4,
    mamba_d_state=16,
    adapter_rank=8,
    small_layers=2,
    per_layer=dict(layers_block_type=["mamba", "hybrid", "mamba"]),
)
_add(
    "reformer",
    "reformer",
    "ReformerModelWithLMHead",
    is_decoder=True,
    axial_pos_embds=False,
    local_attn_chunk_length=SLIDING_WINDOW,
    layers_fn=lambda n: dict(attn_layers=["local"] * n),
)
# BERT-style encoders with a causal LM head (is_decoder=True), XLM/XLNet
for _t, _c in [
    ("bert", "BertLMHeadModel"),
    ("bert-generation", "BertGenerationDecoder"),
    ("big_bird", "BigBirdForCausalLM"),
    ("camembert", "CamembertForCausalLM"),
    ("data2vec-text", "Data2VecTextForCausalLM"),
    ("electra", "ElectraForCausalLM"),
    ("ernie", "ErnieForCausalLM"),
    ("megatron-bert", "MegatronBertForCausalLM"),
    ("rembert", "RemBertForCausalLM"),
    ("roberta", "RobertaForCausalLM"),
    ("roberta-prelayernorm", "RobertaPreLayerNormForCausalLM"),
    ("roc_bert", "RoCBertForCausalLM"),
    ("roformer", "RoFormerForCausalLM"),
    ("xlm-roberta", "XLMRobertaForCausalLM"),
    ("xlm-roberta-xl", "XLMRobertaXLForCausalLM"),
]:
    _add(_t, _t, _c, **BERT)
_add("xlm", "xlm", "XLMWithLMHeadModel", causal=True)
_add("xlnet", "xlnet", "XLNetLMHeadModel")
# decoders of speech / vision models, used as text LMs
_add("whisper_decoder", "whisper", "WhisperForCausalLM")
_add("trocr", "trocr", "TrOCRForCausalLM")
_add(
    "git",
    "git",
    "GitForCausalLM",
    vision_config=dict(
        hidden_size=D,
        intermediate_size=FF,
        num_hidden_layers=1,
        num_attention_heads=HEADS,
        image_size=32,
        patch_size=16,
    ),
)
_add("moshi", "moshi", "MoshiForCausalLM")
# decoder-only halves of encoder-decoder families
_add("bart_causal", "bart", "BartForCausalLM", is_encoder_decoder=False)
_add("prophetnet_causal", "prophetnet", "ProphetNetForCausalLM", is_encoder_decoder=False)

# -- encoder-decoder --------------------------------------------------------------------------------
_add("t5", "t5", "T5ForConditionalGeneration", "encoder-decoder", init_factor=4.0)
_add("mt5", "mt5", "MT5ForConditionalGeneration", "encoder-decoder", init_factor=4.0)
_add("umt5", "umt5", "UMT5ForConditionalGeneration", "encoder-decoder", init_factor=4.0)
_add("longt5", "longt5", "LongT5ForConditionalGeneration", "encoder-decoder", init_factor=4.0, local_radius=2)
_add(
    "switch_transformers",
    "switch_transformers",
    "SwitchTransformersForConditionalGeneration",
    "encoder-decoder",
    init_factor=4.0,
    num_sparse_encoder_layers=1,
    num_sparse_decoder_layers=1,
)
_add("bart", "bart", "BartForConditionalGeneration", "encoder-decoder", decoder_start_token_id=2)
_add("mbart", "mbart", "MBartForConditionalGeneration", "encoder-decoder")
_add("mvp", "mvp", "MvpForConditionalGeneration", "encoder-decoder")
_add("plbart", "plbart", "PLBartForConditionalGeneration", "encoder-decoder")
_add("pegasus", "pegasus", "PegasusForConditionalGeneration", "encoder-decoder")
_add("pegasus_x", "pegasus_x", "PegasusXForConditionalGeneration", "encoder-decoder", block_size=4, num_global_tokens=4)
_add(
    "bigbird_pegasus",
    "bigbird_pegasus",
    "BigBirdPegasusForConditionalGeneration",
    "encoder-decoder",
    attention_type="original_full",
)
_add("marian", "marian", "MarianMTModel", "encoder-decoder", decoder_vocab_size=V)
_add("m2m_100", "m2m_100", "M2M100ForConditionalGeneration", "encoder-decoder")
_add("nllb-moe", "nllb-moe", "NllbMoeForConditionalGeneration", "encoder-decoder")
_add("blenderbot", "blenderbot", "BlenderbotForConditionalGeneration", "encoder-decoder")  # encoder_no_repeat_ngram 3
_add(
    "blenderbot_enc_ngram1",
    "blenderbot",
    "BlenderbotForConditionalGeneration",
    "encoder-decoder",
    encoder_no_repeat_ngram_size=1,
)  # bans every encoder token: makes the encoder-side processor visible
_add("blenderbot-small", "blenderbot-small", "BlenderbotSmallForConditionalGeneration", "encoder-decoder")
_add("led", "led", "LEDForConditionalGeneration", "encoder-decoder", attention_window=SLIDING_WINDOW)
_add("prophetnet", "prophetnet", "ProphetNetForConditionalGeneration", "encoder-decoder")
_add(
    "fsmt", "fsmt", "FSMTForConditionalGeneration", "encoder-decoder", src_vocab_size=V, tgt_vocab_size=V, num_beams=1
)  # FSMTConfig defaults to num_beams=5 (beam search), which the engine refuses
_add(
    "fsmt_default_beams", "fsmt", "FSMTForConditionalGeneration", "encoder-decoder", src_vocab_size=V, tgt_vocab_size=V
)
_add("seamless_m4t", "seamless_m4t", "SeamlessM4TForTextToText", "encoder-decoder")
_add("seamless_m4t_v2", "seamless_m4t_v2", "SeamlessM4Tv2ForTextToText", "encoder-decoder")


def _build(spec: Spec, layers: int):
    return _model_class(spec.class_name), _config(spec, layers)


ZOO: dict = {name: (lambda layers, _s=spec: _build(_s, layers)) for name, spec in SPECS.items()}


def available(name: str) -> bool:
    """The entry's model class exists in the installed transformers (the zoo is written for the newest
    release CI runs; older ones lack some families)."""
    import transformers

    return hasattr(transformers, SPECS[name].class_name) and SPECS[name].model_type in CONFIG_MAPPING


ZOO_INFO = {
    name: dict(model_type=s.model_type, model_class=s.class_name, kind=s.kind, small_layers=s.small_layers)
    for name, s in SPECS.items()
}

_MULTIMODAL = "multimodal / speech model: the LM needs pixel or audio inputs or a composite config"
SKIPPED: dict[str, str] = {  # model types of transformers' causal-LM / seq2seq-LM auto mappings not in the zoo
    **{t: "alias of a zoo class (same model class as another entry)" for t in ("gpt-sw3", "internlm3", "iquestcoder")},
    **{
        t: "composite config (text_config inside); its text-only type is in the zoo"
        for t in ("llama4", "qwen3_5", "qwen3_5_moe", "dots3_note")
    },
    **{
        t: _MULTIMODAL
        for t in (
            "fuyu",
            "gemma3",
            "gemma3n",
            "gemma4",
            "gemma4_unified",
            "got_ocr2",
            "mllama",
            "phi4_multimodal",
            "emu3",
            "musicgen",
            "musicgen_melody",
            "audioflamingo3",
            "glmasr",
            "granite_speech",
            "granite_speech_plus",
            "moss_transcribe_diarize",
            "musicflamingo",
            "nemo_speechlm",
            "qwen2_audio",
            "qwen3_asr",
            "vibevoice_asr",
            "voxtral",
            "voxtral_realtime",
        )
    },
    "encoder-decoder": "EncoderDecoderModel wraps two separate configs (encoder + decoder); not a family",
    "t5gemma": "encoder/decoder sub-configs (T5GemmaModuleConfig); building one from a flat config takes > 20 s "
    "(times out in the generic builder)",
    "t5gemma2": "as t5gemma (vision tower + sub-configs)",
    "blt": "byte latent transformer with a patcher model; a generate call did not finish in 20 s",
    "gemma4_assistant": "assistant (MTP) head for gemma4: needs the target model's hidden states",
    "gemma4_unified_assistant": "as gemma4_assistant",
    "cohere_compass_text": "retrieval (pooling) model: KeyError on every attention layer type",
    "qwen4_exp_text": "indexer / n-gram embedding hyper-parameters (ngram vocab 20M) make a tiny config impractical",
    "xlstm": "mLSTM kernels need chunk-size / head-dim combinations a 32-wide model does not satisfy "
    "(shape error in the native step kernel)",
    "xmod": "needs a language adapter chosen by `set_default_language` before every forward",
}


def make_zoo_pair(
    name: str, seed: int = 0, large_layers: int = 3, sharpness: float = SHARPNESS, depth_scale: float | None = None
):
    """(small, large): a `large_layers`-layer model and a 1-layer copy of its embeddings, first layer and head
    (2 layers for the few families in which a 1-layer model cannot be built or has no attention layer)."""
    builder = ZOO[name]
    cls, cfg = builder(large_layers)
    if depth_scale is None:
        depth_scale = DEPTH_SCALE_ED if cfg.is_encoder_decoder else DEPTH_SCALE
    torch.manual_seed(seed)
    large = cls(cfg).eval()
    with torch.no_grad():
        head = large.get_output_embeddings()
        if head is not None:
            w = head.weight
            w.mul_(sharpness / w.std())
        for pname, param in large.named_parameters():
            layer = re.search(r"\.(\d+)\.", pname)
            if layer and int(layer.group(1)) >= 1 and param.dim() >= 2:
                param.mul_(depth_scale)
    _, small_cfg = builder(SPECS[name].small_layers if name in SPECS else 1)
    small = cls(small_cfg).eval()
    own = small.state_dict()  # parameters whose shape depends on the depth (rare) stay as initialised
    small.load_state_dict(
        {k: v for k, v in large.state_dict().items() if k in own and own[k].shape == v.shape}, strict=False
    )
    for m in (small, large):
        m.generation_config.max_length = None
        m.generation_config.forced_eos_token_id = None
    return small, large
