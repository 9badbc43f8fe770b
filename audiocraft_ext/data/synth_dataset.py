"""Synthetic data on disk: the two-domain dataset in AudioCraft's layout, and a folder of tones.

`write_dataset` renders a domain's clips (`synth_domains`, `synthesizer`) into::

    OUT/audio/<domain>/<split>/<domain>_<split>_<index>.wav   mono PCM_16
    OUT/audio/<domain>/<split>/<domain>_<split>_<index>.json  sidecar, MusicInfo fields
    OUT/egs/<domain>/<split>/data.jsonl                        one AudioMeta per line
    OUT/egs/<domain>/synth.json                                the parameters that made it

Train on it with ``dset=audio/egs egs_root=OUT/egs/<domain>``. Manifests hold absolute paths
(AudioCraft resolves relative ones against the directory a command starts from). The same
arguments give byte-identical files.

`write_tone_folder` writes what a user hands `prepare-data`: a flat folder of short sine tones
and a captions.csv (`audiocraft-ext prepare-data --synthetic N`, the debug config, the tests).

Every file is written atomically. Only numpy, soundfile and the standard library are imported,
not AudioCraft's `save_audio_meta`: `audiocraft-ext make-synth-data --out D` (2 x 40 clips of
8 s) takes 6-9 s, and `python -c "import audiocraft.data.audio_dataset"` alone 30-34 s (both on
the shared 2-core development machine, load 3-6). The manifest lines are written here as
`save_audio_meta` writes them (a test checks the bytes).
"""
import csv
import io
import json
from pathlib import Path
import typing as tp

import numpy as np
import soundfile

from ..io.atomic import atomic_path, atomic_write_text
from .splits import SplitSize, split_sizes
from .synth_domains import DOMAIN_SPECS, SYNTH_VERSION, clip_metadata, keyed_rng, sample_clip_spec
from .synthesizer import render_clip, sine_tone

# The sizes of the splits after the first (fractions of the clips); train takes the rest.
DEFAULT_SPLITS: tp.Tuple[tp.Tuple[str, float], ...] = (
    ('train', 0.7), ('valid', 0.1), ('evaluate', 0.1), ('generate', 0.1))
TONE_MOODS = ('calm', 'bright', 'dark', 'playful')
Splits = tp.Union[tp.Mapping[str, SplitSize], tp.Iterable[tp.Tuple[str, SplitSize]]]


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


def write_dataset(out_dir: tp.Union[str, Path], domain: str, num_clips: tp.Optional[int] = 40,
                  duration: float = 8.0, sample_rate: int = 16000, seed: int = 0,
                  splits: Splits = DEFAULT_SPLITS,
                  progress: tp.Optional[tp.Callable[[int, int], None]] = None
                  ) -> tp.Dict[str, Path]:
    """Render a domain's clips and write them in AudioCraft's dataset layout (see module doc).

    Args:
        out_dir: dataset root; audio goes to `out_dir/audio/<domain>`, manifests to
            `out_dir/egs/<domain>/<split>/data.jsonl`. Existing files of the same names are
            replaced; an existing manifest is replaced, not appended to.
        domain: 'old' or 'new' (see `synth_domains.DOMAIN_SPECS`).
        num_clips: clips over all splits (None when every split size is a count).
        duration: seconds per clip.
        sample_rate: in Hz, e.g. 16000 or 32000.
        seed: everything is a function of (seed, domain, split, clip index).
        splits: (name, size) pairs or a mapping; see `splits.split_sizes`.
        progress: called as progress(done, total) after each clip.
    Returns:
        {split: folder holding its data.jsonl}, the value for `datasource.<split>`.
    """
    if domain not in DOMAIN_SPECS:
        raise ValueError(f"Unknown domain {domain!r}; expected one of {list(DOMAIN_SPECS)}.")
    if duration <= 0 or sample_rate <= 0:
        raise ValueError(f"duration and sample_rate must be positive, got {duration}, {sample_rate}.")
    sizes = split_sizes(num_clips, splits)
    out_dir = Path(out_dir).expanduser().resolve()
    egs_root = out_dir / 'egs' / domain
    total, done = sum(sizes.values()), 0
    manifests: tp.Dict[str, Path] = {}
    for split, size in sizes.items():
        audio_dir = out_dir / 'audio' / domain / split
        audio_dir.mkdir(parents=True, exist_ok=True)
        lines = []
        for index in range(size):
            name = f'{domain}_{split}_{index:04d}'
            spec = sample_clip_spec(domain, keyed_rng(seed, domain, split, index))
            wav = render_clip(spec, duration, sample_rate)
            path = audio_dir / f'{name}.wav'
            write_wav(path, wav, sample_rate)
            atomic_write_text(path.with_suffix('.json'),
                              json.dumps(clip_metadata(spec, name), indent=2, sort_keys=True) + '\n')
            lines.append(audio_meta_line(path, len(wav) / sample_rate, sample_rate))
            done += 1
            if progress is not None:
                progress(done, total)
        manifests[split] = egs_root / split
        atomic_write_text(manifests[split] / 'data.jsonl', ''.join(lines))
    params = {'version': SYNTH_VERSION, 'domain': domain, 'num_clips': total, 'splits': sizes,
              'duration': duration, 'sample_rate': sample_rate, 'seed': seed}
    atomic_write_text(egs_root / 'synth.json', json.dumps(params, indent=2, sort_keys=True) + '\n')
    return manifests


def write_tone_folder(audio_dir: tp.Union[str, Path], num_files: int = 8, duration: float = 2.0,
                      sample_rate: int = 16000, seed: int = 0) -> tp.List[Path]:
    """Sine tones `tone_NNN.wav` with a `captions.csv` ("a calm sine tone at 147 hz"), as a user's
    folder for `prepare_data`.

    Args:
        audio_dir: the folder to write (created if needed; files of the same names are replaced).
        num_files: how many tones.
        duration: seconds per tone.
        sample_rate: in Hz.
        seed: draws each tone's pitch, one of 24 semitones from 110 Hz.
    Returns:
        the WAV files, in order.
    """
    audio_dir = Path(audio_dir)
    audio_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths, rows = [], []
    for index in range(num_files):
        pitch = 110.0 * 2 ** (int(rng.integers(0, 24)) / 12)
        path = audio_dir / f'tone_{index:03d}.wav'
        write_wav(path, sine_tone(pitch, duration, sample_rate), sample_rate)
        paths.append(path)
        mood = TONE_MOODS[index % len(TONE_MOODS)]
        rows.append({'file': path.name, 'description': f'a {mood} sine tone at {pitch:.0f} hz',
                     'genre': 'synthetic', 'moods': mood, 'keywords': 'sine, tone'})
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=['file', 'description', 'genre', 'moods', 'keywords'])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(audio_dir / 'captions.csv', table.getvalue())
    return paths
