"""Load an encoder, VideoMAE or V-JEPA 2 (picked from config.json's model_type, or from the keys of a bare weights
file), from a Hugging Face directory, an original MCG-NJU / VideoMAE V2 .pth, a .safetensors / .bin file, a hub id
in the local Hugging Face cache, or `random:<preset>[:seed]`. The import is strict: every checkpoint key is used or
deliberately ignored (VideoMAE's pre-training decoder, V-JEPA 2's predictor), every shape is checked, and the fused
qkv is built here.

Public API (`__all__`): load_model and model_class (the encoder class a config builds); save_hf (write a Hugging
Face checkpoint folder) with hf_config_dict and hf_state_dict; random_state_dict; convert_state_dict,
convert_vjepa2_state_dict and the key tables HF_WEIGHT_MAP, ORIGINAL_WEIGHT_MAP, VJEPA2_WEIGHT_MAP.

One file per role: load.py (sources, the architecture, assembly, random weights), videomae_keys.py and
vjepa2_keys.py (each family's key table, the config a checkpoint implies, the strict conversion), mapping.py (what
both conversions share), hf_export.py (save_hf).
"""

from __future__ import annotations

from .hf_export import hf_config_dict, hf_state_dict, save_hf
from .load import load_model, model_class, random_state_dict
from .videomae_keys import HF_WEIGHT_MAP, ORIGINAL_WEIGHT_MAP, convert_state_dict
from .vjepa2_keys import VJEPA2_WEIGHT_MAP, convert_vjepa2_state_dict

__all__ = ["HF_WEIGHT_MAP", "ORIGINAL_WEIGHT_MAP", "VJEPA2_WEIGHT_MAP", "convert_state_dict",
           "convert_vjepa2_state_dict", "hf_config_dict", "hf_state_dict", "load_model", "model_class",
           "random_state_dict", "save_hf"]
