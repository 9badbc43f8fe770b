"""The commands and imports the original Extended MusicGen document showed, each beside ours.

README's table "Coming from the original Extended MusicGen document" lists them; every row runs
here: the original text verbatim (its placeholder paths replaced by test paths; sizes shrunk for a
CPU by overrides appended after it) and what we offer instead where it cannot work as written.
`python -m audiocraft.train` runs in a subprocess on the pip-installed AudioCraft of this venv
(no `config/` tree), through our Hydra plugin.
"""
import importlib.util
import math
import os
from pathlib import Path
import re
import runpy
import shlex
import subprocess
import sys

import pytest
import torch
import torchaudio

from adaptation_checks import gain_and_forgetting
from audiocraft.models import MusicGen
from audiocraft_ext import ExtendedMusicGen, evaluate, train
from audiocraft_ext.io.hashing import weights_hash
from audiocraft_ext.models.tiny import build_tiny_musicgen


ROOT = Path(__file__).resolve().parents[1]

ORIGINAL_TRAIN = ('python -m audiocraft.train --config=solver/extended_musicgen '
                  'pretrained_model_checkpoint=/path/to/musicgen_checkpoint.pt dora.dir=/path/for/experiment/logs')
ORIGINAL_OVERRIDE = 'extended_model.num_additional_layers'
ORIGINAL_CONFIG_FILE = 'configs/solver/extended_musicgen.yaml'
ORIGINAL_IMPORT = 'from audiocraft.models.extended_musicgen import ExtendedMusicGen'
ORIGINAL_LOAD = 'ExtendedMusicGen.get_pretrained("/path/to/your/extended_model_checkpoint.pt")'
ORIGINAL_GENERATE = 'model.generate(descriptions=["happy rock music with electric guitar and drums"], progress=True)'
ORIGINAL_SAVE = 'torchaudio.save("generated_audio.wav", wav[0].cpu(), sample_rate=model.sample_rate)'
ORIGINAL_EVALUATE = ('python -m audiocraft.evaluate --config=solver/extended_musicgen '
                     'sig=your_extended_model_signature')
OURS_EVALUATE = ('python -m audiocraft_ext.evaluate --config=solver/extended_musicgen '
                 'sig=your_extended_model_signature')

# Appended to the original training command: the data, and sizes a CPU runs in a minute.
CPU_RUN = ['extended_model.num_additional_layers=2', 'dataset.batch_size=2', 'dataset.num_workers=0',
           'dataset.segment_duration=1', 'dataset.min_segment_ratio=0.5', 'dataset.train.num_samples=4',
           'dataset.valid.num_samples=2', 'dataset.evaluate.num_samples=2', 'dataset.generate.num_samples=2',
           'optim.epochs=1', 'optim.updates_per_epoch=2', 'schedule.lr_scheduler=null', 'generate.every=1',
           'evaluate.every=1', 'generate.lm.gen_duration=0.5', 'generate.lm.prompted_samples=false',
           'evaluate.num_generations=2']


def readme_table() -> str:
    text = (ROOT / 'README.md').read_text()
    match = re.search(r'^## Coming from the original Extended MusicGen document\n(.*?)^## ', text, re.M | re.S)
    assert match, "README has no 'Coming from the original Extended MusicGen document' section"
    return match.group(1)


def test_the_readme_table_shows_each_original_verbatim_beside_ours():
    rows = [line for line in readme_table().splitlines() if line.startswith('| `')]
    originals = [ORIGINAL_TRAIN, ORIGINAL_OVERRIDE, ORIGINAL_CONFIG_FILE, ORIGINAL_IMPORT, ORIGINAL_LOAD,
                 ORIGINAL_GENERATE, ORIGINAL_SAVE, ORIGINAL_EVALUATE]
    assert [row.split(' | ')[0][len('| '):] for row in rows] == [f'`{original}`' for original in originals]
    assert OURS_EVALUATE in readme_table() and 'from audiocraft_ext import ExtendedMusicGen' in readme_table()


@pytest.mark.slow
def test_original_train_command_trains_then_ours_evaluates_it(exported_bases, egs, dora_dir, tmp_path):
    """`python -m audiocraft.train --config=... dora.dir=...` verbatim, on a pip install of AudioCraft."""
    assert not (Path(importlib.util.find_spec('audiocraft').origin).parents[1] / 'config').exists(), \
        "this checks the pip layout: AudioCraft's own config/ tree is not installed"
    command = (ORIGINAL_TRAIN.replace('/path/to/musicgen_checkpoint.pt', str(exported_bases['text']))
               .replace('/path/for/experiment/logs', str(dora_dir)))
    args = shlex.split(command)
    assert args[:3] == ['python', '-m', 'audiocraft.train']
    env = {key: value for key, value in os.environ.items()
           if key not in ('AUDIOCRAFT_CONFIG', 'AUDIOCRAFT_DORA_DIR', 'AUDIOCRAFT_EXT_DORA_DIR')}
    result = subprocess.run([sys.executable, *args[1:], f'egs_root={egs}', *CPU_RUN], cwd=tmp_path,
                            env=dict(env, PYTHONWARNINGS='ignore'), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    checkpoint, = dora_dir.glob('xps/*/checkpoint.th')
    state = torch.load(checkpoint)
    assert state['base_model']['reference'] == str(exported_bases['text'])
    assert state['base_model']['extension_config']['num_additional_layers'] == 2
    assert len(state['history']) == 1
    assert 'ExtendedMusicGenSolver' in (checkpoint.parent / 'solver.log.0').read_text()

    # AudioCraft has no audiocraft.evaluate; ours takes the same arguments.
    ours = shlex.split(OURS_EVALUATE.replace('your_extended_model_signature', checkpoint.parent.name))
    assert ours[:3] == ['python', '-m', 'audiocraft_ext.evaluate']
    report = evaluate.run([*ours[3:], f'dora.dir={dora_dir}'])
    assert Path(report['metrics_path']) == checkpoint.parent / 'evaluation' / 'metrics.json'
    # The run AudioCraft's command trained, after its one epoch, on the base that command named.
    assert (report['sig'], report['checkpoint'], report['epoch']) == (checkpoint.parent.name, str(checkpoint), 1)
    assert report['base_model'] == str(exported_bases['text'])
    assert report['base_hash'] == weights_hash(build_tiny_musicgen('text', seed=0).lm.state_dict())
    assert report['run']['num_additional_layers'] == 2
    new = report['sets']['new']
    assert math.isfinite(new['base']['ce']) and math.isfinite(new['extended']['ce'])
    # Its 2 updates at lr 1e-3 learnt a little and forgot next to nothing (measured: gain 0.0165,
    # forgetting of the base's held-out generations 0.0008 nats per token); learning rate 0: 0 and 0.
    gain, forgetting = gain_and_forgetting(checkpoint.parent)
    assert gain > 0.008 and forgetting < 0.01, report['sets']


def test_python_says_audiocraft_has_no_evaluate_module():
    """What `python -m audiocraft.evaluate` runs (runpy): Python stops before any code of ours."""
    command = shlex.split(ORIGINAL_EVALUATE)
    assert command[:3] == ['python', '-m', 'audiocraft.evaluate']
    with pytest.raises(ImportError, match=r'^No module named audiocraft\.evaluate$'):
        runpy.run_module(command[2], run_name='__main__')


def test_the_override_and_the_config_file_of_the_original():
    assert (ROOT / ORIGINAL_CONFIG_FILE).is_file()
    assert (ROOT / ORIGINAL_CONFIG_FILE).samefile(train.CONFIG_DIR / 'solver' / 'extended_musicgen.yaml')
    flags = train.expand_config_flags(['--config=solver/extended_musicgen'])
    cfg = train.main.get_xp(flags).cfg
    assert cfg.solver == 'extended_musicgen'
    assert cfg.extended_model.num_additional_layers == 12
    assert train.main.get_xp([*flags, f'{ORIGINAL_OVERRIDE}=3']).cfg.extended_model.num_additional_layers == 3


def test_the_original_import_is_not_ours_to_offer():
    """We add nothing to AudioCraft's package: the original import fails; ours is the same class."""
    with pytest.raises(ModuleNotFoundError, match="No module named 'audiocraft.models.extended_musicgen'"):
        exec(ORIGINAL_IMPORT, {})
    namespace: dict = {}
    exec('from audiocraft_ext import ExtendedMusicGen', namespace)
    assert namespace['ExtendedMusicGen'] is ExtendedMusicGen and issubclass(ExtendedMusicGen, MusicGen)


def test_load_generate_and_save_as_the_original_wrote_them(tmp_path, monkeypatch, capsys, perturb_extension):
    trained = ExtendedMusicGen.from_base(build_tiny_musicgen('text'), num_additional_layers=2)
    perturb_extension(trained.lm)
    path = trained.save(tmp_path / 'extended_model_checkpoint.pt')
    model = eval(ORIGINAL_LOAD.replace('/path/to/your/extended_model_checkpoint.pt', str(path)),
                 {'ExtendedMusicGen': ExtendedMusicGen})
    assert isinstance(model, ExtendedMusicGen) and model.lm.num_additional_layers == 2
    model.set_generation_params(duration=0.5)
    capsys.readouterr()
    wav = eval(ORIGINAL_GENERATE, {'model': model})
    assert list(wav.shape) == [1, 1, 8000]
    assert re.search(r'\d+ / +\d+', capsys.readouterr().out), "progress=True prints the token count"
    monkeypatch.chdir(tmp_path)
    exec(ORIGINAL_SAVE, {'torchaudio': torchaudio, 'wav': wav, 'model': model})
    saved, sample_rate = torchaudio.load(tmp_path / 'generated_audio.wav')
    assert sample_rate == model.sample_rate == 16000 and list(saved.shape) == [1, 8000]
