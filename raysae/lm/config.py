"""Gemma 2 shapes: `LMConfig` (what the forward pass needs) and the released sizes.

Presets cover Gemma 2 2B / 9B / 27B; `from_hf` reads a Hugging Face `config.json`. Sites
(`raysae.sites.Site`) are re-exported here for `from raysae.lm import Site`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from raysae.config import ConfigError
from raysae.sites import SITE_KINDS, Site  # noqa: F401  (re-exported: raysae.lm.Site)


_REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Gemma 2 architecture hyper-parameters (names follow the paper, values HF's config.json)."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_mlp: int
    query_pre_attn_scalar: float
    sliding_window: int
    attn_softcap: float | None = 50.0
    final_softcap: float | None = 30.0
    rope_theta: float = 10000.0
    rms_eps: float = 1e-6
    bos_id: int = 2
    eos_id: int = 1
    pad_id: int = 0

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_mlp",
                     "sliding_window"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"lm.{name}: must be positive, got {getattr(self, name)!r}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"lm.n_heads: {self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"lm.head_dim: RoPE needs an even head_dim, got {self.head_dim}")

    def site_dim(self, kind: str) -> int:
        """Width of the activations at a site of this kind."""
        if kind not in SITE_KINDS:
            raise ConfigError(f"site kind {kind!r} is not one of {list(SITE_KINDS)}")
        return self.n_heads * self.head_dim if kind == "attn" else self.d_model

    def is_sliding(self, layer: int) -> bool:
        """Gemma 2 alternates local (sliding window) and global attention: even layers slide."""
        return layer % 2 == 0

    def to_hf(self) -> dict[str, Any]:
        """A Hugging Face Gemma2Config dict (what `config.json` holds)."""
        return {
            "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
            "vocab_size": self.vocab_size, "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layers, "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads, "head_dim": self.head_dim,
            "intermediate_size": self.d_mlp, "query_pre_attn_scalar": self.query_pre_attn_scalar,
            "sliding_window": self.sliding_window, "attn_logit_softcapping": self.attn_softcap,
            "final_logit_softcapping": self.final_softcap, "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_eps, "bos_token_id": self.bos_id, "eos_token_id": self.eos_id,
            "pad_token_id": self.pad_id, "hidden_activation": "gelu_pytorch_tanh",
            "hidden_act": "gelu_pytorch_tanh", "tie_word_embeddings": True,
            "attention_bias": False, "attention_dropout": 0.0, "max_position_embeddings": 8192,
        }

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], where: str = "config.json") -> "LMConfig":
        """Read a Hugging Face Gemma 2 `config.json` dict; unsupported settings raise ConfigError."""
        mt = hf.get("model_type", "gemma2")
        if mt != "gemma2":
            raise ConfigError(f"{where}: model_type {mt!r} is not 'gemma2'")
        act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
        if act != "gelu_pytorch_tanh":
            raise ConfigError(f"{where}: hidden_activation {act!r} is not supported (gelu_pytorch_tanh)")
        if hf.get("attention_bias"):
            raise ConfigError(f"{where}: attention_bias=true is not supported by Gemma 2")
        if not hf.get("tie_word_embeddings", True):
            raise ConfigError(f"{where}: tie_word_embeddings=false is not supported")
        if hf.get("use_bidirectional_attention"):
            raise ConfigError(f"{where}: use_bidirectional_attention=true is not supported")
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise ConfigError(f"{where}: rope type {rope.get('rope_type', rope.get('type'))!r} is not supported")
        rope_theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        if isinstance(rope_theta, bool) or not isinstance(rope_theta, (int, float)):
            raise ConfigError(f"{where}: rope_theta: expected a number, got {rope_theta!r}")
        rope_theta = float(rope_theta)
        layer_types = hf.get("layer_types")
        n = hf.get("num_hidden_layers")
        if layer_types is not None and isinstance(n, int):
            want = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
            if list(layer_types) != want:
                raise ConfigError(f"{where}: layer_types {layer_types} differ from Gemma 2's even-layers-slide")

        def num(key: str, kind: type, default=_REQUIRED, nullable: bool = False):
            """hf[key] as an int / float, or ConfigError naming the file and the key."""
            if key not in hf and default is _REQUIRED:
                raise ConfigError(f"{where}: missing key {key!r}")
            v = hf.get(key, default)
            if v is None and nullable:
                return None
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)):
                want = "an integer" if kind is int else "a number" + (" or null" if nullable else "")
                raise ConfigError(f"{where}: {key}: expected {want}, got {v!r}")
            return kind(v)

        def ids(key: str, default: int) -> int:
            v = hf.get(key, default)
            v = default if v is None else v
            v = v[0] if isinstance(v, (list, tuple)) and v else v
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{where}: {key}: expected a token id, got {v!r}")
            return v

        if hf.get("sliding_window", 0) is None:
            raise ConfigError(f"{where}: sliding_window: null, but Gemma 2's even layers attend "
                              "through a sliding window; give its size")
        d_model, n_heads = num("hidden_size", int), num("num_attention_heads", int)
        return cls(
            vocab_size=num("vocab_size", int), d_model=d_model, n_layers=num("num_hidden_layers", int),
            n_heads=n_heads, n_kv_heads=num("num_key_value_heads", int),
            head_dim=num("head_dim", int, d_model // max(n_heads, 1)),
            d_mlp=num("intermediate_size", int),
            query_pre_attn_scalar=num("query_pre_attn_scalar", float, 256),
            sliding_window=num("sliding_window", int, 4096),
            attn_softcap=num("attn_logit_softcapping", float, 50.0, nullable=True),
            final_softcap=num("final_logit_softcapping", float, 30.0, nullable=True),
            rope_theta=rope_theta,
            rms_eps=num("rms_norm_eps", float, 1e-6),
            bos_id=ids("bos_token_id", 2), eos_id=ids("eos_token_id", 1), pad_id=ids("pad_token_id", 0),
        )


_COMMON = dict(vocab_size=256000, sliding_window=4096, bos_id=2, eos_id=1, pad_id=0)
GEMMA2_2B = LMConfig(d_model=2304, n_layers=26, n_heads=8, n_kv_heads=4, head_dim=256, d_mlp=9216,
                     query_pre_attn_scalar=256, **_COMMON)
GEMMA2_9B = LMConfig(d_model=3584, n_layers=42, n_heads=16, n_kv_heads=8, head_dim=256, d_mlp=14336,
                     query_pre_attn_scalar=256, **_COMMON)
# 27B scales queries by (d_model / n_heads)^-0.5 = 144^-0.5, not head_dim^-0.5.
GEMMA2_27B = LMConfig(d_model=4608, n_layers=46, n_heads=32, n_kv_heads=16, head_dim=128, d_mlp=36864,
                      query_pre_attn_scalar=144, **_COMMON)
PRESETS = {"gemma-2-2b": GEMMA2_2B, "gemma-2-9b": GEMMA2_9B, "gemma-2-27b": GEMMA2_27B}
