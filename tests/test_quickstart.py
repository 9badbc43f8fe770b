"""docs/TRAINING.md §0 (CPU quick start) run as a user types it, in subprocesses.

The commands are read from the documentation, so the docs and this test cannot drift apart. Only
the placeholder `SIG` is replaced, by the signature the training log prints. The shipped
defaults are kept apart from the sizes a CPU needs: `dataset.num_workers` stays at 10 with the
`forkserver` start method (the DataLoader workers re-import the training entry point), and the
valid/evaluate/generate split sizes stay as shipped (the evaluate split has no fixed size).
"""
import json
from pathlib import Path
import re
import shlex
import subprocess
import typing as tp

import pytest
import torch

from audio_checks import assert_audible
from doc_blocks import documented_block, new_shell_env, new_shell_script
from audiocraft_ext.data.synth_dataset import write_tone_folder

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / 'docs' / 'TRAINING.md'
RUN_FOLDER = re.compile(r'All XP logs are stored in (\S+)/xps/(\w+)')

pytestmark = pytest.mark.slow


def documented_commands() -> tp.List[str]:
    """The shell commands of the quick start, continuation lines joined."""
    return [line for line in documented_block(DOCS, 'quickstart:commands').replace('\\\n', ' ').splitlines() if line.strip()]


def shell(command: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """`command` through bash in a new shell: README's activation line, then the command."""
    env = new_shell_env(PYTHONWARNINGS='ignore')
    env.pop('AUDIOCRAFT_EXT_DORA_DIR', None)
    return subprocess.run(['bash', '-c', new_shell_script(command)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def succeeded(result: subprocess.CompletedProcess, command: str) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


@pytest.fixture(scope='module')
def user_folder(tmp_path_factory) -> Path:
    """What a user starts with: 14 audio files and a captions table in `my_music/`."""
    root = tmp_path_factory.mktemp('quickstart')
    write_tone_folder(root / 'my_music', num_files=14, duration=3.0)
    return root


@pytest.fixture(scope='module')
def quickstart(user_folder) -> tp.Dict[str, tp.Any]:
    """Every documented command, in order; returns the run's signature and the outputs."""
    commands = documented_commands()
    assert [c.split()[:3] for c in commands] == [
        ['audiocraft-ext', 'prepare-data', 'my_music'], ['python', '-m', 'audiocraft_ext.train'],
        ['audiocraft-ext', 'export', 'SIG'], ['python', 'generate.py'], ['python', '-m', 'audiocraft_ext.evaluate']]
    (user_folder / 'generate.py').write_text(documented_block(DOCS, 'quickstart:generate.py'))
    outputs: tp.Dict[str, tp.Any] = {}
    sig = None
    for command in commands:
        if sig is not None:
            command = re.sub(r'\bSIG\b', sig, command)
        result = succeeded(shell(command, user_folder), command)
        outputs[command.split()[2] if command.startswith('python -m') else command.split()[1]] = result
        if sig is None and 'audiocraft_ext.train' in command:
            found = RUN_FOLDER.search(result.stdout + result.stderr)
            assert found, f"the training log does not name its run folder:\n{result.stderr[-3000:]}"
            assert Path(found.group(1)) == (user_folder / 'runs').resolve()
            sig = found.group(2)
    outputs['sig'] = sig
    return outputs


def test_training_uses_dataloader_workers_and_sizes_unset_splits(quickstart, user_folder):
    xp = user_folder / 'runs' / 'xps' / quickstart['sig']
    config = json.loads((xp / '.argv.json').read_text())
    assert not any('num_workers' in arg or 'num_samples' in arg for arg in config), config
    log = (xp / 'solver.log.0').read_text()
    assert 'one 2 s segment of each of the' in log  # the evaluate split, num_samples unset
    history = json.loads((xp / 'history.json').read_text())
    assert len(history) == 1 and {'train', 'valid', 'evaluate', 'generate'} <= set(history[0])


def test_exported_model_generates_the_documented_file(quickstart, user_folder):
    import torchaudio
    assert (user_folder / 'extended.safetensors').is_file()
    wav, sample_rate = torchaudio.load(str(user_folder / 'generated_audio.wav'))
    assert sample_rate == 16000 and wav.shape[0] == 1
    assert abs(wav.shape[-1] / sample_rate - 2.0) < 0.05
    assert_audible(wav, 'generated_audio.wav')


def test_evaluation_reports_base_and_extended(quickstart, user_folder):
    metrics_file = user_folder / 'runs' / 'xps' / quickstart['sig'] / 'evaluation' / 'metrics.json'
    report = json.loads(metrics_file.read_text())
    new = report['sets']['new']
    # 8 updates on the user's tones: the extended model predicts their held-out tones better than the
    # base, and the more so the more of the new layers' branches it uses (measured: cross entropy
    # 5.95800 at extension_scale 0, 5.95783, 5.95760, 5.95741, 5.95732 at 1).
    assert new['extended']['ce'] < new['base']['ce'] - 3e-4
    by_scale = sorted(zip(report['scale_sweep']['scales'], report['scale_sweep']['new']))
    assert by_scale[0][0] == 0 and by_scale[-1][0] == 1 and len(by_scale) >= 3
    assert all(lower > higher for (_, lower), (_, higher) in zip(by_scale, by_scale[1:])), by_scale
    assert str(metrics_file) in quickstart['audiocraft_ext.evaluate'].stdout


def test_dora_run_trains_the_same_model(quickstart, user_folder):
    """`dora -P audiocraft_ext run solver=...` + the same overrides: same signature, same weights."""
    train = next(c for c in documented_commands() if 'audiocraft_ext.train' in c)
    overrides = [arg for arg in shlex.split(train)[3:] if not arg.startswith(('--config', 'dora.dir='))]
    command = shlex.join(['dora', '-P', 'audiocraft_ext', 'run', 'solver=extended_musicgen', *overrides,
                          'dora.dir=dora_runs'])
    succeeded(shell(command, user_folder), command)
    ours = torch.load(user_folder / 'runs' / 'xps' / quickstart['sig'] / 'checkpoint.th')
    theirs = torch.load(user_folder / 'dora_runs' / 'xps' / quickstart['sig'] / 'checkpoint.th')
    assert ours['model'].keys() == theirs['model'].keys()
    assert all(torch.equal(ours['model'][k], theirs['model'][k]) for k in ours['model'])


def test_export_of_a_missing_run_names_where_it_looked(quickstart, user_folder):
    command = 'audiocraft-ext export deadbeef out.safetensors --dora-dir runs'
    result = shell(command, user_folder)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in result.stderr, result.stderr
    assert lines[0].startswith("error: //sig/deadbeef: no run 'deadbeef' in ")
    assert str((user_folder / 'runs' / 'xps').resolve()) in lines[0] and '--dora-dir' in lines[0]
    assert not (user_folder / 'out.safetensors').exists()
    # The run's own folder works without --dora-dir.
    folder = user_folder / 'runs' / 'xps' / quickstart['sig']
    succeeded(shell(f'audiocraft-ext export {folder} by_folder.safetensors', user_folder), 'export by folder')
    assert (user_folder / 'by_folder.safetensors').is_file()
