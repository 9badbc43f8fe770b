"""The demo's clips: new- and old-domain captions through `ExtendedMusicGen.get_pretrained`, extended and base."""
import json
from pathlib import Path
import typing as tp

from audiocraft.data.audio import audio_write
import torch

from ..models.extended_musicgen import ExtendedMusicGen
from .arguments import Sizes
from .progress import Steps


def domain_prompts(data: Path, domain: str, count: int) -> tp.List[str]:
    """Captions of the domain's generate split (real captions: the LUT conditioner hashes whole strings)."""
    folder = data / 'audio' / domain / 'generate'
    captions = []
    for sidecar in sorted(folder.glob('*.json')):
        description = json.loads(sidecar.read_text())['description']
        if description not in captions:
            captions.append(description)
    return captions[:count]


def generate_clips(model_file: Path, data: Path, out: Path, sizes: Sizes, seed: int, device: str,
                   steps: Steps) -> tp.Dict[str, tp.Any]:
    """Clips for new- and old-domain captions, extended (scale 1) and base (scale 0)."""
    model = ExtendedMusicGen.get_pretrained(str(model_file), device=device)
    trainable, total = model.lm.parameter_counts()
    duration = min(sizes.segment, model.max_duration or sizes.segment)
    prompts = {domain: domain_prompts(data, domain, sizes.prompts) for domain in ('new', 'old')}
    written: tp.List[dict] = []
    jobs = [(variant, scale, domain) for variant, scale in (('extended', 1.0), ('base', 0.0))
            for domain in ('new', 'old')]
    for index, (variant, scale, domain) in enumerate(jobs):
        # every call: set_generation_params resets what it is not given (duration to 30 s)
        model.set_generation_params(duration=duration, use_sampling=True, top_k=50, extension_scale=scale)
        torch.manual_seed(seed)
        with torch.no_grad():
            wavs = model.generate(prompts[domain])  # [B, C, T]
        for number, (prompt, wav) in enumerate(zip(prompts[domain], wavs)):
            path = audio_write(out / 'audio' / variant / f'{domain}_{number}', wav.cpu(), model.sample_rate,
                               strategy='peak')
            written.append({'path': str(path), 'variant': variant, 'domain': domain, 'prompt': prompt})
        steps.print(f"      {index + 1}/{len(jobs)}: {len(prompts[domain])} {domain}-domain clips, "
                    f"{variant} (extension_scale={scale:g})")
    return {'clips': written, 'trainable': trainable, 'total': total, 'sample_rate': model.sample_rate,
            'duration': duration, 'generation_params': dict(model.generation_params),
            'num_base_layers': model.lm.num_base_layers, 'cardinality': model.compression_model.cardinality,
            'num_additional_layers': model.lm.num_additional_layers}
