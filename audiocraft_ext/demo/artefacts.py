"""The demo's cache: one folder per artefact, named by a hash of every parameter that changes it.

    <cache>/data-<key>/    the two-domain dataset: excerpts of real scores (`make_data`), and the
                           replay prompts: the captions the base was trained on
    <cache>/base-<key>/    the pretrained tiny MusicGen in AudioCraft's exported layout (`bases.pretrained_base`)

A folder counts as built once its `done.json` (the parameters, timings) is written, last.
"""
import hashlib
import json
from pathlib import Path
import shutil
import typing as tp

import numpy as np
import soundfile
import torch

from .. import CONFIG_DIR
from ..data.splits import SPLITS
from ..data.score_dataset import write_score_dataset
from ..data.score_domains import DOMAINS, SCORE_SET_VERSION
from ..io.atomic import atomic_write_text
from .arguments import Sizes
from .progress import Steps

DEMO_VERSION = 3  # of what the demo builds: a new one rebuilds the cached data
REPLAY_PROMPTS = 'replay_prompts.txt'  # in the data folder


def key(payload: tp.Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def config_text(name: str) -> str:
    """The text of `configs/solver/NAME.yaml` (part of the keys: a config change rebuilds)."""
    return (CONFIG_DIR / 'solver' / f'{name}.yaml').read_text()


def done(folder: Path) -> tp.Optional[dict]:
    marker = folder / 'done.json'
    return json.loads(marker.read_text()) if marker.exists() else None


def mark_done(folder: Path, info: dict) -> None:
    (folder / 'done.json').write_text(json.dumps(info, indent=2))


def fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def reuse_or_clear(folder: Path, artefact: Path, no_cache: bool, steps: Steps) -> tp.Optional[dict]:
    """The cached step's info (with `cached: True`) if `folder` holds a finished one, else an empty folder."""
    info = done(folder)
    if info and not no_cache:
        steps.print(f"      cached: {artefact}")
        return {**info, 'cached': True}
    fresh(folder)
    return None


def make_data(cache: Path, sizes: Sizes, seed: int, sample_rate: int, no_cache: bool) -> Path:
    """Both domains (and an `all` manifest for the codec), cached; returns the data root.

    ``old`` is Bach chorales, ``new`` Irish dance tunes, rendered with FluidSynth from the
    shipped score set (`data.score_domains`); a new version of that set makes a new folder.
    """
    params = {'version': DEMO_VERSION, 'scores': SCORE_SET_VERSION, 'clips': sizes.clips,
              'duration': sizes.duration, 'seed': seed, 'sample_rate': sample_rate}
    root = cache / f'data-{key(params)}'
    if done(root) and not no_cache:
        return root
    fresh(root)
    for domain in DOMAINS:
        write_score_dataset(root, domain, num_clips=sizes.clips, duration=sizes.duration,
                            sample_rate=sample_rate, seed=seed)
    for split in SPLITS:  # both domains, for the codec's checks
        lines = []
        for domain in DOMAINS:
            lines += (root / 'egs' / domain / split / 'data.jsonl').read_text().splitlines()
        atomic_write_text(root / 'egs' / 'all' / split / 'data.jsonl', '\n'.join(lines) + '\n')
    atomic_write_text(root / REPLAY_PROMPTS, '\n'.join(base_captions(root)) + '\n')
    mark_done(root, params)
    return root


def base_captions(root: Path) -> tp.List[str]:
    """The distinct captions of the old domain's train clips: what the base was trained on, the
    prompts of the replay set (`replay.prompts`), as a user gives the captions their base knows."""
    captions = []
    for sidecar in sorted((root / 'audio' / 'old' / 'train').glob('*.json')):
        caption = json.loads(sidecar.read_text())['description']
        if caption not in captions:
            captions.append(caption)
    return captions


def split_paths(root: Path, domains: tp.Sequence[str], split: str) -> tp.List[str]:
    """The audio files of `split` of each of `domains`, in manifest order."""
    lines = [line for domain in domains
             for line in (root / 'egs' / domain / split / 'data.jsonl').read_text().splitlines() if line.strip()]
    return [json.loads(line)['path'] for line in lines]


def read_clips(paths: tp.Sequence[tp.Union[str, Path]]) -> tp.List[np.ndarray]:
    """Each file of `paths` as a mono float32 array (channels averaged)."""
    return [soundfile.read(str(path), dtype='float32', always_2d=True)[0].mean(axis=1) for path in paths]


def stack_clips(wavs: tp.Sequence[np.ndarray], length: tp.Optional[int] = None) -> torch.Tensor:
    """[B, 1, T] of `wavs`, cut to the shortest (or to `length` samples)."""
    length = min([len(w) for w in wavs] + ([length] if length else []))
    return torch.from_numpy(np.stack([w[:length] for w in wavs]))[:, None]
