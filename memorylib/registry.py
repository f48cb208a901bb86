"""One registry from names to models and tasks. Introduced in chapter 1.

The same string selects a model or a task in a notebook, the command line and a results table:
``build_model("local_transformer", window=16)``, ``build_task("changing_facts")``.
"""

from __future__ import annotations

import difflib
from typing import Callable

_MODELS: dict[str, Callable] = {}
_TASKS: dict[str, Callable] = {}


def _register(table: dict, kind: str, name: str):
    def decorator(factory):
        if name in table:
            raise ValueError(f"{kind} {name!r} is already registered")
        table[name] = factory
        return factory
    return decorator


def register_model(name: str):
    """Decorator: make ``factory(**kwargs) -> nn.Module`` buildable as ``build_model(name)``."""
    return _register(_MODELS, "model", name)


def register_task(name: str):
    """Decorator: make ``factory(**kwargs) -> Task`` buildable as ``build_task(name)``."""
    return _register(_TASKS, "task", name)


def _load():
    # importing the modules runs their @register_* decorators
    from . import models, tasks  # noqa: F401


def _lookup(table: dict, kind: str, name: str):
    _load()
    if not isinstance(name, str) or name not in table:
        valid = sorted(table)
        hint = difflib.get_close_matches(str(name), valid, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ValueError(f"unknown {kind} {name!r}{extra}; valid {kind}s: {', '.join(valid)}")
    return table[name]


def build_model(name: str, **kwargs):
    """Build a registered model by name; unknown names list the valid ones."""
    return _lookup(_MODELS, "model", name)(**kwargs)


def build_task(name: str, **kwargs):
    """Build a registered task by name; unknown names list the valid ones."""
    return _lookup(_TASKS, "task", name)(**kwargs)


def model_names() -> list[str]:
    _load()
    return sorted(_MODELS)


def task_names() -> list[str]:
    _load()
    return sorted(_TASKS)
