"""The new transformer layers: the base's architecture, zero-initialised residual branches.

A layer configuration is a plain dict of `StreamingTransformer` keyword arguments (JSON-friendly,
so checkpoints can carry it). `base_layer_config` reads it off a built base transformer, which
works for any `LMModel`, with or without the Hydra config it was built from.
"""
import typing as tp

import torch
from torch import nn
import torch.nn.functional as F

from audiocraft.models.lm import init_layer
from audiocraft.modules.activations import get_activation_fn
from audiocraft.modules.transformer import LayerScale, StreamingTransformer

# Initial LayerScale value for new layers when the base uses LayerScale (AudioCraft's default).
DEFAULT_LAYER_SCALE = 1e-4

_ACTIVATION_NAMES = {F.relu: 'relu', F.gelu: 'gelu'}


def _activation_name(activation: tp.Any) -> str:
    if activation in _ACTIVATION_NAMES:
        return _ACTIVATION_NAMES[activation]
    name = type(activation).__name__.lower()
    if name in ('reglu', 'geglu', 'swiglu'):
        return name
    raise ValueError(f"Cannot read the base's activation {activation!r}: "
                     "pass `activation='gelu'` (or relu, reglu, geglu, swiglu) as a layer override.")


def _out_proj(attention: nn.Module) -> nn.Linear:
    """Output projection of a `StreamingMultiheadAttention`, custom or torch implementation."""
    return attention.out_proj if attention.custom else attention.mha.out_proj


def base_layer_config(transformer: StreamingTransformer) -> tp.Dict[str, tp.Any]:
    """`StreamingTransformer` kwargs that rebuild the layers of `transformer`.

    The positional scheme is adapted for layers stacked on top: a sinusoidal embedding is added
    once at the bottom of the base, so the new layers get `positional_scale=0` (no second
    embedding); rotary embeddings live in every layer, so new layers keep them. `norm_first`
    is the base's as read; `resolve_layer_config` makes the new layers pre-norm whatever it is.
    """
    layer = transformer.layers[0]
    attention = layer.self_attn
    cross = layer.cross_attention
    uses_rope = transformer.rope is not None
    return {
        'd_model': layer.linear1.in_features,
        'num_heads': attention.num_heads,
        'dim_feedforward': layer.linear1.out_features,
        'dropout': layer.dropout1.p,
        'attention_dropout': attention.dropout,
        'bias_ff': layer.linear1.bias is not None,
        'bias_attn': _out_proj(attention).bias is not None,
        'causal': attention.causal,
        'past_context': attention.past_context,
        'custom': attention.custom,
        'memory_efficient': attention.memory_efficient,
        'attention_as_float32': attention.attention_as_float32,
        'qk_layer_norm': attention.qk_layer_norm,
        'qk_layer_norm_cross': cross is not None and cross.qk_layer_norm,
        'kv_repeat': attention.kv_repeat,
        'cross_attention': cross is not None,
        'layer_scale': DEFAULT_LAYER_SCALE if isinstance(layer.layer_scale_1, LayerScale) else None,
        'norm': 'layer_norm',
        'norm_first': layer.norm_first,
        'activation': _activation_name(layer.activation),
        'positional_embedding': 'rope' if uses_rope else 'sin',
        'positional_scale': transformer.positional_scale if uses_rope else 0.0,
        'max_period': transformer.max_period,
        'xpos': uses_rope and transformer.rope.xpos is not None,
        'checkpointing': transformer.checkpointing,
    }


def resolve_layer_config(base_config: tp.Dict[str, tp.Any],
                         overrides: tp.Dict[str, tp.Any]) -> tp.Dict[str, tp.Any]:
    """Apply user overrides to the base layer config, with clear errors for what cannot work.

    The new layers are always pre-norm (`norm_first=True`), over a post-norm base too: a pre-norm
    layer whose residual branches end in zeros is the identity whatever sits below it, while a
    post-norm layer normalises its output and so cannot start as the identity.
    """
    unknown = sorted(set(overrides) - set(base_config))
    if unknown:
        raise ValueError(f"Unknown layer override(s) {unknown}. Valid keys: {sorted(base_config)}.")
    if not overrides.get('norm_first', True):
        raise ValueError("norm_first=False is refused: the new layers are always pre-norm, because a post-norm "
                         "layer normalises its output and so cannot start as the identity (step 0 would not "
                         "equal the base). Pre-norm new layers work on post-norm bases too: leave norm_first unset.")
    config = {**base_config, **overrides, 'norm_first': True}
    if config['d_model'] != base_config['d_model']:
        raise ValueError(f"d_model={config['d_model']} does not fit the base: the new layers sit in the "
                         f"base's residual stream, so d_model must stay {base_config['d_model']}.")
    if config['num_heads'] <= 0 or config['d_model'] % config['num_heads']:
        raise ValueError(f"num_heads={config['num_heads']} does not divide d_model={config['d_model']}: "
                         "choose a divisor of d_model.")
    if config['cross_attention'] and not base_config['cross_attention']:
        raise ValueError("cross_attention=True needs a base that fuses conditions by cross-attention; "
                         "this base has no cross-attention source.")
    if config['positional_embedding'] in ('rope', 'sin_rope') and not (config['custom'] or config['memory_efficient']):
        raise ValueError("Rotary embeddings need AudioCraft's custom attention: pass custom=True.")
    return config


class BranchScale(nn.Module):
    """Scales one residual branch of a new layer by the extension strength.

    Replaces the layer's `layer_scale_*` module and keeps it (as `layer_scale`) when it is a
    `LayerScale`; an `nn.Identity` is dropped, so the state dict matches a stock layer's.
    """
    def __init__(self, layer_scale: nn.Module):
        super().__init__()
        self.layer_scale = layer_scale if isinstance(layer_scale, LayerScale) else None
        self.scale = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer_scale is not None:
            x = self.layer_scale(x)
        return x if self.scale == 1.0 else x * self.scale


def residual_branch_outputs(layer: nn.Module) -> tp.List[nn.Linear]:
    """The linears that end each residual branch of a layer (attention, cross-attention, FFN)."""
    linears = [_out_proj(layer.self_attn), layer.linear2]
    if layer.cross_attention is not None:
        linears.append(_out_proj(layer.cross_attention))
    return linears


def build_extension(config: tp.Dict[str, tp.Any], num_layers: int, first_depth: int,
                    device: tp.Any = None, dtype: tp.Optional[torch.dtype] = None) -> StreamingTransformer:
    """`num_layers` new layers that start as the identity.

    Weights follow MusicGen's init (truncated gaussian, depth-scaled as if the layers were layers
    `first_depth + 1 ...` of the base); the linears ending each residual branch start at zero.
    """
    kwargs = dict(config)
    activation = get_activation_fn(kwargs.pop('activation'))
    extension = StreamingTransformer(num_layers=num_layers, activation=activation,
                                     device=device, dtype=dtype, **kwargs)
    for index, layer in enumerate(extension.layers):
        layer.apply(lambda module: init_layer(module, 'gaussian', init_depth=first_depth + index + 1,
                                              zero_bias_init=True))
        for linear in residual_branch_outputs(layer):
            nn.init.zeros_(linear.weight)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
        layer.layer_scale_1 = BranchScale(layer.layer_scale_1)
        layer.layer_scale_2 = BranchScale(layer.layer_scale_2)
        if layer.cross_attention is not None:
            layer.layer_scale_cross = BranchScale(layer.layer_scale_cross)
    return extension

