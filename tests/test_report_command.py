"""`audiocraft-ext report`: the listening report rebuilt from an evaluation folder, as typed.

The evaluation folder is written here by hand in the layout the evaluate stage leaves (see
`evaluation/report.py`), with a variant folder at an intermediate scale, a reference clip still
on disk and one that was deleted; the real evaluate stage's page is tested in test_evaluate.py.
"""
import json
from pathlib import Path
import subprocess
import sys
import typing as tp

import numpy as np
import pytest
import soundfile

from audiocraft_ext import cli

COMMAND = str(Path(sys.executable).parent / 'audiocraft-ext')
SAMPLE_RATE = 16000


def _tone(path: Path, freq: float, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    soundfile.write(str(path), (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SAMPLE_RATE)


@pytest.fixture
def xp(tmp_path, report_metrics) -> Path:
    """<dora>/xps/abc123 with history.json and evaluation/{metrics.json, samples/...}."""
    folder = tmp_path / 'dora' / 'xps' / 'abc123'
    samples = folder / 'evaluation' / 'samples'
    entries = []
    for index in range(2):
        name = f'00{index}_item.wav'
        for variant, freq in (('base', 220.0), ('scale_0.5', 260.0), ('extended', 300.0)):
            _tone(samples / variant / name, freq * (index + 1), 1.0)
        reference = tmp_path / 'data' / f'item{index}.wav'
        _tone(reference, 440.0, 3.0)
        entries.append({'name': name, 'description': f'prompt {index}', 'reference': str(reference), 'seek_time': 1.0})
    (tmp_path / 'data' / 'item1.wav').unlink()  # the dataset moved since the evaluation
    (samples / 'prompts.json').write_text(json.dumps(entries))
    (folder / 'evaluation' / 'metrics.json').write_text(json.dumps(report_metrics))
    history = [{'train': {'ce': 3.6 - 0.1 * e}, 'valid': {'ce': 3.7 - 0.1 * e}} for e in range(3)]
    (folder / 'history.json').write_text(json.dumps(history))
    (folder / '.argv.json').write_text('[]')
    return folder


def report(*args: str, cwd: tp.Optional[Path] = None) -> subprocess.CompletedProcess:
    return subprocess.run([COMMAND, 'report', *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_report_of_an_evaluation_folder(xp, tmp_path, parse_html):
    result = report('abc123', '--dora-dir', str(tmp_path / 'dora'))
    assert result.returncode == 0, result.stderr
    page = xp / 'evaluation' / 'report' / 'report.html'
    assert result.stdout.startswith(f'Wrote {page} (')
    html = page.read_text(encoding='utf-8')
    checker = parse_html(page)
    assert checker.errors == []
    headers = [text.strip() for text in checker.text]
    # Columns: base, the intermediate scale, extended, then the reference clip.
    columns = ['base (extension_scale=0)', 'scale 0.5', 'extended (extension_scale=1)', 'reference clip']
    assert [h for h in headers if h in columns] == columns
    assert len([tag for tag, _ in checker.tags if tag == 'audio']) == 2 * 3 + 1
    assert f"reference audio no longer at {tmp_path / 'data' / 'item1.wav'}" in html
    reference, _ = soundfile.read(str(page.parent / 'audio' / '000_reference-clip.wav'))
    assert len(reference) == SAMPLE_RATE  # the generated clip's length, from seek_time
    assert 'training and validation cross entropy per epoch' in html and 'base_generations' in html
    # The XP folder and the evaluation folder name the same run (the same command, in this process:
    # the console script itself ran above).
    for run in (xp, xp / 'evaluation'):
        assert cli.main(['report', str(run), '--out', str(tmp_path / 'copy')]) == 0
        assert (tmp_path / 'copy' / 'report.html').read_text(encoding='utf-8') == html


@pytest.mark.parametrize('case', ['no run', 'not evaluated', 'no metrics', 'bad metrics'])
def test_report_errors_are_one_line(case, xp, tmp_path):
    dora = tmp_path / 'dora'
    if case == 'not evaluated':
        (xp / 'evaluation' / 'metrics.json').unlink()
        expected = (f"error: The run {xp} has no evaluation/metrics.json yet: evaluate it first "
                    f"(python -m audiocraft_ext.evaluate sig=abc123 dora.dir={dora}).")
    elif case == 'no metrics':
        xp = tmp_path / 'data'
        expected = f"error: {xp} holds no metrics.json: give an XP folder, its evaluation folder or a demo output"
    elif case == 'bad metrics':
        (xp / 'evaluation' / 'metrics.json').write_text('{"sig": ')
        expected = f"error: {xp / 'evaluation' / 'metrics.json'} is not valid JSON ("
    else:
        xp = xp.parent / 'nosuch'
        expected = f"error: No run '{xp}': it is neither a folder nor a signature in"
    result = report(str(xp), '--dora-dir', str(dora))
    assert result.returncode == 2 and result.stdout == ''
    assert result.stderr.startswith(expected) and result.stderr.count('\n') == 1, result.stderr
