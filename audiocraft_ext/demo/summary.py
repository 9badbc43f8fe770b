"""The demo's summary: the numbers it reports (cross entropy of base and extended on both domains,
the forgetting control it ran with) and the text block printed at the end."""
import os
import typing as tp

from omegaconf import OmegaConf

from .artefacts import config_text
from .progress import Steps, format_seconds


def cross_entropy(metrics: dict) -> tp.Dict[str, tp.Dict[str, float]]:
    """Cross entropy of base and extended per domain, from the evaluation report (old = its reference set)."""
    return {domain: {variant: float(metrics['sets'][key][variant]['ce']) for variant in ('base', 'extended')}
            for domain, key in (('new', 'new'), ('old', 'reference'))}


def forgetting_control_defaults() -> tp.Dict[str, tp.Any]:
    """The `replay.*` / `distill.*` defaults of solver/extended_musicgen.yaml, which the extension run uses."""
    cfg = OmegaConf.create(config_text('extended_musicgen'))
    return {'replay_ratio': float(cfg.replay.ratio), 'replay_source': 'manifest' if cfg.replay.manifest else
            "the base's own generations", 'replay_ce_weight': float(cfg.replay.ce_weight),
            'distill_weight': float(cfg.distill.weight)}


def print_summary(summary: dict, generation: dict, steps: Steps) -> None:
    ce = summary['cross_entropy']
    rel = lambda path: os.path.relpath(path) if not os.path.relpath(path).startswith('..') else path  # noqa: E731
    base = summary['base']
    control = summary['forgetting_control']
    audible = summary['audible']
    base_line = (f"tiny MusicGen, {generation['num_base_layers']} layers, pretrained on the old domain "
                 f"by MusicGenSolver ({base['pretrained']})" if base['embedded'] else base['reference'])
    width = 78
    lines = [
        '=' * width,
        f"Frozen base + {generation['num_additional_layers']} new layer(s), trained on the new domain",
        f"  base          {base_line}",
        *([f"  tokenizer     tiny EnCodec: codes used per codebook "
           f"{'/'.join(map(str, summary['codec']['codes_used']))} of {generation['cardinality']} "
           f"(perplexity {'/'.join(f'{p:.0f}' for p in summary['codec']['perplexity'])}) on held-out clips"]
          if summary['codec'] else []),
        f"  trainable     {summary['trainable_params']:,} of {summary['total_params']:,} parameters "
        f"({100 * summary['trainable_fraction']:.1f}%)",
        f"  training      {format_seconds(summary['training_s'])} "
        f"({format_seconds(summary['training_wall_s'])} with start-up)",
        "  cross entropy (lower is better)                  base  extended",
        f"    new domain (Irish dance tunes, fiddle/flute)  {ce['new']['base']:6.3f}    {ce['new']['extended']:6.3f}"
        f"  ({ce['new']['extended'] - ce['new']['base']:+.3f})",
        f"    old domain (Bach chorales, organ/strings)     {ce['old']['base']:6.3f}    {ce['old']['extended']:6.3f}"
        f"  ({ce['old']['extended'] - ce['old']['base']:+.3f})",
        f"  gain          {summary['gain_new']:+.3f} nats/token on the new domain (base - extended)",
        f"  forgetting    {summary['forgetting_old']:+.3f} nats/token on the old domain (extended - base)",
        f"  sounds new    {audible['new']['base']:+.1f} base -> {audible['new']['extended']:+.1f} extended: new-domain "
        f"score of the clips for new-domain captions",
        f"                (log-odds of a classifier of real clips, {100 * audible['accuracy']:.0f}% right on held-out ones, "
        f"which score {audible['reference']['old']:+.1f} old, {audible['reference']['new']:+.1f} new)",
        f"  forgetting control  replay of {control['replay_source']} (ratio {control['replay_ratio']:g}) + KL "
        f"to the base's logits (weight {control['distill_weight']:g}): the solver's defaults",
        f"  audio         {rel(summary['out'])}/audio/{{extended,base}}/{{new,old}}_*.wav "
        f"({len(summary['clips'])} clips, {generation['duration']:g} s)",
        f"  plots         {rel(summary['plots']['loss_curves'])}",
        f"                {rel(summary['plots']['scale_sweep']) if summary['plots']['scale_sweep'] else '-'}",
        f"  metrics       {rel(summary['metrics'])} (python -m audiocraft_ext.evaluate), summary.json, logs/",
        f"  listen        {rel(summary['report'])} (open it in a browser)",
        f"  total time    {format_seconds(summary['total_s'])}",
        '=' * width,
    ]
    for line in lines:
        steps.print(line)
