"""Evaluate an extended MusicGen run: base and extended side by side (docs/EVALUATION.md).

    python -m audiocraft_ext.evaluate --config=solver/extended_musicgen sig=SIG [overrides...]
    python -m audiocraft_ext.evaluate checkpoint=/path/to/checkpoint.th [overrides...]

Like AudioCraft's `execute_only=evaluate continue_from=...`, through our own entry point
(`audiocraft_ext.train`'s main, unchanged): the experiment's best state is restored and only the
evaluate stage runs. Overrides are Hydra overrides on the experiment's config, e.g.
`evaluate.reference_dset=egs/old`, `'evaluate.scale_sweep=[0,0.5,1]'`, `device=cuda`,
`dora.dir=DIR`; they do not change the experiment.

- `sig=SIG`: the XP `<dora.dir>/xps/SIG` (its `checkpoint.th`, best state). The report goes to
  `<dora.dir>/xps/SIG/evaluation/` and the training history is not modified
  (`execute_inplace=true`).
- `checkpoint=PATH`: any checkpoint file of `ExtendedMusicGenSolver` (e.g. `checkpoint_25.th`).
  Its training config is used (with the overrides on top); the evaluation runs as a new XP
  with `continue_from=PATH` (as AudioCraft does), whose folder holds the report.

The report is `<xp folder>/evaluation/metrics.json`; a table is printed at the end. The listening
report, `<xp folder>/evaluation/report/report.html`, plays base and extended side by side.
"""
import json
import logging
import os
from pathlib import Path
import sys
import typing as tp

import omegaconf

from . import train
from .evaluation.listening import listening_page
from .evaluation.report_table import format_table
from .io.errors import CheckpointError
from .io.solver_checkpoints import read_solver_checkpoint

logger = logging.getLogger(__name__)

USAGE = ("usage: python -m audiocraft_ext.evaluate [--config=solver/NAME] (sig=SIG | checkpoint=PATH) "
         "[hydra overrides...]")
_EVAL_ARGS = ['execute_only=evaluate', 'execute_inplace=true']
_DEFAULTS = ['evaluate.compare_base=true']  # the report; the user's overrides come after


class EvaluationError(RuntimeError):
    pass


def _split_args(argv: tp.Sequence[str]) -> tp.Tuple[tp.Optional[str], tp.Optional[str], tp.List[str]]:
    sig = checkpoint = None
    rest: tp.List[str] = []
    for arg in train.expand_config_flags(argv):
        if arg.startswith('sig='):
            sig = arg[len('sig='):].strip()
            sig = sig[len('//sig/'):] if sig.startswith('//sig/') else sig
        elif arg.startswith('checkpoint='):
            checkpoint = arg[len('checkpoint='):].strip()
        else:
            rest.append(arg)
    return sig, checkpoint, rest


def _is_group_override(arg: str) -> bool:
    key = arg.split('=', 1)[0].lstrip('+~')
    return key in ('solver', 'dset', 'teams')


def _dora_main(overrides: tp.Sequence[str]) -> train.ExtMain:
    """The Dora main of `train`, with its experiments in the `dora.dir=DIR` override's folder if one is given."""
    dora_main = train.main
    for arg in overrides:
        if arg.startswith('dora.dir='):
            dora_main = train.main.with_dir(arg.split('=', 1)[1])
    return dora_main


def apply_overrides(cfg: omegaconf.DictConfig, overrides: tp.Sequence[str]) -> None:
    """Hydra-syntax `key=value` / `+key=value` overrides applied to an existing config in place."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    parsed = OverridesParser.create().parse_overrides([o for o in overrides if not _is_group_override(o)])
    with omegaconf.open_dict(cfg):
        for override in parsed:
            if override.is_delete():
                omegaconf.OmegaConf.update(cfg, override.key_or_group, None, force_add=True)
            else:
                omegaconf.OmegaConf.update(cfg, override.key_or_group, override.value(), merge=False,
                                           force_add=True)


def xp_for_sig(sig: str, overrides: tp.Sequence[str], dora_main: train.ExtMain):
    """The trained XP in `dora_main`'s folder, with its config recomposed from its argv plus the overrides."""
    argv_path = Path(dora_main.dora.dir) / 'xps' / sig / '.argv.json'
    if not argv_path.exists():
        raise EvaluationError(f"No experiment {sig!r} in {dora_main.dora.dir / 'xps'}: set dora.dir=... (or "
                              "AUDIOCRAFT_EXT_DORA_DIR) to the folder the run used.")
    xp = dora_main.get_xp_from_sig(sig)
    if not (xp.folder / 'checkpoint.th').exists():
        raise EvaluationError(f"{xp.folder} has no checkpoint.th yet: nothing to evaluate.")
    ours = [arg for arg in overrides if not _is_group_override(arg) and not arg.startswith('dora.')]
    ignored = [arg for arg in overrides if _is_group_override(arg)]
    if ignored:
        logger.info("Using the experiment's own config groups; ignoring %s", ignored)
    composed = dora_main.get_xp([*xp.argv, *_DEFAULTS, *ours, *_EVAL_ARGS])
    xp.cfg = composed.cfg
    return xp


def xp_for_checkpoint(path: str, overrides: tp.Sequence[str], dora_main: train.ExtMain):
    """A new XP (`continue_from=PATH`) in `dora_main`'s folder whose config is the checkpoint's training
    config + overrides."""
    from dora import git_save
    checkpoint = Path(git_save.to_absolute_path(str(Path(path).expanduser()))).resolve()
    if checkpoint.is_dir():
        checkpoint = checkpoint / 'checkpoint.th'
    try:
        pkg = read_solver_checkpoint(checkpoint)
    except (FileNotFoundError, CheckpointError) as error:
        raise EvaluationError(f"checkpoint={path}: {error}") from None
    ours = [arg for arg in overrides if not arg.startswith('dora.')]
    xp = dora_main.get_xp([*ours, f'continue_from={checkpoint}', *_EVAL_ARGS])
    cfg = xp.cfg
    trained = pkg.get('xp.cfg')
    if trained:
        trained = omegaconf.OmegaConf.create(trained)
        # `device`: this machine's (`device: auto` or the override), not the one the run trained on.
        for key in ('dora', 'continue_from', 'execute_only', 'execute_inplace', 'device'):
            trained.pop(key, None)
        # The base as the run resolved it (`//sig/...` depends on dora.dir; the path does not).
        trained.pretrained_model_checkpoint = pkg['base_model']['reference']
        omegaconf.OmegaConf.set_struct(cfg, False)  # keys the run set at runtime (e.g. from the base)
        cfg = omegaconf.OmegaConf.merge(cfg, trained)
        omegaconf.OmegaConf.set_struct(cfg, True)
    apply_overrides(cfg, [*_DEFAULTS, *ours, f'continue_from={checkpoint}', *_EVAL_ARGS])
    xp.cfg = cfg
    return xp


def run(argv: tp.Sequence[str]) -> dict:
    """Run the evaluation of `argv` (see module doc) in this process; returns the report."""
    sig, checkpoint, overrides = _split_args(argv)
    if bool(sig) == bool(checkpoint):
        raise EvaluationError(f"Give exactly one of sig=SIG or checkpoint=PATH.\n{USAGE}")
    dora_main = _dora_main(overrides)
    xp = xp_for_sig(sig, overrides, dora_main) if sig else xp_for_checkpoint(str(checkpoint), overrides, dora_main)
    train.run_xp(xp)
    output_dir = xp.cfg.evaluate.get('output_dir') or 'evaluation'
    metrics_path = xp.folder / output_dir / 'metrics.json'
    if not metrics_path.exists():
        raise EvaluationError(f"The evaluate stage wrote no {metrics_path} (evaluate.compare_base=false?).")
    report = json.loads(metrics_path.read_text())
    report['metrics_path'] = str(metrics_path)
    return report


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ('-h', '--help') for arg in argv):
        print(__doc__)
        return 0
    try:
        report = run(argv)
    except EvaluationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(report))
    print(f"\nreport: {report['metrics_path']}")
    page = listening_page(Path(report['metrics_path']).parent)
    if page.exists():
        print(f"listening report: {page} (open it in a browser)")
    return 0


if __name__ == '__main__':
    os.environ.setdefault('PYTHONWARNINGS', 'ignore')
    sys.exit(main())
