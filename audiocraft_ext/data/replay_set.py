"""The base's own generations for a list of prompts: a replay set that needs no old training data.

Nobody who fine-tunes MusicGen has its training data. What stands in for it is what the frozen
base plays for prompts in the style of its captions: generated once, stored as codes with their
prompts, and reused by every run on the same base (the forgetting control of
`solvers.forgetting`, and `python -m audiocraft_ext.evaluate` to measure forgetting without old
data, on a held-out part).

On disk, one folder per set, named by its key (`replay_set_key`: the base's weights hash, the
prompts, the seed, the sizes and the generation settings)::

    <cache>/<key>/codes.safetensors   {'codes': int16 [N, K, T]}
    <cache>/<key>/prompts.json        {'version', 'key', 'prompts': [N strings], 'settings': {...}}

The folder is written beside and renamed into place, so an interrupted generation leaves no set.
The same arguments give the same codes: every batch is drawn from a seed of its own.
`BaseGenerations` makes or reads the set on first use, and hands out its training and held-out parts.
"""
from dataclasses import dataclass
import hashlib
import json
from pathlib import Path
import typing as tp

import flashy
from safetensors.torch import load_file, save_file
import torch

from audiocraft.modules.conditioners import ConditioningAttributes, WavCondition

from ..io.atomic import atomic_directory

REPLAY_SET_VERSION = 1
DEFAULT_PROMPTS = Path(__file__).resolve().parent / 'prompts' / 'replay_prompts.txt'
DEFAULT_CACHE = Path.home() / '.cache' / 'audiocraft-ext' / 'replay'


class ReplaySetError(ValueError):
    """A prompts file or a stored replay set is not usable."""


@dataclass
class GenerationSettings:
    """How the base generates the replay set (`LMModel.generate` arguments; cfg_coef None: the base's)."""
    use_sampling: bool = True
    temp: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    cfg_coef: tp.Optional[float] = None

    def as_dict(self) -> tp.Dict[str, tp.Any]:
        return {'use_sampling': bool(self.use_sampling), 'temp': float(self.temp), 'top_k': int(self.top_k),
                'top_p': float(self.top_p), 'cfg_coef': None if self.cfg_coef is None else float(self.cfg_coef)}


@dataclass
class ReplaySet:
    """Codes the base generated [N, K, T] (long) and the prompt of each."""
    codes: torch.Tensor
    prompts: tp.List[str]
    key: str = ''

    def __len__(self) -> int:
        return len(self.prompts)

    def split(self, holdout: int) -> tp.Tuple['ReplaySet', 'ReplaySet']:
        """(training part, held-out part): the last `holdout` items are held out."""
        if not 0 <= holdout < len(self):
            raise ReplaySetError(f"holdout={holdout} must be at least 0 and below the set's size {len(self)}: "
                                 "generate more samples (replay.num_samples) or hold out fewer.")
        cut = len(self) - holdout
        return (ReplaySet(self.codes[:cut], self.prompts[:cut], self.key),
                ReplaySet(self.codes[cut:], self.prompts[cut:], self.key))


def read_prompts(path: tp.Optional[tp.Union[str, Path]] = None) -> tp.List[str]:
    """Prompts of a text file, one per line ('#' comments and blank lines skipped); None: the default list."""
    path = DEFAULT_PROMPTS if path is None else Path(path).expanduser()
    if not path.is_file():
        raise ReplaySetError(f"replay.prompts={path}: no such file. Give a text file with one prompt per line, "
                             "or leave replay.prompts unset (null) for the default list.")
    prompts = [line.strip() for line in path.read_text(encoding='utf-8').splitlines()]
    prompts = [line for line in prompts if line and not line.startswith('#')]
    if not prompts:
        raise ReplaySetError(f"replay.prompts={path} holds no prompt: write one caption per line "
                             "(lines starting with '#' are comments).")
    return prompts


def replay_set_key(base_hash: str, prompts: tp.Sequence[str], seed: int, num_samples: int, num_frames: int,
                   settings: GenerationSettings) -> str:
    """What makes a replay set: the base, the prompts, the seed, the sizes, the generation settings."""
    payload = {'version': REPLAY_SET_VERSION, 'base': base_hash, 'prompts': list(prompts), 'seed': int(seed),
               'num_samples': int(num_samples), 'num_frames': int(num_frames), 'settings': settings.as_dict()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def prompt_attributes(lm: torch.nn.Module, prompts: tp.Sequence[str], sample_rate: int) -> tp.List[tp.Any]:
    """Conditions for text prompts as `MusicGen` builds them (an empty melody for melody models)."""
    attributes = [ConditioningAttributes(text={'description': prompt}) for prompt in prompts]
    if 'self_wav' in lm.condition_provider.conditioners:
        device = next(lm.parameters()).device
        for attr in attributes:
            attr.wav['self_wav'] = WavCondition(torch.zeros((1, 1, 1), device=device),
                                                torch.tensor([0], device=device),
                                                sample_rate=[sample_rate], path=[None])
    return attributes


@torch.no_grad()
def generate_replay_set(lm: torch.nn.Module, prompts: tp.Sequence[str], num_samples: int, num_frames: int,
                        sample_rate: int, seed: int = 0, batch_size: int = 16,
                        settings: tp.Optional[GenerationSettings] = None) -> ReplaySet:
    """Generate `num_samples` sequences of `num_frames` codes with `lm` (the frozen base).

    Item i is generated for `prompts[i % len(prompts)]`; batch b draws from seed `seed + b`.
    `lm` is put in eval mode for the generation and given back in its previous mode.
    """
    settings = settings or GenerationSettings()
    if num_samples < 1 or num_frames < 1:
        raise ReplaySetError(f"A replay set needs num_samples >= 1 and at least one frame, got "
                             f"{num_samples} samples of {num_frames} frames.")
    items = [prompts[i % len(prompts)] for i in range(num_samples)]
    kwargs = settings.as_dict()
    kwargs['top_k'] = min(kwargs['top_k'], lm.card)  # top-k over all tokens is plain sampling
    was_training = lm.training
    lm.eval()
    chunks = []
    try:
        for index, start in enumerate(range(0, num_samples, batch_size)):
            batch_prompts = items[start:start + batch_size]
            with torch.random.fork_rng():  # the caller's random state (CPU and CUDA) is left as it was
                torch.manual_seed(seed + index)
                codes = lm.generate(None, prompt_attributes(lm, batch_prompts, sample_rate),
                                    max_gen_len=num_frames, **kwargs)  # [b, K, T]
            chunks.append(codes.cpu())
    finally:
        lm.train(was_training)
    codes = torch.cat(chunks)
    if codes.max() >= 2 ** 15:
        raise ReplaySetError(f"Codes up to {int(codes.max())} do not fit the int16 storage.")
    return ReplaySet(codes.long(), items)


def save_replay_set(replay: ReplaySet, folder: tp.Union[str, Path], settings: tp.Dict[str, tp.Any]) -> Path:
    """Write `replay` to `folder` (see module doc), atomically: a temporary folder beside, renamed."""
    with atomic_directory(folder) as tmp:
        save_file({'codes': replay.codes.to(torch.int16).contiguous()}, str(tmp / 'codes.safetensors'))
        meta = {'version': REPLAY_SET_VERSION, 'key': replay.key, 'prompts': replay.prompts, 'settings': settings}
        (tmp / 'prompts.json').write_text(json.dumps(meta, indent=2) + '\n', encoding='utf-8')
    return Path(folder)


def load_replay_set(folder: tp.Union[str, Path]) -> ReplaySet:
    """Read a set written by `save_replay_set` (safetensors and JSON only: nothing is unpickled)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / 'prompts.json').read_text(encoding='utf-8'))
        codes = load_file(str(folder / 'codes.safetensors'))['codes'].long()
    except (OSError, ValueError, KeyError) as error:
        raise ReplaySetError(f"{folder} is not a readable replay set ({type(error).__name__}: {error}); "
                             "delete the folder to generate it again.") from None
    if meta.get('version') != REPLAY_SET_VERSION or codes.shape[0] != len(meta.get('prompts', [])):
        raise ReplaySetError(f"{folder} is not a replay set of version {REPLAY_SET_VERSION} with one prompt per "
                             "item; delete the folder to generate it again.")
    return ReplaySet(codes, list(meta['prompts']), str(meta.get('key', '')))


def cached_replay_set(lm: torch.nn.Module, base_hash: str, prompts: tp.Sequence[str], num_samples: int,
                      num_frames: int, sample_rate: int, seed: int = 0,
                      cache_dir: tp.Optional[tp.Union[str, Path]] = None, batch_size: int = 16,
                      settings: tp.Optional[GenerationSettings] = None,
                      log: tp.Optional[tp.Callable[[str], None]] = None) -> ReplaySet:
    """The replay set for these arguments: read from `cache_dir` if it exists, else generated and stored."""
    settings = settings or GenerationSettings()
    key = replay_set_key(base_hash, prompts, seed, num_samples, num_frames, settings)
    folder = Path(cache_dir or DEFAULT_CACHE).expanduser() / key
    if folder.exists():
        if log:
            log(f"Replay set: {num_samples} generations of the base read from {folder}")
        return load_replay_set(folder)
    if log:
        log(f"Replay set: generating {num_samples} sequences of {num_frames} frames with the frozen base "
            f"({len(prompts)} prompts), stored in {folder}")
    replay = generate_replay_set(lm, prompts, num_samples, num_frames, sample_rate, seed, batch_size, settings)
    replay.key = key
    save_replay_set(replay, folder, {'base_hash': base_hash, 'seed': int(seed), 'num_frames': int(num_frames),
                                     **settings.as_dict()})
    return replay


class BaseGenerations:
    """The replay set of the base's own generations, made or read (`cached_replay_set`) on first use.

    Rank 0 generates it with the frozen base (`model`, an `ExtendedLMModel`, at `extension_scale=0`:
    the base exactly) and stores it; the other ranks, and every later run on the same base, read it.
    The last `holdout` items are held out: forgetting is measured on them.

    Args:
        model, base_hash: the extended model and the base's `weights_hash` (part of the set's key).
        prompts (path or None): the prompts file (`read_prompts`).
        num_samples, holdout, num_frames, sample_rate, seed, batch_size, settings, cache_dir: see
            `cached_replay_set`.
        autocast: returns the autocast context the model runs in.
        log: an info logger (`logging.Logger.info`).
    """
    def __init__(self, model: torch.nn.Module, base_hash: str, prompts: tp.Optional[Path], num_samples: int,
                 holdout: int, num_frames: int, sample_rate: int, seed: int, batch_size: int,
                 settings: GenerationSettings, cache_dir: tp.Optional[Path],
                 autocast: tp.Callable[[], tp.ContextManager], log: tp.Callable[..., None]):
        self.model, self.base_hash, self.prompts = model, base_hash, prompts
        self.num_samples, self.holdout, self.num_frames = num_samples, holdout, num_frames
        self.sample_rate, self.seed, self.batch_size = sample_rate, seed, batch_size
        self.settings, self.cache_dir = settings, cache_dir
        self.autocast, self.log = autocast, log
        self._replay_set: tp.Optional[ReplaySet] = None

    @property
    def replay_set(self) -> ReplaySet:
        """All of them: the training part, then the held-out ones."""
        if self._replay_set is None:
            model = self.model
            if not flashy.distrib.is_rank_zero():  # rank 0 generates; the others read what it stored
                flashy.distrib.barrier()
            was_training = model.training
            try:
                with model.scaled(0.0), self.autocast():  # scale 0: the frozen base exactly
                    self._replay_set = cached_replay_set(
                        model, base_hash=self.base_hash, prompts=read_prompts(self.prompts),
                        num_samples=self.num_samples, num_frames=self.num_frames, sample_rate=self.sample_rate,
                        seed=self.seed, cache_dir=self.cache_dir, batch_size=self.batch_size,
                        settings=self.settings, log=self.log)
            finally:
                model.train(was_training)
            if flashy.distrib.is_rank_zero():
                flashy.distrib.barrier()
        return self._replay_set

    def training_part(self) -> ReplaySet:
        return self.replay_set.split(self.holdout)[0]

    def held_out(self, batch_size: int, device: tp.Any) -> 'HeldOutGenerations':
        """The held-out part as evaluation batches."""
        return HeldOutGenerations(self, batch_size, device)


class HeldOutGenerations:
    """The held-out part of the base's generations as evaluation batches: (codes [b, K, T], prompts) pairs,
    with `prepare` turning one into (condition_tensors, codes, padding_mask) as evaluation does (no dropout)."""
    def __init__(self, generations: BaseGenerations, batch_size: int, device: tp.Any):
        replay = generations.replay_set
        _, self.held_out = replay.split(generations.holdout)
        if len(self.held_out) == 0:
            raise ValueError("replay.holdout=0: no held-out generation to measure forgetting on. Set replay.holdout "
                             "(e.g. 16) or evaluate.reference_dset to your old-domain data.")
        self.model, self.sample_rate = generations.model, generations.sample_rate
        self.autocast, self.device = generations.autocast, device
        self.batches = [(self.held_out.codes[i:i + batch_size], self.held_out.prompts[i:i + batch_size])
                        for i in range(0, len(self.held_out), batch_size)]
        self.description = (f"the base's own generations: {len(self.held_out)} held out of the replay set "
                            f"{replay.key} ({len(set(self.held_out.prompts))} prompts)")

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)

    def prepare(self, batch: tp.Tuple[torch.Tensor, tp.List[str]]) -> tp.Tuple[dict, torch.Tensor, torch.Tensor]:
        codes, prompts = batch
        provider = self.model.condition_provider
        tokenized = provider.tokenize(prompt_attributes(self.model, prompts, self.sample_rate))
        with self.autocast():
            condition_tensors = provider(tokenized)
        codes = codes.to(self.device)
        return condition_tensors, codes, torch.ones_like(codes, dtype=torch.bool)
