"""The demo's audible measure: how new-domain its clips sound (`evaluation.domain_classifier`),
for the base and the extended model, next to held-out real clips of both domains."""
import json
from pathlib import Path
import typing as tp

import numpy as np
import soundfile
import torch

from ..evaluation.domain_classifier import fit_domain_classifier


def _clips(paths: tp.Sequence[tp.Union[str, Path]], length: tp.Optional[int] = None) -> torch.Tensor:
    """[B, 1, T] mono clips read from `paths`, cut to the shortest (or `length`)."""
    wavs = [soundfile.read(str(path), dtype='float32', always_2d=True)[0].mean(axis=1) for path in paths]
    length = min([len(w) for w in wavs] + ([length] if length else []))
    return torch.from_numpy(np.stack([w[:length] for w in wavs]))[:, None]


def _split(data: Path, domain: str, split: str, length: int) -> torch.Tensor:
    lines = (data / 'egs' / domain / split / 'data.jsonl').read_text().splitlines()
    return _clips([json.loads(line)['path'] for line in lines if line.strip()], length)


def audible_measure(data: Path, clips: tp.Sequence[dict], sample_rate: int, duration: float) -> dict:
    """{'accuracy', 'reference': {'old', 'new'}, 'new': {'base', 'extended'}, 'old': {...}}: mean
    new-domain score (log-odds) of the clips generated for each domain's captions (`clips` as
    `generate_clips` lists them) and of held-out real clips, by a classifier fitted on the two
    domains' train clips cut to the generated `duration`."""
    length = int(duration * sample_rate)
    classifier = fit_domain_classifier(_split(data, 'old', 'train', length), _split(data, 'new', 'train', length),
                                       sample_rate, held_out=(_split(data, 'old', 'evaluate', length),
                                                              _split(data, 'new', 'evaluate', length)))
    result: dict = {'accuracy': classifier.accuracy, 'reference': classifier.reference}
    for domain in ('new', 'old'):
        result[domain] = {}
        for variant in ('base', 'extended'):
            paths = [clip['path'] for clip in clips if (clip['domain'], clip['variant']) == (domain, variant)]
            result[domain][variant] = float(classifier.score(_clips(paths, length)).mean())
    return result
