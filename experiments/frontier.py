"""Chapter 7's recall–state frontier: how much keyed recall a given number of bytes of state buys.
Every memory family of the book is trained at several sizes on the needle family's training mixture
(:mod:`experiments.needle_family`: the same tasks, recipe, seeds and learning-rate grid), then asked
the multi-key needle (1 of N needles with distinct keys, N = 1 ... 16) at 512 tokens on both
haystacks, 512 held-out sequences per cell, the same sequences for every model. Resumable: every
trained model and every evaluated point is written as soon as it exists.

    python experiments/frontier.py                          # everything (hours: see the record's seconds)
    python experiments/frontier.py --families "slot memory" --seeds 0
    python experiments/frontier.py --quick                  # 20 steps, 2 sizes, 64 sequences; into /tmp

Sizes: slot memory 4 / 16 / 64 slots; linear and delta memory a key and value width of 16 / 32 / 64;
the MLP memory written by gradient steps a hidden width of 16 / 32 / 64, and the same with Titans'
momentum and forgetting (its training diverged at every rate of the grid on these 512-token
sequences: the record keeps those rows and the frontier has no Titans point); the full model with
its learned keep score, the checkpoints of ``needle_family.py`` (sidecar K = 32 in training), read
with K = 0 / 8 / 16 / 32 / 64 entries (the cache's capacity changed at evaluation only; the run says
so). Local attention alone (its window is the only state) and full attention (its key-value cache
grows with every token) are the two reference points; full attention is also trained three times
longer (1,200 steps, at the rate tuned for 400) to ask whether its failure is training or state,
and so is the delta memory at its middle width.
Each family's outer learning rate is chosen from the grid on seed 0's validation sequences at its
middle size and used at every size.

The trained models go to ``book/results/ch07_frontier/`` and are not committed (tens of MB): the
record holds every number the chapter reads, and this script writes them again.

State is :func:`memorylib.analysis.state_bytes` (memory + local attention's window, + the key-value
cache at 512 tokens for full attention), in float32.
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
sys.path.insert(0, str(ROOT / "experiments"))

from memorylib import reproducible  # noqa: E402  (no torch import)

reproducible.apply()      # the book's thread count, before torch loads

import needle_family as nf  # noqa: E402

from memorylib.analysis import state_bytes  # noqa: E402
from memorylib.checkpoint import load_model  # noqa: E402
from memorylib.files import atomic_write_text, locked  # noqa: E402
from memorylib.floors import keyless_floor  # noqa: E402
from memorylib.knobs import sidecar_capacity  # noqa: E402
from memorylib.registry import build_task  # noqa: E402
from memorylib.training import TrainingDiverged, evaluate  # noqa: E402

OUT = ROOT / "book/results/ch07_frontier.json"
CKPT = ROOT / "book/results/ch07_frontier"
EVAL_LEN, EVAL_EXAMPLES = 512, 512
NEEDLES = (1, 2, 4, 8, 16)
HAYSTACKS = ("random", "markov")
# family: (registry name, the size's keyword(s), sizes, the middle size that is tuned)
FAMILIES = {
    "slot memory": ("slot_memory", ("num_slots",), (4, 16, 64)),
    "linear memory": ("linear_memory", ("key_dim", "value_dim"), (16, 32, 64)),
    "delta memory": ("delta_memory", ("key_dim", "value_dim"), (16, 32, 64)),
    "Titans memory": ("titans_memory", ("hidden",), (16, 32, 64)),
    "MLP memory": ("mlp_memory", ("hidden",), (16, 32, 64)),
    "local attention": ("local_transformer", (), (None,)),
    "full attention": ("tiny_transformer", (), (None,)),
    "full attention trained 3x longer": ("tiny_transformer", (), (None,)),
    "delta memory trained 3x longer": ("delta_memory", ("key_dim", "value_dim"), (32,)),
}
# A family trained with more steps than the recipe's, at the rate tuned for another family (so a
# longer run asks one question: does more training, not another rate, change the answer?)
STEPS = {"full attention trained 3x longer": 3 * nf.RECIPE["steps"],
         "delta memory trained 3x longer": 3 * nf.RECIPE["steps"]}
RATE_FROM = {"full attention trained 3x longer": "full attention", "delta memory trained 3x longer": "delta memory"}
KEEP_FAMILY, KEEP_SIZES = "full model with learned keep", (0, 8, 16, 32, 64)


def point_label(family: str, size) -> str:
    if size is None:
        return family
    units = {"slot memory": "slots", "MLP memory": "hidden", "Titans memory": "hidden", KEEP_FAMILY: "cached"}
    unit = units.get(family, "wide")
    return f"{family}, {size} {unit}"


def point_kwargs(family: str, size) -> dict:
    _, keys, _ = FAMILIES[family]
    return {k: size for k in keys} if size is not None else {}


def middle(family: str):
    sizes = FAMILIES[family][2]
    return sizes[len(sizes) // 2]


def eval_tasks() -> dict:
    """``{"multi_key N=8, random": task, ...}``; one needle is the family's ``single`` variant."""
    return {f"multi_key N={n}, {h}": build_task("needle_family", variant="single" if n == 1 else "multi_key",
                                                 seq_len=EVAL_LEN, num_needles=n, filler=h)
            for n in NEEDLES for h in HAYSTACKS}


def read_record(out: pathlib.Path) -> dict:
    if not out.exists():
        return {"training": {"tasks": [list(t) for t in nf.TRAIN_TASKS], **nf.RECIPE, "lr_grid": nf.LR_GRID},
                "families": {k: list(v) for k, v in FAMILIES.items()}, "keep_sizes": list(KEEP_SIZES),
                "eval": {"seq_len": EVAL_LEN, "num_examples": EVAL_EXAMPLES, "needles": list(NEEDLES),
                         "haystacks": list(HAYSTACKS)},
                "floors": {}, "train_rows": [], "points": [], "seconds": 0.0}
    try:
        record = json.loads(out.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SystemExit(f"cannot resume from {out}: it is not a readable JSON record ({type(err).__name__}); "
                         "move it away to start over") from None
    if not isinstance(record, dict) or record.get("training", {}).get("tasks") != [list(t) for t in nf.TRAIN_TASKS]:
        raise ValueError(f"{out} holds runs of another training recipe; move it away to start over")
    return record


def update(out: pathlib.Path, change, seconds: float, command: str) -> dict:
    """Apply ``change(record)`` under the lock (re-reading the file first) and write the record."""
    with locked(out):
        record = read_record(out)
        change(record)
        record["seconds"] = round(record["seconds"] + seconds, 1)
        record.update(reproducible.provenance(command))
        atomic_write_text(out, json.dumps(record, indent=1, allow_nan=False) + "\n")
    return record


def _add_once(rows: list, row: dict, key: tuple) -> None:
    """Append ``row`` unless a row with the same ``key`` fields is there already (two processes that
    ran the same point: the runs are deterministic, so the first is kept)."""
    if not any(all(r.get(k) == row[k] for k in key) for r in rows):
        rows.append(row)


def checkpoint_file(label: str, seed: int, lr: float) -> pathlib.Path:
    return CKPT / f"{label.replace(' ', '_').replace(',', '')}_seed{seed}_lr{lr:g}.pt"


def train_point(family: str, size, seed: int, lr: float, recipe: dict, command: str) -> None:
    name = FAMILIES[family][0]
    label, kwargs = point_label(family, size), point_kwargs(family, size)
    path = checkpoint_file(label, seed, lr)
    start = time.perf_counter()
    try:
        _, fit, seconds, validation = nf.train_and_save(name, kwargs, label, seed, lr, recipe, path)
    except TrainingDiverged as err:
        seconds = time.perf_counter() - start
        row = nf.diverged_row(label, seed, lr, err, seconds, family=family, size=size)
        update(OUT, lambda record: _add_once(record["train_rows"], row, ("model", "seed", "lr")), seconds, command)
        print(f"{label} seed {seed} lr {lr:g}: {err}", flush=True)
        return
    row = {"model": label, "family": family, "size": size, "seed": seed, "lr": lr, "steps": recipe["steps"],
           "history": fit["history"],
           "validation": validation, "validation_mean": round(sum(validation) / len(validation), 4),
           "train_seconds": round(seconds, 1), "checkpoint": path.name}
    update(OUT, lambda record: _add_once(record["train_rows"], row, ("model", "seed", "lr")), seconds, command)
    print(f"{label} seed {seed} lr {lr:g}: validation {validation} ({seconds:.0f} s)", flush=True)


def measure(model, label: str, family: str, size, seed: int, lr: float, command: str, num_examples: int,
            note: str | None = None) -> None:
    start = time.perf_counter()
    state = state_bytes(model)
    total = state["memory"] + state["context"] + state["per_token"] * EVAL_LEN
    cells = {}
    for key, task in eval_tasks().items():
        r = evaluate(model, task, num_examples=num_examples, seed=0)
        cells[key] = {"accuracy": r["accuracy"], "ci": r["ci"]}
    seconds = time.perf_counter() - start
    row = {"model": label, "family": family, "size": size, "seed": seed, "lr": lr, "state": state,
           "state_bytes": total, "parameters": sum(p.numel() for p in model.parameters()), "cells": cells,
           "note": note, "seconds": round(seconds, 1)}
    update(OUT, lambda record: _add_once(record["points"], row, ("model", "seed")), seconds, command)
    n8 = {h: cells[f"multi_key N=8, {h}"]["accuracy"] for h in HAYSTACKS}
    print(f"{label} seed {seed}: {total:,} B, 8 needles {n8} ({seconds:.0f} s)", flush=True)


def main(argv: list[str]) -> int:
    global OUT, CKPT
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    choices = [*FAMILIES, KEEP_FAMILY]
    p.add_argument("--families", default=",".join(choices), help="comma-separated families (default: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=nf.SEEDS)
    p.add_argument("--quick", action="store_true", help="a smoke run: 20 steps, 64 sequences, into /tmp")
    args = p.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in choices]
    if unknown:
        p.error(f"unknown famil(ies) {unknown}; choose from {choices}")
    recipe, num_examples = dict(nf.RECIPE), EVAL_EXAMPLES
    if args.quick:
        OUT, CKPT, num_examples = pathlib.Path("/tmp/frontier_quick.json"), pathlib.Path("/tmp/frontier_quick"), 64
        recipe["steps"] = 20
    CKPT.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "experiments/frontier.py", *argv])
    missing = [f for f in FAMILIES if f not in read_record(OUT)["families"]]
    if missing:        # a family added to the script after the record was started
        update(OUT, lambda record: record["families"].update({f: list(FAMILIES[f]) for f in missing}), 0.0, command)
    if not read_record(OUT)["floors"]:
        floors = {key: keyless_floor(task, num_examples=num_examples, seed=0) for key, task in eval_tasks().items()}
        update(OUT, lambda record: record.update(floors=floors), 0.0, command)
    for family in families:
        if family == KEEP_FAMILY:
            continue
        for seed in args.seeds:
            sizes = FAMILIES[family][2]
            sizes = sorted({middle(family), sizes[0]}, key=str) if args.quick else sizes
            for size in sorted(sizes, key=lambda s: s != middle(family)):     # the tuned size first
                label = point_label(family, size)
                record = read_record(OUT)
                tuning_family = RATE_FROM.get(family, family)
                tuned = nf.chosen_lr(record, point_label(tuning_family, middle(tuning_family)))
                own_tuning = seed == 0 and size == middle(family) and family not in RATE_FROM
                rates = nf.LR_GRID if own_tuning else [tuned]
                if None in rates:
                    tuning = point_label(tuning_family, middle(tuning_family))
                    tuned_all = {r["lr"] for r in record["train_rows"]
                                 if r["model"] == tuning and r["seed"] == 0} >= set(nf.LR_GRID)
                    print(f"{label} seed {seed}: " + ("every rate of the grid diverged at the middle size" if tuned_all
                                                      else "waits for seed 0's tuning at the middle size"), flush=True)
                    continue
                done = {(r["seed"], r["lr"]) for r in record["train_rows"] if r["model"] == label}
                steps = STEPS.get(family, nf.RECIPE["steps"]) if not args.quick else recipe["steps"]
                for lr in rates:
                    if (seed, lr) not in done:
                        train_point(family, size, seed, lr, {**recipe, "steps": steps}, command)
                record = read_record(OUT)
                lr = nf.chosen_lr(record, point_label(tuning_family, middle(tuning_family)))
                if any(r["model"] == label and r["seed"] == seed for r in record["points"]):
                    continue
                if lr is None:      # the tuning has just run, and every rate of the grid diverged
                    print(f"{label} seed {seed}: every rate of the grid diverged at the middle size; no point",
                          flush=True)
                    continue
                if any(r["model"] == label and r["seed"] == seed and r["lr"] == lr and r.get("diverged")
                       for r in record["train_rows"]):
                    print(f"{label} seed {seed}: training diverged at the chosen rate {lr:g}; no point", flush=True)
                    continue
                model = load_model(checkpoint_file(label, seed, lr))[0]
                measure(model, label, family, size, seed, lr, command, num_examples)
    if KEEP_FAMILY in families:
        family_record = nf.read_record(nf.OUT) if nf.OUT.exists() else None
        lr = nf.chosen_lr(family_record, nf.MAIN) if family_record else None
        for seed in args.seeds:
            ckpt = nf.checkpoint_file(nf.MAIN, seed, lr) if lr is not None else None
            if ckpt is None or not ckpt.exists():
                print(f"{KEEP_FAMILY} seed {seed}: needle_family.py has not trained it yet", flush=True)
                continue
            for k in KEEP_SIZES:
                label = point_label(KEEP_FAMILY, k)
                if any(r["model"] == label and r["seed"] == seed for r in read_record(OUT)["points"]):
                    continue
                model = load_model(ckpt)[0]
                note = f"trained with K = {model.sidecar}; read with K = {k}"   # before the change
                with sidecar_capacity(model, k):
                    measure(model, label, KEEP_FAMILY, k, seed, lr, command, num_examples, note=note)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
