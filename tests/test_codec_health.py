"""Codec health: code usage is counted right, a collapsed codec is refused, and a k-means refit of
the codebooks brings a codec's code usage on held-out real music back over the thresholds."""
import json
import math

import numpy as np
from omegaconf import OmegaConf
import pytest
import soundfile
import torch

from audiocraft.models import builders
from audiocraft_ext import CONFIG_DIR
from audiocraft_ext.data.score_dataset import write_score_dataset
from audiocraft_ext.models.audiocraft_internals import euclidean_codebook
from audiocraft_ext.models.codec_health import (CodecCollapseError, check_codec_health, code_usage,
                                                codec_usage, refit_codebooks)


def test_code_usage_counts_codes_and_perplexity():
    codes = torch.tensor([[[0, 1, 2, 3, 0, 1, 2, 3], [5, 5, 5, 5, 5, 5, 5, 7]]])  # [B=1, K=2, T=8]
    first, second = code_usage(codes, 8)
    assert (first.used, first.cardinality) == (4, 8)
    assert first.perplexity == pytest.approx(4.0)
    p = np.array([7 / 8, 1 / 8])
    assert second.used == 2
    assert second.perplexity == pytest.approx(math.exp(-(p * np.log(p)).sum()))


@pytest.fixture(scope='module')
def music(tmp_path_factory):
    """Real rendered music of both domains: train clips [B, 1, T] and held-out clips."""
    root = tmp_path_factory.mktemp('music')
    splits = {'train': [], 'evaluate': []}
    for domain in ('old', 'new'):
        write_score_dataset(root, domain, num_clips=12, duration=2.0, sample_rate=16000, seed=0,
                            splits=(('train', 0.5), ('evaluate', 0.5)))
        for split in splits:
            for line in (root / 'egs' / domain / split / 'data.jsonl').read_text().splitlines():
                splits[split].append(soundfile.read(json.loads(line)['path'], dtype='float32')[0])
    return {split: torch.from_numpy(np.stack(wavs))[:, None] for split, wavs in splits.items()}


def demo_codec() -> torch.nn.Module:
    torch.manual_seed(0)
    return builders.get_compression_model(OmegaConf.load(CONFIG_DIR / 'solver' / 'demo_compression.yaml'))


def test_a_collapsed_codec_is_refused_and_a_refit_revives_it(music):
    model = demo_codec()
    for layer in model.quantizer.vq.layers:  # the collapse seen in training: every code but one far away
        codebook = euclidean_codebook(layer)
        codebook.embed.data.fill_(100.0)
        codebook.embed.data[0].zero_()
        codebook.inited.data.fill_(1)
    assert [u.used for u in codec_usage(model, music['evaluate'])] == [1, 1, 1, 1]
    with pytest.raises(CodecCollapseError, match=r'1/256 codes'):
        check_codec_health(model, music['evaluate'], 'under test')

    refit_codebooks(model, music['train'])
    usage = check_codec_health(model, music['evaluate'], 'under test')
    assert all(u.used >= 128 and u.perplexity >= 32 for u in usage), usage
