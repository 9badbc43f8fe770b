"""The test suite, and the commands it runs, leave the user's home alone.

conftest.py points every cache at a temporary folder (`CACHE_ENV`); our own caches find their root
through one function (`audiocraft_ext.io.cache_dirs.cache_root`). Here a real training command runs
with HOME pointed at an empty folder: anything that still writes to the home, ours or a library's,
shows up in it.
"""
from audiocraft_ext.io.cache_dirs import cache_dir, cache_root


def test_cache_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    monkeypatch.setenv('AUDIOCRAFT_EXT_CACHE', str(tmp_path / 'ours'))
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert cache_root() == tmp_path / 'ours'
    assert cache_dir('replay') == tmp_path / 'ours' / 'replay'
    monkeypatch.delenv('AUDIOCRAFT_EXT_CACHE')
    assert cache_root() == tmp_path / 'xdg' / 'audiocraft-ext'
    monkeypatch.setenv('XDG_CACHE_HOME', 'relative/dir')  # not absolute: ignored, as XDG says
    assert cache_root() == tmp_path / 'home' / '.cache' / 'audiocraft-ext'
    monkeypatch.delenv('XDG_CACHE_HOME')
    assert cache_root() == tmp_path / 'home' / '.cache' / 'audiocraft-ext'
    assert not (tmp_path / 'home').exists()  # asking creates nothing


def test_a_training_run_writes_nothing_in_home(exported_bases, egs, tmp_path, monkeypatch, run_python):
    """`python -m audiocraft_ext.train` with the default replay cache (replay.cache_dir unset), its
    generate and evaluate stages (plots, report) included, with HOME an empty folder: it stays empty,
    and the replay set lands in the cache root the environment names."""
    home = tmp_path / 'home'
    home.mkdir()
    monkeypatch.setenv('HOME', str(home))
    monkeypatch.setenv('AUDIOCRAFT_EXT_CACHE', str(tmp_path / 'cache'))
    run_python(['-m', 'audiocraft_ext.train', 'solver=extended_musicgen_debug',
                f'pretrained_model_checkpoint={exported_bases["text"]}', f'egs_root={egs}',
                'evaluate.audio_metrics=false'], tmp_path, tmp_path / 'dora')
    checkpoint, = (tmp_path / 'dora' / 'xps').glob('*/checkpoint.th')
    assert (checkpoint.parent / 'evaluation' / 'metrics.json').is_file()  # the evaluate stage ran
    written = sorted(str(p.relative_to(home)) for p in home.rglob('*'))
    assert written == [], f"the run wrote into HOME: {written}"
    replay_sets = [p for p in (tmp_path / 'cache' / 'replay').iterdir() if p.name != 'features']
    assert len(replay_sets) == 1 and (replay_sets[0] / 'codes.safetensors').is_file()
