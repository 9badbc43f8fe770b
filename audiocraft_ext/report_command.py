"""`audiocraft-ext report RUN`: (re)build the listening report of an existing run.

RUN is a Dora signature (or `//sig/SIG`) looked up in `--dora-dir`, an XP folder, its evaluation
folder (the one holding `metrics.json`), or the output folder of `audiocraft-ext demo`. The page
is built from the files the run left (`metrics.json`, the samples, `history.json`), exactly as
the evaluate stage and the demo build it; `--audio mp3` makes a smaller copy to share.
"""
import argparse
from pathlib import Path
import sys
import typing as tp

from .dora_folder import default_dora_dir
from .evaluation.html_report import AUDIO_FORMATS, ReportError


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument('run', metavar='XP_DIR_OR_SIG',
                        help='a Dora signature, an XP folder, its evaluation folder, or a demo output folder')
    parser.add_argument('--dora-dir', metavar='DIR',
                        help='where signatures are looked up (default: AUDIOCRAFT_EXT_DORA_DIR, else '
                             '/tmp/audiocraft_ext_$USER, as for training)')
    parser.add_argument('--audio', choices=AUDIO_FORMATS, default='wav',
                        help='wav: the clips as they are (default); mp3: encoded with ffmpeg, several times smaller')
    parser.add_argument('--out', metavar='DIR', help='report folder (default: report/ beside metrics.json)')
    return parser


def find_source(run: str, dora_dir: tp.Optional[str]) -> tp.Tuple[str, Path]:
    """('demo' | 'evaluation', folder) for RUN (see module doc)."""
    path = Path(run).expanduser()
    if not path.is_dir():
        sig = run[len('//sig/'):] if run.startswith('//sig/') else run
        xps = (Path(dora_dir).expanduser() if dora_dir else default_dora_dir()) / 'xps'
        if not sig or '/' in sig or not (xps / sig).is_dir():
            raise ReportError(f"No run {run!r}: it is neither a folder nor a signature in {xps}. Give the XP "
                              "folder, or --dora-dir DIR (the dora.dir the run trained with).")
        path = xps / sig
    if (path / 'summary.json').is_file() and (path / 'metrics.json').is_file():
        return 'demo', path
    if (path / 'metrics.json').is_file():
        return 'evaluation', path
    if (path / 'evaluation' / 'metrics.json').is_file():
        return 'evaluation', path / 'evaluation'
    if (path / '.argv.json').is_file():
        raise ReportError(f"The run {path} has no evaluation/metrics.json yet: evaluate it first "
                          f"(python -m audiocraft_ext.evaluate sig={path.name} dora.dir={path.parent.parent}).")
    raise ReportError(f"{path} holds no metrics.json: give an XP folder, its evaluation folder or a demo "
                      "output folder.")


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob('*') if p.is_file())


def run_report(args: argparse.Namespace) -> int:
    """The `report` command; returns the exit code (2 with one `error:` line when RUN is not found)."""
    from .demo.report_page import rebuild_demo_report
    from .evaluation.listening import write_evaluation_report
    try:
        kind, folder = find_source(args.run, args.dora_dir)
        if kind == 'demo':
            page = rebuild_demo_report(folder, args.audio, args.out)
        else:
            page = write_evaluation_report(folder, out=args.out, audio_format=args.audio)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {page} ({_size(page.parent) / 1e6:.1f} MB with its files; open it in a browser, "
          f"or zip {page.parent} to share it)")
    return 0
