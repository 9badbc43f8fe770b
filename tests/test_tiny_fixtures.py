"""The tiny fixtures are real MusicGens: AudioCraft's stock loader reads what they save."""
import pytest
import torch

from audiocraft.models import MusicGen
from audiocraft.models.encodec import InterleaveStereoCompressionModel
from audiocraft.modules.conditioners import ConditioningAttributes, WavCondition

from audiocraft_ext.models.tiny import FLAVOURS, build_tiny_musicgen, offline_demucs, save_exported


def _attributes(model, batch: int):
    attributes = [ConditioningAttributes(text={'description': f'prompt {i}'}) for i in range(batch)]
    if 'self_wav' in model.lm.condition_provider.conditioners:
        melody = torch.sin(torch.linspace(0, 400, model.sample_rate)).view(1, 1, -1)
        for attribute in attributes:
            attribute.wav['self_wav'] = WavCondition(melody, torch.tensor([melody.shape[-1]]),
                                                     sample_rate=[model.sample_rate], path=[None])
    return attributes


@pytest.mark.parametrize('flavour', FLAVOURS)
def test_stock_loader_reads_exported_fixture(flavour, tmp_path, lm_logits):
    model = build_tiny_musicgen(flavour, seed=1)
    save_exported(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['compression_state_dict.bin', 'state_dict.bin']
    pkg = torch.load(tmp_path / 'state_dict.bin')
    assert {'xp.cfg', 'best_state', 'version', 'exported'} <= set(pkg)

    with offline_demucs():
        loaded = MusicGen.get_pretrained(str(tmp_path), device='cpu')
    assert loaded.sample_rate == model.sample_rate
    assert loaded.audio_channels == (2 if flavour == 'stereo' else 1)
    codes = torch.randint(0, model.lm.card, (2, model.lm.num_codebooks, 12))
    # `lm_logits` seeds Python's `random` before each call: the melody conditioner's demucs
    # (`apply_model`) draws a random time shift from it, so unseeded calls differ.
    ours = lm_logits(model.lm, _attributes(model, 2), codes)
    stock = lm_logits(loaded.lm, _attributes(loaded, 2), codes)
    assert torch.equal(ours, stock)


def test_flavours_differ_as_musicgen_variants_do():
    text, melody, stereo = (build_tiny_musicgen(flavour) for flavour in FLAVOURS)
    assert text.lm.fuser.fuse2cond['cross'] == ['description']
    assert melody.lm.fuser.fuse2cond['prepend'] == ['self_wav']
    assert 'self_wav' in melody.lm.condition_provider.conditioners
    assert isinstance(stereo.compression_model, InterleaveStereoCompressionModel)
    assert stereo.lm.num_codebooks == 2 * text.lm.num_codebooks
    assert text.frame_rate == 50 and text.sample_rate == 16000


def test_same_seed_same_weights_different_seed_different_weights():
    first, again, other = (build_tiny_musicgen('text', seed=s).lm.state_dict() for s in (0, 0, 1))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())
