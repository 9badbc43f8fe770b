"""The GPU run (benchmarks/gpu/) cannot rot while no GPU is lent: every step of its CPU dry
run runs here as the driver would run it (tiny shapes, no timing checked), the driver records a
failing or hanging step and goes on, and the pieces the bare GPU machine depends on hold."""
import importlib.util
import json
import os
from pathlib import Path
import subprocess
import sys

import pytest
import torch

from audiocraft_ext.models.tiny import build_tiny_musicgen

pytestmark = pytest.mark.usefixtures('single_thread_torch')

ROOT = Path(__file__).resolve().parent.parent
GPU = ROOT / 'benchmarks' / 'gpu'


def load_script(path: Path):
    """A benchmark script as a module (each has main(argv))."""
    spec = importlib.util.spec_from_file_location(f'gpu_run_{path.stem}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def driver():
    return load_script(GPU / 'driver.py')


STEPS = ['versions', 'correctness', 'solver', 'training_b8', 'generation', 'training_b1']


def test_the_dry_run_has_the_gpu_run_steps(driver):
    assert [step.name for step in driver.steps(dry_run_cpu=True)] == STEPS
    assert [step.name for step in driver.steps(dry_run_cpu=False)] == STEPS
    gpu = driver.steps(dry_run_cpu=False)
    assert sum(step.limit for step in gpu) <= 480, "the GPU run must fit in 8 minutes"
    assert all('cuda' in step.argv for step in gpu if step.name != 'versions')


@pytest.mark.parametrize('name', STEPS)
def test_dry_run_step(name, driver, tmp_path, monkeypatch):
    """The step's exact arguments of `driver.py --dry-run-cpu`, run in-process."""
    monkeypatch.syspath_prepend(str(ROOT / 'benchmarks'))
    step = next(step for step in driver.steps(dry_run_cpu=True) if step.name == name)
    script, *argv = [arg.replace('{tmp}', str(tmp_path)) for arg in step.argv]
    returned = load_script(Path(script)).main(argv)
    results = json.loads((tmp_path / step.results).read_text())
    if name in ('versions', 'correctness', 'solver'):
        assert returned == 0, results
        checks = {key: value for key, value in results.items() if 'ok' in value}
        assert checks and all(value['ok'] for value in checks.values()), results
    if name == 'correctness':
        assert set(results) >= {'exact_start_float32', 'exact_start_float16_weights',
                                'extension_scale_0_float16_autocast', 'extension_scale_0_bfloat16_autocast',
                                'float16_base_fp16_autocast', 'streaming_vs_full_float32'}
    if name == 'solver':
        assert set(results) == {'float16_autocast_grad_scaler', 'bfloat16_autocast_float16_base'}
        assert results['bfloat16_autocast_float16_base']['base_stored_as'] == ['torch.float16']
    if name.startswith('training'):
        assert set(results['variants']) >= {'full', 'extended', 'base', 'cache', 'disk_cache', 'half_base',
                                            'low_memory', 'limit'}
        assert all('peak_bytes' in results['variants'][key] for key in ('full', 'half_base', 'low_memory'))
    if name == 'generation':
        # Every model compared runs in the requested dtype, the stock L + N model too (on CUDA
        # `merged_musicgen` builds it in float16 whatever the others are in).
        assert results['config']['dtype'] == 'float16'
        assert set(results['dtypes']) == {'base (L)', 'extended (L + N)', 'stock L + N'}
        assert all(dtypes == ['torch.float16'] for dtypes in results['dtypes'].values()), results['dtypes']


def test_driver_records_a_failing_and_a_hanging_step_and_goes_on(driver, tmp_path, monkeypatch):
    python = ['-c']
    steps = [driver.Step('fails', python + ['import sys; print("broken"); sys.exit(3)'], 30, None),
             driver.Step('hangs', python + ['import time; time.sleep(60)'], 1, None),
             driver.Step('works', python + ['import json, sys; json.dump({"x": {"ok": True}}, open(sys.argv[1], "w"))',
                                            '{tmp}/out.json'], 30, 'out.json')]
    monkeypatch.setattr(driver, 'steps', lambda dry_run_cpu: steps)
    assert driver.main(['--out', str(tmp_path)]) == 1
    records = json.loads((tmp_path / driver.RESULTS).read_text())['steps']
    assert [records[name]['status'] for name in ('fails', 'hangs', 'works')] == ['failed', 'timeout', 'ok']
    assert records['fails']['rc'] == 3
    assert records['hangs']['seconds'] < 30
    assert records['works']['results'] == {'x': {'ok': True}}


def test_text_models_build_without_demucs(monkeypatch):
    """The GPU machine has no demucs: only the melody flavour (chroma conditioner) may need it."""
    monkeypatch.setitem(sys.modules, 'demucs', None)  # `import demucs` now raises ImportError
    build_tiny_musicgen('text')
    build_tiny_musicgen('stereo')
    with pytest.raises(ImportError):
        build_tiny_musicgen('melody')


@pytest.mark.slow
def test_audiocraft_reads_flac_with_the_import_only_stand_ins(tmp_path):
    """With PyAV and spaCy replaced by import_stubs/ (as on the GPU machine), AudioCraft imports,
    reads FLAC, and any use of a stand-in fails with a message naming it."""
    code = '''
import sys, numpy as np, soundfile, torch
import av, spacy
assert av.IMPORT_ONLY_STAND_IN and spacy.IMPORT_ONLY_STAND_IN
from audiocraft.data.audio import audio_read
import audiocraft.models, audiocraft.solvers.musicgen
path = sys.argv[1] + '/tone.flac'
soundfile.write(path, np.zeros(1600, dtype=np.float32), 16000)
wav, sample_rate = audio_read(path)
assert wav.shape == (1, 1600) and sample_rate == 16000, (wav.shape, sample_rate)
assert not hasattr(av, 'open')
try:
    av.open(path)
except AttributeError as error:
    assert 'not installed on this machine' in str(error), error
    print('stand-in refused:', error)
else:
    raise AssertionError('the stand-in did not refuse')
'''
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(GPU / 'import_stubs'), str(ROOT)]))
    result = subprocess.run([sys.executable, '-c', code, str(tmp_path)], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'stand-in refused: av.open' in result.stdout


@pytest.mark.slow
def test_run_gpu_sh_runs_the_driver_and_keeps_a_log(tmp_path):
    """run_gpu.sh as the GPU run calls it (here with this Python and without a wheelhouse)."""
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path / 'out'), GPU_SITE=str(tmp_path / 'site'))
    result = subprocess.run(['bash', str(GPU / 'run_gpu.sh'), '--dry-run-cpu', '--only', 'versions'],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    log = (tmp_path / 'out' / 'gpu_run.log').read_text()
    assert '=== done: 1 of 1 steps ok' in log
    results = json.loads((tmp_path / 'out' / 'gpu_results.json').read_text())
    versions = results['steps']['versions']['results']['versions']
    assert versions['torch'] == torch.__version__
    assert versions['audiocraft'] == '1.3.0'


def test_wheelhouse_pins_are_the_locked_versions():
    """The GPU machine runs what the tests here run: uv.lock's versions (xformers aside: the locked
    one is built for torch 2.9, the machine has 2.11)."""
    import re
    import tomllib
    locked = {package['name']: package['version']
              for package in tomllib.loads((ROOT / 'uv.lock').read_text())['package']}
    pins = dict(re.match(r'([A-Za-z0-9_.-]+)==(\S+)', line).groups()
                for line in (GPU / 'requirements.txt').read_text().splitlines()
                if line.strip() and not line.lstrip().startswith('#'))
    assert len(pins) == 20
    normalize = lambda name: re.sub(r'[-_.]+', '-', name).lower()  # noqa: E731
    locked = {normalize(name): version for name, version in locked.items()}
    differing = {name: (version, locked.get(normalize(name))) for name, version in pins.items()
                 if locked.get(normalize(name)) != version}
    assert differing == {'xformers': ('0.0.35', '0.0.33.post1')}
