"""Several extensions of one base in one model (`ExtendedMusicGen.attach`): a batch mixing them, and
the base alone, gives for every item what a model holding only that item's extension gives."""
from pathlib import Path
import random
import re

import pytest
import torch

from audiocraft.modules.conditioners import ConditioningAttributes
from doc_blocks import documented_block
from hub_cache import hub_repo
from audiocraft_ext import ExtendedMusicGen
from audiocraft_ext.io.errors import CheckpointError
from audiocraft_ext.io.exported_layout import COMPRESSION_FILE, LM_FILE
from audiocraft_ext.models.inputs import GenerationInputError
from audiocraft_ext.models.tiny import build_tiny_musicgen, offline_demucs

USAGE = Path(__file__).resolve().parents[1] / 'docs' / 'USAGE.md'
CAPTIONS = ['calm piano', 'fast drums', 'a tone', 'slow strings']
ROUTES = [ExtendedMusicGen.OWN, 'lofi', None, 'chip']  # None: the base alone


@pytest.fixture
def models(perturb_extension):
    """One tiny base; three extensions of it (2, 2 and 1 new layers, perturbed), each its own model."""
    base = build_tiny_musicgen('text', seed=0)
    extended = {}
    for seed, (name, layers) in enumerate([('own', 2), ('lofi', 2), ('chip', 1)], start=1):
        model = ExtendedMusicGen.from_base(base, num_additional_layers=layers, device='cpu')
        perturb_extension(model.lm, seed)
        model.set_generation_params(duration=0.3, use_sampling=False)
        extended[name] = model
    return base, extended


def logits(lm, codes, captions):
    lm.eval()
    with torch.no_grad():
        out = lm.compute_predictions(codes, [ConditioningAttributes(text={'description': c}) for c in captions])
    return torch.where(out.mask[..., None], out.logits, torch.zeros_like(out.logits))  # [B, K, T, card]


def test_a_mixed_batch_equals_each_extension_alone(models, tmp_path):
    base, extended = models
    host = extended['own']
    host.attach('lofi', extended['lofi'].save(tmp_path / 'lofi.safetensors'))  # a file
    host.attach('chip', extended['chip'].save(tmp_path / 'chip'))  # a directory
    assert host.extension_names == ['own', 'lofi', 'chip']
    codes = torch.randint(0, host.lm.card, (4, host.lm.num_codebooks, 12), generator=torch.Generator().manual_seed(0))
    with host.lm.routed(ROUTES):
        mixed = logits(host.lm, codes, CAPTIONS)
    alone = [logits(extended['own'].lm, codes[0:1], CAPTIONS[0:1]), logits(extended['lofi'].lm, codes[1:2], CAPTIONS[1:2]),
             logits(base.lm, codes[2:3], CAPTIONS[2:3]), logits(extended['chip'].lm, codes[3:4], CAPTIONS[3:4])]
    for index, expected in enumerate(alone):
        torch.testing.assert_close(mixed[index:index + 1], expected, atol=1e-5, rtol=0)
    # The base alone is the base bit for bit (on the same batch: batch size changes float rounding).
    with host.lm.routed([None] * 4):
        assert torch.equal(logits(host.lm, codes, CAPTIONS), logits(base.lm, codes, CAPTIONS))
    assert not torch.allclose(alone[0], alone[1], atol=1e-3)  # the extensions do differ


def test_greedy_generation_of_a_mixed_batch_equals_separate_models(models):
    """Text generation with classifier-free guidance (the batch doubled inside), unconditional and
    continuation: same tokens as each model generating its own item."""
    base, extended = models
    host = extended['own']
    host.attach('lofi', extended['lofi'])
    host.attach('chip', extended['chip'], extension_scale=0.5)
    extended['chip'].extension_scale = 0.5
    base.set_generation_params(duration=0.3, use_sampling=False)
    singles = [extended['own'], extended['lofi'], base, extended['chip']]
    mixed = host.generate(CAPTIONS, return_tokens=True, extensions=ROUTES)[1]
    alone = [model.generate(CAPTIONS, return_tokens=True)[1] for model in singles]
    assert len({tuple(tokens.flatten().tolist()) for tokens in alone}) == 4  # each choice generates other music
    for index, tokens in enumerate(alone):
        assert torch.equal(mixed[index], tokens[index]), index
    unconditional = host.generate_unconditional(4, return_tokens=True, extensions=ROUTES)[1]
    for index, model in enumerate(singles):
        assert torch.equal(unconditional[index:index + 1], model.generate_unconditional(1, return_tokens=True)[1])
    prompt = torch.sin(torch.arange(4 * 1600) / 10.0).reshape(4, 1, 1600) * 0.3
    continued = host.generate_continuation(prompt, 16000, CAPTIONS, return_tokens=True, extensions=ROUTES)[1]
    for index, model in enumerate(singles):
        single = model.generate_continuation(prompt[index:index + 1], 16000, CAPTIONS[index:index + 1],
                                             return_tokens=True)[1]
        assert torch.equal(continued[index:index + 1], single), index
    # One name for every item, and the own extension when none is given, as before.
    assert torch.equal(host.generate(CAPTIONS[:2], return_tokens=True, extensions='lofi')[1],
                       extended['lofi'].generate(CAPTIONS[:2], return_tokens=True)[1])
    assert torch.equal(host.generate(CAPTIONS[:2], return_tokens=True)[1],
                       extended['own'].generate(CAPTIONS[:2], return_tokens=True)[1])


def test_attach_refuses_another_base_and_bad_names(models, perturb_extension):
    _, extended = models
    host = extended['own']
    other = ExtendedMusicGen.from_base(build_tiny_musicgen('text', seed=1), num_additional_layers=1, device='cpu')
    with pytest.raises(CheckpointError, match=re.escape(f'was trained on the base with hash {other.base_hash}, but '
                                                        f"this model's base has hash {host.base_hash}")):
        host.attach('other', other)
    with pytest.raises(ValueError, match="use a Python identifier other than 'own'"):
        host.attach('own', extended['lofi'])
    host.attach('lofi', extended['lofi'])
    with pytest.raises(ValueError, match="already attached: detach"):
        host.attach('lofi', extended['chip'])
    with pytest.raises(GenerationInputError, match='3 extensions for 2 items'):
        host.generate(CAPTIONS[:2], extensions=['own', 'lofi', None])
    with pytest.raises(KeyError, match="No attached extension named 'jazz'"):
        host.generate(CAPTIONS[:2], extensions=['own', 'jazz'])
    host.detach('lofi')
    assert host.extension_names == ['own']
    with pytest.raises(TypeError, match='attach needs an extension'):
        host.attach('none', None)


def test_the_documented_script_mixes_three_extensions_and_the_base(exported_bases, egs, dora_dir, tmp_path,
                                                                   monkeypatch, perturb_extension, run_xp):
    """docs/USAGE.md's script as written, in a folder holding what it names: two saved extensions and
    a training run of the same base (the run's signature put in place of the page's)."""
    base = str(exported_bases['text'])
    for seed, path in ((1, tmp_path / 'jazz_extension'), (2, tmp_path / 'lofi_extension.safetensors')):
        model = ExtendedMusicGen.from_base(base, num_additional_layers=2, device='cpu')
        perturb_extension(model.lm, seed)
        model.save(path)
    xp, _ = run_xp(['solver=extended_musicgen_debug', f'pretrained_model_checkpoint={base}', f'egs_root={egs}',
                    'generate.every=100', 'evaluate.every=100', 'label=several_extensions'])
    (tmp_path / 'runs' / 'xps').mkdir(parents=True)
    (tmp_path / 'runs' / 'xps' / xp.sig).symlink_to(xp.folder)
    script = documented_block(USAGE, 'several-extensions:script').replace('9a8b7c6d', xp.sig)
    script = script.replace('duration=4', 'duration=0.5')  # a CPU's size
    monkeypatch.chdir(tmp_path)
    names: dict = {}
    exec(compile(script, 'several_extensions.py', 'exec'), names)
    model, wav = names['model'], names['wav']
    assert model.extension_names == ['own', 'lofi', 'chip'] and wav.shape[:2] == (4, 1)
    assert abs(wav.shape[-1] / model.sample_rate - 0.5) < 0.05
    assert torch.isfinite(wav).all() and wav.abs().amax(dim=-1).min() > 0


def test_melody_generation_of_a_mixed_batch_equals_separate_models(perturb_extension, melody_wav):
    """generate_with_chroma on a melody base: every item as its own model (or the base) generates it."""
    with offline_demucs():
        base = build_tiny_musicgen('melody', seed=0)
        models = []
        for seed in (1, 2):
            model = ExtendedMusicGen.from_base(base, num_additional_layers=1, device='cpu')
            perturb_extension(model.lm, seed, std=0.2)
            model.set_generation_params(duration=0.3, use_sampling=False)
            models.append(model)
        host, other = models
        host.attach('other', other)
        base.set_generation_params(duration=0.3, use_sampling=False)
        melodies = [melody_wav(host.sample_rate, freq=220.0 * (index + 1)) for index in range(3)]
        captions = CAPTIONS[:3]
        def chroma_tokens(model, **kwargs):
            random.seed(0)  # demucs' apply_model draws a random time shift per melody from Python's random
            return model.generate_with_chroma(captions, melodies, host.sample_rate, return_tokens=True, **kwargs)[1]
        mixed = chroma_tokens(host, extensions=['own', 'other', None])
        alone = [chroma_tokens(model) for model in (host, other, base)]
    assert len({tuple(tokens.flatten().tolist()) for tokens in alone}) == 3
    for index, tokens in enumerate(alone):
        assert torch.equal(mixed[index], tokens[index]), index


def test_attach_from_a_hub_id_and_a_training_run_signature(exported_bases, egs, dora_dir, tmp_path, monkeypatch,
                                                           perturb_extension, run_xp):
    """A Hugging Face id (offline, from a filled cache) and `//sig/SIG` with its Dora folder; a hub id
    that holds a MusicGen, not an extension, is refused."""
    import huggingface_hub.constants
    cache = tmp_path / 'hub'
    hub_repo(cache, 'someone/tiny-musicgen', {name: exported_bases['text'] / name for name in (LM_FILE, COMPRESSION_FILE)})
    monkeypatch.setenv('AUDIOCRAFT_CACHE_DIR', str(cache))
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    host = ExtendedMusicGen.from_base('someone/tiny-musicgen', 1, device='cpu')
    shared = ExtendedMusicGen.from_base('someone/tiny-musicgen', 2, device='cpu')
    perturb_extension(shared.lm, 3)
    upload = shared.save(tmp_path / 'upload', include_base=False)
    hub_repo(cache, 'someone/tiny-extension', {path.name: path for path in upload.iterdir()})
    host.attach('shared', 'someone/tiny-extension')
    xp, solver = run_xp(['solver=extended_musicgen_debug', f'pretrained_model_checkpoint={exported_bases["text"]}',
                         f'egs_root={egs}', 'generate.every=100', 'evaluate.every=100', 'label=attach_sig'])
    host.attach('run', f'//sig/{xp.sig}', dora_dir=dora_dir)
    assert host.extension_names == ['own', 'shared', 'run']
    codes = torch.randint(0, host.lm.card, (2, host.lm.num_codebooks, 10), generator=torch.Generator().manual_seed(1))
    with host.lm.routed(['shared', 'run']):
        mixed = logits(host.lm, codes, CAPTIONS[:2])
    trained = ExtendedMusicGen.from_solver_checkpoint(xp.folder, device='cpu')
    torch.testing.assert_close(mixed[0:1], logits(shared.lm, codes[0:1], CAPTIONS[:1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[1:2], logits(trained.lm, codes[1:2], CAPTIONS[1:2]), atol=1e-5, rtol=0)
    with pytest.raises(CheckpointError, match='is a MusicGen, not an extension'):
        host.attach('musicgen', 'someone/tiny-musicgen')
