"""Break one thing at a time (tests/mutants/sitecustomize.py) and list the tests that fail.

    python scripts/mutation_check.py                      # every mutant, the whole suite each
    python scripts/mutation_check.py --mutant no_kl tests/test_forgetting_control.py

A mutant that no test catches is printed as SURVIVED and the script exits with 1.
"""
import argparse
import os
from pathlib import Path
import re
import subprocess
import sys

ROOT = Path(__file__).resolve().parent.parent
MUTANTS_DIR = ROOT / 'tests' / 'mutants'
MUTANTS = ('constant_encoder', 'zero_lr', 'no_kl')


def failing_tests(mutant: str, pytest_args: list) -> list:
    env = {**os.environ, 'AUDIOCRAFT_EXT_MUTANT': mutant,
           'PYTHONPATH': os.pathsep.join(filter(None, [str(MUTANTS_DIR), os.environ.get('PYTHONPATH')]))}
    result = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-rfE', '-p', 'no:cacheprovider', *pytest_args],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    return re.findall(r'^(?:FAILED|ERROR) (\S+)', result.stdout, flags=re.M)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--mutant', choices=MUTANTS, action='append', help='default: all three')
    parser.add_argument('pytest_args', nargs='*', help='passed to pytest (default: the whole suite, -n 2)')
    args = parser.parse_args()
    survived = False
    for mutant in args.mutant or MUTANTS:
        failed = failing_tests(mutant, args.pytest_args or ['-n', '2', '--dist', 'loadfile'])
        survived |= not failed
        print(f"{mutant}: {len(failed)} failing" if failed else f"{mutant}: SURVIVED", flush=True)
        for name in failed:
            print(f"    {name}", flush=True)
    return 1 if survived else 0


if __name__ == '__main__':
    sys.exit(main())
