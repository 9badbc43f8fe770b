"""The memory plan: `audiocraft-ext plan` as docs/ONE_GPU.md types it, the plan against a measured
peak, the solver's refusal of a step that cannot fit, and every command of docs/ONE_GPU.md.

The page's commands are read from it (fenced blocks after `<!-- one_gpu:NAME -->`), so page and
tests cannot drift apart; only `SIG` is replaced by the run's signature. The hub is never
reached: released shapes are hard-coded, and where the page names `facebook/musicgen-small` for
training and sharing, a filled hub cache holds the tiny base under that id (HF_HUB_OFFLINE).
The page's evaluate and report commands are those of docs/TRAINING.md §0 and README, run by
`test_quickstart.py` and `test_evaluate.py::test_listening_report`.
"""
from dataclasses import replace
import os
from pathlib import Path
import re
import shlex
import subprocess
import sys
import typing as tp

import pytest

from doc_blocks import documented_block
from hub_cache import hub_repo
from audiocraft_ext import cli
from audiocraft_ext.io.exported_layout import COMPRESSION_FILE, LM_FILE
from audiocraft_ext.models import memory_plan
from audiocraft_ext.models.memory_plan import MemoryPlanError
from audiocraft_ext.solvers.memory_check import settings_of

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / 'docs' / 'ONE_GPU.md'
BENCHMARKS = ROOT / 'benchmarks'
COMMAND = str(Path(sys.executable).parent / 'audiocraft-ext')

pytestmark = pytest.mark.usefixtures('single_thread_torch')


def _block(name: str) -> str:
    return documented_block(PAGE, f'one_gpu:{name}')


def documented_table(name: str) -> str:
    """The Markdown table that follows `<!-- one_gpu:NAME -->` in docs/ONE_GPU.md."""
    text = PAGE.read_text()
    lines = text[text.index(f'<!-- one_gpu:{name} -->'):].splitlines()[1:]
    return ''.join(line + '\n' for line in lines[:next(i for i, line in enumerate(lines) if not line.startswith('|'))])


def documented_command(name: str) -> tp.List[str]:
    """The one command of block `name`, continuation lines joined, as argv."""
    lines = [line for line in _block(name).replace('\\\n', ' ').splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


def run_cli(argv: tp.List[str], capsys) -> str:
    """`audiocraft-ext ARGS` in this process: its standard output (it must exit 0)."""
    assert argv[0] == 'audiocraft-ext'
    assert cli.main(argv[1:]) == 0
    return capsys.readouterr().out


# ---- the command as typed ---------------------------------------------------------------------

def test_the_documented_plan_runs_offline_and_prints_both_peaks_and_a_fitting_batch(tmp_path):
    argv = documented_command('plan-24')
    assert argv == shlex.split('audiocraft-ext plan --base facebook/musicgen-small --new-layers 12 '
                               '--batch-size 8 --segment 30 --gpu-memory 24')
    paths = [str(ROOT)] + [path for path in os.environ.get('PYTHONPATH', '').split(os.pathsep) if path]
    env = dict(os.environ, HF_HUB_OFFLINE='1', PYTHONPATH=os.pathsep.join(paths))
    hub = Path(env['HF_HOME'])
    before = sorted(hub.rglob('*')) if hub.exists() else []
    result = subprocess.run([COMMAND, *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    peaks = re.search(r'^peak, predicted +([\d.]+) GiB +([\d.]+) GiB$', out, re.M)
    assert peaks, out
    extension, full = float(peaks.group(1)), float(peaks.group(2))
    assert 0 < extension < full < 100
    largest = re.search(r'^largest batch that fits +(\d+) +(\d+)$', out, re.M)
    assert largest and int(largest.group(1)) >= 8 >= int(largest.group(2)) >= 1, out
    assert out == _block('plan-24-output')  # the page shows what it prints
    assert (sorted(hub.rglob('*')) if hub.exists() else []) == before  # nothing downloaded


def test_the_80_gib_plan_and_the_tables_of_the_page(capsys):
    assert run_cli(documented_command('plan-80'), capsys) == _block('plan-80-output')
    assert documented_table('table') == largest_batch_table()
    assert documented_table('layers') == new_layers_table()


def new_layers_table() -> str:
    """The page's table: what N costs on musicgen-small, batch 8 of 30 s, training defaults otherwise."""
    shape = memory_plan.PUBLISHED['facebook/musicgen-small']
    rows = ['| N | peak memory at batch 8 | largest batch on 24 GiB | compute per step |', '|---|---|---|---|']
    for layers in (6, 12, 24):
        settings = memory_plan.Settings(new_layers=layers, batch_size=8)
        peak = memory_plan.extension_step(shape, settings).peak / memory_plan.GIB
        largest = memory_plan.largest_batch(memory_plan.extension_step, shape, settings,
                                            memory_plan.usable_bytes(24 * memory_plan.GIB))
        flops = memory_plan.step_flops(shape, settings) / 1e12
        rows.append(f"| {layers} | {peak:.1f} GiB | {largest} | {flops:.1f} TFLOP |")
    return '\n'.join(rows) + '\n'


def largest_batch_table() -> str:
    """The page's table: the largest batch of 30 s examples each released base fits on 24 and 80 GiB."""
    rows = ['| base | card | extension | extension, --half-base --checkpointing | full fine-tuning |',
            '|---|---|---|---|---|']
    for name, shape in memory_plan.PUBLISHED.items():
        for gib in (24, 80):
            budget = memory_plan.usable_bytes(gib * memory_plan.GIB)
            cells = []
            for step, settings in ((memory_plan.extension_step, memory_plan.Settings()),
                                   (memory_plan.extension_step, memory_plan.Settings(half_base=True, checkpointing=True)),
                                   (memory_plan.full_finetuning_step, memory_plan.Settings())):
                batch = memory_plan.largest_batch(step, shape, settings, budget)
                peak = step(shape, replace(settings, batch_size=max(1, batch))).peak / memory_plan.GIB
                cells.append(f"{batch} ({peak:.1f} GiB)" if batch else 'none')
            rows.append(f"| {name.split('/')[1]} | {gib} GiB | {' | '.join(cells)} |")
    return '\n'.join(rows) + '\n'


def test_bad_plan_options_get_one_error_line(capsys):
    assert cli.main(['plan', '--base', 'someone/unknown-model']) == 2
    assert capsys.readouterr().err.startswith('error: Base not found: someone/unknown-model. Give a released MusicGen')
    assert cli.main(['plan', '--base', 'small', '--batch-size', '0']) == 2
    assert capsys.readouterr().err == 'error: --batch-size 0: use a positive integer.\n'


# ---- several ranks: the new layers replicated or sharded (fsdp.use) -----------------------------

def test_sharding_divides_the_new_layers_state_by_the_ranks_and_leaves_the_rest_whole():
    shape = memory_plan.PUBLISHED['facebook/musicgen-small']
    settings = memory_plan.Settings(batch_size=8)
    new = settings.new_layers * shape.layer_params
    plans = memory_plan.rank_plans(shape, settings)
    assert [plan.ranks for plan in plans] == [1, 2, 4, 8]
    assert plans[0].sharded is None and plans[0].largest == {}
    replicated = memory_plan.extension_step(shape, settings)
    peaks = []
    for plan in plans:
        assert plan.replicated == replicated  # every rank holds the same as one GPU does
        if plan.sharded is None:
            continue
        local = -(-new // plan.ranks)
        sharded = plan.sharded
        assert (sharded.gradients, sharded.optimizer_state) == (4 * local, 8 * local)
        assert replicated.weights - sharded.weights == 4 * (new - local)  # base, text encoder, codec: whole
        assert sharded.activations == replicated.activations and sharded.logits == replicated.logits
        # gathered for the forward and backward: the other ranks' share, and gradients on their way
        gathered = 4 * (new - local) + int(memory_plan.FSDP_GRADIENT_UNITS * 4 * shape.layer_params)
        assert sharded.phases['backward start'] == replicated.phases['backward start'] + gathered
        peaks.append(sharded.peak)
    assert replicated.peak > peaks[0] > peaks[1] > peaks[2]


def test_a_number_of_ranks_below_1_is_refused():
    with pytest.raises(ValueError) as error:
        memory_plan.rank_plans(memory_plan.PUBLISHED['facebook/musicgen-small'], memory_plan.Settings(), [2, 0])
    assert str(error.value) == 'ranks=0: use a positive number of ranks.'


def test_the_plan_per_rank_on_the_command_line(capsys):
    out = run_cli(['audiocraft-ext', 'plan', '--base', 'small', '--batch-size', '8', '--ranks', '--gpu-memory', '24'],
                  capsys)
    assert out.startswith(run_cli(['audiocraft-ext', 'plan', '--base', 'small', '--batch-size', '8', '--gpu-memory',
                                   '24'], capsys))  # the single-GPU plan, then the ranks
    rows = re.findall(r'^(\d+) +([\d.]+) GiB +(-|[\d.]+ GiB) +([\d.]+) GiB +(-|[\d.]+ GiB) +(\d+) +(-|\d+)$', out, re.M)
    assert [int(row[0]) for row in rows] == [1, 2, 4, 8], out
    assert rows[0][2] == rows[0][4] == rows[0][6] == '-'
    for ranks, replicated, sharded, *_ in rows[1:]:
        assert float(sharded.split()[0]) == pytest.approx(float(replicated) / int(ranks), abs=0.01)
    assert int(rows[-1][6]) >= int(rows[-1][5])  # sharding never fits a smaller batch
    two = run_cli(['audiocraft-ext', 'plan', '--base', 'small', '--ranks', '2'], capsys)
    assert [line.split()[0] for line in two.splitlines()[-1:]] == ['2']
    assert cli.main(['plan', '--base', 'small', '--ranks', '2', '0']) == 2
    assert capsys.readouterr().err == 'error: --ranks 2 0: give positive numbers of ranks (GPUs), e.g. --ranks 2 4.\n'


# ---- the plan against measurement ----------------------------------------------------------------

def test_predictions_are_within_15_percent_of_the_measured_peak_of_a_tiny_model(tmp_path, monkeypatch):
    """Every step of `bench_memory_plan.py --quick` (tiny shape: full fine-tuning, the extension with and
    without replay, float16 base + checkpointing, bfloat16 autocast) measured on CPU against the plan."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_memory_plan
    results = bench_memory_plan.main(['--quick', '--out', str(tmp_path)])
    rows = results['rows']
    assert len(rows) == len(bench_memory_plan.VARIANTS)
    for row in rows:
        assert 0.85 <= row['ratio'] <= 1.15, row
        assert row['measured'] > 0.5 * row['measured_resident']


def test_a_local_base_is_read_from_its_config_as_the_solver_sees_it(exported_bases):
    from audiocraft_ext.models.extended_musicgen import load_base
    read = memory_plan.read_shape(str(exported_bases['text']))
    model, _ = load_base(str(exported_bases['text']), device='cpu')
    built = memory_plan.shape_of_musicgen(str(exported_bases['text']), model.lm, model.compression_model)
    assert replace(read, source='') == replace(built, source='')
    assert read.lm_params == sum(p.numel() for p in model.lm.parameters())


# ---- the solver: the plan logged, a step that cannot fit refused ----------------------------------

@pytest.mark.usefixtures('dora_dir')
def test_a_run_whose_step_does_not_fit_stops_before_loading_data(exported_bases, egs, build_solver, tmp_path, caplog):
    debug = ['solver=extended_musicgen_debug', f"pretrained_model_checkpoint={exported_bases['text']}"]
    caplog.set_level('INFO')
    _, solver = build_solver([*debug, f'egs_root={egs}'])  # the debug run fits: its plan is logged
    assert 'Memory plan of one training step (predicted)' in caplog.text
    settings = settings_of(solver.cfg)
    shape = memory_plan.shape_of_musicgen('base', solver._base.lm, solver._base.compression_model)
    assert settings.batch_size == 2
    one, two = (memory_plan.extension_step(shape, replace(settings, batch_size=b)).peak for b in (1, 2))
    # A budget between batch 1's need and batch 2's; the data folder does not exist: the plan stops first.
    available_gb = (one + two) / 2 / memory_plan.HEADROOM / memory_plan.GIB
    with pytest.raises(MemoryPlanError) as refused:
        build_solver([*debug, f'egs_root={tmp_path / "absent"}', f'memory_plan.available_gb={available_gb}'])
    message = str(refused.value)
    assert message.startswith('The training plan does not fit: one step needs ')
    assert 'dataset.batch_size=1, the largest batch that fits' in message
    assert 'extended_model.base_dtype=float16 (' in message and 'memory_plan.check=false' in message
    with pytest.raises(Exception) as data_error:  # unchecked, the same run gets as far as its data
        build_solver([*debug, f'egs_root={tmp_path / "absent"}', 'memory_plan.check=false'])
    assert not isinstance(data_error.value, MemoryPlanError) and 'absent' in str(data_error.value)


# ---- docs/ONE_GPU.md: training, sharing ---------------------------------------------------------

@pytest.mark.usefixtures('dora_dir')
def test_the_pages_training_export_and_sharing_commands(exported_bases, build_solver, tmp_path, monkeypatch, capsys):
    """prepare-data, training (the solver built: base loaded, plan checked, data checked), export of a
    saved state, the upload snippet (HfApi's network calls replaced by a copy into the hub cache) and
    the loading snippet, as the page writes them."""
    import huggingface_hub
    import huggingface_hub.constants
    from audiocraft_ext.data.synth_dataset import write_tone_folder
    cache = tmp_path / 'hub'
    hub_repo(cache, 'facebook/musicgen-small', {name: exported_bases['text'] / name for name in (LM_FILE, COMPRESSION_FILE)})
    monkeypatch.setenv('AUDIOCRAFT_CACHE_DIR', str(cache))
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.chdir(tmp_path)
    write_tone_folder(tmp_path / 'my_music', num_files=4, duration=30.0)

    run_cli(documented_command('prepare'), capsys)
    argv = documented_command('train')
    assert argv[:3] == ['python', '-m', 'audiocraft_ext.train']
    xp, solver = build_solver(argv[3:])
    assert solver.cfg.dataset.batch_size == 8 and solver.model.num_additional_layers == 12
    with xp.enter():
        solver.save_checkpoints()  # what a run's first epoch leaves, for the export below
    export = [re.sub(r'^SIG$', xp.sig, word) for word in documented_command('export')]
    run_cli(export, capsys)
    assert (tmp_path / 'my_extension' / 'extension_config.json').is_file()

    uploaded: tp.Dict[str, Path] = {}
    monkeypatch.setattr(huggingface_hub.HfApi, 'create_repo', lambda self, repo_id, **kwargs: repo_id)
    monkeypatch.setattr(huggingface_hub.HfApi, 'upload_folder',
                        lambda self, folder_path, repo_id, **kwargs: uploaded.setdefault(repo_id, Path(folder_path)))
    exec(compile(_block('upload.py'), 'upload.py', 'exec'), {})
    (repo_id, folder), = uploaded.items()
    hub_repo(cache, repo_id, {path.name: path for path in folder.iterdir()})
    namespace: tp.Dict[str, tp.Any] = {}
    exec(compile(_block('load.py'), 'load.py', 'exec'), namespace)
    model = namespace['model']
    assert model.lm.num_additional_layers == 12 and model.base_reference == 'facebook/musicgen-small'
