"""`--config=GROUP/NAME` on the command line: the form the original Extended MusicGen document used.

Hydra has no such flag (its `--config-name`, `--config-path` and `--config-dir` make `--config`
ambiguous), so our entry points, and `python -m audiocraft.train` through our Hydra plugin,
rewrite it into the Hydra override `GROUP=NAME` before Hydra or Dora read the arguments.
Kept free of heavy imports: the Hydra plugin imports it while Hydra starts.
"""
import typing as tp


def expand_config_flags(argv: tp.Sequence[str]) -> tp.List[str]:
    """`--config=solver/NAME` or `--config solver/NAME` -> `solver=NAME` (any config group)."""
    out: tp.List[str] = []
    args = list(argv)
    index = 0
    while index < len(args):
        arg = args[index]
        value = None
        if arg.startswith('--config='):
            value = arg[len('--config='):]
        elif arg == '--config' and index + 1 < len(args):
            index += 1
            value = args[index]
        if value is None:
            out.append(arg)
        else:
            value = value[:-len('.yaml')] if value.endswith('.yaml') else value
            group, sep, name = value.partition('/')
            if not sep:
                raise SystemExit(f"--config={value}: expected GROUP/NAME, e.g. --config=solver/extended_musicgen")
            out.append(f'{group}={name}')
        index += 1
    return out
