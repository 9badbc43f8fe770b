"""ExtendedMusicGen: every MusicGen generation mode, extension_scale through
set_generation_params, and export to stock AudioCraft."""
import pytest
import torch

from audiocraft.models import MusicGen
from audiocraft.models.lm import LMModel

from audiocraft_ext import ExtendedMusicGen
from audiocraft_ext.io.errors import CheckpointError
from audiocraft_ext.models.tiny import build_tiny_musicgen, offline_demucs


pytestmark = pytest.mark.usefixtures('single_thread_torch')

DURATION = 0.2  # seconds: 10 frames at 50 frames/s
HOP = 320       # samples per frame of the tiny EnCodec (16 kHz / 50 Hz)


@pytest.fixture(scope='module')
def pair(perturb_extension):
    """(base MusicGen, ExtendedMusicGen of an identical base), both set to generate DURATION seconds."""
    def build(flavour='text', perturb=True):
        base = build_tiny_musicgen(flavour)
        model = ExtendedMusicGen.from_base(build_tiny_musicgen(flavour), num_additional_layers=2)
        if perturb:
            perturb_extension(model.lm)
        for m in (base, model):
            m.set_generation_params(duration=DURATION)
        return base, model
    return build


def _run(model, mode, seed=0, **kwargs):
    torch.manual_seed(seed)
    return getattr(model, mode)(**kwargs)


def _prompt(channels, batch=2, seconds=0.1):
    t = torch.arange(int(seconds * 16000)) / 16000
    wav = 0.3 * torch.sin(2 * torch.pi * 330 * t)
    return wav.expand(batch, channels, -1).clone()


# --- 6. Every MusicGen mode ---------------------------------------------------------------------

@pytest.mark.parametrize('flavour', ['text', 'stereo'])
def test_generation_modes_give_musicgen_shapes(flavour, pair):
    base, model = pair(flavour)
    channels = 2 if flavour == 'stereo' else 1
    assert isinstance(model, MusicGen)
    assert model.sample_rate == base.sample_rate == 16000
    assert model.audio_channels == base.audio_channels == channels
    assert model.frame_rate == base.frame_rate == 50
    expected = (2, channels, int(DURATION * 50) * HOP)
    cases = {
        'generate': dict(descriptions=['calm piano', 'fast drums']),
        'generate_unconditional': dict(num_samples=2),
        'continuation_with_text': dict(prompt=_prompt(channels), prompt_sample_rate=16000,
                                       descriptions=['calm piano', None]),
        'continuation_without_text': dict(prompt=_prompt(channels), prompt_sample_rate=16000),
    }
    for name, kwargs in cases.items():
        mode = 'generate_continuation' if name.startswith('continuation') else name
        ours = _run(model, mode, **kwargs)
        theirs = _run(base, mode, **kwargs)
        assert ours.shape == theirs.shape == expected, name
        assert ours.dtype == theirs.dtype and torch.isfinite(ours).all(), name


def test_return_tokens_gives_audio_and_codes_like_musicgen(pair):
    base, model = pair('text')
    audio, tokens = _run(model, 'generate', descriptions=['a', 'b'], return_tokens=True)
    base_audio, base_tokens = _run(base, 'generate', descriptions=['a', 'b'], return_tokens=True)
    assert tokens.shape == base_tokens.shape == (2, model.lm.num_codebooks, int(DURATION * 50))
    assert audio.shape == base_audio.shape
    assert tokens.dtype == torch.long and tokens.min() >= 0 and tokens.max() < model.lm.card
    # The tokens are the audio's codes: decoding them gives the returned audio.
    torch.testing.assert_close(model.generate_audio(tokens), audio)
    _, cont_tokens = _run(model, 'generate_continuation', prompt=_prompt(1), prompt_sample_rate=16000,
                          return_tokens=True)
    assert cont_tokens.shape == tokens.shape


def test_two_step_cfg(pair):
    base, model = pair('text')
    for m in (base, model):
        m.set_generation_params(duration=DURATION, two_step_cfg=True)
    assert model.generation_params['two_step_cfg'] is True
    ours = _run(model, 'generate', descriptions=['a', 'b'])
    assert ours.shape == _run(base, 'generate', descriptions=['a', 'b']).shape == (2, 1, 3200)


def test_long_generation_past_max_duration(pair):
    base, model = pair('text')
    for m in (base, model):
        # MusicGen's constructor sets the default extend_stride (18 s), which must stay below
        # max_duration; so a short max_duration is set after construction, for both.
        m.max_duration = 0.4
        m.set_generation_params(duration=0.6, extend_stride=0.2)
    windows = []
    generate = model.lm.generate
    model.lm.generate = lambda *args, **kwargs: (windows.append(kwargs['max_gen_len']), generate(*args, **kwargs))[1]
    expected = (2, 1, int(0.6 * 50) * HOP)
    for mode, kwargs in [('generate', dict(descriptions=['a', 'b'])),
                         ('generate_continuation', dict(prompt=_prompt(1), prompt_sample_rate=16000))]:
        windows.clear()
        ours, tokens = _run(model, mode, return_tokens=True, **kwargs)
        theirs = _run(base, mode, **kwargs)
        assert ours.shape == theirs.shape == expected, mode
        assert tokens.shape[-1] == int(0.6 * 50)
        assert len(windows) >= 2 and max(windows) <= int(0.4 * 50), (mode, windows)


def test_progress_printing_and_custom_callback(capsys, pair):
    _, model = pair('text')
    capsys.readouterr()
    _run(model, 'generate', descriptions=['a'], progress=True)
    assert ' / ' in capsys.readouterr().out  # MusicGen's default progress line

    calls = []
    model.set_custom_progress_callback(lambda done, total: calls.append((done, total)))
    _run(model, 'generate', descriptions=['a'], progress=True)
    assert calls, "custom progress callback not called"
    done = [c[0] for c in calls]
    assert done == list(range(1, len(done) + 1))  # one call per step, increasing
    assert all(total == calls[0][1] for _, total in calls)
    assert done[-1] == calls[-1][1] and calls[-1][1] >= int(DURATION * 50)
    assert capsys.readouterr().out == ''  # the custom callback replaces the printing

    calls.clear()
    _run(model, 'generate', descriptions=['a'], progress=False)
    assert calls == []


def test_generate_with_chroma_on_melody_base(melody_wav, pair):
    with offline_demucs():
        _, model = pair('melody')
    melody = torch.stack([melody_wav(16000, 0.5, 220.0), melody_wav(16000, 0.5, 330.0)])  # [2, 1, T]
    audio, tokens = _run(model, 'generate_with_chroma', descriptions=['a', 'b'], melody_wavs=melody,
                         melody_sample_rate=16000, return_tokens=True)
    assert audio.shape == (2, 1, int(DURATION * 50) * HOP)
    assert tokens.shape == (2, model.lm.num_codebooks, int(DURATION * 50))
    assert model.sample_rate == 16000 and model.audio_channels == 1


def test_stereo_output_is_two_channels(pair):
    _, model = pair('stereo')
    audio, tokens = _run(model, 'generate', descriptions=['a', 'b'], return_tokens=True)
    assert audio.shape == (2, 2, int(DURATION * 50) * HOP)
    assert tokens.shape == (2, 8, int(DURATION * 50))  # interleaved stereo codebooks: 2 x 4


def test_generation_goes_through_the_new_layers(pair):
    base, model = pair('text')
    for m in (base, model):
        m.set_generation_params(duration=DURATION, use_sampling=False)
    base_tokens = _run(base, 'generate', descriptions=['a', 'b'], return_tokens=True)[1]
    model.set_generation_params(duration=DURATION, use_sampling=False, extension_scale=0.0)
    assert torch.equal(_run(model, 'generate', descriptions=['a', 'b'], return_tokens=True)[1], base_tokens)
    model.extension_scale = 1.0
    assert not torch.equal(_run(model, 'generate', descriptions=['a', 'b'], return_tokens=True)[1],
                           base_tokens)


# --- 4. extension_scale on the model -----------------------------------------------------------

def test_extension_scale_through_set_generation_params_and_property(model_logits, pair):
    base, model = pair('text')
    expected = model_logits(base)
    full = model_logits(model)
    assert not torch.allclose(full, expected, atol=1e-3)

    model.set_generation_params(duration=0.3, extension_scale=0.0)
    assert model.duration == 0.3  # the MusicGen parameters are applied too
    assert model.extension_scale == 0.0 and model.lm.extension_scale == 0.0
    assert torch.equal(model_logits(model), expected)
    model.set_generation_params(duration=0.2)  # not given: unchanged
    assert model.extension_scale == 0.0

    model.extension_scale = 1.0
    assert model.lm.extension_scale == 1.0
    assert torch.equal(model_logits(model), full)


@pytest.mark.parametrize('value', [-1, float('nan'), 'abc'])
def test_invalid_extension_scale_through_the_model(value, pair):
    _, model = pair('text', perturb=False)
    for setter in (lambda: model.set_generation_params(duration=0.5, extension_scale=value),
                   lambda: setattr(model, 'extension_scale', value)):
        with pytest.raises((ValueError, TypeError), match='extension_scale'):
            setter()
        assert model.extension_scale == 1.0
        assert model.duration == DURATION  # a refused call changes nothing


# --- 8. Export to stock AudioCraft --------------------------------------------------------------

def _export_and_load(model, directory):
    model.export_audiocraft(directory)
    assert sorted(p.name for p in directory.iterdir()) == ['compression_state_dict.bin', 'state_dict.bin']
    with offline_demucs():
        return MusicGen.get_pretrained(str(directory), device='cpu')


@pytest.mark.parametrize('flavour,base_overrides', [
    ('text', {}), ('stereo', {}), ('melody', {}),
    ('text', {'layer_scale': 0.1, 'bias_ff': True, 'bias_attn': True}),
])
def test_export_loads_in_stock_musicgen_with_the_same_logits(flavour, base_overrides, tmp_path, model_logits,
                                                             perturb_extension):
    base = build_tiny_musicgen(flavour, **base_overrides)
    model = ExtendedMusicGen.from_base(base, num_additional_layers=2)
    perturb_extension(model.lm)
    model.extension_scale = 0.5
    stock = _export_and_load(model, tmp_path / 'export')

    assert type(stock) is MusicGen and type(stock.lm) is LMModel
    assert len(stock.lm.transformer.layers) == 2 + 2
    assert (stock.sample_rate, stock.audio_channels, stock.frame_rate) == \
        (model.sample_rate, model.audio_channels, model.frame_rate)
    exported = model_logits(stock)
    torch.testing.assert_close(exported, model_logits(model), atol=1e-5, rtol=0)
    # The scale is folded in: the extension at full strength is a different network.
    model.extension_scale = 1.0
    assert not torch.allclose(exported, model_logits(model), atol=1e-3)


def test_exported_model_generates_the_extended_models_tokens(tmp_path, pair):
    # Greedy decoding through stock generate (KV cache, CFG batch or two passes) vs ours.
    _, model = pair('text')
    stock = _export_and_load(model, tmp_path / 'export')
    for two_step in (False, True):
        for m in (model, stock):
            m.set_generation_params(duration=DURATION, use_sampling=False, two_step_cfg=two_step)
        ours = _run(model, 'generate', descriptions=['a', 'b'], return_tokens=True)[1]
        theirs = _run(stock, 'generate', descriptions=['a', 'b'], return_tokens=True)[1]
        assert torch.equal(ours, theirs), f"two_step_cfg={two_step}"


def test_export_refuses_new_layers_of_another_architecture(tmp_path):
    model = ExtendedMusicGen.from_base(build_tiny_musicgen('text'), 2, dim_feedforward=64)
    with pytest.raises(CheckpointError, match='dim_feedforward'):
        model.export_audiocraft(tmp_path / 'export')
    assert not (tmp_path / 'export').exists() or not any((tmp_path / 'export').iterdir())


def test_activation_checkpointing_keeps_gradients_saves_activations_and_exports(tmp_path, condition_tensors,
                                                                                model_logits, perturb_extension,
                                                                                random_codes):
    """`checkpointing='torch'` (a layer override: memory traded for one more forward of the new
    layers) changes neither the gradients nor the exported network."""
    models = [ExtendedMusicGen.from_base(build_tiny_musicgen('text'), 2, checkpointing=mode)
              for mode in ('none', 'torch')]
    perturb_extension(models[0].lm)
    models[1].lm.load_extension_state_dict(models[0].lm.extension_state_dict())
    codes = random_codes(models[0].lm)
    gradients, saved = [], []
    for model in models:
        count = []
        model.lm.train()
        with torch.autograd.graph.saved_tensors_hooks(lambda t: count.append(t.numel()) or t, lambda t: t):
            output = model.lm.compute_predictions(codes, [], condition_tensors=condition_tensors(model))
        output.logits.nan_to_num().square().mean().backward()
        gradients.append([p.grad for p in model.lm.trainable_parameters()])
        saved.append(sum(count))
    assert all(torch.equal(a, b) for a, b in zip(*gradients))
    assert saved[1] < saved[0], saved
    models[1].extension_scale = 0.5
    stock = _export_and_load(models[1], tmp_path / 'export')
    torch.testing.assert_close(model_logits(stock), model_logits(models[1]), atol=1e-5, rtol=0)
