"""Shared fixtures for the extended-model tests.

Everything runs on tiny but real MusicGens built by AudioCraft's own builders
(`audiocraft_ext.models.tiny`): 16 kHz, 50 frames/s, no download. Building one takes well under
a second, so tests that mutate a model build their own; exported directories on disk are
built once per session and must be treated as read-only (copy them before changing them).

Helpers are fixtures that return the helper function (pytest's factory-as-fixture idiom): a test
asks for `perturb_extension` and calls it; test modules never import conftest or each other.

No test reads or writes the user's caches: before anything is imported, every cache the code under
test or its libraries use is pointed at a temporary folder of this process (environment variables,
so the commands the tests run inherit them); see `CACHE_ENV` and `test_caches`.
"""
from __future__ import annotations

import hashlib
from html.parser import HTMLParser
import os
from pathlib import Path
import random
import shutil
import subprocess
import sys
import tempfile
import typing as tp

import pytest

if tp.TYPE_CHECKING:
    import torch

# variable -> folder under the session's cache root. Set here, at the top, because some readers
# take them once, at import: Hugging Face's HF_HOME, Dora's folder (`train.main.dora.dir`).
CACHE_ENV = {
    'AUDIOCRAFT_EXT_CACHE': 'audiocraft-ext',               # ours: audiocraft_ext.io.cache_dirs (replay sets)
    'AUDIOCRAFT_EXT_DEMO_CACHE': 'audiocraft-ext/demo',     # the demo's --cache-dir default
    'AUDIOCRAFT_EXT_DORA_DIR': 'dora',                      # dora.dir of runs not told where
    'XDG_CACHE_HOME': '.',                                  # pip, uv, and whatever else follows XDG
    'HF_HOME': 'huggingface',                               # Hugging Face hub and transformers
    'AUDIOCRAFT_CACHE_DIR': 'audiocraft',                   # AudioCraft's hub downloads
    'TORCH_HOME': 'torch',                                  # torch.hub (demucs, encodec weights)
    'MPLCONFIGDIR': 'matplotlib',                           # matplotlib's font cache and config
}


def _redirect_caches() -> Path:
    root = Path(tempfile.mkdtemp(prefix='audiocraft-ext-test-caches-')).resolve()
    for name, folder in CACHE_ENV.items():
        os.environ[name] = str((root / folder).resolve())
    return root


USER_ENVIRON = dict(os.environ)  # before the redirection: to find (read, never write) what setup made
CACHE_ROOT = _redirect_caches()

# Python bytecode of everything the session imports, written once under a folder of the session and
# read by every later process: the xdist workers and each command a test starts. The locked venv
# ships no .pyc and a shell may set PYTHONDONTWRITEBYTECODE, and then every process compiles torch,
# AudioCraft and transformers from source again: about half of each command's 15 s import. Nothing
# is written beside any source file. The controller makes the folder, under its cache root (removed
# when the session ends, after the workers'); the workers, started after this, inherit it.
PYCACHE_ENV = 'AUDIOCRAFT_EXT_TEST_PYCACHE'


def _share_bytecode() -> None:
    inherited = os.environ.get(PYCACHE_ENV) if os.environ.get('PYTEST_XDIST_WORKER') else None
    folder = inherited if inherited and Path(inherited).is_dir() else str(CACHE_ROOT / 'pycache')
    os.environ[PYCACHE_ENV] = os.environ['PYTHONPYCACHEPREFIX'] = sys.pycache_prefix = folder
    os.environ.pop('PYTHONDONTWRITEBYTECODE', None)
    sys.dont_write_bytecode = False


_share_bytecode()

# Two xdist workers share the 2 cores, and the training commands they start use 2 torch threads each:
# OpenMP threads that spin while they wait for a busy core. Passive waiting only changes how an idle
# thread waits, not what is computed; measured on scripts/make_pretrained.py at the test's size beside
# one other busy process: 87 s -> 55 s. Set before torch (libgomp reads it when loaded); the workers
# and every command inherit it.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

# torch and AudioCraft (and with it Hugging Face) are imported by the helpers and fixtures that use
# them, after the caches were redirected, never at the top: xdist's controller process, which runs no
# test, loads this file too, and both workers start only once it is loaded (importing AudioCraft there
# held them back by about 20 s).

FRAMES = 12  # time steps of random codes used for logits comparisons (0.24 s at 50 frames/s)


def _perturb_extension(lm, seed: int = 1, std: float = 0.05) -> None:
    """Add gaussian noise to every parameter of the new layers (deterministic from `seed`).

    New layers start with zero residual branches (identity); after this they change the logits.
    Noise is added (not drawn from scratch) so LayerNorm weights stay close to 1.
    """
    import torch
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        for parameter in lm.extension.parameters():
            parameter.add_(torch.randn_like(parameter) * std)


def _melody_wav(sample_rate: int = 16000, seconds: float = 0.5, freq: float = 220.0) -> torch.Tensor:
    """A [1, T] sine, usable as a melody for the chroma conditioner."""
    import torch
    t = torch.arange(int(seconds * sample_rate), dtype=torch.float32) / sample_rate
    return 0.5 * torch.sin(2 * torch.pi * freq * t)[None]


def _make_attributes(model, batch: int = 2):
    """Conditions as MusicGen builds them for generation (text, plus a melody for melody models)."""
    descriptions = [f'tiny prompt {i}' for i in range(batch)]
    if 'self_wav' in model.lm.condition_provider.conditioners:
        melodies = [_melody_wav(model.sample_rate, freq=220.0 * (i + 1)) for i in range(batch)]
        attributes, _ = model._prepare_tokens_and_attributes(descriptions, None, melody_wavs=melodies)
    else:
        attributes, _ = model._prepare_tokens_and_attributes(descriptions, None)
    return attributes


def _random_codes(lm, batch: int = 2, frames: int = FRAMES, seed: int = 0) -> torch.Tensor:
    import torch
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, lm.card, (batch, lm.num_codebooks, frames), generator=generator)


def _module_digest(module) -> str:
    import torch
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


_CONDITION_CACHE: tp.Dict[tp.Any, tp.Any] = {}


def _condition_tensors(model, batch: int = 2):
    """`model.lm`'s condition tensors for `_make_attributes(model, batch)`, as `LMModel.forward` computes
    them in eval mode (tokenize + condition provider).

    Cached by the condition provider's weights: the melody conditioner runs demucs, which takes
    seconds on CPU, and every tiny base of one flavour and seed has the same conditioners.
    Python's `random` is seeded around the computation because demucs' `apply_model` draws a
    random time shift from it.
    """
    import torch
    provider = model.lm.condition_provider
    key = (batch, 'self_wav' in provider.conditioners, _module_digest(provider))
    if key not in _CONDITION_CACHE:
        attributes = _make_attributes(model, batch)
        state = random.getstate()
        random.seed(0)
        try:
            with torch.no_grad():
                _CONDITION_CACHE[key] = provider(provider.tokenize(attributes))
        finally:
            random.setstate(state)
    return _CONDITION_CACHE[key]


def _lm_logits(lm, conditions, codes: torch.Tensor) -> torch.Tensor:
    """`compute_predictions` logits in eval mode, invalid (NaN) positions set to 0 for comparisons.

    `conditions` is a list of `ConditioningAttributes` (the full path) or precomputed condition
    tensors (a dict, see `condition_tensors`).
    """
    import torch
    was_training = lm.training
    lm.eval()
    state = random.getstate()
    random.seed(0)
    try:
        with torch.no_grad():
            if isinstance(conditions, dict):
                out = lm.compute_predictions(codes, [], condition_tensors=conditions)
            else:
                out = lm.compute_predictions(codes, conditions)
    finally:
        random.setstate(state)
        lm.train(was_training)
    return out.logits.nan_to_num()


def _model_logits(model, batch: int = 2, frames: int = FRAMES, seed: int = 0) -> torch.Tensor:
    """Logits of a (Extended)MusicGen on fixed random codes and fixed conditions."""
    return _lm_logits(model.lm, _condition_tensors(model, batch), _random_codes(model.lm, batch, frames, seed))


def _train_extension(lm, base, steps: int) -> tp.List[float]:
    """`steps` AdamW steps (lr 1e-2, no weight decay: a tensor changes only if a gradient reaches
    it) of `lm`'s trainable parameters on seeded random codes with `base`'s conditions, in train
    mode; checks that no frozen parameter gets a gradient. Returns the losses."""
    import torch
    lm.train()
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    torch.manual_seed(0)
    losses = []
    for step in range(steps):
        codes = _random_codes(lm, seed=step)
        out = lm.compute_predictions(codes, _make_attributes(base))
        loss = torch.nn.functional.cross_entropy(out.logits[out.mask], codes[out.mask])
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in lm.parameters() if not p.requires_grad)
        optimizer.step()
        losses.append(loss.item())
    return losses


def _file_digests(directory: Path) -> tp.Dict[str, str]:
    """sha256 of every file under `directory` (names relative to it)."""
    directory = Path(directory)
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob('*')) if p.is_file()}


@pytest.fixture(scope='session')
def exported_bases(tmp_path_factory) -> tp.Dict[str, Path]:
    """flavour -> a directory in AudioCraft's exported layout of the tiny base (seed 0). Read-only."""
    from audiocraft_ext.models.tiny import FLAVOURS, build_tiny_musicgen, save_exported
    root = tmp_path_factory.mktemp('exported_bases')
    return {flavour: save_exported(build_tiny_musicgen(flavour, seed=0), root / flavour)
            for flavour in FLAVOURS}


@pytest.fixture(scope='session')
def other_text_base(tmp_path_factory) -> Path:
    """The tiny text base with another seed (different weights), exported. Read-only."""
    from audiocraft_ext.models.tiny import build_tiny_musicgen, save_exported
    return save_exported(build_tiny_musicgen('text', seed=1), tmp_path_factory.mktemp('other_base'))


@pytest.fixture
def demucs_offline():
    """Use around anything that builds a melody model's chroma conditioner."""
    from audiocraft_ext.models.tiny import offline_demucs
    with offline_demucs():
        yield


@pytest.fixture(scope='module')
def single_thread_torch():
    """One intra-op thread for the module's tests: the tiny models' ops are far too small to gain
    from threads, and on a busy 2-core machine threads make them several times slower."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def dora_dir(tmp_path_factory) -> tp.Iterator[Path]:
    """Experiments of the requesting test module live in a temporary Dora folder."""
    from audiocraft_ext import train
    folder = tmp_path_factory.mktemp('dora')
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train.main.dora, 'dir', folder)
        yield folder


@pytest.fixture(scope='module')
def egs(tmp_path_factory) -> Path:
    """A prepared dataset of 6 synthetic 1.5 s tones with captions (`egs_root=` for `dset=audio/egs`)."""
    from audiocraft_ext.data.prepare import prepare_data
    from audiocraft_ext.data.synth_dataset import write_tone_folder
    root = tmp_path_factory.mktemp('data')
    write_tone_folder(root / 'audio', num_files=6, duration=1.5)
    prepare_data(root / 'audio', root / 'egs', captions=root / 'audio' / 'captions.csv')
    return root / 'egs'


def pytest_unconfigure(config):
    shutil.rmtree(CACHE_ROOT, ignore_errors=True)


# ---- the order in which `-n 2 --dist loadfile` hands out the test files ------------------------------
# The longest files (`--durations` of a full run, per file, longest first), then every other file in
# collection order. xdist gives each worker a file at a time in the order of the collection, so the
# two long chains (the quick start and the rebuild of the base, about 2.5 and 2 minutes) start at
# once, one on each worker, and the short files fill in around them; without this, xdist's default
# order (most tests first) left the long files to the end, where one of them ran alone on one worker.
# A file missing here or named in the wrong place only costs time.
LONGEST_FILES = ('test_quickstart.py', 'test_pretrained.py', 'test_distributed.py', 'test_demo.py',
                 'test_benchmarks.py', 'test_musicgen_compat.py', 'test_solver.py', 'test_evaluate.py',
                 'test_reliability_interrupt.py', 'test_generate_command.py', 'test_gpu_run.py',
                 'test_forgetting_control.py', 'test_original_commands.py', 'test_train_entry.py')


def pytest_configure(config):
    if hasattr(config.option, 'loadscopereorder'):  # xdist's reordering by number of tests: ours instead
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(session, config, items):
    rank = {name: index for index, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order kept


@pytest.fixture(scope='session', autouse=True)
def test_caches() -> tp.Iterator[Path]:
    """The session's cache root: every variable of `CACHE_ENV` points under it (set when this file is
    imported, before AudioCraft, Hugging Face or matplotlib is). Fails a session in which something
    pointed them elsewhere; the folder is removed when the session ends."""
    def wrong() -> tp.Dict[str, tp.Optional[str]]:
        return {name: os.environ.get(name) for name, folder in CACHE_ENV.items()
                if os.environ.get(name) != str((CACHE_ROOT / folder).resolve())}
    assert not wrong(), f"cache variables not under {CACHE_ROOT}: {wrong()}"
    yield CACHE_ROOT
    assert not wrong(), f"a test left cache variables pointing elsewhere: {wrong()}"


@pytest.fixture(scope='session')
def user_environ() -> tp.Dict[str, str]:
    """The environment as the session started, before `CACHE_ENV` redirected the caches: for a test
    that must find something the setup put in a user cache (it reads there, never writes)."""
    return dict(USER_ENVIRON)


# ---- helpers as fixtures (each returns the function of the same name, with a leading underscore) ----
@pytest.fixture(scope='session')
def perturb_extension() -> tp.Callable[..., None]:
    """`perturb_extension(lm, seed=1, std=0.05)`: gaussian noise on the new layers (deterministic)."""
    return _perturb_extension


@pytest.fixture(scope='session')
def melody_wav() -> tp.Callable[..., torch.Tensor]:
    """`melody_wav(sample_rate=16000, seconds=0.5, freq=220.0)`: a [1, T] sine melody."""
    return _melody_wav


@pytest.fixture(scope='session')
def make_attributes() -> tp.Callable[..., tp.Any]:
    """`make_attributes(model, batch=2)`: conditions as MusicGen builds them for generation."""
    return _make_attributes


@pytest.fixture(scope='session')
def random_codes() -> tp.Callable[..., torch.Tensor]:
    """`random_codes(lm, batch=2, frames=FRAMES, seed=0)`: seeded random codes [B, K, T]."""
    return _random_codes


@pytest.fixture(scope='session')
def condition_tensors() -> tp.Callable[..., tp.Any]:
    """`condition_tensors(model, batch=2)`: cached condition tensors of `make_attributes(model, batch)`."""
    return _condition_tensors


@pytest.fixture(scope='session')
def lm_logits() -> tp.Callable[..., torch.Tensor]:
    """`lm_logits(lm, conditions, codes)`: eval-mode logits, NaN set to 0, Python's `random` seeded."""
    return _lm_logits


@pytest.fixture(scope='session')
def model_logits() -> tp.Callable[..., torch.Tensor]:
    """`model_logits(model, batch=2, frames=FRAMES, seed=0)`: logits on fixed codes and conditions."""
    return _model_logits


@pytest.fixture(scope='session')
def train_extension() -> tp.Callable[..., tp.List[float]]:
    """`train_extension(lm, base, steps)`: seeded AdamW steps of the trainable parameters; the losses."""
    return _train_extension


@pytest.fixture(scope='session')
def file_digests() -> tp.Callable[[Path], tp.Dict[str, str]]:
    """`file_digests(directory)`: sha256 of every file under `directory`."""
    return _file_digests


# ---- in-process training runs (the entry point's own functions) ----------------------------------
@pytest.fixture(scope='session')
def build_solver() -> tp.Callable[..., tp.Tuple[tp.Any, tp.Any]]:
    """`build_solver(argv, restore=False) -> (xp, solver)`: `audiocraft_ext.train.build_solver`, the
    solver `python -m audiocraft_ext.train *argv` builds, seeded as it seeds; run it in `xp.enter()`."""
    from audiocraft_ext import train
    return train.build_solver


@pytest.fixture(scope='session')
def run_xp() -> tp.Callable[..., tp.Tuple[tp.Any, tp.Any]]:
    """`run_xp(argv) -> (xp, solver)`: `audiocraft_ext.train.run_in_process`, the XP `argv` trained
    in this process as `python -m audiocraft_ext.train *argv` trains it."""
    from audiocraft_ext import train
    return train.run_in_process


@pytest.fixture(scope='session')
def run_python() -> tp.Callable[..., subprocess.CompletedProcess]:
    """`run_python(args, cwd, dora_dir, timeout=300)`: `python *args` in a subprocess with Dora's folder
    at `dora_dir` (`AUDIOCRAFT_EXT_DORA_DIR`); fails the test, showing the output, unless it exits 0."""
    def run(args: tp.List[str], cwd: Path, dora_dir: Path, timeout: int = 300) -> subprocess.CompletedProcess:
        env = dict(os.environ, AUDIOCRAFT_EXT_DORA_DIR=str(dora_dir), PYTHONWARNINGS='ignore')
        result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                                timeout=timeout)
        assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        return result
    return run


@pytest.fixture(scope='session')
def inject_nan_logits() -> tp.Callable[..., tp.List[int]]:
    """`inject_nan_logits(solver, when) -> calls`: make the solver model's logits NaN on the training
    steps (counted from 0) for which `when(step)` is true; `calls` lists the training steps seen. A
    step may predict more than once (new-domain and replay examples): all its predictions count as
    that one step."""
    def inject(solver, when: tp.Callable[[int], bool]) -> tp.List[int]:
        original = solver.model.compute_predictions
        calls: tp.List[int] = []
        steps_seen: tp.List[tp.Tuple[int, int]] = []  # (epoch, step index) of each step
        poisoned: tp.List[bool] = []

        def compute_predictions(*args, **kwargs):
            output = original(*args, **kwargs)
            if solver.is_training:
                step = (solver.epoch, solver._step_index)
                if not steps_seen or steps_seen[-1] != step:
                    steps_seen.append(step)
                    calls.append(len(calls))
                    poisoned.append(when(calls[-1]))
                if poisoned[-1]:
                    output.logits.data.fill_(float('nan'))
            return output
        solver.model.compute_predictions = compute_predictions
        return calls
    return inject


# ---- the HTML listening report --------------------------------------------------------------------
_VOID = {'area', 'base', 'br', 'col', 'embed', 'hr', 'img', 'input', 'link', 'meta', 'source', 'track', 'wbr'}


class TagChecker(HTMLParser):
    """Balanced tags (void elements aside), every tag and attribute collected."""
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: tp.List[str] = []
        self.errors: tp.List[str] = []
        self.tags: tp.List[tp.Tuple[str, dict]] = []
        self.text: tp.List[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in _VOID:
            self.errors.append(f'end tag for void element <{tag}>')
        elif not self.stack or self.stack[-1] != tag:
            self.errors.append(f'</{tag}> closes <{self.stack[-1] if self.stack else None}>')
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope='session')
def parse_html() -> tp.Callable[[Path], TagChecker]:
    """`parse_html(page) -> TagChecker`: the page's tags, attributes, text and tag-balance errors."""
    def parse(page: Path) -> TagChecker:
        checker = TagChecker()
        checker.feed(page.read_text(encoding='utf-8'))
        checker.close()
        return checker
    return parse


@pytest.fixture(scope='session')
def report_metrics() -> tp.Dict[str, tp.Any]:
    """A hand-written metrics report as the evaluate stage writes it (metrics.json). Read-only."""
    return {
        'sig': 'abc123', 'epoch': 3, 'checkpoint': '/runs/xps/abc123/checkpoint.th', 'extension_scale': 1.0,
        'base_model': 'facebook/musicgen-small', 'base_hash': 'f00d',
        'sets': {
            'new': {'base': {'ce': 3.5, 'ppl': 33.1}, 'extended': {'ce': 3.25, 'ppl': 25.8}, 'dataset': 'egs/new'},
            'reference': {'base': {'ce': 3.0, 'ppl': 20.1}, 'extended': {'ce': 3.1, 'ppl': 22.2},
                          'dataset': 'egs/old'},
            # A set the report does not know: shown like every set but `new`, as forgetting.
            'base_generations': {'base': {'ce': 2.0, 'ppl': 7.39}, 'extended': {'ce': 1.875, 'ppl': 6.52}},
        },
        'scale_sweep': {'scales': [0.0, 0.5, 1.0], 'new': [3.5, 3.3, 3.25], 'reference': [3.0, 3.02, 3.1]},
        'audio': {'base': {'frechet_encodec_latent_distance': 0.25},
                  'extended': {'frechet_encodec_latent_distance': 0.125},
                  'reconstruction': {'frechet_encodec_latent_distance': 0.0625}, 'num_items': 3, 'duration': 1.0},
    }
