"""The synthetic two-domain dataset: AudioCraft loads it, the domains differ, it is deterministic."""
import json
import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from audiocraft_ext import cli
from audiocraft_ext.data import splits, synth_dataset, synth_domains, synthesizer
from synth_statistics import clip_statistics, onset_rate

SR = 16000
DURATION = 3.0
SPLITS = (('train', 4), ('valid', 1), ('evaluate', 1), ('generate', 1))
CLIPS_PER_DOMAIN = 10  # for the statistics
HEAVY_MODULES = ('torch', 'torchaudio', 'audiocraft')


def _files(root: Path):
    """{relative path: bytes} of every file under root."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def _render(domain: str, count: int = CLIPS_PER_DOMAIN, duration: float = 6.0, sr: int = SR):
    clips = []
    for index in range(count):
        spec = synth_domains.sample_clip_spec(domain, synth_domains.keyed_rng(0, domain, 'train', index))
        clips.append((spec, synthesizer.render_clip(spec, duration, sr)))
    return clips


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    """Both domains, seed 0, written once for the module (read-only)."""
    root = tmp_path_factory.mktemp('synth')
    manifests = {domain: synth_dataset.write_dataset(root, domain, None, DURATION, SR, seed=0, splits=SPLITS)
                 for domain in synth_domains.DOMAINS}
    return root, manifests


def test_module_import_is_light():
    code = ("import sys, audiocraft_ext.data.synth_dataset\n"
            f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '[]'


def test_layout_manifests_and_sidecars(dataset):
    root, manifests = dataset
    for domain in synth_domains.DOMAINS:
        assert set(manifests[domain]) == set(splits.SPLITS)
        for split, size in SPLITS:
            folder = manifests[domain][split]
            assert folder == root.resolve() / 'egs' / domain / split
            lines = (folder / 'data.jsonl').read_text().splitlines()
            assert len(lines) == size
            for line in lines:
                meta = json.loads(line)
                assert set(meta) >= {'path', 'duration', 'sample_rate', 'amplitude', 'weight',
                                     'info_path'}
                wav = Path(meta['path'])
                assert wav.is_absolute() and wav.parent == root.resolve() / 'audio' / domain / split
                info = soundfile.info(str(wav))
                assert (info.samplerate, info.channels, info.subtype) == (SR, 1, 'PCM_16')
                assert meta['sample_rate'] == SR and meta['duration'] == pytest.approx(DURATION)
                sidecar = json.loads(wav.with_suffix('.json').read_text())
                for name in ('title', 'artist', 'key', 'bpm', 'genre', 'moods', 'keywords',
                             'description', 'name', 'instrument'):
                    assert sidecar[name] not in (None, '', []), name
                assert sidecar['name'] == wav.stem and sidecar['artist'] == synth_domains.ARTIST
                assert sidecar['synth']['domain'] == domain
        params = json.loads((root / 'egs' / domain / 'synth.json').read_text())
        assert params['splits'] == dict(SPLITS) and params['seed'] == 0


@pytest.fixture
def audiocraft_environment(tmp_path, monkeypatch):
    """AudioCraft's environment (read when a dataset loads its manifest) needs a teams config,
    which a pip install of AudioCraft lacks; give it a minimal one for this test."""
    import audiocraft
    from audiocraft.environment import AudioCraftEnvironment

    installed = Path(audiocraft.__file__).parent.parent / 'config' / 'teams'
    if 'AUDIOCRAFT_CONFIG' not in os.environ and not installed.exists():
        cluster = {'dora_dir': str(tmp_path / 'dora'), 'reference_dir': str(tmp_path),
                   'partitions': {'global': 'debug', 'team': 'debug'}}
        teams = tmp_path / 'teams.yaml'
        teams.write_text(json.dumps({'default': cluster, 'darwin': cluster}))  # JSON is YAML
        monkeypatch.setenv('AUDIOCRAFT_CONFIG', str(teams))
        AudioCraftEnvironment.reset()
        yield
        AudioCraftEnvironment.reset()
    else:
        yield


def test_music_dataset_loads_train_split(dataset, audiocraft_environment):
    from audiocraft.data.music_dataset import MusicDataset, MusicInfo

    root, manifests = dataset
    train = MusicDataset.from_meta(manifests['new']['train'], segment_duration=2.0,
                                   sample_rate=SR, channels=1, return_info=True, shuffle=False,
                                   num_samples=4)
    assert len(train) == 4
    wav, info = train[0]
    assert isinstance(info, MusicInfo)
    assert tuple(wav.shape) == (1, int(2.0 * SR))
    assert float(wav.abs().max()) > 0.01
    sidecar = json.loads(Path(info.meta.path).with_suffix('.json').read_text())
    assert info.description == sidecar['description']
    assert info.description.startswith('fast ') and ' minor, ' in info.description
    assert info.key == sidecar['key'].lower() and info.bpm == float(sidecar['bpm'])
    assert info.moods == [m.lower() for m in sidecar['moods']]
    assert info.genre == 'electronic' and info.artist == synth_domains.ARTIST
    # What the conditioners see.
    assert info.to_condition_attributes().text['description'] == sidecar['description']


def test_manifest_lines_are_audiocraft_s(dataset, tmp_path):
    from audiocraft.data.audio_dataset import load_audio_meta, save_audio_meta

    _, manifests = dataset
    ours = manifests['old']['train'] / 'data.jsonl'
    theirs = tmp_path / 'data.jsonl'
    save_audio_meta(theirs, load_audio_meta(ours, resolve=False))
    assert ours.read_bytes() == theirs.read_bytes()


def test_captions_describe_what_was_rendered():
    for domain, speed, mode in (('old', 'slow', 'major'), ('new', 'fast', 'minor')):
        for index in range(20):
            spec = synth_domains.sample_clip_spec(domain, synth_domains.keyed_rng(3, domain, 'train', index))
            text = synth_domains.caption(spec)
            assert text.startswith(f'{speed} {synthesizer.TIMBRES[spec.timbre].words} ')
            assert f'{synthesizer.PATTERNS[spec.pattern]} in {spec.tonic} {mode}, {spec.bpm} bpm' in text
            assert ('with light drums' in text) == spec.drums
    spec = synthesizer.ClipSpec('new', 'plucked', 'arpeggio_up', 'A', 'minor', 80, (0, 5, 2, 6), False,
                          57, 88, 0)
    assert synth_domains.caption(spec) == 'slow plucked rising arpeggio in A minor, 80 bpm'


def test_clips_are_musical_and_domains_differ():
    stats = {domain: [clip_statistics(wav, SR) for _, wav in _render(domain)]
             for domain in synth_domains.DOMAINS}
    for domain, rows in stats.items():
        for row in rows:
            assert row['finite'] == 1.0
            assert row['peak'] == pytest.approx(synthesizer.PEAK, abs=1e-3)  # normalised, no clipping
            assert row['clipped_fraction'] == 0.0
            assert row['silent_fraction'] < 0.05 and row['rms'] > 0.03, (domain, row)
    centroid = {d: np.array([r['centroid_hz'] for r in rows]) for d, rows in stats.items()}
    onsets = {d: np.array([r['onset_rate'] for r in rows]) for d, rows in stats.items()}
    # Every new clip is brighter and busier than every old clip, by a margin.
    assert centroid['new'].min() > 1.4 * centroid['old'].max(), centroid
    assert onsets['new'].min() > 2.5 * onsets['old'].max(), onsets
    assert 6.0 < onsets['new'].mean() < 11.0 and onsets['old'].mean() < 2.5, onsets


def test_onset_rate_counts_notes():
    """16th notes at 120 bpm are 8 onsets/s; slow-attack pad chords (0.5/s) hardly count."""
    spec = synthesizer.ClipSpec('new', 'plucked', 'repeated_notes', 'A', 'minor', 120, (0,), False,
                          57, 88, 1)
    assert onset_rate(synthesizer.render_clip(spec, 4.0, SR), SR) == pytest.approx(8.0, abs=0.5)
    spec = synthesizer.ClipSpec('old', 'pad', 'block_chords', 'C', 'major', 60, (0,), False, 48, 79, 1)
    assert onset_rate(synthesizer.render_clip(spec, 4.0, SR), SR) <= 1.0


def test_same_seed_same_bytes_other_seed_other_audio(tmp_path, dataset):
    root, _ = dataset
    again = tmp_path / 'again'
    synth_dataset.write_dataset(again, 'old', None, DURATION, SR, seed=0, splits=SPLITS)
    first = {k: v for k, v in _files(root).items() if k.startswith(('audio/old/', 'egs/old/'))}
    second = _files(again)
    assert first.keys() == second.keys()
    for name in first:
        if name.endswith('data.jsonl'):  # absolute paths: equal up to the root
            assert first[name].replace(str(root.resolve()).encode(), b'ROOT') == \
                second[name].replace(str(again.resolve()).encode(), b'ROOT')
        else:
            assert first[name] == second[name], name

    other = tmp_path / 'other'
    synth_dataset.write_dataset(other, 'old', None, DURATION, SR, seed=1, splits=SPLITS)
    wavs = [name for name in first if name.endswith('.wav')]
    assert all(first[name] != (other / name).read_bytes() for name in wavs)


def test_a_failed_write_leaves_every_file_whole(tmp_path, monkeypatch):
    """The disk fills while the third clip of a rewrite is written: the two clips before it are
    new and whole, the third is still the old one, and no temporary file is left."""
    splits_ = (('train', 3), ('valid', 1), ('evaluate', 0), ('generate', 0))
    synth_dataset.write_dataset(tmp_path, 'new', None, 1.0, SR, seed=0, splits=splits_)
    before = _files(tmp_path)
    real_write, calls = soundfile.write, []

    def fill_disk_on_third(file, data, *args, **kwargs):
        calls.append(file)
        if len(calls) == 3:
            real_write(file, data[:len(data) // 2], *args, **kwargs)
            raise OSError('disk full')
        return real_write(file, data, *args, **kwargs)

    monkeypatch.setattr(soundfile, 'write', fill_disk_on_third)
    with pytest.raises(OSError, match='disk full'):
        synth_dataset.write_dataset(tmp_path, 'new', None, 1.0, SR, seed=1, splits=splits_)
    monkeypatch.undo()
    after = _files(tmp_path)
    assert after.keys() == before.keys()
    train = 'audio/new/train/new_train_{:04d}.wav'
    assert all(after[train.format(i)] != before[train.format(i)] for i in (0, 1))
    assert after[train.format(2)] == before[train.format(2)]
    for name in after:
        if name.endswith('.wav'):
            assert soundfile.info(str(tmp_path / name)).frames == SR, name


def test_split_sizes_do_not_change_other_splits_clips():
    a = synth_domains.sample_clip_spec('new', synth_domains.keyed_rng(0, 'new', 'train', 2))
    b = synth_domains.sample_clip_spec('new', synth_domains.keyed_rng(0, 'new', 'valid', 2))
    assert a == synth_domains.sample_clip_spec('new', synth_domains.keyed_rng(0, 'new', 'train', 2))
    assert a != b
    assert splits.split_sizes(20, synth_dataset.DEFAULT_SPLITS) == {'train': 14, 'valid': 2, 'evaluate': 2, 'generate': 2}
    assert splits.split_sizes(4, synth_dataset.DEFAULT_SPLITS) == {'train': 1, 'valid': 1, 'evaluate': 1, 'generate': 1}
    assert splits.split_sizes(None, SPLITS) == dict(SPLITS)
    with pytest.raises(ValueError):
        splits.split_sizes(3, synth_dataset.DEFAULT_SPLITS)


def test_sample_rate_32k_and_cli(tmp_path, capsys):
    spec = synth_domains.sample_clip_spec('new', synth_domains.keyed_rng(0, 'new', 'train', 0))
    wav = synthesizer.render_clip(spec, 1.5, 32000)
    assert wav.dtype == np.float32 and wav.shape == (48000,)
    assert clip_statistics(wav, 32000)['centroid_hz'] > 500

    assert cli.main(['make-synth-data', '--out', str(tmp_path), '--domain', 'both', '--clips', '5',
                     '--duration', '1', '--sample-rate', '32000', '--seed', '2']) == 0
    out = capsys.readouterr().out
    assert 'egs_root=' in out
    for domain in synth_domains.DOMAINS:
        lines = (tmp_path / 'egs' / domain / 'train' / 'data.jsonl').read_text().splitlines()
        assert len(lines) == 2  # 5 clips: one each for valid, evaluate, generate
        assert json.loads(lines[0])['sample_rate'] == 32000
