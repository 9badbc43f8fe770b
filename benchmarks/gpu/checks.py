"""Correctness checks of the CUDA paths, one step of `driver.py` each.

    python benchmarks/gpu/checks.py versions --json OUT.json
    python benchmarks/gpu/checks.py correctness --device cuda --json OUT.json [--tiny]
    python benchmarks/gpu/checks.py solver --device cuda --json OUT.json

versions      what runs: Python, torch, CUDA, the GPU, AudioCraft and its stack, and which modules
              are import-only stand-ins (`import_stubs/`)
correctness   on random MusicGen-shaped models:
              - exact start: an extended model with fresh new layers gives the base's logits bit
                for bit, with float32 weights and with float16 weights (as loaded on GPU);
              - extension_scale=0 under fp16 and bf16 autocast: the extended model (new layers
                perturbed) gives the base's logits under the same autocast, within
                AUTOCAST_TOLERANCE (both run the same base kernels; the new layers' branches are
                multiplied by 0); autocast vs float32 is recorded too;
              - frozen base stored in float16 under fp16 autocast: the same logits as the float32
                base holding the float16-rounded weights, within AUTOCAST_TOLERANCE;
              - streaming: logits computed one step at a time with the KV caches (as generation
                runs) equal the full-sequence logits within STREAMING_TOLERANCE, float32;
solver        ExtendedMusicGenSolver on the debug config, first epoch of 2 (train + valid; the
              generate stage, which writes audio through ffmpeg, comes at epoch 2), twice:
              autocast float16 with the GradScaler, and autocast bfloat16 with the frozen base
              stored in float16 (`extended_model.base_dtype=float16`). Each: losses finite, the new
              layers changed, the base equal to the tiny base it was built from.

Each writes {check: {'ok': bool, ...measurements}} to --json and prints it; exits 1 when a check fails.
"""
import argparse
import contextlib
import copy
import importlib
import json
import math
import os
from pathlib import Path
import platform
import shutil
import subprocess
import sys
import tempfile
import traceback
import typing as tp

import torch

# Max |logits - reference| allowed under autocast (logits of these models are O(1) to O(10); the
# two sides run identical base kernels, so they are expected to be bit-identical, 0.0).
AUTOCAST_TOLERANCE = 1e-3
# Max |streamed - full| in float32: per-step and full-sequence attention use different kernels.
STREAMING_TOLERANCE = 1e-4

# The GPU run's shapes for the correctness checks (training and generation use musicgen-small's).
SHAPES = dict(dim=1024, heads=16, layers=6, new_layers=3, card=2048, n_q=4, batch=2, frames=50)
TINY_SHAPES = dict(dim=32, heads=2, layers=2, new_layers=1, card=64, n_q=4, batch=2, frames=12)


# ---------------------------------------------------------------------------------------------
# versions

def module_version(name: str) -> str:
    """Version (and origin, for stand-ins) of an importable module, or why it cannot be imported."""
    try:
        module = importlib.import_module(name)
    except Exception as error:  # noqa: BLE001 - recorded, not raised: this is a report
        return f'not importable: {type(error).__name__}: {error}'
    if getattr(module, 'IMPORT_ONLY_STAND_IN', False):
        return 'import-only stand-in (benchmarks/gpu/import_stubs)'
    return str(getattr(module, '__version__', 'unknown version'))


def versions() -> tp.Dict[str, tp.Any]:
    info: tp.Dict[str, tp.Any] = {'ok': True, 'python': platform.python_version(), 'executable': sys.executable,
                                  'torch': torch.__version__, 'cuda': torch.version.cuda,
                                  'cuda_available': torch.cuda.is_available(),
                                  'cudnn': torch.backends.cudnn.version() if torch.cuda.is_available() else None,
                                  'cpu_count': os.cpu_count(), 'ffmpeg': shutil.which('ffmpeg')}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info['gpu'] = {'name': props.name, 'capability': f'{props.major}.{props.minor}',
                       'memory_gib': round(props.total_memory / 2 ** 30, 1),
                       'multiprocessors': props.multi_processor_count}
    if shutil.which('nvidia-smi'):
        query = ['nvidia-smi', '--query-gpu=name,driver_version,memory.total', '--format=csv,noheader']
        info['nvidia_smi'] = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip()
    for name in ('numpy', 'torchaudio', 'xformers', 'audiocraft', 'dora', 'flashy', 'hydra', 'omegaconf',
                 'julius', 'librosa', 'soundfile', 'transformers', 'av', 'spacy'):
        info[name] = module_version(name)
    # AudioCraft runs attention through torch (`efficient_attention_backend: torch`); it needs
    # xformers' Python parts only, whether or not xformers' own kernels load for this torch.
    import xformers
    from audiocraft.modules import transformer
    info['xformers_kernels_loaded'] = xformers._has_cpp_library
    info['audiocraft_attention_backend'] = transformer._efficient_attention_backend
    # What every step imports: a failure here names the missing piece before any model is built.
    for name in ('audiocraft.models', 'audiocraft.solvers.musicgen', 'audiocraft_ext.train',
                 'audiocraft_ext.solvers.extended_musicgen'):
        importlib.import_module(name)
    return {'versions': info}


# ---------------------------------------------------------------------------------------------
# correctness

def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over the positions valid in both (NaN marks the invalid ones of the pattern)."""
    valid = ~(a.isnan() | b.isnan())
    if not torch.equal(a.isnan(), b.isnan()):
        return math.inf
    return (a[valid].float() - b[valid].float()).abs().max().item() if valid.any() else 0.0


def perturb_extension(lm, seed: int = 1, std: float = 0.05) -> None:
    """Noise on every new parameter, so that the new layers change the logits (tests/conftest.py's)."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for parameter in lm.extension.parameters():
            parameter.add_(torch.randn(parameter.shape, dtype=parameter.dtype).to(parameter.device) * std)


@torch.no_grad()
def logits(lm, codes: torch.Tensor, conditions: tp.Dict[str, tp.Any],
           autocast: tp.Optional[torch.dtype] = None) -> torch.Tensor:
    """`compute_predictions` logits [B, K, S, card] in eval mode, under `autocast` if given."""
    lm.eval()
    context = torch.autocast(codes.device.type, dtype=autocast) if autocast else contextlib.nullcontext()
    with context:
        return lm.compute_predictions(codes, [], condition_tensors=conditions).logits.float()


def correctness(device: str, shapes: tp.Dict[str, int]) -> tp.Dict[str, tp.Any]:
    from audiocraft.modules.conditioners import ConditioningAttributes
    from audiocraft_ext.models.extended_lm import ExtendedLMModel
    from audiocraft_ext.models.tiny import build_tiny_musicgen

    torch.manual_seed(0)
    base = build_tiny_musicgen('text', seed=0, dim=shapes['dim'], num_layers=shapes['layers'],
                               num_heads=shapes['heads'], card=shapes['card'], n_q=shapes['n_q']).lm.to(device)
    base.eval()
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, shapes['card'], (shapes['batch'], shapes['n_q'], shapes['frames']),
                          generator=generator).to(device)
    attributes = [ConditioningAttributes(text={'description': f'prompt {i}'}) for i in range(shapes['batch'])]
    with torch.no_grad():
        conditions = base.condition_provider(base.condition_provider.tokenize(attributes))
    results: tp.Dict[str, tp.Any] = {}

    # Exact start, float32.
    reference = logits(base, codes, conditions)
    extended = ExtendedLMModel(copy.deepcopy(base), shapes['new_layers']).to(device)
    got = logits(extended, codes, conditions)
    results['exact_start_float32'] = {'ok': torch.equal(got.nan_to_num(), reference.nan_to_num()),
                                      'max_abs_diff': max_difference(got, reference)}

    # Exact start with float16 weights, as AudioCraft's loaders (and ours) load MusicGen on GPU.
    half_weights = copy.deepcopy(base).half()
    with torch.no_grad():
        half_conditions = half_weights.condition_provider(half_weights.condition_provider.tokenize(attributes))
    reference16 = logits(half_weights, codes, half_conditions)
    got16 = logits(ExtendedLMModel(copy.deepcopy(half_weights), shapes['new_layers']).to(device),
                   codes, half_conditions)
    results['exact_start_float16_weights'] = {'ok': torch.equal(got16.nan_to_num(), reference16.nan_to_num()),
                                              'max_abs_diff': max_difference(got16, reference16)}
    del half_weights

    # extension_scale = 0 under autocast: the base's logits under the same autocast.
    perturb_extension(extended)
    for dtype in (torch.float16, torch.bfloat16):
        name = str(dtype).replace('torch.', '')
        base_logits = logits(base, codes, conditions, dtype)
        extended.extension_scale = 0.0
        scaled_off = logits(extended, codes, conditions, dtype)
        extended.extension_scale = 1.0
        scaled_on = logits(extended, codes, conditions, dtype)
        diff = max_difference(scaled_off, base_logits)
        effect = max_difference(scaled_on, base_logits)  # the perturbation must show, or nothing is tested
        results[f'extension_scale_0_{name}_autocast'] = {
            'ok': diff <= AUTOCAST_TOLERANCE and effect > 10 * AUTOCAST_TOLERANCE,
            'max_abs_diff': diff, 'tolerance': AUTOCAST_TOLERANCE, 'bit_identical': diff == 0.0,
            'scale_1_vs_base': effect, 'autocast_vs_float32': max_difference(base_logits, reference)}

    # Frozen base stored in float16, fp16 autocast: same as float32 weights rounded to float16.
    half = ExtendedLMModel(copy.deepcopy(base), shapes['new_layers']).to(device)
    perturb_extension(half)
    rounded = copy.deepcopy(half)
    with torch.no_grad():
        for param in rounded.base_transformer.parameters():
            param.copy_(param.half().float())
    half.store_base_in(torch.float16)
    stored = {p.dtype for p in half.base_transformer.layers.parameters()}
    diff = max_difference(logits(half, codes, conditions, torch.float16),
                          logits(rounded, codes, conditions, torch.float16))
    results['float16_base_fp16_autocast'] = {'ok': diff <= AUTOCAST_TOLERANCE and stored == {torch.float16},
                                             'max_abs_diff': diff, 'tolerance': AUTOCAST_TOLERANCE,
                                             'stored_dtypes': sorted(str(d) for d in stored)}

    # Streaming (generation's path) vs full sequence, float32, new layers perturbed.
    with torch.no_grad():
        full = extended(codes, [], condition_tensors=conditions)
        steps = []
        with extended.streaming():
            for t in range(codes.shape[-1]):
                steps.append(extended(codes[..., t:t + 1], [], condition_tensors=conditions))
        streamed = torch.cat(steps, dim=2)
    diff = max_difference(streamed, full)
    results['streaming_vs_full_float32'] = {'ok': diff <= STREAMING_TOLERANCE, 'max_abs_diff': diff,
                                            'tolerance': STREAMING_TOLERANCE, 'steps': codes.shape[-1]}
    results['shapes'] = dict(shapes)
    return results


# ---------------------------------------------------------------------------------------------
# solver

# Two runs of the debug config: float16 autocast with the GradScaler (AudioCraft's MusicGen
# default), and bfloat16 autocast (ours) with the frozen base stored in float16.
SOLVER_RUNS = {
    'float16_autocast_grad_scaler': ['autocast_dtype=float16'],
    'bfloat16_autocast_float16_base': ['autocast_dtype=bfloat16', 'extended_model.base_dtype=float16'],
}


def debug_dataset(root: Path) -> Path:
    """The debug config's synthetic tones, prepared as for `egs_root=`, as FLAC.

    AudioCraft reads WAV through PyAV, which the GPU machine lacks (import_stubs/); FLAC goes
    through soundfile.
    """
    import soundfile
    from audiocraft_ext.data.prepare import prepare_data
    from audiocraft_ext.data.synth_dataset import write_tone_folder
    audio = root / 'audio'
    for path in write_tone_folder(audio, num_files=8, duration=1.5):
        wav, sample_rate = soundfile.read(str(path), dtype='float32')
        soundfile.write(str(path.with_suffix('.flac')), wav, sample_rate)
        path.unlink()
    captions = audio / 'captions.csv'
    captions.write_text(captions.read_text().replace('.wav,', '.flac,'))
    prepare_data(audio, root / 'egs', captions=captions)
    return root / 'egs'


def solver_run(egs: Path, device: str, overrides: tp.List[str], updates: int) -> tp.Dict[str, tp.Any]:
    """First epoch of a debug run (as `python -m audiocraft_ext.train` runs it, in-process)."""
    from audiocraft_ext import train
    from audiocraft_ext.models.tiny import build_tiny_musicgen
    argv = ['solver=extended_musicgen_debug', f'egs_root={egs}', f'device={device}', 'autocast=true',
            f'optim.updates_per_epoch={updates}', *overrides]
    xp = train.main.get_xp(argv)
    train.main.init_xp(xp)
    with xp.enter():
        train.init_seed_and_system(xp.cfg)
        solver = train.get_solver(xp.cfg)
        before = {key: value.detach().clone() for key, value in solver.model.extension_state_dict().items()}
        solver.restore(replay_metrics=True)
        solver.run_epoch()  # epoch 1 of 2: train + valid (evaluate and generate: every 2 epochs)
        solver.commit()
    metrics = solver.history[-1]
    train_ce, valid_ce = metrics['train']['ce'], metrics['valid']['ce']
    after = solver.model.extension_state_dict()
    changed = sum(not torch.equal(after[key], before[key]) for key in before)
    fresh = build_tiny_musicgen('text', seed=0).lm.state_dict()
    base = solver.model.base_state_dict()
    base_equal = all(torch.equal(value.cpu(), fresh[key].to(value.dtype)) for key, value in base.items())
    stored = sorted({str(p.dtype) for p in solver.model.base_transformer.parameters()})
    # float16 autocast needs the GradScaler, enabled on CUDA (torch disables it without CUDA).
    scaler_enabled = solver.scaler is not None and solver.scaler.is_enabled()
    scaler_ok = solver.autocast_dtype is not torch.float16 or scaler_enabled or not device.startswith('cuda')
    return {'ok': math.isfinite(train_ce) and math.isfinite(valid_ce) and changed > 0 and base_equal and scaler_ok,
            'overrides': argv, 'train_ce': train_ce, 'valid_ce': valid_ce,
            'grad_scale': metrics['train'].get('grad_scale'), 'skipped_steps': solver._skipped_steps,
            'scaler_enabled': scaler_enabled,
            'new_tensors_changed': f'{changed} of {len(before)}', 'base_unchanged': base_equal,
            'base_stored_as': stored}


def solver(device: str, updates: int) -> tp.Dict[str, tp.Any]:
    from audiocraft_ext import train
    results: tp.Dict[str, tp.Any] = {}
    dora_dir = train.main.dora.dir
    with tempfile.TemporaryDirectory() as tmp:
        train.main.dora.dir = Path(tmp) / 'dora'
        try:
            egs = debug_dataset(Path(tmp))
            for name, overrides in SOLVER_RUNS.items():
                try:
                    results[name] = solver_run(egs, device, overrides, updates)
                except Exception as error:  # noqa: BLE001 - the other run still runs, the failure is recorded
                    results[name] = {'ok': False, 'error': f'{type(error).__name__}: {error}'}
                    traceback.print_exc()
        finally:
            train.main.dora.dir = dora_dir
    return results


# ---------------------------------------------------------------------------------------------

def parse_args(argv: tp.Optional[tp.List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('check', choices=['versions', 'correctness', 'solver'])
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--json', required=True, help='where to write the results')
    parser.add_argument('--tiny', action='store_true', help='tiny shapes (the CPU dry run)')
    parser.add_argument('--updates', type=int, default=8,
                        help='solver: training updates of the epoch (the GradScaler skips its first '
                             'steps while it lowers its scale)')
    return parser.parse_args(argv)


def main(argv: tp.Optional[tp.List[str]] = None) -> int:
    args = parse_args(argv)
    if args.check == 'versions':
        results = versions()
    elif args.check == 'correctness':
        results = correctness(args.device, TINY_SHAPES if args.tiny else SHAPES)
    else:
        results = solver(args.device, args.updates)
    text = json.dumps(results, indent=1, default=str)
    print(text)
    path = Path(args.json)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)
    return 0 if all(entry.get('ok', True) for entry in results.values()) else 1


if __name__ == '__main__':
    sys.exit(main())
