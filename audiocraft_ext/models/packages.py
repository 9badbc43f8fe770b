"""Between models and files: an extended model as an `ExtensionPackage`, its base as a plain LM.

- `extension_package`: what `ExtendedMusicGen.save` writes (io.extension_files has the format).
- `embedded_base`: the base MusicGen a self-contained package carries, checked against its hash.
- `merged_lm_package`: base + new layers as one stock `LMModel` with L + N layers (export).
"""
import typing as tp

from omegaconf import OmegaConf
import torch

from audiocraft.models import MusicGen

from .. import __version__
from ..io.errors import CheckpointError, IntegrityError
from ..io.extension_files import FORMAT, FORMAT_VERSION, ExtensionPackage
from ..io.hashing import weights_hash
from .bases import assemble_musicgen, build_compression_model, build_lm, compression_package
from .extended_lm import ExtendedLMModel
from .layers import base_layer_config, residual_branch_outputs

# `MusicGen.set_generation_params` arguments and the `generation_params` keys they fill.
_GENERATION_KEYS = {'use_sampling': 'use_sampling', 'temp': 'temperature', 'top_k': 'top_k', 'top_p': 'top_p',
                    'cfg_coef': 'cfg_coef', 'two_step_cfg': 'two_step_cfg'}


def generation_defaults(model: MusicGen) -> tp.Dict[str, tp.Any]:
    """The model's generation settings as `set_generation_params` keyword arguments."""
    params = {argument: model.generation_params[key] for key, argument in _GENERATION_KEYS.items()}
    return {**params, 'duration': model.duration, 'extend_stride': model.extend_stride}


def lm_config(lm: ExtendedLMModel) -> tp.Any:
    """The base LM's `xp.cfg`, which AudioCraft's builders rebuild it from."""
    cfg = getattr(lm, 'cfg', None)
    if cfg is None:
        raise CheckpointError("The base LM carries no xp.cfg, so its architecture cannot be written down: "
                              "load the base through ExtendedMusicGen.from_base(path_or_id).")
    return cfg


# How the new layers may be stored (`save(..., dtype=...)`); loading casts them back to the model's dtype.
STORAGE_DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}


def storage_dtype(dtype: tp.Any) -> str:
    """The name in STORAGE_DTYPES of `dtype` (a torch.dtype or its name)."""
    name = str(dtype).replace('torch.', '')
    if name not in STORAGE_DTYPES:
        raise ValueError(f"dtype={dtype!r}: store the new layers in one of {sorted(STORAGE_DTYPES)} "
                         "(half precision halves the file; the base, if included, stays as it is).")
    return name


def extension_package(model: tp.Any, include_base: bool, dtype: tp.Any = None) -> ExtensionPackage:
    """An `ExtendedMusicGen` as an `ExtensionPackage` (self-contained, or extension-only with a reference),
    the new layers' floating-point tensors stored in `dtype` (default: as they are)."""
    import audiocraft
    lm: ExtendedLMModel = model.lm
    if not include_base and model.base_reference is None:
        raise CheckpointError("This model's base was given in memory, so an extension-only file could not say where "
                              "it is: extend a base given by path or id, or save with include_base=True.")
    extension = lm.extension_state_dict()
    if dtype is not None:
        stored = STORAGE_DTYPES[storage_dtype(dtype)]
        extension = {key: value.to(stored) if value.is_floating_point() else value for key, value in extension.items()}
    config: tp.Dict[str, tp.Any] = {
        'format': FORMAT, 'format_version': FORMAT_VERSION, 'library_version': __version__,
        'audiocraft_version': audiocraft.__version__, 'name': model.name, 'max_duration': model.max_duration,
        'base': {'reference': model.base_reference, 'hash': model.base_hash},
        'extension': lm.extension_config.to_dict(), 'generation': generation_defaults(model)}
    if dtype is not None:
        config['extension_dtype'] = storage_dtype(dtype)
    package = ExtensionPackage(config, tensors={'extension': extension})
    if include_base:
        package.tensors['base_lm'] = lm.base_state_dict()
        package.texts['base_lm'] = OmegaConf.to_yaml(lm_config(lm))
        codec = compression_package(model.compression_model, model.base_reference)
        if 'pretrained' in codec:
            config['compression'] = {'pretrained': codec['pretrained']}
        else:
            package.tensors['compression'] = codec['best_state']
            package.texts['compression'] = codec['xp.cfg']
    return package


def embedded_base(package: ExtensionPackage, device: str, source: str) -> MusicGen:
    """The base MusicGen of a self-contained package; refuses one whose weights were altered."""
    config = package.config
    lm = build_lm(package.texts['base_lm'], package.tensors['base_lm'], device)
    found = weights_hash(lm.state_dict())
    if found != config['base']['hash']:
        raise IntegrityError(f"The base embedded in {source} was altered: its weights have hash {found}, but the "
                             f"file says the extension was trained on {config['base']['hash']}. Use another copy.")
    codec = config.get('compression') or {'xp.cfg': package.texts.get('compression'),
                                          'best_state': package.tensors.get('compression')}
    if 'pretrained' not in codec and codec['best_state'] is None:
        raise IntegrityError(f"{source} is self-contained but holds no compression model: use another copy.")
    return assemble_musicgen(config['name'], build_compression_model(codec, device), lm, config['max_duration'])


def merged_lm_package(lm: ExtendedLMModel) -> tp.Tuple[tp.Any, tp.Dict[str, torch.Tensor]]:
    """(xp.cfg, state dict) of a plain `LMModel` with L + N layers equal to `lm`.

    `extension_scale` is folded into the weights. Only possible when the new layers have the
    base layers' architecture (`checkpointing`, a training-memory setting, may differ), so never
    on a post-norm base (the new layers are pre-norm).
    """
    expected = base_layer_config(lm.base_transformer)
    differing = sorted(key for key in expected if key != 'checkpointing' and expected[key] != lm.layer_config[key])
    if differing:
        post_norm = " (the base is post-norm; new layers are always pre-norm)" if 'norm_first' in differing else ""
        raise CheckpointError(f"The new layers differ from the base layers in {differing}{post_norm}, so base + new "
                              "layers is not a stock LMModel and cannot be exported to AudioCraft's layout. "
                              "Use save() instead.")
    cfg = OmegaConf.create(OmegaConf.to_container(lm_config(lm)))
    cfg.transformer_lm.num_layers = lm.num_base_layers + lm.num_additional_layers
    state = dict(lm.base_state_dict())
    for index, layer in enumerate(lm.extension.layers):
        branch_ends = residual_branch_outputs(layer)
        scaled = {id(linear.weight) for linear in branch_ends} | \
                 {id(linear.bias) for linear in branch_ends if linear.bias is not None}
        named = dict(layer.named_parameters())
        prefix = f'transformer.layers.{lm.num_base_layers + index}.'
        for key, value in layer.state_dict().items():
            parameter = named.get(key)
            if parameter is not None and id(parameter) in scaled:
                value = value * lm.extension_scale
            state[prefix + key.replace('.layer_scale.scale', '.scale')] = value.detach().clone()
    return cfg, state
