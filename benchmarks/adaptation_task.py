"""The two-domain task of `bench_adaptation.py`: the demo's data, the pretrained tiny MusicGen's codes and base.

The same task as `audiocraft-ext demo` and the tests, built by the same code. Everything is cached
under `--cache-dir` (default `bench_adaptation` in our cache root, `io.cache_dirs`), keyed on every
parameter that changes it, so the methods of later runs start from the same codes and replay set:

1. **Data**: the score set rendered by the demo's own `make_data` (`audiocraft_ext.demo.artefacts`):
   ``old`` = Bach chorales (church organ or strings), ``new`` = Irish dance tunes (fiddle or
   flute), `clips` excerpts of `duration` s per domain, split by piece into train / valid /
   evaluate / generate (70/10/10/10 %), captioned from their scores ("Bach chorale in a minor key,
   church organ", "Irish reel in a major key, fiddle"). The pieces of each split depend on the
   domain only, so the base never heard the valid and evaluate pieces.
2. **Codes**: every clip encoded once by the pretrained codec (`models.shipped`: a 16 kHz EnCodec,
   4 codebooks of 256, 50 frames/s), [N, K, T] per domain and split with the captions, in one
   safetensors file keyed on the codec's sha256 (from its recipe) and the data's folder (itself
   keyed on the data parameters).
3. **Base**: the pretrained base LM (a MusicGen trained on the old domain's train pieces by
   AudioCraft's `MusicGenSolver`, scripts/make_pretrained.py), frozen. The benchmark trains no base.
4. **Replay set**: the base's own generations (`audiocraft_ext.data.replay_set`) for the captions
   the score set gives its pieces, alternately an old and a new domain's (a user knows the kind of
   captions the base was trained on, not its data); the last `replay_heldout` are held out.
"""
from dataclasses import dataclass
import hashlib
import json
from pathlib import Path
import typing as tp

from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file, save_file
import soundfile
import torch

from audiocraft.models.lm import LMModel
from audiocraft.modules.conditioners import ConditioningAttributes

from audiocraft_ext.data import replay_set as replay_sets
from audiocraft_ext.data.score_domains import DOMAINS, load_score_set
from audiocraft_ext.demo.arguments import Sizes
from audiocraft_ext.demo.artefacts import make_data
from audiocraft_ext.evaluation.lm_metrics import CrossEntropyTotals
from audiocraft_ext.io.atomic import atomic_path, atomic_write_text
from audiocraft_ext.models.bases import build_compression_model, build_lm
from audiocraft_ext.models.shipped import read_part, read_recipe

SPLITS = ('train', 'valid', 'evaluate')  # the benchmark's: training, learning-rate choice, scores
DATA_SEED = 0


@dataclass
class TaskSizes:
    """Sizes of the task."""
    clips: int = 400               # per domain, over all splits (70/10/10/10 %); a multiple of 10 deals the
                                   # pieces to the splits as the base's data did (held-out stays unheard)
    duration: float = 2.0          # seconds per clip = per training example (100 frames)
    replay_samples: int = 96       # base generations: the last `replay_heldout` are held out
    replay_heldout: int = 32


QUICK_TASK = TaskSizes(clips=10, duration=1.0, replay_samples=6, replay_heldout=2)


class Codes(tp.NamedTuple):
    codes: torch.Tensor  # [N, K, T] long
    captions: tp.List[str]


@dataclass
class Task:
    sizes: TaskSizes
    data: Path                               # the rendered clips (the demo's `make_data` folder)
    codes: tp.Dict[str, tp.Dict[str, Codes]]  # domain -> split -> codes
    base_lm: LMModel
    base_info: dict                          # the pretrained folder, sha256 of its files, the LM's shape
    sample_rate: int
    replay: replay_sets.ReplaySet            # the base's generations (training part)
    replay_heldout: replay_sets.ReplaySet    # held out: forgetting measured without old data
    prompts_file: Path
    key: str


def _key(payload: tp.Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def attributes(captions: tp.Sequence[str]) -> tp.List[ConditioningAttributes]:
    return [ConditioningAttributes(text={'description': text}) for text in captions]


def _read_split(data: Path, domain: str, split: str) -> tp.Tuple[torch.Tensor, tp.List[str]]:
    """[N, 1, T] audio and the captions of one split."""
    wavs, texts = [], []
    for wav_path in sorted((data / 'audio' / domain / split).glob('*.wav')):
        wav, _ = soundfile.read(str(wav_path), dtype='float32')
        wavs.append(torch.from_numpy(wav))
        texts.append(json.loads(wav_path.with_suffix('.json').read_text())['description'])
    return torch.stack(wavs)[:, None], texts


@torch.no_grad()
def encode_clips(cache: Path, data: Path, pretrained: Path, codec_sha256: str) -> tp.Dict[str, tp.Dict[str, Codes]]:
    """Codes of every clip of `SPLITS` by the pretrained codec (built only when they are not cached)."""
    path = cache / f'codes-{data.name}-{_key({"data": data.name, "codec": codec_sha256})}.safetensors'
    if not path.exists():
        codec = build_compression_model(read_part('codec', pretrained), 'cpu')
        splits = {f'{domain}/{split}': _read_split(data, domain, split) for domain in DOMAINS for split in SPLITS}
        tensors = {name: torch.cat([codec.encode(chunk)[0] for chunk in wavs.split(32)]).to(torch.int16).contiguous()
                   for name, (wavs, _) in splits.items()}
        captions = {name: texts for name, (_, texts) in splits.items()}
        with atomic_path(path, fsync=False) as tmp:
            save_file(tensors, str(tmp), metadata={'captions': json.dumps(captions), 'codec': codec_sha256})
    with safe_open(str(path), 'pt') as file:
        captions = json.loads(file.metadata()['captions'])
    out: tp.Dict[str, tp.Dict[str, Codes]] = {}
    for name, codes in load_file(str(path)).items():
        domain, split = name.split('/')
        out.setdefault(domain, {})[split] = Codes(codes.long(), captions[name])
    return out


def seed_condition_dropouts(lm: torch.nn.Module, seed: int) -> None:
    """Seed the private generators of AudioCraft's condition dropouts (as the solver's `run_epoch`)."""
    for index, module in enumerate(lm.modules()):
        if isinstance(getattr(module, 'rng', None), torch.Generator):
            module.rng.manual_seed(seed + 1 + index)


@torch.no_grad()
def cross_entropy(lm: LMModel, data: Codes, batch_size: int = 16) -> float:
    """Token-weighted cross entropy (nats/token, mean over codebooks) of `lm` in eval mode, with the captions."""
    was_training = lm.training
    lm.eval()
    totals = CrossEntropyTotals(lm.num_codebooks)
    for start in range(0, len(data.captions), batch_size):
        codes = data.codes[start:start + batch_size]
        output = lm.compute_predictions(codes, attributes(data.captions[start:start + batch_size]))
        totals.update(output.logits, codes, output.mask)
    lm.train(was_training)
    return totals.summary()['ce']


def cosine_schedule(warmup: int) -> tp.Any:
    return OmegaConf.create({'lr_scheduler': 'cosine',
                             'cosine': {'warmup': warmup, 'lr_min_ratio': 0.0, 'cycle_length': 1.0}})


def optim_config(lr: float):
    """MusicGen's `optim` (AdamW, betas 0.9/0.95, weight decay 0.1, clipping at 1.0) at learning rate `lr`."""
    return OmegaConf.create({'optimizer': 'adamw', 'lr': lr, 'max_norm': 1.0,
                             'adam': {'betas': [0.9, 0.95], 'weight_decay': 0.1, 'eps': 1e-8}})


def caption_style_prompts(count: int) -> tp.List[str]:
    """`count` prompts: the captions the score set gives its pieces, alternately an old and a new domain's."""
    pieces = load_score_set()['pieces']
    captions = {domain: sorted({piece.caption() for piece in pieces if piece.domain == domain}) for domain in DOMAINS}
    return [captions[DOMAINS[index % 2]][(index // 2) % len(captions[DOMAINS[index % 2]])] for index in range(count)]


def build_task(cache: Path, pretrained: Path, sizes: TaskSizes, log: tp.Callable[[str], None]) -> Task:
    """The task of the module doc, from the pretrained folder `pretrained` (`models.shipped`'s layout)."""
    cache.mkdir(parents=True, exist_ok=True)
    recipe = read_recipe(pretrained)
    codec_sha256, base_sha256 = recipe['codec']['sha256'], recipe['base_lm']['sha256']
    sample_rate = int(OmegaConf.create(recipe['codec']['config']).sample_rate)
    data = make_data(cache, Sizes(clips=sizes.clips, duration=sizes.duration), DATA_SEED, sample_rate, no_cache=False)
    codes = encode_clips(cache, data, pretrained, codec_sha256)
    package = read_part('base_lm', pretrained)
    lm = build_lm(package['xp.cfg'], package['best_state'], 'cpu').requires_grad_(False)
    transformer = lm.cfg.transformer_lm
    base_info = {'folder': str(pretrained), 'codec_sha256': codec_sha256, 'base_lm_sha256': base_sha256,
                 'dim': lm.dim, 'layers': len(lm.transformer.layers), 'heads': int(transformer.num_heads),
                 'codebooks': lm.num_codebooks, 'card': lm.card,
                 'clips': {domain: {split: len(codes[domain][split].captions) for split in SPLITS}
                           for domain in DOMAINS}}
    prompts_file = cache / f'prompts-{sizes.replay_samples}.txt'
    atomic_write_text(prompts_file, '\n'.join(caption_style_prompts(sizes.replay_samples)) + '\n')
    num_frames = codes['new']['train'].codes.shape[-1]
    full = replay_sets.cached_replay_set(lm, base_sha256, replay_sets.read_prompts(prompts_file), sizes.replay_samples,
                                         num_frames, sample_rate, seed=0, cache_dir=cache / 'replay', log=log)
    replay, heldout = full.split(sizes.replay_heldout)
    key = _key({'data': data.name, 'codec': codec_sha256, 'base': base_sha256, 'replay': full.key})
    return Task(sizes, data, codes, lm, base_info, sample_rate, replay, heldout, prompts_file, key)
