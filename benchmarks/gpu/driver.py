"""The GPU run: every step bounded in time, printed as it goes, all results in one JSON.

    python benchmarks/gpu/driver.py --out DIR                 # on the GPU machine (run_gpu.sh calls it)
    python benchmarks/gpu/driver.py --out DIR --dry-run-cpu   # tiny shapes on CPU: catches typos

Each step runs in a subprocess with its own time limit (a hang, a crash or an out-of-memory
error ends that step only); the driver records its status ('ok', 'failed', 'timeout'), its time
and what it measured, rewrites DIR/gpu_results.json after every step, and goes on with the next.
The limits add up to at most --budget seconds (default 480: the run fits in 8 minutes); a step
gets what is left when less is. Steps, in order:

    versions      Python, torch, CUDA, GPU, the packages (checks.py versions)
    correctness   exact start, extension_scale=0 under fp16/bf16 autocast, float16 base, streaming
    solver        debug-config solver runs: fp16 autocast + GradScaler; bf16 + float16 base
    training_b8   bench_training.py --device cuda at musicgen-small shapes, batch 8
    generation    bench_generation.py --device cuda at musicgen-small shapes
    training_b1   bench_training.py --device cuda at musicgen-small shapes, batch 1

DIR receives gpu_results.json; the benchmarks' own text reports are printed, and run_gpu.sh
keeps everything printed in DIR/gpu_run.log.
"""
import argparse
import json
import os
from pathlib import Path
import subprocess
import sys
import tempfile
import threading
import time
import typing as tp

HERE = Path(__file__).resolve().parent
BENCHMARKS = HERE.parent
RESULTS = 'gpu_results.json'

# musicgen-small's LM shapes (bench_training's preset), for the generation benchmark too.
SMALL = ['--dim', '1024', '--layers', '24', '--heads', '16', '--new-layers', '12', '--card', '2048']
TINY = ['--dim', '32', '--layers', '2', '--heads', '2', '--new-layers', '1', '--card', '64']
DRY_RUN_SLACK = 4  # --dry-run-cpu: limits and budget times this (imports alone take 10 s on a busy CPU)


class Step(tp.NamedTuple):
    name: str
    argv: tp.List[str]          # run with this Python; {tmp} is replaced by the step's scratch folder
    limit: float                # seconds
    results: tp.Optional[str]   # JSON file the step writes in {tmp}, loaded into the results


def steps(dry_run_cpu: bool) -> tp.List[Step]:
    """The run's steps: musicgen-small shapes on CUDA, or tiny shapes on CPU (--dry-run-cpu)."""
    device = 'cpu' if dry_run_cpu else 'cuda'
    checks = [str(HERE / 'checks.py')]
    training = [str(BENCHMARKS / 'bench_training.py'), '--device', device, '--out', '{tmp}']
    generation = [str(BENCHMARKS / 'bench_generation.py'), '--device', device, '--out', '{tmp}']
    if dry_run_cpu:
        shapes, slack = ['--tiny'], DRY_RUN_SLACK
        training += TINY + ['--steps', '8', '--repeats', '1', '--cache-warmup', '2']
        batches = {'training_b8': ['--batch', '2'], 'training_b1': ['--batch', '1']}
        generation += TINY + ['--dtype', 'float16', '--duration', '0.2', '--repeats', '1', '--batch', '1']
    else:
        shapes, slack = [], 1
        training += ['--preset', 'musicgen-small', '--repeats', '6']
        batches = {'training_b8': ['--batch', '8'], 'training_b1': ['--batch', '1']}
        generation += SMALL + ['--dtype', 'float16', '--duration', '3', '--repeats', '3', '--batch', '2']
    return [
        Step('versions', checks + ['versions', '--json', '{tmp}/out.json'], 30 * slack, 'out.json'),
        Step('correctness', checks + ['correctness', '--device', device, '--json', '{tmp}/out.json'] + shapes,
             60 * slack, 'out.json'),
        Step('solver', checks + ['solver', '--device', device, '--json', '{tmp}/out.json'], 80 * slack, 'out.json'),
        Step('training_b8', training + batches['training_b8'], 150 * slack, 'bench_training.json'),
        Step('generation', generation, 90 * slack, 'bench_generation.json'),
        Step('training_b1', training + batches['training_b1'], 70 * slack, 'bench_training.json'),
    ]


def pump(stream: tp.IO[str], prefix: str) -> None:
    """Print a child's output line by line as it comes, prefixed with its step."""
    for line in stream:
        print(f'[{prefix}] {line}', end='', flush=True)


def run_step(step: Step, limit: float, env: tp.Dict[str, str]) -> tp.Dict[str, tp.Any]:
    """Run one step in its own process group, killed after `limit` seconds; never raises."""
    record: tp.Dict[str, tp.Any] = {'limit_s': round(limit, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable] + [arg.replace('{tmp}', tmp) for arg in step.argv]
        record['command'] = ' '.join(arg.replace(tmp, '$TMP') for arg in argv)
        print(f'\n=== {step.name} (at most {limit:.0f} s): {record["command"]}', flush=True)
        start = time.perf_counter()
        try:
            process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       env=env, start_new_session=True)
        except OSError as error:
            return dict(record, status='failed', error=f'{type(error).__name__}: {error}', seconds=0.0)
        reader = threading.Thread(target=pump, args=(process.stdout, step.name), daemon=True)
        reader.start()
        try:
            record['rc'] = process.wait(timeout=limit)
            record['status'] = 'ok' if record['rc'] == 0 else 'failed'
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)  # the whole group: DataLoader workers and the like too
            record['rc'] = process.wait()
            record['status'] = 'timeout'
        reader.join(timeout=10)
        record['seconds'] = round(time.perf_counter() - start, 1)
        results = Path(tmp) / step.results if step.results else None
        if results is not None and results.exists():
            try:
                record['results'] = json.loads(results.read_text())
            except ValueError as error:
                record['results_error'] = f'unreadable {results.name}: {error}'
    print(f'=== {step.name}: {record["status"]} (rc {record["rc"]}) in {record["seconds"]} s', flush=True)
    return record


def write_json(path: Path, data: tp.Any) -> None:
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def parse_args(argv: tp.Optional[tp.List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', required=True, help=f'folder for {RESULTS}')
    parser.add_argument('--dry-run-cpu', action='store_true', help='tiny shapes on CPU')
    parser.add_argument('--only', nargs='+', metavar='STEP', help='run these steps only (a rerun)')
    parser.add_argument('--budget', type=float,
                        help='seconds for all steps together (default 480; --dry-run-cpu: 4x, and 4x '
                             'each step\'s limit, for a slow shared CPU)')
    args = parser.parse_args(argv)
    if args.budget is None:
        args.budget = 480.0 * (DRY_RUN_SLACK if args.dry_run_cpu else 1)
    return args


def main(argv: tp.Optional[tp.List[str]] = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plan = steps(args.dry_run_cpu)
    unknown = set(args.only or []) - {step.name for step in plan}
    if unknown:
        raise SystemExit(f"Unknown step(s) {sorted(unknown)}: choose from {[step.name for step in plan]}.")
    plan = [step for step in plan if not args.only or step.name in args.only]
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    # The benchmarks import `common` from their folder, the checks `audiocraft_ext` from the repository.
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(BENCHMARKS.parent), str(BENCHMARKS),
                                                      env.get('PYTHONPATH')]))
    results: tp.Dict[str, tp.Any] = {'dry_run_cpu': args.dry_run_cpu, 'budget_s': args.budget, 'steps': {}}
    deadline = time.perf_counter() + args.budget
    for step in plan:
        left = deadline - time.perf_counter()
        if left < 5:
            results['steps'][step.name] = {'status': 'skipped', 'error': 'no time left in the budget'}
            print(f'=== {step.name}: skipped, no time left', flush=True)
        else:
            results['steps'][step.name] = run_step(step, min(step.limit, left), env)
        write_json(out / RESULTS, results)
    failed = [name for name, record in results['steps'].items() if record['status'] != 'ok']
    print(f'\n=== done: {len(plan) - len(failed)} of {len(plan)} steps ok'
          + (f'; not ok: {", ".join(failed)}' if failed else '') + f'; results in {out / RESULTS}', flush=True)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
