"""Model directories: a JSON manifest (format version, kind, config, extra) plus safetensors weights.

Nothing here unpickles: weights are safetensors, everything else is JSON, so loading a model file from an
untrusted source cannot execute code.
"""
import json
import os
from typing import Dict, Optional, Tuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
MANIFEST = "cgml_model.json"
WEIGHTS = "weights.safetensors"


def save_model_dir(
    path: str,
    kind: str,
    config: dict,
    state_dict: Dict[str, torch.Tensor],
    extra: Optional[dict] = None,
    overwrite: bool = False,
) -> str:
    """Write ``state_dict`` and its JSON manifest into directory ``path``; returns ``path``.

    Refuses to replace an existing model unless ``overwrite``. Files are written under temporary names and
    renamed, so an interrupted save never leaves a half-written model behind.
    """
    manifest_path = os.path.join(path, MANIFEST)
    if os.path.exists(manifest_path) and not overwrite:
        raise ValueError(f"{path} already holds a model; pass overwrite=True or choose another directory")
    manifest = {"format_version": FORMAT_VERSION, "kind": kind, "config": config, "extra": extra or {}}
    text = json.dumps(manifest, indent=1, sort_keys=True)  # fails early on non-JSON config values
    os.makedirs(path, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    save_file(tensors, os.path.join(path, WEIGHTS + ".tmp"))
    with open(manifest_path + ".tmp", "w") as f:
        f.write(text)
    os.replace(os.path.join(path, WEIGHTS + ".tmp"), os.path.join(path, WEIGHTS))
    os.replace(manifest_path + ".tmp", manifest_path)
    return path


def load_model_dir(path: str, kind: str) -> Tuple[dict, Dict[str, torch.Tensor], dict]:
    """Read a model directory written by :func:`save_model_dir`; returns ``(config, state_dict, extra)``."""
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory {path} does not exist")
    if not os.path.exists(manifest_path):
        raise ValueError(f"{path} is not a cgml model directory (no {MANIFEST})")
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"corrupt model manifest {manifest_path}: {' '.join(str(err).split())}") from None
    if not isinstance(manifest, dict) or "kind" not in manifest or "format_version" not in manifest:
        raise ValueError(f"corrupt model manifest {manifest_path}: missing 'kind' or 'format_version'")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"{path} has model format {manifest['format_version']}; this openmm-cgml reads format {FORMAT_VERSION}"
        )
    if manifest["kind"] != kind:
        raise ValueError(f"{path} holds a '{manifest['kind']}' model, expected '{kind}'")
    if not isinstance(manifest.get("config", {}), dict) or not isinstance(manifest.get("extra", {}), dict):
        raise ValueError(f"corrupt model manifest {manifest_path}: 'config' and 'extra' must be mappings")
    try:
        state_dict = load_file(os.path.join(path, WEIGHTS))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"corrupt or missing weights in {path}: {' '.join(str(err).split())}") from None
    bad = sorted(k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise ValueError(f"{path} holds non-finite (NaN or inf) weights in {bad[:3]}; retrain or restore the model")
    return manifest.get("config", {}), state_dict, manifest.get("extra", {})
