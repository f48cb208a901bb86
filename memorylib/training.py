"""Training and held-out evaluation. Introduced in chapter 1.

Loss and accuracy are taken only at a batch's answer positions. Training draws its data from
``derive_seed(seed, "train")`` and evaluation from ``derive_seed(seed, "eval")``: evaluation
sequences are never training sequences. A third stream, ``split="validation"``, is for choosing
settings (the capstone's learning rates), so that the sequences a result is reported on never
chose it. Results are plain dicts of numbers and lists, ready for
``json.dumps``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checks import check_choice, check_int, check_number
from .knobs import eval_mode
from .stats import bootstrap_interval, wilson_interval
from .tasks import IGNORE, Batch, LengthExtrapolation, derive_seed, make_generator

SPLITS = ("eval", "validation")     # held-out test sequences; held-out sequences for choosing settings


def answer_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy over answer positions. logits: (batch, seq_len, vocab)."""
    if logits.shape[:2] != batch.targets.shape:
        raise ValueError(f"logits of shape {tuple(logits.shape)} do not match targets of shape "
                         f"{tuple(batch.targets.shape)}")
    return F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE)


def answer_accuracy(logits: torch.Tensor, batch: Batch) -> float:
    mask = batch.answer_mask
    return float((logits.argmax(-1)[mask] == batch.targets[mask]).float().mean())


class TrainingDiverged(ValueError):
    """Training stopped because the loss was not finite: ``step``, ``loss`` (a float: nan or inf)
    and ``lr``. A ``ValueError``, so a caller that does not expect it sees a plain error; a sweep
    that tunes the learning rate catches it and records the rate as diverged (never as a score)."""

    def __init__(self, step: int, loss: float, lr: float):
        super().__init__(f"training diverged at step {step}: the loss is {loss} (lr={lr}); "
                         "try a smaller learning rate")
        self.step, self.loss, self.lr = step, loss, lr


def train(model: torch.nn.Module, task, *, steps: int = 500, batch_size: int = 32, lr: float = 5e-3,
          weight_decay: float = 0.01, clip: float = 1.0, warmup: int = 50, seed: int = 0,
          log_every: int = 10, progress: bool = True, desc: str | None = None,
          monitor=None) -> dict:
    """Train ``model`` on ``task`` with AdamW, gradient clipping and a warm-up/hold/decay schedule.

    Returns ``{"steps", "batch_size", "lr", "seed", "history": {"step", "loss", "accuracy"}}``
    where history holds the training-batch answer loss and accuracy every ``log_every`` steps.
    A model with an ``auxiliary_loss()`` method (chapter 2: the slot-utilization loss) has it
    added to the loss it is trained on. A loss that is not finite stops training with
    :class:`TrainingDiverged` (a ``ValueError``) that names the step: a diverged run is an error,
    never a result.
    ``monitor(model, batch) -> {name: number}`` (optional) is
    called at every logged step after the update, and its numbers are added to the history.
    """
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1)
    check_int("log_every", log_every, 1)
    check_int("warmup", warmup, 0)
    check_number("lr", lr, 0, low_open=True)
    check_number("weight_decay", weight_decay, 0)
    check_number("clip", clip, 0, low_open=True)
    gen = make_generator(derive_seed(seed, "train"))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))

    def schedule(step: int) -> float:
        # warm up, hold the rate (long enough to leave the plateau before recall forms), then
        # decay linearly over the last fifth
        if step < warmup:
            return (step + 1) / warmup
        decay_from = int(0.8 * steps)
        if step < decay_from:
            return 1.0
        return max(0.05, 1.0 - (step - decay_from) / max(1, steps - decay_from))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    history = {"step": [], "loss": [], "accuracy": []}
    model.train()
    bar = tqdm(range(steps), desc=desc or type(model).__name__, disable=not progress, mininterval=0.5)
    for step in bar:
        batch = task.sample(batch_size, gen)
        logits = model(batch.tokens)
        loss = answer_loss(logits, batch)
        aux = model.auxiliary_loss() if hasattr(model, "auxiliary_loss") else 0.0
        total = loss + aux
        if not bool(torch.isfinite(total)):
            raise TrainingDiverged(step, float(total.detach()), lr)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            history["step"].append(step)
            history["loss"].append(round(float(loss.detach()), 5))
            history["accuracy"].append(round(answer_accuracy(logits.detach(), batch), 5))
            if monitor is not None:
                for key, value in monitor(model, batch).items():
                    history.setdefault(key, []).append(round(float(value), 5))
            bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", acc=f"{history['accuracy'][-1]:.2f}")
    model.eval()
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "history": history}


def _distance_bins(distances: np.ndarray, bin_width: int | None) -> np.ndarray:
    lo, hi = int(distances.min()), int(distances.max())
    if bin_width is None:
        bin_width = max(3, 3 * math.ceil((hi - lo + 1) / 16 / 3))
    check_int("bin_width", bin_width, 1)
    return np.arange(lo, hi + bin_width + 1, bin_width)


@torch.no_grad()
def predict(model: torch.nn.Module, task, *, num_examples: int = 512, batch_size: int = 32,
            seed: int = 0, split: str = "eval") -> dict:
    """Run ``model`` on held-out sequences; per-answer arrays for custom analysis.

    Batches are small (32) so that a :class:`~memorylib.tasks.TaskMixture`, which draws one task
    per batch, is evaluated on an even mix. Returns numpy arrays: ``example`` (sequence index),
    ``distance``, ``correct`` (bool), ``stale`` (the overwritten value or -1), ``predicted``,
    ``target``, and ``num_examples``. ``split``: ``"eval"`` (held-out test sequences) or
    ``"validation"`` (another held-out stream, for choosing settings).
    """
    check_int("num_examples", num_examples, 1)
    check_int("batch_size", batch_size, 1)
    check_choice("split", split, SPLITS)
    gen = make_generator(derive_seed(seed, split))
    with eval_mode(model):
        parts = {k: [] for k in ("example", "distance", "correct", "stale", "predicted", "target")}
        done = 0
        while done < num_examples:
            n = min(batch_size, num_examples - done)
            batch = task.sample(n, gen)
            pred = model(batch.tokens).argmax(-1)
            mask = batch.answer_mask
            rows = torch.arange(n).unsqueeze(1).expand_as(mask)
            parts["example"].append((rows[mask] + done).numpy())
            parts["distance"].append(batch.distance[mask].numpy())
            parts["correct"].append((pred[mask] == batch.targets[mask]).numpy())
            parts["stale"].append(batch.stale[mask].numpy())
            parts["predicted"].append(pred[mask].numpy())
            parts["target"].append(batch.targets[mask].numpy())
            done += n
    out = {k: np.concatenate(v) for k, v in parts.items()}
    out["num_examples"] = num_examples
    return out


def evaluate(model: torch.nn.Module, task, *, num_examples: int = 512, batch_size: int = 32,
             seed: int = 0, bin_width: int | None = None, digits: int = 4, split: str = "eval") -> dict:
    """Held-out answer accuracy with a 95 % interval, broken down by evidence distance.

    ``accuracy`` and ``ci`` (bootstrap over sequences); ``by_distance`` holds, per distance bin
    ``[lo, hi)``, the answer count, accuracy and Wilson interval; ``stale_rate`` is the fraction
    of answers with an overwritten value that predicted exactly that stale value (None if the task
    has none). Numbers are rounded to ``digits`` so printed results are stable. ``split`` as in
    :func:`predict`.
    """
    check_int("digits", digits, 1, 12)
    p = predict(model, task, num_examples=num_examples, batch_size=batch_size, seed=seed, split=split)
    r = lambda x: round(float(x), digits)  # noqa: E731
    per_seq_correct = np.bincount(p["example"], weights=p["correct"], minlength=num_examples)
    per_seq_count = np.bincount(p["example"], minlength=num_examples)
    lo, hi = bootstrap_interval(per_seq_correct, per_seq_count, seed=seed)
    edges = _distance_bins(p["distance"], bin_width)
    which = np.digitize(p["distance"], edges) - 1
    bins = {"lo": [], "hi": [], "count": [], "accuracy": [], "ci_low": [], "ci_high": []}
    for b in range(len(edges) - 1):
        sel = which == b
        if not sel.any():
            continue
        k, n = int(p["correct"][sel].sum()), int(sel.sum())
        w_lo, w_hi = wilson_interval(k, n)
        for key, val in zip(bins, (int(edges[b]), int(edges[b + 1]), n, r(k / n), r(w_lo), r(w_hi))):
            bins[key].append(val)
    has_stale = p["stale"] >= 0
    stale_rate = r((p["predicted"][has_stale] == p["stale"][has_stale]).mean()) if has_stale.any() else None
    return {
        "task": getattr(task, "name", type(task).__name__),
        "num_examples": num_examples,
        "num_answers": int(len(p["correct"])),
        "accuracy": r(p["correct"].mean()),
        "ci": [r(lo), r(hi)],
        "chance": r(task.chance),
        "min_distance": int(p["distance"].min()),
        "max_distance": int(p["distance"].max()),
        "stale_rate": stale_rate,
        "by_distance": bins,
    }


def evaluate_length_extrapolation(model: torch.nn.Module, protocol: LengthExtrapolation,
                                  **kwargs) -> dict:
    """Evaluate at every length factor of the protocol: ``{factor: evaluate(...)}``."""
    if not isinstance(protocol, LengthExtrapolation):
        raise ValueError(f"protocol must be a LengthExtrapolation, got {type(protocol).__name__}")
    return {f: evaluate(model, protocol.eval_task(f), **kwargs) for f in protocol.factors}
