"""`python -m audiocraft.train solver=extended_musicgen_debug` through our Hydra SearchPathPlugin.

Needs AudioCraft's `config/` tree, which pip does not install: the test uses the AudioCraft
1.3.0 source distribution from PyPI (`AUDIOCRAFT_SDIST_DIR` if set, else downloaded once with
`pip download` into ~/.cache/audiocraft-ext/sdist) and runs its `audiocraft` package from there, with this
repository on the path so Hydra discovers `hydra_plugins/audiocraft_ext`. Skipped when the
source distribution cannot be had (offline).
"""
import os
import shutil
from pathlib import Path
import subprocess
import sys
import tarfile

import pytest
import torch

from audiocraft_ext.data.prepare import prepare_data
from audiocraft_ext.data.synth_dataset import write_tone_folder

ROOT = Path(__file__).resolve().parents[1]


def audiocraft_sdist(cache_dir: Path) -> Path:
    given = os.environ.get('AUDIOCRAFT_SDIST_DIR')
    if given:
        return Path(given)
    target = cache_dir / 'audiocraft-1.3.0'
    if (target / 'config' / 'config.yaml').exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    # pip's own client (the uv-made venv may have no pip: fall back to the system one).
    pythons = [sys.executable] + ([shutil.which('python3')] if shutil.which('python3') else [])
    python = next((p for p in pythons if subprocess.run([p, '-m', 'pip', '--version'],
                                                        capture_output=True).returncode == 0), None)
    if python is None:
        pytest.skip("pip is not available to fetch the AudioCraft source distribution")
    result = subprocess.run([python, '-m', 'pip', 'download', '--no-deps', '--no-binary', 'audiocraft',
                             'audiocraft==1.3.0', '-d', str(cache_dir)], capture_output=True, text=True,
                            timeout=300)
    archives = list(cache_dir.glob('audiocraft-1.3.0.tar.gz'))
    if result.returncode != 0 or not archives:
        pytest.skip(f"AudioCraft 1.3.0 source distribution unavailable: {result.stderr[-300:]}")
    with tarfile.open(archives[0]) as archive:
        archive.extractall(cache_dir, filter='data')
    return target


@pytest.mark.slow
def test_audiocraft_train_runs_our_solver(exported_bases, tmp_path):
    cache = Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache')) / 'audiocraft-ext' / 'sdist'
    sdist = audiocraft_sdist(cache)
    assert (sdist / 'config' / 'solver' / 'default.yaml').exists()
    write_tone_folder(tmp_path / 'audio', num_files=5, duration=1.5)
    prepare_data(tmp_path / 'audio', tmp_path / 'egs', captions=tmp_path / 'audio' / 'captions.csv')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(sdist), str(ROOT)]), USER=os.environ.get('USER', 'test'),
               AUDIOCRAFT_DORA_DIR=str(tmp_path / 'dora'), PYTHONWARNINGS='ignore')
    env.pop('AUDIOCRAFT_CONFIG', None)
    result = subprocess.run(
        [sys.executable, '-m', 'audiocraft.train', 'solver=extended_musicgen_debug',
         f'pretrained_model_checkpoint={exported_bases["text"]}', f'egs_root={tmp_path / "egs"}', 'optim.epochs=1'],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-5000:]
    checkpoint, = (tmp_path / 'dora' / 'xps').glob('*/checkpoint.th')
    state = torch.load(checkpoint, weights_only=False)  # AudioCraft's train saved it: xp.cfg may be a DictConfig
    assert state['base_model']['reference'] == str(exported_bases['text'])
    assert 'ExtendedMusicGenSolver' in (checkpoint.parent / 'solver.log.0').read_text()
