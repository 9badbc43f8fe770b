"""The training benchmark runs end to end on tiny shapes (no timing is checked: issue 7 wants
timings from benchmarks, not tests), and its variants are what their names say."""
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures('single_thread_torch')

BENCHMARKS = Path(__file__).resolve().parent.parent / 'benchmarks'


def test_bench_training_variants_on_tiny_shapes(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_training
    results = bench_training.main(['--dim', '32', '--layers', '2', '--new-layers', '1', '--heads', '2',
                                   '--card', '64', '--batch', '2', '--steps', '8', '--repeats', '1',
                                   '--cache-warmup', '2', '--out', str(tmp_path)])
    variants = results['variants']
    assert set(variants) == {'full', 'extended', 'base', 'cache', 'disk_cache', 'checkpoint', 'half_base',
                             'low_memory', 'limit'}
    # FLOPs counted by torch's FlopCounterMode: the extended step is exactly the base's no-grad
    # forward plus the new layers' step (the base runs once per step, forward only).
    assert variants['extended']['gflop'] == pytest.approx(variants['limit']['gflop'], rel=1e-12)
    assert variants['extended']['gflop'] < variants['full']['gflop']
    # The float16 base halves the base transformer's bytes and changes no computation.
    assert variants['half_base']['resident_bytes'] < variants['extended']['resident_bytes']
    assert variants['low_memory']['resident_bytes'] == variants['half_base']['resident_bytes']
    assert variants['half_base']['gflop'] == variants['extended']['gflop']
    # Checkpointing recomputes the new layers' forward: more FLOPs, fewer saved activations.
    assert variants['low_memory']['gflop'] == variants['checkpoint']['gflop'] > variants['extended']['gflop']
    # Every variant trains only what it should: full fine-tuning holds the most.
    assert all(variants[name]['peak_bytes'] < variants['full']['peak_bytes']
               for name in ('extended', 'cache', 'disk_cache', 'checkpoint', 'half_base', 'low_memory'))
    assert results['info']['disk_cache_hit_rate'] == 1.0
    report = (tmp_path / 'bench_training.txt').read_text()
    assert 'peak memory: extended + float16 base + checkpointing' in report
