"""A training run killed with SIGKILL in the middle of an epoch, then started again with the same
command, resumes from its last checkpoint and ends with exactly the weights of a run that was
never interrupted (CPU, one thread, fixed seeds).

Why bit-equality holds: the solver reseeds Python's, NumPy's and torch's RNGs from
(seed, epoch) at the start of every epoch, and AudioCraft's datasets draw their segments from
(index, epoch), so epoch k sees the same data and the same CFG-dropout masks whether the process
trained epochs 1..k-1 itself or restored them from `checkpoint.th` (optimizer state included).

Two subprocesses (the killed run and the resumed one, ~30 s of imports each) and one in-process
reference run. The kill waits for a state, not a time: the first run is the same command with one
hook, which stops in epoch 2 before its step PAUSE_AT and says so in a marker file; SIGKILL lands
there however fast or slow the machine is.
"""
import os
from pathlib import Path
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

UPDATES = 6
PAUSE_AT = 3  # epoch 2 is killed before this step (steps 0..PAUSE_AT-1 trained)

# `python -m audiocraft_ext.train ARGS`, run with runpy as `-m` runs it, after one change: the solver
# waits, in training step PAUSE_AT of epoch 2 before computing it, until it is killed, and writes
# the marker file first. argv: MARKER ARGS...
PAUSED_TRAIN = f"""
import runpy, sys, time
from pathlib import Path
from audiocraft_ext.solvers.extended_musicgen import ExtendedMusicGenSolver
marker = Path(sys.argv.pop(1))
run_step = ExtendedMusicGenSolver.run_step

def paused(self, idx, batch, metrics):
    if self.is_training and self.epoch == 2 and idx == {PAUSE_AT}:
        written = marker.with_name(marker.name + '.tmp')
        written.write_text(str(len(self.history)))
        written.rename(marker)  # whole when it appears
        while True:
            time.sleep(1)
    return run_step(self, idx, batch, metrics)

ExtendedMusicGenSolver.run_step = paused
runpy.run_module('audiocraft_ext.train', run_name='__main__', alter_sys=True)
"""


def command(base: Path, egs: Path, dora_dir: Path) -> tp.List[str]:
    return ['solver=extended_musicgen_debug', f'pretrained_model_checkpoint={base}', f'egs_root={egs}',
            'optim.epochs=2', f'optim.updates_per_epoch={UPDATES}', f'dataset.train.num_samples={2 * UPDATES}',
            f'logging.log_updates={UPDATES}', '++evaluate.compare_base=false', f'dora.dir={dora_dir}']


def start(args: tp.List[str], log: Path, pause_marker: tp.Optional[Path] = None) -> subprocess.Popen:
    """`python -m audiocraft_ext.train *args`, or with `pause_marker` its paused variant (PAUSED_TRAIN)."""
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    program = ['-m', 'audiocraft_ext.train'] if pause_marker is None else ['-c', PAUSED_TRAIN, str(pause_marker)]
    return subprocess.Popen([sys.executable, *program, *args], env=env, stdout=open(log, 'w'), stderr=subprocess.STDOUT)


def wait_for_file(path: Path, process: subprocess.Popen, log: Path, timeout: float = 480) -> None:
    """Until `path` exists; fails if the run ends first or after `timeout` s (a hung run, not a slow one:
    the run waits there, so how often this looks only costs latency)."""
    deadline = time.time() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (rc {process.returncode}) before the kill:\n"
                                 f"{log.read_text()[-4000:]}")
        if time.time() > deadline:
            process.kill()
            raise AssertionError(f"timed out:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


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

    # 1. Start; once epoch 1 is checkpointed and epoch 2 has trained PAUSE_AT steps, the run waits: SIGKILL.
    log = tmp_path / 'first.log'
    marker = tmp_path / 'paused'
    process = start(args, log, pause_marker=marker)
    wait_for_file(marker, process, log)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert marker.read_text() == '1'  # one epoch in the history when it paused
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
    # And it learnt: validation cross entropy 5.060 after epoch 1, 4.570 after epoch 2 (measured).
    valid = [epoch['valid']['ce'] for epoch in resumed['history']]
    assert valid[1] < valid[0] - 0.2, valid
