"""Export to Hugging Face transformers' MusicgenForConditionalGeneration, checked against AudioCraft.

The bases are tiny real MusicGens with a T5 text conditioner, built offline: a randomly initialised
tiny T5 and a tokenizer made from a word list are saved to a folder, and AudioCraft's T5Conditioner
loads them from there instead of the hub's t5-small (nothing else of AudioCraft is replaced). Every
comparison is with the AudioCraft-side model: logits of the same codes and text, greedy tokens, the
codec's audio.
"""
import json
from pathlib import Path
import re
import shlex
import typing as tp

import pytest
import torch
from transformers import (AutoProcessor, AutoTokenizer, MusicgenForConditionalGeneration, T5Config, T5EncoderModel,
                          T5Tokenizer)

from audio_checks import assert_audible
import audiocraft.modules.conditioners as audiocraft_conditioners
from audiocraft.modules.conditioners import ConditioningAttributes

from doc_blocks import documented_block
from audiocraft_ext import cli
from audiocraft_ext.io.base_reference import SOLVER_CHECKPOINT_FORMAT
from audiocraft_ext.io.errors import OverwriteError
from audiocraft_ext.models.bases import assemble_musicgen
from audiocraft_ext.models.extended_musicgen import ExtendedMusicGen
from audiocraft_ext.models.tiny import (build_from_configs, build_tiny_musicgen, save_exported,
                                        tiny_compression_config, tiny_lm_config)
from audiocraft_ext.models.transformers_export import TransformersExportError, export_transformers

USAGE = Path(__file__).resolve().parents[1] / 'docs' / 'USAGE.md'
WORDS = ['calm', 'piano', 'fast', 'techno', 'lofi', 'hip', 'hop', 'with', 'a', 'warm', 'rhodes', 'music', 'drums']
CAPTIONS = ['calm piano', 'fast techno']  # the same number of tokens: no padding (see docs/USAGE.md)
TOLERANCE = 1e-4


@pytest.fixture(scope='module', autouse=True)
def offline_t5(tmp_path_factory, single_thread_torch) -> tp.Iterator[Path]:
    """A tiny random T5 encoder and its tokenizer in a folder, what AudioCraft's T5Conditioner loads."""
    folder = tmp_path_factory.mktemp('t5')
    vocab = [('<pad>', 0.0), ('</s>', 0.0), ('<unk>', 0.0), ('\u2581', -2.0)] + \
        [('\u2581' + word, -4.0) for word in WORDS] + \
        [(char, -8.0) for char in 'abcdefghijklmnopqrstuvwxyz0123456789,.']
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    # d_model 512 is what AudioCraft expects of 't5-small'; one narrow layer keeps it tiny.
    config = T5Config(vocab_size=len(vocab), d_model=512, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                      relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
                      feed_forward_proj='relu', pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        T5EncoderModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    class Encoder:
        @staticmethod
        def from_pretrained(name: str, *args, **kwargs):
            return T5EncoderModel.from_pretrained(folder)

    class Tokenizer:
        @staticmethod
        def from_pretrained(name: str, *args, **kwargs):
            return T5Tokenizer.from_pretrained(folder)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('HF_HUB_OFFLINE', '1')
        patch.setattr(audiocraft_conditioners, 'T5EncoderModel', Encoder)
        patch.setattr(audiocraft_conditioners, 'T5Tokenizer', Tokenizer)
        yield folder


def t5_base(flavour: str = 'text', seed: int = 0, delays: tp.Optional[tp.List[int]] = None,
            fuser: tp.Optional[dict] = None, seanet: tp.Optional[dict] = None, **transformer: tp.Any):
    """A tiny MusicGen whose description conditioner is AudioCraft's T5Conditioner (offline T5)."""
    lm_cfg = tiny_lm_config(flavour, **transformer)
    lm_cfg.conditioners.description = {'model': 't5', 't5': {'name': 't5-small', 'finetune': False,
                                                             'word_dropout': 0.0, 'normalize_text': False}}
    if delays is not None:
        lm_cfg.codebooks_pattern.delay.delays = delays
    for key, value in (fuser or {}).items():
        lm_cfg.fuser[key] = value
    compression_cfg = tiny_compression_config(lm_cfg.sample_rate, n_q=lm_cfg.transformer_lm.n_q // lm_cfg.channels,
                                              card=lm_cfg.transformer_lm.card)
    for key, value in (seanet or {}).items():
        compression_cfg.seanet[key] = value
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        compression_model, lm = build_from_configs(lm_cfg, compression_cfg)
    return assemble_musicgen(f'tiny-t5-{flavour}', compression_model, lm)


def extend(base: tp.Any, layers: int = 2, scale: float = 1.0, seed: int = 1, **overrides) -> ExtendedMusicGen:
    """`base` with `layers` new layers given non-zero random weights (they change the logits)."""
    model = ExtendedMusicGen.from_base(base, num_additional_layers=layers, device='cpu', **overrides)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        for parameter in model.lm.extension.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    model.extension_scale = scale
    return model


def load(directory: Path) -> MusicgenForConditionalGeneration:
    return MusicgenForConditionalGeneration.from_pretrained(directory).eval()


def pattern_codes(lm, batch: int = 2, steps: int = 12, seed: int = 0) -> torch.Tensor:
    """Codes in the delay pattern's layout, [B, K, S], the special token where the pattern has none."""
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(lm.card, (batch, lm.n_q, steps), generator=generator)
    sequence, _, _ = lm.pattern_provider.get_pattern(steps).build_pattern_sequence(codes, lm.special_token_id)
    return sequence


def audiocraft_logits(lm, sequence: torch.Tensor, captions: tp.List[str]) -> torch.Tensor:
    """AudioCraft's LM on the pattern sequence [B, K, S], text through its T5 conditioner: [B, K, S, card]."""
    with torch.no_grad():
        return lm.eval()(sequence, [ConditioningAttributes(text={'description': text}) for text in captions])


def transformers_logits(model, sequence: torch.Tensor, captions: tp.List[str],
                        encoder_states: tp.Optional[torch.Tensor] = None) -> torch.Tensor:
    """transformers' model on the same sequence and text (or text-encoder states): [B, K, S, card]."""
    batch, codebooks, steps = sequence.shape
    tokens = AutoTokenizer.from_pretrained(model.name_or_path)(captions, padding=True, return_tensors='pt')
    extra = {} if encoder_states is None else {'encoder_outputs': (encoder_states,)}
    with torch.no_grad():
        logits = model(input_ids=None if extra else tokens.input_ids, attention_mask=tokens.attention_mask,
                       decoder_input_ids=sequence.reshape(batch * codebooks, steps), **extra).logits
    return logits.reshape(batch, codebooks, steps, -1)


def t5_states(lm, captions: tp.List[str]) -> torch.Tensor:
    """The base's T5 conditioner's encoder states for `captions` (before its output projection)."""
    conditioner = lm.condition_provider.conditioners['description']
    inputs = conditioner.tokenize(captions)
    with torch.no_grad():
        return conditioner.t5(**inputs).last_hidden_state


@pytest.fixture(scope='module')
def base():
    return t5_base()


@pytest.fixture(scope='module')
def extended(base) -> ExtendedMusicGen:
    return extend(base)


@pytest.fixture(scope='module')
def exported(extended, tmp_path_factory) -> Path:
    return export_transformers(extended, tmp_path_factory.mktemp('hf') / 'musicgen-extended')


# --- equality --------------------------------------------------------------------------------------

@pytest.mark.parametrize('scale', [1.0, 0.5])
def test_decoder_logits_equal_the_extended_models(scale, base, extended, exported, tmp_path):
    model = extended
    directory = exported
    if scale != 1.0:
        model = extend(base, scale=scale)
        directory = export_transformers(model, tmp_path / 'scaled')
    hf = load(directory)
    assert hf.config.decoder.num_hidden_layers == 2 + 2
    sequence = pattern_codes(model.lm)
    expected = audiocraft_logits(model.lm, sequence, CAPTIONS)
    through_text = transformers_logits(hf, sequence, CAPTIONS)
    same_states = transformers_logits(hf, sequence, CAPTIONS, t5_states(model.lm, CAPTIONS))
    for found in (through_text, same_states):
        difference = (found - expected).abs().max().item()
        print(f"extension_scale={scale}: max |logit difference| {difference:.2e}")
        assert difference < TOLERANCE
    # The new layers matter: the base's logits are far from these.
    assert (audiocraft_logits(base.lm, sequence, CAPTIONS) - expected).abs().max() > 100 * TOLERANCE


def test_the_base_alone_exports_as_itself(base, tmp_path):
    fresh = ExtendedMusicGen.from_base(base, num_additional_layers=2, device='cpu')  # new layers at zero output
    hf = load(export_transformers(fresh, tmp_path / 'base'))
    sequence = pattern_codes(base.lm, seed=1)
    found = transformers_logits(hf, sequence, CAPTIONS)
    assert (found - audiocraft_logits(base.lm, sequence, CAPTIONS)).abs().max() < TOLERANCE


def test_greedy_generation_gives_the_same_tokens(extended, exported):
    hf = load(exported)
    steps = 8
    with torch.no_grad():
        expected = extended.lm.generate(None, [ConditioningAttributes(text={'description': text}) for text in CAPTIONS],
                                        max_gen_len=steps, use_sampling=False, cfg_coef=3.0, two_step_cfg=False)
    decoded: tp.List[torch.Tensor] = []
    decode = hf.audio_encoder.decode
    hf.audio_encoder.decode = lambda codes, *args, **kwargs: decoded.append(codes) or decode(codes, *args, **kwargs)
    inputs = AutoProcessor.from_pretrained(exported)(text=CAPTIONS, padding=True, return_tensors='pt')
    with torch.no_grad():
        audio = hf.generate(**inputs, do_sample=False, guidance_scale=3.0,
                            max_new_tokens=steps + hf.decoder.num_codebooks - 1)  # with the delay pattern's steps
    assert decoded[0][0].shape == expected.shape == (2, 4, steps)
    assert torch.equal(decoded[0][0], expected)
    with torch.no_grad():
        assert (audio - extended.compression_model.decode(expected)).abs().max() < 1e-5


def test_the_codec_encodes_and_decodes_like_audiocraft(extended, exported):
    hf = load(exported).audio_encoder
    wav = torch.randn(2, 1, 3200, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.no_grad():
        codes, _ = extended.compression_model.encode(wav)
        found = hf.encode(wav, bandwidth=hf.config.target_bandwidths[0]).audio_codes[0]
        assert torch.equal(found, codes)
        difference = hf.decode(codes[None], [None]).audio_values - extended.compression_model.decode(codes)
    assert difference.abs().max() < 1e-5


def test_a_stereo_base(tmp_path):
    model = extend(t5_base('stereo'), layers=1)
    hf = load(export_transformers(model, tmp_path / 'stereo'))
    assert hf.config.decoder.audio_channels == 2 and hf.decoder.num_codebooks == 8
    sequence = pattern_codes(model.lm)
    assert (transformers_logits(hf, sequence, CAPTIONS) - audiocraft_logits(model.lm, sequence, CAPTIONS)).abs().max() \
        < TOLERANCE


# --- the documented commands, and refusals ------------------------------------------------------------

def write_run(base_dir: Path, model: ExtendedMusicGen, folder: Path) -> Path:
    """A checkpoint.th of our solver's run (the layout io/solver_checkpoints.py documents) on `base_dir`."""
    folder.mkdir(parents=True)
    state = {key: value.clone() for key, value in model.lm.extension_state_dict().items()}
    torch.save({'model': state, 'best_state': {'model': state}, 'xp.sig': folder.name,
                'xp.cfg': {'datasource': {'train': '/data/egs/new/train'}},
                'base_model': {'format': SOLVER_CHECKPOINT_FORMAT, 'reference': str(base_dir),
                               'hash': model.base_hash, 'extension_config': model.lm.extension_config.to_dict()}},
               folder / 'checkpoint.th')
    return folder / 'checkpoint.th'


def test_documented_commands_export_a_run_and_generate_audio(base, tmp_path, monkeypatch, capsys):
    base_dir = save_exported(base, tmp_path / 'musicgen-base')
    model = extend(str(base_dir))
    write_run(base_dir, model, tmp_path / 'runs' / 'xps' / 'ab12cd34')
    model.save(tmp_path / 'extended.safetensors')
    monkeypatch.chdir(tmp_path)
    commands = documented_block(USAGE, 'transformers-export:commands').replace('\\\n', ' ').splitlines()
    assert [shlex.split(line)[:2] for line in commands if line.strip()] == [['audiocraft-ext', 'export']] * 2
    cards = []
    for line in filter(str.strip, commands):
        argv = shlex.split(re.sub(r'\bSIG\b', 'ab12cd34', line))
        assert cli.main(argv[1:]) == 0, capsys.readouterr().err
        cards.append((tmp_path / argv[3] / 'README.md').read_text())
    assert "the manifests in /data/egs/new/train" in cards[0]
    assert '- training data of the new layers: 40 Irish dance tunes' in cards[1]
    for card in cards:
        assert f'`{base_dir}`' in card and '- new layers: 2 (decoder layers 2 to 3 of 4' in card
    hf = load(tmp_path / 'musicgen-extended')
    sequence = pattern_codes(model.lm, seed=2)
    assert (transformers_logits(hf, sequence, CAPTIONS) - audiocraft_logits(model.lm, sequence, CAPTIONS)).abs().max() \
        < TOLERANCE

    exec(documented_block(USAGE, 'transformers-export:export'), {})  # the Python API, from the saved extension
    assert '40 Irish dance tunes' in (tmp_path / 'musicgen-extended' / 'README.md').read_text()
    generation = json.loads((tmp_path / 'musicgen-extended' / 'generation_config.json').read_text())
    assert generation['max_length'] == 8 * 50 + 4 and generation['guidance_scale'] == 3.0
    assert generation['do_sample'] and generation['top_k'] == 250 and generation['temperature'] == 1.0

    names: tp.Dict[str, tp.Any] = {}
    exec(documented_block(USAGE, 'transformers-export:use'), names)  # pipeline and generate, offline
    frames = 1 + 256 - 4  # with the start token, minus the delay pattern's 4 codebooks
    assert names['sampling_rate'] == 16000 and names['clip'].shape == (frames * 320,)
    assert_audible(names['clip'], 'the pipeline\'s clip')
    assert names['audio'].shape == (1, 1, frames * 320)
    assert_audible(names['audio'][0], 'generate\'s clip')


def test_writes_never_replace_the_base_or_an_output_unasked(base, tmp_path):
    base_dir = save_exported(base, tmp_path / 'musicgen-base')
    model = extend(str(base_dir))
    before = sorted(path.name for path in base_dir.iterdir())
    for target in (base_dir, base_dir / 'inside'):
        with pytest.raises(OverwriteError, match='the base model'):
            export_transformers(model, target, overwrite=True)
    assert sorted(path.name for path in base_dir.iterdir()) == before
    (tmp_path / 'taken').mkdir()
    with pytest.raises(OverwriteError, match='already exists'):
        export_transformers(model, tmp_path / 'taken')
    assert not any((tmp_path / 'taken').iterdir())


def test_the_command_prints_a_refusal_on_one_line(tmp_path, capsys):
    base_dir = save_exported(build_tiny_musicgen('text'), tmp_path / 'lut-base')
    checkpoint = write_run(base_dir, extend(str(base_dir), 1), tmp_path / 'runs' / 'xps' / 'ef56ab78')
    capsys.readouterr()
    assert cli.main(['export', str(checkpoint.parent), str(tmp_path / 'out'), '--format', 'transformers']) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: The base's text conditioner 'description' is a look-up table")
    assert error.count('\n') == 1 and not (tmp_path / 'out').exists()


REFUSALS = {
    'lut text conditioner': (lambda: extend(build_tiny_musicgen('text'), 1),
                             r"text conditioner 'description' is a look-up table \(LUTConditioner, model: lut\)"),
    'melody base': (lambda: extend(build_tiny_musicgen('melody'), 1),
                    r"conditions on 'self_wav' \(ChromaStemConditioner, a melody\)"),
    'post-norm base': (lambda: extend(t5_base(norm_first=False), 1), r'The base is post-norm'),
    'biases': (lambda: extend(t5_base(bias_ff=True), 1), r'biases in the feed-forward linears \(bias_ff\)'),
    'pattern': (lambda: extend(t5_base(delays=[0, 0, 0, 0]), 1),
                r'codebook pattern is delay with delays \[0, 0, 0, 0\].*not the delay pattern \[0, 1, 2, 3\]'),
    'cross-attention positional embedding': (lambda: extend(t5_base(fuser={'cross_attention_pos_emb': True}), 1),
                                             r'positional embedding on the cross-attention source'),
    'layer overrides': (lambda: extend(t5_base(), 1, dim_feedforward=64),
                        r"new layers differ from the base layers in \['dim_feedforward'\]"),
    'extension_scale underflows': (lambda: extend(t5_base(), 1, scale=1e-45),
                                   r'extension_scale=1e-45 cannot be folded exactly'),
    'two_step_cfg': (lambda: _with_generation(extend(t5_base(), 1), two_step_cfg=True),
                     r'two_step_cfg=True .* has no equivalent'),
    'cfg_coef below 1': (lambda: _with_generation(extend(t5_base(), 1), cfg_coef=0.5), r'cfg_coef=0.5 is below 1'),
    'T5 as wide as the LM': (lambda: extend(t5_base(dim=512), 1), r'T5 encoder is as wide as the decoder \(512\)'),
    'time_group_norm codec': (lambda: extend(t5_base(seanet={'norm': 'time_group_norm'}), 1),
                              r"compression model's encoder.0 uses GroupNorm"),
}


def _with_generation(model: ExtendedMusicGen, **params) -> ExtendedMusicGen:
    model.set_generation_params(duration=8, **params)
    return model


@pytest.mark.parametrize('case', REFUSALS)
def test_what_transformers_cannot_represent_is_refused_before_writing(case, tmp_path):
    build, message = REFUSALS[case]
    with pytest.raises(TransformersExportError, match=message) as error:
        export_transformers(build(), tmp_path / 'out')
    assert 'export with --format extended' in str(error.value).lower() or 'before exporting' in str(error.value)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary
