"""The adaptation methods of `bench_adaptation.py`, each a model that trains and a way to read it
between the base and the trained state (the trade-off curve).

- **full fine-tuning**: a copy of the base LM, every parameter trainable (MusicGenSolver's step).
  Curve: weight interpolation theta_base + alpha (theta_tuned - theta_base).
- **LoRA** through `peft` (`LoraConfig`, rank r, alpha 2r, no dropout) on every base layer:
  `target_modules` = the `nn.Linear`s `self_attn.out_proj`, `cross_attention.out_proj`,
  `linear1`, `linear2`, and `target_parameters` = `self_attn.in_proj_weight` and
  `cross_attention.in_proj_weight` (AudioCraft keeps q/k/v in one [3D, D] Parameter, not an
  `nn.Linear`: one rank-r update of the whole fused matrix). Embeddings, norms, conditioner and
  heads stay frozen. Curve: the LoRA update scaled by alpha (lora_B x alpha).
  The KL target of replay + distillation needs a second, no-grad base pass with the adapter
  disabled (`disable_adapter()`): its cost is in the step.
- **extension**: `ExtendedLMModel` (N new layers on the frozen base); the KL target comes from the
  same forward (`compute_predictions_with_base`). Curve: `extension_scale`.
- **extension reading a learned mix of the base's states** (a lever, here only): the new layers'
  input is h_L + sum_i w_i * layer_norm(h_i) over the outputs h_i of base layers 1 .. L-1, with
  one weight vector w_i [D] per layer starting at 0 (the identity at step 0). Curve:
  `extension_scale` and the mix scaled together.

Every method's step is the same: a new-domain batch (conditions dropped out as in MusicGenSolver),
MusicGen's masked cross entropy, plus the forgetting control's terms when the method has one
(`audiocraft_ext.solvers.forgetting.ForgettingControl`, the solver's own code), backward, clipping
at 1.0, AdamW (MusicGen's betas and weight decay), AudioCraft's cosine schedule with warm-up.
"""
import copy
from dataclasses import dataclass, field
import tempfile
import typing as tp

import peft
import torch

from audiocraft.models.lm import LMModel, LMOutput
from audiocraft.solvers import builders
from audiocraft.solvers.musicgen import MusicGenSolver

from audiocraft_ext.data.replay_set import ReplaySet
from audiocraft_ext.models.extended_lm import ExtendedLMModel, FrozenBaseWithExtension
from audiocraft_ext.models.feature_cache import BaseFeatureCache
from audiocraft_ext.solvers.forgetting import ForgettingConfig, ForgettingControl, GeneratedReplay, replay_predict

from common import storage_bytes
from adaptation_task import Codes, Task, attributes, cosine_schedule, optim_config, seed_condition_dropouts

LORA_LINEARS = r'.*transformer\.layers\.\d+\.(linear1|linear2|self_attn\.out_proj|cross_attention\.out_proj)'
LORA_PARAMETERS = ['in_proj_weight']


@dataclass(frozen=True)
class Method:
    """One adaptation method and its settings.

    Args:
        name: short id.
        family: 'full', 'lora', 'extension' or 'extension+mix'.
        lrs: learning-rate grid (chosen on new-domain validation).
        rank: LoRA rank.
        new_layers: N as a fraction of the base's L (extension).
        overrides: layer overrides of the new layers, as multiples of the base's FFN size for
            'ffn_scale' (extension).
        replay: None, 'generated' (the base's own generations) or 'old' (old-domain training clips).
        ratio, ce_weight, distill: forgetting control (see `ForgettingControl`).
        warmup: warm-up steps as a fraction of the steps.
        steps_scale: optimizer steps as a multiple of the common number (levers only).
        cache_replay: the base's output on replay examples read from a feature cache (exact:
            the same training; a replay example then costs the new layers and heads only).
    """
    name: str
    family: str
    lrs: tp.Tuple[float, ...]
    rank: int = 0
    new_layers: float = 0.0
    ffn_scale: float = 1.0
    replay: tp.Optional[str] = None
    ratio: float = 0.0
    ce_weight: float = 1.0
    distill: float = 0.0
    warmup: float = 0.1
    steps_scale: float = 1.0
    cache_replay: bool = False
    label: str = ''


def encode_conditions(lm: LMModel, conditions: tp.List[tp.Any]) -> dict:
    """Conditions as MusicGenSolver prepares them: CFG and attribute dropout (in train mode), encoded."""
    conditions = lm.att_dropout(lm.cfg_dropout(conditions))
    return lm.condition_provider(lm.condition_provider.tokenize(conditions))


def musicgen_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor):
    return MusicGenSolver._compute_cross_entropy(None, logits, targets, mask)  # type: ignore  # no `self` used


class Adapted:
    """A method's trainable model: `lm` (an LMModel computing the adapted logits), its trainable
    parameters, `predict` (adapted output and the base's logits) and `set_strength(alpha)`."""
    lm: LMModel
    params: tp.List[torch.nn.Parameter]

    def predict(self, codes, conditions, condition_tensors) -> tp.Tuple[LMOutput, torch.Tensor]:
        raise NotImplementedError

    def set_strength(self, alpha: float) -> None:
        raise NotImplementedError


class FullFineTuning(Adapted):
    def __init__(self, base_lm: LMModel):
        self.base_lm = base_lm
        self.lm = copy.deepcopy(base_lm).requires_grad_(True).train()
        self.params = list(self.lm.parameters())
        self._tuned: tp.Optional[tp.Dict[str, torch.Tensor]] = None

    def predict(self, codes, conditions, condition_tensors):
        if condition_tensors is None:
            condition_tensors, conditions = encode_conditions(self.lm, conditions), []
        output = self.lm.compute_predictions(codes, conditions, condition_tensors)
        with torch.no_grad():
            base = self.base_lm.compute_predictions(codes, [], condition_tensors).logits
        return output, base

    def set_strength(self, alpha: float) -> None:
        if self._tuned is None:
            self._tuned = {k: v.detach().clone() for k, v in self.lm.state_dict().items()}
        base = self.base_lm.state_dict()
        self.lm.load_state_dict({k: base[k] + alpha * (v - base[k]) if v.is_floating_point() else v
                                 for k, v in self._tuned.items()})


class LoRA(Adapted):
    def __init__(self, base_lm: LMModel, rank: int):
        config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=LORA_LINEARS,
                                 target_parameters=LORA_PARAMETERS)
        self.peft_model = peft.get_peft_model(copy.deepcopy(base_lm), config)
        self.lm = self.peft_model.base_model.model
        self.lm.train()
        self.params = [p for p in self.lm.parameters() if p.requires_grad]
        self._tuned: tp.Optional[tp.Dict[str, torch.Tensor]] = None

    def predict(self, codes, conditions, condition_tensors):
        if condition_tensors is None:  # once: both passes see the same dropped-out conditions
            condition_tensors = encode_conditions(self.lm, conditions)
        output = self.lm.compute_predictions(codes, [], condition_tensors)
        with torch.no_grad(), self.peft_model.disable_adapter():
            base = self.lm.compute_predictions(codes, [], condition_tensors).logits  # second base pass
        return output, base

    def set_strength(self, alpha: float) -> None:
        named = dict(self.lm.named_parameters())
        if self._tuned is None:
            self._tuned = {k: p.detach().clone() for k, p in named.items() if 'lora_B' in k}
        with torch.no_grad():
            for k, value in self._tuned.items():
                named[k].copy_(alpha * value)


class Extension(Adapted):
    def __init__(self, base_lm: LMModel, num_layers: int, ffn_scale: float):
        overrides = {}
        if ffn_scale != 1.0:
            overrides['dim_feedforward'] = int(base_lm.transformer.layers[0].linear1.out_features * ffn_scale)
        self.lm = ExtendedLMModel(copy.deepcopy(base_lm), num_layers, **overrides).train()
        self.params = self.lm.trainable_parameters()

    def predict(self, codes, conditions, condition_tensors):
        return self.lm.compute_predictions_with_base(codes, conditions, condition_tensors)

    def set_strength(self, alpha: float) -> None:
        self.lm.extension_scale = alpha


class StateMix(torch.nn.Module):
    """h_L + scale * sum_i w_i * layer_norm(h_i); w [L - 1, D] starts at 0."""
    def __init__(self, num_states: int, dim: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(num_states, dim))
        self.scale = 1.0

    def forward(self, last: torch.Tensor, states: tp.List[torch.Tensor]) -> torch.Tensor:
        mix = sum(w * torch.nn.functional.layer_norm(h, h.shape[-1:]) for w, h in zip(self.weight, states))
        return last + self.scale * mix


class MixedBaseWithExtension(FrozenBaseWithExtension):
    """`FrozenBaseWithExtension` whose new layers read a learned mix of the base's layer outputs."""
    def __init__(self, frozen: FrozenBaseWithExtension):
        super().__init__(frozen.base, frozen.extension)
        dim = frozen.base.layers[0].linear1.in_features
        self.mix = StateMix(len(frozen.base.layers) - 1, dim)
        self._states: tp.List[torch.Tensor] = []
        for layer in frozen.base.layers[:-1]:
            layer.register_forward_hook(lambda module, args, output: self._states.append(output))

    def forward(self, x, cross_attention_src=None, src_mask=None):
        self._states = []
        with torch.no_grad():
            hidden = self.base(x, cross_attention_src=cross_attention_src, src_mask=src_mask)  # [B, S, D]
        states, self._states = self._states, []
        cross = cross_attention_src if self.extension.layers[0].cross_attention is not None else None
        extended = self.extension(self.mix(hidden, states), cross_attention_src=cross)
        return torch.cat([extended, hidden], dim=0) if self.with_base_output else extended


class MixedExtension(Extension):
    def __init__(self, base_lm: LMModel, num_layers: int, ffn_scale: float):
        super().__init__(base_lm, num_layers, ffn_scale)
        self.lm.transformer = MixedBaseWithExtension(self.lm.transformer)
        self.lm.train()
        self.params = self.lm.trainable_parameters()

    def set_strength(self, alpha: float) -> None:
        self.lm.extension_scale = alpha
        self.lm.transformer.mix.scale = alpha


def build_adapted(method: Method, base_lm: LMModel) -> Adapted:
    if method.family == 'full':
        return FullFineTuning(base_lm)
    if method.family == 'lora':
        return LoRA(base_lm, method.rank)
    if method.family in ('extension', 'extension+mix'):
        num_layers = max(1, int(round(method.new_layers * len(base_lm.transformer.layers))))
        build = Extension if method.family == 'extension' else MixedExtension
        return build(base_lm, num_layers, method.ffn_scale)
    raise ValueError(f"Unknown family {method.family!r}")


@dataclass
class Trainer:
    """The training step of one method, as described in the module doc."""
    method: Method
    task: Task
    lr: float
    seed: int
    steps: int
    batch_size: int
    adapted: Adapted = field(init=False)

    def __post_init__(self):
        torch.manual_seed(self.seed)  # the new layers' / LoRA's initialisation
        self.adapted = build_adapted(self.method, self.task.base_lm)
        seed_condition_dropouts(self.adapted.lm, self.seed)
        self.optimizer = builders.get_optimizer(self.adapted.params, optim_config(self.lr))
        self.scheduler = builders.get_lr_scheduler(self.optimizer, cosine_schedule(int(self.method.warmup * self.steps)),
                                                   self.steps)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.train_data: Codes = self.task.codes['new']['train']
        self.control: tp.Optional[ForgettingControl] = None
        if self.method.replay is not None:
            source_set = self.task.replay if self.method.replay == 'generated' else ReplaySet(
                self.task.codes['old']['train'].codes, self.task.codes['old']['train'].captions)
            source = GeneratedReplay(source_set, self.adapted.lm, self.task.sample_rate, seed=self.seed + 1)
            predict = self.adapted.predict
            if self.method.cache_replay:
                assert isinstance(self.adapted, Extension), "the feature cache is the extension's"
                self._cache_dir = tempfile.TemporaryDirectory(prefix='bench_adaptation_cache_')
                self.feature_cache = BaseFeatureCache(self._cache_dir.name, self.adapted.lm.base_transformer)
                predict = replay_predict(self.adapted.lm, self.feature_cache)
            config = ForgettingConfig(ratio=self.method.ratio, ce_weight=self.method.ce_weight,
                                      distill_weight=self.method.distill)
            self.control = ForgettingControl(source, config, predict, musicgen_cross_entropy)

    def step(self) -> float:
        lm = self.adapted.lm
        index = torch.randint(len(self.train_data.captions), (self.batch_size,), generator=self.generator)
        codes = self.train_data.codes[index]  # [B, K, T]
        condition_tensors = encode_conditions(lm, attributes([self.train_data.captions[i] for i in index.tolist()]))
        output = lm.compute_predictions(codes, [], condition_tensors)
        ce, _ = musicgen_cross_entropy(output.logits, codes, output.mask)
        loss = ce
        if self.control is not None:
            extra, _ = self.control.loss(self.batch_size, 'cpu')
            loss = loss + extra
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.adapted.params, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return ce.item()

    def resident_bytes(self) -> int:
        """Weights, buffers and optimizer state (the base copy full fine-tuning keeps for its curve is not
        counted: training without replay does not need it)."""
        tensors = list(self.adapted.lm.parameters()) + list(self.adapted.lm.buffers())
        for state in self.optimizer.state.values():
            tensors += [value for value in state.values() if torch.is_tensor(value)]
        return storage_bytes(tensors)
