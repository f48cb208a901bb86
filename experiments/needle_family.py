"""Chapter 7's needle family at 16K, 64K and 256K tokens: train the full model and its ablations on
short sequences (512 tokens) with several seeds, then stream every variant of the family through
them with a state of constant size. Resumable: every trained model and every evaluated cell is
written as soon as it exists, and a re-run skips what the record already holds.

    python experiments/needle_family.py                      # everything (hours: see the record's seconds)
    python experiments/needle_family.py --stage train        # train (and tune) only
    python experiments/needle_family.py --models "learned keep" --lengths 16384
    python experiments/needle_family.py --quick --seeds 0     # 30 steps, 3 cells at 16K, 20 streams; into /tmp

Several processes may run at once on one record (give them different ``--models``): the record is
re-read under a lock (:func:`memorylib.files.locked`) before each row is added.

Training (every model, every seed): a mixture (one task per batch) of the family's multi-query
variant (``num_needles`` needles, every one asked, 8 of them) on a random haystack and on a Markov
haystack, 512 tokens, batch 32, with the outer learning rate chosen from {1e-3, 3e-3, 1e-2} on
seed 0's validation sequences (never the test streams), as every model of the capstone is tuned.
The test streams are the variants of :mod:`memorylib.needles`, 200 per cell, with the same streams
for every model (stream seed 0), the asked needle's depth spread over ten depths.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memorylib import reproducible  # noqa: E402  (no torch import)

reproducible.apply()      # the book's thread count, before torch loads

import torch  # noqa: E402

from memorylib.checkpoint import load_model, save_checkpoint  # noqa: E402
from memorylib.files import atomic_write_text, locked  # noqa: E402
from memorylib.needles import CONTROLS, stream_family  # noqa: E402
from memorylib.registry import build_model, build_task  # noqa: E402
from memorylib.tasks import TaskMixture  # noqa: E402
from memorylib.training import TrainingDiverged, evaluate, train  # noqa: E402

OUT = ROOT / "book/results/ch07_family.json"
CKPT = ROOT / "book/results/ch07_family"
TRAIN_LEN = 512
TRAIN_TASKS = [("needle_family", dict(variant="multi_query", seq_len=TRAIN_LEN, num_needles=8, num_queries=8,
                                      filler=haystack)) for haystack in ("random", "markov")]
RECIPE = dict(steps=400, batch_size=32, warmup=20)
LR_GRID = [1e-3, 3e-3, 1e-2]
SEEDS = [0, 1, 2]
MODELS = {                                   # label: (registry name, keyword arguments)
    "learned keep": ("full_learned_keep", {"sidecar": 32}),
    "no keep cost": ("full_learned_keep", {"sidecar": 32, "keep_weight": 0.0}),
    "surprise": ("full_memory", {"sidecar": 32}),
    "no sidecar": ("no_sidecar", {}),
}
TRIALS, PIECE, BATCH = 200, 256, 50
HAYSTACKS = ("markov", "random")
MAIN = "learned keep"                        # the mechanism chapter 7 builds: every cell
GOAL = 0.90                                  # the goal: 8-key recall at 256K tokens, constant state
# (variant, keyword arguments, lengths, who): each cell runs on both haystacks at every length it
# lists, for every model ("all") or for the main model only ("main"). The budget rule for the longer
# streams: an ablation runs a variant at 65,536 or 262,144 tokens only on a haystack where the same
# seed reached the goal with it at the next shorter length (a constant state recalls no better over a
# longer stream, so a cell below the goal stays below it); the main model always runs every cell.
CELLS = [
    ("single", {}, (16384, 65536), "all"),
    ("multi_key", {"num_needles": 2}, (16384,), "main"),
    ("multi_key", {"num_needles": 4}, (16384,), "main"),
    ("multi_key", {"num_needles": 8}, (16384, 65536, 262144), "all"),
    ("multi_key", {"num_needles": 16}, (16384,), "main"),
    ("multi_query", {"num_needles": 8, "num_queries": 8}, (16384,), "all"),
    ("multi_value", {"num_needles": 4, "num_distractors": 3}, (16384,), "all"),
    ("update", {"num_needles": 4}, (16384,), "all"),
]
LONGEST = 262144
# how the test streams place their needles (memorylib.needles.stream_family); a record made another
# way is not extended
PROTOCOL = "every needle's cell drawn uniformly (the asked needle's too); by_depth bins the asked needle's depth"
# leakage controls (memorylib.needles.CONTROLS: the first asked needle removed, or carrying a value no
# needle has): the main model, seed 0, every variant at 16K on both haystacks and the 8-key needle at
# 256K on the random haystack; a causal model scores at chance (1/64) or below on the first question
CONTROL_CELLS = [(variant, kwargs, 16384, HAYSTACKS) for variant, kwargs, _, who in CELLS if who == "all"]
CONTROL_CELLS += [("multi_key", {"num_needles": 8}, LONGEST, ("random",))]
CONTROL_SEED = 0


def training_task():
    return TaskMixture([build_task(name, **kw) for name, kw in TRAIN_TASKS])


def cell_key(variant: str, kwargs: dict, haystack: str, length: int, control: str | None = None) -> str:
    """One cell's name in the record: ``multi_key N=8, random, 16384`` (with a leakage control:
    ``multi_key N=8 control=removed, random, 16384``)."""
    short = {"num_needles": "N", "num_queries": "Q", "num_distractors": "D"}
    args = " ".join([f"{short[k]}={v}" for k, v in kwargs.items()] + ([f"control={control}"] if control else []))
    return f"{variant}{' ' + args if args else ''}, {haystack}, {length}"


def checkpoint_file(label: str, seed: int, lr: float) -> pathlib.Path:
    return CKPT / f"{label.replace(' ', '_')}_seed{seed}_lr{lr:g}.pt"


def read_record(out: pathlib.Path) -> dict:
    if not out.exists():
        return {"training": {"tasks": [list(t) for t in TRAIN_TASKS], **RECIPE, "lr_grid": LR_GRID},
                "models": {k: list(v) for k, v in MODELS.items()}, "trials": TRIALS, "piece": PIECE,
                "train_rows": [], "cells": [], "seconds": 0.0, "protocol": PROTOCOL}
    try:
        record = json.loads(out.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SystemExit(f"cannot resume from {out}: it is not a readable JSON record ({type(err).__name__}); "
                         "move it away to start over") from None
    if not isinstance(record, dict) or record.get("training", {}).get("tasks") != [list(t) for t in TRAIN_TASKS]:
        raise ValueError(f"{out} holds runs of another training recipe; move it away to start over")
    if record.get("protocol") != PROTOCOL:
        raise ValueError(f"{out} holds cells streamed another way ({record.get('protocol')!r}); move it away, or "
                         "keep its training rows and drop its cells, to start over")
    return record


def add(out: pathlib.Path, key: str, row: dict, seconds: float, command: str) -> dict:
    """Add ``row`` to ``record[key]`` under the lock (re-reading the file first) and write it."""
    with locked(out):
        record = read_record(out)
        record[key].append(row)
        record["seconds"] = round(record["seconds"] + seconds, 1)
        record.update(reproducible.provenance(command))
        atomic_write_text(out, json.dumps(record, indent=1, allow_nan=False) + "\n")
    return record


def chosen_lr(record: dict, label: str) -> float | None:
    """The rate with the best mean validation accuracy among seed 0's tuning runs (None until all
    of the grid has run, or when every rate diverged); ties go to the smaller rate; a rate whose
    training diverged is never chosen."""
    runs = {r["lr"]: r for r in record["train_rows"] if r["model"] == label and r["seed"] == 0}
    if set(runs) != set(LR_GRID):
        return None
    trained = [lr for lr in LR_GRID if not runs[lr].get("diverged")]
    return max(trained, key=lambda lr: (runs[lr]["validation_mean"], -lr)) if trained else None


def diverged_row(label: str, seed: int, lr: float, err: TrainingDiverged, seconds: float, **extra) -> dict:
    """The training row of a run whose loss stopped being finite: recorded with its step and loss,
    never with a score (:func:`chosen_lr` never picks its rate)."""
    return {"model": label, "seed": seed, "lr": lr, "diverged": {"step": err.step, "loss": str(err.loss)},
            "history": None, "validation": None, "validation_mean": None, "train_seconds": round(seconds, 1),
            "checkpoint": None, **extra}


def train_and_save(name: str, kwargs: dict, label: str, seed: int, lr: float, recipe: dict, path: pathlib.Path):
    """Train registry model ``name`` on the family's training mixture with the recipe (built with
    ``torch.manual_seed(seed)``), save it at ``path``; returns ``(model, fit, seconds, validation)``
    with one validation accuracy per training task. Shared with ``experiments/frontier.py``."""
    torch.manual_seed(seed)
    model = build_model(name, **kwargs)
    task = training_task()
    start = time.perf_counter()
    fit = train(model, task, steps=recipe["steps"], batch_size=recipe["batch_size"], lr=lr,
                warmup=recipe["warmup"], seed=seed, log_every=25, desc=f"{label} seed {seed} lr {lr:g}")
    seconds = time.perf_counter() - start
    validation = [evaluate(model, t, num_examples=512, seed=seed, split="validation")["accuracy"]
                  for t in task.tasks]
    save_checkpoint(path, model=name, model_kwargs=kwargs, task=TRAIN_TASKS[0][0], task_kwargs=TRAIN_TASKS[0][1],
                    seed=seed, net=model, train_config={**recipe, "lr": lr, "tasks": [list(t) for t in TRAIN_TASKS]})
    return model, fit, seconds, validation


def train_one(label: str, seed: int, lr: float, recipe: dict, out: pathlib.Path, command: str) -> None:
    name, kwargs = MODELS[label]
    path = checkpoint_file(label, seed, lr)
    start = time.perf_counter()
    try:
        model, fit, seconds, validation = train_and_save(name, kwargs, label, seed, lr, recipe, path)
    except TrainingDiverged as err:
        seconds = time.perf_counter() - start
        add(out, "train_rows", diverged_row(label, seed, lr, err, seconds, held_out=None), seconds, command)
        print(f"{label} seed {seed} lr {lr:g}: {err}", flush=True)
        return
    held_out = [evaluate(model, t, num_examples=512, seed=seed)["accuracy"] for t in training_task().tasks]
    row = {"model": label, "seed": seed, "lr": lr, "history": fit["history"], "validation": validation,
           "validation_mean": round(sum(validation) / len(validation), 4), "held_out": held_out,
           "train_seconds": round(seconds, 1), "checkpoint": path.name}
    add(out, "train_rows", row, seconds, command)
    print(f"{label} seed {seed} lr {lr:g}: validation {validation}, held out {held_out} ({seconds:.0f} s)", flush=True)


def evaluate_cell(model, label: str, seed: int, lr: float, variant: str, kwargs: dict, lengths: tuple,
                  length: int, haystack: str, command: str, control: str | None = None) -> None:
    """Stream one cell through one trained model and add it to the record (skipped if it is there,
    or if it is an ablation's longer stream and the budget rule above says not to run it)."""
    key = cell_key(variant, kwargs, haystack, length, control)
    done = read_record(OUT)["cells"]
    if any(c["model"] == label and c["seed"] == seed and c["cell"] == key for c in done):
        return
    if length != lengths[0] and label != MAIN:
        shorter = cell_key(variant, kwargs, haystack, lengths[lengths.index(length) - 1])
        prior = [c["accuracy"] for c in done if c["model"] == label and c["seed"] == seed and c["cell"] == shorter]
        if not prior or prior[0] < GOAL:
            print(f"{label} seed {seed} {key}: not run ({shorter}: {prior[0] if prior else 'not measured yet'} "
                  f"< {GOAL})", flush=True)
            return
    r = stream_family(model, variant, length, TRIALS, haystack=haystack, piece=PIECE, batch_size=BATCH, seed=0,
                      control=control, **kwargs)
    add(OUT, "cells", {"model": label, "seed": seed, "lr": lr, "cell": key, **r}, r["seconds"], command)
    print(f"{label} seed {seed} {key}: {r['accuracy']} {r['ci']} (first question {r['first_accuracy']}) floor "
          f"{r['floor']['accuracy']} other {r['other_needle_rate']} cached {r['value_cached']} stored value "
          f"{r['stored_value_rate']} ({r['seconds']} s)", flush=True)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated labels (default: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    p.add_argument("--lengths", type=int, nargs="+", default=None, help="only these stream lengths")
    p.add_argument("--stage", choices=("train", "eval", "all"), default="all")
    p.add_argument("--quick", action="store_true", help="a smoke run: 30 steps, 3 cells at 16K, 20 streams, into /tmp")
    args = p.parse_args(argv)
    labels = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in labels if m not in MODELS]
    if unknown:
        p.error(f"unknown model label(s) {unknown}; choose from {list(MODELS)}")
    global OUT, CKPT, TRIALS
    recipe = dict(RECIPE)
    if args.quick:
        OUT, CKPT, TRIALS = pathlib.Path("/tmp/needle_family_quick.json"), pathlib.Path("/tmp/needle_family_quick"), 20
        recipe["steps"] = 30
    CKPT.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "experiments/needle_family.py", *argv])
    if args.stage in ("train", "all"):
        for label in labels:
            for seed in args.seeds:
                record = read_record(OUT)
                done = {(r["seed"], r["lr"]) for r in record["train_rows"] if r["model"] == label}
                rates = LR_GRID if seed == 0 else [chosen_lr(record, label)]
                if None in rates:
                    print(f"{label} seed {seed}: waits for seed 0's tuning", flush=True)
                    continue
                for lr in rates:
                    if (seed, lr) not in done:
                        train_one(label, seed, lr, recipe, OUT, command)
    if args.stage in ("eval", "all"):
        cells = CELLS[::3] if args.quick else CELLS
        models = {}
        # shortest streams first (every model and seed at 16K before any at 64K), so a partial record
        # already holds complete tables at the shorter lengths
        for length in sorted({n for _, _, lengths, _ in cells for n in lengths}):
            if args.lengths and length not in args.lengths or args.quick and length > 16384:
                continue
            for label in labels:
                for seed in args.seeds:
                    record = read_record(OUT)
                    lr = chosen_lr(record, label)
                    mine = [r for r in record["train_rows"] if r["model"] == label and r["seed"] == seed
                            and r["lr"] == lr]
                    if lr is None or not mine:
                        print(f"{label} seed {seed}: not trained yet", flush=True)
                        continue
                    if mine[0].get("diverged"):
                        print(f"{label} seed {seed}: training diverged at the chosen rate {lr:g}", flush=True)
                        continue
                    if (label, seed) not in models:
                        models[label, seed] = load_model(checkpoint_file(label, seed, lr))[0]
                    for variant, kwargs, lengths, who in cells:
                        if length not in lengths or who == "main" and label != MAIN:
                            continue
                        for haystack in HAYSTACKS:
                            evaluate_cell(models[label, seed], label, seed, lr, variant, kwargs, lengths, length,
                                          haystack, command)
                    if label != MAIN or seed != CONTROL_SEED:
                        continue
                    for variant, kwargs, at, haystacks in CONTROL_CELLS[:1] if args.quick else CONTROL_CELLS:
                        for haystack in haystacks if at == length else ():
                            for control in CONTROLS:
                                evaluate_cell(models[label, seed], label, seed, lr, variant, kwargs, (at,), at,
                                              haystack, command, control)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
