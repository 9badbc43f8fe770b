"""`audiocraft-ext generate`: one WAV and one JSON per caption, reproducible, never overwriting,
every bad input refused with one `error:` line before anything is generated.

Models are tiny bases (`audiocraft_ext.models.tiny`) with one new layer, perturbed so that the
extension changes the output, saved with `ExtendedMusicGen.save`. The commands run as typed
(subprocess) where the model can load offline; a melody model's chroma conditioner needs demucs,
which only the in-process `offline_demucs` patch provides, so melody runs through `cli.main`.
"""
import json
from pathlib import Path
import shlex
import subprocess
import sys
import typing as tp

import numpy as np
import pytest
import soundfile

from audiocraft_ext import cli
from audiocraft_ext.models.tiny import build_tiny_musicgen, offline_demucs


COMMAND = str(Path(sys.executable).parent / 'audiocraft-ext')
SAMPLE_RATE = 16000


@pytest.fixture(scope='module')
def models(tmp_path_factory, perturb_extension) -> tp.Dict[str, Path]:
    """Two text models on the same base with different new layers, and a melody model."""
    from audiocraft_ext import ExtendedMusicGen

    def save_model(path: Path, flavour: str = 'text', extension_seed: int = 1) -> Path:
        with offline_demucs():
            model = ExtendedMusicGen.from_base(build_tiny_musicgen(flavour, seed=0), num_additional_layers=1)
        perturb_extension(model.lm, seed=extension_seed, std=0.2)
        return model.save(path)
    root = tmp_path_factory.mktemp('models')
    return {'text': save_model(root / 'text.safetensors'), 'other': save_model(root / 'other.safetensors', extension_seed=2),
            'melody': save_model(root / 'melody.safetensors', 'melody')}


def write_tone(path: Path, seconds: float, sample_rate: int = SAMPLE_RATE, channels: int = 1) -> Path:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wav = 0.3 * np.sin(2 * np.pi * 220.0 * t)
    soundfile.write(str(path), np.stack([wav] * channels, axis=1).astype(np.float32), sample_rate)
    return path


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([COMMAND, 'generate', *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def samples(path: Path) -> np.ndarray:
    wav, sample_rate = soundfile.read(str(path), dtype='float32')
    assert sample_rate == SAMPLE_RATE
    return wav


@pytest.mark.slow
def test_generate_as_typed(models, tmp_path):
    from audiocraft_ext import ExtendedMusicGen
    captions = ['calm <b>piano</b>', 'fast drums']
    typed = [str(models['text']), *captions, '--duration', '0.5', '--out', 'out', '--seed', '7']
    result = run(*typed, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / 'out'
    assert sorted(p.name for p in out.iterdir()) == [
        '000_calm-b-piano-b.json', '000_calm-b-piano-b.wav', '001_fast-drums.json', '001_fast-drums.wav']
    assert result.stdout.splitlines() == ['wrote out/000_calm-b-piano-b.wav', 'wrote out/001_fast-drums.wav']
    assert '100%|' in result.stderr and '[2/2] fast drums' in result.stderr  # tqdm, per caption
    base_hash = ExtendedMusicGen.get_pretrained(str(models['text']), device='cpu').base_hash
    for index, (caption, stem) in enumerate(zip(captions, ['000_calm-b-piano-b', '001_fast-drums'])):
        wav = samples(out / f'{stem}.wav')
        assert wav.shape == (8000,) and np.isfinite(wav).all() and np.abs(wav).max() > 0.01
        settings = json.loads((out / f'{stem}.json').read_text())
        assert settings['caption'] == caption and settings['file'] == f'{stem}.wav'
        assert settings['seed'] == 7 + index and settings['extension_scale'] == 1.0
        assert settings['duration'] == 0.5 and settings['sample_rate'] == SAMPLE_RATE
        assert settings['base']['hash'] == base_hash and settings['generation_params']['top_k'] == 250
    # The same command again: refused before loading anything, nothing touched.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = run(*typed, cwd=tmp_path)
    assert again.returncode == 2 and again.stdout == ''
    assert again.stderr == ("error: out/000_calm-b-piano-b.wav already exists (and 3 more): choose another --out, "
                            "or pass --overwrite to replace it.\n")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # The command recorded in the JSON generates the same audio again (into another folder).
    words = shlex.split(json.loads((out / '001_fast-drums.json').read_text())['command'])
    assert words[:2] == ['audiocraft-ext', 'generate']
    words[words.index('--out') + 1] = 'again'
    assert run(*words[2:], cwd=tmp_path).returncode == 0
    assert np.array_equal(samples(tmp_path / 'again' / '000_fast-drums.wav'), samples(out / '001_fast-drums.wav'))


def _cli(*args: str) -> int:
    return cli.main(['generate', *map(str, args)])


def test_attached_extensions_and_the_base_per_caption(models, tmp_path):
    """--attach and --extensions: each caption's file is what the model of its extension (or the
    base alone) writes for it with the same seed, and its JSON names the extension."""
    common = ['--duration', '0.3', '--seed', '3']
    assert _cli(models['text'], 'calm', 'fast', 'slow', *common, '--attach', f'other={models["other"]}',
                '--extensions', 'own,other,base', '--out', tmp_path / 'mixed') == 0
    assert _cli(models['other'], 'x', 'fast', *common, '--out', tmp_path / 'other') == 0
    assert _cli(models['text'], 'x', 'y', 'slow', *common, '--scale', '0', '--out', tmp_path / 'base') == 0
    assert _cli(models['text'], 'calm', *common, '--out', tmp_path / 'own') == 0
    mixed = tmp_path / 'mixed'
    assert np.array_equal(samples(mixed / '000_calm.wav'), samples(tmp_path / 'own' / '000_calm.wav'))
    assert np.array_equal(samples(mixed / '001_fast.wav'), samples(tmp_path / 'other' / '001_fast.wav'))
    assert np.array_equal(samples(mixed / '002_slow.wav'), samples(tmp_path / 'base' / '002_slow.wav'))
    assert not np.array_equal(samples(mixed / '001_fast.wav'), samples(tmp_path / 'base' / '001_y.wav'))
    settings = json.loads((mixed / '001_fast.json').read_text())
    assert settings['extension'] == {'name': 'other', 'source': str(models['other'])}
    assert f'--attach=other={models["other"]}' in settings['command'] and '--extensions other' in settings['command']
    # An extension of another base is refused before anything is written.
    from audiocraft_ext import ExtendedMusicGen
    stranger = ExtendedMusicGen.from_base(build_tiny_musicgen('text', seed=5), num_additional_layers=1)
    stranger_file = stranger.save(tmp_path / 'stranger.safetensors')
    assert _cli(models['text'], 'calm', *common, '--attach', f'stranger={stranger_file}', '--out',
                tmp_path / 'refused') == 2
    assert not (tmp_path / 'refused').exists()


def test_scale_zero_is_the_base_and_overwrite_replaces(models, tmp_path):
    """--scale 0 removes the new layers exactly: two models that differ only there generate the same."""
    common = ['calm piano', '--duration', '0.3', '--seed', '3']
    assert _cli(models['text'], *common, '--scale', '0', '--out', tmp_path / 'a') == 0
    assert _cli(models['other'], *common, '--scale', '0', '--out', tmp_path / 'b') == 0
    assert _cli(models['other'], *common, '--out', tmp_path / 'c') == 0
    name = '000_calm-piano.wav'
    base = samples(tmp_path / 'a' / name)
    assert np.array_equal(base, samples(tmp_path / 'b' / name))
    assert not np.array_equal(base, samples(tmp_path / 'c' / name))
    assert json.loads((tmp_path / 'a' / '000_calm-piano.json').read_text())['extension_scale'] == 0.0
    # --overwrite: the scale-1 output replaces the scale-0 one.
    assert _cli(models['other'], *common, '--out', tmp_path / 'b', '--overwrite') == 0
    assert np.array_equal(samples(tmp_path / 'b' / name), samples(tmp_path / 'c' / name))
    assert json.loads((tmp_path / 'b' / '000_calm-piano.json').read_text())['extension_scale'] == 1.0
    assert [p.name for p in (tmp_path / 'b').iterdir() if p.name.startswith('.')] == []  # no temporaries


def test_continuation_and_melody(models, tmp_path, demucs_offline):
    prompt = write_tone(tmp_path / 'prompt.wav', 0.3)
    assert _cli(models['text'], 'fast drums', '--duration', '0.6', '--continue', prompt, '--seed', '1',
                '--out', tmp_path / 'continued') == 0
    assert samples(tmp_path / 'continued' / '000_fast-drums.wav').shape == (9600,)
    settings = json.loads((tmp_path / 'continued' / '000_fast-drums.json').read_text())
    assert settings['continue'] == str(prompt) and settings['melody'] is None
    assert f'--continue {prompt}' in settings['command']
    # A stereo 22.05 kHz melody for a mono 16 kHz melody model: converted like MusicGen does.
    melody = write_tone(tmp_path / 'melody.wav', 1.0, sample_rate=22050, channels=2)
    assert _cli(models['melody'], 'calm piano', '--duration', '0.4', '--melody', melody,
                '--out', tmp_path / 'melodic') == 0
    assert samples(tmp_path / 'melodic' / '000_calm-piano.wav').shape == (6400,)
    settings = json.loads((tmp_path / 'melodic' / '000_calm-piano.json').read_text())
    assert settings['melody'] == str(melody) and 0 <= settings['seed'] < 2 ** 32  # drawn, and recorded


def _bad_files(root: Path) -> None:
    write_tone(root / 'long.wav', 1.0)
    (root / 'notes.txt').write_text('not audio')
    soundfile.write(str(root / 'three.wav'), np.zeros((1600, 3), dtype=np.float32), SAMPLE_RATE)
    soundfile.write(str(root / 'empty.wav'), np.zeros((0, 1), dtype=np.float32), SAMPLE_RATE)
    (root / 'folder').mkdir()


BAD_INPUTS = [
    ('duration zero', ['calm', '--duration', '0'], '--duration 0 is not a positive number of seconds.'),
    ('duration nan', ['calm', '--duration', 'nan'], '--duration nan is not a positive number of seconds.'),
    ('negative scale', ['calm', '--scale', '-0.5'], '--scale: extension_scale=-0.5 is out of range: use a value from 0 to 10'),
    ('infinite scale', ['calm', '--scale', 'inf'], '--scale: extension_scale=inf is out of range'),
    ('empty caption', ['calm', ' '], 'Caption 2 is empty: describe the music to generate.'),
    ('negative seed', ['calm', '--seed', '-1'], '--seed -1 is out of range: use an integer from 0 to 4294967295.'),
    ('melody missing', ['calm', '--melody', 'nope.wav'], '--melody nope.wav does not exist: give an audio file.'),
    ('melody is a folder', ['calm', '--melody', 'folder'], '--melody folder is a directory: give an audio file.'),
    ('continuation not audio', ['calm', '--continue', 'notes.txt'], '--continue notes.txt is not readable audio ('),
    ('continuation empty', ['calm', '--continue', 'empty.wav'], '--continue empty.wav holds no samples'),
    ('continuation too long', ['calm', '--continue', 'long.wav'],
     '--continue long.wav lasts 1.00 s, not shorter than --duration 0.5: trim it or raise --duration.'),
    ('three channels', ['calm', '--melody', 'three.wav'], '--melody three.wav has 3 channels: give a mono or stereo'),
    ('out is a file', ['calm', '--out', 'notes.txt'], '--out notes.txt is a file: give a folder.'),
    ('attach without a name', ['calm', '--attach', 'lofi.safetensors'],
     '--attach lofi.safetensors: give NAME=EXTENSION, NAME a Python identifier other than'),
    ('extensions of another count', ['calm', 'fast', '--extensions', 'own,base,own'],
     '--extensions names 3 extensions for 2 captions: give one per caption, or one for all.'),
    ('extension not attached', ['calm', '--extensions', 'lofi'],
     "--extensions lofi: no such extension; use 'own', 'base' or a name given with --attach (none given)."),
]


@pytest.mark.parametrize('args,message', [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_gets_one_error_line_before_any_work(args, message, tmp_path):
    _bad_files(tmp_path)
    # The model file does not even exist: these are found before it is loaded (no torch import).
    defaults = {'--duration': '0.5', '--out': 'out'}
    typed = ['model.pt', *args] + [x for key, value in defaults.items() if key not in args for x in (key, value)]
    result = run(*typed, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ''
    assert result.stderr.startswith(f'error: {message}') and result.stderr.count('\n') == 1, result.stderr
    assert not (tmp_path / 'out').exists()


def test_melody_and_continuation_together_are_refused(tmp_path):
    result = run('model.pt', 'calm', '--duration', '1', '--out', 'out', '--melody', 'a.wav', '--continue', 'b.wav',
                 cwd=tmp_path)
    assert result.returncode == 2 and 'argument --continue: not allowed with argument --melody' in result.stderr


def test_model_errors_found_before_generating(models, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _cli('nope.pt', 'calm', '--duration', '0.5', '--out', 'out') == 2
    assert capsys.readouterr().err == ('error: Extension not found: nope.pt. Check the path, or give a Hugging Face '
                                       'id (user/repo).\n')
    not_a_model = write_tone(tmp_path / 'tone.wav', 0.5)
    assert _cli(not_a_model, 'calm', '--duration', '0.5', '--out', tmp_path / 'out') == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: {not_a_model} was not written by ExtendedMusicGen.save') and err.count('\n') == 1
    assert _cli(models['text'], 'calm', '--duration', '0.5', '--melody', not_a_model, '--out', tmp_path / 'out') == 2
    err = capsys.readouterr().err
    assert err == (f"error: --melody: {models['text']} has no melody conditioner (a text-only base); use a model "
                   "extended from a melody base such as facebook/musicgen-melody, or drop --melody.\n")
    assert not (tmp_path / 'out').exists()
