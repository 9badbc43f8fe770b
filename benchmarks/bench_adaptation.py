"""Adaptation without forgetting, measured: the extension against LoRA and full fine-tuning.

    python benchmarks/bench_adaptation.py                 # the full run (docs/BENCHMARKS.md)
    python benchmarks/bench_adaptation.py --quick         # tiny sizes, under a minute (the smoke test)

The pretrained tiny MusicGen (`audiocraft_ext.models.shipped`, or `--pretrained DIR`), trained on
the score set's old domain (Bach chorales), is adapted to its new one (Irish dance tunes) by every
method of `METHODS` (`adaptation_methods.py`), same data, same number of optimizer steps, a small
learning-rate grid each. The task is the demo's (`adaptation_task.py`: its data, the pretrained
codec's codes, the pretrained base, the base's own generations as replay). Protocol:

1. every (method, learning rate) with seed 0; the learning rate of each method is the one with
   the lowest new-domain *validation* cross entropy;
2. every method again with the other seeds at its learning rate;
3. each run is scored on the *held-out* clips of both domains at strengths alpha = 0 ... 1
   (`extension_scale` for the extension, weight interpolation base -> tuned for the others):
   gain = CE_base(new) - CE(new), forgetting = CE(old) - CE_base(old) (nats per token); and on the
   held-out part of the base's own generations (forgetting measured without old data);
4. the trade-off curve (forgetting, gain) of each method is read at forgetting 0.02 and 0.05: the
   largest gain on the piecewise-linear curve at or below that forgetting;
5. step time (CPU time of the process, one thread) and peak memory of every method, interleaved
   rounds in one process after the training runs, so machine load hits all alike.

Runs go to `--workers` processes (one torch thread each); finished runs are appended to
`<out>/bench_adaptation_runs.jsonl` and reused when the same run is asked again (`--fresh` to redo).
Writes `<out>/bench_adaptation.{txt,json}` and the plot (`--plot`, default
`<out>/bench_adaptation.png`; the documented one is docs/img/adaptation_tradeoff.png).
"""
import argparse
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
import json
import multiprocessing
import os
from pathlib import Path
import statistics
import sys
import time
import typing as tp

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_OUT, ensure_out, machine_description, median_and_spread, peak_step_bytes  # noqa: E402
import adaptation_task as task_lib  # noqa: E402
from adaptation_methods import Method, Trainer  # noqa: E402
from audiocraft_ext.io.cache_dirs import cache_dir  # noqa: E402
from audiocraft_ext.models.shipped import PRETRAINED_DIR  # noqa: E402

ALPHAS = (0.02, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)
LEVELS = (0.02, 0.05)
EXT_LRS = (1e-3, 3e-3, 1e-2)
LORA_LRS = (1e-3, 3e-3, 1e-2)
FULL_LRS = (3e-4, 1e-3, 3e-3)
# Ours with the forgetting control: generated replay, KL to the base's logits.
_CONTROL = dict(replay='generated', ratio=0.5, ce_weight=0.0, distill=1.0)

METHODS: tp.Tuple[Method, ...] = (
    Method('full', 'full', FULL_LRS, label='full fine-tuning'),
    Method('lora4', 'lora', LORA_LRS, rank=4, label='LoRA r4'),
    Method('lora16', 'lora', LORA_LRS, rank=16, label='LoRA r16'),
    Method('lora4+kl', 'lora', LORA_LRS, rank=4, **_CONTROL, label='LoRA r4 + replay(gen) + KL'),
    Method('lora16+kl', 'lora', LORA_LRS, rank=16, **_CONTROL, label='LoRA r16 + replay(gen) + KL'),
    Method('lora16+kl w10', 'lora', LORA_LRS, rank=16, **{**_CONTROL, 'distill': 10.0},
           label='LoRA r16 + replay(gen) + KL x10'),
    Method('ext-L/4', 'extension', EXT_LRS, new_layers=0.25, label='ext N=L/4'),
    Method('ext-L/2', 'extension', EXT_LRS, new_layers=0.5, label='ext N=L/2'),
    Method('ext-L', 'extension', EXT_LRS, new_layers=1.0, label='ext N=L'),
    Method('ext-L/4+ce', 'extension', EXT_LRS, new_layers=0.25, replay='generated', ratio=0.5, ce_weight=1.0,
           label='ext L/4 + replay(gen) CE'),
    Method('ext-L/4+kl', 'extension', EXT_LRS, new_layers=0.25, **_CONTROL, label='ext L/4 + replay(gen) + KL'),
    Method('ext-L/4+kl w3', 'extension', EXT_LRS, new_layers=0.25, **{**_CONTROL, 'distill': 3.0},
           label='ext L/4 + replay(gen) + KL x3'),
    Method('ext-L/4+kl r.25', 'extension', EXT_LRS, new_layers=0.25, **{**_CONTROL, 'ratio': 0.25},
           label='ext L/4 + replay(gen) 0.25 + KL'),
    Method('ext-L/4+old+kl', 'extension', EXT_LRS, new_layers=0.25, replay='old', ratio=0.5, ce_weight=1.0,
           distill=1.0, label='ext L/4 + replay(old data) CE + KL'),
    Method('ext-L/2+kl', 'extension', EXT_LRS, new_layers=0.5, **_CONTROL, label='ext L/2 + replay(gen) + KL'),
    Method('ext-L/2+kl w3', 'extension', EXT_LRS, new_layers=0.5, **{**_CONTROL, 'distill': 3.0},
           label='ext L/2 + replay(gen) + KL x3'),
    Method('ext-L/2+kl w10', 'extension', EXT_LRS, new_layers=0.5, **{**_CONTROL, 'distill': 10.0},
           label='ext L/2 + replay(gen) + KL x10'),
    Method('ext-L/2+kl w20', 'extension', EXT_LRS, new_layers=0.5, **{**_CONTROL, 'distill': 20.0},
           label='ext L/2 + replay(gen) + KL x20'),
    Method('ext-L/4 wide+kl', 'extension', EXT_LRS, new_layers=0.25, ffn_scale=2.0, **_CONTROL,
           label='ext L/4 FFN x2 + replay(gen) + KL'),
    Method('ext-L/4 mix+kl', 'extension+mix', EXT_LRS, new_layers=0.25, **_CONTROL,
           label='ext L/4 state mix + replay(gen) + KL'),
    Method('ext-L/4+kl warm0', 'extension', EXT_LRS, new_layers=0.25, warmup=0.0, **_CONTROL,
           label='ext L/4 + replay(gen) + KL, no warm-up'),
)
# Levers run at the learning rate chosen for another method (no grid of their own).
DERIVED = {'ext-L/4+kl x1.5 steps': ('ext-L/4+kl', dict(steps_scale=1.5, label='ext L/4 + replay(gen) + KL, 1.5x steps')),
           'ext-L/4+kl x2 steps': ('ext-L/4+kl', dict(steps_scale=2.0, label='ext L/4 + replay(gen) + KL, 2x steps')),
           'ext-L/4+kl cached': ('ext-L/4+kl', dict(cache_replay=True, label='ext L/4 + replay(gen) + KL, cached base'))}

# ------------------------------------------------------------------------------------------
# One run (in a worker process)

_TASK: tp.Optional[task_lib.Task] = None


def _init_worker(cache: str, pretrained: str, sizes: dict, threads: int) -> None:
    global _TASK
    torch.set_num_threads(threads)
    _TASK = task_lib.build_task(Path(cache), Path(pretrained), task_lib.TaskSizes(**sizes), log=lambda line: None)


def base_scores(task: task_lib.Task) -> tp.Dict[str, float]:
    lm = task.base_lm
    return {'new': task_lib.cross_entropy(lm, task.codes['new']['evaluate']),
            'old': task_lib.cross_entropy(lm, task.codes['old']['evaluate']),
            'generated': task_lib.cross_entropy(lm, task_lib.Codes(task.replay_heldout.codes, task.replay_heldout.prompts)),
            'valid_new': task_lib.cross_entropy(lm, task.codes['new']['valid'])}


def run_job(job: dict) -> dict:
    """Train one (method, lr, seed) and score it (see module doc)."""
    task = _TASK
    assert task is not None
    method = Method(**job['method'])
    steps = int(round(job['steps'] * method.steps_scale))
    start = time.process_time()
    trainer = Trainer(method, task, job['lr'], job['seed'], steps, job['batch_size'])
    losses = [trainer.step() for _ in range(steps)]
    train_cpu_s = time.process_time() - start
    adapted = trainer.adapted
    heldout = task_lib.Codes(task.replay_heldout.codes, task.replay_heldout.prompts)
    curve = {}
    for alpha in ALPHAS:
        adapted.set_strength(alpha)
        curve[alpha] = {'new': task_lib.cross_entropy(adapted.lm, task.codes['new']['evaluate']),
                        'old': task_lib.cross_entropy(adapted.lm, task.codes['old']['evaluate']),
                        'generated': task_lib.cross_entropy(adapted.lm, heldout)}
    valid = task_lib.cross_entropy(adapted.lm, task.codes['new']['valid'])  # alpha = 1
    return {**job, 'valid_new': valid, 'curve': {str(a): v for a, v in curve.items()}, 'train_cpu_s': train_cpu_s,
            'last_losses': losses[-10:], 'optimizer_steps': steps}


class InProcess:
    """`--workers 0`: the runs in this process, with the interface of the process pool used."""
    def __enter__(self) -> 'InProcess':
        return self

    def __exit__(self, *exc: tp.Any) -> None:
        pass

    def map(self, fn: tp.Callable, items: tp.Iterable) -> tp.Iterator:
        return map(fn, items)


def job_id(job: dict) -> str:
    """What makes a run; Method fields at their defaults are left out, so adding a field keeps old records."""
    defaults = asdict(Method('', '', ()))
    method = {k: v for k, v in job['method'].items() if k in ('name', 'family', 'lrs') or v != defaults.get(k)}
    return json.dumps({**{k: job[k] for k in ('task', 'lr', 'seed', 'steps', 'batch_size', 'alphas')},
                       'method': method}, sort_keys=True, default=list)


# ------------------------------------------------------------------------------------------
# Curves

def trade_off(run: dict, base: tp.Dict[str, float], reference: str = 'old') -> tp.List[tp.Tuple[float, float]]:
    """(forgetting, gain) at alpha = 0 and each of ALPHAS."""
    points = [(0.0, 0.0)]
    for alpha in ALPHAS:
        ce = run['curve'][str(alpha)]
        points.append((ce[reference] - base[reference], base['new'] - ce['new']))
    return points


def gain_at_forgetting(points: tp.Sequence[tp.Tuple[float, float]], level: float) -> float:
    """Largest gain on the piecewise-linear curve where forgetting <= level."""
    best = max((g for f, g in points if f <= level), default=0.0)
    for (f0, g0), (f1, g1) in zip(points, points[1:]):
        if min(f0, f1) <= level < max(f0, f1):
            best = max(best, g0 + (g1 - g0) * (level - f0) / (f1 - f0))
    return best


# ------------------------------------------------------------------------------------------
# Step cost

def measure_steps(task: task_lib.Task, methods: tp.Dict[str, Method], lrs: tp.Dict[str, float], steps: int,
                  batch_size: int, repeats: int, cache_warmup: int) -> tp.Dict[str, dict]:
    """Step CPU time (interleaved rounds), peak memory, trainable parameters of every method."""
    trainers = {name: Trainer(method, task, lrs[name], 0, steps, batch_size) for name, method in methods.items()}
    for trainer in trainers.values():  # warm-up (optimizer state allocated; replay feature caches filled)
        for _ in range(cache_warmup if trainer.method.cache_replay else 2):
            trainer.step()
        if trainer.method.cache_replay:
            trainer.feature_cache.take_counts()
    times: tp.Dict[str, tp.List[float]] = {name: [] for name in trainers}
    walls: tp.Dict[str, tp.List[float]] = {name: [] for name in trainers}
    ratios: tp.Dict[str, tp.List[float]] = {name: [] for name in trainers}
    for _ in range(repeats):
        round_times = {}
        for name, trainer in trainers.items():
            wall, cpu = time.perf_counter(), time.process_time()
            trainer.step()
            walls[name].append(time.perf_counter() - wall)
            round_times[name] = time.process_time() - cpu
            times[name].append(round_times[name])
        for name in trainers:
            ratios[name].append(round_times[name] / round_times['full'])
    out = {}
    for name, trainer in trainers.items():
        cpu, spread = median_and_spread(times[name])
        out[name] = {'cpu_s': cpu, 'spread': spread, 'wall_s': statistics.median(walls[name]),
                     'ratio_full': statistics.median(ratios[name]),
                     'ratio_range': [min(ratios[name]), max(ratios[name])],
                     'peak_bytes': trainer.resident_bytes() + peak_step_bytes(trainer.step, 'cpu'),
                     'trainable': sum(p.numel() for p in trainer.adapted.params)}
        if trainer.method.cache_replay:
            hits, misses = trainer.feature_cache.take_counts()
            out[name]['replay_cache_hits'] = hits / max(1, hits + misses)
    return out


# ------------------------------------------------------------------------------------------
# Main

def parse_args(argv: tp.Optional[tp.List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='tiny sizes, one learning rate, under a minute')
    parser.add_argument('--steps', type=int, help='optimizer steps per run (default 160; --quick 3)')
    parser.add_argument('--batch-size', type=int, help='new-domain examples per step (default 8; --quick 2)')
    parser.add_argument('--seeds', type=int, default=2, help='seeds per method (default: %(default)s)')
    parser.add_argument('--methods', help='comma-separated method names (default: all)')
    parser.add_argument('--workers', type=int, default=2,
                        help='training processes, 0: in this process (default: %(default)s)')
    parser.add_argument('--repeats', type=int, help='timing rounds (default 10; --quick 1)')
    parser.add_argument('--pretrained', metavar='DIR', default=str(PRETRAINED_DIR),
                        help='the pretrained codec and base LM, as scripts/make_pretrained.py writes them '
                             '(default: the ones shipped with the package)')
    parser.add_argument('--cache-dir', default=str(cache_dir('bench_adaptation')),
                        help='data, codes and replay set (default: %(default)s)')
    parser.add_argument('--out', default=str(DEFAULT_OUT))
    parser.add_argument('--plot', help='PNG of the trade-off curves (default: <out>/bench_adaptation.png)')
    parser.add_argument('--fresh', action='store_true', help='ignore runs recorded by earlier invocations')
    return parser.parse_args(argv)


def main(argv: tp.Optional[tp.List[str]] = None) -> dict:
    args = parse_args(argv)
    from adaptation_report import format_report, plot_curves
    sizes = task_lib.QUICK_TASK if args.quick else task_lib.TaskSizes()
    steps = args.steps or (3 if args.quick else 160)
    batch_size = args.batch_size or (2 if args.quick else 8)
    repeats = args.repeats or (1 if args.quick else 10)
    out = ensure_out(args.out)
    torch.set_num_threads(1)
    started = time.time()
    log = lambda line: print(line, flush=True)  # noqa: E731
    pretrained = Path(args.pretrained).expanduser().resolve()
    task = task_lib.build_task(Path(args.cache_dir), pretrained, sizes, log)
    methods = {m.name: m for m in METHODS}
    if args.methods:
        names = args.methods.split(',')
        unknown = sorted(set(names) - set(methods) - set(DERIVED))
        if unknown:
            raise SystemExit(f"Unknown methods {unknown}; choose among {list(methods) + list(DERIVED)}.")
        methods = {name: methods[name] for name in names if name in methods}
    if args.quick:
        methods = {name: replace(m, lrs=m.lrs[-1:]) for name, m in methods.items()}
    derived = {name: (source, changes) for name, (source, changes) in DERIVED.items()
               if source in methods and (not args.methods or name in args.methods.split(','))}
    base = base_scores(task)
    log(f"base: CE new {base['new']:.4f}, old {base['old']:.4f}, own generations {base['generated']:.4f}")

    record_path = out / 'bench_adaptation_runs.jsonl'
    records = {}
    if record_path.exists() and not args.fresh:
        for line in record_path.read_text().splitlines():
            record = json.loads(line)
            records[job_id(record)] = record
    common = {'task': task.key, 'steps': steps, 'batch_size': batch_size, 'alphas': list(ALPHAS)}
    if args.workers > 0:
        pool: tp.Any = ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context('spawn'),
                                           initializer=_init_worker,
                                           initargs=(args.cache_dir, str(pretrained), asdict(sizes), 1))
    else:  # in this process
        global _TASK
        _TASK = task
        pool = InProcess()
    with pool:
        def run_all(jobs: tp.List[dict]) -> tp.List[dict]:
            todo = [job for job in jobs if job_id(job) not in records]
            log(f"{len(jobs)} runs, {len(jobs) - len(todo)} recorded before, {len(todo)} to train "
                f"({args.workers} workers)")
            for done, result in enumerate(pool.map(run_job, todo)):
                records[job_id(result)] = result
                with open(record_path, 'a') as file:
                    file.write(json.dumps(result) + '\n')
                log(f"  [{done + 1}/{len(todo)}] {result['method']['name']} lr {result['lr']:g} seed {result['seed']}: "
                    f"valid {result['valid_new']:.4f} ({result['train_cpu_s']:.0f} s cpu, "
                    f"{(time.time() - started) / 60:.1f} min elapsed)")
            return [records[job_id(job)] for job in jobs]

        grid = run_all([{**common, 'method': asdict(m), 'lr': lr, 'seed': 0}
                        for m in methods.values() for lr in m.lrs])
        chosen = {}
        for name in methods:
            runs = [r for r in grid if r['method']['name'] == name]
            chosen[name] = min(runs, key=lambda r: r['valid_new'])['lr']
        all_methods = dict(methods)
        for name, (source, changes) in derived.items():
            all_methods[name] = replace(methods[source], name=name, lrs=(chosen[source],), **changes)
            chosen[name] = chosen[source]
        seeds = run_all([{**common, 'method': asdict(m), 'lr': chosen[name], 'seed': seed}
                         for name, m in all_methods.items() for seed in range(args.seeds)
                         if seed > 0 or name in derived])
    final = {name: [r for r in [*grid, *seeds] if r['method']['name'] == name and r['lr'] == chosen[name]]
             for name in all_methods}
    load = os.getloadavg()
    log(f"timing {len(all_methods)} methods, {repeats} interleaved rounds (load average {load[0]:.1f})")
    timing_methods = {name: m for name, m in all_methods.items()
                      if name not in derived or m.cache_replay}  # the other derived ones: the same step
    if 'full' not in timing_methods:
        timing_methods = {'full': Method('full', 'full', FULL_LRS), **timing_methods}
        chosen.setdefault('full', FULL_LRS[1])
    timing = measure_steps(task, timing_methods, chosen, steps, batch_size, repeats,
                           cache_warmup=10 if args.quick else 150)
    timing.update({name: timing[source] for name, (source, _) in derived.items() if name not in timing})
    results = summarise(final, base, chosen, grid, timing, all_methods)
    info = {'machine': machine_description('cpu'), 'load_before_timing': load, 'load_after': os.getloadavg(),
            'sizes': asdict(sizes), 'steps': steps, 'batch_size': batch_size, 'seeds': args.seeds,
            'workers': args.workers, 'repeats': repeats, 'base': base, 'base_model': task.base_info,
            'data': str(task.data), 'replay_set': {'train': len(task.replay), 'heldout': len(task.replay_heldout),
                           'prompts_file': str(task.prompts_file)},
            'wall_s': time.time() - started, 'command': 'python benchmarks/bench_adaptation.py ' + ' '.join(argv or sys.argv[1:])}
    report = {'info': info, 'methods': results}
    text = format_report(report)
    print(text)
    (out / 'bench_adaptation.txt').write_text(text + '\n')
    (out / 'bench_adaptation.json').write_text(json.dumps(report, indent=2) + '\n')
    plot_curves(report, Path(args.plot) if args.plot else out / 'bench_adaptation.png')
    return report


def summarise(final: tp.Dict[str, tp.List[dict]], base: dict, chosen: dict, grid: tp.List[dict],
              timing: dict, methods: tp.Dict[str, Method]) -> tp.Dict[str, dict]:
    results = {}
    for name, runs in final.items():
        curves = [trade_off(run, base) for run in runs]
        proxy = [trade_off(run, base, 'generated') for run in runs]
        per_seed = [{'seed': run['seed'], 'gain': curve[-1][1], 'forgetting': curve[-1][0],
                     'forgetting_generated': p[-1][0],
                     **{f'gain@{level}': gain_at_forgetting(curve, level) for level in LEVELS}}
                    for run, curve, p in zip(runs, curves, proxy)]
        mean = {key: statistics.mean(s[key] for s in per_seed) for key in per_seed[0] if key != 'seed'}
        results[name] = {'label': methods[name].label or name, 'method': asdict(methods[name]), 'lr': chosen[name],
                         'grid': {str(r['lr']): r['valid_new'] for r in grid if r['method']['name'] == name},
                         'seeds': per_seed, **mean, 'timing': timing.get(name),
                         'curve': [[statistics.mean(c[i][0] for c in curves), statistics.mean(c[i][1] for c in curves)]
                                   for i in range(len(curves[0]))]}
    return results


if __name__ == '__main__':
    main()
