"""AudioCraft's dataset layout on disk, as both generated datasets write it.

The synthetic dataset (`synth_dataset`) and the rendered scores (`score_dataset`) write the same
files; only what a clip sounds like and what its sidecar says differ::

    OUT/audio/<domain>/<split>/<domain>_<split>_<index>.wav   mono PCM_16
    OUT/audio/<domain>/<split>/<domain>_<split>_<index>.json  sidecar, MusicInfo fields
    OUT/egs/<domain>/<split>/data.jsonl                        one AudioMeta per line
    OUT/egs/<domain>/synth.json                                the parameters that made it

Manifests hold absolute paths (AudioCraft resolves relative ones against the directory a command
starts from). Every file is written atomically. Only numpy, soundfile and the standard library
are imported, not AudioCraft (whose import alone takes half a minute on a small machine); the
manifest lines are written as `save_audio_meta` writes them (a test checks the bytes).
"""
from concurrent.futures import ThreadPoolExecutor
import json
from pathlib import Path
import typing as tp
import zlib

import numpy as np
import soundfile

from ..io.atomic import atomic_path, atomic_write_text
from .splits import SplitSize

# The sizes of the splits after the first (fractions of the clips); train takes the rest.
DEFAULT_SPLITS: tp.Tuple[tp.Tuple[str, float], ...] = (
    ('train', 0.7), ('valid', 0.1), ('evaluate', 0.1), ('generate', 0.1))
Splits = tp.Union[tp.Mapping[str, SplitSize], tp.Iterable[tp.Tuple[str, SplitSize]]]
# One clip: its audio ([T] floats in [-1, 1]) and its sidecar.
Clip = tp.Tuple[np.ndarray, tp.Dict[str, tp.Any]]


def keyed_rng(*keys: tp.Union[int, str]) -> np.random.Generator:
    """A generator that depends only on `keys` (strings hashed with a stable CRC), e.g.
    (seed, domain, split, clip index): the same keys draw the same numbers on any machine."""
    entropy = [k % 2 ** 64 if isinstance(k, int) else zlib.crc32(k.encode('utf-8')) for k in keys]
    return np.random.default_rng(entropy)


def write_wav(path: Path, wav: np.ndarray, sample_rate: int) -> None:
    """Write `wav` ([T] floats in [-1, 1]) as mono 16-bit PCM WAV, atomically."""
    with atomic_path(path) as tmp:
        soundfile.write(str(tmp), wav, sample_rate, subtype='PCM_16', format='WAV')


def audio_meta_line(path: Path, duration: float, sample_rate: int) -> str:
    """One manifest line, as `audiocraft.data.audio_dataset.save_audio_meta` writes an `AudioMeta`
    (same keys in the same order; a test checks the bytes), without importing AudioCraft.

    Args:
        path: the audio file.
        duration: its length in seconds.
        sample_rate: its sample rate in Hz.
    """
    meta = {'path': str(path), 'duration': duration, 'sample_rate': sample_rate,
            'amplitude': None, 'weight': None, 'info_path': None}
    return json.dumps(meta) + '\n'


def write_domain(out_dir: Path, domain: str, sizes: tp.Mapping[str, int],
                 make_clip: tp.Callable[[str, int, str], Clip], sample_rate: int,
                 params: tp.Dict[str, tp.Any], workers: int = 1,
                 progress: tp.Optional[tp.Callable[[int, int], None]] = None) -> tp.Dict[str, Path]:
    """Write one domain's clips, sidecars, manifests and parameter file (see module doc).

    Args:
        out_dir: dataset root (absolute).
        domain: the domain's name, in the folder and file names.
        sizes: {split: number of clips}, in order.
        make_clip: make_clip(split, index, name) -> (wav, sidecar); it must depend on its
            arguments only, so that `workers` does not change what is written.
        sample_rate: in Hz.
        params: written to `egs/<domain>/synth.json` (with `splits` set to `sizes`).
        workers: clips made at the same time, in threads (worth it when `make_clip` waits on a
            subprocess); files are still written in order, one at a time.
        progress: called as progress(done, total) after each clip is written.
    Returns:
        {split: folder holding its data.jsonl}, the value for `datasource.<split>`.
    """
    egs_root = out_dir / 'egs' / domain
    jobs = [(split, index, f'{domain}_{split}_{index:04d}')
            for split, size in sizes.items() for index in range(size)]
    lines: tp.Dict[str, tp.List[str]] = {split: [] for split in sizes}
    for split in sizes:
        (out_dir / 'audio' / domain / split).mkdir(parents=True, exist_ok=True)

    def write(job: tp.Tuple[str, int, str], clip: Clip) -> None:
        split, _, name = job
        wav, sidecar = clip
        path = out_dir / 'audio' / domain / split / f'{name}.wav'
        write_wav(path, wav, sample_rate)
        atomic_write_text(path.with_suffix('.json'), json.dumps(sidecar, indent=2, sort_keys=True) + '\n')
        lines[split].append(audio_meta_line(path, len(wav) / sample_rate, sample_rate))
        if progress is not None:
            progress(sum(map(len, lines.values())), len(jobs))

    if workers > 1 and len(jobs) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for job, clip in zip(jobs, pool.map(lambda job: make_clip(*job), jobs)):
                write(job, clip)
    else:
        for job in jobs:
            write(job, make_clip(*job))
    manifests: tp.Dict[str, Path] = {}
    for split in sizes:
        manifests[split] = egs_root / split
        atomic_write_text(manifests[split] / 'data.jsonl', ''.join(lines[split]))
    params = {**params, 'splits': dict(sizes)}
    atomic_write_text(egs_root / 'synth.json', json.dumps(params, indent=2, sort_keys=True) + '\n')
    return manifests
