"""The listening report: one folder holding `report.html` and everything it shows.

    FOLDER/report.html       rows of prompts with players, metrics tables, plots, run configuration
    FOLDER/audio/*.wav       every clip (or .mp3 with audio_format='mp3')
    FOLDER/spectrograms/*.png one small spectrogram per clip
    FOLDER/plots/*.png       the scale sweep and loss curves
    FOLDER/metrics.json      the evaluation report the tables come from

Links are relative and the page has no script: it opens from the file system, needs no server or
network, and the folder can be zipped and shared. Captions come from users' data, so the page is
rendered by Jinja2 with autoescaping on. The folder is written beside itself and swapped in, so a
failed write leaves the previous report whole.

What goes in (rows of clips, metrics, plots, configuration) is assembled by `listening` for an
evaluation and by the demo; this module only renders it.
"""
from dataclasses import dataclass
import json
import math
from pathlib import Path
import re
import shutil
import subprocess
import typing as tp

import jinja2
import numpy as np
import soundfile

from .. import __version__
from ..io.atomic import atomic_directory

REPORT_FILE = 'report.html'
AUDIO_FORMATS = ('wav', 'mp3')
MP3_QUALITY = 2  # ffmpeg -q:a for libmp3lame: variable bit rate, quality 2 of 0 (best) to 9
SET_LABELS = {'new': 'new domain (adaptation)', 'reference': 'reference set (forgetting)'}
AUDIO_MODELS = ('base', 'extended', 'reconstruction')


class ReportError(ValueError):
    pass


@dataclass
class Clip:
    """One audio player: `path` read from `start` for `duration` seconds (None: to the end)."""
    label: str
    path: Path
    start: float = 0.0
    duration: tp.Optional[float] = None


@dataclass
class PromptRow:
    """One prompt: its caption and a clip per column (matched by `Clip.label`)."""
    caption: str
    clips: tp.List[Clip]
    group: str = ''
    note: str = ''


# ---- assets ----------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r'[^a-z0-9]+', '-', text.lower()).strip('-')[:40] or 'clip'


def _read_clip(clip: Clip) -> tp.Tuple[np.ndarray, int]:
    """[T, C] float32 samples of the clip and its sample rate."""
    try:
        info = soundfile.info(str(clip.path))
        start = int(round(clip.start * info.samplerate))
        stop = None if clip.duration is None else start + int(round(clip.duration * info.samplerate))
        data, sample_rate = soundfile.read(str(clip.path), start=start, stop=stop, dtype='float32',
                                           always_2d=True)
    except (OSError, RuntimeError, soundfile.LibsndfileError) as error:
        raise ReportError(f"Cannot read the audio {clip.path} for '{clip.label}' ({error}): "
                          "it was moved or is damaged; rerun the evaluation to write it again.") from None
    if not len(data):
        raise ReportError(f"The audio {clip.path} for '{clip.label}' is empty after {clip.start:g} s.")
    return data, sample_rate


def _write_audio(clip: Clip, data: np.ndarray, sample_rate: int, path: Path, audio_format: str) -> None:
    if audio_format == 'wav':
        if clip.path.suffix.lower() == '.wav' and clip.start == 0 and clip.duration is None:
            shutil.copyfile(clip.path, path)
        else:
            soundfile.write(str(path), data, sample_rate, subtype='PCM_16')
        return
    command = ['ffmpeg', '-nostdin', '-loglevel', 'error', '-y', '-f', 'f32le', '-ar', str(sample_rate),
               '-ac', str(data.shape[1]), '-i', '-', '-c:a', 'libmp3lame', '-q:a', str(MP3_QUALITY),
               str(path)]
    try:
        result = subprocess.run(command, input=np.ascontiguousarray(data, dtype='<f4').tobytes(),
                                capture_output=True)
    except FileNotFoundError:
        raise ReportError("audio_format='mp3' needs the ffmpeg command (scripts/setup.sh installs it); "
                          "use WAV instead.") from None
    if result.returncode != 0:
        raise ReportError(f"ffmpeg could not encode {clip.path} to MP3: "
                          f"{result.stderr.decode(errors='replace').strip()}")


def _write_spectrogram(data: np.ndarray, sample_rate: int, path: Path) -> None:
    """A small log-magnitude spectrogram (0 to Nyquist, 80 dB range) as a PNG, no axes."""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import mlab, pyplot as plt
    mono = data.mean(axis=1)
    n_fft = 512 if len(mono) >= 512 else max(16, 2 ** int(math.log2(len(mono))))
    if len(mono) < n_fft:
        mono = np.pad(mono, (0, n_fft - len(mono)))
    spectrum, _, _ = mlab.specgram(mono, NFFT=n_fft, Fs=sample_rate, noverlap=n_fft * 3 // 4)  # [F, frames]
    db = 10 * np.log10(spectrum + 1e-12)
    fig = plt.figure(figsize=(2.6, 0.7), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(db, origin='lower', aspect='auto', cmap='magma', vmin=db.max() - 80, vmax=db.max())
    ax.set_axis_off()
    fig.savefig(path)
    plt.close(fig)


# ---- tables ----------------------------------------------------------------------------------

def _number(value: tp.Any, digits: int = 4) -> str:
    if value is None:
        return '-'
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f'{value:.{digits}f}' if isinstance(value, float) else str(value)


def lm_table(metrics: dict) -> tp.List[dict]:
    """One row per set of `metrics['sets']`: base and extended cross entropy, and the change.

    The `new` set measures adaptation (gain = base - extended, > 0 is better); every other set
    measures forgetting (extended - base, > 0 is worse).
    """
    rows = []
    for name, entry in metrics.get('sets', {}).items():
        base, extended = entry.get('base') or {}, entry.get('extended') or {}
        adaptation = name == 'new'
        row = {'label': SET_LABELS.get(name, name), 'dataset': entry.get('dataset', ''),
               'base_ce': _number(base.get('ce')), 'extended_ce': _number(extended.get('ce')),
               'base_ppl': _number(base.get('ppl'), 3), 'extended_ppl': _number(extended.get('ppl'), 3),
               'kind': 'gain' if adaptation else 'forgetting', 'change': '-', 'relative': '-', 'good': True}
        if base.get('ce') is not None and extended.get('ce') is not None:
            change = base['ce'] - extended['ce'] if adaptation else extended['ce'] - base['ce']
            row.update(change=f'{change:+.4f}', good=change >= 0 if adaptation else change <= 0,
                       relative=f"{100 * change / base['ce']:+.1f}%" if base['ce'] else '-')
        rows.append(row)
    return rows


def sweep_table(metrics: dict) -> tp.Optional[dict]:
    sweep = metrics.get('scale_sweep') or {}
    if not sweep.get('scales'):
        return None
    rows = [(SET_LABELS.get(name, name), [_number(v) for v in values])
            for name, values in sweep.items() if name != 'scales']
    return {'scales': [f'{s:g}' for s in sweep['scales']], 'rows': rows}


def audio_table(metrics: dict) -> tp.Optional[dict]:
    audio = metrics.get('audio') or {}
    names = sorted({name for model in AUDIO_MODELS for name in (audio.get(model) or {})})
    if not names:
        return None
    rows = [(name, [_number((audio.get(model) or {}).get(name), 5) for model in AUDIO_MODELS]) for name in names]
    return {'columns': list(AUDIO_MODELS), 'rows': rows, 'num_items': audio.get('num_items'),
            'duration': audio.get('duration')}


def _flatten(config: tp.Mapping[str, tp.Any], prefix: str = '') -> tp.List[tp.Tuple[str, str]]:
    items = []
    for key, value in config.items():
        if isinstance(value, dict):
            items += _flatten(value, f'{prefix}{key}.')
        elif value is not None:
            items.append((f'{prefix}{key}', ', '.join(map(str, value)) if isinstance(value, list) else str(value)))
    return items


# ---- the page --------------------------------------------------------------------------------

def _template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.PackageLoader('audiocraft_ext.evaluation', 'templates'),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    return env.get_template('report.html.j2')


def _columns(rows: tp.Sequence[PromptRow]) -> tp.List[str]:
    columns: tp.List[str] = []
    for row in rows:
        for clip in row.clips:
            if clip.label not in columns:
                columns.append(clip.label)
    return columns


def _write_rows(rows: tp.Sequence[PromptRow], columns: tp.Sequence[str], folder: Path,
                audio_format: str) -> tp.List[dict]:
    """Each clip's audio and spectrogram into `folder`; the rows by group, one cell per column."""
    (folder / 'audio').mkdir()
    (folder / 'spectrograms').mkdir()
    groups: tp.List[dict] = []
    for index, row in enumerate(rows):
        by_label = {clip.label: clip for clip in row.clips}
        cells: tp.List[tp.Optional[dict]] = []
        for column in columns:
            clip = by_label.get(column)
            if clip is None:
                cells.append(None)
                continue
            stem = f'{index:03d}_{_slug(column)}'
            data, sample_rate = _read_clip(clip)
            _write_audio(clip, data, sample_rate, folder / 'audio' / f'{stem}.{audio_format}', audio_format)
            _write_spectrogram(data, sample_rate, folder / 'spectrograms' / f'{stem}.png')
            cells.append({'audio': f'audio/{stem}.{audio_format}', 'spectrogram': f'spectrograms/{stem}.png',
                          'seconds': f'{len(data) / sample_rate:.1f} s'})
        if not groups or groups[-1]['name'] != row.group:
            groups.append({'name': row.group, 'rows': []})
        groups[-1]['rows'].append({'caption': row.caption, 'cells': cells, 'note': row.note})
    return groups


def write_report(folder: tp.Union[str, Path], title: str, rows: tp.Sequence[PromptRow], metrics: dict,
                 plots: tp.Mapping[str, tp.Optional[Path]], config: tp.Mapping[str, tp.Any],
                 subtitle: str = '', audio_format: str = 'wav') -> Path:
    """Write the report folder (see module doc), replacing a previous one; returns `folder/report.html`.

    Args:
        folder: the report folder (created; its parent must be writable).
        title, subtitle: page heading.
        rows: the prompts, in order; consecutive rows with the same `group` share a heading.
        metrics: an evaluation report (`metrics.json`, schema in `report`); every set is shown.
        plots: caption -> PNG to show (None or missing files are left out).
        config: the run's configuration (nested dicts are flattened), shown folded.
        audio_format: 'wav' (copied, lossless) or 'mp3' (smaller, encoded with ffmpeg).
    """
    if audio_format not in AUDIO_FORMATS:
        raise ReportError(f"audio format {audio_format!r} is not supported: use one of {AUDIO_FORMATS}.")
    folder = Path(folder).resolve()
    with atomic_directory(folder) as tmp:
        columns = _columns(rows)
        page = {'title': title, 'subtitle': subtitle, 'columns': columns,
                'groups': _write_rows(rows, columns, tmp, audio_format)}
        (tmp / 'plots').mkdir()
        shown_plots = []
        for caption, path in plots.items():
            if path is not None and Path(path).is_file():
                name = f'plots/{len(shown_plots)}_{Path(path).name}'
                shutil.copyfile(path, tmp / name)
                shown_plots.append({'caption': caption, 'src': name})
        (tmp / 'metrics.json').write_text(json.dumps(metrics, indent=2) + '\n')
        html = _template().render(
            page=page, lm_rows=lm_table(metrics), sweep=sweep_table(metrics), audio=audio_table(metrics),
            plots=shown_plots, config=_flatten(config), version=__version__, audio_format=audio_format.upper())
        (tmp / REPORT_FILE).write_text(html, encoding='utf-8')
    return folder / REPORT_FILE
