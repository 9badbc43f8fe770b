"""Evaluation of extended MusicGen models: the frozen base and the extension side by side.

- `lm_metrics`: cross entropy and perplexity per codebook, token-weighted over a whole set,
  for several `extension_scale` values on the same batches (0 is the frozen base, exactly).
- `audio_metrics`: offline audio metrics (Frechet distance on the compression model's encoder
  latents, chroma cosine similarity) and the checks for AudioCraft's FAD / KLD / CLAP metrics.
- `report`: the solver's evaluate stage (`run_evaluation`), the JSON report, the scale-sweep
  plot, the samples, and the table printed by `python -m audiocraft_ext.evaluate`.

See docs/EVALUATION.md.
"""
