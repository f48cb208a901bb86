"""Chapter 8's continual-learning curves: four trained tasks of the matched capstone, one after another.

    python experiments/continual.py          # writes book/results/ch08_continual.json (after the matched sweep);
                                             # resumable: each (model, seed) is kept as soon as it exists
    python experiments/continual.py --models slot_memory,full_memory   # some models only: several
                                             # processes can share the record (each adds its runs under a lock)
    python experiments/continual.py --quick  # one model, one seed, a few steps; writes nothing

Each model (built with ``torch.manual_seed(seed)``) is trained on associative lookup, then changing
facts, then the needle in a Markov haystack, then multi-hop (the matched capstone's short training
tasks, in that order), 150 steps of batch 64 each, with a fresh optimizer per phase at the rate the
matched sweep tuned for that model on that task (``book/results/ch08_matched.json``); every 30 steps
it is evaluated on 512 held-out sequences of every task (:func:`memorylib.continual.forgetting_curves`).
The reference for each (model, seed) is the same model trained on all four tasks at once for as many
steps (:func:`memorylib.continual.joint_training`), at the rate of the sweep's grid with the best
mean validation accuracy over the four tasks on seed 0. Five seeds. Runs in the book's arithmetic.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memorylib import reproducible  # noqa: E402  (no torch import)

reproducible.apply()      # the book's thread count, before torch loads

from memorylib.capstone import MATCHED, chosen_rate, diverged_everywhere  # noqa: E402
from memorylib.cli import check_output  # noqa: E402
from memorylib.continual import forgetting_curves, joint_training  # noqa: E402
from memorylib.files import atomic_write_text, locked  # noqa: E402
from memorylib.registry import build_task  # noqa: E402
from memorylib.tasks import TaskMixture  # noqa: E402
from memorylib.training import evaluate  # noqa: E402

OUT = ROOT / "book/results/ch08_continual.json"
SWEEP = ROOT / MATCHED["out"]
MODELS = ["local_transformer", "slot_memory", "delta_memory", "full_memory"]
ORDER = ["associative_lookup", "changing_facts", "needle_markov", "multi_hop"]
SEEDS = [0, 1, 2, 3, 4]
STEPS, EVAL_EVERY, BATCH, EXAMPLES = 150, 30, 64, 512


def phase_rates(record: dict, model: str, fallback: float | None = None) -> dict:
    """The matched sweep's tuned rate of ``model`` on every task of ORDER; a clear error if the
    sweep has not tuned one yet (``fallback``: use that rate instead, for a smoke run)."""
    rates = {task: chosen_rate(record["rows"], MATCHED, model, task) for task in ORDER}
    missing = [t for t, r in rates.items() if r is None]
    if missing and fallback is not None:
        return {t: fallback if r is None else r for t, r in rates.items()}
    failed = [t for t in missing if diverged_everywhere(record["rows"], MATCHED, model, t)]
    if failed:
        raise SystemExit(f"{model} diverged at every rate of the matched sweep's grid on {failed}: it has no tuned "
                         "rate there, so it cannot be run in continual learning with this recipe")
    if missing:
        raise SystemExit(f"the matched sweep ({SWEEP.relative_to(ROOT)}) has not tuned {model} on {missing} yet; "
                         "run it first (memorylib sweep --preset matched)")
    return rates


def joint_rate(model: str, phases: list, steps: int, examples: int) -> tuple[float, dict]:
    """The grid rate whose joint training (seed 0) has the best mean validation accuracy over the
    tasks (ties: the smaller); returns it and every rate's mean."""
    import torch

    from memorylib.registry import build_model
    from memorylib.training import train

    means = {}
    for lr in MATCHED["lr_grid"]:
        torch.manual_seed(0)
        net = build_model(model)
        train(net, TaskMixture([t for _, t in phases]), steps=steps * len(phases), batch_size=BATCH, lr=lr, seed=0,
              progress=False)
        means[lr] = round(sum(evaluate(net, t, num_examples=examples, seed=0, split="validation")["accuracy"]
                              for _, t in phases) / len(phases), 4)
    return max(means, key=lambda lr: (means[lr], -lr)), means


def read_record(out: pathlib.Path, protocol: dict) -> dict:
    """The record to resume: the file's runs and rates if it was written with this ``protocol``
    (order, tasks, steps, evaluation, batch, sequences), else an empty one. A file of another
    protocol is refused rather than mixed in; an unreadable one is an error that says so."""
    if not out.exists():
        return {**protocol, "rates": {}, "runs": [], "seconds": 0.0}
    try:
        record = json.loads(out.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SystemExit(f"cannot resume from {out}: not a readable JSON record ({type(err).__name__}); "
                         "move it away to start over") from None
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in protocol.items()):
        raise SystemExit(f"{out} holds runs of another protocol (order, tasks, steps or evaluation); "
                         "move it away to start over")
    record.setdefault("rates", {})
    record.setdefault("runs", [])
    record.setdefault("seconds", 0.0)
    return record


def write_record(out: pathlib.Path, record: dict) -> None:
    record.update(reproducible.provenance("python experiments/continual.py"))
    atomic_write_text(out, json.dumps(record, indent=1, allow_nan=False) + "\n")


def add_to_record(out: pathlib.Path, protocol: dict, model: str, rates: dict, run: dict | None, seconds: float) -> dict:
    """Re-read the record under its lock, add ``model``'s rates and ``run`` (unless another process
    has added that (model, seed) meanwhile) and write it: processes given different models share
    one file and lose nothing. Returns the record as written."""
    with locked(out):
        record = read_record(out, protocol)
        record["rates"].setdefault(model, rates)
        if run is not None and not any(r["model"] == run["model"] and r["seed"] == run["seed"]
                                       for r in record["runs"]):
            record["runs"].append(run)
            record["seconds"] = round(record["seconds"] + seconds, 1)
        write_record(out, record)
    return record


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(OUT), help=f"the record (default {OUT.relative_to(ROOT)}; resumed if present)")
    p.add_argument("--models", metavar="A,B", help=f"only these of {','.join(MODELS)} (comma-separated)")
    args = p.parse_args(argv)
    out = pathlib.Path(args.out)
    models, seeds, steps = (MODELS[:1], [0], 4) if args.quick else (MODELS, SEEDS, STEPS)
    if args.models is not None:
        chosen = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in chosen if m not in MODELS]
        if unknown or not chosen:
            p.error(f"--models {args.models!r}: {', '.join(unknown) or 'no model'} is not one of {', '.join(MODELS)}")
        models = [m for m in models if m in chosen] if not args.quick else chosen[:1]
    examples = 8 if args.quick else EXAMPLES
    phases = [(name, build_task(MATCHED["tasks"][name]["train"][0], **MATCHED["tasks"][name]["train"][1]))
              for name in ORDER]
    if not args.quick:                  # where the record goes, checked before half an hour of training
        check_output(out, "json", force=True, inputs=(SWEEP,))
    sweep = json.loads(SWEEP.read_text())
    protocol = {"order": ORDER, "tasks": {n: list(MATCHED["tasks"][n]["train"]) for n in ORDER},
                "steps_per_phase": steps, "eval_every": EVAL_EVERY, "batch_size": BATCH, "num_examples": examples}
    # resumable: every (model, seed) is written as soon as it exists, and a run already in the file
    # (or a model's tuned joint rate) is not done again
    protocol = json.loads(json.dumps(protocol))           # as a JSON file holds it (tuples as lists)
    record = {**protocol, "rates": {}, "runs": [], "seconds": 0.0} if args.quick else read_record(out, protocol)
    for model in models:
        started = time.perf_counter()
        per_phase = phase_rates(sweep, model, fallback=3e-3 if args.quick else None)
        if model in record["rates"]:
            joint_lr = record["rates"][model]["joint"]
        else:
            joint_lr, tuning = joint_rate(model, phases, steps, examples)
            record["rates"][model] = {"phases": per_phase, "joint": joint_lr,
                                      "joint_tuning": {f"{k:g}": v for k, v in tuning.items()}}
            if not args.quick:
                record = add_to_record(out, protocol, model, record["rates"][model], None, 0.0)
        for seed in seeds:
            if any(r["model"] == model and r["seed"] == seed for r in record["runs"]):
                continue
            r = forgetting_curves(model, phases, steps=steps, eval_every=EVAL_EVERY if not args.quick else 2,
                                  batch_size=BATCH, lr=per_phase, seed=seed, num_examples=examples)
            r["seed"] = seed
            r["joint"] = joint_training(model, phases, steps=steps, batch_size=BATCH, lr=joint_lr, seed=seed,
                                        num_examples=examples)
            seconds = time.perf_counter() - started
            started = time.perf_counter()
            if args.quick:
                record["runs"].append(r)
            else:
                record = add_to_record(out, protocol, model, record["rates"][model], r, seconds)
            print(f"{model:18s} seed {seed}: final {[r['accuracy'][t][-1] for t in ORDER]}, "
                  f"forgetting {r['forgetting']}, joint {r['joint']['accuracy']} ({r['seconds']} s)", flush=True)
    if not args.quick:
        with locked(out):                 # every process's runs, as the file holds them now
            record = read_record(out, protocol)
        print(f"{out}: {len(record['runs'])} runs, {record['seconds']} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
