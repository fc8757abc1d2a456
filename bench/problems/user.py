"""User-defined problems: "package.module:function" names a function that returns a Problem.

The function is called with the study's [problem] options (all but `name`) as keyword
arguments. The module is imported from the Python path, with the current directory first and a
study file's folder last (`StudySpec.load` adds it), so a study can name a module that sits
beside it. See the README for the interface and an example.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import os
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.errors import ConfigError, mark_user_code, user_code_frame
from bench.params import coerce
from bench.problems.base import Problem


def user_problem(name: str, params: Mapping[str, Any] | None, *, source: str | None = None) -> Problem:
    module_name, _, function_name = name.partition(":")
    if not module_name or not function_name:
        raise ConfigError("problem", "package.module:function", name, source=source)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        if user_code_frame(err) is not None:
            raise  # raised by an import inside the module: told with its file and line
        raise ConfigError("problem", f"an importable module ({err})", name, source=source) from None
    except SyntaxError as err:
        raise ConfigError("problem", f"a module without syntax errors ({err.msg}: {err.filename}, "
                          f"line {err.lineno})", name, source=source) from None
    top = sys.modules.get(module_name.partition(".")[0], module)
    code_root, top_file = None, getattr(top, "__file__", None)
    if top_file:  # its errors are the user's, even installed in site-packages
        code_root = Path(top_file).parent if hasattr(top, "__path__") else Path(top_file)
        mark_user_code(code_root)
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigError("problem", f"a function {function_name!r} in module {module_name!r}", name,
                          source=source)
    params = dict(params or {})
    accepted = inspect.signature(function).parameters
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # unresolvable annotations: pass the values as given
        hints = {}
    # Values from the command line arrive as text: convert them to the annotated types, or, for
    # an argument without annotation, to its default's type (else "false" would be truthy).
    for k, v in params.items():
        default = accepted[k].default if k in accepted else inspect.Parameter.empty
        if k in hints:
            params[k] = coerce(hints[k], v, f"problem.{k}", source)
        elif isinstance(v, str) and type(default) in (bool, int, float):
            params[k] = coerce(type(default), v, f"problem.{k}", source)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    unknown = sorted(k for k in params if k not in accepted and not takes_any)
    if unknown:
        raise ConfigError(f"problem.{unknown[0]}", f"an argument of {name} ({', '.join(accepted) or 'none'})",
                          source=source)
    try:
        problem = function(**params)
    except ConfigError as err:  # from a problem it builds in turn (`build_problem("toy", options)`)
        raise err.located(source) from None
    except (TypeError, ValueError) as err:
        raise ConfigError("problem", f"options {name} accepts ({err})", params, source=source) from None
    if not isinstance(problem, Problem):
        raise ConfigError("problem", f"{name} to return a bench.problems.Problem",
                          type(problem).__name__, source=source)
    problem.name = name
    if code_root is not None:
        problem.code_fingerprint = code_fingerprint(code_root)
    return problem


def code_fingerprint(root: Path) -> str:
    r"""Which version of a problem's code this is: a hash of its module, or of every module of its
    top-level package, read as Python syntax trees, so that comments and layout do not count.
    Text, such as "my_problems.py 3f2a9c0e1b7d", that a changed study's message can show.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> versions = ["def loss(p, t):\n    return (p - t) ** 2\n",
    ...             "# squared error\ndef loss(p, t):\n    return (p-t)**2  # per example\n",
    ...             "def loss(p, t):\n    return abs(p - t)\n"]
    >>> prints = []
    >>> for text in versions:
    ...     _ = (folder / "mine.py").write_text(text)
    ...     prints.append(code_fingerprint(folder / "mine.py"))
    >>> prints[0] == prints[1] != prints[2], prints[0].startswith("mine.py ")
    (True, True)
    """
    files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
    digest = hashlib.sha256()
    for path in files:
        text = path.read_bytes()
        try:
            text = ast.dump(ast.parse(text)).encode()
        except (SyntaxError, ValueError):  # not imported, or not Python 3: its bytes, then
            pass
        digest.update(f"{path.relative_to(root) if root.is_dir() else path.name}\0".encode() + text + b"\0")
    label = f"{root.name}/ ({len(files)} files)" if root.is_dir() else root.name
    return f"{label} {digest.hexdigest()[:12]}"
