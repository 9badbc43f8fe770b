"""The controlled two-domain task of `bench_adaptation.py`: data, codes, a base trained on the old domain.

Everything is cached under `--cache-dir` (default `bench_adaptation` in our cache root, `io.cache_dirs`), keyed
on every parameter that changes it, so the methods of later runs start from the same base:

1. **Data**: `audiocraft_ext.data.synth_domains`' two domains (``old``: slow major pads/organ/flute;
   ``new``: fast minor plucks/leads/bells with drums), each split into train / valid / held-out
   (`evaluate`) clips with their captions.
2. **Tokeniser**: a fixed residual vector quantiser of log-mel frames (64 bands, 50 frames/s:
   hop 320 at 16 kHz), 4 codebooks of 256 fitted by k-means on the *old* domain's training
   clips, like a real MusicGen whose codec was trained with its base's data: every code the new
   domain uses is one the base has seen, and the new domain is new sequences of them (fitted on
   both domains, the first codebook splits into two disjoint vocabularies and the base gives the
   new domain 11.6 nats/token: adaptation is then mostly learning unseen codes). Not a codec
   (nothing is decoded: the benchmark scores and generates tokens only). Why not the demo's tiny
   EnCodec: trained by `CompressionSolver` for the demo's 100 updates it uses 3 to 8 of its 256
   codes per codebook on these clips (entropy 0.1-0.3 nats; a base reaches 0.017 nats/token
   after 100 steps), and an untrained one maps every frame to one code.
3. **Codes**: every clip tokenised once: [N, K, T] per domain and split, with the captions.
4. **Base**: a MusicGen LM (text by cross-attention through a look-up-table conditioner on whole
   captions, delay pattern) trained from scratch on the old domain's training clips with
   MusicGen's loss (CFG dropout 0.2, AdamW, cosine schedule) until its validation cross entropy
   stops improving (`patience` evaluations without a gain of 0.2 %); the best state is kept.
5. **Replay set**: the base's own generations for prompts written in the dataset's caption style
   (half drawn with the old domain's vocabulary, half with the new one's: a user knows the kind of
   captions the base was trained on, not its data), by `audiocraft_ext.data.replay_set`.
"""
from dataclasses import asdict, dataclass
import hashlib
import json
import math
from pathlib import Path
import typing as tp

import numpy as np
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
import soundfile
import torch
import torchaudio

from audiocraft.models import builders as model_builders
from audiocraft.models.lm import LMModel
from audiocraft.modules.conditioners import ConditioningAttributes
from audiocraft.solvers import builders
from audiocraft.solvers.musicgen import MusicGenSolver

from audiocraft_ext.data import replay_set as replay_sets
from audiocraft_ext.data import synth_dataset, synth_domains
from audiocraft_ext.evaluation.lm_metrics import CrossEntropyTotals
from audiocraft_ext.io.hashing import weights_hash
from audiocraft_ext.models.tiny import tiny_lm_config

SAMPLE_RATE = 16000
TASK_VERSION = 1


@dataclass
class TaskSizes:
    """Sizes of the task (per domain for the clip counts)."""
    train: int = 240
    valid: int = 24
    heldout: int = 48
    duration: float = 2.0          # seconds per clip = per training example (100 frames)
    codebooks: int = 4
    card: int = 256
    dim: int = 128
    layers: int = 8
    heads: int = 4
    lut_bins: int = 1024
    base_batch: int = 16
    base_lr: float = 2e-3
    base_max_steps: int = 4000
    base_eval_every: int = 100
    base_patience: int = 4
    replay_samples: int = 96       # base generations: the last `replay_heldout` are held out
    replay_heldout: int = 32


QUICK_TASK = TaskSizes(train=8, valid=4, heldout=4, duration=0.6, card=32, dim=32, layers=4, heads=2,
                       lut_bins=64, base_batch=4, base_max_steps=6, base_eval_every=3, base_patience=1,
                       replay_samples=6, replay_heldout=2)


class Codes(tp.NamedTuple):
    codes: torch.Tensor  # [N, K, T] long
    captions: tp.List[str]


@dataclass
class Task:
    sizes: TaskSizes
    codes: tp.Dict[str, tp.Dict[str, Codes]]  # domain -> split -> codes
    base_lm: LMModel
    base_hash: str
    base_info: dict
    replay: replay_sets.ReplaySet            # the base's generations (training part)
    replay_heldout: replay_sets.ReplaySet    # held out: forgetting measured without old data
    prompts_file: Path
    key: str


def _key(payload: tp.Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def attributes(captions: tp.Sequence[str]) -> tp.List[ConditioningAttributes]:
    return [ConditioningAttributes(text={'description': text}) for text in captions]


def make_data(cache: Path, sizes: TaskSizes, log: tp.Callable[[str], None]) -> Path:
    params = {'synth': synth_domains.SYNTH_VERSION, 'train': sizes.train, 'valid': sizes.valid, 'heldout': sizes.heldout,
              'duration': sizes.duration}
    root = cache / f'data-{_key(params)}'
    if (root / 'done.json').exists():
        return root
    log(f"writing {sizes.train}+{sizes.valid}+{sizes.heldout} clips of {sizes.duration:g} s per domain to {root}")
    splits = (('train', 1), ('valid', sizes.valid), ('evaluate', sizes.heldout))
    for domain in synth_domains.DOMAINS:
        synth_dataset.write_dataset(root, domain, num_clips=sizes.train + sizes.valid + sizes.heldout,
                            duration=sizes.duration, sample_rate=SAMPLE_RATE, seed=0, splits=splits)
    (root / 'done.json').write_text(json.dumps(params))
    return root


FRAME_RATE = 50
HOP = SAMPLE_RATE // FRAME_RATE


def log_mel(wavs: torch.Tensor) -> torch.Tensor:
    """[N, T] audio -> [N, F, 64] log-mel frames at 50 frames/s."""
    mel = torchaudio.transforms.MelSpectrogram(SAMPLE_RATE, n_fft=1024, hop_length=HOP, n_mels=64)(wavs)
    frames = wavs.shape[-1] // HOP
    return torch.log(mel + 1e-5)[..., :frames].transpose(1, 2)  # [N, F, 64]


def kmeans(x: torch.Tensor, k: int, iterations: int = 20, seed: int = 0) -> torch.Tensor:
    """k centroids of the rows of x [M, D] (Lloyd's algorithm, k-means++-like seeding by distance)."""
    generator = torch.Generator().manual_seed(seed)
    centroids = x[torch.randint(len(x), (1,), generator=generator)]
    while len(centroids) < k:  # seed from far points
        distance = torch.cdist(x, centroids).min(dim=1).values ** 2
        centroids = torch.cat([centroids, x[torch.multinomial(distance + 1e-12, 1, generator=generator)]])
    for _ in range(iterations):
        assign = torch.cdist(x, centroids).argmin(dim=1)
        for index in range(k):
            members = x[assign == index]
            if len(members):
                centroids[index] = members.mean(dim=0)
    return centroids


class SpectralQuantizer:
    """Residual k-means quantisation of standardised log-mel frames: [N, T] audio -> [N, K, F] codes."""
    def __init__(self, mean: torch.Tensor, std: torch.Tensor, codebooks: tp.List[torch.Tensor]):
        self.mean, self.std, self.codebooks = mean, std, codebooks

    @staticmethod
    def fit(wavs: torch.Tensor, num_codebooks: int, card: int, max_frames: int = 30000) -> 'SpectralQuantizer':
        frames = log_mel(wavs).reshape(-1, 64)
        frames = frames[torch.randperm(len(frames), generator=torch.Generator().manual_seed(0))[:max_frames]]
        mean, std = frames.mean(dim=0), frames.std(dim=0) + 1e-5
        residual = (frames - mean) / std
        codebooks = []
        for index in range(num_codebooks):
            centroids = kmeans(residual, card, seed=index)
            residual = residual - centroids[torch.cdist(residual, centroids).argmin(dim=1)]
            codebooks.append(centroids)
        return SpectralQuantizer(mean, std, codebooks)

    def encode(self, wavs: torch.Tensor) -> torch.Tensor:
        residual = (log_mel(wavs) - self.mean) / self.std  # [N, F, 64]
        codes = []
        for centroids in self.codebooks:
            index = torch.cdist(residual, centroids[None].expand(len(residual), -1, -1)).argmin(dim=-1)  # [N, F]
            residual = residual - centroids[index]
            codes.append(index)
        return torch.stack(codes, dim=1)  # [N, K, F]


def _read_split(data: Path, domain: str, split: str) -> tp.Tuple[torch.Tensor, tp.List[str]]:
    wavs, texts = [], []
    for wav_path in sorted((data / 'audio' / domain / split).glob('*.wav')):
        wav, _ = soundfile.read(str(wav_path), dtype='float32')
        wavs.append(torch.from_numpy(wav))
        texts.append(json.loads(wav_path.with_suffix('.json').read_text())['description'])
    return torch.stack(wavs), texts


@torch.no_grad()
def tokenise(cache: Path, data: Path, sizes: TaskSizes) -> tp.Tuple[tp.Dict[str, tp.Dict[str, Codes]], str]:
    """Codes of every clip (fitting the quantiser on the old domain's training clips first); cached."""
    key = _key({'data': data.name, 'codebooks': sizes.codebooks, 'card': sizes.card, 'tokeniser': 2})
    path = cache / f'codes-{data.name}-{key}.safetensors'
    if not path.exists():
        splits = {f'{domain}/{split}': _read_split(data, domain, split)
                  for domain in synth_domains.DOMAINS for split in ('train', 'valid', 'evaluate')}
        quantizer = SpectralQuantizer.fit(splits['old/train'][0], sizes.codebooks, sizes.card)
        tensors = {name: torch.cat([quantizer.encode(chunk) for chunk in wavs.split(32)]).to(torch.int16).contiguous()
                   for name, (wavs, _) in splits.items()}
        captions = {name: texts for name, (_, texts) in splits.items()}
        save_file(tensors, str(path), metadata={'captions': json.dumps(captions)})
    from safetensors import safe_open
    with safe_open(str(path), 'pt') as file:
        captions = json.loads(file.metadata()['captions'])
    out: tp.Dict[str, tp.Dict[str, Codes]] = {}
    for name, codes in load_file(str(path)).items():
        domain, split = name.split('/')
        out.setdefault(domain, {})[split] = Codes(codes.long(), captions[name])
    return out, key


def base_config(sizes: TaskSizes, card: int, n_q: int):
    cfg = tiny_lm_config('text', dim=sizes.dim, num_heads=sizes.heads, num_layers=sizes.layers, card=card,
                         n_q=n_q, sample_rate=SAMPLE_RATE)
    cfg.conditioners.description.lut.n_bins = sizes.lut_bins
    return cfg


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


def optim_config(lr: float, weight_decay: float = 0.1):
    """MusicGen's `optim` (AdamW, betas 0.9/0.95, clipping at 1.0) at learning rate `lr`."""
    return OmegaConf.create({'optimizer': 'adamw', 'lr': lr, 'max_norm': 1.0,
                             'adam': {'betas': [0.9, 0.95], 'weight_decay': weight_decay, 'eps': 1e-8}})


def train_base(cache: Path, sizes: TaskSizes, codes: tp.Dict[str, tp.Dict[str, Codes]], codes_key: str,
               card: int, n_q: int, log: tp.Callable[[str], None]) -> tp.Tuple[LMModel, dict]:
    params = {'version': TASK_VERSION, 'codes': codes_key, **asdict(sizes)}
    folder = cache / f'base-{_key(params)}'
    cfg = base_config(sizes, card, n_q)
    if (folder / 'info.json').exists():
        torch.manual_seed(0)
        lm = model_builders.get_lm_model(cfg)
        lm.load_state_dict(load_file(str(folder / 'lm.safetensors')))
        return lm.eval(), json.loads((folder / 'info.json').read_text())
    torch.manual_seed(0)
    lm = model_builders.get_lm_model(cfg).train()
    seed_condition_dropouts(lm, 0)
    optimizer = builders.get_optimizer(lm.parameters(), optim_config(sizes.base_lr, weight_decay=0.0))
    scheduler = builders.get_lr_scheduler(optimizer, cosine_schedule(sizes.base_max_steps // 20),
                                          sizes.base_max_steps)
    train, valid = codes['old']['train'], codes['old']['valid']
    generator = torch.Generator().manual_seed(0)
    best, best_state, since_best, history = math.inf, None, 0, []
    for step in range(1, sizes.base_max_steps + 1):
        index = torch.randint(len(train.captions), (sizes.base_batch,), generator=generator)
        batch = train.codes[index]
        output = lm.compute_predictions(batch, attributes([train.captions[i] for i in index.tolist()]))
        ce, _ = MusicGenSolver._compute_cross_entropy(None, output.logits, batch, output.mask)  # type: ignore
        ce.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % sizes.base_eval_every == 0:
            valid_ce = cross_entropy(lm, valid)
            history.append({'step': step, 'train_ce': ce.item(), 'valid_ce': valid_ce})
            log(f"base step {step}: train ce {ce.item():.3f}, valid ce {valid_ce:.4f}")
            if valid_ce < best * (1 - 0.002):
                best, since_best = valid_ce, 0
                best_state = {k: v.detach().clone() for k, v in lm.state_dict().items()}
            else:
                since_best += 1
                if since_best >= sizes.base_patience:
                    break
    assert best_state is not None
    lm.load_state_dict(best_state)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in best_state.items()}, str(folder / 'lm.safetensors'))
    info = {'steps': history[-1]['step'], 'best_valid_ce': best, 'history': history, 'params': params}
    (folder / 'info.json').write_text(json.dumps(info, indent=2))
    return lm.eval(), info


def caption_style_prompts(count: int, seed: int = 1000) -> tp.List[str]:
    """Captions in the dataset's style, alternately with the old and the new domain's vocabulary."""
    prompts = []
    for index in range(count):
        domain = synth_domains.DOMAINS[index % 2]
        spec = synth_domains.sample_clip_spec(domain, np.random.default_rng([seed, index]))
        prompts.append(synth_domains.caption(spec))
    return prompts


def build_task(cache: Path, sizes: TaskSizes, log: tp.Callable[[str], None]) -> Task:
    cache.mkdir(parents=True, exist_ok=True)
    data = make_data(cache, sizes, log)
    codes, codes_key = tokenise(cache, data, sizes)
    lm, base_info = train_base(cache, sizes, codes, codes_key, sizes.card, sizes.codebooks, log)
    lm.requires_grad_(False)
    base_hash = weights_hash(lm.state_dict())
    prompts_file = cache / f'prompts-{sizes.replay_samples}.txt'
    prompts_file.write_text('\n'.join(caption_style_prompts(sizes.replay_samples)) + '\n')
    num_frames = codes['new']['train'].codes.shape[-1]
    full = replay_sets.cached_replay_set(lm, base_hash, replay_sets.read_prompts(prompts_file), sizes.replay_samples,
                                         num_frames, SAMPLE_RATE, seed=0, cache_dir=cache / 'replay', log=log)
    replay, heldout = full.split(sizes.replay_heldout)
    key = _key({'codes': codes_key, 'base': base_hash, 'replay': full.key})
    return Task(sizes, codes, lm, base_hash, base_info, replay, heldout, prompts_file, key)
