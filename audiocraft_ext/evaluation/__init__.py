"""Evaluation of extended MusicGen models: the frozen base and the extension side by side.

- `lm_metrics`: cross entropy and perplexity per codebook, token-weighted over a whole set,
  for several `extension_scale` values on the same batches (0 is the frozen base, exactly).
- `audio_metrics`: offline audio metrics (Frechet distance on the compression model's encoder
  latents, chroma cosine similarity) and the checks for AudioCraft's FAD / KLD / CLAP metrics.
- `inputs`: `EvaluationInputs`, everything the evaluate stage reads (the solver builds it).
- `report`: the evaluate stage (`run_evaluation(inputs)`) and the JSON report it writes, from
  `reference_sets` (the `evaluate.reference_dset` set and its loader), `audio_evaluation`
  (generations of base and extended, their audio metrics and samples), `plots` (scale sweep,
  loss curves) and `report_table` (the table printed by `python -m audiocraft_ext.evaluate`).

See docs/EVALUATION.md.
"""
