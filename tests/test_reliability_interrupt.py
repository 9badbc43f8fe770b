"""A training run killed with SIGKILL in the middle of an epoch, then started again with the same
command, resumes from its last checkpoint and ends with exactly the weights of a run that was
never interrupted (CPU, one thread, fixed seeds).

Why bit-equality holds: the solver reseeds Python's, NumPy's and torch's RNGs from
(seed, epoch) at the start of every epoch, and AudioCraft's datasets draw their segments from
(index, epoch), so epoch k sees the same data and the same CFG-dropout masks whether the process
trained epochs 1..k-1 itself or restored them from `checkpoint.th` (optimizer state included).

Two subprocesses (the killed run and the resumed one, ~30 s of imports each) and one in-process
reference run.
"""
import os
from pathlib import Path
import re
import signal
import subprocess
import sys
import time
import typing as tp

import pytest
import torch

from audiocraft_ext import train
from audiocraft_ext.data.prepare import prepare_data
from audiocraft_ext.data.synth_dataset import write_tone_folder

UPDATES = 16


def command(base: Path, egs: Path, dora_dir: Path) -> tp.List[str]:
    return ['solver=extended_musicgen_debug', f'pretrained_model_checkpoint={base}', f'egs_root={egs}',
            'optim.epochs=2', f'optim.updates_per_epoch={UPDATES}', f'dataset.train.num_samples={2 * UPDATES}',
            f'logging.log_updates={UPDATES}', '++evaluate.compare_base=false', f'dora.dir={dora_dir}']


def start(args: tp.List[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    return subprocess.Popen([sys.executable, '-m', 'audiocraft_ext.train', *args], env=env,
                            stdout=open(log, 'w'), stderr=subprocess.STDOUT)


def wait_for(predicate: tp.Callable[[], bool], process: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (rc {process.returncode}) before the kill:\n"
                                 f"{log.read_text()[-4000:]}")
        if time.time() > deadline:
            process.kill()
            raise AssertionError(f"timed out:\n{log.read_text()[-4000:]}")
        time.sleep(0.02)


@pytest.fixture
def reference_run(run_xp):
    """`reference_run(args) -> folder`: the same command, uninterrupted, in this process (seeded as
    `train.main` seeds); torch's thread count is put back after."""
    def run(args: tp.List[str]) -> Path:
        threads = torch.get_num_threads()
        try:
            return run_xp(args)[0].folder
        finally:
            torch.set_num_threads(threads)
    return run


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_equals_an_uninterrupted_run(exported_bases, tmp_path, monkeypatch, reference_run):
    write_tone_folder(tmp_path / 'audio', num_files=6, duration=1.5)
    prepare_data(tmp_path / 'audio', tmp_path / 'egs', captions=tmp_path / 'audio' / 'captions.csv')
    egs = tmp_path / 'egs'
    args = command(exported_bases['text'], egs, tmp_path / 'killed')

    # 1. Start, wait until epoch 1 is checkpointed and epoch 2 has trained a few steps, SIGKILL.
    log = tmp_path / 'first.log'
    process = start(args, log)
    progress = re.compile(rf'Train \| Epoch 2 \| (\d+)/{UPDATES}')

    def mid_epoch_2() -> bool:
        steps = [int(m) for m in progress.findall(log.read_text(errors='replace'))]
        return bool(steps) and max(steps) >= 3
    wait_for(mid_epoch_2, process, log)
    process.send_signal(signal.SIGKILL)
    process.wait()
    folders = list((tmp_path / 'killed' / 'xps').iterdir())
    assert len(folders) == 1
    folder = folders[0]
    killed = torch.load(folder / 'checkpoint.th')
    assert len(killed['history']) == 1, "the kill must land in epoch 2, after epoch 1's checkpoint"
    assert not (folder / 'checkpoint_2.th').exists()

    # 2. The same command again: resumes after epoch 1 (the kernel released the run lock).
    log = tmp_path / 'second.log'
    process = start(args, log)
    assert process.wait(timeout=300) == 0, log.read_text()[-4000:]
    output = log.read_text(errors='replace')
    assert 'Loading existing checkpoint' in output and str(folder / 'checkpoint.th') in output
    resumed = torch.load(folder / 'checkpoint.th')
    assert len(resumed['history']) == 2
    assert resumed['history'][0] == killed['history'][0]  # replayed from the checkpoint, not retrained

    # 3. An uninterrupted run of the same command ends with bit-identical weights and optimizer state.
    monkeypatch.setattr(train.main.dora, 'dir', tmp_path / 'reference')
    reference_folder = reference_run(args[:-1])  # same overrides but dora.dir: same signature
    assert reference_folder.name == folder.name
    reference = torch.load(reference_folder / 'checkpoint.th')
    assert set(resumed['model']) == set(reference['model'])
    for key, value in reference['model'].items():
        assert torch.equal(resumed['model'][key], value), f"model.{key} differs"
    for key, value in reference['best_state']['model'].items():
        assert torch.equal(resumed['best_state']['model'][key], value), key
    for index, state in reference['optimizer']['state'].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(resumed['optimizer']['state'][index][name]),
                               torch.as_tensor(value)), (index, name)
    assert resumed['history'][1]['train']['ce'] == reference['history'][1]['train']['ce']
