"""Model configuration: the Qwen3-VL / BARD-VL network shape, read from an HF `config.json` in either dialect.

BARD adds no weights and no config fields: a BARD-VL checkpoint is a Qwen3-VL checkpoint whose `model_type` is
`bard_vl`. Two serialisation dialects exist for the rotary settings:

* transformers 4.x: `text_config.rope_theta` and `text_config.rope_scaling = {rope_type, mrope_section,
  mrope_interleaved}`;
* transformers 5.x: `text_config.rope_parameters = {rope_theta, rope_type, mrope_section, mrope_interleaved}`.

`tie_word_embeddings` may sit at the top level, inside `text_config`, or in both with different values: each
dialect is read as the transformers version that writes it reads it (4.x: `text_config` decides; 5.x: the top
level). `ModelConfig.from_hf_dict` accepts all of these and remembers the dialect so `to_hf_dict` writes the same
dialect back.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from bard_jax.errors import BardError

SUPPORTED_MODEL_TYPES = ("qwen3_vl", "bard_vl")


class ConfigError(BardError, ValueError):
    """A config.json that cannot describe a Qwen3-VL / BARD-VL model."""


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    depth: int = 24
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    out_hidden_size: int = 2048
    num_position_embeddings: int = 2304
    deepstack_visual_indexes: tuple[int, ...] = (5, 11, 17)
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened pixel row: C * T * P * P."""
        return self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size**2

    @property
    def num_grid_per_side(self) -> int:
        return int(round(self.num_position_embeddings**0.5))


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 6144
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 5_000_000.0
    mrope_section: tuple[int, int, int] = (24, 20, 20)
    mrope_interleaved: bool = True
    max_position_embeddings: int = 262144
    hidden_act: str = "silu"
    attention_bias: bool = False


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything the network needs. Frozen and hashable, so it can be a static jit argument."""

    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    tie_word_embeddings: bool = True
    model_type: str = "qwen3_vl"
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    # Where config.json came from, so export writes the same dialect back ("4.x" or "5.x").
    hf_dialect: str = "5.x"
    # Which config.json flag decided tie_word_embeddings (for error messages); not part of the network's identity.
    tie_source: str = dataclasses.field(default="", compare=False)

    def replace(self, **kw: Any) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        """The network's settings as plain data (what our converted format stores); `tie_source`, a note for error
        messages, is left out like it is left out of equality."""
        d = dataclasses.asdict(self)
        d.pop("tie_source")
        return d

    # ------------------------------------------------------------------ HF dict <-> ModelConfig
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> ModelConfig:
        """Parse an HF Qwen3-VL / BARD-VL `config.json` dict. Errors name the missing or bad fields."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(d).__name__}")
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: unsupported model_type {model_type!r}; expected one of {list(SUPPORTED_MODEL_TYPES)}"
            )
        problems: list[str] = []
        tc = d.get("text_config")
        vc = d.get("vision_config")
        if not isinstance(tc, dict):
            problems.append("text_config (missing or not an object)")
            tc = {}
        if not isinstance(vc, dict):
            problems.append("vision_config (missing or not an object)")
            vc = {}

        def need(section: dict, name: str, prefix: str) -> Any:
            if name not in section or section[name] is None:
                problems.append(f"{prefix}.{name}")
                return None
            return section[name]

        text_required = [
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        ]
        text_vals = {k: need(tc, k, "text_config") for k in text_required}
        vision_required = ["depth", "hidden_size", "intermediate_size", "num_heads", "out_hidden_size"]
        vision_vals = {k: need(vc, k, "vision_config") for k in vision_required}

        # Rotary settings: 5.x `rope_parameters`, else 4.x `rope_scaling` + `rope_theta`.
        if isinstance(tc.get("rope_parameters"), dict):
            dialect = "5.x"
            rope = tc["rope_parameters"]
            rope_theta = rope.get("rope_theta", tc.get("rope_theta"))
        else:
            dialect = "4.x"
            rope = tc.get("rope_scaling") or {}
            rope_theta = tc.get("rope_theta")
        if rope_theta is None:
            problems.append("text_config.rope_theta (or rope_parameters.rope_theta)")
        mrope_section = rope.get("mrope_section")
        if mrope_section is None:
            problems.append("text_config mrope_section (in rope_parameters or rope_scaling)")
        if problems:
            raise ConfigError(f"{source}: missing or invalid required fields: {', '.join(problems)}")

        num_heads = int(text_vals["num_attention_heads"])
        head_dim = int(tc.get("head_dim") or text_vals["hidden_size"] // num_heads)
        if sum(mrope_section) != head_dim // 2:
            raise ConfigError(
                f"{source}: text_config mrope_section {list(mrope_section)} must sum to head_dim/2 = {head_dim // 2}"
            )
        tie, tie_source = _read_tie(d, tc, dialect)
        vrope = vc.get("rope_parameters") or {}
        text = TextConfig(
            vocab_size=int(text_vals["vocab_size"]),
            hidden_size=int(text_vals["hidden_size"]),
            intermediate_size=int(text_vals["intermediate_size"]),
            num_hidden_layers=int(text_vals["num_hidden_layers"]),
            num_attention_heads=num_heads,
            num_key_value_heads=int(tc.get("num_key_value_heads") or num_heads),
            head_dim=head_dim,
            rms_norm_eps=float(tc.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta),
            mrope_section=tuple(int(s) for s in mrope_section),
            mrope_interleaved=bool(rope.get("mrope_interleaved", True)),
            max_position_embeddings=int(tc.get("max_position_embeddings", 262144)),
            hidden_act=str(tc.get("hidden_act", "silu")),
            attention_bias=bool(tc.get("attention_bias", False)),
        )
        vision = VisionConfig(
            depth=int(vision_vals["depth"]),
            hidden_size=int(vision_vals["hidden_size"]),
            intermediate_size=int(vision_vals["intermediate_size"]),
            num_heads=int(vision_vals["num_heads"]),
            in_channels=int(vc.get("in_channels", 3)),
            patch_size=int(vc.get("patch_size", 16)),
            temporal_patch_size=int(vc.get("temporal_patch_size", 2)),
            spatial_merge_size=int(vc.get("spatial_merge_size", 2)),
            out_hidden_size=int(vision_vals["out_hidden_size"]),
            num_position_embeddings=int(vc.get("num_position_embeddings", 2304)),
            deepstack_visual_indexes=tuple(int(i) for i in vc.get("deepstack_visual_indexes", (8, 16, 24))),
            rope_theta=float(vrope.get("rope_theta", 10000.0)),
            hidden_act=str(vc.get("hidden_act", "gelu_pytorch_tanh")),
        )
        cfg = cls(
            vision=vision,
            text=text,
            tie_word_embeddings=tie,
            model_type=model_type,
            image_token_id=int(d.get("image_token_id", 151655)),
            video_token_id=int(d.get("video_token_id", 151656)),
            vision_start_token_id=int(d.get("vision_start_token_id", 151652)),
            vision_end_token_id=int(d.get("vision_end_token_id", 151653)),
            hf_dialect=dialect,
            tie_source=tie_source,
        )
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "config") -> None:
        t, v = self.text, self.vision
        problems = []
        if t.num_attention_heads % t.num_key_value_heads:
            problems.append(
                f"text num_attention_heads {t.num_attention_heads} not a multiple of "
                f"num_key_value_heads {t.num_key_value_heads}"
            )
        if t.head_dim % 2:
            problems.append(f"text head_dim {t.head_dim} must be even")
        if v.hidden_size % v.num_heads or (v.hidden_size // v.num_heads) % 4:
            problems.append(
                f"vision hidden_size {v.hidden_size} / num_heads {v.num_heads} must give a head dim % 4 == 0"
            )
        if v.out_hidden_size != t.hidden_size:
            problems.append(f"vision out_hidden_size {v.out_hidden_size} != text hidden_size {t.hidden_size}")
        if v.num_grid_per_side**2 != v.num_position_embeddings:
            problems.append(f"vision num_position_embeddings {v.num_position_embeddings} is not a square")
        if any(i < 0 or i >= v.depth for i in v.deepstack_visual_indexes):
            problems.append(f"deepstack_visual_indexes {list(v.deepstack_visual_indexes)} outside [0, {v.depth})")
        if len(v.deepstack_visual_indexes) > t.num_hidden_layers:
            problems.append("more deepstack taps than text layers")
        for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
            if not 0 <= getattr(self, name) < t.vocab_size:
                problems.append(f"{name} {getattr(self, name)} outside the vocabulary [0, {t.vocab_size})")
        if t.hidden_act != "silu":
            problems.append(f"text hidden_act {t.hidden_act!r} unsupported (only 'silu')")
        if v.hidden_act != "gelu_pytorch_tanh":
            problems.append(f"vision hidden_act {v.hidden_act!r} unsupported (only 'gelu_pytorch_tanh')")
        if t.attention_bias:
            problems.append("text attention_bias=true is not part of Qwen3-VL")
        if problems:
            raise ConfigError(f"{source}: " + "; ".join(problems))

    def to_hf_dict(self, base: dict[str, Any] | None = None) -> dict[str, Any]:
        """An HF config.json dict in this config's dialect. `base` (the original dict) keeps unknown keys."""
        d = json.loads(json.dumps(base)) if base else {}
        t, v = self.text, self.vision
        arch = "BardVLForConditionalGeneration" if self.model_type == "bard_vl" else "Qwen3VLForConditionalGeneration"
        d.setdefault("architectures", [arch])
        d["model_type"] = self.model_type
        d["image_token_id"] = self.image_token_id
        d["video_token_id"] = self.video_token_id
        d["vision_start_token_id"] = self.vision_start_token_id
        d["vision_end_token_id"] = self.vision_end_token_id
        tc = dict(d.get("text_config") or {})
        tc.update(
            model_type=tc.get("model_type", "qwen3_vl_text"),
            vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
            num_key_value_heads=t.num_key_value_heads, head_dim=t.head_dim, rms_norm_eps=t.rms_norm_eps,
            max_position_embeddings=t.max_position_embeddings, hidden_act=t.hidden_act,
            attention_bias=t.attention_bias,
        )
        rope = {
            "rope_type": "default", "mrope_section": list(t.mrope_section), "mrope_interleaved": t.mrope_interleaved
        }
        if self.hf_dialect == "4.x":
            tc.pop("rope_parameters", None)
            tc["rope_theta"] = t.rope_theta
            tc["rope_scaling"] = {**(tc.get("rope_scaling") or {}), **rope}
        else:
            tc.pop("rope_scaling", None)
            tc.pop("rope_theta", None)
            tc["rope_parameters"] = {**(tc.get("rope_parameters") or {}), **rope, "rope_theta": t.rope_theta}
        vc = dict(d.get("vision_config") or {})
        vc.update(
            model_type=vc.get("model_type", "qwen3_vl_vision"),
            depth=v.depth, hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_heads=v.num_heads,
            in_channels=v.in_channels, patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
            spatial_merge_size=v.spatial_merge_size, out_hidden_size=v.out_hidden_size,
            num_position_embeddings=v.num_position_embeddings,
            deepstack_visual_indexes=list(v.deepstack_visual_indexes), hidden_act=v.hidden_act,
        )
        d["text_config"] = tc
        d["vision_config"] = vc
        # The flag this dialect's transformers reads carries the value; where the other one is present too, it is
        # made to agree, so that transformers 4.x and 5.x both read what we wrote (a release checkpoint written by
        # 4.57 says false at the top and true in text_config, and 5.x would build a random head from it).
        decides, other = (tc, d) if self.hf_dialect == "4.x" else (d, tc)
        if "tie_word_embeddings" in other and "tie_word_embeddings" not in decides:
            decides, other = other, decides  # a file that only has the other flag keeps it there
        decides["tie_word_embeddings"] = self.tie_word_embeddings
        if "tie_word_embeddings" in other:
            other["tie_word_embeddings"] = self.tie_word_embeddings
        return d

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> ModelConfig:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from e
        return cls.from_hf_dict(d, source=path)


# ---------------------------------------------------------------------------------------------- presets
def _read_tie(d: dict[str, Any], tc: dict[str, Any], dialect: str) -> tuple[bool, str]:
    """(tie_word_embeddings, which flag said so) as the transformers version that wrote `d` reads it.

    transformers 4.x ties the head when `text_config.tie_word_embeddings` says so (the top-level flag is the
    composite config's own default, false); 5.x reads the top-level flag. So a tied checkpoint written under 4.57
    carries false at the top and true in text_config, with no lm_head tensor. A file whose deciding flag is absent
    falls back to the other one, then to false (both versions' class default).
    """
    top, text = d.get("tie_word_embeddings"), tc.get("tie_word_embeddings")
    said = f"top-level tie_word_embeddings={_json_bool(top)}, text_config.tie_word_embeddings={_json_bool(text)}"
    deciding, other = (("text_config", text), ("top-level", top)) if dialect == "4.x" else (
        ("top-level", top), ("text_config", text))
    for where, value in (deciding, other):
        if value is not None:
            rule = "read" if where == deciding[0] else f"read because the {deciding[0]} flag is absent"
            return bool(value), (f"config.json in the transformers {dialect} dialect says {said}; the {where} flag "
                                 f"is {rule}")
    return False, "config.json sets no tie_word_embeddings (transformers' default: false)"


def _json_bool(value: Any) -> str:
    return "absent" if value is None else json.dumps(value)


def _preset(text: TextConfig, vision: VisionConfig, tie: bool) -> ModelConfig:
    return ModelConfig(vision=vision, text=text, tie_word_embeddings=tie)


PRESETS: dict[str, ModelConfig] = {
    "2b": _preset(
        TextConfig(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                   num_key_value_heads=8),
        VisionConfig(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                     deepstack_visual_indexes=(5, 11, 17)),
        tie=True,
    ),
    "4b": _preset(
        TextConfig(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                   num_key_value_heads=8),
        VisionConfig(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2560,
                     deepstack_visual_indexes=(5, 11, 17)),
        tie=True,
    ),
    "8b": _preset(
        TextConfig(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                   num_key_value_heads=8),
        VisionConfig(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                     deepstack_visual_indexes=(8, 16, 24)),
        tie=False,
    ),
    # A few-MB model for tests and the embedded demo. Head dims keep the MRoPE split non-trivial.
    "tiny": _preset(
        TextConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=32, mrope_section=(6, 5, 5), max_position_embeddings=8192),
        VisionConfig(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                     num_position_embeddings=64, deepstack_visual_indexes=(0,)),
        tie=True,
    ).replace(image_token_id=1000, video_token_id=1001, vision_start_token_id=1002, vision_end_token_id=1003),
    # Mini-BARD's model (python -m bard_jax.minibard): big enough to read the synthetic scenes, small enough to
    # train from scratch on a CPU in minutes. Vocabulary and special ids come from the task's tokenizer.
    "mini": _preset(
        TextConfig(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=64, mrope_section=(12, 10, 10),
                   max_position_embeddings=4096),
        VisionConfig(depth=2, hidden_size=128, intermediate_size=384, num_heads=4, out_hidden_size=128,
                     num_position_embeddings=64, deepstack_visual_indexes=(0,)),
        tie=True,
    ).replace(image_token_id=1000, video_token_id=1001, vision_start_token_id=1002, vision_end_token_id=1003),
}


def preset(name: str) -> ModelConfig:
    """The config of a named model shape: '2b', '4b', '8b' or 'tiny'."""
    key = name.lower()
    if key not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[key]
