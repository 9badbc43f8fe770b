"""The demo's runs: the training runs in this process through the Dora main of
`python -m audiocraft_ext.train`, the commands users type in subprocesses, and their overrides."""
import argparse
import json
import os
from pathlib import Path
import subprocess
import sys
import time
import typing as tp

import hydra

from .. import train
from .arguments import Sizes
from .artefacts import REPLAY_PROMPTS
from .progress import CondensedLog, Steps, condensed_stderr


def run_logged(argv: tp.List[str], log_path: Path) -> Path:
    """What `python -m audiocraft_ext.train *argv` does, in this process, its log condensed into
    `log_path`; returns the XP folder.

    Same Dora main, same Hydra composition, same `main(cfg)` with its logging (`train.run_xp`;
    `train.run_in_process` skips that logging, which the demo shows); only the interpreter (and
    its half-minute AudioCraft import) is shared with the demo.
    """
    xp = train.main.get_xp(train.expand_config_flags(argv))
    with condensed_stderr(log_path):
        train.run_xp(xp)
    return Path(xp.folder)


def xp_folder(argv: tp.List[str]) -> Path:
    """The XP folder `python -m audiocraft_ext.train *argv` will use (its Dora signature)."""
    try:
        return Path(train.main.get_xp(train.expand_config_flags(argv)).folder)
    finally:
        hydra.core.global_hydra.GlobalHydra.instance().clear()


def run_subprocess(module: str, argv: tp.List[str], log_path: Path, steps: Steps) -> tp.Dict[str, float]:
    """`python -m module *argv`, output to `log_path`, progress lines echoed; returns timings."""
    command = [sys.executable, '-m', module, *argv]
    steps.print('      $ ' + ' '.join(_quote(part) for part in ['python', '-m', module, *argv]))
    env = dict(os.environ, PYTHONWARNINGS='ignore', PYTHONUNBUFFERED='1')
    start = time.monotonic()
    first_progress: tp.Optional[float] = None
    with open(log_path, 'a', encoding='utf-8') as log_file:
        stream = CondensedLog(log_file)
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=env, bufsize=1)
        assert process.stdout is not None
        for line in process.stdout:
            if first_progress is None and '| Epoch' in line:
                first_progress = time.monotonic()
            stream.write(line)
        code = process.wait()
    end = time.monotonic()
    if code != 0:
        tail = log_path.read_text(encoding='utf-8', errors='replace').splitlines()[-30:]
        raise RuntimeError(f"python -m {module} failed (exit code {code}); last lines of {log_path}:\n"
                           + '\n'.join(tail))
    return {'wall_s': end - start, 'work_s': end - (first_progress or start)}


def _quote(part: str) -> str:
    return part if all(c.isalnum() or c in '-_=./:,' for c in part) else repr(part)


def read_history(folder: Path) -> tp.List[dict]:
    path = folder / 'history.json'
    return json.loads(path.read_text()) if path.exists() else []


def common_overrides(args: argparse.Namespace, sizes: Sizes) -> tp.List[str]:
    return [f'device={args.device}', 'autocast=false', f'num_threads={args.threads}', f'seed={args.seed}',
            f'dataset.batch_size={sizes.batch_size}', 'dataset.num_workers=0']


def extension_run_argv(base: str, data: Path, dora_dir: Path, sizes: Sizes, args: argparse.Namespace) -> tp.List[str]:
    """The overrides of `python -m audiocraft_ext.train` for the extension run (small CPU sizes; the forgetting
    control's defaults, its replay set kept in the demo's cache, from the captions the base was trained on)."""
    return ['--config=solver/extended_musicgen', f'pretrained_model_checkpoint={base}', 'dset=audio/egs',
            f'replay.cache_dir={Path(args.cache_dir).expanduser().resolve() / "replay"}',
            f'replay.prompts={data / REPLAY_PROMPTS}',
            f'egs_root={data / "egs" / "new"}', f'dora.dir={dora_dir}', *common_overrides(args, sizes),
            f'extended_model.num_additional_layers={sizes.new_layers}',
            f'dataset.segment_duration={sizes.segment}', 'dataset.min_segment_ratio=0.8',
            'dataset.sample_on_weight=false', 'dataset.sample_on_duration=false',
            'dataset.train.num_samples=256', 'dataset.train.merge_text_p=0', 'dataset.train.drop_desc_p=0',
            'dataset.train.drop_other_p=0', 'dataset.valid.num_samples=16', 'dataset.evaluate.num_samples=16',
            'dataset.generate.num_samples=2', f'optim.epochs={sizes.extension_epochs}',
            f'optim.updates_per_epoch={sizes.extension_updates}', f'optim.lr={sizes.extension_lr}',
            'schedule.lr_scheduler=null', 'generate.every=1000', 'evaluate.every=1000',
            'evaluate.compare_base=false',  # the report is step 6's (python -m audiocraft_ext.evaluate)
            'generate.audio.strategy=peak', 'generate.lm.prompted_samples=false',
            f'generate.lm.gen_duration={sizes.segment / 2:g}', 'checkpoint.save_every=null',
            'logging.log_updates=5']


def run_evaluate(xp: Path, dora_dir: Path, data: Path, log_path: Path, steps: Steps) -> dict:
    """`python -m audiocraft_ext.evaluate` on the run; returns its metrics.json."""
    argv = ['--config=solver/extended_musicgen', f'sig={xp.name}', f'dora.dir={dora_dir}',
            f'evaluate.reference_dset={data / "egs" / "old" / "evaluate"}',
            'evaluate.audio_metrics=false',  # generation-based metrics: minutes on a CPU; the demo's clips are step 5's
            'evaluate.samples=false']
    run_subprocess('audiocraft_ext.evaluate', argv, log_path, steps)
    metrics_path = xp / 'evaluation' / 'metrics.json'
    metrics = json.loads(metrics_path.read_text())
    metrics['_path'] = str(metrics_path)
    return metrics
