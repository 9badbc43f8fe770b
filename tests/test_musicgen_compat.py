"""AudioCraft's own MusicGen and streaming tests, run on the extended model.

AudioCraft 1.3.0 tests `MusicGen` in `tests/models/test_musicgen.py` of its GitHub repository (the
PyPI source distribution does not ship it) on `MusicGen.get_pretrained('debug')`, and streaming in
`tests/modules/test_transformer.py`. The same scenarios, with the same assertions, run here on
`ExtendedMusicGen.from_base(MusicGen.get_pretrained('debug'))` and on `ExtendedLMModel`; the code is
ours. A freshly extended model equals its base, so the new layers are perturbed to take part.

spaCy stand-in: the debug model's text conditioner tokenizes with spaCy's `en_core_web_sm`
pipeline, which AudioCraft downloads on first use. The test machines cannot download it (no
model hub; unofficial PyPI copies of it are not installed on purpose), so `offline_spacy` makes
`spacy.load('en_core_web_sm')` return a blank English pipeline (spaCy's own English tokenizer and
stop words) whose lemma is the lowercased word. Test-only: users keep AudioCraft's real download.

Also here: AudioCraft's debug LM is post-norm, so it is the test base for post-norm bases
(the new layers are pre-norm whatever the base, docs/ARCHITECTURE.md).
"""
from itertools import product

import pytest
import spacy
from spacy.language import Language
import torch

from audiocraft.models import MusicGen
from audiocraft.modules.transformer import set_efficient_attention_backend
from audiocraft_ext import ExtendedLMModel, ExtendedMusicGen
from audiocraft_ext.io.errors import CheckpointError
from audiocraft_ext.models.inputs import GenerationInputError
from audiocraft_ext.models.tiny import build_tiny_musicgen


pytestmark = pytest.mark.usefixtures('single_thread_torch')


@Language.component('lowercase_lemma')
def lowercase_lemma(doc):
    for token in doc:
        token.lemma_ = token.lower_
    return doc


@pytest.fixture
def offline_spacy(monkeypatch):
    """`spacy.load('en_core_web_sm')` gives a blank English pipeline (see the module docstring)."""
    nlp = spacy.blank('en')
    nlp.add_pipe('lowercase_lemma')
    original = spacy.load
    monkeypatch.setattr(spacy, 'load', lambda name, *args, **kwargs:
                        nlp if name == 'en_core_web_sm' else original(name, *args, **kwargs))


def debug_base(seed: int = 0) -> MusicGen:
    """AudioCraft's `debug` MusicGen (random weights, here deterministic from `seed`)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return MusicGen.get_pretrained(name='debug', device='cpu')


# ---- tests/models/test_musicgen.py, on the extended debug model -------------------------------
class TestExtendedMusicGenModel:
    @pytest.fixture(autouse=True)
    def _spacy(self, offline_spacy, perturb_extension):
        self.perturb_extension = perturb_extension

    def get_musicgen(self) -> ExtendedMusicGen:
        mg = ExtendedMusicGen.from_base(debug_base())
        self.perturb_extension(mg.lm)
        mg.set_generation_params(duration=2.0, extend_stride=2.)
        return mg

    def test_base(self):
        mg = self.get_musicgen()
        assert mg.lm.num_additional_layers == 12
        assert mg.frame_rate == 25
        assert mg.sample_rate == 32000
        assert mg.audio_channels == 1

    def test_generate_unconditional(self):
        wav = self.get_musicgen().generate_unconditional(3)
        assert list(wav.shape) == [3, 1, 64000]

    def test_generate_continuation(self):
        mg = self.get_musicgen()
        wav = mg.generate_continuation(torch.randn(3, 1, 32000), 32000)
        assert list(wav.shape) == [3, 1, 64000]

        wav = mg.generate_continuation(torch.randn(2, 1, 32000), 32000, ['youpi', 'lapin dort'])
        assert list(wav.shape) == [2, 1, 64000]

        with pytest.raises(AssertionError, match='3 descriptions for 2 prompt'):
            mg.generate_continuation(torch.randn(2, 1, 32000), 32000, ['youpi', 'lapin dort', 'one too many'])

    def test_generate(self):
        wav = self.get_musicgen().generate(['youpi', 'lapin dort'])
        assert list(wav.shape) == [2, 1, 64000]

    def test_generate_long(self):
        mg = self.get_musicgen()
        mg.max_duration = 3.
        mg.set_generation_params(duration=4., extend_stride=2.)
        wav = mg.generate(['youpi', 'lapin dort'])
        assert list(wav.shape) == [2, 1, 32000 * 4]

    def test_generate_two_step_cfg(self):
        mg = self.get_musicgen()
        mg.set_generation_params(duration=2.0, extend_stride=2., two_step_cfg=True)
        wav = mg.generate(['youpi', 'lapin dort'])
        assert list(wav.shape) == [2, 1, 64000]


# ---- our input checks raise what MusicGen raises (AssertionError where it asserts) -------------
REJECTED = {  # case: (call, start of our message)
    'extend_stride past max_duration': (lambda m: m.set_generation_params(duration=1, extend_stride=40),
                                        "extend_stride=40 must be shorter than the model's max_duration"),
    'more descriptions than prompts': (lambda m: m.generate_continuation(torch.zeros(2, 1, 800), 16000,
                                                                         ['a', 'b', 'c']),
                                       '3 descriptions for 2 prompt(s): give one per prompt'),
    'prompt longer than duration': (lambda m: (m.set_generation_params(duration=0.2),
                                               m.generate_continuation(torch.zeros(1, 1, 16000), 16000)),
                                    'prompt lasts 1.00 s, longer than the 0.20 s to generate: trim it'),
    'more melodies than descriptions': (lambda m: m.generate_with_chroma(['a'], torch.zeros(2, 1, 800), 16000),
                                        '2 melodies for 1 descriptions: give one per description'),
    'melody list item of 3 dims': (lambda m: m.generate_with_chroma(['a'], [torch.zeros(1, 1, 800)], 16000),
                                   'melody_wavs[0] has shape [1, 1, 800]; a list of waveforms holds [C, T]'),
    # Where MusicGen raises a ValueError, so do we (not an AssertionError):
    'melody tensor of 1 dim': (lambda m: m.generate_with_chroma(['a'], torch.zeros(800), 16000),
                               'melody_wavs[0] has shape [800]; expected [B, C, T] or [C, T]'),
    'prompt of 4 dims': (lambda m: m.generate_continuation(torch.zeros(1, 1, 1, 800), 16000),
                         'prompt has shape [1, 1, 1, 800]; expected [B, C, T] or [C, T]'),
}


@pytest.mark.parametrize('case', REJECTED)
def test_bad_input_raises_the_class_musicgen_raises_with_our_message(case, demucs_offline):
    call, message = REJECTED[case]
    with pytest.raises(Exception) as stock:
        call(build_tiny_musicgen('melody'))
    with pytest.raises(ValueError) as ours:
        call(ExtendedMusicGen.from_base(build_tiny_musicgen('melody'), num_additional_layers=1))
    assert isinstance(ours.value, type(stock.value)), (type(stock.value), type(ours.value))
    assert isinstance(ours.value, AssertionError) == isinstance(stock.value, AssertionError)
    assert isinstance(ours.value, GenerationInputError) == isinstance(stock.value, AssertionError)
    assert str(ours.value).startswith(message), str(ours.value)


# ---- tests/modules/test_transformer.py streaming tests, on ExtendedLMModel ---------------------
@pytest.fixture(scope='module')
def extended_lm(perturb_extension):
    """A tiny text base with perturbed new layers (dropout 0), in eval mode."""
    def build(num_additional_layers: int = 2, **base_overrides) -> ExtendedLMModel:
        base = build_tiny_musicgen('text', **base_overrides)
        lm = ExtendedLMModel(base.lm, num_additional_layers)
        perturb_extension(lm)
        return lm.eval()
    return build


def relative_delta(a: torch.Tensor, b: torch.Tensor) -> float:
    return (torch.norm(a - b) / torch.norm(b)).item()


def stream(lm: ExtendedLMModel, codes: torch.Tensor, conditions, frame_sizes=None) -> torch.Tensor:
    """Logits [B, K, S, card] of `codes` [B, K, S] fed frame by frame in streaming mode."""
    frame_sizes = frame_sizes or [1] * codes.shape[-1]
    outs, start = [], 0
    with torch.no_grad(), lm.streaming():
        for size in frame_sizes:
            outs.append(lm(codes[..., start:start + size], [], condition_tensors=conditions))
            start += size
    return torch.cat(outs, dim=2)


@pytest.mark.parametrize('context,custom', list(product([None, 10], [False, True])))
def test_causal_streaming(context, custom, condition_tensors, random_codes, extended_lm):
    torch.manual_seed(1234)
    # As AudioCraft's test: 1 layer with a limited context (each layer widens the receptive field).
    layers = 1 if context else 2
    lm = extended_lm(layers, num_layers=layers, past_context=context, custom=custom, memory_efficient=False)
    layer = lm.extension.layers[0].self_attn
    assert (layer.past_context, layer.custom) == (context, custom), "the new layers copy the base's attention"
    # Causality and receptive field of the new layers, through their gradients.
    steps = 20
    cross = torch.randn(4, 3, lm.dim)
    for k in [0, 10, 15, 19]:
        x = torch.randn(4, steps, lm.dim, requires_grad=True)
        y = lm.extension(x, cross_attention_src=cross)
        y[:, k].abs().sum().backward()
        if k + 1 < steps:
            assert torch.allclose(x.grad[:, k + 1:], torch.tensor(0.)), x.grad[:, k + 1:].norm()
        assert not torch.allclose(x.grad[:, :k + 1], torch.tensor(0.)), x.grad[:, :k + 1].norm()
        if context is not None and k > context:
            limit = k - context - 1
            assert torch.allclose(x.grad[:, :limit], torch.tensor(0.)), x.grad[:, :limit].norm()

    # Streaming the whole extended LM (base + new layers, each with its KV cache) gives the full pass.
    conditions, codes = condition_tensors(build_tiny_musicgen('text'), batch=4), random_codes(lm, 4, steps)
    with torch.no_grad():
        full = lm(codes, [], condition_tensors=conditions)
    delta = relative_delta(stream(lm, codes, conditions), full)
    assert delta < 1e-6, delta
    # And the base's logits are not what it streams: the new layers take part.
    with torch.no_grad():
        lm.extension_scale = 0.0
        assert relative_delta(lm(codes, [], condition_tensors=conditions), full) > 1e-3


def test_streaming_api(condition_tensors, random_codes, extended_lm):
    lm = extended_lm()
    conditions, codes = condition_tensors(build_tiny_musicgen('text'), batch=1), random_codes(lm, 1, 12)
    with torch.no_grad(), lm.streaming():
        lm(codes[..., :1], [], condition_tensors=conditions)
        state = {k: v.clone() for k, v in lm.get_streaming_state().items()}
        y = lm(codes[..., 1:2], [], condition_tensors=conditions)
        lm.set_streaming_state(state)
        y2 = lm(codes[..., 1:2], [], condition_tensors=conditions)
        assert torch.allclose(y, y2), (y - y2).norm()
        assert lm.flush() is None
    # The state holds the new layers' own caches next to the base's.
    assert any(key.startswith('transformer.extension.') for key in state)
    assert any(key.startswith('transformer.base.') for key in state)


@torch.no_grad()
def test_streaming_memory_efficient(condition_tensors, random_codes, extended_lm):
    set_efficient_attention_backend('torch')
    torch.manual_seed(1234)
    custom = extended_lm(custom=True, memory_efficient=False)
    efficient = extended_lm(memory_efficient=True)
    assert custom.extension.layers[0].self_attn.memory_efficient is False
    assert efficient.extension.layers[0].self_attn.memory_efficient is True
    custom.load_state_dict(efficient.state_dict())
    conditions, codes = condition_tensors(build_tiny_musicgen('text'), batch=3), random_codes(custom, 3, 12)
    reference = custom(codes, [], condition_tensors=conditions)
    delta = relative_delta(stream(efficient, codes, conditions), reference)
    assert delta < 1e-6, delta


# ---- post-norm bases: AudioCraft's debug LM ---------------------------------------------------
def test_new_layers_on_a_post_norm_base_are_pre_norm_and_step_0_equals_the_base(offline_spacy, condition_tensors,
                                                                                lm_logits, random_codes):
    base = debug_base()
    assert not any(layer.norm_first for layer in base.lm.transformer.layers), "the debug LM is post-norm"
    conditions, codes = condition_tensors(base), random_codes(base.lm)
    expected = lm_logits(base.lm, conditions, codes)
    model = ExtendedMusicGen.from_base(base)
    assert all(layer.norm_first for layer in model.lm.extension.layers)
    assert model.lm.layer_config['norm_first'] is True
    assert torch.equal(lm_logits(model.lm, conditions, codes), expected)


def test_training_on_a_post_norm_base_changes_the_new_layers_only(offline_spacy, condition_tensors, lm_logits,
                                                                  random_codes, train_extension):
    base = debug_base()
    torch.manual_seed(0)
    model = ExtendedMusicGen.from_base(base, num_additional_layers=2)
    conditions, codes = condition_tensors(base), random_codes(model.lm)
    before = lm_logits(model.lm, conditions, codes)
    base_state = {name: value.clone() for name, value in model.lm.base_state_dict().items()}
    extension_state = {name: value.clone() for name, value in model.lm.extension_state_dict().items()}
    losses = train_extension(model.lm, base, steps=3)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.equal(model.lm.base_state_dict()[name], value) for name, value in base_state.items())
    trained = model.lm.extension_state_dict()
    changed = [name for name, value in extension_state.items() if not torch.equal(trained[name], value)]
    assert any('out_proj' in name for name in changed) and any('linear2' in name for name in changed)
    assert not torch.equal(lm_logits(model.lm, conditions, codes), before)


def test_post_norm_new_layers_are_refused_with_the_reason(offline_spacy):
    base = debug_base()
    with pytest.raises(ValueError, match=r'norm_first=False is refused: the new layers are always pre-norm'):
        ExtendedLMModel(base.lm, 2, norm_first=False)
    assert all(param.requires_grad for param in base.lm.parameters()), "a refused call leaves the base as it was"
    ExtendedLMModel(base.lm, 2, norm_first=True)  # the default, said explicitly: accepted


def test_a_post_norm_base_cannot_be_exported_to_the_stock_layout(offline_spacy, tmp_path):
    model = ExtendedMusicGen.from_base(debug_base(), num_additional_layers=2)
    with pytest.raises(CheckpointError, match=r"differ from the base layers in \['norm_first'\] "
                                              r"\(the base is post-norm; new layers are always pre-norm\)"):
        model.export_audiocraft(tmp_path / 'exported')
    assert not (tmp_path / 'exported').exists()
