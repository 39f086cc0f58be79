"""The identity of a pipeline's encoders: what a latent cache must match to be reused.

A latent cache holds what the VAE and text encoders computed, so it stays valid for any UNet (a
fine-tuned one too) as long as the VAE, the text encoders and their tokenizers are the same files.
The fingerprint is a sha256 per component folder over its files' names and contents (for a hub id,
the files of the local hub cache, whose blob names already are their sha256 for large files).
Hashing reads the files once: about a second per GB.
"""

from __future__ import annotations

import hashlib
import os
from typing import Optional

from diffalign.errors import ModelLoadError

ENCODER_COMPONENTS = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
CHUNK = 8 << 20


def encoder_fingerprint(model: str, revision: Optional[str] = None) -> dict[str, str]:
    """``{component: sha256}`` for each of ``ENCODER_COMPONENTS`` the pipeline has."""
    root = _local_root(model, revision)
    fingerprint = {}
    for component in ENCODER_COMPONENTS:
        folder = os.path.join(root, component)
        if os.path.isdir(folder):
            fingerprint[component] = _folder_digest(folder)
    if "vae" not in fingerprint:
        raise ModelLoadError(f"{model}: no vae/ folder to fingerprint")
    return fingerprint


def _local_root(model: str, revision: Optional[str]) -> str:
    if os.path.isdir(model):
        return model
    from huggingface_hub import snapshot_download

    patterns = [f"{component}/*" for component in ENCODER_COMPONENTS]
    try:
        return snapshot_download(model, revision=revision, allow_patterns=patterns)
    except Exception as error:
        raise ModelLoadError(f"could not find the encoder files of {model!r}: {error}") from error


def _folder_digest(folder: str) -> str:
    digest = hashlib.sha256()
    for directory, subfolders, files in sorted(os.walk(folder)):
        subfolders.sort()
        for name in sorted(files):
            path = os.path.join(directory, name)
            digest.update(os.path.relpath(path, folder).encode() + b"\0" + _file_digest(path).encode() + b"\0")
    return digest.hexdigest()


def _file_digest(path: str) -> str:
    target = os.path.realpath(path)
    blob = os.path.basename(target)
    if os.path.basename(os.path.dirname(target)) == "blobs" and len(blob) == 64:  # hub cache: named by sha256
        return blob
    digest = hashlib.sha256()
    with open(target, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
