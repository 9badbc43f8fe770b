"""ExtendedLMModel: a frozen MusicGen `LMModel` with N new transformer layers on top.

Data flow of one forward pass (see docs/ARCHITECTURE.md)::

    codes [B, K, S] --frozen emb--> x --frozen fuser(conditions)--> x, cross_src
      --frozen base StreamingTransformer (eval, no grad)--> h
      --new StreamingTransformer layers (trainable, zero-initialised residual branches)--> h'
      --frozen out_norm, frozen per-codebook linears--> logits [B, K, S, card]

`ExtendedLMModel` is an `LMModel`: it adopts the base's modules (no copy) and only swaps its
`transformer` for `FrozenBaseWithExtension`, so `LMModel.forward`, `compute_predictions` and
`generate` (with the KV cache of every layer) are AudioCraft's own, unchanged.

The base's own logits come out of the same forward (`compute_predictions_with_base`): the
transformer returns `cat([h', h])` along the batch, so AudioCraft's heads and pattern code score
both, at the cost of the output heads alone (no second base pass).
"""
from contextlib import contextmanager
import logging
from pathlib import Path
import typing as tp

import torch
from torch import nn

from audiocraft.models.lm import LMModel, LMOutput
from audiocraft.modules.streaming import StreamingModule
from audiocraft.modules.transformer import StreamingTransformer

from ..io.errors import IntegrityError
from .audiocraft_internals import adopt_fsdp_slot, is_streaming
from .feature_cache import BaseFeatureCache
from .half_storage import check_storage_dtype, store_weights_in
from .extension_config import ExtensionConfig
from .layers import BranchScale, base_layer_config, build_extension, resolve_layer_config

logger = logging.getLogger(__name__)

# Plain attributes of `LMModel` (not modules) that an `ExtendedLMModel` shares with its base.
_LM_ATTRIBUTES = ('cfg_coef', 'card', 'n_q', 'dim', 'pattern_provider', 'two_step_cfg')


class FrozenBaseWithExtension(nn.Module):
    """The base `StreamingTransformer`, run frozen, followed by the new layers.

    Args:
        base (StreamingTransformer): the base LM's transformer; always in eval mode, run under
            `torch.no_grad()` so none of its activations is kept for backward.
        extension (StreamingTransformer): the new layers, trained.

    `feature_cache` (a `BaseFeatureCache`, None by default) replays stored base outputs in full
    sequence passes (training, validation); streaming generation always runs the base.
    `with_base_output` (False by default) makes the output `cat([h', h])` [2B, S, D]: the
    extended and the base's hidden states, the latter without gradient.

    `attached` holds other extensions of the same base by name (inference only); `routes` (None by
    default) names, per batch item, the extension its hidden state goes through (`OWN` for
    `extension`, None for none: the base's h): the base runs once for the whole batch.
    """
    OWN = 'own'  # the name `routes` gives `extension`

    def __init__(self, base: StreamingTransformer, extension: StreamingTransformer):
        super().__init__()
        self.base = base
        self.extension = extension
        self.attached = nn.ModuleDict()
        self.routes: tp.Optional[tp.List[tp.Optional[str]]] = None
        self.feature_cache: tp.Optional[BaseFeatureCache] = None
        self.with_base_output = False

    def forward(self, x: torch.Tensor, cross_attention_src: tp.Optional[torch.Tensor] = None,
                src_mask: tp.Optional[torch.Tensor] = None) -> torch.Tensor:
        """Map `x` [B, S, D] (embedded, fused input) to `h'` [B, S, D]."""
        with torch.no_grad():
            if self.feature_cache is not None and src_mask is None and not is_streaming(self.base):
                hidden = self.feature_cache.base_output(self.base, x, cross_attention_src)  # [B, S, D]
            else:
                hidden = self.base(x, cross_attention_src=cross_attention_src, src_mask=src_mask)
        if self.routes is not None:
            if self.with_base_output:
                raise RuntimeError("routes and with_base_output cannot be combined.")
            return self._routed(hidden, cross_attention_src)
        extended = _run_extension(self.extension, hidden, cross_attention_src)  # [B, S, D]
        if self.with_base_output:
            return torch.cat([extended, hidden], dim=0)  # [2B, S, D]
        return extended

    def _routed(self, hidden: torch.Tensor, cross_attention_src: tp.Optional[torch.Tensor]) -> torch.Tensor:
        """Each item of `hidden` [B, S, D] through the extension `routes` names for it -> [B, S, D]."""
        routes = list(self.routes or [])
        if not routes or hidden.shape[0] % len(routes):
            raise RuntimeError(f"{len(routes)} routes for a batch of {hidden.shape[0]}.")
        routes = routes * (hidden.shape[0] // len(routes))  # classifier-free guidance repeats the batch
        output = hidden.clone()
        for name in dict.fromkeys(routes):
            if name is None:
                continue
            index = torch.tensor([i for i, route in enumerate(routes) if route == name], device=hidden.device)
            extension = self.extension if name == self.OWN else self.attached[name]
            cross = None if cross_attention_src is None else cross_attention_src.index_select(0, index)
            output.index_copy_(0, index, _run_extension(extension, hidden.index_select(0, index), cross))
        return output

    def train(self, mode: bool = True) -> 'FrozenBaseWithExtension':
        super().train(mode)
        self.base.eval()
        return self


def _run_extension(extension: StreamingTransformer, hidden: torch.Tensor,
                   cross_attention_src: tp.Optional[torch.Tensor]) -> torch.Tensor:
    """`extension` on `hidden` [B, S, D], with the conditions when its layers cross-attend."""
    cross = cross_attention_src if extension.layers[0].cross_attention is not None else None
    return extension(hidden, cross_attention_src=cross)


def _set_branch_scale(extension: nn.Module, scale: float) -> None:
    for module in extension.modules():
        if isinstance(module, BranchScale):
            module.scale = scale


def _load_checked(extension: nn.Module, state: tp.Mapping[str, torch.Tensor], source: str) -> None:
    """`extension.load_state_dict(state)`, or an `IntegrityError` naming the missing, unexpected or
    misshapen keys of `source`."""
    expected = extension.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    misshapen = sorted(f'{key} {tuple(state[key].shape)} (expected {tuple(value.shape)})'
                       for key, value in expected.items() if key in state and state[key].shape != value.shape)
    problems = [f'{what}: {", ".join(keys[:5])}{" ..." if len(keys) > 5 else ""}'
                for what, keys in (('missing', missing), ('unexpected', unexpected), ('wrong shape', misshapen))
                if keys]
    if problems:
        raise IntegrityError(f"The new-layer weights of {source} do not fit its extension config "
                             f"({'; '.join(problems)}): the file is damaged or was edited; use another copy.")
    extension.load_state_dict(state)


class ExtendedLMModel(LMModel):
    """A frozen `LMModel` with `num_additional_layers` new trainable layers on top.

    The base's modules are adopted, not copied, and frozen in place (`requires_grad=False`).
    At initialisation the logits equal the base's exactly: every residual branch of the new
    layers ends in a zero-initialised linear. `cfg_dropout` and `att_dropout` still follow
    `train()`/`eval()` so that classifier-free guidance is trained; the base transformer
    always runs in eval mode.

    Args:
        base_lm (LMModel): pretrained MusicGen language model, pre-norm (as all released ones) or
            post-norm (as AudioCraft's `debug` model); the new layers are pre-norm either way.
        num_additional_layers (int): number of new layers N, a positive int.
        extension_scale (float): strength of the new layers' residual branches; 0.0 gives the
            base's logits exactly, 1.0 the extension as trained.
        **layer_overrides: `StreamingTransformer` arguments that differ from the base's layers
            (e.g. `num_heads`, `dim_feedforward`, `dropout`); see `base_layer_config`.
    """
    def __init__(self, base_lm: LMModel, num_additional_layers: int = 12,
                 extension_scale: float = 1.0, **layer_overrides: tp.Any):
        if isinstance(base_lm, ExtendedLMModel):
            raise TypeError("base_lm is already an ExtendedLMModel: to keep extending it, export it first "
                            "(`export_audiocraft`) and extend the exported model.")
        if not isinstance(base_lm, LMModel):
            raise TypeError(f"base_lm must be an audiocraft LMModel, got {type(base_lm).__name__}.")
        if type(base_lm) is not LMModel:
            raise TypeError(f"{type(base_lm).__name__} bases are not supported: only MusicGen's LMModel.")
        # Validate every argument before touching the base, so a refused call leaves it as it was.
        requested = ExtensionConfig(num_additional_layers, extension_scale, layer_overrides)
        base_transformer = base_lm.transformer
        layer_config = resolve_layer_config(base_layer_config(base_transformer), dict(requested.layer_config))
        StreamingModule.__init__(self)  # not LMModel.__init__: the modules come from the base.
        base_lm.requires_grad_(False)
        for name in _LM_ATTRIBUTES:
            setattr(self, name, getattr(base_lm, name))
        for name, module in base_lm.named_children():
            if name != 'transformer':
                self.add_module(name, module)
        self.out_norm = base_lm.out_norm
        adopt_fsdp_slot(self)
        if hasattr(base_lm, 'cfg'):
            self.cfg = base_lm.cfg

        self.num_base_layers = len(base_transformer.layers)
        reference = next(base_transformer.parameters())
        extension = build_extension(layer_config, requested.num_additional_layers, self.num_base_layers,
                                    device=reference.device, dtype=reference.dtype)
        self.transformer = FrozenBaseWithExtension(base_transformer, extension)
        self._extension_config = ExtensionConfig(requested.num_additional_layers, requested.extension_scale,
                                                 layer_config)
        self._attached_configs: tp.Dict[str, ExtensionConfig] = {}
        _set_branch_scale(extension, requested.extension_scale)
        self.train(base_lm.training)

    @classmethod
    def from_config(cls, base_lm: LMModel, config: ExtensionConfig) -> 'ExtendedLMModel':
        """The extended model `config` describes (e.g. `extension_config` of a trained one) on `base_lm`."""
        return cls(base_lm, config.num_additional_layers, config.extension_scale, **config.layer_config)

    @property
    def extension(self) -> StreamingTransformer:
        """The new layers (the only trainable part)."""
        return self.transformer.extension

    @property
    def base_transformer(self) -> StreamingTransformer:
        return self.transformer.base

    @property
    def extension_config(self) -> ExtensionConfig:
        """What rebuilds the new layers on the same base (stored in every file and checkpoint, `to_dict`)."""
        return self._extension_config

    @property
    def num_additional_layers(self) -> int:
        return self._extension_config.num_additional_layers

    @property
    def layer_config(self) -> tp.Dict[str, tp.Any]:
        """The new layers' `StreamingTransformer` arguments, resolved against the base."""
        return dict(self._extension_config.layer_config)

    @property
    def extension_scale(self) -> float:
        """Strength of the new layers' residual branches (0.0 = base model, 1.0 = as trained)."""
        return self._extension_config.extension_scale

    @extension_scale.setter
    def extension_scale(self, scale: float) -> None:
        self._extension_config = self._extension_config.with_scale(scale)
        _set_branch_scale(self.extension, self._extension_config.extension_scale)

    @contextmanager
    def scaled(self, scale: float) -> tp.Iterator[None]:
        """Within it, `extension_scale` is `scale` (0.0: the frozen base exactly); restored after."""
        previous = self.extension_scale
        self.extension_scale = scale
        try:
            yield
        finally:
            self.extension_scale = previous

    @property
    def base_dtype(self) -> torch.dtype:
        """The dtype the frozen base transformer's weights are stored in (see `store_base_in`)."""
        return next(self.base_transformer.parameters()).dtype

    def store_base_in(self, dtype: tp.Union[torch.dtype, str]) -> None:
        """Store the frozen base transformer's weights in `dtype`, in place: float16 halves their memory.

        The outputs stay those of float32 weights holding the same (float16-rounded) values, the
        computation still runs in the activations' dtype (see `half_storage`); `weights_hash`
        is unchanged. float32 undoes it (the rounding stays).
        """
        store_weights_in(self.base_transformer.layers, check_storage_dtype(dtype))

    def use_feature_cache(self, root: tp.Optional[tp.Union[str, Path]],
                          max_bytes: tp.Optional[int] = None) -> tp.Optional[BaseFeatureCache]:
        """Replay the frozen base's outputs from `root` (see `feature_cache`); None turns it off."""
        cache = None if root is None else BaseFeatureCache(root, self.base_transformer, max_bytes)
        self.transformer.feature_cache = cache
        return cache

    def compute_predictions_with_base(self, codes: torch.Tensor, conditions: tp.List[tp.Any],
                                      condition_tensors: tp.Optional[tp.Dict[str, tp.Any]] = None,
                                      stage: int = -1, keep_only_valid_steps: bool = True
                                      ) -> tp.Tuple[LMOutput, torch.Tensor]:
        """`compute_predictions`, plus the frozen base's logits from the same forward.

        The base transformer runs once; its output h goes through the new layers and, beside
        them, straight to the frozen out_norm and heads, so the base's logits cost the heads only.
        With `extension_scale=0` or at initialisation both logits are equal.

        Args:
            codes, conditions, condition_tensors, stage, keep_only_valid_steps: as
                `LMModel.compute_predictions` (conditions are dropped out and encoded once).
        Returns:
            (LMOutput of the extended model (logits [B, K, T, card], mask [B, K, T]),
             base logits [B, K, T, card], detached).
        """
        if is_streaming(self):
            raise RuntimeError("compute_predictions_with_base scores full sequences; it cannot run while "
                               "streaming (generation).")
        batch = codes.shape[0]
        self.transformer.with_base_output = True
        try:
            output = self.compute_predictions(codes, conditions, condition_tensors, stage=stage,
                                              keep_only_valid_steps=keep_only_valid_steps)
        finally:
            self.transformer.with_base_output = False
        assert output.logits.shape[0] == 2 * batch, output.logits.shape
        extended, base = output.logits[:batch], output.logits[batch:]  # [B, K, T, card] each
        return LMOutput(extended, output.mask), base.detach()

    def trainable_parameters(self) -> tp.List[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_counts(self) -> tp.Tuple[int, int]:
        """(trainable, total) parameter counts."""
        trainable = sum(p.numel() for p in self.trainable_parameters())
        return trainable, sum(p.numel() for p in self.parameters())

    def print_trainable_parameters(self) -> str:
        """Log and return e.g. 'trainable params: 1,024 || all params: 8,192 || trainable%: 12.5000'."""
        trainable, total = self.parameter_counts()
        line = (f"trainable params: {trainable:,} || all params: {total:,} || "
                f"trainable%: {100 * trainable / total:.4f}")
        print(line)
        return line

    def base_state_dict(self) -> tp.Dict[str, torch.Tensor]:
        """State dict of the frozen base, with the keys of the original `LMModel`."""
        prefix = 'transformer.base.'
        return {('transformer.' + key[len(prefix):] if key.startswith(prefix) else key): value
                for key, value in self.state_dict().items()
                if not key.startswith(('transformer.extension.', 'transformer.attached.'))}

    def extension_state_dict(self) -> tp.Dict[str, torch.Tensor]:
        """State dict of the new layers only (what training changes)."""
        return self.extension.state_dict()

    def load_extension_state_dict(self, state: tp.Mapping[str, torch.Tensor], source: str = 'the state dict') -> None:
        """Load weights saved by `extension_state_dict`; the base is untouched.

        Raises `IntegrityError` naming the missing, unexpected or misshapen keys of `source`.
        """
        _load_checked(self.extension, state, source)

    def attach_extension(self, name: str, config: ExtensionConfig, state: tp.Mapping[str, torch.Tensor],
                         source: str) -> None:
        """Another extension of this base beside the own one, for inference: its layers built from its
        `config`, its weights from `state` (checked as `load_extension_state_dict` checks), frozen.
        The caller checks that it was trained on this base (`ExtendedMusicGen.attach`)."""
        try:
            layer_config = resolve_layer_config(base_layer_config(self.base_transformer), dict(config.layer_config))
        except (TypeError, ValueError) as error:
            raise IntegrityError(f"{source} has an extension config this base cannot build ({error}).") from None
        reference = next(self.extension.parameters())
        extension = build_extension(layer_config, config.num_additional_layers, self.num_base_layers,
                                    device=reference.device, dtype=reference.dtype)
        _load_checked(extension, state, source)
        _set_branch_scale(extension, config.extension_scale)
        extension.requires_grad_(False)
        self.transformer.attached[name] = extension.eval()
        self._attached_configs[name] = config

    def detach_extension(self, name: str) -> None:
        """Remove the attached extension `name`."""
        del self.transformer.attached[name]
        del self._attached_configs[name]

    def set_attached_scale(self, name: str, scale: float) -> None:
        """`extension_scale` of the attached extension `name`."""
        config = self._attached_configs[name].with_scale(scale)
        _set_branch_scale(self.transformer.attached[name], config.extension_scale)
        self._attached_configs[name] = config

    @contextmanager
    def routed(self, routes: tp.Sequence[tp.Optional[str]]) -> tp.Iterator[None]:
        """Within it, batch item i goes through the extension named `routes[i]` (`FrozenBaseWithExtension.OWN`
        for the own one, an attached name, or None for the base alone); the base runs once for all."""
        self.transformer.routes = list(routes)
        try:
            yield
        finally:
            self.transformer.routes = None
