"""Memory and compute plan of one training step, before training: the extension vs full fine-tuning.

Predicts the peak accelerator memory of one step of `ExtendedMusicGenSolver` (frozen base, N new
layers, AdamW over the new layers) and of full fine-tuning of the same base (`MusicGenSolver`, every
LM parameter trained), from the base's shapes and the run's settings, without loading a weight.
Pure arithmetic (no torch), so `audiocraft-ext plan` answers at once.

One step, as the solvers run it, holds:

    resident                the weights (LM, text encoder, codec) and AdamW's two moments per
                            trainable parameter, all step long
    codec encode            the audio batch and the codec encoder's activations (no gradient); with
                            old-domain replay audio, again mid-step for the replay examples, the
                            new-domain forward's tensors held meanwhile
    base forward            (extension) one frozen layer's working set, no gradient
    backward start          every tensor saved for backward and the logits' working set, at its
                            largest in the cross entropy's backward (with checkpointing, also a
                            new layer's recomputation)
    optimizer step          the gradients, the logits the solver still holds, AdamW's temporary

    peak = resident + the largest of these phases

On several ranks (`rank_plans`, `audiocraft-ext plan --ranks`) every rank holds that step's memory
when the new layers are replicated (`fsdp.use=false`); sharded (`fsdp.use=true`,
`sharded_extension_step`) their weights, gradients and AdamW state are 1/ranks per rank, gathered
back whole for the forward and backward.

Symbols: B examples, T = segment x frame rate frames, S = T + 1 positions (the delay pattern's
first step), P prepended condition positions (melody), K codebooks of V codes, D model width, F
feed-forward width, H heads, L base layers, N new layers, a bytes per activation (4 in float32, 2
under bfloat16 / float16 autocast), r = 4 bytes of the float32 residual stream.

Validated on CPU against the bytes torch's allocator hands out (benchmarks/bench_memory_plan.py,
docs/BENCHMARKS.md §7). It counts tensors: the CUDA context and the caching allocator's
fragmentation are outside it, hence `HEADROOM` when deciding what fits.
"""
from dataclasses import dataclass, field, replace
import math
import typing as tp

GIB = 2 ** 30
FLOAT32 = 4
PRECISIONS = ('float32', 'bfloat16', 'float16')  # float32: autocast off; otherwise the autocast dtype
# Tokens of a caption, padded to the longest of the batch (T5). Only the text's keys and values
# (cross-attention) or its prepended positions (melody) depend on it.
TEXT_TOKENS = 64
# Of the memory a device has, the plan may use this fraction: the rest is for the caching
# allocator's rounding and fragmentation, and for what the plan does not count (cuDNN workspaces).
HEADROOM = 0.9
# What the CUDA context takes on a card before any tensor (a device's total, `--gpu-memory`).
CUDA_CONTEXT_BYTES = GIB // 2
# The codec encoder's activations, in units of its first convolution's output [B, C_f, samples]
# in float32 (input kept for the skip, ELU output, padded copy, convolution output; measured 4.5
# to 5.5 on AudioCraft's and transformers' EnCodec, docs/BENCHMARKS.md §7).
CODEC_ACTIVATION_UNITS = 5.0

T5_BASE_ENCODER_PARAMS = 109_628_544   # transformers' T5EncoderModel of t5-base (d_model 768)
T5_BASE_DIM = 768
ENCODEC_32KHZ_PARAMS = 58_990_022      # facebook/encodec_32khz: weights and codebook buffers
ENCODEC_32KHZ_FILTERS = 64             # channels of its first convolution
CHROMA_FRAME_RATE = 32000 / 4096       # musicgen-melody's chroma: hop 2**14 / 4 samples at 32 kHz


class MemoryPlanError(ValueError):
    """A training run whose planned step does not fit in the memory its device has."""


# ---------------------------------------------------------------------------------------------
# Shapes

@dataclass(frozen=True)
class BaseShape:
    """What memory depends on in a MusicGen base.

    Attributes:
        name: how the base was named (hub id, path).
        dim, num_heads, num_layers, ffn_dim: the transformer (D, H, L, F).
        n_q, card: K codebooks of V codes.
        cross_attention: text fused by cross-attention (else prepended to the codes).
        lm_params: every parameter of the LM (layers, embeddings, heads, norms, condition projections).
        layer_params: one transformer layer.
        text_encoder_params: the frozen text encoder (T5), held by the conditioner outside the LM.
        codec_params: the compression model, weights and buffers.
        codec_filters: channels of the codec encoder's first convolution (C_f).
        sample_rate, channels, frame_rate: the audio and the codes.
        prepend_rate: condition positions prepended per second of audio (melody's chroma), 0 if none.
        prepend_text: the caption's T_c positions prepended to the codes (melody).
        source: 'published' (hard-coded shapes) or where the config was read.
    """
    name: str
    dim: int
    num_heads: int
    num_layers: int
    ffn_dim: int
    n_q: int
    card: int
    cross_attention: bool
    lm_params: int
    layer_params: int
    text_encoder_params: int
    codec_params: int
    codec_filters: int
    sample_rate: int
    channels: int
    frame_rate: float
    prepend_rate: float = 0.0
    prepend_text: bool = False
    source: str = 'published'

    @property
    def heads_params(self) -> int:
        """The K output linears, D x V each (no bias)."""
        return self.n_q * self.dim * self.card


def layer_params(dim: int, ffn_dim: int, cross_attention: bool, bias: bool = False) -> int:
    """One pre-norm layer: self-attention 4D^2, cross-attention 4D^2, feed-forward 2DF, a LayerNorm
    (2D) per block; with `bias`, 4D (+4D) + F + D more."""
    blocks = 3 if cross_attention else 2
    count = (blocks - 1) * 4 * dim * dim + 2 * dim * ffn_dim + blocks * 2 * dim
    if bias:
        count += (blocks - 1) * 4 * dim + ffn_dim + dim
    return count


def published_shape(name: str, dim: int, num_heads: int, num_layers: int, melody: bool = False) -> BaseShape:
    """A released MusicGen: pre-norm layers without biases, F = 4D, 4 codebooks of 2048 at 50 frames/s,
    32 kHz mono EnCodec, t5-base text encoder (its 768-wide output projected to D). The text goes
    through cross-attention, except for melody, where chroma and text are prepended."""
    ffn_dim, n_q, card = 4 * dim, 4, 2048
    layer = layer_params(dim, ffn_dim, cross_attention=not melody)
    lm = (num_layers * layer + n_q * (card + 1) * dim + n_q * dim * card + 2 * dim  # layers, embeddings, heads, out_norm
          + T5_BASE_DIM * dim + dim)                                                 # text projection
    if melody:
        lm += 12 * dim + dim  # chroma projection
    return BaseShape(name=name, dim=dim, num_heads=num_heads, num_layers=num_layers, ffn_dim=ffn_dim, n_q=n_q,
                     card=card, cross_attention=not melody, lm_params=lm, layer_params=layer,
                     text_encoder_params=T5_BASE_ENCODER_PARAMS, codec_params=ENCODEC_32KHZ_PARAMS,
                     codec_filters=ENCODEC_32KHZ_FILTERS, sample_rate=32000, channels=1, frame_rate=50.0,
                     prepend_rate=CHROMA_FRAME_RATE if melody else 0.0, prepend_text=melody)


PUBLISHED: tp.Dict[str, BaseShape] = {
    shape.name: shape for shape in (
        published_shape('facebook/musicgen-small', 1024, 16, 24),
        published_shape('facebook/musicgen-medium', 1536, 24, 48),
        published_shape('facebook/musicgen-large', 2048, 32, 48),
        published_shape('facebook/musicgen-melody', 1536, 24, 48, melody=True),
    )}


def shape_of_musicgen(name: str, lm: tp.Any, compression_model: tp.Any = None, source: str = 'model') -> BaseShape:
    """The shape of a built base: an `LMModel` (and its compression model), parameters counted."""
    from .layers import base_layer_config
    config = base_layer_config(lm.transformer)
    fused = lm.fuser.fuse2cond
    conditioners = lm.condition_provider.conditioners
    text = sum(sum(p.numel() for p in conditioner.t5.parameters())
               for conditioner in conditioners.values() if getattr(conditioner, 't5', None) is not None)
    prepend_rate = 0.0
    for name_ in fused.get('prepend', []):
        chroma = getattr(conditioners[name_], 'chroma', None)
        if chroma is not None:
            prepend_rate += chroma.sample_rate / chroma.winhop
    codec = dict(codec_params=0, codec_filters=0, sample_rate=0, channels=0, frame_rate=50.0)
    if compression_model is not None:
        first_conv = next((m for m in compression_model.modules() if type(m).__name__ == 'Conv1d'), None)
        codec = dict(codec_params=sum(t.numel() for t in list(compression_model.parameters())
                                      + list(compression_model.buffers())),
                     codec_filters=first_conv.out_channels if first_conv is not None else 0,
                     sample_rate=int(compression_model.sample_rate), channels=int(compression_model.channels),
                     frame_rate=float(compression_model.frame_rate))
    return BaseShape(name=name, dim=config['d_model'], num_heads=config['num_heads'], num_layers=len(lm.transformer.layers),
                     ffn_dim=config['dim_feedforward'], n_q=lm.n_q, card=lm.card,
                     cross_attention=bool(fused.get('cross')),
                     lm_params=sum(p.numel() for p in lm.parameters()),
                     layer_params=sum(p.numel() for p in lm.transformer.layers[0].parameters()),
                     text_encoder_params=text, prepend_rate=prepend_rate,
                     prepend_text='description' in fused.get('prepend', []), source=source, **codec)


# ---------------------------------------------------------------------------------------------
# Settings

@dataclass(frozen=True)
class Settings:
    """What a run sets (defaults: configs/solver/extended_musicgen.yaml).

    Attributes:
        new_layers: N.
        batch_size: B, examples per step on one device.
        segment: seconds per example.
        precision: 'float32' (autocast off), 'bfloat16' or 'float16' (autocast dtype).
        replay_ratio: replay examples per example (forgetting control; the extension only).
        feature_cache: the frozen base's outputs read from disk (changes compute, not memory: the
            base stays loaded for misses).
        replay_feature_cache: the base's outputs on replay examples read from their own cache
            (`replay.feature_cache`, on by default): compute only, as `feature_cache`.
        replay_from_audio: replay examples are old-domain audio (`replay.manifest`), encoded by the
            codec in the middle of the step, while the new-domain forward's tensors are held.
        half_base: the frozen base transformer stored in float16 (`extended_model.base_dtype`).
        checkpointing: activation checkpointing of the new layers.
        foreach: AdamW's multi-tensor update (torch's default on CUDA; one tensor at a time on CPU).
        text_tokens: caption tokens per example.
    """
    new_layers: int = 12
    batch_size: int = 16
    segment: float = 30.0
    precision: str = 'bfloat16'
    replay_ratio: float = 0.5
    feature_cache: bool = False
    replay_feature_cache: bool = True
    replay_from_audio: bool = False
    half_base: bool = False
    checkpointing: bool = False
    foreach: bool = True
    text_tokens: int = TEXT_TOKENS

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: use one of {', '.join(PRECISIONS)}.")
        for name, value, valid, what in (('new_layers', self.new_layers, self.new_layers >= 1, 'a positive integer'),
                                         ('batch_size', self.batch_size, self.batch_size >= 1, 'a positive integer'),
                                         ('segment', self.segment, self.segment > 0, 'a positive number of seconds'),
                                         ('replay_ratio', self.replay_ratio, self.replay_ratio >= 0, 'a number >= 0')):
            if not valid:
                raise ValueError(f"{name}={value}: use {what}.")

    @property
    def autocast(self) -> bool:
        return self.precision != 'float32'

    @property
    def activation_bytes(self) -> int:
        """a: 2 under autocast (linear and attention outputs), 4 in float32."""
        return 2 if self.autocast else FLOAT32


def replay_examples(settings: Settings) -> int:
    """B_r = max(1, round(ratio x B)) when ratio > 0 (`solvers.forgetting.replay_size`), else 0."""
    return max(1, int(round(settings.replay_ratio * settings.batch_size))) if settings.replay_ratio > 0 else 0


def sequence(shape: BaseShape, settings: Settings) -> tp.Tuple[int, int, int]:
    """(T frames, S = T + 1 positions, P prepended positions) of one example."""
    frames = int(settings.segment * shape.frame_rate)
    prefix = 0
    if shape.prepend_rate:
        prefix = int(settings.segment * shape.prepend_rate) + 1
    if shape.prepend_text:
        prefix += settings.text_tokens
    return frames, frames + 1, prefix


# ---------------------------------------------------------------------------------------------
# Terms (bytes)

def layer_activation_bytes(shape: BaseShape, settings: Settings, examples: int) -> int:
    """What one trained layer saves for backward, for `examples` of S + P positions.

    Per position: self-attention r·D (its LayerNorm's input) + a·D (normalised) + 3a·D (q, k, v) +
    a·D (attention output) + 4H (log-sum-exp); cross-attention r·D + a·D + a·D (q) + a·D + 4H;
    feed-forward r·D + a·D + 2a·F (linear and GELU outputs); 8 bytes per LayerNorm (mean, rstd).
    Under autocast each attention output is also saved as its [B, S, D] rearrangement (+a·D).
    Per example, cross-attention's keys and values over the caption: 2a·D·T_c.
    """
    d, a, r = shape.dim, settings.activation_bytes, FLOAT32
    extra = a * d if settings.autocast else 0
    per_position = r * d + a * d + 3 * a * d + a * d + extra + 4 * shape.num_heads  # self-attention
    per_position += r * d + a * d + 2 * a * shape.ffn_dim                          # feed-forward
    norms = 2
    per_example = 0
    if shape.cross_attention:
        per_position += r * d + a * d + a * d + a * d + extra + 4 * shape.num_heads
        norms += 1
        per_example = 2 * a * d * settings.text_tokens
    per_position += 8 * norms
    _, positions, prefix = sequence(shape, settings)
    return examples * ((positions + prefix) * per_position + per_example)


def checkpointed_layer_bytes(shape: BaseShape, settings: Settings, examples: int) -> int:
    """What a checkpointed layer saves: its input, r·D per position (recomputed in backward)."""
    _, positions, prefix = sequence(shape, settings)
    return examples * (positions + prefix) * FLOAT32 * shape.dim


def heads_activation_bytes(shape: BaseShape, settings: Settings, rows: int) -> int:
    """What the output norm and heads save for `rows` examples: r·D (the norm's input) + a·D (its
    output, the heads' input) + 8 per position."""
    _, positions, prefix = sequence(shape, settings)
    return rows * (positions + prefix) * (FLOAT32 * shape.dim + settings.activation_bytes * shape.dim + 8)


def logits_bytes(shape: BaseShape, settings: Settings, rows: int, dtype_bytes: tp.Optional[int] = None) -> int:
    """U: one logits tensor [rows, K, S, V] (a bytes per value unless `dtype_bytes`)."""
    _, positions, _ = sequence(shape, settings)
    return rows * shape.n_q * positions * shape.card * (dtype_bytes or settings.activation_bytes)


def cross_entropy_backward_bytes(shape: BaseShape, settings: Settings, rows: int) -> int:
    """The logits' working set at its largest, in the cross entropy's backward (codebook K-1 done):
    the logits the solver holds (U_a) + the log-softmax outputs of the K-2 codebooks not yet done
    ((K-2)/K · U_4) + the logits' gradient being accumulated (U_a) + the next codebook's
    zero-filled gradient (U_a) + its incoming gradient (U_a / K)."""
    k = shape.n_q
    held = logits_bytes(shape, settings, rows)
    log_softmax = logits_bytes(shape, settings, rows, FLOAT32)
    return held + log_softmax * max(0, k - 2) // k + 2 * held + held // k


def replay_backward_bytes(shape: BaseShape, settings: Settings, rows: int) -> int:
    """The replay examples' loss terms at their largest (their backward runs first): the saved
    log-softmax of their cross entropy and of the KL term and exp(base log-probabilities)
    (3 U_4 for B_r rows), less the codebook done, plus the gradient of their 2·B_r-row logits
    (extended and base halves: 2 U_a) and its zero-filled copy (2 U_a)."""
    k = shape.n_q
    saved = 3 * logits_bytes(shape, settings, rows, FLOAT32)
    held = logits_bytes(shape, settings, 2 * rows)
    return saved * (k - 1) // k + 2 * held


def codec_phase_bytes(shape: BaseShape, settings: Settings, examples: tp.Optional[int] = None) -> int:
    """The audio batch [B, C, samples] in float32 + the codec encoder's activations,
    `CODEC_ACTIVATION_UNITS` x [B, C_f, samples] in float32 (no gradient, no autocast), for B or
    `examples` examples."""
    samples = int(settings.segment * shape.sample_rate)
    batch = settings.batch_size if examples is None else examples
    return int(batch * samples * FLOAT32 * (shape.channels + CODEC_ACTIVATION_UNITS * shape.codec_filters))


def base_forward_bytes(shape: BaseShape, settings: Settings, examples: int) -> int:
    """One frozen layer's working set without gradient: its input and output r·D, q, k, v 3a·D, the
    attention output a·D, the feed-forward's 2a·F, per position; with `half_base`, the float32
    copy of the layer's weights (4 bytes per parameter) while it runs."""
    _, positions, prefix = sequence(shape, settings)
    a = settings.activation_bytes
    per_position = 2 * FLOAT32 * shape.dim + 4 * a * shape.dim + 2 * a * shape.ffn_dim
    copies = FLOAT32 * shape.layer_params if settings.half_base else 0
    return examples * (positions + prefix) * per_position + copies


# ---------------------------------------------------------------------------------------------
# One step

@dataclass(frozen=True)
class StepMemory:
    """The memory of one training step (bytes).

    Attributes:
        trainable: trainable parameters.
        weights: every weight and buffer on the device (LM, text encoder, codec).
        optimizer_state: AdamW's two moments, 8 bytes per trainable parameter.
        gradients: 4 bytes per trainable parameter (float32 weights), at the optimizer step.
        activations: tensors saved for backward (layers, heads, autocast's weight copies).
        logits: the logits' working set at the start of backward.
        phases: transient bytes of each phase above the resident ones.
    """
    trainable: int
    weights: int
    optimizer_state: int
    gradients: int
    activations: int
    logits: int
    phases: tp.Dict[str, int] = field(default_factory=dict)

    @property
    def resident(self) -> int:
        return self.weights + self.optimizer_state

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.__getitem__)

    @property
    def peak(self) -> int:
        """resident + the largest phase."""
        return self.resident + max(self.phases.values())


def _optimizer_phase(shape: BaseShape, settings: Settings, trainable: int, largest_param: int) -> int:
    """Gradients (4 bytes per trainable parameter) + the logits the solver still holds (U_a) +
    AdamW's temporary: sqrt(v) for every trainable parameter at once (4 per parameter) with
    `foreach`, else the largest parameter's three temporaries."""
    temporary = FLOAT32 * trainable if settings.foreach else 3 * FLOAT32 * largest_param
    return FLOAT32 * trainable + logits_bytes(shape, settings, settings.batch_size) + temporary


def _other_weights(shape: BaseShape) -> int:
    """The text encoder and the codec, float32."""
    return FLOAT32 * (shape.text_encoder_params + shape.codec_params)


def extension_step(shape: BaseShape, settings: Settings) -> StepMemory:
    """One step of `ExtendedMusicGenSolver`: the frozen base runs without gradient (its weights and a
    layer's working set), the N new layers train (activations, gradients, AdamW), the frozen heads
    pass the gradient through; `replay_ratio` adds B_r replay examples scored with the base's
    logits from the same forward (new layers on B_r examples, heads on 2·B_r)."""
    batch, replay = settings.batch_size, replay_examples(settings)
    new = settings.new_layers * shape.layer_params
    base_layers = shape.num_layers * shape.layer_params
    base = (2 if settings.half_base else FLOAT32) * base_layers + FLOAT32 * (shape.lm_params - base_layers)
    weights = base + FLOAT32 * new + _other_weights(shape)
    examples = batch + replay
    if settings.checkpointing:
        layers = settings.new_layers * checkpointed_layer_bytes(shape, settings, examples)
        recompute = layer_activation_bytes(shape, settings, examples)
    else:
        layers = settings.new_layers * layer_activation_bytes(shape, settings, examples)
        recompute = 0
    activations = layers + heads_activation_bytes(shape, settings, batch + 2 * replay)
    if settings.autocast:  # low-precision copies saved for backward: new layers (cached), heads (per call)
        activations += 2 * new + 2 * shape.heads_params * (2 if replay else 1)
    main = cross_entropy_backward_bytes(shape, settings, batch)
    logits = main
    if replay:  # the replay terms' backward runs first, the new-domain logits and log-softmax held
        held = logits_bytes(shape, settings, batch) + logits_bytes(shape, settings, batch, FLOAT32)
        logits = max(main, held + replay_backward_bytes(shape, settings, replay))
    held_main = 0
    if replay and settings.replay_from_audio:  # after the new-domain loss: its saved tensors, logits, log-softmax
        held_main = (activations * batch // examples + logits_bytes(shape, settings, batch)
                     + logits_bytes(shape, settings, batch, FLOAT32) + codec_phase_bytes(shape, settings, replay))
    phases = {
        'codec encode': codec_phase_bytes(shape, settings),
        'replay codec encode': held_main,
        'base forward': base_forward_bytes(shape, settings, examples) if not settings.feature_cache else 0,
        'backward start': activations + logits,
        'recompute': (activations - heads_activation_bytes(shape, settings, batch + 2 * replay)
                      + recompute + logits_bytes(shape, settings, batch) + FLOAT32 * new) if recompute else 0,
        'optimizer step': _optimizer_phase(shape, settings, new, shape.dim * shape.ffn_dim),
    }
    return StepMemory(trainable=new, weights=weights, optimizer_state=2 * FLOAT32 * new, gradients=FLOAT32 * new,
                      activations=activations, logits=logits, phases=phases)


def full_finetuning_step(shape: BaseShape, settings: Settings) -> StepMemory:
    """One step of `MusicGenSolver` fine-tuning the whole LM (no replay, no checkpointing, float32
    weights): every layer's activations, every LM parameter's gradient and AdamW state."""
    batch = settings.batch_size
    trainable = shape.lm_params
    weights = FLOAT32 * trainable + _other_weights(shape)
    _, positions, prefix = sequence(shape, settings)
    activations = (shape.num_layers * layer_activation_bytes(shape, settings, batch)
                   + heads_activation_bytes(shape, settings, batch)
                   + batch * (positions + prefix) * 8 * shape.n_q)  # the embeddings' indices
    if settings.autocast:  # every layer's and head's low-precision copy, cached for backward
        activations += 2 * (shape.num_layers * shape.layer_params + shape.heads_params)
    logits = cross_entropy_backward_bytes(shape, settings, batch)
    largest = max(shape.dim * shape.ffn_dim, (shape.card + 1) * shape.dim)
    phases = {'codec encode': codec_phase_bytes(shape, settings),
              'backward start': activations + logits,
              'optimizer step': _optimizer_phase(shape, settings, trainable, largest)}
    return StepMemory(trainable=trainable, weights=weights, optimizer_state=2 * FLOAT32 * trainable,
                      gradients=FLOAT32 * trainable, activations=activations, logits=logits, phases=phases)


# Gradients in flight in a sharded backward (`sharded_extension_step`), in units of one new layer's
# float32 gradient: that layer's whole gradient, the reduce-scatter's input copy and output, and the
# next layer's gradient. 3.4 measured (torch's MemTracker, 2 CPU ranks, torch 2.9's fully_shard, a
# 512-wide base of 12 layers and 4 new layers; the replicated step's peak was predicted exactly).
FSDP_GRADIENT_UNITS = 3.5


def sharded_extension_step(shape: BaseShape, settings: Settings, ranks: int) -> StepMemory:
    """`extension_step` on each of `ranks` ranks with the new layers sharded (`fsdp.use=true`,
    `solvers.sharding`): their weights, gradients and AdamW state are 1/W per rank between steps
    (P_W = ceil(P / W) parameters of P); in the forward and backward each rank gathers the others'
    share of the new layers, 4(P - P_W) bytes (`shard_grad_op`: gathered until the backward is done),
    and `FSDP_GRADIENT_UNITS` layers' worth of float32 gradients are in flight in the backward. The
    frozen base, text encoder and codec stay whole on every rank; `settings.batch_size` is per rank.
    One rank is `extension_step` itself."""
    step = extension_step(shape, settings)
    if ranks == 1:
        return step
    new = settings.new_layers * shape.layer_params
    local = math.ceil(new / ranks)
    gathered = FLOAT32 * (new - local)
    phases = dict(step.phases)
    phases['backward start'] += gathered + int(FSDP_GRADIENT_UNITS * FLOAT32 * shape.layer_params)
    if phases['recompute']:
        phases['recompute'] += gathered
    phases['optimizer step'] = _optimizer_phase(shape, settings, local, math.ceil(shape.dim * shape.ffn_dim / ranks))
    return replace(step, weights=step.weights - FLOAT32 * (new - local), optimizer_state=2 * FLOAT32 * local,
                   gradients=FLOAT32 * local, phases=phases)


RANKS = (1, 2, 4, 8)


@dataclass(frozen=True)
class RankPlan:
    """The extension's step on each rank of `ranks` ranks, the new layers replicated (`fsdp.use=false`:
    every rank holds them whole, flashy averages their gradients) and sharded (`fsdp.use=true`; None for
    one rank, which has nothing to shard with). `largest`: {'replicated': B, 'sharded': B}, the largest
    batch per rank that fits the budget (empty without one)."""
    ranks: int
    replicated: StepMemory
    sharded: tp.Optional[StepMemory]
    largest: tp.Dict[str, int] = field(default_factory=dict)


def rank_plans(shape: BaseShape, settings: Settings, ranks: tp.Sequence[int] = RANKS,
               budget: tp.Optional[float] = None) -> tp.List[RankPlan]:
    """Per-rank memory of the extension's step for each number of ranks (`settings.batch_size` per rank)."""
    plans = []
    for count in ranks:
        if count < 1:
            raise ValueError(f"ranks={count}: use a positive number of ranks.")
        sharded = sharded_extension_step(shape, settings, count) if count > 1 else None
        largest = {}
        if budget is not None:
            largest['replicated'] = largest_batch(extension_step, shape, settings, budget)
            if count > 1:
                largest['sharded'] = largest_batch(lambda shape_, settings_: sharded_extension_step(
                    shape_, settings_, count), shape, settings, budget)
        plans.append(RankPlan(count, extension_step(shape, settings), sharded, largest))
    return plans


# ---------------------------------------------------------------------------------------------
# Compute

def step_flops(shape: BaseShape, settings: Settings, full: bool = False) -> float:
    """Matmul and attention FLOPs of one step (what `torch.utils.flop_counter` counts; causal
    attention counted in full). Per position and layer, forward: 2·(4D^2 + 2DF) + 4·(S + P)·D for
    self-attention, 2·2D^2 + 4·T_c·D for cross-attention (and 2·2D^2·T_c per example for its keys
    and values); heads 2·D·K·V. Backward: twice the forward where weights train, once where only
    the input's gradient flows (frozen heads of the extension). The extension skips the base's
    forward with `feature_cache`, and on replay examples with `replay_feature_cache` (every example
    a hit)."""
    frames, positions, prefix = sequence(shape, settings)
    length = positions + prefix
    d, f = shape.dim, shape.ffn_dim

    def layers(examples: int) -> float:
        per_position = 2 * (4 * d * d + 2 * d * f) + 4 * length * d
        per_example = 0.0
        if shape.cross_attention:
            per_position += 2 * 2 * d * d + 4 * settings.text_tokens * d
            per_example = 2 * 2 * d * d * settings.text_tokens
        return examples * (length * per_position + per_example)

    def heads(rows: int) -> float:
        return rows * positions * 2 * d * shape.n_q * shape.card

    batch = settings.batch_size
    if full:
        return 3 * (shape.num_layers * layers(batch) + heads(batch))
    replay = replay_examples(settings)
    base_examples = 0 if settings.feature_cache else batch + (0 if settings.replay_feature_cache else replay)
    base = shape.num_layers * layers(base_examples)
    new = 3 * settings.new_layers * layers(batch + replay)
    if settings.checkpointing:
        new += settings.new_layers * layers(batch + replay)
    return base + new + 2 * heads(batch + 2 * replay)


# ---------------------------------------------------------------------------------------------
# The plan

def usable_bytes(total_bytes: float) -> float:
    """What a step may use of a card of `total_bytes`: `HEADROOM` x (total - the CUDA context)."""
    return HEADROOM * (total_bytes - CUDA_CONTEXT_BYTES)


def card_note(total_gib: float) -> str:
    """How `usable_bytes` of a card of `total_gib` GiB was reckoned, in words."""
    return (f"{100 * HEADROOM:.0f} % of {total_gib:g} GiB less {CUDA_CONTEXT_BYTES / GIB:g} GiB of CUDA context")


def largest_batch(step: tp.Callable[[BaseShape, Settings], StepMemory], shape: BaseShape, settings: Settings,
                  budget: float, limit: int = 1 << 16) -> int:
    """The largest batch whose step's peak is at most `budget` bytes (0 if not even one example)."""
    if step(shape, replace(settings, batch_size=1)).peak > budget:
        return 0
    low, high = 1, limit
    while low < high:
        middle = (low + high + 1) // 2
        if step(shape, replace(settings, batch_size=middle)).peak <= budget:
            low = middle
        else:
            high = middle - 1
    return low


@dataclass(frozen=True)
class Plan:
    """Both steps side by side, and what fits a budget.

    Attributes:
        budget: bytes a step may use (None: no device given); `budget_note` says where it comes from.
        largest: {'extension': B, 'full fine-tuning': B} that fit `budget`.
        accumulation: {name: (steps, batch per step)}: the fewest steps of at most the largest batch
            that reach `effective_batch`.
    """
    shape: BaseShape
    settings: Settings
    extension: StepMemory
    full: StepMemory
    extension_flops: float
    full_flops: float
    budget: tp.Optional[float] = None
    budget_note: str = ''
    largest: tp.Dict[str, int] = field(default_factory=dict)
    effective_batch: tp.Optional[int] = None
    accumulation: tp.Dict[str, tp.Tuple[int, int]] = field(default_factory=dict)


def make_plan(shape: BaseShape, settings: Settings, budget: tp.Optional[float] = None,
              effective_batch: tp.Optional[int] = None, budget_note: str = '') -> Plan:
    """The extension's and full fine-tuning's steps; with `budget` (bytes), the largest batches."""
    largest, accumulation = {}, {}
    if budget is not None:
        largest = {'extension': largest_batch(extension_step, shape, settings, budget),
                   'full fine-tuning': largest_batch(full_finetuning_step, shape, settings, budget)}
        for name, batch in largest.items():
            if effective_batch and batch:
                steps = math.ceil(effective_batch / batch)
                accumulation[name] = (steps, math.ceil(effective_batch / steps))
    return Plan(shape=shape, settings=settings, extension=extension_step(shape, settings),
                full=full_finetuning_step(shape, settings), extension_flops=step_flops(shape, settings),
                full_flops=step_flops(shape, settings, full=True), budget=budget, budget_note=budget_note,
                largest=largest,
                effective_batch=effective_batch, accumulation=accumulation)


# ---------------------------------------------------------------------------------------------
# Shapes of local bases, read from their configs (no weight is read: files are memory-mapped)

# Encoder parameters of the T5 text conditioners (transformers' T5EncoderModel).
T5_ENCODER_PARAMS = {'t5-small': 35_330_816, 't5-base': T5_BASE_ENCODER_PARAMS, 't5-large': 334_939_648,
                     't5-3b': 1_240_909_824}
SHORT_NAMES = {'small': 'facebook/musicgen-small', 'medium': 'facebook/musicgen-medium',
               'large': 'facebook/musicgen-large', 'melody': 'facebook/musicgen-melody'}


def _numel(state: tp.Mapping[str, tp.Any], prefix: str = '') -> int:
    return sum(math.prod(value.shape) for key, value in state.items() if key.startswith(prefix))


def _codec_from_package(pkg: tp.Mapping[str, tp.Any], where: str) -> tp.Dict[str, tp.Any]:
    """Codec size and shapes of an exported compression package (or a hub codec the plan knows)."""
    from omegaconf import OmegaConf
    if isinstance(pkg.get('pretrained'), str):
        if pkg['pretrained'] != 'facebook/encodec_32khz':
            from ..io.errors import CheckpointError
            raise CheckpointError(f"{where} names the codec {pkg['pretrained']}, whose size the plan does not know "
                                  "(it knows facebook/encodec_32khz).")
        return dict(codec_params=ENCODEC_32KHZ_PARAMS, codec_filters=ENCODEC_32KHZ_FILTERS, frame_rate=50.0)
    cfg = OmegaConf.create(pkg['xp.cfg']) if isinstance(pkg['xp.cfg'], str) else pkg['xp.cfg']
    ratios = list(cfg.seanet.ratios)
    return dict(codec_params=_numel(pkg['best_state']), codec_filters=int(cfg.seanet.n_filters),
                frame_rate=float(cfg.sample_rate) / math.prod(ratios))


def shape_from_config(name: str, cfg: tp.Any, state: tp.Mapping[str, tp.Any], codec: tp.Dict[str, tp.Any],
                      source: str) -> BaseShape:
    """A base's shape from its LM `xp.cfg`, the shapes of its LM weights and its codec's numbers."""
    from omegaconf import OmegaConf
    from ..io.errors import CheckpointError
    cfg = OmegaConf.create(cfg) if isinstance(cfg, str) else cfg
    if 'transformer_lm' not in cfg:
        raise CheckpointError(f"{source} is not a MusicGen language model (no transformer_lm in its xp.cfg).")
    lm = cfg.transformer_lm
    fuser = cfg.get('fuser') or {}
    text_params, prepend_rate = 0, 0.0
    for key, conditioner in (cfg.get('conditioners') or {}).items():
        if conditioner.get('model') == 't5':
            t5 = conditioner.t5.name
            if t5 not in T5_ENCODER_PARAMS:
                raise CheckpointError(f"{source}: the text encoder {t5} is not one whose size the plan knows "
                                      f"({', '.join(T5_ENCODER_PARAMS)}).")
            text_params += T5_ENCODER_PARAMS[t5]
        if conditioner.get('model') == 'chroma_stem' and key in (fuser.get('prepend') or []):
            chroma = conditioner.chroma_stem
            prepend_rate += float(cfg.sample_rate) / (2 ** int(chroma.radix2_exp) // 4)
    dim = int(lm.dim)
    return BaseShape(name=name, dim=dim, num_heads=int(lm.num_heads), num_layers=int(lm.num_layers),
                     ffn_dim=int(float(lm.get('hidden_scale', 4)) * dim), n_q=int(lm.n_q), card=int(lm.card),
                     cross_attention=bool(fuser.get('cross')), lm_params=_numel(state),
                     layer_params=_numel(state, 'transformer.layers.0.'), text_encoder_params=text_params,
                     sample_rate=int(cfg.sample_rate), channels=int(cfg.get('channels', 1)),
                     prepend_rate=prepend_rate, prepend_text='description' in (fuser.get('prepend') or []),
                     source=source, **codec)


def read_shape(reference: str) -> BaseShape:
    """The shape of a base: a released MusicGen by its hub id or short name (published shapes, no
    download), an exported directory or an AudioCraft `checkpoint.th` (configs read, weights
    memory-mapped, never loaded), or `//tiny/...` (built in memory)."""
    from pathlib import Path
    name = SHORT_NAMES.get(reference, reference)
    if name in PUBLISHED:
        return PUBLISHED[name]
    from ..io.base_reference import resolve_base
    from ..io.errors import CheckpointError
    from ..io.exported_layout import COMPRESSION_FILE, LM_FILE
    from ..io.torch_files import read_torch_file
    if not reference.startswith('//') and not Path(reference).expanduser().exists():
        raise FileNotFoundError(
            f"Base not found: {reference}. Give a released MusicGen ({', '.join(PUBLISHED)}, whose shapes the plan "
            "knows without a download), an exported directory (state_dict.bin + compression_state_dict.bin) or an "
            "AudioCraft checkpoint.th.")
    base = resolve_base(reference)
    if base.kind == 'tiny':
        from .extended_musicgen import load_base
        model, _ = load_base(reference, device='cpu')
        return shape_of_musicgen(reference, model.lm, model.compression_model, source='built in memory')
    location = Path(base.location)
    if base.kind == 'musicgen':
        pkg = read_torch_file(location / LM_FILE, 'exported language model', mmap=True)
        codec_pkg = read_torch_file(location / COMPRESSION_FILE, 'exported compression model', mmap=True)
        return shape_from_config(reference, pkg['xp.cfg'], pkg['best_state'],
                                 _codec_from_package(codec_pkg, str(location / COMPRESSION_FILE)),
                                 str(location / LM_FILE))
    if base.kind == 'audiocraft_checkpoint':
        pkg = read_torch_file(location, 'MusicGen checkpoint', mmap=True)
        best = pkg.get('fsdp_best_state') or pkg.get('best_state') or {}
        if 'model' not in best:
            raise CheckpointError(f"{location} has no best_state: the run saved no model yet.")
        codec_ref = str(pkg['xp.cfg'].get('compression_model_checkpoint') or '')
        codec_ref = codec_ref[len('//pretrained/'):] if codec_ref.startswith('//pretrained/') else codec_ref
        if codec_ref == 'facebook/encodec_32khz':
            codec = _codec_from_package({'pretrained': codec_ref}, str(location))
        elif codec_ref and Path(codec_ref).is_file():
            codec = _codec_from_package(read_torch_file(codec_ref, 'exported compression model', mmap=True), codec_ref)
        else:
            raise CheckpointError(f"{location}: its codec {codec_ref or '(none)'} is neither facebook/encodec_32khz "
                                  "nor an exported compression_state_dict.bin: export the run first "
                                  "(audiocraft-ext export CHECKPOINT DIR --format audiocraft) and plan on DIR.")
        return shape_from_config(reference, pkg['xp.cfg'], best['model'], codec, str(location))
    raise CheckpointError(f"{reference} is a {base.kind.replace('_', ' ')}: the plan reads released MusicGens, "
                          "exported directories and AudioCraft checkpoint.th files; give the base it extends.")


# ---------------------------------------------------------------------------------------------
# The plan as text (`audiocraft-ext plan`, the solver's startup log)

def size_text(value: float) -> str:
    """Bytes as GiB from 0.1 GiB up, else as MiB."""
    return f"{value / GIB:.2f} GiB" if value >= 0.1 * GIB else f"{value / 2 ** 20:.1f} MiB"


def _millions(value: float) -> str:
    return f"{value / 1e6:.1f} M" if value >= 1e6 else f"{int(value):,}"


def _flops(value: float) -> str:
    return f"{value / 1e12:.1f} TFLOP" if value >= 1e11 else f"{value / 1e9:.2f} GFLOP"


def describe_shape(shape: BaseShape) -> str:
    conditioning = 'text by cross-attention' if shape.cross_attention else 'conditions prepended'
    sizes = [f"LM {_millions(shape.lm_params)}"]
    if shape.text_encoder_params:
        sizes.append(f"text encoder {_millions(shape.text_encoder_params)}")
    if shape.codec_params:
        sizes.append(f"codec {_millions(shape.codec_params)} ({shape.sample_rate} Hz, {shape.frame_rate:g} frames/s)")
    return (f"{shape.name} ({shape.source} shapes): dim {shape.dim}, {shape.num_heads} heads, {shape.num_layers} layers, "
            f"feed-forward {shape.ffn_dim}, {shape.n_q} codebooks of {shape.card}, {conditioning}; {', '.join(sizes)}")


def describe_settings(shape: BaseShape, settings: Settings) -> str:
    _, positions, prefix = sequence(shape, settings)
    replay = replay_examples(settings)
    precision = 'float32 (autocast off)' if not settings.autocast else f"{settings.precision} autocast"
    return (f"batch {settings.batch_size} x {settings.segment:g} s ({positions} positions"
            + (f" + {prefix} prepended" if prefix else '') + f"), {settings.new_layers} new layers, {precision}, "
            f"replay {settings.replay_ratio:g} ({replay} example{'' if replay == 1 else 's'}"
            + (", the base's outputs on them cached" if replay and settings.replay_feature_cache else '')
            + f"), feature cache {'on' if settings.feature_cache else 'off'}, "
            f"base stored in {'float16' if settings.half_base else 'float32'}, "
            f"checkpointing {'on' if settings.checkpointing else 'off'}")


def format_plan(plan: Plan) -> str:
    """The plan as a table: the extension and full fine-tuning of the same base side by side."""
    ext, full = plan.extension, plan.full
    width = 36
    rows = [('trainable parameters', _millions(ext.trainable), _millions(full.trainable)),
            ('weights (LM, text encoder, codec)', size_text(ext.weights), size_text(full.weights)),
            ('AdamW state', size_text(ext.optimizer_state), size_text(full.optimizer_state)),
            ('gradients', size_text(ext.gradients), size_text(full.gradients)),
            ('activations saved for backward', size_text(ext.activations), size_text(full.activations)),
            ('logits working set', size_text(ext.logits), size_text(full.logits)),
            ('peak, predicted', size_text(ext.peak), size_text(full.peak)),
            ('  reached in', ext.peak_phase, full.peak_phase),
            ('compute per step', _flops(plan.extension_flops), _flops(plan.full_flops))]
    lines = ["Memory plan of one training step (predicted)",
             f"Base: {describe_shape(plan.shape)}",
             f"Step: {describe_settings(plan.shape, plan.settings)}",
             f"{'':<{width}}{'extension':>22}{'full fine-tuning':>22}"]
    if plan.settings.replay_ratio:
        lines[-1] += '  (no replay)'
    lines += [f"{label:<{width}}{left:>22}{right:>22}" for label, left, right in rows]
    lines.append(f"extension / full fine-tuning: memory {ext.peak / full.peak:.2f}x, compute "
                 f"{plan.extension_flops / plan.full_flops:.2f}x")
    if plan.budget is not None:
        lines.append(f"Usable memory: {size_text(plan.budget)}" + (f" ({plan.budget_note})" if plan.budget_note else ''))
        answers = ['yes' if step.peak <= plan.budget else 'no' for step in (ext, full)]
        lines.append(f"{f'fits batch {plan.settings.batch_size}':<{width}}{answers[0]:>22}{answers[1]:>22}")
        largest = plan.largest
        lines.append(f"{'largest batch that fits':<{width}}{largest['extension']:>22}{largest['full fine-tuning']:>22}")
        if plan.effective_batch:
            cells = []
            for name in ('extension', 'full fine-tuning'):
                steps, batch = plan.accumulation.get(name, (0, 0))
                cells.append(f"{steps} x {batch}" if steps else 'does not fit')
            lines.append(f"{f'effective batch {plan.effective_batch}':<{width}}{cells[0]:>22}{cells[1]:>22}")
            lines.append("  (steps of gradient accumulation x batch; the solvers do not accumulate gradients: run that "
                         "many ranks, dataset.batch_size being the global batch split across them)")
    return '\n'.join(lines)


def format_rank_plans(plans: tp.Sequence[RankPlan], settings: Settings) -> str:
    """`rank_plans` as a table: per rank, the new layers' weights + gradients + AdamW state and the
    step's peak, replicated and sharded (and with a budget the largest batch per rank that fits)."""
    lines = [f"Per rank (GPU), batch {settings.batch_size} per rank: the new layers replicated (fsdp.use=false) or "
             "sharded (fsdp.use=true:",
             "their weights, gradients and AdamW state 1/ranks per rank); the frozen base, text encoder and codec "
             "whole on every rank",
             f"{'':<6}{'new layers: weights + grads + AdamW':>40}{'peak, predicted':>30}",
             f"{'ranks':<6}{'replicated':>20}{'sharded':>20}{'replicated':>15}{'sharded':>15}"]
    budget = any(plan.largest for plan in plans)
    if budget:
        lines[-2] += f"{'largest batch per rank':>30}"
        lines[-1] += f"{'replicated':>15}{'sharded':>15}"
    for plan in plans:
        # float32 weights and gradients, 4 bytes each per parameter a rank holds, + AdamW's two moments
        state = [size_text(2 * step.gradients + step.optimizer_state) if step is not None else '-'
                 for step in (plan.replicated, plan.sharded)]
        peaks = [size_text(step.peak) if step is not None else '-' for step in (plan.replicated, plan.sharded)]
        line = f"{plan.ranks:<6}{state[0]:>20}{state[1]:>20}{peaks[0]:>15}{peaks[1]:>15}"
        if budget:
            line += f"{plan.largest['replicated']:>15}{str(plan.largest.get('sharded', '-')):>15}"
        lines.append(line)
    return '\n'.join(lines)

