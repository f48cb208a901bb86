"""One registry from names to models and tasks. Introduced in chapter 1.

The same string selects a model or a task in a notebook, the command line and a results table:
``build_model("local_transformer", window=16)``, ``build_task("changing_facts")``. The tables are
declared where the models and tasks are (:data:`memorylib.models.MODELS`,
:data:`memorylib.tasks.TASKS`); this module only looks names up, and lets a reader add their own
model or task under a new name (:func:`register_model`, :func:`register_task`).
"""

from __future__ import annotations

from typing import Callable

from . import models, needles, tasks
from .checks import check_name

_MODELS: dict[str, Callable] = dict(models.MODELS)
_TASKS: dict[str, Callable] = {**tasks.TASKS, **needles.TASKS}


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


def build_model(name: str, **kwargs):
    """Build a registered model by name; unknown names list the valid ones."""
    return check_name("model", name, _MODELS)(**kwargs)


def build_task(name: str, **kwargs):
    """Build a registered task by name; unknown names list the valid ones."""
    return check_name("task", name, _TASKS)(**kwargs)


def model_names() -> list[str]:
    return sorted(_MODELS)


def task_names() -> list[str]:
    return sorted(_TASKS)
