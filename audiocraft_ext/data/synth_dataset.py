"""Synthetic data on disk: the two-domain dataset in AudioCraft's layout, and a folder of tones.

`write_dataset` renders a domain's clips (`synth_domains`, `synthesizer`) into the layout of
`layout` (audio, sidecars, split manifests, `egs/<domain>/synth.json`). Train on it with
``dset=audio/egs egs_root=OUT/egs/<domain>``. The same arguments give byte-identical files.

`write_tone_folder` writes what a user hands `prepare-data`: a flat folder of short sine tones
and a captions.csv (`audiocraft-ext prepare-data --synthetic N`, the debug config, the tests).

Only numpy, soundfile and the standard library are imported, not AudioCraft:
`audiocraft-ext make-synth-data --out D` (2 x 40 clips of 8 s) takes 6-9 s, and
`python -c "import audiocraft.data.audio_dataset"` alone 30-34 s (both on the shared 2-core
development machine, load 3-6).
"""
import csv
import io
from pathlib import Path
import typing as tp

import numpy as np

from ..io.atomic import atomic_write_text
from .layout import DEFAULT_SPLITS, Splits, audio_meta_line, write_domain, write_wav  # noqa: F401 (re-exported)
from .splits import split_sizes
from .synth_domains import DOMAIN_SPECS, SYNTH_VERSION, clip_metadata, keyed_rng, sample_clip_spec
from .synthesizer import render_clip, sine_tone

TONE_MOODS = ('calm', 'bright', 'dark', 'playful')


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

    def make_clip(split: str, index: int, name: str):
        spec = sample_clip_spec(domain, keyed_rng(seed, domain, split, index))
        return render_clip(spec, duration, sample_rate), clip_metadata(spec, name)

    params = {'version': SYNTH_VERSION, 'domain': domain, 'num_clips': sum(sizes.values()),
              'duration': duration, 'sample_rate': sample_rate, 'seed': seed}
    return write_domain(Path(out_dir).expanduser().resolve(), domain, sizes, make_clip, sample_rate,
                        params, progress=progress)


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
