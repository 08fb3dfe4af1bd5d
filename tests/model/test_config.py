"""VideoMAEConfig: presets, transformers config.json reading, validation messages."""

from __future__ import annotations

import json

import pytest

from vmae_fast import VideoMAEConfig

PRESET_SIZES = {  # (hidden, depth, heads, mlp, patch) of the published VideoMAE / VideoMAE V2 encoders
    "small": (384, 12, 6, 1536, 16),
    "base": (768, 12, 12, 3072, 16),
    "large": (1024, 24, 16, 4096, 16),
    "huge": (1280, 32, 16, 5120, 16),
    "giant": (1408, 40, 16, 6144, 14),
}


@pytest.mark.parametrize("name", list(PRESET_SIZES))
def test_presets(name):
    c = VideoMAEConfig.from_name(name)
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size,
            c.patch_size) == PRESET_SIZES[name]
    assert (c.image_size, c.num_frames, c.tubelet_size, c.num_channels) == (224, 16, 2, 3)
    n = 224 // c.patch_size
    assert c.grid == (8, n, n) and c.num_tokens == 8 * n * n
    assert c.head_dim * c.num_attention_heads == c.hidden_size


def test_giant_and_base_token_counts():
    assert VideoMAEConfig.from_name("base").num_tokens == 1568
    assert VideoMAEConfig.from_name("giant").num_tokens == 2048 and VideoMAEConfig.from_name("giant").head_dim == 88


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown VideoMAE preset 'tiny'; expected one of \['base', 'giant'"):
        VideoMAEConfig.from_name("tiny")


@pytest.mark.parametrize("kwargs, message", [
    ({"hidden_size": 100, "num_attention_heads": 3}, "hidden_size 100 is not divisible by num_attention_heads 3"),
    ({"image_size": 225}, "image_size 225 is not divisible by patch_size 16"),
    ({"num_frames": 15}, "num_frames 15 is not divisible by tubelet_size 2"),
    ({"hidden_size": 0}, "hidden_size must be a positive int, got 0"),
    ({"num_labels": -1}, "num_labels must be an int >= 0"),
    ({"layer_norm_eps": 0.0}, "layer_norm_eps must be > 0"),
    ({"image_mean": (0.5, 0.5)}, "image_mean needs 3 values"),
    ({"image_std": (0.5, 0.0, 0.5)}, "image_std must be > 0"),
], ids=["heads", "patch", "tubelet", "zero-width", "labels", "eps", "mean", "std"])
def test_validation_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VideoMAEConfig(**kwargs)


def test_replace_rejects_unknown_fields():
    with pytest.raises(ValueError, match=r"unknown VideoMAEConfig field\(s\) \['heads'\]"):
        VideoMAEConfig().replace(heads=3)


HF_JSON = {
    "model_type": "videomae", "image_size": 224, "patch_size": 16, "num_channels": 3, "num_frames": 16,
    "tubelet_size": 2, "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 16,
    "intermediate_size": 1536, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "use_mean_pooling": True,
    "id2label": {"0": "abseiling", "1": "air drumming"},
}


@pytest.mark.parametrize("spelling, value", [("qkv_bias", False), ("qv_bias", False), ("qv_bias", True)])
def test_from_hf_bias_spellings(spelling, value):
    c = VideoMAEConfig.from_hf({**HF_JSON, spelling: value})
    assert c.qkv_bias is value


def test_from_hf_path_dict_and_labels(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(HF_JSON))
    for source in (tmp_path, tmp_path / "config.json", HF_JSON):
        c = VideoMAEConfig.from_hf(source)
        assert (c.hidden_size, c.num_attention_heads, c.head_dim) == (384, 16, 24)  # HF small: 16 heads
        assert c.layer_norm_eps == 1e-12 and c.fc_norm_eps == 1e-5  # transformers' fc_norm uses the torch default
        assert c.id2label == {0: "abseiling", 1: "air drumming"} and c.num_labels == 2
        assert c.image_mean == (0.5, 0.5, 0.5) and c.image_std == (0.5, 0.5, 0.5)
    assert json.loads(json.dumps(c.to_dict()))["id2label"] == {"0": "abseiling", "1": "air drumming"}


def test_from_hf_rejects_other_models_and_activations():
    with pytest.raises(ValueError, match="model_type 'vit', not 'videomae'"):
        VideoMAEConfig.from_hf({**HF_JSON, "model_type": "vit"})
    with pytest.raises(ValueError, match="hidden_act 'gelu'"):
        VideoMAEConfig.from_hf({**HF_JSON, "hidden_act": "relu"})
    with pytest.raises(ValueError, match="square image_size"):
        VideoMAEConfig.from_hf({**HF_JSON, "image_size": [224, 160]})
    assert VideoMAEConfig.from_hf({**HF_JSON, "image_size": [160, 160]}).image_size == 160


def test_matches_transformers_config_reading(tmp_path):
    """Our reading of a config.json that transformers itself wrote."""
    from tests.helpers.hf_checkpoints import hf_config

    hf = hf_config(hidden_size=96, num_attention_heads=6, qkv_bias=False, layer_norm_eps=1e-6)
    hf.save_pretrained(tmp_path)
    c = VideoMAEConfig.from_hf(tmp_path)
    assert (c.hidden_size, c.num_attention_heads, c.qkv_bias, c.layer_norm_eps) == (96, 6, False, 1e-6)
    assert (c.image_size, c.patch_size, c.num_frames, c.num_labels) == (32, 16, 4, 5)
