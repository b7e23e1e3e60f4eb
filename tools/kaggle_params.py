"""Push-time notebook parameters for ``make push-kernel P='-p NAME VALUE ...'`` (kaggle_ops).

A Kaggle kernel runs its notebook as pushed, without papermill: the values are written
into the notebook before the push, the way papermill does when it runs one (its
``parameterize_notebook``: an ``injected-parameters`` cell right after the cell tagged
``parameters``). ``P`` has the syntax of ``make run-<nb> P=...`` (papermill's CLI,
split with shlex): ``-p NAME VALUE`` (type guessed by papermill's ``_resolve_type``:
1 -> int, 0.5 -> float, True/False/None), ``-r NAME VALUE`` (raw text), ``-y YAML`` (a
mapping); like papermill's CLI, YAML values come first, then ``-p``, then ``-r``.

Everything is checked before anything is sent: every name must be declared in the
notebook's parameters cell (papermill's own parameter inference; the closest declared
name is suggested), every value of a pixelplay Config field must convert
(``coerce_value``), and the notebook's defaults with the values on top must build a
Config (``make_config``, whose ``preset`` must be known). Raises ParamsError with the fix.

Imported by kaggle_ops only when P is given; needs papermill and pixelplay_lib (the venv).
"""

from __future__ import annotations

import ast
import difflib
import shlex
from pathlib import Path
from typing import Any

# Options of papermill's CLI taken here: option -> (kind, number of values)
OPTIONS = {"-p": ("p", 2), "--parameters": ("p", 2), "-r": ("r", 2),
           "--parameters_raw": ("r", 2), "-y": ("y", 1), "--parameters_yaml": ("y", 1)}
SYNTAX = "P='-p NAME VALUE ...' (-p: value typed as papermill does, -r: raw text, -y: YAML)"


class ParamsError(ValueError):
    """P= cannot be pushed; the message names the parameter and the fix."""


def parse_params(text: str) -> dict[str, Any]:
    """P's text -> {name: value} as papermill's CLI would pass them (yaml, then -p, then -r).
    Raises ParamsError on other options, missing values, or YAML that is no mapping."""
    import yaml
    from papermill.cli import _resolve_type
    from papermill.iorw import NoDatesSafeLoader

    try:
        tokens = shlex.split(text)
    except ValueError as e:
        raise ParamsError(f"P={text!r}: {e} (quote values with spaces: -p NAME 'a b')") from None
    given: dict[str, list[list[str]]] = {"y": [], "p": [], "r": []}
    i = 0
    while i < len(tokens):
        option = tokens[i]
        if option not in OPTIONS:
            raise ParamsError(f"P: {option!r} is not a parameter option: use {SYNTAX}")
        kind, n = OPTIONS[option]
        values = tokens[i + 1:i + 1 + n]
        if len(values) < n:
            raise ParamsError(f"P: {option} needs {'NAME VALUE' if n == 2 else 'YAML'} "
                              f"(got {' '.join(values) or 'nothing'}): use {SYNTAX}")
        given[kind].append(values)
        i += 1 + n
    params: dict[str, Any] = {}
    for (text_yaml,) in given["y"]:
        try:
            loaded = yaml.load(text_yaml, Loader=NoDatesSafeLoader) or {}
        except yaml.YAMLError as e:
            raise ParamsError(f"P: -y {text_yaml!r} is not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ParamsError(f"P: -y {text_yaml!r} is not a YAML mapping (NAME: VALUE)")
        params.update(loaded)
    params.update({name: _resolve_type(value) for name, value in given["p"]})
    params.update({name: value for name, value in given["r"]})
    return params


def declared_parameters(nb: Any, path: Path) -> dict[str, Any]:
    """{name: default value} of the notebook's parameters cell, as papermill infers them
    (names starting with _ are the cell's own helpers, not parameters). A default that is
    not a literal (an expression) is None."""
    from papermill.inspection import _infer_parameters
    from papermill.utils import find_first_tagged_cell_index

    if find_first_tagged_cell_index(nb, "parameters") < 0:
        raise ParamsError(f"{path} has no cell tagged 'parameters': it takes no P=")
    try:
        found = _infer_parameters(nb)
    except ValueError as e:  # no kernelspec: papermill cannot tell the language
        raise ParamsError(f"{path}: {e} (sync it with `make sync`)") from None
    declared = {}
    for param in found:
        if not param.name.startswith("_"):
            try:
                declared[param.name] = ast.literal_eval(param.default)
            except (ValueError, SyntaxError):
                declared[param.name] = None
    return declared


def check_names(params: dict[str, Any], declared: dict[str, Any], path: Path) -> None:
    """Every name of params is declared; ParamsError suggests the closest declared one."""
    unknown = [name for name in params if name not in declared]
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, list(declared), n=1)
        hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
    raise ParamsError(f"P: unknown parameter(s) of {path.name}: {', '.join(hints)}. Its "
                      f"parameters cell declares: {', '.join(declared) or 'nothing'}")


def check_config(params: dict[str, Any], declared: dict[str, Any]) -> None:
    """The values that are pixelplay Config fields convert, and the notebook's defaults
    with them on top build a Config (`preset` among the known presets); ParamsError
    naming the field otherwise."""
    from dataclasses import fields

    from pixelplay_lib.config import Config, coerce_value, make_config

    known = {f.name for f in fields(Config)}
    problems = []
    for name, value in params.items():
        if name in known and value is not None:
            try:
                coerce_value(name, value)
            except ValueError as e:
                problems.append(str(e))
    if problems:
        raise ParamsError("P: " + "; ".join(problems))
    values = {**declared, **params}
    config_values = {k: v for k, v in values.items() if k in known}
    try:
        make_config(preset=values.get("preset") or "", **config_values)
    except (TypeError, ValueError) as e:
        raise ParamsError(f"P: {e}") from None


def notebook_with_parameters(path: Path, text: str) -> tuple[Any, dict[str, Any]]:
    """(the notebook at `path` with the P values injected as papermill does, the values).
    Raises ParamsError before anything else happens when a value cannot go in."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    params = parse_params(text)
    if not params:
        raise ParamsError(f"P={text!r} gives no parameter: use {SYNTAX}")
    nb = load_notebook_node(str(path))  # what papermill's execute_notebook reads
    declared = declared_parameters(nb, path)
    check_names(params, declared, path)
    check_config(params, declared)
    return parameterize_notebook(nb, params), params
