"""docs/ERRORS.md lists every error the package raises with a message for a user to read.

Checked here, from the source (no module is imported):
- every `raise` in audiocraft_ext/ whose message is written there has a row whose message column
  holds the message's start: its first literal part (or as many as make `KEY_MIN` characters, at
  most `KEY_MAX`), with any text for the parts only known at run time (PATH, N, ...). Coverage is
  keyed on that text, not on the file, so a raise may move between modules. Messages built by a
  function (`raise Error(message_of(...))`, `raise factory(...)`, and the calls of `RAISING_HELPERS`)
  are followed into it with the call's arguments;
- the raises that need no row are named below, by the start of their message, each with the reason;
- rows are numbered 1..N in document order;
- every test a row names (`tests/FILE::TEST[case]`) is a function of that file, and its case, when
  given, is written in that file.
"""
import ast
import builtins
from pathlib import Path
import re
import typing as tp

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'audiocraft_ext'
CATALOGUE = ROOT / 'docs' / 'ERRORS.md'
HOLE = '\0'  # a part of a message only known at run time
KEY_MIN, KEY_MAX = 20, 32  # characters of a message's start that a row must show
GAP = r'[^|]{0,200}?'  # what a row shows for a run-time part (PATH, N, 'value', ...), within its cell

# Functions that raise a message made of their arguments: each call is a raise of that message.
RAISING_HELPERS = {
    '_refuse': "transformers export: `problem` + what transformers' model cannot represent + `fix`",
    '_report': 'data checks: the count, `what` and the files, then `fix`',
}

# Raises that need no row, by the start of their message (a regex), and why.
NOT_USER_FACING = {
    r"module 'audiocraft_ext' has no attribute": "Python's own error for a missing module attribute (the module "
                                                 "`__getattr__` protocol), as for any module",
    r'variable-length quantity longer than 4 bytes|data byte without a status byte|truncated event':
        "read_midi catches them and raises MidiFileError 'PATH is not a readable MIDI file (REASON)' (row), with "
        "this text as the reason",
    r'A key signature has -7 to 7 sharps': 'key_name is only called on the key signatures read_midi keeps (-7 to 7)',
    r'Unknown pattern|Rendered silence or non-finite audio': 'the synthesizer renders the constant specs of the '
                                                             'two synthetic domains (synth_domains); only an edited '
                                                             'spec reaches these',
    r'routes and with_base_output cannot be combined|routes for a batch of':
        "states ExtendedMusicGen's generation sets itself, after checking `extensions=` (its row)",
    r'compute_predictions_with_base scores full sequences': "a guard against calling the solver's scoring method "
                                                            "inside the model's own streaming generation",
    r'The replay loader gave': "the replay loader is built with the replay batch size: only a bug breaks it",
    r'The replay set is empty: generate more samples|must be > 0 for a replay source to be used':
        'the forgetting-control config check refuses these settings first (rows of replay.ratio and '
        'replay.holdout)',
    r'Codes up to': 'MusicGen codebooks hold at most 2048 codes; int16 storage holds 32767',
    r'is a base of kind': 'load_plain_base is only called on the kinds it reads (its callers dispatch on the kind)',
    r"differs from transformers' EnCodec layer in|where transformers' EncodecModel has|has no AudioCraft "
    r"counterpart|has another skip connection than transformers'|layers, where transformers' EncodecModel has one "
    r"LSTM size|codebooks do not give transformers' EncodecModel a whole bandwidth|does not decode like the base's "
    r"compression model|has a weight transformers' MusicGen decoder has no place for|does not fit transformers' "
    r"model|Weights of transformers' model left unset|save_pretrained wrote no":
        'cross-checks of the transformers export after the model passed the checks of its rows (module by module, '
        'then the decoded audio and every weight): they catch a bug of the conversion or a change of transformers '
        'before anything is written',
    r'an extension config is a JSON object|layer_config must map StreamingTransformer argument names':
        "ExtensionConfig.from_dict's reasons, passed on inside 'PATH has an extension config this base cannot build "
        "(REASON)' (row)",
}

# Raises whose message is not written at the raise, by the expression that makes it, and why.
MESSAGE_FROM_ELSEWHERE = {
    'GenerateError(str(error))': "generate passes on get_pretrained's message (its rows) as one error line",
    'type(error)(prefix + message)': "ExtensionConfig's messages (rows of num_additional_layers, extension_scale), "
                                     "named as the caller spells the keys (extended_model.*)",
    'OSError(code, os.strerror(code), str(a))': "the operating system's error (errno) of a failed rename, passed on",
    'ValueError(name)': "build_optional_metric of a name check_optional_metrics never returns: only a bug reaches it",
}

# Messages with fewer than GENERIC_MAX literal characters pass another message on, or are filled in
# from a table: their start says nothing. Each is named here with the message rows must show for it.
GENERIC_MAX = 12
GENERIC = {
    '{} {}': ('prepare-data: the split sizes\' message, then how many files and which --valid / --evaluate',
              ['usable audio files, valid=']),
    '{}={}: use {}.': ('the sampling settings and the plan settings, named from a table', [
        "temperature='hot': use a number above 0", 'top_p=2.0: use a probability', 'cfg_coef=nan: use a finite number',
        'batch_size=0: use a positive integer.']),
    '--attach {}={}: {}': ("generate --attach: attach's message", ['--attach NAME=PATH:']),
    '--scale: {}': ("generate --scale: ExtensionConfig's extension_scale message", ['--scale']),
}


# ---- the messages of the package's raises ----------------------------------------------------------

def _template(node: ast.AST, env: tp.Mapping[str, str]) -> tp.Optional[str]:
    """The text `node` makes, HOLE for each part only known at run time; None if it is no string."""
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) else None
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(value.value)
            elif isinstance(value.value, ast.Name) and value.conversion == -1 and value.format_spec is None \
                    and value.value.id in env:
                parts.append(env[value.value.id])
            else:
                parts.append(HOLE)
        return ''.join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _template(node.left, env), _template(node.right, env)
        if left is None and right is None:
            return None
        return (HOLE if left is None else left) + (HOLE if right is None else right)
    if isinstance(node, ast.Name):
        return env.get(node.id)
    return None


def _is_exception_class(func: ast.AST) -> bool:
    """`SomeError(...)` (not a function returning an error or a message)."""
    if isinstance(func, ast.IfExp):  # (ValueError if ... else TypeError)(...)
        return True
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ''
    return name.endswith(('Error', 'Exception', 'Exit')) or isinstance(getattr(builtins, name, None), type)


class Raise(tp.NamedTuple):
    where: str               # FILE:LINE, for failure messages only
    template: tp.Optional[str]
    expression: str          # the raised expression, for the messages not written at the raise


def package_raises() -> tp.List[Raise]:
    trees = {path: ast.parse(path.read_text(encoding='utf-8')) for path in sorted(PACKAGE.rglob('*.py'))}
    functions: tp.Dict[str, ast.FunctionDef] = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                functions.setdefault(node.name, node)

    def returned(name: str, call: ast.Call, env: tp.Mapping[str, str]) -> tp.Optional[str]:
        """The message function `name` raises or returns, its parameters bound to `call`'s arguments."""
        function = functions.get(name)
        if function is None:
            return None
        bound = {key: value for key, value in env.items() if key not in {a.arg for a in function.args.args}}
        arguments = list(zip((a.arg for a in function.args.args), call.args))
        arguments += [(keyword.arg, keyword.value) for keyword in call.keywords if keyword.arg]
        for parameter, argument in arguments:
            text = _template(argument, env)
            if text is not None:
                bound[parameter] = text
        for node in ast.walk(function):
            value = node.value if isinstance(node, ast.Return) else node.exc if isinstance(node, ast.Raise) else None
            if isinstance(value, ast.Call) and _is_exception_class(value.func):
                value = value.args[0] if value.args else None
            text = None if value is None else _template(value, bound)
            if text is not None:
                return text
        return None

    found = []
    for path, tree in trees.items():
        env = {}  # the module's string constants
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                text = _template(node.value, {})
                if text is not None:
                    env[node.targets[0].id] = text
        inside_helpers = {id(node) for function in ast.walk(tree)
                          if isinstance(function, ast.FunctionDef) and function.name in RAISING_HELPERS
                          for node in ast.walk(function)}
        where = lambda node: f'{path.relative_to(ROOT)}:{node.lineno}'  # noqa: E731
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in RAISING_HELPERS:
                found.append(Raise(where(node), returned(node.func.id, node, env), ast.unparse(node)))
            if not isinstance(node, ast.Raise) or id(node) in inside_helpers or not isinstance(node.exc, ast.Call):
                continue  # bare `raise`, `raise error` (re-raised) and the helpers' own raises
            exc = node.exc
            if not _is_exception_class(exc.func):  # raise factory(...): the error it returns
                name = exc.func.id if isinstance(exc.func, ast.Name) else ''
                found.append(Raise(where(node), returned(name, exc, env), ast.unparse(exc)))
                continue
            if not exc.args:
                continue
            message = exc.args[0]
            text = _template(message, env)
            if text is None and isinstance(message, ast.Call) and isinstance(message.func, ast.Name):
                text = returned(message.func.id, message, env)
            found.append(Raise(where(node), text, ast.unparse(exc)))
    return found


def literal_length(template: str) -> int:
    return len(''.join(part.strip() for part in re.split(r'[\0\n]+', template)))


def start_pattern(template: str) -> str:
    """A regex of the message's start as a row shows it: its first literal part, or as many parts as
    make KEY_MIN characters (GAP for each run-time part between them), cut at KEY_MAX characters.
    Backticks are dropped (rows quote messages in code spans); runs of spaces match any spaces."""
    parts: tp.List[str] = []
    count = 0
    for piece in re.split(r'[\0\n]+', template.replace('`', '')):
        text = piece.strip()
        if not text:
            continue
        text = text[:KEY_MAX - count]
        count += len(text)
        parts.append(r'\s+'.join(re.escape(word) for word in text.split()))
        if count >= KEY_MIN:
            break
    return GAP.join(parts)


# ---- the catalogue ------------------------------------------------------------------------------

ROW = re.compile(r'^\|\s*(\d+)\s*\|')
TEST = re.compile(r'tests/(test_\w+\.py)::(\w+)(?:\[([^\]]+)\])?')


def catalogue_rows() -> tp.List[str]:
    """The table rows of ERRORS.md (lines starting with `| N |`), backticks dropped."""
    return [line.replace('`', '') for line in CATALOGUE.read_text(encoding='utf-8').splitlines() if ROW.match(line)]


def _is_excluded(template: str) -> bool:
    text = template.replace(HOLE, '{}')
    return any(re.search(pattern, text) for pattern in NOT_USER_FACING)


def test_every_message_the_package_raises_has_a_row():
    rows = catalogue_rows()
    raises = package_raises()
    assert len(raises) > 200, 'the scan of the package found too few raises'
    missing = []
    for found in raises:
        if found.template is None:
            if found.expression not in MESSAGE_FROM_ELSEWHERE:
                missing.append(f"{found.where}: message not written at the raise ({found.expression}): write it "
                               f"there, or name it in MESSAGE_FROM_ELSEWHERE with the reason")
            continue
        if _is_excluded(found.template):
            continue
        generic = found.template.replace(HOLE, '{}')
        if literal_length(found.template) < GENERIC_MAX:
            if generic not in GENERIC:
                missing.append(f"{found.where}: {generic!r} says too little to find its row: name it in GENERIC")
            continue
        pattern = start_pattern(found.template)
        if not any(re.search(pattern, row) for row in rows):
            missing.append(f"{found.where}: no row of docs/ERRORS.md shows {generic[:90]!r} (looked for /{pattern}/)")
    assert not missing, 'uncatalogued errors:\n' + '\n'.join(missing)


def test_generic_messages_are_shown_by_their_rows():
    rows = ' '.join(catalogue_rows())
    for template, (_, shown) in GENERIC.items():
        for text in shown:
            assert text in rows, f'{template!r}: no row shows {text!r}'


def test_rows_are_numbered_one_to_n_in_order():
    numbers = [int(ROW.match(row).group(1)) for row in catalogue_rows()]
    assert numbers == list(range(1, len(numbers) + 1)), numbers


def test_every_row_names_tests_that_exist():
    problems = []
    for row in catalogue_rows():
        number = ROW.match(row).group(1)
        cells = [cell.strip() for cell in row.strip().strip('|').split('|')]
        tests = TEST.findall(cells[-1])
        if not tests:
            problems.append(f"row {number} names no test (tests/FILE::TEST) in its last column")
        for name, function, case in tests:
            path = ROOT / 'tests' / name
            if not path.is_file():
                problems.append(f"row {number}: tests/{name} does not exist")
                continue
            source = path.read_text(encoding='utf-8')
            functions = {node.name for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)}
            if function not in functions:
                problems.append(f"row {number}: tests/{name} has no function {function}")
            elif case and case not in source:
                problems.append(f"row {number}: tests/{name}::{function}: no case {case!r} in that file")
    assert not problems, '\n'.join(problems)


@pytest.mark.parametrize('template, expected', [
    ('Extension not found: \0. Check the path.', r'Extension\s+not\s+found:'),
    ('replay.prompts=\0: no such file.', r'replay\.prompts=' + GAP + r':\s+no\s+such\s+file\.'),
    ('\0 is empty (0 bytes): it was not written completely.', r'is\s+empty\s+\(0\s+bytes\):\s+it\s+was\s+not\s+w'),
])
def test_a_message_start_is_its_first_literal_part_long_enough(template, expected):
    assert start_pattern(template) == expected
