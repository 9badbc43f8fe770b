"""Building plain MusicGen bases from resolved references (`io.base_reference.BaseSource`).

Every file is read by `io` with `torch.load(weights_only=True)` (never AudioCraft's own loaders,
whose `torch.load` follows the `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD` environment variable), then the
models are built with AudioCraft's builders, as `audiocraft.models.loaders` builds them. Bases that
hold new layers (extensions, runs of our solver) are built by `extended_musicgen.load_base`.
"""
from pathlib import Path
import typing as tp

import huggingface_hub
import omegaconf
from omegaconf import DictConfig, OmegaConf
import torch

from audiocraft.models import MusicGen, builders
from audiocraft.models.encodec import CompressionModel
from audiocraft.models.lm import LMModel

from ..io.base_reference import PRETRAINED_PREFIX, SIG_PREFIX, BaseSource, hub_cache_dir, is_hub_id, resolve_base
from ..io.errors import CheckpointError
from ..io.exported_layout import COMPRESSION_FILE, LM_FILE, exported_package, read_exported_file
from ..io.torch_files import read_torch_file
from .audiocraft_internals import melody_conditioner_for_inference

# Keys that `audiocraft.models.loaders.load_lm_model` removes from old configs before building.
_OBSOLETE_LM_KEYS = ('conditioners.self_wav.chroma_stem.cache_path',
                     'conditioners.args.merge_text_conditions_p', 'conditioners.args.drop_desc_p')
# Codecs AudioCraft loads from `transformers` (safetensors), not from a pickled package.
_TRANSFORMERS_CODECS = ('facebook/encodec_32khz', 'facebook/encodec_24khz')


def default_device() -> str:
    """Where models load when no device is given: cuda if available, else cpu."""
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def _config(cfg: tp.Union[str, DictConfig, dict]) -> DictConfig:
    return OmegaConf.create(cfg) if isinstance(cfg, str) else OmegaConf.create(OmegaConf.to_container(cfg))


def build_lm(cfg: tp.Union[str, DictConfig, dict], state: tp.Mapping[str, torch.Tensor], device: tp.Any) -> LMModel:
    """An `LMModel` from an `xp.cfg` and its weights, like `audiocraft.models.loaders.load_lm_model`."""
    cfg = _config(cfg)
    for obsolete in _OBSOLETE_LM_KEYS:
        parent, _, key = obsolete.rpartition('.')
        node = OmegaConf.select(cfg, parent)
        if node is not None and key in node:
            with omegaconf.open_dict(node):
                node.pop(key)
    cfg.device = str(device)
    cfg.dtype = 'float32' if torch.device(device).type == 'cpu' else 'float16'
    lm = builders.get_lm_model(cfg)
    try:
        lm.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"The language model's weights do not fit its config ({str(error).strip()[:500]}).") from None
    lm.cfg = cfg
    return lm.eval()


def build_compression_model(pkg: tp.Mapping[str, tp.Any], device: tp.Any) -> CompressionModel:
    """A compression model from an exported package: {'xp.cfg', 'best_state'} or {'pretrained': NAME}."""
    if 'pretrained' in pkg:
        return pretrained_compression_model(pkg['pretrained'], device)
    cfg = _config(pkg['xp.cfg'])
    cfg.device = str(device)
    model = builders.get_compression_model(cfg)
    try:
        model.load_state_dict(pkg['best_state'])
    except RuntimeError as error:
        raise CheckpointError(f"The compression model's weights do not fit its config ({str(error).strip()[:500]}).") from None
    model.cfg = cfg
    return model.eval()


def pretrained_compression_model(name: str, device: tp.Any) -> CompressionModel:
    """A codec named by a hub id or an exported `compression_state_dict.bin`, keeping its name."""
    if name in _TRANSFORMERS_CODECS:
        model = CompressionModel.get_pretrained(name, device=device)
    elif Path(name).is_file():
        return build_compression_model(read_exported_file(name), device)
    elif is_hub_id(name):
        path = huggingface_hub.hf_hub_download(name, COMPRESSION_FILE, library_name='audiocraft',
                                               cache_dir=hub_cache_dir())
        model = build_compression_model(read_exported_file(path), device)
    else:
        raise FileNotFoundError(f"Compression model not found: {name}. Give an exported compression_state_dict.bin "
                                "or a Hugging Face id.")
    model.pretrained_name = name
    return model


def compression_package(compression_model: CompressionModel,
                        source: tp.Optional[str] = None) -> tp.Dict[str, tp.Any]:
    """The exported package of a (mono, unwrapped) compression model, as AudioCraft writes it.

    Models built here carry their config (or pretrained name). One loaded elsewhere (e.g. by stock
    `MusicGen.get_pretrained(source)`) is read again from `source`, an exported MusicGen.
    """
    model = getattr(compression_model, 'model', compression_model)  # unwrap interleaved stereo
    if getattr(model, 'pretrained_name', None):
        import audiocraft
        return {'pretrained': model.pretrained_name, 'version': audiocraft.__version__, 'exported': True}
    cfg = getattr(model, 'cfg', None)
    if cfg is None and source is not None:
        base = resolve_base(source)
        if base.kind == 'musicgen':
            return read_exported_file(Path(base.location) / COMPRESSION_FILE)
    if cfg is None:
        raise CheckpointError(
            "The compression model carries no config, so it cannot be written down. Load the base through "
            "ExtendedMusicGen.from_base(path_or_id) (not a MusicGen built elsewhere), or save with include_base=False.")
    return exported_package(OmegaConf.to_yaml(cfg), model.state_dict())


def assemble_musicgen(name: str, compression_model: CompressionModel, lm: LMModel,
                      max_duration: tp.Optional[float] = None) -> MusicGen:
    """`MusicGen(name, compression_model, lm)` with the inference settings of `MusicGen.get_pretrained`."""
    melody_conditioner_for_inference(lm)
    return MusicGen(name, compression_model, lm, max_duration)


def _compression_of_training_run(reference: str, checkpoint: Path, device: str,
                                 allow_pickle: bool) -> CompressionModel:
    """The codec an AudioCraft MusicGen run names in `compression_model_checkpoint`.

    `//pretrained/NAME` is a hub id or an exported file; otherwise a compression solver
    checkpoint (a path, or `//sig/SIG` in the Dora folder of the MusicGen run itself).
    """
    if reference.startswith(PRETRAINED_PREFIX):
        return pretrained_compression_model(reference[len(PRETRAINED_PREFIX):], device)
    if reference.startswith(SIG_PREFIX):
        path = checkpoint.parent.parent / reference[len(SIG_PREFIX):].strip('/') / 'checkpoint.th'
    else:
        path = Path(reference).expanduser()
        path = path / 'checkpoint.th' if path.is_dir() else path
    pkg = read_torch_file(path, 'compression model checkpoint', allow_pickle=allow_pickle)
    best = (pkg.get('best_state') or {}) if isinstance(pkg, dict) else {}
    if 'xp.cfg' not in pkg or 'model' not in best:
        raise CheckpointError(f"{path} (compression_model_checkpoint of {checkpoint}) is not a compression model "
                              "training checkpoint with a best state.")
    return build_compression_model({'xp.cfg': pkg['xp.cfg'], 'best_state': best['model']}, device)


def _from_training_checkpoint(path: Path, device: str, allow_pickle: bool) -> MusicGen:
    """A MusicGen from an AudioCraft MusicGen solver checkpoint (`checkpoint.th`)."""
    pkg = read_torch_file(path, 'MusicGen checkpoint', allow_pickle=allow_pickle)
    cfg = pkg['xp.cfg']
    best = pkg.get('fsdp_best_state') or pkg.get('best_state')
    if not best or 'model' not in best:
        raise CheckpointError(f"{path} has no best_state: the run saved no model yet. Train at least one epoch.")
    if 'transformer_lm' not in cfg:
        raise CheckpointError(f"{path} is a training checkpoint of another solver "
                              f"({cfg.get('solver', 'unknown')}), not of a MusicGen language model.")
    lm = build_lm(cfg, best['model'], device)
    compression = _compression_of_training_run(str(cfg.compression_model_checkpoint), path, device, allow_pickle)
    return assemble_musicgen(str(path), compression, lm)


def _from_exported(source: BaseSource, device: str, allow_pickle: bool) -> MusicGen:
    """A MusicGen from AudioCraft's exported layout (a local directory or a downloaded hub snapshot)."""
    folder = Path(source.location)
    lm_pkg = read_exported_file(folder / LM_FILE, allow_pickle=allow_pickle)
    if 'xp.cfg' not in lm_pkg or 'transformer_lm' not in _config(lm_pkg['xp.cfg']):
        raise CheckpointError(f"{folder / LM_FILE} is not a MusicGen language model (no transformer_lm in its "
                              "xp.cfg): are the two files of the directory swapped?")
    compression = build_compression_model(read_exported_file(folder / COMPRESSION_FILE, allow_pickle=allow_pickle),
                                          device)
    lm = build_lm(lm_pkg['xp.cfg'], lm_pkg['best_state'], device)
    return assemble_musicgen(source.reference, compression, lm)


def load_plain_base(source: BaseSource, device: tp.Optional[str] = None, allow_pickle: bool = False) -> MusicGen:
    """A MusicGen from a `BaseSource` of kind 'musicgen', 'audiocraft_checkpoint' or 'debug'."""
    device = device or default_device()
    if source.kind == 'musicgen':
        return _from_exported(source, device, allow_pickle)
    if source.kind == 'audiocraft_checkpoint':
        return _from_training_checkpoint(Path(source.location), device, allow_pickle)
    if source.kind == 'debug':
        return MusicGen.get_pretrained('debug', device=device)
    raise ValueError(f"{source.reference} is a base of kind {source.kind!r}, not a plain MusicGen.")
