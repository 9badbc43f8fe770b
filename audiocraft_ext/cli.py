"""The `audiocraft-ext` command.

Subcommands:
    demo             the whole method end to end, offline, on a CPU (see audiocraft_ext/demo/pipeline.py).
    make-synth-data  write the synthetic two-domain captioned dataset.
    make-score-data  write the demo's dataset of real music (scores rendered with FluidSynth), or
                     render a folder of your own MIDI files the same way.
    prepare-data     write AudioCraft dataset manifests and sidecar metadata for training.
    export           turn a training run (dora sig or checkpoint) into an extension, AudioCraft's layout or
                     a transformers MusicgenForConditionalGeneration.
    convert          rewrite an extension saved by an older version in the current format.
    info             print what an extension holds, without loading its weights.
    generate         music from captions with a saved model, one WAV (and its settings) per caption.
    report           (re)build the HTML listening report of an evaluated run or a demo output.
    plan             predicted peak memory and compute of a training step, the extension beside full
                     fine-tuning, and the largest batch a card fits (see models/memory_plan.py).

Heavy imports (torch, audiocraft) happen inside the subcommands, so `audiocraft-ext --help`
answers at once.
"""
import argparse
from pathlib import Path
import sys
import typing as tp

from .data.midi_file import MidiFileError
from .data.midi_render import MidiRenderError
from .data.prepare import DataPreparationError, prepare_data
from .data.score_dataset import write_score_dataset
from .data.splits import SplitSize, split_sizes
from .data.synth_dataset import DEFAULT_SPLITS, write_dataset, write_tone_folder
from .data.synth_domains import DOMAINS
from .demo.arguments import add_arguments as add_demo_arguments


def _demo(args: argparse.Namespace) -> int:
    """The whole method end to end: synthetic data, a trained base, new layers, generation, evaluation."""
    from audiocraft_ext.demo.pipeline import run_demo
    return run_demo(args)


def _prepare_data(args: argparse.Namespace) -> int:
    """Manifests for train/valid/evaluate/generate + sidecar .json metadata (see data.prepare)."""
    captions = args.captions
    if args.synthetic:
        write_tone_folder(args.audio_dir, num_files=args.synthetic, duration=args.synthetic_duration,
                          seed=args.seed)
        captions = captions or str(Path(args.audio_dir) / 'captions.csv')
        print(f"Wrote {args.synthetic} synthetic tones to {args.audio_dir}")
    try:
        manifests = prepare_data(args.audio_dir, args.out, captions=captions, valid=args.valid,
                                 evaluate=args.evaluate, seed=args.seed,
                                 allow_missing_captions=args.allow_missing_captions)
    except DataPreparationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for split, path in manifests.items():
        count = sum(1 for _ in open(path))
        print(f"{split:>9}: {count} files -> {path}")
    print(f"Train with: python -m audiocraft_ext.train solver=extended_musicgen dset=audio/egs "
          f"egs_root={args.out} pretrained_model_checkpoint=...")
    return 0


def _splits_of(args: argparse.Namespace) -> tp.List[tp.Tuple[str, SplitSize]]:
    splits: tp.List[tp.Tuple[str, SplitSize]] = [('train', 1.0)]
    for name, _ in DEFAULT_SPLITS[1:]:
        value = getattr(args, name)
        splits.append((name, int(value) if value >= 1 else float(value)))
    return splits


def _write_domains(args: argparse.Namespace, domains: tp.Sequence[str], write: tp.Callable[..., tp.Dict[str, Path]]) -> int:
    """Write each domain with `write(out, domain, clips, duration, sample_rate, seed, splits, progress=)`."""
    splits = _splits_of(args)
    for domain in domains:
        def progress(done: int, total: int, domain: str = domain) -> None:
            end = '\n' if done == total else '\r'
            print(f"[{domain}] rendered {done}/{total} clips", end=end, flush=True)

        manifests = write(args.out, domain, args.clips, args.duration, args.sample_rate,
                          args.seed, splits, progress=progress)
        sizes = split_sizes(args.clips, splits)
        counts = ', '.join(f"{split} {sizes[split]}" for split in manifests)
        root = Path(args.out).expanduser().resolve() / 'egs' / domain
        print(f"[{domain}] {counts} -> train with: dset=audio/egs egs_root={root}")
    return 0


def _make_synth_data(args: argparse.Namespace) -> int:
    """The synthetic two-domain dataset (data/synth_dataset.py), one domain or both; prints progress."""
    return _write_domains(args, list(DOMAINS) if args.domain == 'both' else [args.domain], write_dataset)


def _make_score_data(args: argparse.Namespace) -> int:
    """Excerpts of the shipped scores or of a MIDI folder (data/score_dataset.py); prints progress."""
    if args.midi_dir is None:
        domain = args.domain or 'both'
        if domain not in ('old', 'new', 'both'):
            print(f"error: --domain {domain}: the score set has the domains old and new (or both); "
                  "other names go with --midi-dir.", file=sys.stderr)
            return 2
        domains = list(DOMAINS) if domain == 'both' else [domain]
    else:
        domains = [args.domain or 'midi']

    def write(*arguments, **options):
        return write_score_dataset(*arguments, midi_dir=args.midi_dir, soundfont=args.soundfont, **options)

    try:
        return _write_domains(args, domains, write)
    except (MidiRenderError, MidiFileError, DataPreparationError, FileNotFoundError, ValueError) as error:
        print(f"\nerror: {error}", file=sys.stderr)
        return 2


def _export(args: argparse.Namespace) -> int:
    """A training run -> an extension, AudioCraft's layout or transformers' MusicGen; an AudioCraft MusicGen
    checkpoint -> AudioCraft's layout."""
    from audiocraft_ext.dora_folder import default_dora_dir
    from audiocraft_ext.io.base_reference import SIG_PREFIX, resolve_base
    from audiocraft_ext.io.destinations import check_destination
    from audiocraft_ext.io.errors import CheckpointError, OverwriteError
    source = args.source
    if not source.startswith('//') and not Path(source).exists() and '/' not in source:
        source = SIG_PREFIX + source  # a bare dora signature
    try:
        if args.dtype and args.format != 'extended':
            raise CheckpointError(f"--dtype {args.dtype} applies to --format extended only: AudioCraft's and "
                                  "transformers' layouts hold the whole model as the base stores it.")
        run = resolve_base(source, args.dora_dir or default_dora_dir(), allow_pickle=args.allow_pickle)
        if run.kind not in ('solver_checkpoint', 'audiocraft_checkpoint'):
            raise CheckpointError(f"{args.source} is not a training run (a {run.kind} base): export takes the "
                                  "checkpoint.th of a training run, its XP folder or //sig/SIG.")
        location = Path(run.location)
        check_destination(args.out, {location.parent: 'the training run it exports'}, args.overwrite)
        # AudioCraft's models take seconds to import: only once the inputs are known to be good.
        from audiocraft_ext.models.extended_musicgen import ExtendedMusicGen, write_musicgen_exported
        from audiocraft_ext.models.bases import load_plain_base
        if run.kind == 'audiocraft_checkpoint':  # a plain MusicGen run: no new layers
            if args.format != 'audiocraft':
                raise CheckpointError(f"{location} is a checkpoint of AudioCraft's MusicGenSolver (no new layers): "
                                      "export it with --format audiocraft.")
            out = write_musicgen_exported(load_plain_base(run, 'cpu', args.allow_pickle), args.out, args.overwrite)
            print(f"Wrote AudioCraft's layout to {out} (load with MusicGen.get_pretrained('{out}'))")
            return 0
        model = ExtendedMusicGen.from_solver_checkpoint(location, state=args.state, device='cpu',
                                                        allow_pickle=args.allow_pickle)
        if args.format == 'audiocraft':
            out = model.export_audiocraft(args.out, overwrite=args.overwrite)
            print(f"Wrote AudioCraft's layout to {out} (load with MusicGen.get_pretrained('{out}'))")
        elif args.format == 'transformers':
            from audiocraft_ext.io.solver_checkpoints import read_solver_checkpoint
            from audiocraft_ext.models.transformers_export import export_transformers
            train = (read_solver_checkpoint(location).get('xp.cfg') or {}).get('datasource', {}).get('train')
            data = args.training_data or (f"the manifests in {train} (datasource.train of the run "
                                          f"{location.parent.name})" if train else None)
            out = export_transformers(model, args.out, overwrite=args.overwrite, training_data=data,
                                      protected={location.parent: 'the training run it exports'})
            print(f"Wrote transformers' MusicgenForConditionalGeneration to {out} (load with "
                  f"pipeline('text-to-audio', model='{out}') or MusicgenForConditionalGeneration.from_pretrained)")
        else:
            out = model.save(args.out, include_base=not args.extension_only, overwrite=args.overwrite,
                             dtype=args.dtype)
            kind = 'extension-only' if args.extension_only else 'self-contained'
            print(f"Wrote the {kind} extension {out} (load with ExtendedMusicGen.get_pretrained('{out}'))")
    except (FileNotFoundError, CheckpointError, OverwriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _convert(args: argparse.Namespace) -> int:
    """An extension in an older format (a `.pt` file) -> the current format (file or directory)."""
    from audiocraft_ext.io import extension_files
    from audiocraft_ext.io.destinations import check_destination
    from audiocraft_ext.io.errors import CheckpointError, OverwriteError
    try:
        destination = check_destination(args.new, {Path(args.old): 'the extension being converted'},
                                         args.overwrite)
        package = extension_files.read(args.old)
        write = extension_files.write_file if Path(args.new).suffix else extension_files.write_directory
        write(package, destination)
    except (FileNotFoundError, CheckpointError, OverwriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {destination} (load with ExtendedMusicGen.get_pretrained('{destination}'))")
    return 0


def _info(args: argparse.Namespace) -> int:
    """What an extension holds, read from its config and tensor headers (no weights loaded)."""
    from audiocraft_ext.io import extension_files
    from audiocraft_ext.io.errors import CheckpointError
    try:
        config = extension_files.read_config(args.model)
        counts = extension_files.parameter_counts(args.model)
    except (FileNotFoundError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    extension, base = config['extension'], config['base']
    layer = extension.get('layer_config', {})
    rows = [('model', str(args.model)),
            ('format', f"{config['format']} version {config['format_version']} "
                       f"({extension_files.kind_of(args.model)}), written by audiocraft-ext "
                       f"{config.get('library_version') or 'unknown'}"),
            ('base', f"{base.get('reference') or '(in memory when saved)'}"),
            ('base hash', base['hash']),
            ('base included', 'yes (self-contained)' if 'base_lm' in counts else 'no (extension only: needs the base)'),
            ('new layers', f"{extension['num_additional_layers']} (dim {layer.get('d_model')}, "
                           f"{layer.get('num_heads')} heads, feed-forward {layer.get('dim_feedforward')})"),
            ('trainable params', f"{counts['extension']:,}" + (f" (stored in {config['extension_dtype']})"
                                                                if config.get('extension_dtype') else '')),
            ('extension_scale', str(extension.get('extension_scale'))),
            ('name', str(config.get('name'))), ('max_duration', f"{config.get('max_duration')} s")]
    if 'base_lm' in counts:
        rows.append(('base params', f"{counts['base_lm']:,} (LM)" +
                     (f" + {counts['compression']:,} (compression model)" if 'compression' in counts else '')))
    for key, value in sorted((config.get('generation') or {}).items()):
        rows.append((f'generation.{key}', str(value)))
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    """The memory and compute plan of one training step (models.memory_plan), without loading weights."""
    from audiocraft_ext.io.errors import CheckpointError
    from audiocraft_ext.models import memory_plan
    try:
        if args.gpu_memory is not None and args.gpu_memory * memory_plan.GIB <= memory_plan.CUDA_CONTEXT_BYTES:
            raise ValueError(f"--gpu-memory {args.gpu_memory:g} leaves nothing beside the CUDA context "
                             f"({memory_plan.CUDA_CONTEXT_BYTES / memory_plan.GIB:g} GiB): give the card's memory in GiB.")
        if args.effective_batch is not None and args.effective_batch < 1:
            raise ValueError(f"--effective-batch {args.effective_batch}: give a positive number of examples.")
        ranks = None if args.ranks is None else tuple(args.ranks or memory_plan.RANKS)
        if ranks is not None and min(ranks) < 1:
            raise ValueError(f"--ranks {' '.join(map(str, ranks))}: give positive numbers of ranks (GPUs), "
                             "e.g. --ranks 2 4.")
        settings = memory_plan.Settings(new_layers=args.new_layers, batch_size=args.batch_size, segment=args.segment,
                                        precision=args.precision, replay_ratio=args.replay_ratio,
                                        feature_cache=args.feature_cache == 'on', half_base=args.half_base,
                                        checkpointing=args.checkpointing)
        shape = memory_plan.read_shape(args.base)
    except (FileNotFoundError, CheckpointError, ValueError) as error:
        message = str(error)
        for name in ('new_layers', 'batch_size', 'segment', 'replay_ratio'):  # the option as typed
            if message.startswith(name + '='):
                message = f"--{name.replace('_', '-')} {message[len(name) + 1:]}"
        print(f"error: {message}", file=sys.stderr)
        return 2
    budget, note = None, ''
    if args.gpu_memory is not None:
        budget, note = memory_plan.usable_bytes(args.gpu_memory * memory_plan.GIB), memory_plan.card_note(args.gpu_memory)
    print(memory_plan.format_plan(memory_plan.make_plan(shape, settings, budget, args.effective_batch, note)))
    if ranks is not None:
        print(memory_plan.format_rank_plans(memory_plan.rank_plans(shape, settings, ranks, budget), settings))
    return 0


class _DeprecatedFlag(argparse.Action):
    """A renamed flag that still works: sets its new option and says so on stderr."""
    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is deprecated and will be removed; use {self.new}.", file=sys.stderr)
        setattr(namespace, self.dest, True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='audiocraft-ext',
        description='Extend a frozen pretrained MusicGen with new trainable transformer layers.')
    commands = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)

    demo = commands.add_parser(
        'demo', help='the whole method offline on a CPU: extend a tiny pretrained base, generate, evaluate',
        description='Write a synthetic two-domain captioned dataset, train a tiny MusicGen on the '
                    '"old" domain with AudioCraft\'s MusicGenSolver (cached), freeze it and train new '
                    'layers on the "new" domain with python -m audiocraft_ext.train, generate clips with '
                    'ExtendedMusicGen, evaluate base vs extended with python -m audiocraft_ext.evaluate '
                    'and print a summary. Nothing is downloaded.')
    add_demo_arguments(demo)
    demo.set_defaults(func=_demo)

    prepare = commands.add_parser(
        'prepare-data', help='write dataset manifests and sidecar metadata for training',
        description='Scan AUDIO_DIR for audio files, write a sidecar NAME.json (description, genre, '
                    'moods, keywords, ...) next to each from the captions CSV, and write the '
                    'train/valid/evaluate/generate manifests under --out (AudioCraft\'s jsonl format).')
    prepare.add_argument('audio_dir', help='folder of audio files (searched recursively)')
    prepare.add_argument('--out', required=True, help='dataset folder to write, e.g. egs/mydata')
    prepare.add_argument('--captions', help="CSV with columns 'file' and 'description' (optional: genre, "
                                            "moods, keywords, title, artist, key, bpm, instrument)")
    prepare.add_argument('--valid', type=float, default=0.1, help='fraction for valid (default: %(default)s)')
    prepare.add_argument('--evaluate', type=float, default=0.1,
                         help='fraction for evaluate, also used for generate (default: %(default)s)')
    prepare.add_argument('--seed', type=int, default=0, help='split seed (default: %(default)s)')
    prepare.add_argument('--allow-missing-captions', action='store_true',
                         help='train files without a caption with an empty description')
    prepare.add_argument('--synthetic', type=int, default=0, metavar='N',
                         help='first write N synthetic sine tones (with captions) into AUDIO_DIR')
    prepare.add_argument('--synthetic-duration', type=float, default=2.0, help=argparse.SUPPRESS)
    prepare.set_defaults(func=_prepare_data)

    export = commands.add_parser(
        'export', help='export a training run to a model file or to AudioCraft\'s layout',
        description='Export the extension trained by a run (dora signature, //sig/SIG, xp folder or '
                    'checkpoint.th) with its base.')
    export.add_argument('source', help='dora signature, //sig/SIG, xp folder or checkpoint.th')
    export.add_argument('out', help='NAME.safetensors (one file) or a directory (an extension directory, or with '
                                    '--format audiocraft / transformers, that layout)')
    export.add_argument('--format', choices=['extended', 'audiocraft', 'transformers'], default='extended',
                        help='extended: a file for ExtendedMusicGen.get_pretrained (default); audiocraft: '
                             'state_dict.bin + compression_state_dict.bin for stock MusicGen.get_pretrained; '
                             'transformers: a directory for MusicgenForConditionalGeneration.from_pretrained')
    export.add_argument('--training-data', metavar='TEXT',
                        help="what the new layers were trained on, for the model card of --format transformers "
                             "(default: the run's datasource.train)")
    export.add_argument('--extension-only', action='store_true',
                        help='only the new layers and a reference to the base (extended format)')
    export.add_argument('--adapter-only', action=_DeprecatedFlag, dest='extension_only', help=argparse.SUPPRESS,
                        new='--extension-only')
    export.add_argument('--state', choices=['best', 'last'], default='best',
                        help='best validation state (default) or last epoch')
    export.add_argument('--dtype', choices=['float32', 'float16', 'bfloat16'],
                        help="store the new layers in this precision (--format extended; default: the model's, "
                             "float32); half precision halves their bytes, loading casts them back")
    export.add_argument('--overwrite', action='store_true', help='replace OUT if it exists (never the run or the base)')
    export.add_argument('--allow-pickle', action='store_true',
                        help='load a base checkpoint that only full unpickling can read (it can run code: only for '
                             'files from a source you trust; docs/SECURITY.md)')
    export.add_argument('--dora-dir', metavar='DIR',
                        help='the dora.dir the run was trained with, where SIG is looked up (default: '
                             '$AUDIOCRAFT_EXT_DORA_DIR or /tmp/audiocraft_ext_$USER)')
    export.set_defaults(func=_export)

    convert = commands.add_parser(
        'convert', help='rewrite an extension saved by an older version (.pt) in the current format',
        description='Read OLD (a .pt file written by ExtendedMusicGen.save before format version 2, loaded with '
                    'torch.load(weights_only=True)) and write NEW: one .safetensors file, or a directory when NEW '
                    'has no suffix. Checksums, keys and values are checked on the way.')
    convert.add_argument('old', help='the extension to convert')
    convert.add_argument('new', help='NAME.safetensors (one file) or a directory')
    convert.add_argument('--overwrite', action='store_true', help='replace NEW if it exists')
    convert.set_defaults(func=_convert)

    info = commands.add_parser(
        'info', help='print what an extension holds, without loading its weights',
        description='Base reference and hash, number of new layers, trainable parameters, format version and '
                    'generation defaults of an extension (directory, .safetensors or legacy .pt file).')
    info.add_argument('model', help='an extension written by ExtendedMusicGen.save or audiocraft-ext export')
    info.set_defaults(func=_info)

    from audiocraft_ext import generate as generate_command, report_command
    generate = commands.add_parser(
        'generate', help='generate music from captions with a saved model (one WAV per caption)',
        description='Load MODEL with ExtendedMusicGen.get_pretrained and write one WAV per caption into '
                    '--out, with a JSON beside it holding the caption, the settings and the command that '
                    'generates it again. Inputs are checked before anything is generated.')
    generate_command.add_arguments(generate)
    generate.set_defaults(func=generate_command.run_generate)

    report = commands.add_parser(
        'report', help='(re)build the HTML listening report of an evaluated run or a demo output',
        description='Write report.html (base and extended side by side per prompt, metrics, plots, '
                    'configuration) with its audio in one folder, from what the run left on disk.')
    report_command.add_arguments(report)
    report.set_defaults(func=report_command.run_report)

    plan = commands.add_parser(
        'plan', help='predicted peak memory and compute of a training step: the extension and full fine-tuning',
        description='Predict the peak accelerator memory of one training step of the extension (frozen base, new '
                    'layers trained) and of full fine-tuning of the same base, side by side, from the base\'s '
                    'shapes (no weight is loaded or downloaded); with --gpu-memory, the largest batch that fits. '
                    'Defaults are those of configs/solver/extended_musicgen.yaml.')
    plan.add_argument('--base', required=True,
                      help='facebook/musicgen-small, -medium, -large, -melody (published shapes, no download), an '
                           'exported directory or an AudioCraft checkpoint.th (its config is read)')
    plan.add_argument('--new-layers', type=int, default=12, metavar='N', help='new layers (default: %(default)s)')
    plan.add_argument('--batch-size', type=int, default=16, metavar='B',
                      help='examples per step on one GPU (default: %(default)s)')
    plan.add_argument('--segment', type=float, default=30.0, metavar='SECONDS',
                      help='seconds per example (default: %(default)s)')
    plan.add_argument('--precision', choices=['float32', 'bfloat16', 'float16'], default='bfloat16',
                      help='autocast dtype; float32: autocast off (default: %(default)s)')
    plan.add_argument('--replay-ratio', type=float, default=0.5, metavar='R',
                      help='replay examples per example, forgetting control (default: %(default)s)')
    plan.add_argument('--feature-cache', choices=['on', 'off'], default='off',
                      help="the frozen base's outputs read from disk: compute, not memory (default: %(default)s)")
    plan.add_argument('--half-base', action='store_true', help='frozen base transformer stored in float16')
    plan.add_argument('--checkpointing', action='store_true', help='activation checkpointing of the new layers')
    plan.add_argument('--gpu-memory', type=float, metavar='GIB', help="the card's memory in GiB, e.g. 24 or 80")
    plan.add_argument('--effective-batch', type=int, metavar='E',
                      help='examples per update wanted: how many steps of the largest batch reach it')
    plan.add_argument('--ranks', type=int, nargs='*', metavar='W',
                      help='also the memory per rank (GPU) on W ranks, the new layers replicated (fsdp.use=false) '
                           'and sharded (fsdp.use=true), --batch-size being per rank (no W: 1 2 4 8)')
    plan.set_defaults(func=_plan)

    synth = commands.add_parser('make-synth-data', help='write the synthetic two-domain captioned dataset (old/new)')
    synth.add_argument('--domain', choices=['old', 'new', 'both'], default='both',
                       help='which domain(s) to write (default: %(default)s)')
    _dataset_arguments(synth)
    synth.set_defaults(func=_make_synth_data)

    scores = commands.add_parser(
        'make-score-data', help="write the demo's real-music dataset (Bach chorales / Irish dance tunes, "
                                "rendered with FluidSynth), or render your own MIDI folder",
        description='Excerpts of MIDI scores rendered with FluidSynth and a General MIDI SoundFont, '
                    'captioned from the scores, in AudioCraft\'s layout (audiocraft_ext/data/score_dataset.py).')
    scores.add_argument('--domain', help='old, new or both (default) of the shipped score set; with '
                                         '--midi-dir, the name to write the folder under (default: midi)')
    scores.add_argument('--midi-dir', metavar='DIR',
                        help='render your own MIDI files (captions from DIR/captions.csv, else from each file)')
    scores.add_argument('--soundfont', metavar='SF2', help='General MIDI SoundFont (default: Debian\'s FluidR3_GM.sf2)')
    _dataset_arguments(scores)
    scores.set_defaults(func=_make_score_data)
    return parser


def _dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', required=True, help='dataset root directory')
    parser.add_argument('--clips', type=int, default=40,
                        help='clips per domain over all splits (default: %(default)s)')
    parser.add_argument('--duration', type=float, default=8.0, help='seconds per clip (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default: %(default)s)')
    parser.add_argument('--sample-rate', type=int, default=16000, help='sample rate in Hz (default: %(default)s)')
    for name, fraction in DEFAULT_SPLITS[1:]:
        parser.add_argument(f'--{name}', type=float, default=fraction, metavar='N',
                            help=f'{name} split: a fraction below 1 or a count of clips '
                                 f'(default: {fraction}); train gets the rest')


def main(argv: tp.Optional[tp.List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
