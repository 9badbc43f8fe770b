"""From a folder of audio and a captions table to AudioCraft's dataset layout.

AudioCraft's music datasets are folders of jsonl manifests (one `AudioMeta` per line, written by
`audiocraft.data.audio_dataset`), and every audio file has a sidecar `.json` next to it with its
music metadata (`description`, `genre`, `moods`, `keywords`, ...; see `MusicInfo`).
`prepare_data` writes both:

    OUT/train/data.jsonl, OUT/valid/data.jsonl, OUT/evaluate/data.jsonl, OUT/generate/data.jsonl
    AUDIO_DIR/**/NAME.json   (sidecars, merged with any that already exist)

Train on it with `dset=audio/egs egs_root=OUT`.
"""
import csv
import io
import json
import math
from pathlib import Path
import typing as tp

from ..io.atomic import atomic_path, atomic_write_text
from .splits import SPLITS, deal, split_sizes

AUDIO_EXTENSIONS = ('.wav', '.mp3', '.flac', '.ogg', '.m4a')
# Every field MusicDataset requires in a sidecar (`info_fields_required`), with empty defaults.
METADATA_DEFAULTS: tp.Dict[str, tp.Any] = {
    'title': '', 'artist': '', 'key': '', 'bpm': '', 'genre': '', 'moods': [], 'keywords': [],
    'description': '', 'name': '', 'instrument': '',
}
LIST_FIELDS = ('moods', 'keywords')
T = tp.TypeVar('T')


class DataPreparationError(ValueError):
    """The audio folder or the captions cannot make a dataset; the message says what to fix."""


def read_captions(path: tp.Union[str, Path]) -> tp.Dict[str, tp.Dict[str, tp.Any]]:
    """Captions table (CSV with a header) -> {file key: metadata}.

    Columns: `file` (path relative to the audio folder, or file name, or stem) and `description`
    (or `caption`), plus any of `genre`, `moods`, `keywords` (comma or semicolon separated),
    `title`, `artist`, `key`, `bpm`, `instrument`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataPreparationError(f"Captions file not found: {path}.")
    try:
        text = path.read_text(encoding='utf-8-sig')
    except UnicodeDecodeError as error:
        raise DataPreparationError(
            f"{path} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start}): captions "
            f"are read as UTF-8. Save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name} > utf8.csv` for a "
            "Latin-1 (Windows-1252) file.") from None
    with io.StringIO(text, newline='') as file:
        reader = csv.DictReader(file)
        columns = [name.strip().lower() for name in (reader.fieldnames or [])]
        if 'file' not in columns or not ({'description', 'caption'} & set(columns)):
            raise DataPreparationError(f"{path}: expected a header with a 'file' column and a 'description' "
                                       f"(or 'caption') column, found {columns}.")
        captions: tp.Dict[str, tp.Dict[str, tp.Any]] = {}
        for row in reader:
            row = {(key or '').strip().lower(): (value or '').strip() for key, value in row.items()}
            meta: tp.Dict[str, tp.Any] = {}
            for key, value in row.items():
                if key == 'caption':
                    key = 'description'
                if key in LIST_FIELDS:
                    meta[key] = [part.strip() for part in value.replace(';', ',').split(',') if part.strip()]
                elif key in METADATA_DEFAULTS:
                    meta[key] = value
            captions[row['file']] = meta
    return captions


def _caption_for(audio: Path, audio_dir: Path, captions: tp.Dict[str, tp.Dict[str, tp.Any]]):
    relative = audio.relative_to(audio_dir)
    for key in (relative.as_posix(), audio.name, relative.with_suffix('').as_posix(), audio.stem):
        if key in captions:
            return captions[key]
    return None


def sidecar_contents(audio_files: tp.Sequence[Path], audio_dir: Path,
                     captions: tp.Optional[tp.Dict[str, tp.Dict[str, tp.Any]]] = None,
                     allow_missing_captions: bool = False) -> tp.Dict[Path, tp.Dict[str, tp.Any]]:
    """The `NAME.json` to write next to every audio file: its existing sidecar, updated with the captions.

    Only reads: every problem (an unreadable sidecar, a file without caption) is raised before
    anything is written.
    """
    missing = []
    contents = {}
    for audio in audio_files:
        sidecar = audio.with_suffix('.json')
        meta = dict(METADATA_DEFAULTS, name=audio.stem)
        if sidecar.exists():
            try:
                existing = json.loads(sidecar.read_text(encoding='utf-8'))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                raise DataPreparationError(f"{sidecar} is not valid JSON ({error}); fix or delete it.") from None
            if not isinstance(existing, dict):
                raise DataPreparationError(f"{sidecar} does not hold a JSON object; fix or delete it.")
            meta.update(existing)
        caption = _caption_for(audio, audio_dir, captions) if captions is not None else None
        if caption:
            meta.update({key: value for key, value in caption.items() if value not in ('', [])})
        if not meta.get('description'):
            missing.append(audio.relative_to(audio_dir).as_posix())
        contents[sidecar] = meta
    if missing and not allow_missing_captions:
        shown = ', '.join(missing[:10]) + (f' and {len(missing) - 10} more' if len(missing) > 10 else '')
        raise DataPreparationError(f"{len(missing)} audio file(s) have no caption: {shown}. Add them to the captions "
                                   "CSV (column 'file'), or pass --allow-missing-captions to train them "
                                   "with an empty description.")
    return contents


def split_files(files: tp.Sequence[T], valid: float, evaluate: float, seed: int = 0) -> tp.Dict[str, tp.List[T]]:
    """Deterministic random split (`splits.deal`), fractions rounded down; `generate` is the evaluate
    split (prompts and conditions). Every split must get at least one file."""
    hint = (f"({len(files)} usable audio files, valid={valid}, evaluate={evaluate}). "
            "Add audio files (at least 3) or change --valid / --evaluate.")
    fractions = (('train', 1.0), ('valid', float(valid)), ('evaluate', float(evaluate)))
    try:
        sizes = split_sizes(len(files), fractions, rounding=math.floor)
    except ValueError as error:
        raise DataPreparationError(f"{error} {hint}") from None
    splits = deal(files, sizes, seed)
    splits['generate'] = list(splits['evaluate'])
    for name in SPLITS:
        if not splits[name]:
            raise DataPreparationError(f"The {name} split is empty {hint}")
    return splits


def prepare_data(audio_dir: tp.Union[str, Path], out: tp.Union[str, Path],
                 captions: tp.Optional[tp.Union[str, Path]] = None, valid: float = 0.1,
                 evaluate: float = 0.1, seed: int = 0, allow_missing_captions: bool = False,
                 min_duration: float = 0.0) -> tp.Dict[str, Path]:
    """Write the sidecars and the four split manifests; returns {split: manifest path}."""
    from audiocraft.data.audio_dataset import find_audio_files, save_audio_meta
    audio_dir = Path(audio_dir).expanduser().resolve()
    if not audio_dir.is_dir():
        raise DataPreparationError(f"Audio folder not found: {audio_dir}.")
    candidates = sorted(path for path in audio_dir.rglob('*') if path.suffix.lower() in AUDIO_EXTENSIONS)
    if not candidates:
        raise DataPreparationError(f"No audio files ({', '.join(AUDIO_EXTENSIONS)}) under {audio_dir}.")
    caption_table = read_captions(captions) if captions is not None else None
    meta = find_audio_files(audio_dir, exts=list(AUDIO_EXTENSIONS), resolve=True, minimal=True)
    readable = {Path(m.path).resolve() for m in meta}
    unreadable = [path for path in candidates if path.resolve() not in readable]
    if unreadable:
        shown = ', '.join(str(path.relative_to(audio_dir)) for path in unreadable[:10])
        raise DataPreparationError(f"{len(unreadable)} audio file(s) cannot be read: {shown}. Convert or remove "
                                   "them (WAV/FLAC are read without FFmpeg; MP3/OGG/M4A need it).")
    short = [m for m in meta if m.duration < min_duration or m.duration <= 0]
    if short:
        raise DataPreparationError(f"{len(short)} audio file(s) shorter than {min_duration} s, e.g. {short[0].path}.")
    sidecars = sidecar_contents([Path(m.path) for m in meta], audio_dir, caption_table, allow_missing_captions)
    splits = split_files(meta, valid, evaluate, seed)
    # Every input is checked: now write, each file atomically (a failure leaves the old one intact).
    for sidecar, content in sidecars.items():
        atomic_write_text(sidecar, json.dumps(content, indent=1) + '\n')
    out = Path(out)
    manifests = {}
    for name in SPLITS:
        manifests[name] = out / name / 'data.jsonl'
        with atomic_path(manifests[name]) as tmp:
            save_audio_meta(tmp, sorted(splits[name]))
    return manifests
