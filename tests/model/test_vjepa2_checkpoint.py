"""load_model picks V-JEPA 2 from the checkpoint and imports it strictly: every source kind (folder with safetensors,
.bin or shards, a bare weights file, a hub id in the local cache), the predictor ignored on purpose, every missing,
unexpected or mis-shaped key named, and `vmae-fast info` describing it. Numbers are checked against transformers on
the same files (fp32, TOL as in test_vjepa2.py)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers.hf_checkpoints import make_checkpoint
from tests.helpers.vjepa2_checkpoints import make_hf_checkpoint
from vmae_fast import VideoMAEConfig, load_model
from vmae_fast.model import VideoMAE
from vmae_fast.vjepa2 import VJEPA2

TOL = 1e-4


def rel_err(got, want) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


def check_against(model, hf, batch: int = 2) -> float:
    c = model.config
    x = torch.randn(batch, c.num_frames, 3, c.image_size, c.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if hasattr(hf, "pooler"):
            want, got = hf(x).logits, model(x).logits
        else:
            want, got = hf(x, skip_predictor=True).last_hidden_state.mean(1), model(x).embeddings
    err = rel_err(got, want)
    assert err <= TOL, err
    return err


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("vjepa2-ckpt")
    return {kind: make_hf_checkpoint(root / kind, kind=kind, seed=21) for kind in ("base", "classification")}


@pytest.mark.parametrize("kind", ["base", "classification"])
def test_folder_loads_the_architecture_from_config_json(folders, kind):
    path, hf = folders[kind]
    keys = load_file(path / "model.safetensors")
    assert any(k.startswith(("predictor.", "vjepa2.predictor.")) for k in keys)  # what the loader must ignore
    model = load_model(path, device="cpu")
    assert isinstance(model, VJEPA2) and model.describe()["architecture"] == "vjepa2"
    assert (model.head is not None) == (kind == "classification")
    assert model.num_parameters() == sum(v.numel() for k, v in keys.items() if "predictor." not in k)
    check_against(model, hf)


def test_bin_folder(tmp_path):
    path, hf = make_hf_checkpoint(tmp_path / "bin", kind="classification", seed=22, safe_serialization=False)
    assert (path / "pytorch_model.bin").is_file()
    check_against(load_model(path, device="cpu"), hf)


def test_bare_safetensors_file_infers_the_architecture(folders, tmp_path):
    """A weights file without config.json: V-JEPA 2 from its keys, sizes from the shapes, the head count from the
    preset of that width (none for 64: given as an override), 256 px / 64 frames unless overridden."""
    path, hf = folders["classification"]
    bare = tmp_path / "weights.safetensors"
    save_file(load_file(path / "model.safetensors"), str(bare))
    with pytest.raises(ValueError, match="cannot infer the number of attention heads for hidden size 64"):
        load_model(bare, device="cpu")
    model = load_model(bare, device="cpu", config={"num_attention_heads": 4, "image_size": 32, "num_frames": 4})
    c = model.config
    assert isinstance(model, VJEPA2) and (c.num_hidden_layers, c.intermediate_size, c.num_pooler_layers) == (2, 128, 2)
    assert c.num_labels == 5 and c.pooler_intermediate_size == 256
    check_against(model, hf)


def test_hub_id_from_local_cache(folders, tmp_path, monkeypatch):
    """facebook/vjepa2-... resolved offline through a local Hugging Face cache laid out as the hub client does."""
    path, hf = folders["base"]
    snapshot = tmp_path / "hub" / "models--facebook--vjepa2-tiny" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for f in path.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (tmp_path / "hub" / "models--facebook--vjepa2-tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--facebook--vjepa2-tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model("facebook/vjepa2-tiny", device="cpu")
    assert isinstance(model, VJEPA2) and model.source == "facebook/vjepa2-tiny"
    check_against(model, hf)


def _write(tmp_path, state_dict, config):
    tmp_path.mkdir()
    save_file(state_dict, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_missing_unexpected_and_misshaped_keys_are_named(folders, tmp_path):
    path, _ = folders["classification"]
    sd = load_file(path / "model.safetensors")
    config = json.loads((path / "config.json").read_text())
    missing = {k: v for k, v in sd.items() if k != "vjepa2.encoder.layer.1.attention.key.bias"}
    with pytest.raises(ValueError, match=r"V-JEPA 2 config .*missing keys: encoder\.layer\.1\.attention\.key\.bias"):
        load_model(_write(tmp_path / "missing", missing, config), device="cpu")
    extra = {**sd, "vjepa2.encoder.extra.weight": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"unexpected keys: encoder\.extra\.weight"):
        load_model(_write(tmp_path / "extra", extra, config), device="cpu")
    bad = {**sd, "pooler.query_tokens": torch.zeros(1, 2, 64)}
    with pytest.raises(ValueError, match=r"mis-shaped keys: pooler\.query_tokens: expected \(1, 1, 64\), got "
                                         r"\(1, 2, 64\)"):
        load_model(_write(tmp_path / "bad", bad, config), device="cpu")
    no_pooler = {k: v for k, v in sd.items() if not k.startswith("pooler.cross_attention_layer.mlp")}
    with pytest.raises(ValueError, match=r"missing keys: pooler\.cross_attention_layer\.mlp\.fc1\.weight"):
        load_model(_write(tmp_path / "no-pooler", no_pooler, config), device="cpu")


def test_other_model_types_and_meta_checkpoints_are_refused(folders, tmp_path):
    path, _ = folders["base"]
    config = json.loads((path / "config.json").read_text())
    sd = load_file(path / "model.safetensors")
    with pytest.raises(ValueError, match=r"holds a 'vit' model .*supported: 'videomae', 'vjepa2'"):
        load_model(_write(tmp_path / "vit", sd, {**config, "model_type": "vit"}), device="cpu")
    # Meta's training layout (what transformers converts from): named so the user knows what to load instead
    meta = {"module.backbone.patch_embed.proj.weight": torch.zeros(64, 3, 2, 16, 16),
            "module.backbone.blocks.0.attn.qkv.weight": torch.zeros(192, 64),
            "module.backbone.blocks.0.attn.qkv.bias": torch.zeros(192)}
    save_file(meta, str(tmp_path / "meta.safetensors"))
    with pytest.raises(ValueError, match="original \\(Meta\\) V-JEPA 2 checkpoint .*convert_vjepa2_to_hf.py"):
        load_model(tmp_path / "meta.safetensors", device="cpu")
    image = {k: v for k, v in sd.items()}
    image["encoder.embeddings.patch_embeddings.proj.weight"] = torch.zeros(64, 3, 16, 16)
    with pytest.raises(ValueError, match=r"\(64, 3, 16, 16\).*Conv3d"):
        load_model(_write(tmp_path / "image", image, config), device="cpu")
    vjepa2_config = load_model(path, device="cpu").config
    with pytest.raises(ValueError, match="config is a VJEPA2Config but 'random:small' names a videomae preset"):
        load_model("random:small", device="cpu", config=vjepa2_config)
    videomae = make_checkpoint(tmp_path / "videomae", kind="base")
    with pytest.raises(ValueError, match="config is a VJEPA2Config but the checkpoint is a VideoMAE"):
        load_model(videomae, device="cpu", config=vjepa2_config)


def test_videomae_is_still_videomae(folders):
    model = load_model("random:small", device="cpu", config={"image_size": 32, "num_frames": 4,
                                                             "num_hidden_layers": 1})
    assert type(model) is VideoMAE and model.describe()["architecture"] == "videomae"
    assert "architecture" not in model.config.to_dict()  # VideoMAE's config (and so its runs' config hash) unchanged
    assert VideoMAEConfig.architecture == "videomae"


def test_cli_info(folders, capsys):
    from vmae_fast.cli import main

    path, _ = folders["classification"]
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "V-JEPA 2 ViT, 3D rotary positions (t/h/w sections of 4 columns)" in out
    assert "attentive pooler: 2 self-attention layers + 1 cross-attention" in out
    assert "resize shortest edge to 36 (bilinear), center crop 32x32" in out
    assert "embedding       64-d: the attentive pooler's output" in out
    assert main(["info", str(path), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["architecture"] == "vjepa2" and described["config"]["num_labels"] == 5
    assert main(["info", "random:vjepa2-vitl"]) == 0
    assert "parameters      303," in capsys.readouterr().out  # ViT-L: 303.9 M (304 M in the V-JEPA 2 paper)
