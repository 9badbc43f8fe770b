"""Shared fixtures and helpers for the extended-model tests.

Everything runs on tiny but real MusicGens built by AudioCraft's own builders
(`audiocraft_ext.models.tiny`): 16 kHz, 50 frames/s, no download. Building one takes well under
a second, so tests that mutate a model build their own; exported directories on disk are
built once per session and must be treated as read-only (copy them before changing them).
"""
import hashlib
from pathlib import Path
import random
import typing as tp

import pytest
import torch

from audiocraft_ext.models.tiny import FLAVOURS, build_tiny_musicgen, offline_demucs, save_exported

FRAMES = 12  # time steps of random codes used for logits comparisons (0.24 s at 50 frames/s)


def perturb_extension(lm, seed: int = 1, std: float = 0.05) -> None:
    """Add gaussian noise to every parameter of the new layers (deterministic from `seed`).

    New layers start with zero residual branches (identity); after this they change the logits.
    Noise is added (not drawn from scratch) so LayerNorm weights stay close to 1.
    """
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        for parameter in lm.extension.parameters():
            parameter.add_(torch.randn_like(parameter) * std)


def melody_wav(sample_rate: int = 16000, seconds: float = 0.5, freq: float = 220.0) -> torch.Tensor:
    """A [1, T] sine, usable as a melody for the chroma conditioner."""
    t = torch.arange(int(seconds * sample_rate), dtype=torch.float32) / sample_rate
    return 0.5 * torch.sin(2 * torch.pi * freq * t)[None]


def make_attributes(model, batch: int = 2):
    """Conditions as MusicGen builds them for generation (text, plus a melody for melody models)."""
    descriptions = [f'tiny prompt {i}' for i in range(batch)]
    if 'self_wav' in model.lm.condition_provider.conditioners:
        melodies = [melody_wav(model.sample_rate, freq=220.0 * (i + 1)) for i in range(batch)]
        attributes, _ = model._prepare_tokens_and_attributes(descriptions, None, melody_wavs=melodies)
    else:
        attributes, _ = model._prepare_tokens_and_attributes(descriptions, None)
    return attributes


def random_codes(lm, batch: int = 2, frames: int = FRAMES, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, lm.card, (batch, lm.num_codebooks, frames), generator=generator)


def _module_digest(module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


_CONDITION_CACHE: tp.Dict[tp.Any, tp.Any] = {}


@torch.no_grad()
def condition_tensors(model, batch: int = 2):
    """`model.lm`'s condition tensors for `make_attributes(model, batch)`, as `LMModel.forward` computes
    them in eval mode (tokenize + condition provider).

    Cached by the condition provider's weights: the melody conditioner runs demucs, which takes
    seconds on CPU, and every tiny base of one flavour and seed has the same conditioners.
    Python's `random` is seeded around the computation because demucs' `apply_model` draws a
    random time shift from it.
    """
    provider = model.lm.condition_provider
    key = (batch, 'self_wav' in provider.conditioners, _module_digest(provider))
    if key not in _CONDITION_CACHE:
        attributes = make_attributes(model, batch)
        state = random.getstate()
        random.seed(0)
        try:
            _CONDITION_CACHE[key] = provider(provider.tokenize(attributes))
        finally:
            random.setstate(state)
    return _CONDITION_CACHE[key]


@torch.no_grad()
def lm_logits(lm, conditions, codes: torch.Tensor) -> torch.Tensor:
    """`compute_predictions` logits in eval mode, invalid (NaN) positions set to 0 for comparisons.

    `conditions` is a list of `ConditioningAttributes` (the full path) or precomputed condition
    tensors (a dict, see `condition_tensors`).
    """
    was_training = lm.training
    lm.eval()
    state = random.getstate()
    random.seed(0)
    try:
        if isinstance(conditions, dict):
            out = lm.compute_predictions(codes, [], condition_tensors=conditions)
        else:
            out = lm.compute_predictions(codes, conditions)
    finally:
        random.setstate(state)
        lm.train(was_training)
    return out.logits.nan_to_num()


def model_logits(model, batch: int = 2, frames: int = FRAMES, seed: int = 0) -> torch.Tensor:
    """Logits of a (Extended)MusicGen on fixed random codes and fixed conditions."""
    return lm_logits(model.lm, condition_tensors(model, batch), random_codes(model.lm, batch, frames, seed))


def train_extension(lm, base, steps: int) -> tp.List[float]:
    """`steps` AdamW steps (lr 1e-2, no weight decay: a tensor changes only if a gradient reaches
    it) of `lm`'s trainable parameters on seeded random codes with `base`'s conditions, in train
    mode; checks that no frozen parameter gets a gradient. Returns the losses."""
    lm.train()
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    torch.manual_seed(0)
    losses = []
    for step in range(steps):
        codes = random_codes(lm, seed=step)
        out = lm.compute_predictions(codes, make_attributes(base))
        loss = torch.nn.functional.cross_entropy(out.logits[out.mask], codes[out.mask])
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in lm.parameters() if not p.requires_grad)
        optimizer.step()
        losses.append(loss.item())
    return losses


def file_digests(directory: Path) -> tp.Dict[str, str]:
    """sha256 of every file under `directory` (names relative to it)."""
    directory = Path(directory)
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob('*')) if p.is_file()}


@pytest.fixture(scope='session')
def exported_bases(tmp_path_factory) -> tp.Dict[str, Path]:
    """flavour -> a directory in AudioCraft's exported layout of the tiny base (seed 0). Read-only."""
    root = tmp_path_factory.mktemp('exported_bases')
    return {flavour: save_exported(build_tiny_musicgen(flavour, seed=0), root / flavour)
            for flavour in FLAVOURS}


@pytest.fixture(scope='session')
def other_text_base(tmp_path_factory) -> Path:
    """The tiny text base with another seed (different weights), exported. Read-only."""
    return save_exported(build_tiny_musicgen('text', seed=1), tmp_path_factory.mktemp('other_base'))


@pytest.fixture
def demucs_offline():
    """Use around anything that builds a melody model's chroma conditioner."""
    with offline_demucs():
        yield


@pytest.fixture(scope='module')
def single_thread_torch():
    """One intra-op thread for the module's tests: the tiny models' ops are far too small to gain
    from threads, and on a busy 2-core machine threads make them several times slower."""
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


def run_xp(argv: tp.List[str]):
    """Run the XP `argv` in-process, as `python -m audiocraft_ext.train *argv` does: (xp, solver)."""
    from audiocraft_ext import train
    xp = train.main.get_xp(argv)
    train.main.init_xp(xp)
    with xp.enter():
        train.init_seed_and_system(xp.cfg)  # as train.main: the new layers' init is seeded
        solver = train.get_solver(xp.cfg)
        solver.run()
    return xp, solver
