"""Named experiments: one function trains a named model on a task and evaluates it, so that a
chapter's live run and a committed sweep (``experiments/``) run exactly the same code.
Introduced in chapter 2.

A chapter runs one seed live and reads the others from the sweep's JSON; because both call
:func:`run` with the same arguments on the same thread count, the live seed reproduces the
sweep's row for it (the chapters assert this).
"""

from __future__ import annotations

import time

import torch

from .registry import build_model
from .stats import describe
from .training import evaluate, train


def run(model: str, task, *, seed: int = 0, steps: int = 300, batch_size: int = 64, lr: float = 1e-2,
        warmup: int = 50, pretrain: dict | None = None, model_kwargs: dict | None = None,
        eval_tasks: dict | None = None, num_examples: int = 512, monitor=None, progress: bool = False,
        return_model: bool = False, start_from: dict | None = None, validation_tasks: dict | None = None):
    """Build ``model`` (a registry name) with ``torch.manual_seed(seed)``, train it on ``task``
    and evaluate it on every task of ``eval_tasks`` (``{name: task}``; default: ``task`` itself).

    ``pretrain`` (optional): ``{"task": ..., "steps": ..., "lr": ...}``, a first stage of
    training before ``task`` (chapter 3 first teaches lookup, then changing facts).
    ``start_from`` (optional): a state dict loaded into the model right after it is built, in
    place of a first stage that already ran: ``pretrain`` must then be None. Training reads no
    global random state and every stage makes a fresh optimizer, so starting from the weights a
    run had after its first stage gives exactly that run's result (chapter 3 trains only its
    second stage live, from weights saved by ``experiments/slot_sweeps.py ch03-stage1``).

    Returns a JSON-ready dict: ``model``, ``model_kwargs``, ``seed``, ``steps``, ``history``
    (from :func:`~memorylib.training.train`; ``pretrain_history`` for the first stage), ``eval``
    (``{name: evaluate(...)}``) and ``train_seconds``; with ``return_model=True``,
    ``(result, model)``. ``validation_tasks`` (optional, ``{name: task}``) adds ``validation``:
    the same evaluations on the validation stream (``split="validation"``), for choosing settings.
    """
    model_kwargs = dict(model_kwargs or {})
    torch.manual_seed(seed)
    net = build_model(model, **model_kwargs)
    if start_from is not None:
        if pretrain is not None:
            raise ValueError("give either pretrain (train a first stage) or start_from (its weights), not both")
        net.load_state_dict(start_from)
    start = time.perf_counter()
    first = None
    if pretrain is not None:
        first = train(net, pretrain["task"], steps=pretrain["steps"], batch_size=batch_size,
                      lr=pretrain.get("lr", lr), seed=seed, log_every=25, progress=progress,
                      desc=f"{model} seed {seed} (stage 1)", monitor=monitor)
    fit = train(net, task, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, seed=seed,
                log_every=25, progress=progress, desc=f"{model} seed {seed}", monitor=monitor)
    seconds = time.perf_counter() - start
    evals = {name: evaluate(net, t, num_examples=num_examples, seed=seed)
             for name, t in (eval_tasks or {"train": task}).items()}
    validation = {name: evaluate(net, t, num_examples=num_examples, seed=seed, split="validation")
                  for name, t in (validation_tasks or {}).items()}
    result = {"model": model, "model_kwargs": model_kwargs, "seed": seed, "steps": steps,
              "batch_size": batch_size, "lr": lr, "history": fit["history"], "eval": evals,
              "pretrain_history": first["history"] if first else None,
              "train_seconds": round(seconds, 1)}
    if validation:
        result["validation"] = validation
    return (result, net) if return_model else result


def summarize(rows: list[dict], metric: str, eval_name: str) -> dict:
    """Mean, sample standard deviation, min and max of ``row["eval"][eval_name][metric]`` over
    rows (e.g. seeds); ``n`` rows. Numbers rounded to 4 digits."""
    if not rows:
        raise ValueError("summarize needs at least one row")
    return describe(r["eval"][eval_name][metric] for r in rows)
