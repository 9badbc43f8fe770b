"""What keeps a training run from losing work or writing a broken model.

- `RunLock`: one training run per experiment folder (two runs with the same signature would
  overwrite each other's checkpoints). Dora 0.1 has no such lock; filelock takes it.
- `check_manifests`: before training, every audio file of every split exists and is readable,
  and (music datasets) has a sidecar `NAME.json` with a description; errors name the file,
  instead of failing later inside a DataLoader worker (or training on empty conditions).
- `NonFiniteStepError` / `check_finite_step`: a NaN or infinite loss or gradient never reaches
  the optimizer, so it never reaches a checkpoint.
- `save_checkpoint_atomically`: the solver's checkpoints go through `atomic_save` (temporary
  file, fsync, rename). AudioCraft's own save (flashy's `write_and_rename`) renames too but never
  fsyncs, so after a crash of the machine the renamed file can be empty on some file systems.
"""
import json
import logging
import math
import os
from pathlib import Path
import socket
import typing as tp

import filelock
import torch

from ..data.manifests import count_entries, manifest_file
from ..io.atomic import atomic_torch_save, atomic_write_text

logger = logging.getLogger(__name__)

LOCK_NAME = 'training.lock'


class RunLockedError(RuntimeError):
    """Another process is training the same experiment (same folder, i.e. same signature)."""


class RunLock:
    """An exclusive lock on an experiment folder, held while a training run is alive.

    `filelock.FileLock` on `folder/training.lock`: `flock`, which the kernel releases when the
    process dies in any way (SIGKILL included), so a lock is never stale. On file systems without
    `flock` (some network file systems) filelock falls back to a marker file with the holder's pid
    and host, which a contender on the same host removes once that process is gone. The holder
    writes its host and pid to `training.lock.holder`, for the error message of the next run.
    """
    def __init__(self, folder: tp.Union[str, Path]):
        self.path = Path(folder) / LOCK_NAME
        self.holder_path = self.path.with_name(LOCK_NAME + '.holder')
        self._lock = filelock.FileLock(str(self.path))

    def _holder(self) -> str:
        try:
            return self.holder_path.read_text().strip() or 'unknown process'
        except OSError:
            return 'unknown process'

    def acquire(self) -> 'RunLock':
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            raise RunLockedError(
                f"Another training run holds {self.path} ({self._holder()}): two runs with the same signature would "
                "overwrite each other's checkpoints. Wait for it to finish or stop it; to train a second "
                "experiment, change an override (e.g. label=run2) or dora.dir.") from None
        atomic_write_text(self.holder_path, f'host={socket.gethostname()} pid={os.getpid()}\n')
        return self

    def release(self) -> None:
        if self._lock.is_locked:
            self.holder_path.unlink(missing_ok=True)
            self._lock.release()

    def __enter__(self) -> 'RunLock':
        return self.acquire()

    def __exit__(self, *exc: tp.Any) -> None:
        self.release()


def remove_stale_temporaries(folder: tp.Union[str, Path]) -> tp.List[Path]:
    """Remove checkpoint temporaries that a killed save left behind (only call under the run lock)."""
    removed = []
    folder = Path(folder)
    for pattern in ('.checkpoint*.tmp', 'checkpoint*.th.tmp'):
        for path in folder.glob(pattern):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        logger.info("Removed %d unfinished checkpoint file(s) of an interrupted save: %s",
                    len(removed), ', '.join(p.name for p in removed))
    return removed


def save_checkpoint_atomically(state: tp.Any, checkpoint_path: Path, is_sharded: bool = False) -> None:
    """Drop-in for `audiocraft.utils.checkpoint._safe_save_checkpoint` (non-sharded: FSDP is refused)."""
    assert not is_sharded, "ExtendedMusicGenSolver never shards checkpoints"
    atomic_torch_save(state, checkpoint_path)


# ---- data checks ------------------------------------------------------------------------------
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
        import soundfile
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


# ---- non-finite steps -------------------------------------------------------------------------
class NonFiniteStepError(FloatingPointError):
    """The loss or the gradients of a training step are NaN or infinite; the step was not applied."""


def nonfinite_message(what: str, epoch: int, step: int) -> str:
    return (f"Non-finite {what} at epoch {epoch}, step {step}: the step was not applied, so the weights and "
            "the last checkpoint are unchanged. Lower optim.lr, keep optim.max_norm clipping on, use "
            "autocast_dtype=bfloat16 or autocast=false instead of float16, check the data; then rerun the "
            "same command to resume from the last checkpoint (or set skip_nonfinite_steps=N to skip up to N "
            "such steps per epoch).")


def gradients_finite(parameters: tp.Iterable[torch.nn.Parameter]) -> bool:
    flags = [torch.isfinite(p.grad).all() for p in parameters if p.grad is not None]
    return bool(torch.stack(flags).all()) if flags else True


def loss_finite(loss: torch.Tensor) -> bool:
    value = loss.detach()
    return bool(torch.isfinite(value).all()) if value.numel() else True


def all_ranks_agree_finite(finite: bool) -> bool:
    """False if any rank saw a non-finite value (every rank must skip the same steps)."""
    import flashy
    if flashy.distrib.world_size() == 1:
        return finite
    return flashy.distrib.average_metrics({'bad': 0.0 if finite else 1.0})['bad'] == 0.0


def check_extension_config(num_additional_layers: tp.Any, extension_scale: tp.Any) -> tp.Tuple[int, float]:
    """`extended_model.*` values from the config, as the types ExtendedLMModel takes, with config-named errors."""
    if isinstance(num_additional_layers, bool) or not isinstance(num_additional_layers, int) \
            or num_additional_layers <= 0:
        raise ValueError(f"extended_model.num_additional_layers={num_additional_layers!r}: use a positive integer "
                         "(the number of new layers, e.g. extended_model.num_additional_layers=12).")
    try:
        scale = float(extension_scale)
    except (TypeError, ValueError):
        scale = math.nan
    if isinstance(extension_scale, bool) or not math.isfinite(scale) or scale < 0:
        raise ValueError(f"extended_model.extension_scale={extension_scale!r} is out of range: use a finite "
                         "number >= 0 (1.0 trains the new layers at full strength; 0.0 gives the base model).")
    return num_additional_layers, scale


# Loudness (ITU-R BS.1770, torchaudio's `Loudness`) is measured over 400 ms blocks: shorter audio fails.
LOUDNESS_MIN_SECONDS = 0.4


def check_generate_durations(cfg: tp.Any) -> None:
    """The generate stage's clips are long enough for `generate.audio.strategy=loudness`.

    AudioCraft's sample manager normalises every clip it writes (the prompt, a quarter of the
    generate segment by default, and the generation) and fails on clips under 0.4 s after the
    epoch's training, before its checkpoint; this refuses such a config before training instead.
    """
    if cfg.generate.audio.get('strategy') != 'loudness':
        return
    split = cfg.dataset.get('generate') or {}
    segment = split.get('segment_duration', cfg.dataset.get('segment_duration'))
    if segment is None:
        return
    lm = cfg.generate.lm
    clips = {'generate.lm.gen_duration': lm.get('gen_duration') or segment}
    if lm.get('prompted_samples', True):
        clips['generate.lm.prompt_duration'] = lm.get('prompt_duration') or segment / 4
    for key, seconds in clips.items():
        if float(seconds) < LOUDNESS_MIN_SECONDS:
            raise ValueError(
                f"{key} is {float(seconds):g} s (the generate split's segments are {segment} s), shorter than the "
                f"{LOUDNESS_MIN_SECONDS} s that generate.audio.strategy=loudness needs to measure loudness: "
                "AudioCraft's generate stage would fail after the epoch's training. Set "
                f"dataset.segment_duration={4 * LOUDNESS_MIN_SECONDS:g} or more, {key}={LOUDNESS_MIN_SECONDS} or more, "
                "or generate.audio.strategy=peak.")
