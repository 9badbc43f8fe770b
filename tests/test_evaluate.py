"""Evaluation: base vs extended on new-domain and old-domain (reference) sets, in one report.

A tiny random base first learns the synthetic 'old' domain (a debug run whose best state is
merged into a 4-layer base: `pretrained_model_checkpoint=//sig/OLD`); 2 new layers are then
trained on the 'new' domain, and `audiocraft_ext.evaluate` runs in-process on that run. The
report's cross entropies are checked against a computation made here from the files on disk
(soundfile + captions, `ExtendedMusicGen` from the checkpoint, `F.cross_entropy`).
"""
from contextlib import contextmanager
import json
import math
import os
from pathlib import Path
import re
import subprocess
import sys
import typing as tp

import pytest
import soundfile
import torch
import torch.nn.functional as F

from audiocraft_ext import ExtendedMusicGen, evaluate, train
from audiocraft_ext.data.synth_dataset import write_dataset
from audiocraft_ext.evaluation import audio_metrics
from audiocraft_ext.evaluation.report_table import format_table


ROOT = Path(__file__).resolve().parents[1]
SPLITS = [('train', 8), ('valid', 2), ('evaluate', 3), ('generate', 1)]
SWEEP = [0.0, 0.5, 1.0]


def train_argv(base: str, egs: Path, *extra: str) -> tp.List[str]:
    return ['solver=extended_musicgen_debug', f'pretrained_model_checkpoint={base}', f'egs_root={egs}',
            'optim.epochs=2', 'optim.updates_per_epoch=12', 'optim.lr=3e-3', 'dataset.batch_size=4',
            'dataset.train.num_samples=48', '+dataset.evaluate.segment_duration=null',
            'dataset.evaluate.num_samples=null', 'evaluate.every=100', 'generate.every=100', *extra]


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('synth')
    for domain in ('old', 'new'):
        write_dataset(root, domain, num_clips=None, duration=1.0, splits=SPLITS, seed=0)
    return root / 'egs'


@pytest.fixture(scope='module')
def evaluated(data, dora_dir, single_thread_torch, run_xp):
    """(xp of the extension run, report of `python -m audiocraft_ext.evaluate sig=...` in-process)."""
    # The old-domain run skips AudioCraft's and our evaluate stage (time); the new-domain run
    # runs ours at its last epoch, then the command line evaluates it again.
    old, _ = run_xp(train_argv('//tiny/text', data / 'old', 'optim.updates_per_epoch=8',
                            'evaluate.compare_base=false', 'evaluate.metrics.base=false'))
    new, _ = run_xp(train_argv(f'//sig/{old.sig}', data / 'new', 'optim.updates_per_epoch=16'))
    with calls_from_evaluation_into_solvers() as calls_back:
        report = evaluate.run(['--config=solver/extended_musicgen', f'sig={new.sig}',
                               f'evaluate.reference_dset={data / "old"}', f'evaluate.scale_sweep={SWEEP}'])
    return new, report, calls_back


@contextmanager
def calls_from_evaluation_into_solvers() -> tp.Iterator[tp.List[str]]:
    """Records every call of a function of `audiocraft_ext/solvers/` made while a function of
    `audiocraft_ext/evaluation/` is on the stack: evaluation reads its `EvaluationInputs`, and calls
    nothing of ours above it."""
    solvers, evaluation = str(ROOT / 'audiocraft_ext' / 'solvers'), str(ROOT / 'audiocraft_ext' / 'evaluation')
    calls: tp.List[str] = []

    def profile(frame, event, arg):
        if event == 'call' and frame.f_code.co_filename.startswith(solvers):
            caller = frame.f_back
            while caller is not None:
                if caller.f_code.co_filename.startswith(evaluation):
                    calls.append(f'{caller.f_code.co_name} -> {frame.f_code.co_filename}:{frame.f_code.co_name}')
                    break
                caller = caller.f_back
    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield calls
    finally:
        sys.setprofile(previous)


def independent_ce(model, manifest: Path, scale: float) -> tp.Tuple[float, tp.List[float]]:
    """Token-weighted cross entropy per codebook over every file of `manifest`, computed here."""
    from audiocraft.modules.conditioners import ConditioningAttributes
    lm = model.lm
    lm.eval()
    lm.extension_scale = scale
    nll = torch.zeros(lm.num_codebooks, dtype=torch.float64)
    count = torch.zeros(lm.num_codebooks, dtype=torch.float64)
    with torch.no_grad():
        for line in (manifest / 'data.jsonl').read_text().splitlines():
            path = Path(json.loads(line)['path'])
            wav, sample_rate = soundfile.read(str(path), dtype='float32')
            assert sample_rate == model.sample_rate
            description = json.loads(path.with_suffix('.json').read_text())['description']
            codes, _ = model.compression_model.encode(torch.from_numpy(wav)[None, None])  # [1, K, T]
            out = lm.compute_predictions(codes, [ConditioningAttributes(text={'description': description})])
            for k in range(lm.num_codebooks):
                valid = out.mask[0, k]
                nll[k] += F.cross_entropy(out.logits[0, k][valid], codes[0, k][valid], reduction='sum').item()
                count[k] += valid.sum().item()
    per_codebook = (nll / count).tolist()
    return sum(per_codebook) / len(per_codebook), per_codebook


def test_extension_adapts_to_the_new_domain(evaluated):
    xp, report, _ = evaluated
    new = report['sets']['new']
    print('\n' + format_table(report))
    # 32 updates on the new tones: measured gain 0.258 nats/token; the old domain's tones, which the
    # 16-update base knows little better, improve too (forgetting -0.163). Zero learning rate: 0 and 0.
    assert new['extended']['ce'] < new['base']['ce'] - 0.10
    reference = report['sets']['reference']
    assert reference['extended']['ce'] - reference['base']['ce'] < 0.05
    assert report['sig'] == xp.sig and report['epoch'] == 2
    # Both sets, both models, per codebook; perplexities are exp(ce).
    for set_name in ('new', 'reference'):
        for model_name in ('base', 'extended'):
            entry = report['sets'][set_name][model_name]
            assert len(entry['ce_per_codebook']) == len(entry['ppl_per_codebook']) == 4
            assert math.isclose(entry['ppl'], math.exp(entry['ce']), rel_tol=1e-9)
            assert math.isclose(entry['ce'], sum(entry['ce_per_codebook']) / 4, rel_tol=1e-9)
            assert [math.exp(v) for v in entry['ce_per_codebook']] == pytest.approx(entry['ppl_per_codebook'])
    # Scale sweep: its ends are the base and the extended model.
    sweep = report['scale_sweep']
    assert sweep['scales'] == SWEEP
    for set_name in ('new', 'reference'):
        assert sweep[set_name][0] == report['sets'][set_name]['base']['ce']
        assert sweep[set_name][-1] == report['sets'][set_name]['extended']['ce']
    assert Path(report['plots']['scale_sweep']).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    # The file on disk is the report, in the XP folder.
    assert Path(report['metrics_path']) == xp.folder / 'evaluation' / 'metrics.json'
    # The training history is not modified by the evaluation (execute_inplace).
    assert len(json.loads((xp.folder / 'history.json').read_text())) == 2


def test_evaluation_never_calls_back_into_the_solver(evaluated):
    """The evaluate stage gets what it reads in `EvaluationInputs`; none of its functions calls ours in
    `solvers/` (a call the import contract cannot see)."""
    _, report, calls_back = evaluated
    assert report['sets']['new']['extended']['ce'] > 0  # the stage ran under the recorder
    assert calls_back == []


def test_report_matches_an_independent_computation(evaluated, data):
    xp, report, _ = evaluated
    model = ExtendedMusicGen.from_solver_checkpoint(xp.folder / 'checkpoint.th', device='cpu')
    for set_name, manifest in (('new', data / 'new' / 'evaluate'), ('reference', data / 'old' / 'evaluate')):
        assert report['sets'][set_name]['dataset'] == str(manifest)
        for model_name, scale in (('base', 0.0), ('extended', 1.0)):
            ce, per_codebook = independent_ce(model, manifest, scale)
            entry = report['sets'][set_name][model_name]
            assert entry['ce'] == pytest.approx(ce, rel=1e-4, abs=1e-4), (set_name, model_name)
            assert entry['ce_per_codebook'] == pytest.approx(per_codebook, rel=1e-4, abs=1e-4)
    # The middle of the sweep too.
    ce, _ = independent_ce(model, data / 'new' / 'evaluate', 0.5)
    assert report['scale_sweep']['new'][1] == pytest.approx(ce, rel=1e-4, abs=1e-4)


def test_audio_metrics_and_samples(evaluated):
    xp, report, _ = evaluated
    audio = report['audio']
    assert audio['num_items'] == 3
    for model_name in ('base', 'extended', 'reconstruction'):
        value = audio[model_name][audio_metrics.FRECHET_LATENT_NAME]
        assert math.isfinite(value) and value >= -1e-9
    assert 'chroma_cosine' not in audio['base']  # text base: no melody
    samples = Path(report['samples_dir'])
    assert samples == xp.folder / 'evaluation' / 'samples'
    base = sorted(p.name for p in (samples / 'base').glob('*.wav'))
    extended = sorted(p.name for p in (samples / 'extended').glob('*.wav'))
    assert base == extended and len(base) == 3
    prompts = json.loads((samples / 'prompts.json').read_text())
    assert [entry['name'] for entry in prompts] == base
    assert all(entry['description'] for entry in prompts)
    wav, sample_rate = soundfile.read(str(samples / 'extended' / base[0]))
    assert sample_rate == 16000 and len(wav) == 16000


def test_frechet_distance():
    torch.manual_seed(0)
    a, b = audio_metrics.GaussianStats(), audio_metrics.GaussianStats()
    x = torch.randn(4000, 3)
    for chunk in x.split(1000):  # sums over batches == one batch
        a.update(chunk)
    b.update(x + torch.tensor([1.0, 2.0, 0.0]))
    assert audio_metrics.frechet_from_stats(a, a) == pytest.approx(0.0, abs=1e-6)
    assert audio_metrics.frechet_from_stats(a, b) == pytest.approx(5.0, abs=1e-6)  # ||shift||^2
    mean, cov = a.mean_cov()
    assert torch.allclose(torch.from_numpy(cov), torch.cov(x.double().t()), atol=1e-9)


def test_unavailable_audiocraft_metrics_fail_early_and_clearly():
    from omegaconf import OmegaConf
    cfg = OmegaConf.load(ROOT / 'audiocraft_ext' / 'configs' / 'solver' / 'extended_musicgen.yaml')
    cfg.sample_rate = 16000
    assert audio_metrics.check_optional_metrics(cfg) == []
    cfg.evaluate.metrics.kld = True
    with pytest.raises(RuntimeError, match='make setup EXTRAS=metrics'):
        audio_metrics.check_optional_metrics(cfg)
    cfg.evaluate.metrics.kld = False
    cfg.evaluate.metrics.text_consistency = True
    with pytest.raises(RuntimeError, match='laion_clap'):
        audio_metrics.check_optional_metrics(cfg)
    cfg.evaluate.metrics.text_consistency = False
    cfg.evaluate.metrics.fad = True
    with pytest.raises(RuntimeError, match='vggish_model.ckpt'):
        audio_metrics.check_optional_metrics(cfg)


def test_listening_report(evaluated, dora_dir, tmp_path, parse_html):
    """The evaluate stage wrote report.html; `audiocraft-ext report SIG` rebuilds the same page."""
    from browser import check_page
    xp, report, _ = evaluated
    page = xp.folder / 'evaluation' / 'report' / 'report.html'
    html = page.read_text(encoding='utf-8')
    checker = parse_html(page)
    assert checker.errors == [] and checker.stack == []
    # One row per sample: base, extended and the evaluate-set clip it was conditioned on.
    assert [attrs.get('class') for tag, attrs in checker.tags if tag == 'tr'].count('prompt') == 3
    assert len([tag for tag, _ in checker.tags if tag == 'audio']) == 9
    for entry in json.loads((xp.folder / 'evaluation' / 'samples' / 'prompts.json').read_text()):
        assert entry['description'] in html
    for label in ('base (extension_scale=0)', 'extended (extension_scale=1)', 'reference clip',
                  'new domain (adaptation)', 'reference set (forgetting)', report['base_hash'], 'data.train'):
        assert label in html, label
    assert report['run']['num_additional_layers'] == 2 and report['run']['trainable_params'] > 0
    # Rebuilt from the files on disk, as a user types it: the same page.
    command = [str(Path(sys.executable).parent / 'audiocraft-ext'), 'report', xp.sig, '--dora-dir', str(dora_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert str(page) in result.stdout
    assert page.read_text(encoding='utf-8') == html
    missing = subprocess.run([*command[:2], 'nosuchrun', '--dora-dir', str(dora_dir)], capture_output=True,
                             text=True, timeout=300)
    assert missing.returncode == 2 and missing.stdout == ''
    assert missing.stderr.count('\n') == 1 and missing.stderr.startswith("error: No run 'nosuchrun'")
    checks = check_page(page, tmp_path / 'evaluation.png')
    assert checks['rows'] == 3 and len(checks['audio']) == 9
    assert all(a['error'] is None and a['readyState'] >= 1 for a in checks['audio']), checks['audio']


def test_errors(dora_dir):
    with pytest.raises(evaluate.EvaluationError, match='exactly one of sig=SIG or checkpoint=PATH'):
        evaluate.run(['--config=solver/extended_musicgen'])
    with pytest.raises(evaluate.EvaluationError, match='No experiment'):
        evaluate.run(['sig=doesnotexist'])


def test_dora_dir_is_passed_in_not_set_globally(dora_dir, tmp_path):
    """`dora.dir=DIR` looks the run up in DIR and leaves the Dora main's own folder as it was."""
    other = tmp_path / 'other'
    with pytest.raises(evaluate.EvaluationError, match=re.escape(f"No experiment 'nosuch' in {other / 'xps'}")):
        evaluate.run(['sig=nosuch', f'dora.dir={other}'])
    assert train.main.dora.dir == dora_dir


@pytest.mark.slow
def test_command_line_on_a_checkpoint_file(evaluated, data, tmp_path):
    """`python -m audiocraft_ext.evaluate checkpoint=PATH`: a new XP continue_from=PATH holds the report."""
    xp, report, _ = evaluated
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    result = subprocess.run(
        [sys.executable, '-m', 'audiocraft_ext.evaluate', '--config=solver/extended_musicgen_debug',
         f'checkpoint={xp.folder / "checkpoint_2.th"}', f'dora.dir={tmp_path / "dora"}',
         'evaluate.scale_sweep=[0,1]', 'evaluate.samples=false', 'evaluate.audio_metrics=false'],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert 'adaptation' in result.stdout and 'extended' in result.stdout
    assert 'listening report:' in result.stdout
    reports = list((tmp_path / 'dora' / 'xps').glob('*/evaluation/metrics.json'))
    assert len(reports) == 1
    again = json.loads(reports[0].read_text())
    assert again['checkpoint'] == str(xp.folder / 'checkpoint_2.th') and again['epoch'] == 2
    # checkpoint_2.th holds the same best state as checkpoint.th: same numbers (no reference set here).
    for model_name in ('base', 'extended'):
        assert again['sets']['new'][model_name]['ce'] == pytest.approx(
            report['sets']['new'][model_name]['ce'], rel=1e-5)
    assert again['scale_sweep']['scales'] == [0.0, 1.0]
    # No reference_dset: forgetting measured on the base's own held-out generations, and said so.
    assert again['sets']['reference']['source'] == 'generations'
    assert "the base's own generations" in result.stdout
