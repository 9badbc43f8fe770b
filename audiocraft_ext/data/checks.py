"""Before training: every audio file the manifests name exists, is readable and has a caption.

Errors name the file and the fix, instead of failing later inside a DataLoader worker (or
training on empty conditions).
"""
import json
from pathlib import Path
import typing as tp

import soundfile

from .manifests import count_entries, manifest_file


class DataCheckError(ValueError):
    """A manifest names audio that cannot be trained on; the message names the file and the fix."""


_SOUNDFILE_SUFFIXES = ('.wav', '.flac', '.ogg')
_MAX_LISTED = 5


def _audio_problem(path: str) -> tp.Optional[str]:
    """Why `path` cannot be read as audio, or None (cheap: stat, a read, a header for wav/flac/ogg)."""
    file = Path(path)
    if not file.exists():
        return 'does not exist'
    if not file.is_file():
        return 'is not a file'
    try:
        with open(file, 'rb') as handle:
            if not handle.read(16):
                return 'is empty (0 bytes)'
    except OSError as error:
        return f'cannot be opened ({error.strerror or error})'
    if file.suffix.lower() in _SOUNDFILE_SUFFIXES:
        try:
            info = soundfile.info(str(file))
        except Exception as error:  # soundfile raises its own LibsndfileError / RuntimeError
            return f'is not readable audio ({str(error).strip() or type(error).__name__})'
        if info.frames <= 0:
            return 'holds no audio frames'
    return None


def _caption_problem(path: str) -> tp.Optional[str]:
    sidecar = Path(path).with_suffix('.json')
    if not sidecar.exists():
        return f'has no caption file {sidecar.name}'
    try:
        data = json.loads(sidecar.read_text(encoding='utf-8'))
    except (OSError, ValueError) as error:
        return f'has an unreadable caption file {sidecar.name} ({error})'
    description = data.get('description') if isinstance(data, dict) else None
    if not isinstance(description, str) or not description.strip():
        return f'has no description in {sidecar.name}'
    return None


def _report(problems: tp.List[str], what: str, fix: str) -> None:
    if not problems:
        return
    listed = '\n  '.join(problems[:_MAX_LISTED])
    more = f'\n  ... and {len(problems) - _MAX_LISTED} more' if len(problems) > _MAX_LISTED else ''
    raise DataCheckError(f"{len(problems)} {what}:\n  {listed}{more}\n{fix}")


def check_datasources(cfg: tp.Any) -> None:
    """Every `datasource.SPLIT` path exists and holds a non-empty manifest (before AudioCraft reads it)."""
    execute_only = cfg.get('execute_only')
    for split, value in cfg.datasource.items():
        if not isinstance(value, str) or (execute_only and split != execute_only):
            continue
        path = manifest_file(value)
        hint = ("set egs_root to a folder written by `audiocraft-ext prepare-data` (with train/, valid/, "
                f"evaluate/, generate/ manifests), or datasource.{split} to a manifest")
        if not path.exists():
            raise DataCheckError(f"datasource.{split}={value}: no manifest at {path}: {hint}.")
        try:
            empty = count_entries(path) == 0
        except OSError as error:
            raise DataCheckError(f"datasource.{split}: cannot read the manifest {path} ({error}): {hint}.") from None
        if empty:
            raise DataCheckError(f"datasource.{split}: the manifest {path} lists no audio file: {hint}.")


def check_manifests(datasets: tp.Mapping[str, tp.Any], audio: bool = True, captions: bool = False) -> int:
    """Check every file the datasets (`AudioDataset`s by split) will read; returns how many.

    Args:
        datasets: split name -> dataset with a `meta` list of `AudioMeta` (AudioCraft's datasets).
        audio (bool): every file exists, is non-empty and readable (wav/flac/ogg: a valid header).
        captions (bool): every file has a sidecar `NAME.json` with a non-empty `description`.
    """
    paths: tp.Dict[str, str] = {}
    for split, dataset in datasets.items():
        for meta in getattr(dataset, 'meta', []):
            paths.setdefault(meta.path, split)
    if audio:
        problems = [f'{path} ({split}) {problem}' for path, split in paths.items()
                    for problem in [_audio_problem(path)] if problem]
        _report(problems, 'audio file(s) named in the manifests cannot be read',
                "Fix or remove them and rewrite the manifests (audiocraft-ext prepare-data checks every "
                "file), or set data_checks.audio=false to let AudioCraft skip bad files at random.")
    if captions:
        problems = [f'{path} ({split}) {problem}' for path, split in paths.items()
                    for problem in [_caption_problem(path)] if problem]
        _report(problems, 'audio file(s) have no caption',
                "Write their NAME.json sidecars (audiocraft-ext prepare-data --captions captions.csv), or set "
                "data_checks.captions=false to train them with empty descriptions on purpose.")
    return len(paths)
