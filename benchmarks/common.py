"""Helpers shared by the benchmarks: models, one training step as MusicGenSolver runs it, timing,
memory and FLOP measurement, machine description.

A benchmark measures the variants it compares in the same process, on the same base, and
alternates them (round r runs every variant once) so that the noise of a shared machine hits
them alike; it reports medians and the spread of the repeats.
"""
import copy
from contextlib import nullcontext
import json
import os
from pathlib import Path
import platform
import statistics
import tempfile
import time
import typing as tp

from omegaconf import OmegaConf
import torch
from torch import nn

from audiocraft.models.lm import LMModel
from audiocraft.modules.conditioners import ConditioningAttributes
from audiocraft.solvers import builders
from audiocraft.solvers.musicgen import MusicGenSolver

from audiocraft_ext.models.extended_lm import ExtendedLMModel
from audiocraft_ext.models.tiny import build_tiny_musicgen

DEFAULT_OUT = Path(__file__).resolve().parent / 'out'

# `optim` of AudioCraft's solver/musicgen/default.yaml (and of solver/extended_musicgen.yaml).
OPTIM_CFG = OmegaConf.create({'optimizer': 'adamw', 'lr': 1e-4, 'max_norm': 1.0,
                              'adam': {'betas': [0.9, 0.95], 'weight_decay': 0.1, 'eps': 1e-8}})


# ---------------------------------------------------------------------------------------------
# Machine and timing

def machine_description(device: str) -> str:
    cpu = platform.processor() or 'unknown CPU'
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    text = (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"python {platform.python_version()}")
    if device.startswith('cuda'):
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def ensure_out(path: tp.Union[str, Path]) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_results(path: tp.Union[str, Path], name: str, results: tp.Any, text: str) -> Path:
    """`<path>/<name>.json` (every measurement) and `<path>/<name>.txt` (the printed report); the folder."""
    out = ensure_out(path)
    (out / f'{name}.json').write_text(json.dumps(results, indent=1))
    (out / f'{name}.txt').write_text(text + '\n')
    return out


def synchronize(device: tp.Union[str, torch.device]) -> None:
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


def timed(fn: tp.Callable[[], tp.Any], device: tp.Union[str, torch.device]) -> tp.Tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call of `fn`.

    On a CPU shared with other jobs the process CPU time is the steadier of the two: time spent
    waiting for a core is not counted. On a GPU only the wall time means anything.
    """
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def median_and_spread(values: tp.Sequence[float]) -> tp.Tuple[float, float]:
    """Median and relative spread ((max - min) / median) of repeated measurements."""
    median = statistics.median(values)
    return median, (max(values) - min(values)) / median if median else 0.0


def run_alternating(steps: tp.Dict[str, tp.Callable[[], tp.Any]], repeats: int, device: str,
                    warmup: int = 1) -> tp.Dict[str, tp.Dict[str, tp.List[float]]]:
    """Time every step `repeats` times, alternating them; returns {name: {'wall': [...], 'cpu': [...]}}."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times: tp.Dict[str, tp.Dict[str, tp.List[float]]] = {name: {'wall': [], 'cpu': []} for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            wall, cpu = timed(fn, device)
            times[name]['wall'].append(wall)
            times[name]['cpu'].append(cpu)
    return times


def generate_tokens(model, prompts: tp.List[str], duration: float) -> None:
    """Generate `duration` seconds of tokens for `prompts` (MusicGen.generate without decoding)."""
    model.set_generation_params(duration=duration, top_k=50)
    attributes, _ = model._prepare_tokens_and_attributes(prompts, None)
    model._generate_tokens(attributes, None, progress=False)


def tokens_per_second(model, prompts: tp.List[str], duration: float) -> float:
    """Generated tokens (time steps x batch) per second of wall time, no decoding."""
    steps = int(duration * model.frame_rate)
    wall, _ = timed(lambda: generate_tokens(model, prompts, duration), model.device)
    return len(prompts) * steps / wall


# ---------------------------------------------------------------------------------------------
# Models

def build_base(dim: int, layers: int, heads: int, card: int, n_q: int, device: str, seed: int = 0):
    """A random MusicGen-shaped base (text conditioning by cross-attention, like musicgen-small)."""
    from audiocraft_ext.models.bases import assemble_musicgen
    cpu_base = build_tiny_musicgen('text', seed=seed, dim=dim, num_layers=layers, num_heads=heads,
                                   card=card, n_q=n_q)
    return assemble_musicgen('base', cpu_base.compression_model.to(device), cpu_base.lm.to(device))


def full_finetuning_lm(base_lm: LMModel) -> LMModel:
    """A copy of the base LM with every parameter trainable, as MusicGenSolver fine-tunes it."""
    lm = copy.deepcopy(base_lm)
    lm.requires_grad_(True)
    return lm.train()


def extended_lm(base_lm: LMModel, num_additional_layers: int) -> ExtendedLMModel:
    """Frozen copy of the base with N new layers (the base given is left trainable)."""
    return ExtendedLMModel(copy.deepcopy(base_lm), num_additional_layers).train()


class PrecomputedFeatures(nn.Module):
    """Stands in for the frozen base transformer and returns stored outputs (a feature cache hit).

    `LMModel.forward` still embeds the codes and fuses the conditions; only the base layers are
    skipped. This is the cost of a training step with a cache of frozen-base features.
    """
    def __init__(self, features: torch.Tensor):
        super().__init__()
        self.features = features  # [B, S, D]

    def forward(self, x: torch.Tensor, *args: tp.Any, **kwargs: tp.Any) -> torch.Tensor:
        assert x.shape == self.features.shape, (x.shape, self.features.shape)
        return self.features


# ---------------------------------------------------------------------------------------------
# One training step

class Batch(tp.NamedTuple):
    codes: torch.Tensor  # [B, K, S]
    descriptions: tp.List[str]


def random_batch(batch: int, n_q: int, steps: int, card: int, device: str, seed: int = 0) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, card, (batch, n_q, steps), generator=generator).to(device)
    return Batch(codes, [f'random prompt {i}' for i in range(batch)])


def autocast_context(device: str) -> tp.Any:
    """fp16 autocast on CUDA, as MusicGenSolver (solver/musicgen/default.yaml: autocast_dtype float16)."""
    if torch.device(device).type == 'cuda':
        return torch.autocast('cuda', dtype=torch.float16)
    return nullcontext()


def condition_tensors(lm: LMModel, descriptions: tp.List[str], device: str) -> tp.Dict[str, tp.Any]:
    """Conditions as MusicGenSolver._prepare_tokens_and_attributes prepares them (CFG dropout included)."""
    attributes = [ConditioningAttributes(text={'description': text}) for text in descriptions]
    attributes = lm.cfg_dropout(attributes)
    attributes = lm.att_dropout(attributes)
    tokenized = lm.condition_provider.tokenize(attributes)
    with autocast_context(device):
        return lm.condition_provider(tokenized)


def training_loss(lm: LMModel, batch: Batch, device: str) -> torch.Tensor:
    """Forward and masked cross entropy, as `MusicGenSolver.run_step` computes them."""
    conditions = condition_tensors(lm, batch.descriptions, device)
    with autocast_context(device):
        output = lm.compute_predictions(batch.codes, [], conditions)
        # MusicGenSolver._compute_cross_entropy does not use `self`: AudioCraft's own loss.
        ce, _ = MusicGenSolver._compute_cross_entropy(None, output.logits, batch.codes, output.mask)  # type: ignore
    return ce


class TrainingStep:
    """One optimisation step of `lm` on `batch`: forward, cross entropy, backward, gradient clipping,
    AdamW over the trainable parameters (AudioCraft's optimizer builder and MusicGen's optim config);
    on CUDA with fp16 autocast and a GradScaler, as MusicGenSolver does.
    """
    def __init__(self, lm: LMModel, batch: Batch, device: str):
        self.lm, self.batch, self.device = lm, batch, device
        self.params = [p for p in lm.parameters() if p.requires_grad]
        self.optimizer = builders.get_optimizer(self.params, OPTIM_CFG)
        self.scaler = torch.amp.GradScaler('cuda') if torch.device(device).type == 'cuda' else None

    def __call__(self) -> float:
        loss = training_loss(self.lm, self.batch, self.device)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, OPTIM_CFG.max_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def resident_bytes(self) -> int:
        """Bytes of the tensors that live across steps: weights, buffers, optimizer state."""
        tensors = list(self.lm.parameters()) + list(self.lm.buffers())
        for state in self.optimizer.state.values():
            tensors += [value for value in state.values() if torch.is_tensor(value)]
        return storage_bytes(tensors)


def storage_bytes(tensors: tp.Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (shared weights counted once)."""
    seen: tp.Dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


# ---------------------------------------------------------------------------------------------
# Memory and FLOPs

def peak_step_bytes(fn: tp.Callable[[], tp.Any], device: str) -> int:
    """Peak bytes allocated by torch during one call of `fn`, above what was allocated before.

    CUDA: `torch.cuda.max_memory_allocated`. CPU: torch's CPU allocator reports every allocation
    and free to the profiler with the running total (`profile_memory=True`); the peak of that
    total is read from the exported trace. Tensors allocated before the call and freed during it
    are not subtracted (the profiler never saw them), so call `fn` when the previous step's
    gradients are already freed (`zero_grad(set_to_none=True)`).
    """
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / 'trace.json'
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())['traceEvents']
    memory = sorted((event['ts'], event['args']['Total Allocated'], event['args']['Bytes'])
                    for event in events if event.get('name') == '[memory]'
                    and event['args'].get('Device Type', 0) == 0)
    if not memory:
        return 0
    # The allocator's running total carries over from earlier profiled calls: start from the
    # total just before the first allocation seen here.
    _, first_total, first_bytes = memory[0]
    start = first_total - first_bytes
    return max(total for _, total, _ in memory) - start


def _sdpa_cpu_flops(query, key, value, *args, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count
    return sdpa_flop_count(query, key, value)


def _sdpa_cpu_backward_flops(grad_out, query, key, value, *args, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count
    return sdpa_backward_flop_count(grad_out, query, key, value)


def count_flops(fn: tp.Callable[[], tp.Any]) -> int:
    """Matmul and attention FLOPs of one call of `fn` (torch's FlopCounterMode; elementwise ops,
    norms and the optimizer's update are not counted). Causal attention is counted as full."""
    from torch.utils.flop_counter import FlopCounterMode
    aten = torch.ops.aten
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
               aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()


def capture_base_io(lm: ExtendedLMModel, batch: Batch, device: str):
    """Inputs and output of the frozen base transformer for `batch`: (x, kwargs, features)."""
    captured: tp.Dict[str, tp.Any] = {}

    def hook(module, args, kwargs, output):
        captured['x'], captured['kwargs'], captured['features'] = args[0], dict(kwargs), output

    handle = lm.base_transformer.register_forward_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            training_loss(lm, batch, device)
    finally:
        handle.remove()
    return captured['x'], captured['kwargs'], captured['features']
