"""The extension format: what `ExtendedMusicGen.save` writes and `get_pretrained` reads.

A directory, like PEFT's `save_pretrained` (what one uploads to a Hugging Face repo)::

    extension_config.json     format and library version, base reference and hash, extension
                              and layer config, generation defaults, sha256 of every other file
    extension.safetensors     the new layers' state dict
    base_lm.safetensors       self-contained only: the base LM's weights ...
    base_lm.yaml              ... and its AudioCraft `xp.cfg`
    compression.safetensors   self-contained only: the compression model's weights ...
    compression.yaml          ... and its `xp.cfg` (absent when the codec is a hub reference,
                              e.g. `facebook/encodec_32khz`, recorded in the config instead)

or one `.safetensors` file: the same tensors with the part as prefix (`extension.`, `base_lm.`,
`compression.`) and the config, yaml texts included, as JSON in the file's metadata header, with
a sha256 of each part's tensors instead of file checksums.

Files written by earlier versions (`.pt`, format version 1) are read with
`torch.load(weights_only=True)` only; `audiocraft-ext convert OLD NEW` rewrites them.
Reading checks everything it can without the model: format and version, checksums, non-finite
values. Keys and shapes are checked against the model by whoever loads the tensors into it.
"""
from dataclasses import dataclass, field
import json
import math
from pathlib import Path
import typing as tp

import safetensors
import safetensors.torch
import torch

from .atomic import atomic_directory, atomic_write_bytes
from .errors import CheckpointError, IntegrityError, UnsafeFileError
from .hashing import file_sha256, tensors_sha256
from .torch_files import check_readable_file, read_torch_file

FORMAT = 'audiocraft_ext.extension'
FORMAT_VERSION = 2
LEGACY_FORMAT = 'audiocraft_ext.extended_musicgen'  # version 1: one torch.save'd dict
CONFIG_NAME = 'extension_config.json'
METADATA_KEY = 'audiocraft_ext'
PARTS = ('extension', 'base_lm', 'compression')
TEXT_PARTS = ('base_lm', 'compression')

PathLike = tp.Union[str, Path]
StateDict = tp.Dict[str, torch.Tensor]


@dataclass
class ExtensionPackage:
    """What an extension file holds, in memory.

    Attributes:
        config (dict): the JSON config (see `config_for`); no checksums.
        tensors (dict): part ('extension', 'base_lm', 'compression') -> state dict.
        texts (dict): 'base_lm' / 'compression' -> AudioCraft `xp.cfg` as YAML text.
    """
    config: tp.Dict[str, tp.Any]
    tensors: tp.Dict[str, StateDict] = field(default_factory=dict)
    texts: tp.Dict[str, str] = field(default_factory=dict)

    @property
    def self_contained(self) -> bool:
        return 'base_lm' in self.tensors


def _separate_storages(state: StateDict) -> StateDict:
    """Contiguous CPU tensors, cloning any that shares storage with another (safetensors refuses those)."""
    seen: tp.Set[tp.Tuple[int, int]] = set()
    out = {}
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        key = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if key in seen and tensor.numel():
            tensor = tensor.clone()
        seen.add((tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes()))
        out[name] = tensor
    return out


def _json_text(config: tp.Dict[str, tp.Any]) -> str:
    return json.dumps(config, indent=2, sort_keys=True, allow_nan=False) + '\n'


def write_directory(package: ExtensionPackage, directory: PathLike) -> Path:
    """Write `package` as an extension directory, atomically (a sibling folder renamed into place)."""
    with atomic_directory(directory) as tmp:
        files = {}
        for part, state in package.tensors.items():
            name = f'{part}.safetensors'
            safetensors.torch.save_file(_separate_storages(state), str(tmp / name))
            files[name] = file_sha256(tmp / name)
        for part, text in package.texts.items():
            name = f'{part}.yaml'
            (tmp / name).write_text(text, encoding='utf-8')
            files[name] = file_sha256(tmp / name)
        (tmp / CONFIG_NAME).write_text(_json_text({**package.config, 'files': files}), encoding='utf-8')
    return Path(directory)


def write_file(package: ExtensionPackage, path: PathLike) -> Path:
    """Write `package` as one `.safetensors` file, atomically (config in its metadata header)."""
    tensors: StateDict = {}
    digests = {}
    for part, state in package.tensors.items():
        state = _separate_storages(state)
        digests[part] = tensors_sha256(state)
        tensors.update({f'{part}.{name}': tensor for name, tensor in state.items()})
    config = {**package.config, 'texts': dict(package.texts), 'tensors_sha256': digests}
    data = safetensors.torch.save(tensors, metadata={'format': FORMAT, METADATA_KEY: json.dumps(config)})
    return atomic_write_bytes(path, data)


# ---- reading ---------------------------------------------------------------------------------

def _is_safetensors(path: Path) -> bool:
    """safetensors files start with the 8-byte length of a JSON header that opens with '{'."""
    with open(path, 'rb') as file:
        head = file.read(9)
    return len(head) == 9 and head[8:9] == b'{' and int.from_bytes(head[:8], 'little') < path.stat().st_size


def _is_torch_zip(path: Path) -> bool:
    """`torch.save` writes a zip archive."""
    with open(path, 'rb') as file:
        return file.read(4) == b'PK\x03\x04'


def kind_of(path: PathLike) -> tp.Optional[str]:
    """'directory', 'file' or 'legacy' for an extension at `path`, None for anything else.

    Looks only at names and headers, never loads weights (a legacy file is recognised by its
    suffix-independent torch zip layout and checked fully when read).
    """
    path = Path(path)
    if path.is_dir():
        return 'directory' if (path / CONFIG_NAME).is_file() else None
    if not path.is_file() or path.stat().st_size == 0:
        return None
    if _is_safetensors(path):
        try:
            with safetensors.safe_open(str(path), framework='pt') as file:
                return 'file' if (file.metadata() or {}).get('format') == FORMAT else None
        except Exception as error:
            raise CheckpointError(f"{path} is not a readable safetensors file ({error}): it may be truncated; "
                                  "use another copy.") from None
    if not _is_torch_zip(path):
        return None
    try:
        package = read_torch_file(path, 'extension file', mmap=True)
    except UnsafeFileError:
        return None  # not ours: our files never need unpickling
    return 'legacy' if isinstance(package, dict) and package.get('format') == LEGACY_FORMAT else None


def _parse_config(text: str, where: str) -> tp.Dict[str, tp.Any]:
    try:
        config = json.loads(text)
    except ValueError as error:
        raise CheckpointError(f"{where} is not valid JSON ({error}): the file is damaged; use another copy.") from None
    if not isinstance(config, dict) or config.get('format') != FORMAT:
        raise CheckpointError(f"{where} is not an audiocraft-ext extension config (format "
                              f"{config.get('format') if isinstance(config, dict) else None!r}).")
    version = config.get('format_version')
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{where} has format version {version!r}, newer than this audiocraft-ext reads "
                              f"({FORMAT_VERSION}): upgrade audiocraft-ext.")
    missing = [key for key in ('base', 'extension', 'name', 'max_duration') if key not in config]
    if missing:
        raise CheckpointError(f"{where} lacks {missing}: the file is incomplete; use another copy.")
    max_duration = config['max_duration']
    if isinstance(max_duration, bool) or not isinstance(max_duration, (int, float)) \
            or not math.isfinite(max_duration) or max_duration <= 0:
        raise CheckpointError(f"{where} has max_duration={max_duration!r}, not a positive number of seconds: "
                              "the file is damaged or was edited; use another copy, or set it to the base's "
                              "(30 for MusicGen) in its config.")
    return config


def read_config(path: PathLike) -> tp.Dict[str, tp.Any]:
    """The config of an extension (directory, file or legacy file), without reading its weights."""
    path = Path(path)
    kind = kind_of(path)
    if kind == 'directory':
        return _parse_config((path / CONFIG_NAME).read_text(encoding='utf-8'), str(path / CONFIG_NAME))
    if kind == 'file':
        with safetensors.safe_open(str(path), framework='pt') as file:
            return _parse_config(file.metadata()[METADATA_KEY], f'the metadata of {path}')
    if kind == 'legacy':
        return legacy_package(read_torch_file(path, 'extension file', mmap=True), str(path)).config
    raise CheckpointError(f"{path} is not an extension written by ExtendedMusicGen.save (expected a directory "
                          f"with {CONFIG_NAME}, a .safetensors file or a legacy .pt file).")


def parameter_counts(path: PathLike) -> tp.Dict[str, int]:
    """Number of values per part ('extension', 'base_lm', 'compression'), from tensor headers only."""
    path = Path(path)
    kind = kind_of(path)
    if kind == 'legacy':
        package = legacy_package(read_torch_file(path, 'extension file', mmap=True), str(path))
        return {part: sum(t.numel() for t in state.values()) for part, state in package.tensors.items()}
    files = ({part: path / f'{part}.safetensors' for part in PARTS if (path / f'{part}.safetensors').is_file()}
             if kind == 'directory' else {'': path})
    counts: tp.Dict[str, int] = {}
    for part, file in files.items():
        with safetensors.safe_open(str(file), framework='pt') as handle:
            for name in handle.keys():
                key = part or name.partition('.')[0]
                counts[key] = counts.get(key, 0) + math.prod(handle.get_slice(name).get_shape())
    return counts


def _check_finite(package: ExtensionPackage, where: str) -> None:
    bad = [f'{part}.{name}' for part, state in package.tensors.items() for name, tensor in state.items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        listed = ', '.join(bad[:5]) + (f' and {len(bad) - 5} more' if len(bad) > 5 else '')
        raise IntegrityError(f"{where} holds NaN or infinite weights in {listed}: the model that was saved "
                             "had diverged, or the file is damaged. Use another checkpoint (e.g. an earlier epoch).")


def _read_directory(path: Path) -> ExtensionPackage:
    config = _parse_config((path / CONFIG_NAME).read_text(encoding='utf-8'), str(path / CONFIG_NAME))
    files = config.pop('files', None)
    if not isinstance(files, dict) or 'extension.safetensors' not in files:
        raise CheckpointError(f"{path / CONFIG_NAME} lists no extension.safetensors: the directory is incomplete.")
    package = ExtensionPackage(config)
    for name, expected in sorted(files.items()):
        file = path / name
        if Path(name).name != name or not file.is_file():
            raise IntegrityError(f"{path} lacks {name}, listed in {CONFIG_NAME}: the directory is incomplete; "
                                 "download or copy it again.")
        found = file_sha256(file)
        if found != expected:
            raise IntegrityError(f"{file} does not match the sha256 in {CONFIG_NAME} (expected {expected}, found "
                                 f"{found}): it was changed or damaged in transfer; download or copy it again.")
        part, suffix = name.rsplit('.', 1)
        if suffix == 'safetensors' and part in PARTS:
            try:
                package.tensors[part] = safetensors.torch.load_file(str(file))
            except Exception as error:
                raise CheckpointError(f"{file} is not a readable safetensors file ({error}).") from None
        elif suffix == 'yaml' and part in TEXT_PARTS:
            package.texts[part] = file.read_text(encoding='utf-8')
    return package


def _read_file(path: Path) -> ExtensionPackage:
    try:
        with safetensors.safe_open(str(path), framework='pt') as file:
            config = _parse_config(file.metadata()[METADATA_KEY], f'the metadata of {path}')
            tensors = {name: file.get_tensor(name) for name in file.keys()}
    except (CheckpointError, IntegrityError):
        raise
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable safetensors file ({error}): it may be truncated; "
                              "use another copy.") from None
    digests = config.pop('tensors_sha256', {})
    package = ExtensionPackage(config, texts=dict(config.pop('texts', {})))
    for name, tensor in tensors.items():
        part, _, key = name.partition('.')
        package.tensors.setdefault(part, {})[key] = tensor
    if set(package.tensors) != set(digests):
        raise IntegrityError(f"{path} holds the parts {sorted(package.tensors)} but its metadata lists "
                             f"{sorted(digests)}: the file is damaged; use another copy.")
    for part, state in package.tensors.items():
        if tensors_sha256(state) != digests[part]:
            raise IntegrityError(f"The {part} weights in {path} do not match the sha256 in its metadata: the file "
                                 "was changed or damaged in transfer; download or copy it again.")
    return package


def legacy_package(pkg: tp.Any, where: str) -> ExtensionPackage:
    """An `ExtensionPackage` from the dict of a version-1 `.pt` file (`format_version` 1)."""
    if not isinstance(pkg, dict) or pkg.get('format') != LEGACY_FORMAT:
        raise CheckpointError(f"{where} was not written by ExtendedMusicGen.save.")
    try:
        base, extension = pkg['base'], pkg['extension']
        config = {'format': FORMAT, 'format_version': FORMAT_VERSION, 'name': pkg['name'],
                  'max_duration': pkg['max_duration'], 'library_version': pkg.get('audiocraft_ext_version'),
                  'base': {'reference': base['reference'], 'hash': base['hash']},
                  'extension': dict(extension['config']), 'generation': {}}
        package = ExtensionPackage(config, tensors={'extension': dict(extension['state'])})
        if 'lm_state' in base:
            package.tensors['base_lm'] = dict(base['lm_state'])
            package.texts['base_lm'] = base['lm_cfg']
            compression = base['compression']
            if 'pretrained' in compression:
                config['compression'] = {'pretrained': compression['pretrained']}
            else:
                package.tensors['compression'] = dict(compression['best_state'])
                package.texts['compression'] = compression['xp.cfg']
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{where} is an incomplete extension file (missing {error}): use another copy.") from None
    return package


def read(path: PathLike) -> ExtensionPackage:
    """Read and check an extension (directory, `.safetensors` file, or legacy `.pt` file)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Extension not found: {path}. Check the path.")
    if not path.is_dir():
        check_readable_file(path, 'extension file')
    kind = kind_of(path)
    if kind == 'directory':
        package = _read_directory(path)
    elif kind == 'file':
        package = _read_file(path)
    elif kind == 'legacy':
        package = legacy_package(read_torch_file(path, 'extension file'), str(path))
    else:
        if path.is_file() and _is_torch_zip(path):
            read_torch_file(path, 'extension file')  # a file that needs unpickling gets that error
        raise CheckpointError(f"{path} was not written by ExtendedMusicGen.save (expected a directory with "
                              f"{CONFIG_NAME}, a .safetensors file or a legacy .pt file). For a plain MusicGen "
                              "use ExtendedMusicGen.from_base(path).")
    if 'extension' not in package.tensors:
        raise IntegrityError(f"{path} holds no extension weights: the file is incomplete; use another copy.")
    if package.texts.keys() - package.tensors.keys():
        raise IntegrityError(f"{path} has a config text without its weights: the file is incomplete.")
    _check_finite(package, str(path))
    return package

