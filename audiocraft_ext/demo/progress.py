"""Progress for the demo: numbered steps, and condensed output from the training runs.

The runs log through flashy (every line to `solver.log.0` in the XP folder too); the demo shows
only the lines a person follows (progress bars and epoch summaries), shortened, and keeps the
full output in a log file next to the results.
"""
from contextlib import contextmanager
import io
import logging
import re
import sys
import time
import typing as tp

# flashy lines look like "[05-01 10:00:00][flashy.solver][INFO] - Train | Epoch 1 | 10/20 | ce 5.1 ..."
_PREFIX = re.compile(r'^\[[^\]]*\]\[[^\]]*\]\[[^\]]*\] - ')
_ANSI = re.compile(r'\x1b\[[0-9;]*m')
_SHOW = re.compile(r'\| Epoch \d+ \|.*\d+/\d+|Summary|Error|error:|Traceback')


def format_seconds(seconds: float) -> str:
    return f'{seconds:.0f} s' if seconds < 100 else f'{int(seconds // 60)} min {seconds % 60:02.0f} s'


class Steps:
    """`[x/N] name ...` headers with the elapsed time of each step and of the whole demo."""
    def __init__(self, names: tp.Sequence[str], out: tp.Optional[tp.TextIO] = None):
        self.names = list(names)
        self.out = out or sys.stdout  # the stdout of the call, not of the import (tests swap it)
        self.start = time.monotonic()
        self.times: tp.Dict[str, float] = {}
        self._current: tp.Optional[str] = None
        self._step_start = 0.0

    def begin(self, name: str, detail: str = '') -> None:
        self.end()
        index = self.names.index(name) + 1
        self._current, self._step_start = name, time.monotonic()
        self.print(f"[{index}/{len(self.names)}] {name}" + (f": {detail}" if detail else ''))

    def end(self, note: str = '') -> None:
        if self._current is None:
            return
        elapsed = time.monotonic() - self._step_start
        self.times[self._current] = elapsed
        self.print(f"      done in {format_seconds(elapsed)}" + (f" ({note})" if note else ''))
        self._current = None

    def print(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    @property
    def total(self) -> float:
        return time.monotonic() - self.start


class CondensedLog(io.TextIOBase):
    """A text stream that writes everything to `log_file` and echoes progress lines, shortened."""
    def __init__(self, log_file: tp.TextIO, echo: tp.Optional[tp.TextIO] = None, indent: str = '      '):
        self.log_file = log_file
        self.echo = echo or sys.stdout
        self.indent = indent
        self._pending = ''

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log_file.write(text)
        self._pending += text
        while '\n' in self._pending:
            line, self._pending = self._pending.split('\n', 1)
            self.show(line)
        return len(text)

    def show(self, line: str) -> None:
        line = _PREFIX.sub('', _ANSI.sub('', line).rstrip())
        if _SHOW.search(line):
            if len(line) > 150:
                line = line[:147] + '...'
            print(self.indent + line, file=self.echo, flush=True)

    def flush(self) -> None:
        self.log_file.flush()


@contextmanager
def condensed_stderr(log_path, echo: tp.Optional[tp.TextIO] = None):
    """Inside the block, stderr (where flashy's handler is created) goes through a `CondensedLog`.

    The root logger's handlers and level are put back afterwards: flashy's `setup_logging`
    replaces them for the run.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with open(log_path, 'a', encoding='utf-8') as log_file:
        stream = CondensedLog(log_file, echo)
        saved, sys.stderr = sys.stderr, stream
        try:
            yield stream
        finally:
            sys.stderr = saved
            for handler in root.handlers:
                if handler not in handlers:
                    handler.close()
            root.handlers[:] = handlers
            root.setLevel(level)
