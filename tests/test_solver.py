"""ExtendedMusicGenSolver, run in-process through Dora exactly as `python -m audiocraft_ext.train` does.

Each run trains a tiny base (exported to disk like a Hugging Face snapshot) for 2 epochs of
2 updates on a few synthetic 1.5 s tones: a couple of seconds per run.
"""
from pathlib import Path
import shutil
import typing as tp

import pytest
import torch

from audiocraft_ext import cli
from audiocraft_ext.io import extension_files
from audiocraft_ext.io.hashing import weights_hash
from audiocraft_ext.models.extended_musicgen import ExtendedMusicGen
from audiocraft_ext.models.tiny import build_tiny_musicgen
from audiocraft_ext.models.extended_musicgen import load_base


@pytest.fixture(scope='module')
def trained(exported_bases, egs, dora_dir, run_xp):
    """One debug run (2 epochs, EMA on) on the exported tiny text base, shared by several tests."""
    return run_xp(debug_argv(exported_bases['text'], egs, 'optim.ema.use=true', 'optim.ema.updates=1'))


def debug_argv(base: tp.Any, egs: Path, *extra: str) -> tp.List[str]:
    return ['solver=extended_musicgen_debug', f'pretrained_model_checkpoint={base}', f'egs_root={egs}', *extra]


def load_checkpoint(path: Path) -> dict:
    return torch.load(path)  # torch's default weights_only=True: our checkpoints need nothing more


def test_trains_only_the_new_layers(exported_bases, trained):
    base_dir = exported_bases['text']
    xp, solver = trained
    lm = solver.model
    checkpoint = xp.folder / 'checkpoint.th'
    state = load_checkpoint(checkpoint)

    # Checkpoints: the extension, never the base; reference + hash of the base instead.
    extension_keys = set(lm.extension_state_dict())
    assert set(state['model']) == extension_keys
    assert set(state['best_state']['model']) == extension_keys
    assert state['base_model']['reference'] == str(base_dir)
    assert state['base_model']['hash'] == weights_hash(build_tiny_musicgen('text', seed=0).lm.state_dict())
    assert state['base_model']['extension_config']['num_additional_layers'] == 2
    base_bytes = sum(t.numel() * t.element_size() for t in lm.base_state_dict().values())
    extension_bytes = sum(t.numel() * t.element_size() for t in lm.extension_state_dict().values())
    # model + best state + EMA + 2 AdamW moments of the extension, small metadata; no base copy.
    assert checkpoint.stat().st_size < 5 * extension_bytes + 64_000 < 5 * extension_bytes + base_bytes
    assert len(state['history']) == 2
    # and learnt: 4 updates took the validation cross entropy from 5.603 to 5.471 nats/token
    # (measured); with the new layers' learning rate at 0 it would not move.
    valid = [epoch['valid']['ce'] for epoch in state['history']]
    assert valid[1] < valid[0] - 0.05, valid
    # A loss-curve PNG per run, redrawn after every epoch.
    from matplotlib.image import imread
    curves = imread(xp.folder / 'loss_curves.png')
    assert curves.ndim == 3 and curves.shape[0] > 100 and curves.shape[1] > 100

    # Only the extension changed: the base is bit-identical to the file it came from.
    fresh = build_tiny_musicgen('text', seed=0).lm.state_dict()
    for key, value in lm.base_state_dict().items():
        assert torch.equal(value, fresh[key]), key
    changed = [name for name, p in lm.extension.named_parameters() if p.abs().sum() > 0 and 'out_proj' in name]
    assert changed, "the zero-initialised residual outputs should have moved"

    # The optimizer holds exactly the trainable parameters.
    optimized = {id(p) for group in solver.optimizer.param_groups for p in group['params']}
    assert optimized == {id(p) for p in lm.trainable_parameters()}
    assert all(not p.requires_grad for p in lm.base_transformer.parameters())

    # Generate stage wrote samples.
    assert list((xp.folder / 'samples').rglob('*.wav'))


@pytest.mark.slow
def test_resume_continues_from_last_epoch(exported_bases, egs, dora_dir, build_solver, run_xp):
    argv = debug_argv(exported_bases['text'], egs, 'label=resume')
    xp, _ = run_xp(argv)
    first_history = load_checkpoint(xp.folder / 'checkpoint.th')['history']
    # Interrupted after epoch 1: only that epoch's checkpoint remains as the last one.
    shutil.copy(xp.folder / 'checkpoint_1.th', xp.folder / 'checkpoint.th')
    _, solver = build_solver(argv, restore=True)
    assert solver.epoch == 2
    assert torch.equal(next(iter(solver.model.extension_state_dict().values())),
                       next(iter(load_checkpoint(xp.folder / 'checkpoint_1.th')['model'].values())))
    xp2, solver = run_xp(argv)
    assert xp2.sig == xp.sig
    history = load_checkpoint(xp.folder / 'checkpoint.th')['history']
    assert len(history) == 2
    assert history[0] == first_history[0]  # replayed, not trained again
    # A finished run does nothing more.
    xp3, solver = run_xp(argv)
    assert len(load_checkpoint(xp.folder / 'checkpoint.th')['history']) == 2


def test_ema_best_state_and_export(trained, tmp_path, dora_dir):
    xp, solver = trained
    state = load_checkpoint(xp.folder / 'checkpoint.th')
    # EMA over the new layers only; the best state is the EMA state of the best valid epoch.
    assert set(state['ema']['state']) == {'model'}
    assert set(state['ema']['state']['model']) == set(solver.model.extension_state_dict())
    assert state['ema']['count'] > 0
    # The exported model carries the best extension, on the same base.
    model = ExtendedMusicGen.from_solver_checkpoint(f'//sig/{xp.sig}', device='cpu', dora_dir=dora_dir)
    best = state['best_state']['model']
    for key, value in model.lm.extension_state_dict().items():
        assert torch.equal(value, best[key]), key
    path = model.save(tmp_path / 'model.safetensors')
    again = ExtendedMusicGen.get_pretrained(path, device='cpu')
    assert again.base_hash == state['base_model']['hash']
    # Keep extending: a run's sig as the base gives a plain MusicGen of L + N layers.
    deeper, reference = load_base(f'//sig/{xp.sig}', device='cpu', dora_dir=dora_dir)
    assert reference == str(xp.folder / 'checkpoint.th')
    assert len(deeper.lm.transformer.layers) == 2 + 2


def test_export_dtype_writes_half_precision_new_layers(trained, tmp_path, dora_dir, capsys):
    """`audiocraft-ext export SIG OUT --dtype float16`; --dtype with another --format is refused."""
    xp, _ = trained
    out = tmp_path / 'half.safetensors'
    assert cli.main(['export', xp.sig, str(out), '--extension-only', '--dtype', 'float16',
                     '--dora-dir', str(dora_dir)]) == 0
    assert extension_files.read_config(out)['extension_dtype'] == 'float16'
    assert cli.main(['info', str(out)]) == 0
    assert '(stored in float16)' in capsys.readouterr().out
    assert cli.main(['export', xp.sig, str(tmp_path / 'stock'), '--format', 'audiocraft', '--dtype', 'float16',
                     '--dora-dir', str(dora_dir)]) == 2
    assert '--dtype float16 applies to --format extended only' in capsys.readouterr().err
    assert not (tmp_path / 'stock').exists()


def test_keep_extending_from_sig(trained, egs, build_solver):
    xp, _ = trained
    xp2, solver = build_solver(debug_argv(f'//sig/{xp.sig}', egs))
    assert solver.model.num_base_layers == 4 and solver.model.num_additional_layers == 2


def test_continue_from_another_run(trained, exported_bases, egs, build_solver):
    xp, _ = trained
    state = load_checkpoint(xp.folder / 'checkpoint.th')
    _, solver = build_solver(debug_argv(exported_bases['text'], egs, f'continue_from=//sig/{xp.sig}'))
    solver.restore()
    assert solver.epoch == 1  # a new run, initialised from the other run's best state
    for key, value in solver.model.extension_state_dict().items():
        assert torch.equal(value, state['best_state']['model'][key]), key


def test_errors_are_clear(egs, dora_dir, exported_bases, build_solver):
    with pytest.raises(ValueError, match=r'pretrained_model_checkpoint is required.*facebook/musicgen-small'):
        build_solver(['solver=extended_musicgen', f'egs_root={egs}', 'device=cpu', 'autocast=false',
                     'dataset.num_workers=0'])
    with pytest.raises(ValueError, match='fsdp'):
        build_solver(debug_argv(exported_bases['text'], egs, 'fsdp.use=true'))
    with pytest.raises(ValueError, match='sample_rate=32000'):
        build_solver(debug_argv(exported_bases['text'], egs, 'sample_rate=32000'))


def test_refuses_checkpoint_of_another_base(trained, other_text_base, egs, build_solver):
    xp, _ = trained
    state = load_checkpoint(xp.folder / 'checkpoint.th')
    _, solver = build_solver(debug_argv(other_text_base, egs))
    with pytest.raises(RuntimeError, match='hash'):
        solver.load_state_dict({'base_model': state['base_model']})
    # continue_from another run also checks the base.
    _, solver = build_solver(debug_argv(other_text_base, egs, f'continue_from=//sig/{xp.sig}'))
    with pytest.raises(RuntimeError, match='hash'):
        solver.restore()


def test_compression_token_cache_is_written_and_reading_it_is_refused_clearly(exported_bases, egs, dora_dir,
                                                                              tmp_path, run_xp):
    """AudioCraft's `cache.path`: `cache.write=true` stores the tokens of every training batch
    (MusicGenSolver's code, kept). Reading them back is broken in AudioCraft 1.3.0 itself (its
    loader asserts cached MusicInfo objects are tensors), so the solver refuses it up front."""
    cache = tmp_path / 'token_cache'
    base = exported_bases['text']
    xp, _ = run_xp(debug_argv(base, egs, f'cache.path={cache}', 'cache.write=true', 'label=cache_write'))
    assert len(load_checkpoint(xp.folder / 'checkpoint.th')['history']) == 2
    written = [path for path in cache.rglob('*.zip')]
    assert len(written) == 2 * 2, "one zip per training batch of each of the 2 epochs"
    with pytest.raises(NotImplementedError, match='CachedBatchLoader'):
        run_xp(debug_argv(base, egs, f'cache.path={cache}', 'label=cache_read'))


def test_feature_cache_replays_the_base_and_training_is_unchanged(exported_bases, egs, dora_dir, tmp_path, run_xp):
    """`feature_cache.path`: fixed examples (1.5 s segments of the 1.5 s files, no description
    augmentation, no CFG dropout) are read back instead of recomputed, with the same losses."""
    fixed = ['dataset.segment_duration=1.5', 'dataset.train.merge_text_p=0', 'dataset.train.drop_desc_p=0',
             'dataset.train.drop_other_p=0', 'classifier_free_guidance.training_dropout=0']
    base, cache = exported_bases['text'], tmp_path / 'features'
    _, plain = run_xp(debug_argv(base, egs, *fixed, 'label=no_feature_cache'))
    _, cached = run_xp(debug_argv(base, egs, *fixed, f'feature_cache.path={cache}', 'label=feature_cache'))
    for epoch, (a, b) in enumerate(zip(plain.history, cached.history)):
        for stage in ('train', 'valid'):
            assert b[stage]['ce'] == pytest.approx(a[stage]['ce'], abs=1e-6), (epoch, stage)
    # Equal up to float rounding: examples missing from a batch with hits run in a smaller batch.
    for name, value in plain.model.extension_state_dict().items():
        torch.testing.assert_close(cached.model.extension_state_dict()[name], value, rtol=0, atol=1e-5)
    # The validation set is the same every epoch: all misses, then all hits.
    assert [epoch['valid']['feature_cache_hits'] for epoch in cached.history] == [0.0, 1.0]
    assert cached.history[1]['train']['feature_cache_hits'] > 0
    folder = cached.model.transformer.feature_cache.folder
    assert folder.parent == cache and len(list(folder.rglob('*.pt'))) > 0
    # Another run on the same base starts warm.
    _, again = run_xp(debug_argv(base, egs, *fixed, f'feature_cache.path={cache}', 'label=feature_cache_again'))
    assert again.history[0]['valid']['feature_cache_hits'] == 1.0


def test_float16_base_trains_like_the_float32_base(exported_bases, egs, dora_dir, run_xp):
    """`extended_model.base_dtype=float16`: the frozen base transformer is stored in float16; its
    hash, the checkpoints and the losses (up to the rounding of the base's weights) are unchanged."""
    base = exported_bases['text']
    _, plain = run_xp(debug_argv(base, egs, 'label=float32_base'))
    xp, half = run_xp(debug_argv(base, egs, 'extended_model.base_dtype=float16', 'label=float16_base'))
    assert plain.model.base_dtype is torch.float32 and half.model.base_dtype is torch.float16
    assert half.base_hash == plain.base_hash
    assert load_checkpoint(xp.folder / 'checkpoint.th')['base_model']['hash'] == plain.base_hash
    for epoch, (a, b) in enumerate(zip(plain.history, half.history)):
        for stage in ('train', 'valid'):
            assert b[stage]['ce'] == pytest.approx(a[stage]['ce'], abs=1e-3), (epoch, stage)
    # The trained layers go back on the base as loaded (float32), like any run's.
    model = ExtendedMusicGen.from_solver_checkpoint(xp.folder / 'checkpoint.th', state='last', device='cpu')
    assert model.lm.base_dtype is torch.float32
    assert all(torch.equal(value, half.model.extension_state_dict()[name])
               for name, value in model.lm.extension_state_dict().items())
