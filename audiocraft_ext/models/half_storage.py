"""Frozen layers whose weights are stored in float16 but compute as if they were float32.

The frozen base transformer is most of an extended model's resident memory: 4 bytes per base
parameter in float32. Stored in float16 it takes 2. AudioCraft's own loaders load MusicGen in
float16 on GPU, so there nothing is lost, and `weights_hash` (which rounds to float16) is the
same before and after.

A layer stored in float16 gives exactly the outputs of float32 weights holding the same values,
with or without autocast. While it runs, its weights are copies in the dtype of its input
(float32 in MusicGen's residual stream), one layer at a time, and go back to float16 when it
returns. Each call pays one conversion of the layer's weights (+3 to +5 % of a training step
on CPU, docs/BENCHMARKS.md) and holds one layer's float32 copy meanwhile.

Only for frozen layers run under `torch.no_grad()`: autograd must not keep the temporary copies.
"""
import typing as tp

import torch
from torch import nn

SUPPORTED_DTYPES = (torch.float32, torch.float16)


def check_storage_dtype(dtype: tp.Any) -> torch.dtype:
    """`dtype` (a torch dtype or its name, e.g. 'float16') as a torch dtype, if it can store frozen weights."""
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if resolved not in SUPPORTED_DTYPES:
        raise ValueError(
            f"Cannot store the frozen base in {dtype!r}: use float16 (half the base's memory; the weights "
            "AudioCraft loads on GPU are float16 already, so nothing is lost there) or float32. "
            "bfloat16 is refused: rounding to it changes the base's weights and its hash.")
    return resolved


class _CopiesWhileRunning:
    """Forward hooks of one layer: copies of its weights in its input's dtype while it runs."""
    def __init__(self) -> None:
        self.stored: tp.List[tp.Tuple[nn.Parameter, torch.Tensor]] = []

    def before(self, layer: nn.Module, args: tp.Tuple[tp.Any, ...]) -> None:
        x = args[0]  # [B, S, D]
        params = [param for param in layer.parameters() if param.dtype != x.dtype]
        if params and torch.is_grad_enabled():
            raise RuntimeError("A layer with float16-stored weights ran with gradients enabled: it must be "
                               "frozen and run under torch.no_grad().")
        for param in params:
            self.stored.append((param, param.data))
            param.data = param.data.to(x.dtype)

    def after(self, layer: nn.Module, args: tp.Tuple[tp.Any, ...], output: tp.Any) -> None:
        for param, stored in self.stored:
            param.data = stored
        self.stored = []


def store_weights_in(layers: tp.Iterable[nn.Module], dtype: torch.dtype) -> None:
    """Store the weights of each frozen layer in `dtype`, in place (see the module docstring).

    Args:
        layers: e.g. a `StreamingTransformer`'s `layers`; each is called as `layer(x, ...)`.
        dtype (torch.dtype): float16, or float32 to undo.
    """
    for layer in layers:
        if not hasattr(layer, '_half_storage_hooks'):
            hooks = _CopiesWhileRunning()
            layer.register_forward_pre_hook(hooks.before)
            layer.register_forward_hook(hooks.after, always_call=True)
            layer._half_storage_hooks = hooks
        layer.to(dtype)
