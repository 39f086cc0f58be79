"""The identity of a pipeline's encoders: what a latent cache must match to be reused.

A latent cache holds what the VAE and text encoders computed, so it stays valid for any UNet (a
fine-tuned one too) as long as the VAE, the text encoders and their tokenizers are the same. The
fingerprint is one sha256 per component of what decides their outputs, not of how the files were
written, so a pipeline saved again (``save_pretrained`` adds ``_name_or_path``, another library
version, another serialisation of the same tokenizer) keeps its fingerprint:

- ``vae``, ``text_encoder``, ``text_encoder_2``, ``text_encoder_3`` (SD3's T5): the config without
  bookkeeping keys (``_name_or_path``, library versions), and every weight tensor's name, dtype, shape
  and bytes;
- ``tokenizer``, ``tokenizer_2``, ``tokenizer_3``: a CLIP tokenizer's vocabulary, BPE merges and maximum
  length; any other (T5: SD3's ``tokenizer_3``, FLUX's ``tokenizer_2``) the ``tokenizers`` model it is
  backed by (its JSON serialisation) and its maximum length.

Hashing reads the weights once: about a second per GB.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Optional

from diffalign.errors import ModelLoadError

MODEL_COMPONENTS = ("vae", "text_encoder", "text_encoder_2", "text_encoder_3")
TOKENIZER_COMPONENTS = ("tokenizer", "tokenizer_2", "tokenizer_3")
BOOKKEEPING_KEYS = ("_name_or_path", "_diffusers_version", "transformers_version", "_commit_hash", "_use_default_values")


def encoder_fingerprint(model: str, revision: Optional[str] = None) -> dict[str, str]:
    """``{component: sha256}`` for each encoder component the pipeline has."""
    root = _local_root(model, revision)
    fingerprint = {}
    for component in MODEL_COMPONENTS + TOKENIZER_COMPONENTS:
        folder = os.path.join(root, component)
        if os.path.isdir(folder):
            digest = _tokenizer_digest if component in TOKENIZER_COMPONENTS else _model_digest
            fingerprint[component] = digest(folder)
    if "vae" not in fingerprint:
        raise ModelLoadError(f"{model}: no vae/ folder to fingerprint")
    return fingerprint


def _local_root(model: str, revision: Optional[str]) -> str:
    if os.path.isdir(model):
        return model
    from huggingface_hub import snapshot_download

    patterns = [f"{component}/*" for component in MODEL_COMPONENTS + TOKENIZER_COMPONENTS]
    try:
        return snapshot_download(model, revision=revision, allow_patterns=patterns)
    except Exception as error:
        raise ModelLoadError(f"could not find the encoder files of {model!r}: {error}") from error


def _model_digest(folder: str) -> str:
    import torch
    from safetensors import safe_open

    digest = hashlib.sha256()
    with open(os.path.join(folder, "config.json")) as handle:
        config = {key: value for key, value in json.load(handle).items() if key not in BOOKKEEPING_KEYS}
    digest.update(json.dumps(config, sort_keys=True).encode())
    weights = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not weights:
        raise ModelLoadError(f"{folder}: no safetensors weights to fingerprint (convert .bin weights with save_pretrained)")
    tensors = {}
    for path in weights:
        handle = safe_open(path, framework="pt")
        tensors.update({name: (handle, name) for name in handle.keys()})
    for name in sorted(tensors):
        handle, key = tensors[name]
        tensor = handle.get_tensor(key).contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _tokenizer_digest(folder: str) -> str:
    from transformers import AutoTokenizer, CLIPTokenizer

    config_path = os.path.join(folder, "tokenizer_config.json")
    tokenizer_class = "CLIPTokenizer"
    if os.path.isfile(config_path):
        with open(config_path) as handle:
            tokenizer_class = json.load(handle).get("tokenizer_class") or tokenizer_class
    if not tokenizer_class.startswith("CLIP"):
        tokenizer = AutoTokenizer.from_pretrained(folder)
        payload = {"backend": json.loads(tokenizer.backend_tokenizer.to_str()), "max_length": tokenizer.model_max_length}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    if hasattr(tokenizer, "backend_tokenizer"):  # a tokenizers-backed CLIPTokenizer
        merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    else:
        merges = [list(pair) for pair, _ in sorted(tokenizer.bpe_ranks.items(), key=lambda item: item[1])]
    payload = {"vocab": sorted(tokenizer.get_vocab().items()), "merges": merges, "max_length": tokenizer.model_max_length}
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()
