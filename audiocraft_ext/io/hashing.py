"""Content hashes: of a state dict (what identifies a base) and of files (what a save wrote)."""
import hashlib
from pathlib import Path
import typing as tp

import torch


def weights_hash(state_dict: tp.Mapping[str, torch.Tensor]) -> str:
    """Content hash of a state dict: names, shapes and values rounded to float16.

    Rounding makes the hash the same whether the base was loaded in float32 (CPU) or float16
    (AudioCraft's loaders on GPU), so an extension trained on one device loads on the other.
    """
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(state_dict):
        tensor = state_dict[name].detach()
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float16)
        tensor = tensor.cpu().contiguous()
        digest.update(f'{name}:{tuple(tensor.shape)}:{tensor.dtype};'.encode())
        # reshape(-1): a 0-dim tensor cannot be viewed as bytes (same bytes for every other tensor).
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b'')
    return digest.hexdigest()


def tensors_sha256(tensors: tp.Mapping[str, torch.Tensor]) -> str:
    """sha256 of names, dtypes, shapes and exact bytes (no rounding): what a file must give back."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f'{name}:{tuple(tensor.shape)}:{tensor.dtype};'.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b'')
    return digest.hexdigest()


def file_sha256(path: tp.Union[str, Path], chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (what `sha256sum` prints)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as file:
        for block in iter(lambda: file.read(chunk), b''):
            digest.update(block)
    return digest.hexdigest()
