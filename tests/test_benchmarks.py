"""The benchmarks run end to end on tiny shapes (no timing is checked: timings come from the
benchmarks, not from tests), and their variants are what their names say."""
import json
from pathlib import Path

import pytest

from audiocraft_ext.models.shipped import read_recipe

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


@pytest.mark.slow
def test_bench_adaptation_quick_runs_every_method(tmp_path, monkeypatch):
    """`python benchmarks/bench_adaptation.py --quick` end to end on the demo's task (no timing or
    quality is checked)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import adaptation_task
    import bench_adaptation
    report = bench_adaptation.main(['--quick', '--workers', '0', '--cache-dir', str(tmp_path / 'cache'),
                                    '--out', str(tmp_path / 'out')])
    methods = report['methods']
    assert set(methods) == {m.name for m in bench_adaptation.METHODS} | set(bench_adaptation.DERIVED)
    model = report['info']['base_model']
    dim, layers = model['dim'], model['layers']
    for name, result in methods.items():
        assert result['curve'][0] == [0.0, 0.0]  # strength 0 is the base for every method
        assert len(result['curve']) == len(bench_adaptation.ALPHAS) + 1
        assert len(result['seeds']) == 2 and result['lr'] in result['method']['lrs']
        assert result['timing']['trainable'] > 0 and result['timing']['peak_bytes'] > 0
    trainable = {name: result['timing']['trainable'] for name, result in methods.items()}
    # LoRA covers, in every base layer: self- and cross-attention in_proj_weight ([3D, D], q/k/v fused)
    # and out_proj, linear1 ([4D, D]) and linear2: r x (4D + 2D + 4D + 2D + 5D + 5D) = 22 r D parameters.
    assert trainable['lora4'] == 22 * 4 * dim * layers and trainable['lora16'] == 22 * 16 * dim * layers
    assert trainable['ext-L/4'] < trainable['ext-L/2'] < trainable['ext-L'] < trainable['full']
    assert trainable['ext-L/4 wide+kl'] > trainable['ext-L/4+kl'] == trainable['ext-L/4']
    assert (tmp_path / 'out' / 'bench_adaptation.png').read_bytes()[:4] == b'\x89PNG'
    text = (tmp_path / 'out' / 'bench_adaptation.txt').read_text()
    assert 'gain@.02' in text and 'LoRA r16 + replay(gen) + KL' in text
    # The task (cached by the run): the score set's clips as the pretrained codec's codes, one example a
    # clip, captioned in the style the replay prompts are written in.
    task = adaptation_task.build_task(tmp_path / 'cache', Path(model['folder']), adaptation_task.QUICK_TASK,
                                      log=lambda line: None)
    frames = round(adaptation_task.QUICK_TASK.duration * 50)  # the codec's 50 frames/s
    vocabulary = set(adaptation_task.caption_style_prompts(40))
    for domain, splits in task.codes.items():
        for split, data in splits.items():
            assert data.codes.shape[1:] == (model['codebooks'], frames) and data.codes.max() < model['card']
            assert len(data.captions) == model['clips'][domain][split] and set(data.captions) <= vocabulary
    assert len(task.replay_heldout) == adaptation_task.QUICK_TASK.replay_heldout
    # Held out means unheard: the base's training pieces (its recipe) are none of the task's valid or
    # evaluate pieces.
    trained = set(read_recipe(Path(model['folder']))['base_lm']['train_pieces'])
    pieces = json.loads((task.data / 'egs' / 'old' / 'synth.json').read_text())['pieces']
    assert trained and not trained & (set(pieces['valid']) | set(pieces['evaluate']))
    assert set(task.replay.prompts) <= vocabulary


def test_bench_extensions_quick_mixed_batch_matches_separate_models(tmp_path, monkeypatch):
    """`python benchmarks/bench_extensions.py --quick`: the mixed batch generates the separate models'
    tokens, and one model holds the base once (no timing is checked)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_extensions
    rows = bench_extensions.main(['--quick', '--out', str(tmp_path)])
    assert [row['k'] for row in rows] == [1, 2] and all(row['same_tokens'] for row in rows)
    assert rows[0]['bytes']['one model'] == rows[0]['bytes']['separate']
    assert rows[1]['bytes']['one model'] < rows[1]['bytes']['separate']
    assert 'same tokens' in (tmp_path / 'bench_extensions.txt').read_text()
