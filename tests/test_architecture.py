"""The package's shape: imports go one way (import-linter's layer contract in
pyproject.toml), and our own modules are imported at the top of a file, where a reader sees them,
except in the command-line front ends that defer heavy imports to keep `--help` instant."""
import ast
from pathlib import Path
import subprocess
import sys

import audiocraft_ext

PACKAGE = Path(audiocraft_ext.__file__).parent
ROOT = PACKAGE.parent
# Front ends that import the command's implementation only when that command runs (`audiocraft-ext
# --help` and argument errors answer without importing torch); `train.py`, which every data-loader
# worker imports as its `__mp_main__` and which builds the solver only in the main process; the
# package's lazy attributes.
# Entry points import lazily to start fast; memory_plan too, so that `audiocraft-ext plan` for a
# released MusicGen's published shape runs without importing torch.
DEFERRED_IMPORTS_ALLOWED = {'__init__.py', 'cli.py', 'generate.py', 'report_command.py', 'train.py', 'memory_plan.py'}


def test_import_contract_is_kept():
    lint = Path(sys.executable).parent / 'lint-imports'
    result = subprocess.run([str(lint), '--no-cache'], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'Contracts: 1 kept, 0 broken.' in result.stdout


def _own_imports_inside_functions(path: Path):
    tree = ast.parse(path.read_text(encoding='utf-8'))
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or '').startswith('audiocraft_ext')):
                yield f"{path.relative_to(ROOT)}:{node.lineno} in {function.name}()"
            elif isinstance(node, ast.Import) and any(a.name.startswith('audiocraft_ext') for a in node.names):
                yield f"{path.relative_to(ROOT)}:{node.lineno} in {function.name}()"


def test_own_modules_are_imported_at_the_top():
    found = [where for path in sorted(PACKAGE.rglob('*.py')) if path.name not in DEFERRED_IMPORTS_ALLOWED
             for where in _own_imports_inside_functions(path)]
    assert found == [], "imports of audiocraft_ext modules inside functions (move them to the top):\n" + \
        '\n'.join(found)
