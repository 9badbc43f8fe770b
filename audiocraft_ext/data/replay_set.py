"""The base's own generations for a list of prompts: a replay set that needs no old training data.

Nobody who fine-tunes MusicGen has its training data. What stands in for it is what the frozen
base plays for prompts in the style of its captions: generated once, stored as codes with their
prompts, and reused by every run on the same base (the forgetting control of
`solvers.replay`, and `python -m audiocraft_ext.evaluate` to measure forgetting without old
data, on a held-out part).

On disk, one folder per set, named by its key (`replay_set_key`: the base's weights hash, the
prompts, the seed, the sizes and the generation settings)::

    <cache>/<key>/codes.safetensors   {'codes': int16 [N, K, T]}
    <cache>/<key>/prompts.json        {'version', 'key', 'prompts': [N strings], 'settings': {...}}

The folder is written beside and renamed into place, so an interrupted generation leaves no set.
The same arguments give the same codes: every batch is drawn from a seed of its own.
"""
from dataclasses import dataclass
import hashlib
import json
from pathlib import Path
import typing as tp

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
