"""load_model on every checkpoint source, checked numerically against transformers (fp32 CPU, TOL as in
test_model.py: fp32 rounding only, ~1e-6 measured) and every bad checkpoint checked for a clear error.

Original-layout .pth files are written here from the HF weights with the MCG-NJU / VideoMAE V2 key names
(patch_embed.proj, blocks.i.attn.qkv + q_bias/v_bias, norm1/norm2, mlp.fc1/fc2, norm / fc_norm, head). Originals use
LayerNorm eps 1e-6 everywhere, fc_norm included, so the HF reference for them is built with eps 1e-6 and its fc_norm
(1e-5 in transformers) set to 1e-6. Run with `-s` to see the per-case worst errors.
"""

from __future__ import annotations

import argparse
import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers.hf_checkpoints import TINY, make_checkpoint, make_hf_checkpoint, make_hf_model
from vmae_fast import VideoMAEConfig, load_model
from vmae_fast.faults import InvalidModel

TOL = 1e-4
TINY_OVERRIDE = {"image_size": TINY["image_size"], "num_frames": TINY["num_frames"],
                 "num_attention_heads": TINY["num_attention_heads"]}


def rel_err(got, want) -> float:
    assert got.shape == want.shape, f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    return ((got - want).abs().max() / want.abs().max()).item()


def check_parity(case: str, model, hf, batch: int = 2) -> dict:
    """Our outputs vs transformers' on the same float input: tokens, embeddings and logits when there is a head."""
    c = model.config
    x = torch.randn(batch, c.num_frames, 3, c.image_size, c.image_size, generator=torch.Generator().manual_seed(0))
    out = model(x, return_tokens=True)
    core = getattr(hf, "videomae", hf)
    with torch.no_grad():
        h = core(x).last_hidden_state  # (B, N, D)
        fc_norm = getattr(hf, "fc_norm", None)
        pooled = h.mean(1)
        errs = {"tokens": rel_err(out.tokens, h.reshape(-1, h.shape[-1])),
                "embeddings": rel_err(out.embeddings, fc_norm(pooled) if fc_norm is not None else pooled)}
        if getattr(hf, "classifier", None) is not None:
            errs["logits"] = rel_err(out.logits, hf(x).logits)
        else:
            assert out.logits is None
    print(f"\nPARITY {case}: " + " ".join(f"{k}={v:.2e}" for k, v in errs.items()))
    assert max(errs.values()) <= TOL, f"{case}: {errs}"
    return errs


def hf_to_original(hf_state: dict) -> dict:
    """transformers' VideoMAE keys -> the MCG-NJU / VideoMAE V2 layout (fused qkv, q_bias / v_bias)."""
    sd = {k.removeprefix("videomae."): v for k, v in hf_state.items()}
    out = {"patch_embed.proj.weight": sd.pop("embeddings.patch_embeddings.projection.weight"),
           "patch_embed.proj.bias": sd.pop("embeddings.patch_embeddings.projection.bias")}
    i = 0
    while f"encoder.layer.{i}.layernorm_before.weight" in sd:
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        att = src + "attention.attention."
        out[dst + "attn.qkv.weight"] = torch.cat([sd.pop(att + n + ".weight") for n in ("query", "key", "value")])
        for name, hf_name in (("q_bias", "query.bias"), ("v_bias", "value.bias")):
            for spelling in (hf_name, name):  # >= 5.18 names, or the 4.x ones that save_pretrained / save_hf write
                if att + spelling in sd:
                    out[dst + "attn." + name] = sd.pop(att + spelling)
        for ours, theirs in (("norm1", "layernorm_before"), ("norm2", "layernorm_after"),
                             ("attn.proj", "attention.output.dense"), ("mlp.fc1", "intermediate.dense"),
                             ("mlp.fc2", "output.dense")):
            for p in ("weight", "bias"):
                out[f"{dst}{ours}.{p}"] = sd.pop(f"{src}{theirs}.{p}")
        i += 1
    for ours, theirs in (("norm", "layernorm"), ("fc_norm", "fc_norm"), ("head", "classifier")):
        for p in ("weight", "bias"):
            if f"{theirs}.{p}" in sd:
                out[f"{ours}.{p}"] = sd.pop(f"{theirs}.{p}")
    leftover = [k for k in sd if not k.startswith(("decoder.", "encoder_to_decoder", "mask_token"))]
    assert not leftover, leftover
    return out


def write_bin_dir(path, hf, shards: int = 1):
    """A transformers-style .bin directory (5.x key names query.bias/value.bias), optionally sharded."""
    path.mkdir(parents=True)
    hf.config.save_pretrained(path)
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    if shards == 1:
        torch.save(state, path / "pytorch_model.bin")
        return path
    keys = sorted(state)
    weight_map = {}
    for s in range(shards):
        name = f"pytorch_model-{s + 1:05d}-of-{shards:05d}.bin"
        part = keys[s::shards]
        torch.save({k: state[k] for k in part}, path / name)
        weight_map.update(dict.fromkeys(part, name))
    (path / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


# --- Hugging Face directories ----------------------------------------------------------------------------------------
def test_safetensors_dir_with_legacy_q_bias_names(tmp_path):
    path, hf = make_hf_checkpoint(tmp_path / "st", kind="classification")
    from safetensors import safe_open

    with safe_open(path / "model.safetensors", "pt") as f:  # transformers 5.x writes the 4.x names
        assert any(k.endswith("attention.attention.q_bias") for k in f.keys())  # noqa: SIM118
    model = load_model(path, device="cpu")
    check_parity("hf-safetensors-q_bias-names", model, hf)
    assert model.config.id2label == {i: f"class_{i}" for i in range(5)}
    assert model.weights_sha256 == hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_bin_dir_with_query_bias_names(tmp_path):
    hf = make_hf_model(kind="classification", use_mean_pooling=False, layer_norm_eps=1e-6)
    assert any(k.endswith("query.bias") for k in hf.state_dict())
    check_parity("hf-bin-query.bias-names", load_model(write_bin_dir(tmp_path / "bin", hf), device="cpu"), hf)


def test_sharded_safetensors_and_bin(tmp_path):
    hf = make_hf_model(kind="base", use_mean_pooling=False)
    hf.save_pretrained(tmp_path / "st", max_shard_size="20KB")
    assert (tmp_path / "st" / "model.safetensors.index.json").is_file()
    check_parity("hf-sharded-safetensors", load_model(tmp_path / "st", device="cpu"), hf)
    check_parity("hf-sharded-bin", load_model(write_bin_dir(tmp_path / "bin", hf, shards=3), device="cpu"), hf)


def test_pretraining_checkpoint_loads_encoder_and_ignores_decoder(tmp_path):
    path, hf = make_hf_checkpoint(tmp_path / "pt", kind="pretraining", use_mean_pooling=False)
    model = load_model(path, device="cpu")
    assert model.head is None and model.norm is not None
    check_parity("hf-pretraining-encoder", model, hf.videomae)


def test_hub_id_from_local_cache(tmp_path, monkeypatch):
    """A fake HF cache (models--org--name/refs/main + snapshots/<commit>/): resolved offline through
    huggingface_hub, never the network."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--test-org--videomae-tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    _, hf = make_hf_checkpoint(repo / "snapshots" / commit, kind="classification")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model("test-org/videomae-tiny", device="cpu")
    assert model.source == "test-org/videomae-tiny"
    check_parity("hub-id-local-cache", model, hf)
    with pytest.raises(FileNotFoundError, match="test-org/not-cached.*Hugging Face cache"):
        load_model("test-org/not-cached", device="cpu")


# --- original MCG-NJU / VideoMAE V2 .pth -----------------------------------------------------------------------------
def original_reference(kind: str, **overrides):
    hf = make_hf_model(kind=kind, layer_norm_eps=1e-6, **overrides)
    if getattr(hf, "fc_norm", None) is not None:
        hf.fc_norm.eps = 1e-6  # the originals build every LayerNorm, fc_norm included, with eps 1e-6
    return hf


def test_original_finetuned_pth(tmp_path):
    hf = original_reference("classification")
    state = hf_to_original(hf.state_dict())
    torch.save({"model": state, "epoch": 3, "args": argparse.Namespace(lr=1e-3)}, tmp_path / "ft.pth")
    model = load_model(tmp_path / "ft.pth", device="cpu", config=TINY_OVERRIDE)
    c = model.config
    assert (c.use_mean_pooling, c.has_fc_norm, c.num_labels, c.layer_norm_eps, c.fc_norm_eps) == (True, True, 5, 1e-6,
                                                                                                   1e-6)
    assert c.image_mean == (0.485, 0.456, 0.406)  # originals: ImageNet statistics
    check_parity("original-pth-finetuned-model-key", model, hf)


def test_original_pretrained_pth_with_prefixes_and_decoder(tmp_path):
    """State dict under "module", keys prefixed `_orig_mod.encoder.` (torch.compile + pre-training wrapper), the
    decoder, encoder_to_decoder and mask_token present (dropped), and the fixed pos_embed stored (checked, dropped)."""
    from vmae_fast.model import sincos_table

    hf = make_hf_model(kind="pretraining", use_mean_pooling=False, layer_norm_eps=1e-6)
    state = {"_orig_mod.encoder." + k: v for k, v in hf_to_original(hf.state_dict()).items()}
    state["_orig_mod.decoder.blocks.0.norm1.weight"] = torch.ones(8)
    state["_orig_mod.encoder_to_decoder.weight"] = torch.ones(8, 64)
    state["_orig_mod.mask_token"] = torch.zeros(1, 1, 8)
    state["_orig_mod.encoder.pos_embed"] = sincos_table(8, 64).unsqueeze(0)
    torch.save({"module": state}, tmp_path / "pt.pth")
    model = load_model(tmp_path / "pt.pth", device="cpu", config=TINY_OVERRIDE)
    assert not model.config.use_mean_pooling and model.head is None
    check_parity("original-pth-pretrained-module-key-prefixed", model, hf.videomae)


def test_original_safetensors_file(tmp_path):
    hf = original_reference("classification", use_mean_pooling=False)
    save_file(hf_to_original(hf.state_dict()), tmp_path / "w.safetensors")
    check_parity("original-safetensors-tokenhead", load_model(tmp_path / "w.safetensors", device="cpu",
                                                              config=TINY_OVERRIDE), hf)


def test_original_small_width_infers_preset_heads_and_override_wins(tmp_path):
    """Width 384 is the small preset (6 heads) in the originals; the HF small checkpoints use 16 heads. The shapes
    cannot tell them apart: the preset is the default and config= overrides it."""
    hf = original_reference("classification", hidden_size=384, num_attention_heads=16, intermediate_size=1536,
                            num_hidden_layers=1)
    torch.save({"model": hf_to_original(hf.state_dict())}, tmp_path / "small.pth")
    sizes = {"image_size": 32, "num_frames": 4}
    inferred = load_model(tmp_path / "small.pth", device="cpu", config=sizes)
    assert inferred.config.num_attention_heads == 6
    model = load_model(tmp_path / "small.pth", device="cpu", config={**sizes, "num_attention_heads": 16})
    check_parity("original-pth-hf-small-16-heads-override", model, hf)


# --- random weights --------------------------------------------------------------------------------------------------
def test_random_preset_is_deterministic_and_described():
    a = load_model("random:small", device="cpu", config={"num_hidden_layers": 1, "image_size": 32, "num_frames": 4})
    b = load_model("random:small", device="cpu", config={"num_hidden_layers": 1, "image_size": 32, "num_frames": 4})
    c = load_model("random:small:1", device="cpu", config={"num_hidden_layers": 1, "image_size": 32, "num_frames": 4})
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert not torch.equal(a.blocks[0].attn.wqkv.weight, c.blocks[0].attn.wqkv.weight)
    frames = torch.randint(0, 256, (2, 4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a(frames).embeddings, b(frames).embeddings)
    d = a.describe()
    json.dumps(d)
    assert d["source"] == "random:small" and c.describe()["source"] == "random:small:1"
    assert d["weights_sha256"] == hashlib.sha256(b"random:small:seed=0").hexdigest() != c.weights_sha256
    assert d["config"]["num_attention_heads"] == 6 and d["dtype"] == "float32" and d["device"] == "cpu"
    assert d["preprocessing"] == {"image_size": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                  "resize": "shortest_edge", "crop": "center", "interpolation": "bilinear"}
    assert d["backend"] == "auto" and d["id2label"] is None


def test_random_base_preset_sizes():
    model = load_model("random:base", device="cpu")
    # patch 1536*768+768, 12 x (qkv 768*2304 + q/v bias 1536, proj 768*768+768, 2 LN 3072, fc1 768*3072+3072,
    # fc2 3072*768+768), fc_norm 1536
    assert model.num_parameters() == 1_180_416 + 12 * 7_087_104 + 1_536 == 86_227_200
    assert model.config.num_tokens == 1568 and model.pos_table.shape == (1568, 768)
    assert model.pos_table.dtype == torch.float32 and "pos_table" not in model.state_dict()


def test_dtype_argument():
    model = load_model("random:small", device="cpu", dtype="bf16", config={"num_hidden_layers": 1})
    assert model.dtype == torch.bfloat16 and model.pos_table.dtype == torch.float32
    with pytest.raises(ValueError, match="dtype must be"):
        load_model("random:small", device="cpu", dtype="int8")


# --- errors ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_original(tmp_path_factory):
    """An original-layout state dict (from a checkpoint of our writer: no transformers) and a folder for bad files."""
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("bad")
    path = make_checkpoint(root / "hf", kind="classification", layer_norm_eps=1e-6)
    return hf_to_original(load_file(path / "model.safetensors")), root


def save_and_load(state, root, name, **kwargs):
    torch.save({"model": state}, root / name)
    return load_model(root / name, device="cpu", **{"config": TINY_OVERRIDE, **kwargs})


def test_missing_unexpected_and_misshaped_keys_are_named(tiny_original):
    state, root = tiny_original
    missing = {k: v for k, v in state.items() if k != "blocks.1.mlp.fc2.bias"}
    with pytest.raises(ValueError, match=r"missing keys: blocks\.1\.mlp\.fc2\.bias"):
        save_and_load(missing, root, "missing.pth")
    with pytest.raises(ValueError, match=r"unexpected keys: blocks\.0\.attn\.extra_scale"):
        save_and_load({**state, "blocks.0.attn.extra_scale": torch.ones(4)}, root, "unexpected.pth")
    wrong = {**state, "blocks.0.mlp.fc1.bias": torch.zeros(7)}
    with pytest.raises(ValueError, match=r"mis-shaped keys: blocks\.0\.mlp\.fc1\.bias: expected \(128,\), got \(7,\)"):
        save_and_load(wrong, root, "misshaped.pth")


def test_head_count_needed_when_no_preset_matches(tiny_original):
    state, root = tiny_original
    with pytest.raises(ValueError, match="cannot infer the number of attention heads for hidden size 64"):
        save_and_load(state, root, "no-heads.pth", config={"image_size": 32, "num_frames": 4})


def test_learnable_pos_embed_is_refused(tiny_original):
    state, root = tiny_original
    with pytest.raises(ValueError, match="learnable position embeddings"):
        save_and_load({**state, "pos_embed": torch.randn(1, 8, 64)}, root, "learned-pos.pth")


def test_image_vit_state_dict_is_refused(tmp_path):
    from transformers import ViTConfig, ViTModel

    vit = ViTModel(ViTConfig(image_size=32, patch_size=16, hidden_size=64, num_hidden_layers=1,
                             num_attention_heads=4, intermediate_size=128))
    torch.save(vit.state_dict(), tmp_path / "vit.bin")
    with pytest.raises(ValueError, match=r"not a VideoMAE checkpoint: 'embeddings.patch_embeddings.projection.weight' "
                                         r"has shape \(64, 3, 16, 16\)"):
        load_model(tmp_path / "vit.bin", device="cpu")
    timm_like = {"patch_embed.proj.weight": torch.zeros(64, 3, 16, 16), "cls_token": torch.zeros(1, 1, 64)}
    torch.save(timm_like, tmp_path / "timm.pth")
    with pytest.raises(ValueError, match="not a VideoMAE checkpoint.*Conv3d"):
        load_model(tmp_path / "timm.pth", device="cpu")
    vit.save_pretrained(tmp_path / "vit-dir")
    with pytest.raises(ValueError, match="holds a 'vit' model"):
        load_model(tmp_path / "vit-dir", device="cpu")
    torch.save({"linear.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="no patch embedding key"):
        load_model(tmp_path / "other.pth", device="cpu")


def test_bad_sources(tmp_path):
    with pytest.raises(ValueError, match="unknown VideoMAE preset 'tiny'"):
        load_model("random:tiny", device="cpu")
    with pytest.raises(ValueError, match="random:<preset>"):
        load_model("random:base:x", device="cpu")
    with pytest.raises(FileNotFoundError, match="not a file, a directory"):
        load_model(tmp_path / "nothing.pth", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="without config.json"):
        load_model(tmp_path / "empty", device="cpu")
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "videomae"}))
    with pytest.raises(FileNotFoundError, match="has no weights"):
        load_model(tmp_path / "empty", device="cpu")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_model(tmp_path / "junk.pth", device="cpu")
    # files that are no pickle at all: torch's legacy reader raises IndexError (text) or KeyError (b"hello")
    for name, data in (("text.pth", b"this is not a video\n" * 20), ("hello.pth", b"hello")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InvalidModel, match=f"cannot read {tmp_path / name} as a weights file"):
            load_model(tmp_path / name, device="cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        load_model("random:small", device="cpu", backend="cuda")


@pytest.mark.parametrize(("name", "data", "detail"), [
    ("config.pth", b"config: base\nmodel: videomae\n", "it names the Python object 'onfig: base"),  # 'c': GLOBAL
    ("list.pth", b"(lp0\n.", "unsupported pickle operation 108"),
    ("junk.pth", b"not a pickle", "unsupported pickle operation"),
    ("evil.pth", b"cos\nsystem\n(S'echo owned'\ntR.", "it names the Python object 'os.system'"),
], ids=["yaml-text", "pickled-list", "text", "os-system"])
def test_a_file_torch_refuses_to_unpickle_is_our_error_without_advice_to_unpickle_it(tmp_path, capsys, name, data,
                                                                                     detail):
    """Bytes that unpickle far enough to meet torch's weights_only check: torch's message advises loading with
    weights_only=False (arbitrary code execution for an untrusted file); ours says what the file is not, what it
    holds, and what to give instead, in one line."""
    from vmae_fast.cli import main

    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(InvalidModel) as caught:
        load_model(path, device="cpu")
    message = str(caught.value)
    assert message.startswith(f"cannot read {path} as a weights file") and detail in message, message
    assert len(message.splitlines()) == 1 and ".safetensors" in message, message
    for advice in ("False", "trusted source", "add_safe_globals", "safe_globals", "file an issue"):
        assert advice not in message, message
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot read {path} as a weights file" in err[0] and "False" not in err[0], err


def test_config_object_override_is_used_as_is(tiny_original):
    state, root = tiny_original
    cfg = VideoMAEConfig(image_size=32, patch_size=16, num_frames=4, hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=128, num_labels=5)
    model = save_and_load(state, root, "as-is.pth", config=cfg)
    assert model.config is cfg


def test_cli_info(capsys, tmp_path):
    from vmae_fast.cli import main

    assert main(["info", "random:small"]) == 0
    out = capsys.readouterr().out
    assert "parameters      21," in out and "6 heads (head dim 64)" in out
    assert "uint8 (B, 16, 224, 224, 3)" in out and "mean [0.485, 0.456, 0.406]" in out
    path = make_checkpoint(tmp_path / "m", kind="classification")
    assert main(["info", str(path), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["config"]["num_labels"] == 5 and described["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert main(["info", "random:tiny"]) == 2
    assert "unknown VideoMAE preset 'tiny'" in capsys.readouterr().err


# --- writing (checkpoint.save_hf) ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, overrides", [
    ("classification", {}), ("classification", {"use_mean_pooling": False, "layer_norm_eps": 1e-6}),
    ("base", {}), ("base", {"use_mean_pooling": False}), ("classification", {"qkv_bias": False}),
], ids=["cls-meanpool", "cls-tokenhead", "base-meanpool", "base-layernorm", "no-qv-bias"])
@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_save_hf_round_trip(tmp_path, kind, overrides, safe):
    """save_hf -> load_model gives back the same config and the same weights (bit for bit), in both file formats;
    the independent oracle reads the same folder to the same numbers (no transformers involved)."""
    from tests.helpers.hf_checkpoints import tiny_config
    from tests.helpers.reference_videomae import ReferenceVideoMAE
    from vmae_fast.checkpoint import save_hf

    path = make_checkpoint(tmp_path / "a", kind=kind, seed=3, safe_serialization=safe, **overrides)
    first = load_model(path, device="cpu")
    assert first.config == tiny_config(kind=kind, **overrides)
    assert (path / ("model.safetensors" if safe else "pytorch_model.bin")).is_file()
    again = load_model(save_hf(first, tmp_path / "b", safe_serialization=safe), device="cpu")
    assert again.config == first.config
    for (name, a), b in zip(first.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    x = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    want = ReferenceVideoMAE.from_hf(path)(x)
    out = first(x, return_tokens=True)
    assert rel_err(out.tokens, want["tokens"].reshape(-1, 64)) < TOL
    if kind == "classification":
        assert rel_err(out.logits, want["logits"]) < TOL


def test_save_hf_dtype_and_refusals(tmp_path):
    from vmae_fast.checkpoint import save_hf

    model = load_model(make_checkpoint(tmp_path / "a"), device="cpu")
    half = load_model(save_hf(model, tmp_path / "fp16", dtype=torch.float16, note="hi"), device="cpu")
    meta = json.loads((tmp_path / "fp16" / "config.json").read_text())
    assert meta["torch_dtype"] == "float16" and meta["vmae_fast_note"] == "hi" and meta["qv_bias"] is True
    assert torch.equal(half.blocks[0].mlp.fc1.weight, model.blocks[0].mlp.fc1.weight.half().float())
    original = load_model("random:small", device="cpu", config={"num_hidden_layers": 1})  # fc_norm eps 1e-6
    with pytest.raises(ValueError, match="fc_norm with eps 1e-05.*uses fc_norm_eps 1e-06"):
        save_hf(original, tmp_path / "orig")
    with pytest.raises(TypeError, match="save_hf takes a vmae_fast VideoMAE"):
        save_hf(torch.nn.Linear(2, 2), tmp_path / "x")


@pytest.mark.parametrize("version, refused", [("5.17.0", True), ("5.6.0", True), ("5.11.2.dev0", True),
                                              ("5.18.0", False), ("5.24.0", False), ("4.57.6", False),
                                              ("5.5.4", False), ("6.0.0", False)])
def test_parity_refuses_transformers_that_drop_qv_biases(version, refused, monkeypatch, tmp_path):
    """transformers 5.6-5.17 are refused as a numerical reference at run time: a skip naming the version."""
    from tests.helpers import hf_checkpoints

    why = hf_checkpoints.transformers_version_refused(version)
    assert (why is not None) == refused
    if not refused:
        return
    assert f"transformers {version} drops VideoMAE's q/v biases" in why
    transformers = pytest.importorskip("transformers")
    monkeypatch.setattr(transformers, "__version__", version)
    with pytest.raises(pytest.skip.Exception, match=f"transformers {version} drops"):
        hf_checkpoints.make_hf_model(kind="classification")
    with pytest.raises(pytest.skip.Exception, match=f"transformers {version} drops"):
        hf_checkpoints.make_hf_checkpoint(tmp_path / "never-written")
    assert not (tmp_path / "never-written").exists()  # refused before anything is written
