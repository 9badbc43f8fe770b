"""An extended MusicGen as Hugging Face transformers' `MusicgenForConditionalGeneration`.

With the new layers' architecture equal to the base layers' (the default), base + N new layers is
one stock decoder of L + N pre-norm layers with cross-attention (`packages.merged_lm_package`): new
layer i becomes decoder layer L + i, between the base's last layer and its output norm, and
`extension_scale` is folded into the linears that end each residual branch. The names follow
transformers' own MusicGen converter (`convert_musicgen_transformers.py`)::

    emb.K                                   -> decoder.model.decoder.embed_tokens.K
    transformer.layers.I.self_attn          -> decoder.model.decoder.layers.I.self_attn (in_proj split
                                               into q_proj, k_proj, v_proj; out_proj)
    transformer.layers.I.cross_attention    -> ...layers.I.encoder_attn
    norm1, norm_cross, norm2                -> self_attn_layer_norm, encoder_attn_layer_norm, final_layer_norm
    linear1, linear2                        -> fc1, fc2
    out_norm                                -> decoder.model.decoder.layer_norm
    linears.K                               -> decoder.lm_heads.K
    conditioners.description.output_proj    -> enc_to_dec_proj

The text encoder and tokenizer are the base's T5 conditioner's; the compression model becomes an
`EncodecModel`, module by module (SEANet convolutions, LSTMs, RVQ codebooks), and its decoding is
checked against AudioCraft's before anything is written. Whatever transformers cannot represent
is refused with `TransformersExportError`, naming the problem and the fix (docs/ERRORS.md).
"""
import copy
from dataclasses import dataclass
import math
from pathlib import Path
import typing as tp

import torch
from torch import nn
from transformers import (EncodecConfig, EncodecFeatureExtractor, EncodecModel, GenerationConfig, MusicgenConfig,
                          MusicgenDecoderConfig, MusicgenForConditionalGeneration, MusicgenProcessor)
from transformers.initialization import no_init_weights

from audiocraft.models.encodec import (CompressionModel, EncodecModel as AudiocraftEncodec,
                                       HFEncodecCompressionModel, InterleaveStereoCompressionModel)
from audiocraft.modules.codebooks_patterns import DelayedPatternProvider
from audiocraft.modules.conditioners import T5Conditioner
from audiocraft.modules.conv import StreamableConv1d, StreamableConvTranspose1d
from audiocraft.modules.lstm import StreamableLSTM
from audiocraft.modules.seanet import SEANetDecoder, SEANetEncoder, SEANetResnetBlock
from audiocraft.quantization.vq import ResidualVectorQuantizer

from .. import __version__
from ..io.atomic import atomic_directory
from ..io.destinations import check_destination
from ..io.errors import CheckpointError
from .audiocraft_internals import euclidean_codebook
from .extended_lm import ExtendedLMModel
from .extended_musicgen import ExtendedMusicGen
from .layers import base_layer_config, residual_branch_outputs
from .packages import generation_defaults, merged_lm_package

PathLike = tp.Union[str, Path]

# The export that always works, offered in every fix.
_OTHERWISE = "or export with --format extended (ExtendedMusicGen.save) instead"
_INSTEAD = "Export with --format extended (ExtendedMusicGen.save) instead."
# AudioCraft layer settings transformers' `MusicgenDecoderLayer` has, with the value it needs.
_LAYER_REQUIREMENTS = {
    'bias_ff': (False, 'biases in the feed-forward linears (bias_ff)'),
    'bias_attn': (False, 'biases in the attention projections (bias_attn)'),
    'causal': (True, 'non-causal self-attention'),
    'past_context': (None, 'a limited attention context (past_context)'),
    'qk_layer_norm': (False, 'query/key layer norms (qk_layer_norm)'),
    'qk_layer_norm_cross': (False, 'query/key layer norms in cross-attention (qk_layer_norm_cross)'),
    'kv_repeat': (1, 'grouped keys and values (kv_repeat)'),
    'cross_attention': (True, 'no cross-attention (text must reach every layer by cross-attention)'),
    'layer_scale': (None, 'LayerScale (layer_scale)'),
    'positional_embedding': ('sin', 'rotary positional embeddings (positional_embedding)'),
}
_ACTIVATIONS = ('gelu', 'relu')  # AudioCraft names that transformers' ACT2FN computes the same way
_DECODER_FILES = ('config.json', 'generation_config.json', 'model.safetensors')


class TransformersExportError(CheckpointError):
    """A model that transformers' `MusicgenForConditionalGeneration` cannot represent exactly."""


@dataclass
class TransformersExport:
    """What `export_transformers` writes, in memory.

    Attributes:
        model: `MusicgenForConditionalGeneration` with the L + N layer decoder, in eval mode.
        processor: `MusicgenProcessor` (the base's T5 tokenizer and an `EncodecFeatureExtractor`).
        card (str): the model card (README.md).
    """
    model: MusicgenForConditionalGeneration
    processor: MusicgenProcessor
    card: str


def _refuse(problem: str, fix: str) -> tp.NoReturn:
    raise TransformersExportError(f"{problem}: transformers' MusicgenForConditionalGeneration cannot represent "
                                  f"it. {fix}")


# --- checks --------------------------------------------------------------------------------------

def _text_conditioner(lm: ExtendedLMModel) -> T5Conditioner:
    """The base's T5 description conditioner, the only conditioning transformers' MusicGen has."""
    conditioners = dict(lm.condition_provider.conditioners)
    others = sorted(set(conditioners) - {'description'})
    if others:
        melody = any('chroma' in type(conditioners[name]).__name__.lower() for name in others)
        kinds = ', '.join(f"'{name}' ({type(conditioners[name]).__name__}"
                          f"{', a melody' if 'chroma' in type(conditioners[name]).__name__.lower() else ''})"
                          for name in others)
        _refuse(f"The base conditions on {kinds}",
                ("transformers' melody model, MusicgenMelodyForConditionalGeneration, is another architecture, which "
                 "this export does not write. " if melody else "") +
                f"Export a model extended from a text-only base (e.g. facebook/musicgen-small), {_OTHERWISE}.")
    conditioner = conditioners.get('description')
    if conditioner is None:
        _refuse("The base has no text conditioner ('description')",
                f"Export a model extended from a text-to-music base (e.g. facebook/musicgen-small), {_OTHERWISE}.")
    if not isinstance(conditioner, T5Conditioner):
        kind = 'a look-up table (LUTConditioner, model: lut)' if 'LUT' in type(conditioner).__name__ \
            else type(conditioner).__name__
        _refuse(f"The base's text conditioner 'description' is {kind}, not a T5 encoder",
                f"It encodes text with T5 only: export a model extended from a base with a T5 text conditioner (every "
                f"released MusicGen, e.g. facebook/musicgen-small), {_OTHERWISE}.")
    if conditioner.normalize_text:
        _refuse("The base's T5 conditioner normalises text (normalize_text=True: lemmas, no stop words)",
                f"Its tokenizer reads text as typed. {_INSTEAD}")
    fuser = lm.fuser
    fused = {op: list(names) for op, names in fuser.fuse2cond.items() if names}
    if fused != {'cross': ['description']} or fuser.cross_attention_pos_emb:
        embedding = " with a positional embedding on the cross-attention source" \
            if fuser.cross_attention_pos_emb else ""
        _refuse(f"The base fuses its conditions as {fused}{embedding}",
                f"Only the description, by cross-attention, is supported. {_INSTEAD}")
    text_width = conditioner.t5.config.d_model
    if text_width == lm.dim:
        _refuse(f"The T5 encoder is as wide as the decoder ({lm.dim}), so transformers would apply no projection where "
                "AudioCraft applies the conditioner's output_proj",
                f"Use a base whose T5 width differs from its LM's (all released MusicGens), {_OTHERWISE}.")
    return conditioner


def _check_layers(lm: ExtendedLMModel) -> tp.Dict[str, tp.Any]:
    """The base layers' config, checked against what `MusicgenDecoderLayer` computes."""
    config = base_layer_config(lm.base_transformer)
    if lm.out_norm is None or not config['norm_first']:
        _refuse("The base is post-norm (norm_first=False, like AudioCraft's debug model)",
                f"Its decoder layers are pre-norm only: extend a pre-norm base (every released MusicGen), "
                f"{_OTHERWISE}.")
    unsupported = [what for key, (needed, what) in _LAYER_REQUIREMENTS.items() if config[key] != needed]
    if config['activation'] not in _ACTIVATIONS:
        unsupported.append(f"the {config['activation']} activation")
    transformer = lm.base_transformer
    if transformer.positional_scale != 1.0 or transformer.max_period != 10_000:
        unsupported.append(f"a sinusoidal embedding scaled by {transformer.positional_scale} with max_period "
                           f"{transformer.max_period} (transformers adds it at scale 1 with max_period 10000)")
    norms = [lm.out_norm] + [getattr(layer, name) for layer in transformer.layers
                             for name in ('norm1', 'norm2', 'norm_cross')]
    if any(not isinstance(norm, nn.LayerNorm) or norm.eps != 1e-5 or norm.bias is None for norm in norms):
        unsupported.append("norms other than LayerNorm(eps=1e-5) with a bias")
    if any(linear.bias is not None for linear in lm.linears):
        unsupported.append("biases in the output heads (bias_proj)")
    if unsupported:
        _refuse(f"The base's layers have {'; '.join(unsupported)}",
                f"Its decoder layer is MusicGen's released one (pre-norm, no biases, GELU or ReLU, sinusoidal "
                f"positions): extend such a base, {_OTHERWISE}.")
    differing = sorted(key for key in config if key != 'checkpointing' and config[key] != lm.layer_config[key])
    if differing:
        _refuse(f"The new layers differ from the base layers in {differing} (layer overrides)",
                "Its decoder has one layer architecture for all L + N layers: train new layers without overrides, "
                "or export with --format extended (ExtendedMusicGen.save) instead.")
    return config


def _check_pattern(lm: ExtendedLMModel, channels: int) -> None:
    """transformers generates with the delay pattern: codebook k of each channel delayed by k steps."""
    provider = lm.pattern_provider
    expected = [k // channels for k in range(lm.n_q)]
    if not isinstance(provider, DelayedPatternProvider) or list(provider.delays) != expected \
            or provider.flatten_first or provider.empty_initial:
        found = (f"delay with delays {list(provider.delays)}, flatten_first={provider.flatten_first}, "
                 f"empty_initial={provider.empty_initial}" if isinstance(provider, DelayedPatternProvider)
                 else type(provider).__name__)
        _refuse(f"The base's codebook pattern is {found}, not the delay pattern {expected}",
                f"Its generate() builds the delay pattern only: extend a base trained with it (every released "
                f"MusicGen), {_OTHERWISE}.")


def _check_folding(lm: ExtendedLMModel) -> None:
    """Folding `extension_scale` into the branch-ending linears must give the scaled weights exactly.

    s * (W x) = (s W) x holds for every s; in float32 it holds to rounding unless a weight
    overflows to infinity or a non-zero weight underflows to zero (or to a subnormal, which has lost
    precision).
    """
    scale = lm.extension_scale
    if scale == 1.0 or scale == 0.0:
        return
    lost = total = 0
    for layer in lm.extension.layers:
        for linear in residual_branch_outputs(layer):
            for weight in (linear.weight, linear.bias):
                if weight is None:
                    continue
                value = weight.detach().float()
                folded = value * scale
                tiny = torch.finfo(torch.float32).tiny
                lost += int((~torch.isfinite(folded)).sum() + ((value != 0) & (folded.abs() < tiny)).sum())
                total += value.numel()
    if lost:
        raise TransformersExportError(
            f"extension_scale={scale} cannot be folded exactly into the new layers' output projections: "
            f"{lost} of {total} weights would overflow or lose their precision in float32 (transformers' layers have "
            "no scale of their own). Set model.extension_scale to a value nearer 1 (e.g. 1.0, as trained) before "
            "exporting.")


def _generation_config(model: ExtendedMusicGen, num_codebooks: int, channels: int) -> tp.Dict[str, tp.Any]:
    """`GenerationConfig` arguments from the model's `set_generation_params` defaults."""
    defaults = generation_defaults(model)
    if defaults['two_step_cfg']:
        raise TransformersExportError(
            "two_step_cfg=True (classifier-free guidance in two forward passes) has no equivalent in transformers' "
            "generate: call model.set_generation_params(two_step_cfg=False, duration=...) before exporting.")
    if defaults['cfg_coef'] < 1.0:
        raise TransformersExportError(
            f"cfg_coef={defaults['cfg_coef']} is below 1, where transformers' generate turns classifier-free guidance "
            "off instead of applying it: call model.set_generation_params(cfg_coef=...) with a value >= 1 before "
            "exporting.")
    card = model.lm.card
    frames = int(round(defaults['duration'] * model.frame_rate))
    config: tp.Dict[str, tp.Any] = {
        'decoder_start_token_id': card, 'pad_token_id': card, 'bos_token_id': card,
        'max_length': frames + num_codebooks // channels, 'guidance_scale': defaults['cfg_coef'],
        'do_sample': bool(defaults['use_sampling'])}
    if defaults['use_sampling']:
        # AudioCraft samples with top_p when it is set, else with top_k (0: no truncation).
        top_p = defaults['top_p']
        config.update(temperature=defaults['temperature'], top_k=0 if top_p > 0 else defaults['top_k'],
                      top_p=top_p if top_p > 0 else 1.0)
    return config


# --- the compression model ------------------------------------------------------------------------

def _copy_conv(source: nn.Module, target: nn.Module, where: str) -> None:
    """An AudioCraft streamable (transposed) convolution into transformers' EnCodec one."""
    transposed = isinstance(source, StreamableConvTranspose1d)
    inner = source.convtr if transposed else source.conv
    conv = inner.convtr if transposed else inner.conv
    if not isinstance(inner.norm, nn.Identity):
        raise TransformersExportError(
            f"The compression model's {where} uses {type(inner.norm).__name__} (norm: time_group_norm): the "
            f"EncodecModel written here has weight-normalised convolutions only. {_INSTEAD}")
    geometry = ('in_channels', 'out_channels', 'kernel_size', 'stride', 'dilation', 'groups')
    mismatch = [name for name in geometry if getattr(conv, name) != getattr(target.conv, name)]
    mismatch += [name for name in ('causal', 'pad_mode', 'trim_right_ratio')
                 if hasattr(target, name) and getattr(source, name) != getattr(target, name)]
    if mismatch:
        raise TransformersExportError(f"The compression model's {where} differs from transformers' EnCodec layer in "
                                      f"{mismatch}. {_INSTEAD}")
    with torch.no_grad():
        target.conv.weight = conv.weight.detach().float().clone()  # through weight_norm's right_inverse
        target.conv.bias.copy_(conv.bias.detach())


def _copy_seanet(source: tp.Sequence[nn.Module], target: tp.Sequence[nn.Module], where: str) -> None:
    """AudioCraft's SEANet modules into transformers' EnCodec modules, in order.

    An LSTM transformers has and AudioCraft does not (`lstm: 0`) gets zero weights: its output is
    then exactly zero and the layer, with its skip connection, the identity.
    """
    index = 0
    for position, module in enumerate(target):
        here = f"{where}.{position}"
        found = source[index] if index < len(source) else None
        if type(module).__name__ == 'EncodecLSTM':
            if isinstance(found, StreamableLSTM):
                if found.lstm.num_layers != module.lstm.num_layers or not found.skip:
                    raise TransformersExportError(f"The compression model's LSTM {here} has {found.lstm.num_layers} "
                                                  f"layers, where transformers' EncodecModel has one LSTM size.")
                module.lstm.load_state_dict(found.lstm.state_dict())
                index += 1
            else:
                for parameter in module.lstm.parameters():
                    nn.init.zeros_(parameter)
            continue
        if isinstance(module, nn.ELU):
            if not isinstance(found, nn.ELU) or found.alpha != module.alpha:
                raise TransformersExportError(f"The compression model has {found!r} at {here} where transformers' "
                                              f"EncodecModel has ELU(alpha=1.0).")
        elif type(module).__name__ in ('EncodecConv1d', 'EncodecConvTranspose1d'):
            wanted = StreamableConvTranspose1d if 'Transpose' in type(module).__name__ else StreamableConv1d
            if not isinstance(found, wanted):
                raise TransformersExportError(f"The compression model has {type(found).__name__} at {here} where "
                                              f"transformers' EncodecModel has a {type(module).__name__}.")
            _copy_conv(found, module, here)
        elif type(module).__name__ == 'EncodecResnetBlock':
            if not isinstance(found, SEANetResnetBlock):
                raise TransformersExportError(f"The compression model has {type(found).__name__} at {here} where "
                                              "transformers' EncodecModel has a residual block.")
            _copy_seanet(list(found.block), list(module.block), here + '.block')
            if isinstance(module.shortcut, nn.Identity) != isinstance(found.shortcut, nn.Identity):
                raise TransformersExportError(f"The compression model's residual block {here} has another skip "
                                              "connection than transformers' (true_skip).")
            if not isinstance(module.shortcut, nn.Identity):
                _copy_conv(found.shortcut, module.shortcut, here + '.shortcut')
        else:
            raise TransformersExportError(f"transformers' EnCodec layer {type(module).__name__} at {here} has no "
                                          "AudioCraft counterpart.")
        index += 1
    if index != len(source):
        extra = ', '.join(type(module).__name__ for module in source[index:])
        raise TransformersExportError(f"The compression model's {where} ends with {extra}, which transformers' "
                                      f"EncodecModel does not have (e.g. a final activation). "
                                      f"{_INSTEAD}")


def _encodec_config(codec: AudiocraftEncodec) -> tp.Dict[str, tp.Any]:
    """`EncodecConfig` arguments read off AudioCraft's built SEANet and RVQ (then checked layer by layer)."""
    encoder, decoder, quantizer = codec.encoder, codec.decoder, codec.quantizer
    if not isinstance(encoder, SEANetEncoder) or not isinstance(decoder, SEANetDecoder) \
            or not isinstance(quantizer, ResidualVectorQuantizer):
        raise TransformersExportError(
            f"The compression model is {type(encoder).__name__} + {type(quantizer).__name__} + "
            f"{type(decoder).__name__}, not EnCodec's SEANet + RVQ: transformers' EncodecModel cannot represent it. "
            f"{_INSTEAD}")
    if any(not isinstance(layer.project_in, nn.Identity) for layer in quantizer.vq.layers):
        raise TransformersExportError("The compression model's codebooks project their input (codebook_dim differs "
                                      "from the latent dimension): transformers' EncodecModel cannot represent it.")
    if quantizer.bins & (quantizer.bins - 1):
        raise TransformersExportError(f"The compression model has {quantizer.bins} codes per codebook: transformers' "
                                      "EncodecModel needs a power of 2.")
    blocks = [module for module in encoder.model if isinstance(module, SEANetResnetBlock)]
    if not blocks:
        raise TransformersExportError("The compression model has no residual blocks (n_residual_layers: 0): "
                                      f"transformers' EncodecModel always has them. {_INSTEAD}")
    first = blocks[0].block[1]
    transposed = next(module for module in decoder.model if isinstance(module, StreamableConvTranspose1d))
    lstms = {module.lstm.num_layers for seanet in (encoder, decoder)
             for module in seanet.model if isinstance(module, StreamableLSTM)}
    if len(lstms) > 1:
        raise TransformersExportError(f"The compression model's encoder and decoder LSTMs have {sorted(lstms)} "
                                      "layers: transformers' EncodecModel has one LSTM size.")
    dilation = blocks[1].block[1].conv.conv.dilation[0] if encoder.n_residual_layers > 1 else 2
    hop = int(math.prod(decoder.ratios))
    frame_rate = math.ceil(codec.sample_rate / hop)
    bandwidth = quantizer.total_codebooks * math.log2(quantizer.bins) * frame_rate / 1000
    return dict(
        target_bandwidths=[bandwidth], sampling_rate=codec.sample_rate, audio_channels=codec.channels,
        normalize=bool(codec.renormalize), chunk_length_s=None, overlap=None, hidden_size=encoder.dimension,
        num_filters=encoder.n_filters, num_residual_layers=encoder.n_residual_layers,
        upsampling_ratios=list(decoder.ratios), norm_type='weight_norm',
        kernel_size=encoder.model[0].conv.conv.kernel_size[0],
        last_kernel_size=encoder.model[-1].conv.conv.kernel_size[0],
        residual_kernel_size=first.conv.conv.kernel_size[0], dilation_growth_rate=dilation,
        use_causal_conv=bool(encoder.model[0].causal), pad_mode=encoder.model[0].pad_mode,
        compress=first.conv.conv.in_channels // first.conv.conv.out_channels,
        num_lstm_layers=max(lstms or {1}), trim_right_ratio=float(transposed.trim_right_ratio),
        codebook_size=quantizer.bins, codebook_dim=encoder.dimension,
        use_conv_shortcut=not isinstance(blocks[0].shortcut, nn.Identity))


def _audio_encoder(compression_model: CompressionModel, num_codebooks: int) -> tp.Any:
    """The compression model as transformers' `EncodecModel`, its decoding checked against AudioCraft's."""
    if isinstance(compression_model, HFEncodecCompressionModel):  # AudioCraft already runs transformers' EnCodec
        return copy.deepcopy(compression_model.model).float().cpu().eval()
    if not isinstance(compression_model, AudiocraftEncodec):
        raise TransformersExportError(
            f"The compression model is a {type(compression_model).__name__}: transformers' "
            f"MusicgenForConditionalGeneration decodes with EnCodec only. {_INSTEAD}")
    encodec = EncodecModel(EncodecConfig(**_encodec_config(compression_model))).eval()
    if encodec.config.num_quantizers != compression_model.quantizer.total_codebooks:
        raise TransformersExportError(f"The compression model's {compression_model.quantizer.total_codebooks} "
                                      "codebooks do not give transformers' EncodecModel a whole bandwidth.")
    _copy_seanet(list(compression_model.encoder.model), list(encodec.encoder.layers), 'encoder')
    _copy_seanet(list(compression_model.decoder.model), list(encodec.decoder.layers), 'decoder')
    with torch.no_grad():
        for source, target in zip(compression_model.quantizer.vq.layers, encodec.quantizer.layers):
            codebook = euclidean_codebook(source)
            for name in ('embed', 'embed_avg', 'cluster_size', 'inited'):
                getattr(target.codebook, name).copy_(getattr(codebook, name).detach().float())
    # The module-by-module mapping, checked end to end: the same codes give the same audio.
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(compression_model.cardinality, (1, num_codebooks, 8), generator=generator)  # [B, K, T]
    device = next(compression_model.parameters()).device
    with torch.no_grad():
        reference = compression_model.decode(codes.to(device)).float().cpu()  # [B, 1, samples]
        found = encodec.decode(codes[None], [None]).audio_values
    if found.shape != reference.shape or not torch.allclose(found, reference, atol=1e-4, rtol=1e-3):
        raise TransformersExportError("transformers' EncodecModel does not decode like the base's compression model "
                                      f"(largest difference {(found - reference).abs().max().item():.3g}): this "
                                      "compression model is not supported.")
    return encodec


# --- the whole model ------------------------------------------------------------------------------

def _decoder_state(state: tp.Mapping[str, torch.Tensor], dim: int) -> tp.Dict[str, torch.Tensor]:
    """A stock LMModel state dict (L + N layers) with `MusicgenForCausalLM`'s names."""
    modules = {'self_attn': 'self_attn', 'cross_attention': 'encoder_attn', 'linear1': 'fc1', 'linear2': 'fc2',
               'norm1': 'self_attn_layer_norm', 'norm_cross': 'encoder_attn_layer_norm', 'norm2': 'final_layer_norm'}
    renamed: tp.Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        value = value.detach().float().cpu()
        parts = key.split('.')
        if parts[0] == 'condition_provider':
            continue
        if parts[0] == 'emb':
            renamed[f'model.decoder.embed_tokens.{parts[1]}.{parts[2]}'] = value
        elif parts[0] == 'out_norm':
            renamed[f'model.decoder.layer_norm.{parts[1]}'] = value
        elif parts[0] == 'linears':
            renamed[f'lm_heads.{parts[1]}.{parts[2]}'] = value
        elif parts[:2] == ['transformer', 'layers'] and parts[3] in modules:
            prefix = f'model.decoder.layers.{parts[2]}.{modules[parts[3]]}'
            rest = [part for part in parts[4:] if part != 'mha']  # torch's MultiheadAttention inside
            if rest == ['in_proj_weight']:
                for index, name in enumerate(('q_proj', 'k_proj', 'v_proj')):
                    renamed[f'{prefix}.{name}.weight'] = value[index * dim:(index + 1) * dim].clone()
            else:
                renamed[f'{prefix}.{".".join(rest)}'] = value
        else:
            raise TransformersExportError(f"The language model has a weight transformers' MusicGen decoder has no "
                                          f"place for: {key}. {_INSTEAD}")
    return renamed


def _load_all(module: nn.Module, state: tp.Mapping[str, torch.Tensor], what: str) -> None:
    """`load_state_dict(strict=True)`, as a `TransformersExportError` naming what did not fit."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise TransformersExportError(f"The {what} does not fit transformers' model ({str(error).strip()[:600]}).") \
            from None


def _model_card(model: ExtendedMusicGen, layers: int, new_layers: int, channels: int, sample_rate: int,
                text_encoder: str, generation: tp.Mapping[str, tp.Any], training_data: tp.Optional[str]) -> str:
    """README.md: where the model comes from and how to use it."""
    base = model.base_reference or f"{model.name} (given in memory)"
    hub = '/' in str(model.base_reference or '') and not Path(str(model.base_reference)).is_absolute()
    front = ['---', 'library_name: transformers', 'pipeline_tag: text-to-audio', 'tags:', '- musicgen',
             '- text-to-audio', '- audiocraft-ext'] + ([f'base_model: {model.base_reference}'] if hub else []) + ['---']
    settings = ', '.join(f'{key}={value}' for key, value in sorted(generation.items()))
    return '\n'.join(front + [
        '', f'# {model.name}: MusicGen with {new_layers} new layers', '',
        f'The frozen MusicGen base `{base}` with {new_layers} new transformer layers trained on top of its '
        f'{layers} layers (audiocraft-ext {__version__}), exported as one transformers '
        '`MusicgenForConditionalGeneration`.', '',
        f'- base: `{base}` (weights_hash `{model.base_hash}`)',
        f'- new layers: {new_layers} (decoder layers {layers} to {layers + new_layers - 1} of {layers + new_layers}, '
        'between the base\'s last layer and its output norm)',
        f'- extension_scale: {model.lm.extension_scale} (folded into the new layers\' weights)',
        f'- training data of the new layers: {training_data or "not recorded"}',
        f'- text encoder: the base\'s T5 ({text_encoder}); audio: EnCodec, {sample_rate} Hz, '
        f'{"stereo" if channels == 2 else "mono"}',
        f'- generation defaults (generation_config.json): {settings}', '',
        '## Use', '', '```python', 'from transformers import pipeline', '',
        "music = pipeline('text-to-audio', model='PATH_OR_REPO')",
        "out = music('lofi hip hop with a warm rhodes', forward_params={'max_new_tokens': 256})",
        "# out['audio']: [samples] (mono) or [2, samples] (stereo), at out['sampling_rate'] Hz", '```', ''])


def transformers_export(model: ExtendedMusicGen, training_data: tp.Optional[str] = None) -> TransformersExport:
    """Check `model` and build its transformers counterpart in memory (nothing is written).

    Args:
        model (ExtendedMusicGen): the extended model; its `extension_scale` is folded into the weights.
        training_data (str, optional): what the new layers were trained on, for the model card.
    Returns:
        TransformersExport: the model (decoder of L + N layers, float32, CPU), processor and card.
    Raises:
        TransformersExportError: the model has something transformers cannot represent (message: what and the fix).
    """
    if not isinstance(model, ExtendedMusicGen):
        raise TypeError(f"Expected an ExtendedMusicGen, got {type(model).__name__}: extend it first "
                        "(ExtendedMusicGen.from_base).")
    lm = model.lm
    conditioner = _text_conditioner(lm)
    layer_config = _check_layers(lm)
    codec = model.compression_model
    channels = 1
    if isinstance(codec, InterleaveStereoCompressionModel):
        if codec.per_timestep:
            _refuse("The base interleaves its stereo codes per time step",
                    f"Its stereo decoder interleaves whole codebooks. {_INSTEAD}")
        codec, channels = codec.model, 2
    _check_pattern(lm, channels)
    _check_folding(lm)
    generation = _generation_config(model, lm.n_q, channels)
    audio_encoder = _audio_encoder(codec, lm.n_q // channels)
    _, merged = merged_lm_package(lm)  # the L + N layer LM, extension_scale folded in

    layers = lm.num_base_layers + lm.num_additional_layers
    decoder_config = MusicgenDecoderConfig(
        vocab_size=lm.card, max_position_embeddings=max(2048, generation['max_length']), num_hidden_layers=layers,
        ffn_dim=layer_config['dim_feedforward'], num_attention_heads=layer_config['num_heads'], hidden_size=lm.dim,
        activation_function=layer_config['activation'], dropout=layer_config['dropout'],
        attention_dropout=layer_config['attention_dropout'], activation_dropout=0.0, layerdrop=0.0,
        num_codebooks=lm.n_q, audio_channels=channels, pad_token_id=lm.card, bos_token_id=lm.card,
        decoder_start_token_id=lm.card, tie_word_embeddings=False)
    text_encoder = copy.deepcopy(conditioner.t5).float().cpu().eval()
    config = MusicgenConfig(text_encoder=text_encoder.config.to_dict(), audio_encoder=audio_encoder.config.to_dict(),
                            decoder=decoder_config.to_dict())
    with no_init_weights():
        exported = MusicgenForConditionalGeneration(config).eval()
    with torch.no_grad():
        for tensor in exported.state_dict().values():
            if tensor.is_floating_point():
                tensor.fill_(float('nan'))  # whatever is not loaded below stays NaN, and is caught
    _load_all(exported.text_encoder, text_encoder.state_dict(), "base's T5 encoder")
    _load_all(exported.audio_encoder, audio_encoder.state_dict(), 'compression model')
    _load_all(exported.decoder, _decoder_state(merged, lm.dim), 'language model')
    _load_all(exported.enc_to_dec_proj, {key: value.detach().float().cpu()
                                         for key, value in conditioner.output_proj.state_dict().items()},
              "T5 conditioner's output projection")
    unloaded = [key for key, tensor in exported.state_dict().items()
                if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if unloaded:
        raise TransformersExportError(f"Weights of transformers' model left unset or not finite: {unloaded[:5]}.")
    exported.generation_config = GenerationConfig(**generation)
    sample_rate = audio_encoder.config.sampling_rate
    processor = MusicgenProcessor(
        feature_extractor=EncodecFeatureExtractor(feature_size=channels, sampling_rate=sample_rate,
                                                  padding_side='left'),
        tokenizer=copy.deepcopy(conditioner.t5_tokenizer))
    card = _model_card(model, lm.num_base_layers, lm.num_additional_layers, channels, sample_rate, conditioner.name,
                       generation, training_data)
    return TransformersExport(exported, processor, card)


def export_transformers(model: ExtendedMusicGen, directory: PathLike, overwrite: bool = False,
                        training_data: tp.Optional[str] = None,
                        protected: tp.Optional[tp.Mapping[PathLike, str]] = None) -> Path:
    """Write `model` as a directory `MusicgenForConditionalGeneration.from_pretrained(directory)` loads.

    The directory holds `config.json`, `model.safetensors` (T5 encoder, EnCodec, decoder of L + N
    layers), `generation_config.json` (the model's generation defaults), the processor's files
    (tokenizer, feature extractor) and `README.md` (the model card). Every check runs before
    anything is written; the directory is written beside its destination and renamed, never onto the
    base, and an existing one is replaced only with `overwrite=True`.

    Args:
        model (ExtendedMusicGen): the extended model.
        directory (str or Path): where to write.
        overwrite (bool): replace an existing `directory` (never the base).
        training_data (str, optional): what the new layers were trained on, for the model card.
        protected (dict): further paths never to write (path -> what it is), e.g. the run exported.
    Returns:
        Path: the directory written.
    """
    if not isinstance(model, ExtendedMusicGen):
        raise TypeError(f"Expected an ExtendedMusicGen, got {type(model).__name__}: extend it first "
                        "(ExtendedMusicGen.from_base).")
    destination = check_destination(directory, {**model._protected(), **(protected or {})}, overwrite)
    export = transformers_export(model, training_data)
    with atomic_directory(destination) as folder:
        export.model.save_pretrained(folder)
        export.processor.save_pretrained(folder)
        (folder / 'README.md').write_text(export.card, encoding='utf-8')
        missing = [name for name in _DECODER_FILES if not (folder / name).exists()]
        if missing:
            raise TransformersExportError(f"transformers' save_pretrained wrote no {missing}.")
    return destination
