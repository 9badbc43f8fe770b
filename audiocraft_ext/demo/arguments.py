"""The demo's sizes (how big and how long it is) and the command-line arguments that set them."""
import argparse
from dataclasses import asdict, dataclass
import os
from pathlib import Path


@dataclass
class Sizes:
    """Everything that sets how big and how long the demo is."""
    clips: int = 60             # per domain, over all splits (70% train)
    duration: float = 3.0       # seconds per clip
    segment: float = 2.0        # seconds per training example (LM); generated clips are as long
    new_layers: int = 2
    extension_epochs: int = 6
    extension_updates: int = 15
    extension_lr: float = 2e-3
    batch_size: int = 8
    prompts: int = 3            # per domain


QUICK = Sizes(clips=20, duration=2.0, segment=1.0, new_layers=1, extension_epochs=2, extension_updates=10,
              extension_lr=5e-3, prompts=2)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    defaults = Sizes()
    parser.add_argument('--out', default='./demo_out', help='output directory (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the data and of every run (default: %(default)s)')
    parser.add_argument('--quick', action='store_true',
                        help='smallest sizes that still show the effect (the test suite runs this)')
    parser.add_argument('--base', metavar='PATH_OR_ID',
                        help='extend this pretrained MusicGen (Hugging Face id, exported directory, '
                             'checkpoint.th) instead of the tiny one shipped with the package')
    parser.add_argument('--pretrained', metavar='DIR',
                        help='the tiny codec and base to extend, as scripts/make_pretrained.py writes them '
                             '(default: the ones shipped with the package, audiocraft_ext/pretrained)')
    parser.add_argument('--cache-dir', default=os.environ.get(
        'AUDIOCRAFT_EXT_DEMO_CACHE', str(Path.home() / '.cache' / 'audiocraft-ext' / 'demo')),
        help='where the data, compression model and base are cached (default: %(default)s)')
    parser.add_argument('--no-cache', action='store_true', help='rebuild the cached data and exported base')
    parser.add_argument('--device', default='cpu', help='cpu (default) or cuda')
    parser.add_argument('--threads', type=int, default=min(2, os.cpu_count() or 1),
                        help='torch threads of the training runs (default: %(default)s)')
    sizes = parser.add_argument_group('sizes (defaults; --quick uses smaller ones)')
    sizes.add_argument('--clips', type=int, help=f'clips per domain (default {defaults.clips})')
    sizes.add_argument('--duration', type=float, help=f'seconds per clip (default {defaults.duration:g})')
    sizes.add_argument('--segment', type=float,
                       help=f'seconds per training example and per generated clip (default {defaults.segment:g})')
    sizes.add_argument('--new-layers', type=int, help=f'new layers on the base (default {defaults.new_layers})')
    sizes.add_argument('--epochs', type=int, help=f'epochs of the extension (default {defaults.extension_epochs})')
    sizes.add_argument('--updates', type=int, help=f'updates per epoch (default {defaults.extension_updates})')
    return parser


def sizes_from_args(args: argparse.Namespace) -> Sizes:
    sizes = Sizes(**asdict(QUICK)) if args.quick else Sizes()
    for arg, field in [('clips', 'clips'), ('duration', 'duration'), ('segment', 'segment'),
                       ('new_layers', 'new_layers'), ('epochs', 'extension_epochs'),
                       ('updates', 'extension_updates')]:
        value = getattr(args, arg, None)
        if value is not None:
            setattr(sizes, field, value)
    if sizes.segment > sizes.duration:
        raise SystemExit(f"--segment ({sizes.segment:g}) must not be longer than --duration ({sizes.duration:g}).")
    if min(sizes.clips, sizes.extension_epochs, sizes.extension_updates, sizes.new_layers) < 1:
        raise SystemExit("--clips, --epochs, --updates and --new-layers must be at least 1.")
    return sizes
