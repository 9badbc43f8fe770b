"""Real music: the shipped score set, FluidSynth rendering, the dataset writer, a user's MIDI folder.

The domains are checked by ear's proxies computed from the audio: old clips (four-voice chorales,
a chord on each beat, a bass line) have few onsets and energy below 250 Hz, new clips (one
fiddle or flute line of running eighth notes) have many onsets and almost no bass.
"""
import hashlib
import importlib.util
import json
import os
from pathlib import Path
import re
import shutil
import subprocess
import sys
import time
import tomllib

import numpy as np
import pytest
import soundfile

from audiocraft_ext import cli
from audiocraft_ext.data import midi_render, score_dataset, score_domains
from audiocraft_ext.data.midi_file import MidiFileError, Note, Part, midi_bytes, read_midi
from synth_statistics import clip_statistics, spectral_flatness

SR = 16000
REPO = Path(__file__).resolve().parents[1]
SPLITS = (('train', 8), ('valid', 2), ('evaluate', 1), ('generate', 1))
CAPTION = re.compile(r'^(?P<style>Bach chorale|Irish (?:reel|jig|slip jig|hornpipe)) in a '
                     r'(?P<mode>major|minor) key, (?P<instrument>church organ|string ensemble|fiddle|flute)$')
DETAILED_CAPTION = re.compile(r'^(?P<style>Bach chorale|Irish (?:reel|jig|slip jig|hornpipe)) in '
                              r'(?P<key>[A-G][b#]? (?:major|minor)), (?P<meter>\d+/\d+), (?P<bpm>\d+) bpm, '
                              r'(?P<instrument>church organ|string ensemble|fiddle|flute)$')


@pytest.fixture(scope='module')
def renderer():
    """Skip (fail on CI) where fluidsynth or its SoundFont is missing: scripts/setup.sh installs both."""
    try:
        midi_render.find_fluidsynth()
        midi_render.find_soundfont()
    except midi_render.RendererNotFoundError as error:
        if os.environ.get('CI'):
            pytest.fail(str(error))
        pytest.skip(str(error))


@pytest.fixture(scope='module')
def dataset(renderer, tmp_path_factory):
    """Both shipped domains, 12 clips of 3 s each, seed 0 (read-only)."""
    root = tmp_path_factory.mktemp('scores')
    manifests = {domain: score_dataset.write_score_dataset(root, domain, None, 3.0, SR, seed=0, splits=SPLITS)
                 for domain in score_domains.DOMAINS}
    return root, manifests


def _files(root: Path):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def _wavs(root: Path, domain: str):
    return [soundfile.read(str(p))[0] for p in sorted((root / 'audio' / domain).rglob('*.wav'))]


def _bass_fraction(wav: np.ndarray, cutoff: float = 250.0) -> float:
    """Share of the clip's energy below `cutoff` Hz (a bass voice puts it there)."""
    power = np.abs(np.fft.rfft(wav)) ** 2
    return float(power[np.fft.rfftfreq(len(wav), 1 / SR) < cutoff].sum() / power.sum())


def _write_midi(path: Path, notes, qpm=120.0, meter=(4, 4), key=None, program=0, title=''):
    path.write_bytes(midi_bytes([Part('melody', program, 0, notes)], qpm, meter, key, title))
    return path


def test_module_import_is_light():
    code = ("import sys, audiocraft_ext.data.score_dataset\n"
            "print(sorted(m for m in ('torch', 'torchaudio', 'audiocraft', 'music21') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '[]'


def test_shipped_score_set_is_whole_small_and_in_the_wheel():
    index = score_domains.load_score_set()
    pieces = index['pieces']
    assert index['version'] == score_domains.SCORE_SET_VERSION and index['music21'] == '10.5.0'
    for domain in score_domains.DOMAINS:
        assert sum(p.domain == domain for p in pieces) == 150
    total = 0
    for piece in pieces:
        data = (score_domains.SCORES_DIR / piece.midi).read_bytes()
        total += len(data)
        assert hashlib.sha256(data).hexdigest() == piece.sha256, piece.id
        assert CAPTION.match(piece.caption()), piece.caption()
        assert DETAILED_CAPTION.match(piece.detailed_caption()), piece.detailed_caption()
        assert piece.duration_s >= 15.0
    assert total + (score_domains.SCORES_DIR / 'scores.json').stat().st_size < 2_000_000
    # Every shipped file matches a package-data pattern of pyproject.toml (so the wheel has it).
    patterns = tomllib.loads((REPO / 'pyproject.toml').read_text())['tool']['setuptools']['package-data']['audiocraft_ext']
    package = REPO / 'audiocraft_ext'
    for path in score_domains.SCORES_DIR.rglob('*'):
        if path.is_file():
            assert any(path.relative_to(package).match(pattern) for pattern in patterns), path


def test_midi_files_read_back_what_was_written(tmp_path):
    notes = [Note(0, 240, 62, 90), Note(240, 480, 66), Note(480, 1440, 69)]
    path = _write_midi(tmp_path / 'a.mid', notes, qpm=90.0, meter=(6, 8), key=(2, False), program=73, title='A tune')
    summary = read_midi(path)
    assert summary.meter == '6/8' and summary.key == 'D major' and summary.title == 'A tune'
    assert summary.qpm == pytest.approx(90.0, rel=1e-5) and summary.bpm == pytest.approx(60.0, rel=1e-5)
    assert summary.programs == {0: 73} and summary.main_program() == 73
    assert [(round(s, 4), round(e, 4), p) for s, e, _, p in summary.notes] == \
        [(0.0, 0.3333, 62), (0.3333, 0.6667, 66), (0.6667, 2.0, 69)]
    (tmp_path / 'b.mid').write_bytes(b'RIFF not a midi file')
    with pytest.raises(MidiFileError, match='is not a MIDI file'):
        read_midi(tmp_path / 'b.mid')


def test_renderer_is_deterministic(renderer):
    piece = score_domains.load_score_set()['pieces'][0]
    path = score_domains.SCORES_DIR / piece.midi
    first = midi_render.render_midi(path, SR, 5.0, 2.0)
    second = midi_render.render_midi(path, SR, 5.0, 2.0)
    assert first.dtype == np.float32 and first.shape == (2 * SR,)
    assert first.tobytes() == second.tobytes()
    assert np.sqrt(np.mean(first.astype(np.float64) ** 2)) == pytest.approx(midi_render.TARGET_RMS, rel=1e-3)
    assert np.abs(first).max() <= midi_render.PEAK_LIMIT + 1e-6
    later = midi_render.render_midi(path, SR, 6.0, 1.0)  # the same samples, cut later
    assert np.allclose(later / np.abs(later).max(), first[SR:] / np.abs(first[SR:]).max(), atol=1e-5)


def test_renderer_is_bounded_in_time_and_bytes(renderer, tmp_path):
    """A file that plays for ten hours: the excerpt comes back at once, nothing is written to disk,
    and a too-short wall-clock limit stops FluidSynth with a clear error."""
    beat = 480
    notes = [Note(i * 4 * beat, i * 4 * beat + beat, 60 + i % 12) for i in range(18000)]  # one every 2 s, 10 h
    path = _write_midi(tmp_path / 'ten_hours.mid', notes, qpm=120.0)
    assert read_midi(path).duration_s > 36000 - 2
    start = time.monotonic()
    wav = midi_render.render_midi(path, SR, 30.0, 2.0)
    assert time.monotonic() - start < 5.0
    assert wav.shape == (2 * SR,) and float(np.abs(wav).max()) > 0.01
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ten_hours.mid']
    with pytest.raises(midi_render.MidiRenderError, match='did not render 3602 s of .* it was stopped'):
        midi_render.render_midi(path, SR, 3600.0, 2.0, timeout_s=0.3)


def test_silence_is_a_clear_error(renderer, tmp_path):
    path = _write_midi(tmp_path / 'short.mid', [Note(0, 480, 60)])
    with pytest.raises(midi_render.MidiRenderError, match=r'short.mid renders silence from 5 s to 6 s'):
        midi_render.render_midi(path, SR, 5.0, 1.0)


def test_missing_fluidsynth_or_soundfont_is_a_clear_error(tmp_path, monkeypatch):
    path = _write_midi(tmp_path / 'a.mid', [Note(0, 480, 60)])
    monkeypatch.setenv('PATH', str(tmp_path / 'empty'))
    for call in (lambda: midi_render.render_midi(path, SR, 0.0, 1.0),
                 lambda: score_dataset.write_score_dataset(tmp_path / 'out', 'old', 4, 1.0, SR)):
        with pytest.raises(midi_render.RendererNotFoundError,
                           match=r'fluidsynth command was not found.*apt-get install fluidsynth fluid-soundfont-gm'):
            call()
    assert not (tmp_path / 'out').exists()  # refused before anything was written
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match=r'SoundFont not found: .*nope.sf2.*--soundfont PATH'):
        midi_render.render_midi(path, SR, 0.0, 1.0, soundfont=tmp_path / 'nope.sf2')
    monkeypatch.setenv(midi_render.SOUNDFONT_ENV, str(tmp_path / 'gone.sf2'))
    with pytest.raises(midi_render.RendererNotFoundError, match='AUDIOCRAFT_EXT_SOUNDFONT=.*gone.sf2: no such SoundFont'):
        midi_render.find_soundfont()


def test_layout_captions_and_splits_by_piece(dataset):
    root, manifests = dataset
    index = {p.id: p for p in score_domains.load_score_set()['pieces']}
    for domain in score_domains.DOMAINS:
        pieces_of = {}
        for split, size in SPLITS:
            assert manifests[domain][split] == root.resolve() / 'egs' / domain / split
            lines = (manifests[domain][split] / 'data.jsonl').read_text().splitlines()
            assert len(lines) == size
            for line in lines:
                meta = json.loads(line)
                wav = Path(meta['path'])
                info = soundfile.info(str(wav))
                assert (info.samplerate, info.channels, info.subtype, info.frames) == (SR, 1, 'PCM_16', 3 * SR)
                sidecar = json.loads(wav.with_suffix('.json').read_text())
                for name in ('title', 'artist', 'key', 'bpm', 'genre', 'moods', 'keywords', 'description',
                             'name', 'instrument'):
                    assert sidecar[name] not in (None, '', []), name
                match = CAPTION.match(sidecar['description'])
                assert match, sidecar['description']
                detailed = DETAILED_CAPTION.match(sidecar['detailed_caption'])
                assert detailed, sidecar['detailed_caption']
                piece = index[sidecar['score']['piece']]
                assert piece.domain == domain and sidecar['name'] == wav.stem
                assert (match['mode'], match['instrument']) == (sidecar['key'].split()[-1], sidecar['instrument'])
                assert (detailed['key'], detailed['meter'], int(detailed['bpm']), detailed['instrument']) == \
                    (sidecar['key'], piece.meter, sidecar['bpm'], sidecar['instrument'])
                assert (piece.key, piece.bpm, piece.instrument) == (sidecar['key'], sidecar['bpm'], sidecar['instrument'])
                assert match['style'].startswith('Bach' if domain == 'old' else 'Irish')
                assert 0.0 <= sidecar['score']['start_s'] <= piece.duration_s - 3.0
                pieces_of.setdefault(split, set()).add(piece.id)
        for a in pieces_of:
            for b in pieces_of:
                assert a == b or not pieces_of[a] & pieces_of[b], (domain, a, b)
        params = json.loads((root / 'egs' / domain / 'synth.json').read_text())
        assert params['splits'] == dict(SPLITS) and params['source'] == 'score set'
        dealt = params['pieces']
        assert sum(map(len, dealt.values())) == 150 and len(set().union(*map(set, dealt.values()))) == 150


def test_the_held_out_pieces_do_not_depend_on_the_seed(renderer, dataset, tmp_path):
    """Every seed holds out the same pieces (a base pretrained on the train pieces never heard them);
    the seed changes the excerpts."""
    root, _ = dataset
    score_dataset.write_score_dataset(tmp_path, 'old', None, 3.0, SR, seed=1, splits=SPLITS)
    first, second = (json.loads((r / 'egs' / 'old' / 'synth.json').read_text()) for r in (root, tmp_path))
    assert first['pieces'] == second['pieces'] and (first['seed'], second['seed']) == (0, 1)
    starts = [[json.loads(p.read_text())['score']['start_s'] for p in sorted((r / 'audio' / 'old').rglob('*.json'))]
              for r in (root, tmp_path)]
    assert starts[0] != starts[1]


def test_clips_are_music_and_the_domains_sound_different(dataset):
    root, _ = dataset
    onsets, bass = {}, {}
    for domain in score_domains.DOMAINS:
        wavs = _wavs(root, domain)
        for wav in wavs:
            stats = clip_statistics(wav, SR)
            assert stats['rms'] == pytest.approx(midi_render.TARGET_RMS, rel=0.02)  # both domains equally loud
            assert stats['clipped_fraction'] == 0.0 and stats['silent_fraction'] < 0.2
            assert spectral_flatness(wav) < 0.05  # white noise: 0.56
        onsets[domain] = np.array([clip_statistics(w, SR)['onset_rate'] for w in wavs])
        bass[domain] = np.array([_bass_fraction(w) for w in wavs])
    # Running eighth notes against a chord a beat; a bass voice against a treble melody.
    assert np.median(onsets['new']) > 3 * max(np.median(onsets['old']), 0.5), onsets
    assert onsets['new'].mean() > 2.5 and onsets['old'].mean() < 1.5, onsets
    assert np.median(bass['old']) > 10 * np.median(bass['new']) and np.median(bass['old']) > 0.03, bass


def test_same_arguments_same_bytes_on_one_or_two_workers(renderer, dataset, tmp_path):
    root, _ = dataset
    again = tmp_path / 'again'
    score_dataset.write_score_dataset(again, 'new', None, 3.0, SR, seed=0, splits=SPLITS, workers=1)
    first = {k: v for k, v in _files(root).items() if k.startswith(('audio/new/', 'egs/new/'))}
    second = _files(again)
    assert first.keys() == second.keys()
    for name in first:
        if name.endswith('data.jsonl'):
            assert first[name].replace(str(root.resolve()).encode(), b'ROOT') == \
                second[name].replace(str(again.resolve()).encode(), b'ROOT')
        else:
            assert first[name] == second[name], name


def test_a_folder_of_midi_files(renderer, tmp_path):
    """Captions from captions.csv where it lists the file, else from the file's name and its own
    tempo, time signature, key signature and instrument."""
    folder = tmp_path / 'my midi'
    folder.mkdir()
    scale = [Note(i * 240, i * 240 + 200, 62 + (2 * i) % 12) for i in range(40)]  # 5 s at 120 qpm
    _write_midi(folder / 'morning_song.mid', scale, qpm=120.0, meter=(3, 4), key=(1, True), program=40)
    _write_midi(folder / 'jig-for-two.mid', scale, qpm=150.0, meter=(6, 8), key=(-1, False), program=73)
    _write_midi(folder / 'plain.midi', scale)  # no program, tempo or signatures: piano, 120, 4/4
    _write_midi(folder / 'listed.mid', scale)
    (folder / 'captions.csv').write_text('file,description,genre,moods\n'
                                         'listed.mid,a calm test melody,test,"calm, quiet"\n')
    manifests = score_dataset.write_score_dataset(tmp_path / 'out', 'mine', None, 2.0, SR, seed=1,
                                                  splits=(('train', 3), ('valid', 1)), midi_dir=folder)
    captions = {}
    for split in ('train', 'valid'):
        for line in (manifests[split] / 'data.jsonl').read_text().splitlines():
            path = Path(json.loads(line)['path'])
            sidecar = json.loads(path.with_suffix('.json').read_text())
            captions[sidecar['score']['piece']] = sidecar
            assert path.name.startswith(f'mine_{split}_')
            assert float(np.abs(soundfile.read(str(path))[0]).max()) > 0.05
    assert captions['morning_song.mid']['description'] == 'morning song in E minor, 3/4, 120 bpm, violin'
    assert captions['jig-for-two.mid']['description'] == 'jig for two in F major, 6/8, 100 bpm, flute'
    assert captions['plain.midi']['description'] == 'plain, 4/4, 120 bpm, acoustic grand piano'
    listed = captions['listed.mid']
    assert (listed['description'], listed['genre'], listed['moods']) == ('a calm test melody', 'test', ['calm', 'quiet'])

    (folder / 'broken.mid').write_bytes(b'MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0MTrk\x00\x00\x00\x10\x00\x90')
    with pytest.raises(MidiFileError, match='broken.mid is not a readable MIDI file'):
        score_dataset.write_score_dataset(tmp_path / 'out2', 'mine', 4, 2.0, SR, midi_dir=folder)
    (folder / 'broken.mid').unlink()
    with pytest.raises(ValueError, match=r'4 piece\(s\) long enough .* cannot give each of the 5 splits'):
        score_dataset.write_score_dataset(tmp_path / 'out2', 'mine', None, 2.0, SR, midi_dir=folder,
                                          splits=(('train', 1), ('valid', 1), ('a', 1), ('b', 1), ('c', 1)))
    with pytest.raises(ValueError, match='None of the 4 piece.* lasts 30 s'):
        score_dataset.write_score_dataset(tmp_path / 'out2', 'mine', 4, 30.0, SR, midi_dir=folder)


def test_recipe_remakes_shipped_pieces_byte_for_byte():
    """scripts/make_score_set.py, run on one shipped piece of each domain, writes the same MIDI bytes
    and the same scores.json entry (music21 parses; the choices depend on (seed, domain, piece) only)."""
    import music21  # noqa: F401  (pinned in the test extra: a missing one is an error, not a skip)
    spec = importlib.util.spec_from_file_location('make_score_set', REPO / 'scripts' / 'make_score_set.py')
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    index = score_domains.load_score_set()
    for domain, piece_id in (('old', 'bwv102.7'), ('new', 'oneills0584')):
        piece = next(p for p in index['pieces'] if p.id == piece_id)
        candidate = next(c for c in recipe.candidates(domain) if c['id'] == piece_id)
        data, entry = recipe.make_piece(domain, candidate, index['seed'])
        assert data == (score_domains.SCORES_DIR / piece.midi).read_bytes(), piece_id
        shipped = {k: v for k, v in piece.__dict__.items() if k not in ('midi', 'sha256')}
        assert entry == shipped


def test_make_score_data_command(renderer, tmp_path, capsys):
    assert cli.main(['make-score-data', '--out', str(tmp_path), '--domain', 'new', '--clips', '4',
                     '--duration', '1', '--seed', '3']) == 0
    assert f"egs_root={tmp_path.resolve() / 'egs' / 'new'}" in capsys.readouterr().out
    assert len((tmp_path / 'egs' / 'new' / 'train' / 'data.jsonl').read_text().splitlines()) == 1
    assert cli.main(['make-score-data', '--out', str(tmp_path), '--soundfont', str(tmp_path / 'nope.sf2')]) == 2
    assert 'error: SoundFont not found' in capsys.readouterr().err
