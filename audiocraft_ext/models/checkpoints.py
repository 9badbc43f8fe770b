"""Loading bases, fingerprinting weights, writing files atomically.

A *base* is a pretrained MusicGen, given as:
    - a `MusicGen` instance;
    - a Hugging Face id (``facebook/musicgen-small``), loaded by AudioCraft (needs the hub);
    - a local directory in AudioCraft's exported layout (``state_dict.bin`` +
      ``compression_state_dict.bin``, i.e. a Hugging Face snapshot);
    - an AudioCraft training checkpoint (``checkpoint.th`` of a MusicGen solver);
    - an extended model file written by `ExtendedMusicGen.save`, merged into a plain
      MusicGen of L + N layers so it can be extended again.
"""
import hashlib
import os
from pathlib import Path
import re
import typing as tp
import uuid

from omegaconf import DictConfig, OmegaConf
import torch

EXTENDED_FORMAT = 'audiocraft_ext.extended_musicgen'
EXTENDED_FORMAT_VERSION = 1
_HUB_ID = re.compile(r'^[\w.-]+/[\w.-]+$')
_SHORT_NAMES = ('small', 'medium', 'large', 'melody')
_CHECKPOINT_SUFFIXES = ('.pt', '.th', '.bin', '.pth', '.ckpt', '.safetensors')

# Keys that `audiocraft.models.loaders.load_lm_model` removes from old configs before building.
_OBSOLETE_LM_KEYS = ('conditioners.self_wav.chroma_stem.cache_path',
                     'conditioners.args.merge_text_conditions_p', 'conditioners.args.drop_desc_p')

PathLike = tp.Union[str, Path]


class CheckpointError(ValueError):
    """A file is not what it should be (missing, truncated, of the wrong kind or version)."""


def weights_hash(state_dict: tp.Mapping[str, torch.Tensor]) -> str:
    """Content hash of a state dict: names, shapes and values rounded to float16.

    Rounding makes the hash the same whether the base was loaded in float32 (CPU) or float16
    (AudioCraft's loaders on GPU), so an adapter trained on one device loads on the other.
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


def atomic_save(obj: tp.Any, path: PathLike) -> Path:
    """`torch.save` to a temporary file in the same folder, then rename: never a half-written file.

    The temporary is created with mode 0o666 minus the umask, like a plain `open(path, 'wb')`
    (not `mkstemp`'s private 0o600, which the rename would give the final file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_name = str(path.parent / f'.{path.name}.{uuid.uuid4().hex}.tmp')
    handle = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, 'wb') as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
        raise
    return path


def read_torch_file(path: PathLike, what: str = 'checkpoint') -> tp.Any:
    """`torch.load` a trusted local file on CPU, turning low-level failures into clear errors.

    AudioCraft training checkpoints pickle OmegaConf objects, hence `weights_only=False`: only
    load files you trust, as with any PyTorch checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}. Check the path.")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; expected a {what} file.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): it was not written completely. "
                              "Use another copy or write it again.")
    try:
        return torch.load(path, map_location='cpu', weights_only=False)
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable PyTorch {what} ({type(error).__name__}: {error}). "
                              "It may be truncated or of another kind; use another copy.") from None


def is_extended_package(pkg: tp.Any) -> bool:
    return isinstance(pkg, dict) and pkg.get('format') == EXTENDED_FORMAT


def _lm_cfg(cfg: tp.Union[str, DictConfig, dict]) -> DictConfig:
    return OmegaConf.create(cfg) if isinstance(cfg, str) else OmegaConf.create(OmegaConf.to_container(cfg))


def build_lm(cfg: tp.Union[str, DictConfig, dict], state: tp.Mapping[str, torch.Tensor], device: tp.Any):
    """An `LMModel` from an `xp.cfg` and its weights, like `audiocraft.models.loaders.load_lm_model`."""
    from audiocraft.models import builders, loaders
    cfg = _lm_cfg(cfg)
    for obsolete in _OBSOLETE_LM_KEYS:
        loaders._delete_param(cfg, obsolete)
    cfg.device = str(device)
    cfg.dtype = 'float32' if torch.device(device).type == 'cpu' else 'float16'
    lm = builders.get_lm_model(cfg)
    lm.load_state_dict(state)
    lm.cfg = cfg
    return lm.eval()


def build_compression_model(pkg: tp.Mapping[str, tp.Any], device: tp.Any):
    """A compression model from an exported package (`compression_state_dict.bin` content)."""
    from audiocraft.models import CompressionModel, builders
    if 'pretrained' in pkg:
        model = CompressionModel.get_pretrained(pkg['pretrained'], device=device)
        model.pretrained_name = pkg['pretrained']
        return model
    cfg = OmegaConf.create(pkg['xp.cfg'])
    cfg.device = str(device)
    model = builders.get_compression_model(cfg)
    model.load_state_dict(pkg['best_state'])
    model.cfg = cfg
    return model.eval()


def compression_package(compression_model, source: tp.Optional[str] = None) -> tp.Dict[str, tp.Any]:
    """The exported package of a (mono, unwrapped) compression model, as AudioCraft writes it.

    Models loaded by this module carry their config (or pretrained name). One loaded elsewhere
    (e.g. by stock `MusicGen.get_pretrained(source)`) is re-read from `source`, an exported
    directory or Hugging Face id, when given.
    """
    import audiocraft
    from audiocraft.models import loaders
    model = getattr(compression_model, 'model', compression_model)  # unwrap interleaved stereo
    if getattr(model, 'pretrained_name', None):
        return {'pretrained': model.pretrained_name, 'version': audiocraft.__version__, 'exported': True}
    cfg = getattr(model, 'cfg', None)
    if cfg is None and source is not None and is_exported_reference(source):
        return loaders.load_compression_model_ckpt(source)
    if cfg is None:
        raise CheckpointError(
            "The compression model carries no config, so it cannot be saved in a self-contained file. "
            "Load the base through ExtendedMusicGen.from_base(path_or_id), or save with include_base=False.")
    return {'xp.cfg': OmegaConf.to_yaml(cfg), 'best_state': model.state_dict(),
            'version': audiocraft.__version__, 'exported': True}


def default_device() -> str:
    """Where models load when no device is given: cuda if available, else cpu."""
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def assemble_musicgen(name: str, compression_model, lm, max_duration: tp.Optional[float] = None):
    """`MusicGen(name, compression_model, lm)` with the inference settings of `MusicGen.get_pretrained`."""
    from audiocraft.models import MusicGen
    if 'self_wav' in lm.condition_provider.conditioners:  # as MusicGen.get_pretrained does
        lm.condition_provider.conditioners['self_wav'].match_len_on_eval = True
        lm.condition_provider.conditioners['self_wav']._use_masking = False
    return MusicGen(name, compression_model, lm, max_duration)


def _from_training_checkpoint(path: Path, pkg: dict, device: str):
    """A MusicGen from an AudioCraft MusicGen solver checkpoint (`checkpoint.th`)."""
    cfg = pkg['xp.cfg']
    best = pkg.get('fsdp_best_state') or pkg.get('best_state')
    if not best or 'model' not in best:
        raise CheckpointError(f"{path} has no best_state: the run saved no model yet. Train at least one epoch.")
    if 'transformer_lm' not in cfg:
        raise CheckpointError(f"{path} is a training checkpoint of another solver "
                              f"({cfg.get('solver', 'unknown')}), not of a MusicGen language model.")
    lm = build_lm(cfg, best['model'], device)
    return assemble_musicgen(str(path), _compression_from_solver_reference(cfg.compression_model_checkpoint,
                                                                          device), lm)


def _compression_from_solver_reference(reference: str, device: str):
    """The compression model a MusicGen run names in `compression_model_checkpoint`, keeping what saves it."""
    from audiocraft.models import CompressionModel
    from audiocraft.solvers.compression import CompressionSolver
    if not reference.startswith('//pretrained/'):
        return CompressionSolver.model_from_checkpoint(reference, device=device)
    name = reference[len('//pretrained/'):]
    if Path(name).is_file():
        return build_compression_model(read_torch_file(name, 'compression model checkpoint'), device)
    model = CompressionModel.get_pretrained(name, device=device)
    model.pretrained_name = name
    return model


def _from_exported(source: str, device: str):
    """A MusicGen from AudioCraft's exported layout (local directory or Hugging Face id).

    Loaded like `MusicGen.get_pretrained(source)`, except that the compression model keeps its
    package so the base can be saved in a self-contained file.
    """
    from audiocraft.models import loaders
    if Path(source).is_dir():
        missing = [name for name in ('state_dict.bin', 'compression_state_dict.bin')
                   if not (Path(source) / name).exists()]
        if missing:
            raise CheckpointError(f"{source} is not an exported MusicGen directory: missing {', '.join(missing)}. "
                                  "Expected AudioCraft's exported layout (a Hugging Face MusicGen snapshot).")
        compression_pkg = read_torch_file(Path(source) / 'compression_state_dict.bin', 'compression model checkpoint')
    else:
        compression_pkg = loaders.load_compression_model_ckpt(source)
    try:
        lm = loaders.load_lm_model(source, device=device)
    except Exception as error:
        raise CheckpointError(f"The language model of {source} (state_dict.bin) is not loadable "
                              f"({type(error).__name__}: {error}). Is it truncated, or another kind of "
                              "checkpoint (e.g. a compression model)?") from error
    return assemble_musicgen(source, build_compression_model(compression_pkg, device), lm)


def _from_file(path: Path, device: str):
    pkg = read_torch_file(path, 'MusicGen checkpoint')
    if is_extended_package(pkg):
        from .extended_musicgen import ExtendedMusicGen
        return ExtendedMusicGen.get_pretrained(path, device=device).merged_musicgen()
    if not isinstance(pkg, dict) or 'xp.cfg' not in pkg:
        raise CheckpointError(f"{path} is not a MusicGen checkpoint (expected an AudioCraft checkpoint.th, "
                              "an exported directory or a file written by ExtendedMusicGen.save).")
    if pkg.get('exported'):
        raise CheckpointError(f"{path} is one file of an exported model: pass its directory ({path.parent}), "
                              "which must hold state_dict.bin and compression_state_dict.bin.")
    return _from_training_checkpoint(path, pkg, device)


def load_base_musicgen(source: tp.Any, device: tp.Optional[str] = None):
    """A pretrained MusicGen from any of the forms listed in this module's docstring."""
    from audiocraft.models import MusicGen
    from audiocraft.models.musicgen import _HF_MODEL_CHECKPOINTS_MAP
    from .extended_musicgen import ExtendedMusicGen
    if isinstance(source, ExtendedMusicGen):
        return source.merged_musicgen()
    if isinstance(source, MusicGen):
        return source
    if not isinstance(source, (str, Path)):
        raise TypeError(f"Expected a MusicGen, a path or a Hugging Face id, got {type(source).__name__}.")
    device = device or default_device()
    path = Path(source).expanduser()
    if path.is_dir():
        return _from_exported(str(path), device)
    if path.exists():
        return _from_file(path, device)
    if source == 'debug':
        return MusicGen.get_pretrained('debug', device=device)
    if is_hub_id(str(source)):
        return _from_exported(_HF_MODEL_CHECKPOINTS_MAP.get(str(source), str(source)), device)
    raise FileNotFoundError(f"Base model not found: {source}. Give an existing file or directory, "
                            "or a Hugging Face id such as facebook/musicgen-small.")


def is_hub_id(source: str) -> bool:
    """'org/name' (not a file name like 'runs/model.pt') or one of MusicGen's short names."""
    return source in _SHORT_NAMES or (bool(_HUB_ID.match(source))
                                      and Path(source).suffix.lower() not in _CHECKPOINT_SUFFIXES)


def is_exported_reference(source: str) -> bool:
    """An exported MusicGen directory or a Hugging Face id (what AudioCraft's loaders read)."""
    return Path(source).is_dir() or (not Path(source).exists() and is_hub_id(source))
