"""AudioCraft dataset manifests: where a split's manifest is, how many files it lists, and
evaluation splits whose size the config leaves unset.

AudioCraft's `AudioDataset` cuts `segment_duration` seconds from a file it draws at random for
every item, and needs `num_samples` to know how many items a split has; with `num_samples: null`
its loader has no length and the evaluate stage fails. For the valid, evaluate and generate
splits the solver reads an unset size as "every file once": `num_samples` becomes the number of
files in the manifest and item i is a segment of file i (`EachFileOnce`), at a position seeded
by i as AudioCraft seeds it, so two evaluations score the same audio.
"""
import gzip
from pathlib import Path
import typing as tp

from audiocraft.data.audio_dataset import AudioMeta

EVALUATION_SPLITS = ('valid', 'evaluate', 'generate')


def manifest_file(value: tp.Union[str, Path]) -> Path:
    """The manifest a `datasource.SPLIT` value names: a `data.jsonl[.gz]` file or its folder."""
    path = Path(value)
    if path.is_dir():
        candidates = [path / 'data.jsonl', path / 'data.jsonl.gz']
        path = next((c for c in candidates if c.exists()), candidates[0])
    return path


def count_entries(path: Path) -> int:
    """Number of audio files a manifest lists (non-empty lines)."""
    opener = gzip.open if path.suffix == '.gz' else open
    with opener(path, 'rt') as file:
        return sum(1 for line in file if line.strip())


class EachFileOnce:
    """`AudioDataset.sample_file` for a split of unset size: item i is a segment of file i.

    Args:
        meta (list of AudioMeta): the dataset's files.
    """
    def __init__(self, meta: tp.List[AudioMeta]):
        self.meta = meta

    def __call__(self, index: int, rng: tp.Any) -> AudioMeta:
        return self.meta[index % len(self.meta)]


def visit_each_file_once(dataset: tp.Any) -> None:
    """Make an `AudioDataset` (segment mode) yield one segment of each file, in file order."""
    dataset.sample_file = EachFileOnce(dataset.meta)
