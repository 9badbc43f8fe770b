"""The demo's audible measure: how new-domain its clips sound (`evaluation.domain_classifier`),
for the base and the extended model, next to held-out real clips of both domains."""
from pathlib import Path
import typing as tp

import torch

from ..evaluation.domain_classifier import fit_domain_classifier
from .artefacts import read_clips, split_paths, stack_clips


def audible_measure(data: Path, clips: tp.Sequence[dict], sample_rate: int, duration: float) -> dict:
    """{'accuracy', 'reference': {'old', 'new'}, 'new': {'base', 'extended'}, 'old': {...}}: mean
    new-domain score (log-odds) of the clips generated for each domain's captions (`clips` as
    `generate_clips` lists them) and of held-out real clips, by a classifier fitted on the two
    domains' train clips cut to the generated `duration`."""
    length = int(duration * sample_rate)

    def split(domain: str, name: str) -> torch.Tensor:
        return stack_clips(read_clips(split_paths(data, (domain,), name)), length)

    classifier = fit_domain_classifier(split('old', 'train'), split('new', 'train'), sample_rate,
                                       held_out=(split('old', 'evaluate'), split('new', 'evaluate')))
    result: dict = {'accuracy': classifier.accuracy, 'reference': classifier.reference}
    for domain in ('new', 'old'):
        result[domain] = {}
        for variant in ('base', 'extended'):
            paths = [clip['path'] for clip in clips if (clip['domain'], clip['variant']) == (domain, variant)]
            result[domain][variant] = float(classifier.score(stack_clips(read_clips(paths), length)).mean())
    return result
