"""Entry points end to end, in subprocesses: python -m audiocraft_ext.train, dora run / info / grid,
audiocraft-ext prepare-data and export. Every subprocess pays AudioCraft's import (~20-30 s on
2 cores), so there are few of them, all on the tiny debug config."""
import json
import os
from pathlib import Path

import pytest
import torch

from audiocraft_ext import cli
from audiocraft_ext.data.prepare import DataPreparationError, prepare_data
from audiocraft_ext.data.synth_dataset import write_tone_folder
from audiocraft_ext.io import extension_files
from audiocraft_ext.train import expand_config_flags

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def workdir(tmp_path_factory) -> Path:
    """A folder with a synthetic dataset prepared by the CLI (egs/tones)."""
    root = tmp_path_factory.mktemp('entry')
    return root


def test_expand_config_flags():
    assert expand_config_flags(['--config=solver/extended_musicgen', 'a=1']) == ['solver=extended_musicgen', 'a=1']
    assert expand_config_flags(['--config', 'solver/extended_musicgen_debug.yaml']) == \
        ['solver=extended_musicgen_debug']
    assert expand_config_flags(['--config=dset/audio/egs']) == ['dset=audio/egs']
    with pytest.raises(SystemExit):
        expand_config_flags(['--config=nogroup'])


def test_prepare_data_errors(tmp_path):
    audio = tmp_path / 'audio'
    write_tone_folder(audio, num_files=4, duration=0.5)
    (audio / 'broken.wav').write_bytes(b'not audio at all')
    with pytest.raises(DataPreparationError, match='cannot be read: broken.wav'):
        prepare_data(audio, tmp_path / 'egs', captions=audio / 'captions.csv')
    (audio / 'broken.wav').unlink()
    (audio / 'captions.csv').write_text('file,description\ntone_000.wav,a tone\n')
    with pytest.raises(DataPreparationError, match='3 audio file\\(s\\) have no caption'):
        prepare_data(audio, tmp_path / 'egs', captions=audio / 'captions.csv')
    with pytest.raises(DataPreparationError, match="'file' column"):
        (tmp_path / 'bad.csv').write_text('name,text\nx,y\n')
        prepare_data(audio, tmp_path / 'egs', captions=tmp_path / 'bad.csv')
    with pytest.raises(DataPreparationError, match='split is empty'):
        prepare_data(audio, tmp_path / 'egs', valid=0.0, allow_missing_captions=True)
    assert cli.main(['prepare-data', str(tmp_path / 'nothing'), '--out', str(tmp_path / 'egs')]) == 2


@pytest.mark.slow
def test_prepare_data_then_train_with_config_flag_then_export(workdir, exported_bases, run_python, capsys):
    dora_dir = workdir / 'dora'
    assert cli.main(['prepare-data', str(workdir / 'audio'), '--synthetic', '6',
                     '--out', str(workdir / 'egs/tones')]) == 0
    assert len((workdir / 'egs/tones/train/data.jsonl').read_text().splitlines()) == 4
    for split in ('train', 'valid', 'evaluate', 'generate'):
        assert (workdir / 'egs/tones' / split / 'data.jsonl').exists()
    sidecar = json.loads((workdir / 'audio/tone_000.json').read_text())
    assert sidecar['description'].startswith('a calm sine tone') and sidecar['moods'] == ['calm']

    # Relative paths (data, base) are relative to the launch directory.
    base = Path(os.path.relpath(exported_bases['text'], workdir))
    run_python(['-m', 'audiocraft_ext.train', '--config=solver/extended_musicgen_debug',
                f'pretrained_model_checkpoint={base}', 'egs_root=egs/tones', 'dora.dir=xps_here'],
               workdir, dora_dir)
    checkpoints = list((workdir / 'xps_here' / 'xps').glob('*/checkpoint.th'))
    assert len(checkpoints) == 1
    state = torch.load(checkpoints[0])
    assert state['base_model']['reference'] == str(exported_bases['text'])
    assert len(state['history']) == 2
    valid = [epoch['valid']['ce'] for epoch in state['history']]
    assert valid[1] < valid[0] - 0.1, valid  # measured 5.531 -> 5.258 nats/token

    # Export: stock AudioCraft loads the merged L + N layer model.
    from audiocraft.models import MusicGen
    assert cli.main(['export', str(checkpoints[0]), str(workdir / 'exported'), '--format', 'audiocraft']) == 0
    stock = MusicGen.get_pretrained(str(workdir / 'exported'), device='cpu')
    assert len(stock.lm.transformer.layers) == 4
    assert cli.main(['export', str(checkpoints[0].parent), str(workdir / 'model.pt')]) == 0
    assert (workdir / 'model.pt').exists()
    # As TRAINING.md shows it: the new layers and the base's reference, a directory.
    assert cli.main(['export', str(checkpoints[0]), str(workdir / 'my_extension'), '--extension-only']) == 0
    assert extension_files.kind_of(workdir / 'my_extension') == 'directory'
    assert set(extension_files.parameter_counts(workdir / 'my_extension')) == {'extension'}
    # The old name of the flag still works, and says it is deprecated.
    assert cli.main(['export', str(checkpoints[0]), str(workdir / 'old_flag'), '--adapter-only']) == 0
    assert set(extension_files.parameter_counts(workdir / 'old_flag')) == {'extension'}
    assert 'warning: --adapter-only is deprecated' in capsys.readouterr().err


@pytest.mark.slow
def test_dora_grid_dry_run(tmp_path, run_python):
    dora_dir = tmp_path / 'dora'
    grid = run_python(['-m', 'dora', '-P', 'audiocraft_ext', 'grid', 'extended_musicgen', '--dry_run', '--init'],
                      tmp_path, dora_dir)
    assert 'num_additional_layers=4' in grid.stdout
    assert len(list((dora_dir / 'xps').iterdir())) == 4
