"""Continual learning: the tasks of the suite one after another, with a forgetting curve for each.
Introduced in chapter 8.

A model is trained on a sequence of phases, each a task it has not been trained on yet (a shift
of the data distribution), for the same number of steps, with a fresh optimizer per phase (the
schedule of :func:`~memorylib.training.train` warms up again). Every ``eval_every`` steps it is
evaluated on held-out sequences of *every* task of the sequence, so the curves show learning (the
current phase's task rising) and forgetting (an earlier task falling) on one time axis.

This is forgetting in the model's weights (what training on new data overwrites), not in its
memory (what a sequence writes and erases, the book's main subject); chapter 8 shows both.
"""

from __future__ import annotations

import time

import torch

from .checks import check_int
from .registry import build_model
from .training import evaluate, train


def forgetting_curves(model: str, phases: list[tuple[str, object]], *, steps: int = 150, eval_every: int = 50,
                      batch_size: int = 64, lr: float | dict = 1e-2, seed: int = 0, num_examples: int = 128,
                      model_kwargs: dict | None = None, progress: bool = False) -> dict:
    """Train ``model`` (a registry name, built with ``torch.manual_seed(seed)``) on ``phases``
    (``[(name, task), ...]``) in order, ``steps`` each, and evaluate every task every
    ``eval_every`` steps (and before training, and after each phase's last step). ``lr``: one
    outer learning rate, or ``{phase name: rate}`` (each phase's fresh optimizer at its own rate,
    e.g. the rate tuned for the model on that task).

    Returns ``{"model", "phases": [names], "step": [updates done at each evaluation],
    "accuracy": {task name: [accuracy at each evaluation]}, "ci": {task: [[lo, hi], ...]},
    "forgetting": {task: best accuracy - final accuracy, for every task before the last},
    "seconds"}``."""
    check_int("steps", steps, 1)
    check_int("eval_every", eval_every, 1)
    names = [name for name, _ in phases]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"phases must be a non-empty list of (name, task) with distinct names, got {names}")
    rates = lr if isinstance(lr, dict) else {n: lr for n in names}
    if set(rates) != set(names):
        raise ValueError(f"lr must be one rate or a rate for every phase {names}, got rates for {sorted(rates)}")
    torch.manual_seed(seed)
    net = build_model(model, **(model_kwargs or {}))
    out = {"model": model, "phases": names, "lr": {n: rates[n] for n in names}, "step": [],
           "accuracy": {n: [] for n in names}, "ci": {n: [] for n in names}}

    def measure(step: int) -> None:
        out["step"].append(step)
        for name, task in phases:
            r = evaluate(net, task, num_examples=num_examples, seed=seed)
            out["accuracy"][name].append(r["accuracy"])
            out["ci"][name].append(r["ci"])

    start = time.perf_counter()
    measure(0)
    # train() calls its monitor after the update of every step index s with s % eval_every == 0 and
    # after the last one: the k-th call has seen logged[k] + 1 updates of this phase
    logged = sorted({*range(0, steps, eval_every), steps - 1})
    for p, (name, task) in enumerate(phases):
        calls = iter(logged)

        def monitor(model, batch, p=p, calls=calls):
            measure(p * steps + next(calls) + 1)
            return {}

        train(net, task, steps=steps, batch_size=batch_size, lr=rates[name], seed=seed + p, log_every=eval_every,
              progress=progress, desc=f"{model}: {name}", monitor=monitor)
    out["forgetting"] = {n: round(max(out["accuracy"][n]) - out["accuracy"][n][-1], 4) for n in names[:-1]}
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def joint_training(model: str, phases: list[tuple[str, object]], *, steps: int = 150, batch_size: int = 64,
                   lr: float = 1e-2, seed: int = 0, num_examples: int = 512, model_kwargs: dict | None = None,
                   progress: bool = False) -> dict:
    """The reference a continual run is judged against: the same model trained on all the tasks of
    ``phases`` at once (every batch drawn from one of them, uniformly), for as many steps as the
    phases together (``len(phases) * steps``), then evaluated on each. Forgetting is the gap to
    this, not only the fall from a task's best. Returns ``{"model", "steps", "accuracy": {task:
    accuracy}, "ci": {task: [lo, hi]}, "seconds"}``."""
    from .tasks import TaskMixture

    check_int("steps", steps, 1)
    if not phases:
        raise ValueError("phases must be a non-empty list of (name, task)")
    torch.manual_seed(seed)
    net = build_model(model, **(model_kwargs or {}))
    start = time.perf_counter()
    train(net, TaskMixture([task for _, task in phases]), steps=steps * len(phases), batch_size=batch_size, lr=lr,
          seed=seed, log_every=max(1, steps), progress=progress, desc=f"{model}: all tasks at once")
    out = {"model": model, "steps": steps * len(phases), "accuracy": {}, "ci": {}}
    for name, task in phases:
        r = evaluate(net, task, num_examples=num_examples, seed=seed)
        out["accuracy"][name], out["ci"][name] = r["accuracy"], r["ci"]
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out
