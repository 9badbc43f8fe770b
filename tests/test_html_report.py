"""The HTML listening report (`evaluation.html_report`): a valid, escaped, self-contained page whose
every player loads its file in a real browser.

The page is written from synthetic tones and a hand-written metrics report; the evaluation's and
the demo's own pages are checked in test_evaluate.py and test_demo.py.
"""
import json
import os
from pathlib import Path
import shutil
import typing as tp
from urllib.parse import urlparse

import numpy as np
import pytest
import soundfile

from audiocraft_ext.evaluation.html_report import Clip, PromptRow, ReportError, write_report

from browser import check_page

SAMPLE_RATE = 16000
EVIL = '<script>alert("caption")</script> & <b>bold</b>'


def tone(path: Path, freq: float, seconds: float = 1.0) -> Path:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    soundfile.write(str(path), (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SAMPLE_RATE)
    return path


def rows_and_plot(root: Path) -> tp.Tuple[tp.List[PromptRow], Path]:
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt
    root.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, 3 * SAMPLE_RATE).astype(np.float32)
    soundfile.write(str(root / 'reference.wav'), noise, SAMPLE_RATE)  # no two segments alike
    reference = root / 'reference.wav'
    rows = []
    for index, caption in enumerate(['calm piano', EVIL, 'fast drums']):
        clips = [Clip('base (extension_scale=0)', tone(root / f'base{index}.wav', 220.0 * (index + 1))),
                 Clip('extended (extension_scale=1)', tone(root / f'ext{index}.wav', 260.0 * (index + 1)))]
        if index != 2:  # the last prompt has no reference clip: its cell says so
            clips.append(Clip('reference clip', reference, start=0.5, duration=1.0))
        rows.append(PromptRow(caption, clips, group='new domain' if index < 2 else 'old domain'))
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [3.5, 3.25])
    fig.savefig(root / 'sweep.png')
    plt.close(fig)
    return rows, root / 'sweep.png'


@pytest.fixture(scope='module')
def write(report_metrics):
    """`write(folder, sources, **kwargs) -> page`: the report of `rows_and_plot(sources)` and `report_metrics`."""
    def write_(folder: Path, sources: Path, **kwargs) -> Path:
        rows, plot = rows_and_plot(sources)
        return write_report(folder, 'Listening report: XP abc123', rows, report_metrics,
                            {'cross entropy vs extension_scale': plot, 'absent plot': None},
                            {'base': 'facebook/musicgen-small', 'run': {'epochs': 3, 'data': ['a', 'b']}}, **kwargs)
    return write_


@pytest.fixture(scope='module')
def page(tmp_path_factory, write) -> Path:
    root = tmp_path_factory.mktemp('html')
    return write(root / 'report', root / 'sources')


def test_html_is_valid_and_escaped(page, parse_html):
    html = page.read_text(encoding='utf-8')
    assert html.startswith('<!DOCTYPE html>')
    checker = parse_html(page)
    assert checker.errors == [] and checker.stack == []
    # The caption is text, not markup: no script and no <b> element anywhere on the page.
    assert not [tag for tag, _ in checker.tags if tag in ('script', 'b')]
    assert '&lt;script&gt;alert(&#34;caption&#34;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;' in html
    assert EVIL in ''.join(checker.text)
    prompts = [attrs for tag, attrs in checker.tags if tag == 'tr' and attrs.get('class') == 'prompt']
    assert len(prompts) == 3
    audio = [attrs['src'] for tag, attrs in checker.tags if tag == 'audio']
    assert len(audio) == 8  # 3 rows x (base, extended) + 2 reference clips
    assert html.count('not generated') == 1
    assert 'Run configuration' in html and '<details' in html and 'run.epochs' in html


def test_every_link_is_a_file_in_the_folder(page, parse_html, report_metrics):
    folder = page.parent.resolve()
    links = [value for tag, attrs in parse_html(page).tags for key, value in attrs.items() if key in ('src', 'href')]
    assert len(links) >= 8 + 8 + 1 + 1  # audio, spectrograms, plot, metrics.json
    for link in links:
        assert not urlparse(link).scheme and not link.startswith('/'), link
        target = (folder / link).resolve()
        assert target.is_relative_to(folder) and target.is_file(), link
    assert json.loads((folder / 'metrics.json').read_text()) == report_metrics
    assert not list(folder.rglob('*absent*'))


def test_metrics_table_shows_every_set_with_gain_and_forgetting(page):
    html = page.read_text(encoding='utf-8')
    table = html[html.index('id="cross-entropy"'):html.index('</table>', html.index('id="cross-entropy"'))]
    # new: gain = base - extended; every other set: forgetting = extended - base.
    assert 'new domain (adaptation)' in table and 'gain +0.2500' in table
    assert 'reference set (forgetting)' in table and 'forgetting +0.1000' in table
    assert 'base_generations' in table and 'forgetting -0.1250' in table
    assert '3.5000' in table and '3.2500' in table
    sweep = html[html.index('id="scale-sweep"'):]
    assert '3.3000' in sweep and '3.0200' in sweep
    audio = html[html.index('id="audio-metrics"'):]
    assert 'frechet_encodec_latent_distance' in audio and '0.12500' in audio and '0.06250' in audio


def test_reference_clip_is_the_requested_segment(page):
    written, sample_rate = soundfile.read(str(page.parent / 'audio' / '000_reference-clip.wav'), dtype='float32')
    source, _ = soundfile.read(str(page.parent.parent / 'sources' / 'reference.wav'), dtype='float32')
    assert sample_rate == SAMPLE_RATE and len(written) == SAMPLE_RATE
    assert np.abs(written - source[SAMPLE_RATE // 2:SAMPLE_RATE // 2 + SAMPLE_RATE]).max() < 1e-4  # 16-bit
    # Generated clips are copied as they are.
    assert (page.parent / 'audio' / '000_base-extension-scale-0.wav').read_bytes() == \
        (page.parent.parent / 'sources' / 'base0.wav').read_bytes()


def test_a_failed_rewrite_keeps_the_previous_report(tmp_path, report_metrics, write):
    page = write(tmp_path / 'report', tmp_path / 'sources')
    before = {p: p.read_bytes() for p in page.parent.rglob('*') if p.is_file()}
    rows = [PromptRow('gone', [Clip('base', tmp_path / 'missing.wav')])]
    with pytest.raises(ReportError, match='Cannot read the audio .*missing.wav'):
        write_report(page.parent, 'again', rows, report_metrics, {}, {})
    assert {p: p.read_bytes() for p in page.parent.rglob('*') if p.is_file()} == before
    assert sorted(os.listdir(tmp_path)) == ['report', 'sources']  # no temporary folder left


def test_mp3_pages_are_smaller_and_play(tmp_path, write):
    page = write(tmp_path / 'report', tmp_path / 'sources', audio_format='mp3')
    mp3s = sorted((page.parent / 'audio').glob('*.mp3'))
    assert len(mp3s) == 8 and not list((page.parent / 'audio').glob('*.wav'))
    wav_bytes = sum(p.stat().st_size for p in (tmp_path / 'sources').glob('*[0-9].wav'))
    assert sum(p.stat().st_size for p in mp3s if 'reference' not in p.name) < wav_bytes / 2
    decoded, sample_rate = soundfile.read(str(mp3s[0]))
    assert sample_rate == SAMPLE_RATE and abs(len(decoded) - SAMPLE_RATE) < 2000  # encoder padding
    checks = check_page(page)
    assert [a for a in checks['audio'] if a['error'] is not None or a['readyState'] < 1] == []


def test_mp3_without_ffmpeg_is_a_clear_error(tmp_path, monkeypatch, report_metrics):
    rows, plot = rows_and_plot(tmp_path / 'sources')
    monkeypatch.setenv('PATH', str(tmp_path / 'empty'))
    with pytest.raises(ReportError, match="audio_format='mp3' needs the ffmpeg command"):
        write_report(tmp_path / 'report', 'title', rows, report_metrics, {}, {}, audio_format='mp3')
    assert not (tmp_path / 'report').exists()


def test_page_in_a_headless_browser(page, tmp_path):
    shot = tmp_path / 'report.png'
    checks = check_page(page, screenshot=shot)
    assert len(checks['audio']) == 8
    for audio in checks['audio']:
        assert audio['error'] is None and audio['readyState'] >= 1, audio
        assert abs(audio['duration'] - 1.0) < 0.01, audio
    assert [img for img in checks['images'] if img['width'] == 0] == []
    assert len(checks['images']) == 8 + 1  # spectrograms + plot
    assert checks['rows'] == 3 and checks['scripts'] == 0
    assert EVIL in checks['captions']  # shown as text
    assert checks['details'] == ['Run configuration']
    assert shot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and shot.stat().st_size > 20_000
    # The check can fail: a copy of the page with one audio file missing has one broken player.
    broken = tmp_path / 'broken'
    shutil.copytree(page.parent, broken)
    (broken / 'audio' / '001_extended-extension-scale-1.wav').unlink()
    checks = check_page(broken / page.name)
    failed = [a for a in checks['audio'] if a['error'] is not None]
    assert len(failed) == 1 and failed[0]['src'].endswith('001_extended-extension-scale-1.wav')
