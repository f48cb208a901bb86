"""Saved models: one checkpoint format, written and read here. Introduced in chapter 8.

A checkpoint is a dict of plain values and tensors written by ``torch.save``: the registry name of
the model and its keyword arguments, the task it was trained on (name and keyword arguments), the
seed, the ``state_dict``, the training recipe (``train_config``) and the memorylib version::

    {"format_version": 1, "model": "slot_memory", "model_kwargs": {...}, "task": "changing_facts",
     "task_kwargs": {...}, "seed": 0, "state_dict": {...}, "train_config": {...}, "memorylib_version": "..."}

Every saved model of the book is one: ``memorylib train``, ``memorylib sweep``, the chapter 2-5
sweeps (``experiments/slot_sweeps.py``) and the needle script (``experiments/needle.py``) all call
:func:`save_checkpoint`, and :func:`load_model` reads any of them back. Files are read only with
``torch.load(..., weights_only=True)``, which cannot run code from the file, and written
atomically (a temporary file in the same folder, then a rename): a save that fails part-way leaves
the earlier file as it was.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import __version__
from .files import atomic_save
from .registry import build_model

CHECKPOINT_VERSION = 1
"""Version of the checkpoint dict written by :func:`save_checkpoint`; this and older are read."""
CHECKPOINT_KEYS = ("format_version", "model", "model_kwargs", "task", "task_kwargs", "seed", "state_dict")


def _one_line(text, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _fmt(kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "no arguments"


def _few(items: list, n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def save_checkpoint(path, *, model: str, model_kwargs: dict | None, task: str, task_kwargs: dict | None,
                    seed: int, net: torch.nn.Module, train_config: dict | None = None, **extra) -> Path:
    """Write the checkpoint of ``net`` (built as ``build_model(model, **model_kwargs)`` and trained
    on ``build_task(task, **task_kwargs)`` with ``seed``) to ``path``, atomically; ``extra`` keys
    are stored beside the format's keys. Refuses weights that are not finite: a NaN is never saved
    as a result."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"the weights of {model!r} are not finite (NaN or infinity in {_few(bad)}); "
                         "nothing was saved")
    ckpt = {"format_version": CHECKPOINT_VERSION, "model": model, "model_kwargs": dict(model_kwargs or {}),
            "task": task, "task_kwargs": dict(task_kwargs or {}), "seed": seed, "state_dict": state,
            "train_config": dict(train_config or {}), "memorylib_version": __version__, **extra}
    return atomic_save(ckpt, path)


def read_checkpoint(path) -> dict:
    """The checkpoint dict at ``path``, read with ``torch.load(weights_only=True)`` and checked to
    be one; any other file gives a ``ValueError`` that names it and says why."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    if not p.is_file():
        raise ValueError(f"checkpoint {str(path)!r} is not a file")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # whatever torch fails with, the file is not ours
        raise ValueError(f"{str(path)!r} is not a memorylib checkpoint: torch.load(weights_only=True) "
                         f"cannot read it ({type(err).__name__})") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{str(path)!r} is not a memorylib checkpoint: it holds a {type(ckpt).__name__}, "
                         "not a dict")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        has = ", ".join(map(str, list(ckpt)[:8])) or "none"
        raise ValueError(f"{str(path)!r} is not a memorylib checkpoint: it lacks {', '.join(missing)} "
                         f"(its keys: {has})")
    version = ckpt["format_version"]
    if not isinstance(version, int) or not 1 <= version <= CHECKPOINT_VERSION:
        raise ValueError(f"{str(path)!r} has checkpoint format_version={version!r}; this memorylib reads "
                         f"1 to {CHECKPOINT_VERSION}")
    for key, kind in (("model", str), ("task", str), ("model_kwargs", dict), ("task_kwargs", dict),
                      ("seed", int), ("state_dict", dict)):
        if not isinstance(ckpt[key], kind):
            raise ValueError(f"{str(path)!r} is not a memorylib checkpoint: {key} is a "
                             f"{type(ckpt[key]).__name__}, not a {kind.__name__}")
    if isinstance(ckpt["seed"], bool) or ckpt["seed"] < 0:
        raise ValueError(f"{str(path)!r} is not a memorylib checkpoint: seed must be an int >= 0, got {ckpt['seed']!r}")
    for key in ("model_kwargs", "task_kwargs", "state_dict"):
        bad = [k for k in ckpt[key] if not isinstance(k, str)]
        if bad:
            raise ValueError(f"{str(path)!r} is not a memorylib checkpoint: the keys of {key} must be names, "
                             f"got {bad[0]!r}")
    if not all(isinstance(v, torch.Tensor) for v in ckpt["state_dict"].values()):
        raise ValueError(f"{str(path)!r} is not a memorylib checkpoint: its state_dict holds values "
                         "that are not tensors")
    bad = [k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{str(path)!r} holds weights that are not finite (NaN or infinity in {_few(bad)})")
    return ckpt


def load_weights(model: torch.nn.Module, state_dict: dict, path, name: str, kwargs: dict) -> None:
    """``model.load_state_dict(state_dict)``, or a ``ValueError`` that lists what does not fit
    (missing and unexpected entries, shapes that differ)."""
    own = model.state_dict()
    problems = []
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing:
        problems.append(f"missing {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {_few(unexpected)}")
    if shapes:
        problems.append(f"shapes differ for {_few(shapes)}")
    if not problems:
        try:
            model.load_state_dict(state_dict)
        except (RuntimeError, ValueError) as err:
            problems.append(_one_line(err))
    if problems:
        raise ValueError(f"the weights in {str(path)!r} do not fit model {name!r} with {_fmt(kwargs)}: "
                         + "; ".join(problems))


def build(name: str, kwargs: dict) -> torch.nn.Module:
    """``build_model(name, **kwargs)``, with a bad option reported in one line that names the model."""
    try:
        return build_model(name, **kwargs)
    except (TypeError, ValueError) as err:
        if str(err).startswith("unknown model"):
            raise ValueError(str(err)) from None
        raise ValueError(f"cannot build model {name!r} from {_fmt(kwargs)}: {_one_line(err, 400)}") from None


def load_model(path, **model_kwargs):
    """``(model, checkpoint)``: the model named in the checkpoint at ``path``, built with its
    keyword arguments (``model_kwargs`` override them), its weights loaded, in eval mode.
    A file that is missing, not a checkpoint, or whose weights do not fit raises a ``ValueError``
    that names the file and says why."""
    ckpt = read_checkpoint(path)
    name, kwargs = ckpt["model"], {**ckpt["model_kwargs"], **model_kwargs}
    model = build(name, kwargs)
    load_weights(model, ckpt["state_dict"], path, name, kwargs)
    return model.eval(), ckpt
