"""Reliability of training, in-process: non-finite steps, the run lock, interrupted checkpoint
writes, and the base never being written to. (Killing a real `python -m audiocraft_ext.train`
is tests/test_reliability_interrupt.py; the bad-input catalogue is tests/test_reliability_catalogue.py.)

Runs use the exported tiny text base and the debug config (2 updates per epoch on 1 s tones).
"""
import builtins
import math
import multiprocessing
import os
from pathlib import Path
import shutil
import time
import typing as tp

import pytest
import torch

from audiocraft_ext.io import extension_files
from audiocraft_ext.io.hashing import weights_hash
from audiocraft_ext.models.extended_musicgen import ExtendedMusicGen
from audiocraft_ext.models.tiny import build_tiny_musicgen
from audiocraft_ext.solvers.nonfinite import NonFiniteStepError
from audiocraft_ext.solvers.run_lock import LOCK_NAME, RunLock, RunLockedError

pytestmark = pytest.mark.usefixtures('dora_dir')  # every run here writes to a temporary Dora folder


def argv(base: tp.Any, egs: Path, *extra: str) -> tp.List[str]:
    return ['solver=extended_musicgen_debug', f'pretrained_model_checkpoint={base}', f'egs_root={egs}',
            *extra]


@pytest.fixture(scope='module')
def make_solver(build_solver):
    """`make_solver(args) -> (xp, solver)`, without the evaluate and generate stages: training is tested here."""
    def make(args: tp.List[str]):
        xp, solver = build_solver(args)
        solver.should_run_stage = lambda stage: False
        return xp, solver
    return make


@pytest.fixture(scope='module')
def run(make_solver):
    """`run(args) -> (xp, solver)`: `make_solver(args)`, then its run."""
    def run_(args: tp.List[str]):
        xp, solver = make_solver(args)
        with xp.enter():
            solver.run()
        return xp, solver
    return run_


def assert_learnt(xp) -> None:
    """The run's 4 updates took the validation cross entropy down (the debug config on the tiny
    base: 5.603 -> 5.471 nats per token, as in test_solver.py); at learning rate 0 it would not move."""
    valid = [epoch['valid']['ce'] for epoch in torch.load(xp.folder / 'checkpoint.th')['history']]
    assert len(valid) == 2 and valid[1] < valid[0] - 0.05, valid


def extension(solver) -> tp.Dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in solver.model.extension_state_dict().items()}


# ---- numerical faults --------------------------------------------------------------------------
def test_nan_loss_stops_before_the_optimizer_and_keeps_the_last_checkpoint(exported_bases, egs, inject_nan_logits,
                                                                           make_solver, run):
    xp, solver = make_solver(argv(exported_bases['text'], egs, 'label=nan_stop'))
    before: tp.Dict[str, torch.Tensor] = {}

    def when(step: int) -> bool:  # first step of epoch 2 (2 updates per epoch)
        if step == 2:
            before.update(extension(solver))
        return step == 2
    inject_nan_logits(solver, when)
    with xp.enter(), pytest.raises(NonFiniteStepError,
                                   match=r'Non-finite loss at epoch 2, step 0: the step was not applied'):
        solver.run()
    # No weight moved, the optimizer holds no NaN, and the checkpoint of epoch 1 is intact.
    after = extension(solver)
    assert all(torch.equal(after[key], before[key]) for key in before)
    state = torch.load(xp.folder / 'checkpoint.th')
    assert len(state['history']) == 1
    assert all(torch.isfinite(value).all() for value in state['model'].values())
    assert all(torch.isfinite(v).all() for s in solver.optimizer.state.values() for v in s.values()
               if isinstance(v, torch.Tensor))
    # The run lock was released with the error: the same command resumes from epoch 2.
    xp, solver = run(argv(exported_bases['text'], egs, 'label=nan_stop'))
    assert len(torch.load(xp.folder / 'checkpoint.th')['history']) == 2


def test_nan_gradients_are_caught_too_and_skipped_when_allowed(exported_bases, egs, inject_nan_logits, make_solver):
    xp, solver = make_solver(argv(exported_bases['text'], egs, 'label=nan_skip', 'skip_nonfinite_steps=1'))
    inject_nan_logits(solver, lambda step: step == 0)  # NaN loss on the first step
    parameter = solver.model.trainable_parameters()[0]
    poisoned = []

    def poison(grad):  # finite loss, NaN gradient on the third step
        poisoned.append(1)
        return grad * float('nan') if len(poisoned) == 3 else grad
    parameter.register_hook(poison)
    with xp.enter():
        solver.run()
    history = torch.load(xp.folder / 'checkpoint.th')['history']
    assert [epoch['train']['skipped'] for epoch in history] == [0.5, 0.5]  # 1 of 2 steps in each epoch
    assert all(math.isfinite(epoch['train']['ce']) for epoch in history)  # averaged over applied steps
    assert all(torch.isfinite(value).all() for value in solver.model.extension_state_dict().values())
    # More than the allowed number in one epoch stops the run.
    xp, solver = make_solver(argv(exported_bases['text'], egs, 'label=nan_skip2', 'skip_nonfinite_steps=1'))
    inject_nan_logits(solver, lambda step: step < 2)
    with xp.enter(), pytest.raises(NonFiniteStepError, match='More than skip_nonfinite_steps=1'):
        solver.run()


# ---- concurrency: one run per experiment folder -----------------------------------------------
def test_second_run_on_the_same_signature_is_refused(exported_bases, egs, make_solver, run):
    args = argv(exported_bases['text'], egs, 'label=locked', 'optim.epochs=1')
    xp, solver = make_solver(args)
    with RunLock(xp.folder):  # as another process running this XP would hold it
        with xp.enter(), pytest.raises(RunLockedError, match=rf'Another training run holds .*pid={os.getpid()}'):
            solver.run()
        assert not (xp.folder / 'checkpoint.th').exists()
    # Released (a killed holder releases it too: flock): the same command now trains.
    run(args)
    assert (xp.folder / 'checkpoint.th').exists()


def _hold_lock(folder: Path, locked: tp.Any) -> None:
    """In a forked process: take the run lock of `folder`, say so, hold it until killed."""
    RunLock(folder).acquire()
    locked.set()
    time.sleep(600)


def test_lock_without_flock_refuses_a_live_holder_and_replaces_a_dead_one(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_flock(*args):
        raise OSError(errno.ENOSYS, 'Function not implemented')
    monkeypatch.setattr(fcntl, 'flock', no_flock)  # as on a file system without flock: filelock's marker file
    # The holder is another process, forked: it inherits the patch, and no half-minute import.
    context = multiprocessing.get_context('fork')
    locked = context.Event()
    holder = context.Process(target=_hold_lock, args=(tmp_path, locked), daemon=True)
    holder.start()
    try:
        assert locked.wait(timeout=60), "the holder did not take the lock"
        with pytest.raises(RunLockedError, match=f'pid={holder.pid}'):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()  # SIGKILL: the marker file stays behind, naming a process that is gone
        holder.join()
    assert (tmp_path / LOCK_NAME).exists()
    with pytest.warns(UserWarning, match='falling back to SoftFileLock'), RunLock(tmp_path):
        assert f'pid={os.getpid()}' in (tmp_path / (LOCK_NAME + '.holder')).read_text()


# ---- interrupted checkpoint writes ------------------------------------------------------------
def test_a_checkpoint_write_killed_halfway_leaves_the_previous_one(exported_bases, egs, monkeypatch, run):
    args = argv(exported_bases['text'], egs, 'label=killed_save')
    xp, solver = run(args)
    assert_learnt(xp)
    path = xp.folder / 'checkpoint.th'
    good = path.read_bytes()
    fsyncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, 'fsync', lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    solver.save_checkpoints()  # a complete save is fsynced before the rename
    assert fsyncs and torch.load(path)['history'] == torch.load(xp.folder / 'checkpoint_2.th')['history']
    good = path.read_bytes()

    real_save = torch.save
    saves = []

    def save_half_then_die(obj, file, *args, **kwargs):
        saves.append(1)
        if len(saves) == 1:  # checkpoint_2.th is written first, then checkpoint.th
            return real_save(obj, file, *args, **kwargs)
        file.write(good[:len(good) // 2])
        raise KeyboardInterrupt('killed while writing')
    monkeypatch.setattr(torch, 'save', save_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        solver.save_checkpoints()
    monkeypatch.undo()
    assert path.read_bytes() == good and len(torch.load(path)['history']) == 2
    assert not list(xp.folder.glob('.*.tmp'))
    # SIGKILL skips the cleanup: what it leaves (ours, or flashy's name) is removed by the next run.
    (xp.folder / f'.checkpoint.th.{"0" * 32}.tmp').write_bytes(good[:100])
    (xp.folder / 'checkpoint.th.tmp').write_bytes(good[:100])
    run(args)
    assert not list(xp.folder.glob('*.tmp')) and not list(xp.folder.glob('.*.tmp'))
    assert path.read_bytes() == good  # finished run: nothing more trained, nothing rewritten


# ---- base integrity ----------------------------------------------------------------------------
def test_the_base_is_only_read_and_its_hash_is_in_every_checkpoint(exported_bases, egs, tmp_path, monkeypatch, run):
    base = shutil.copytree(exported_bases['text'], tmp_path / 'base')
    files = sorted(p for p in base.rglob('*') if p.is_file())
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    writes: tp.List[str] = []
    real_open, real_os_open = builtins.open, os.open

    def watch(path: tp.Any, write: bool) -> None:
        if write and str(base) in os.path.abspath(str(path)):
            writes.append(str(path))

    def open_(file, mode='r', *args, **kwargs):
        if isinstance(file, (str, os.PathLike)):
            watch(file, any(flag in mode for flag in 'wax+'))
        return real_open(file, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        watch(path, bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)))
        return real_os_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(builtins, 'open', open_)
    monkeypatch.setattr(os, 'open', os_open)

    xp, solver = run(argv(base, egs, 'label=base_integrity'))
    assert_learnt(xp)
    model = ExtendedMusicGen.from_solver_checkpoint(xp.folder, device='cpu')
    model.save(tmp_path / 'model.safetensors')
    model.save(tmp_path / 'extension_only', include_base=False)
    model.export_audiocraft(tmp_path / 'exported')
    extension_only = ExtendedMusicGen.get_pretrained(tmp_path / 'extension_only', device='cpu')
    monkeypatch.undo()

    assert not writes, f"the base was opened for writing: {writes}"
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == before
    expected = weights_hash(build_tiny_musicgen('text', seed=0).lm.state_dict())
    solver_checkpoints = sorted(xp.folder.glob('checkpoint*.th'))
    assert len(solver_checkpoints) == 3  # last + one per epoch
    for path in solver_checkpoints:
        info = torch.load(path)['base_model']
        assert info['hash'] == expected and info['reference'] == str(base), path
    for name in ('model.safetensors', 'extension_only'):
        assert extension_files.read_config(tmp_path / name)['base']['hash'] == expected
    assert extension_only.base_hash == model.base_hash == expected
