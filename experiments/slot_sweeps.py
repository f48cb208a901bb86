"""The multi-seed sweeps behind chapters 2 to 5, too long to run inside a chapter.

    python experiments/slot_sweeps.py ch02            # writes book/results/ch02_slot_memory.json
    python experiments/slot_sweeps.py ch03            # writes book/results/ch03_erase_gates.json
    python experiments/slot_sweeps.py ch04            # writes book/results/ch04_surprise.json
    python experiments/slot_sweeps.py ch04-long       # writes book/results/ch04_surprise_long.json
    python experiments/slot_sweeps.py ch05            # writes book/results/ch05_learned_memory.json
    python experiments/slot_sweeps.py ch03 --seeds 0  # one seed only (a quick look; not committed)
    python experiments/slot_sweeps.py ch03-stage1 --seeds 0 1 2   # weights after chapter 3's first stage

Every row is one call of :func:`memorylib.experiments.run` (build a registered model with
``torch.manual_seed(seed)``, train, evaluate on held-out sequences) followed by the slot
statistics of :mod:`memorylib.analysis`. Each chapter re-runs one seed of its main rows live and,
on a machine with the fingerprint recorded here (:func:`memorylib.reproducible.fingerprint`),
asserts it reproduces the row stored here. Runs in the book's numerical environment
(:mod:`memorylib.reproducible`: one thread; float32 results change in their last bits with the
thread count and the CPU), as the tests and the chapters do. The committed records were made under
an earlier environment (2 threads, pinned CPU code paths; their ``numeric_env`` says so), which no
machine reproduces now: re-running a sweep here makes its chapter's exact check apply again. The
JSON records the command, the library and torch versions, and how long every row took. For chapters
3, 4 and 5 the weights of each model's median seed are saved next to the JSON as checkpoints
(:func:`memorylib.checkpoint.load_model` reads them back).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memorylib import reproducible  # noqa: E402  (no torch import)

reproducible.apply()      # as conftest.py: the book's thread count, before torch loads

import torch  # noqa: E402

from memorylib.analysis import slot_statistics  # noqa: E402
from memorylib.capstone import CHANGING_SHORT, LOOKUP_SHORT  # noqa: E402
from memorylib.checkpoint import save_checkpoint  # noqa: E402
from memorylib.experiments import run  # noqa: E402
from memorylib.files import atomic_write_text  # noqa: E402
from memorylib.knobs import memory_size  # noqa: E402
from memorylib.models import SlotMemoryModel  # noqa: E402
from memorylib.registry import build_task  # noqa: E402
from memorylib.tasks import TaskMixture  # noqa: E402
from memorylib.training import evaluate  # noqa: E402

# --- what each chapter sweeps (the chapters build the same tasks and check them against these) ---

# the short training tasks of chapters 2-8 (one definition, shared with the capstone)

CH02 = {
    "out": "book/results/ch02_slot_memory.json",
    "train_task": LOOKUP_SHORT,
    "eval_tasks": {"train": None, "default": ("associative_lookup", {})},
    "steps": 300, "batch_size": 64, "lr": 1e-2, "warmup": 50, "pretrain": None,
    "rows": [
        ("dense", "slot_memory", {}),
        ("top-2", "slot_memory", {"top_k": 2}),
        ("content only", "slot_memory", {"write_policy": "content_only"}),
        ("content only + utilization loss", "slot_memory", {"write_policy": "content_only", "utilization_weight": 0.5}),
        ("multi-head top-k + LRU + bottleneck", "topk_lru_memory", {}),
    ],
    "checkpoints": [],
}

CH03 = {
    "out": "book/results/ch03_erase_gates.json",
    "train_task": CHANGING_SHORT,
    "eval_tasks": {"train": None, "default": ("changing_facts", {}), "lookup": LOOKUP_SHORT},
    "steps": 200, "batch_size": 64, "lr": 3e-3, "warmup": 10,
    "pretrain": {"task": LOOKUP_SHORT, "steps": 300, "lr": 1e-2},
    "rows": [
        ("learned erase", "slot_memory", {}),
        ("always erase", "slot_memory", {"fixed_erase": 1.0}),
        ("no_forget", "no_forget", {}),
        ("fifo_memory", "fifo_memory", {}),
        ("random_write", "random_write", {}),
    ],
    "checkpoints": ["learned erase", "always erase", "no_forget", "fifo_memory", "random_write"],
    "eval_slots": [8, 4],     # also evaluate the trained models with a smaller memory
}

NEEDLE_PREDICTABLE = ("needle_recall", dict(seq_len=96, filler="predictable"))
NEEDLE_RANDOM = ("needle_recall", dict(seq_len=96, filler="random"))
SURPRISE_MODELS = [("surprise only", "surprise_only"), ("learned gate x surprise", "surprise_memory"),
                   ("momentum surprise", "momentum_surprise"), ("no_surprise", "no_surprise")]

CH04 = {
    "out": "book/results/ch04_surprise.json",
    # every model is trained on one haystack (a row's fourth entry: its own training task), so that
    # its prediction head learns the statistics of the stream it will be surprised by; a 50/50
    # mixture of both haystacks trained nothing in 300 steps (seed 0: every model at chance)
    "train_task": NEEDLE_PREDICTABLE,
    "eval_tasks": {"train": None, "predictable": NEEDLE_PREDICTABLE, "random": NEEDLE_RANDOM,
                   "predictable, 192 tokens": ("needle_recall", dict(seq_len=192, filler="predictable")),
                   "random, 192 tokens": ("needle_recall", dict(seq_len=192, filler="random"))},
    "steps": 200, "batch_size": 64, "lr": 1e-2, "warmup": 50, "pretrain": None,
    "rows": [(f"{label} | {haystack}", model, {"num_slots": 4}, entry)
             for haystack, entry in [("predictable", NEEDLE_PREDICTABLE), ("random", NEEDLE_RANDOM)]
             for label, model in SURPRISE_MODELS],
    "checkpoints": "all",
}

# Is no_surprise only slower? The same rows trained three times as long (a separate file).
CH04_LONG = {**CH04, "out": "book/results/ch04_surprise_long.json", "steps": 600,
             "rows": [row for row in CH04["rows"] if row[1] == "no_surprise"], "checkpoints": []}

# Chapter 5: memories written by gradient steps, on chapter 3's two-stage recipe. The outer learning
# rate is 3e-3 in both stages (1e-2, chapter 3's first-stage rate, left delta_memory at 0.39 on
# lookup after 300 steps in a pilot; 3e-3 reached 0.87), and the MLP memories' inner rate is capped
# at 0.1 (at 1.0 the loss became NaN).
CH05 = {
    "out": "book/results/ch05_learned_memory.json",
    "train_task": CHANGING_SHORT,
    "eval_tasks": {"train": None, "default": ("changing_facts", {}), "lookup": LOOKUP_SHORT},
    "steps": 200, "batch_size": 64, "lr": 3e-3, "warmup": 10,
    "pretrain": {"task": LOOKUP_SHORT, "steps": 300, "lr": 3e-3},
    "rows": [
        ("delta rule", "delta_memory", {}),
        ("delta rule + retention", "gated_delta_memory", {}),
        ("additive (linear attention)", "linear_memory", {}),
        ("MLP memory", "mlp_memory", {"max_lr": 0.1}),
        ("MLP + momentum + retention (Titans form)", "titans_memory", {"max_lr": 0.1}),
    ],
    "checkpoints": "all",
}

SWEEPS = {"ch02": CH02, "ch03": CH03, "ch04": CH04, "ch04-long": CH04_LONG, "ch05": CH05}


def task_from(entry):
    """A task from a sweep entry: ``(name, kwargs)``, or ``("mixture", [entries])``."""
    if entry[0] == "mixture":
        return TaskMixture([task_from(e) for e in entry[1]])
    return build_task(entry[0], **entry[1])


def build_tasks(spec: dict) -> tuple:
    """(train task, {name: eval task}, pretrain dict or None) of a sweep spec."""
    train_task = task_from(spec["train_task"])
    evals = {label: train_task if entry is None else task_from(entry)
             for label, entry in spec["eval_tasks"].items()}
    pre = spec["pretrain"]
    if pre is not None:
        pre = {**pre, "task": task_from(pre["task"])}
    return train_task, evals, pre


def save_weights(spec: dict, label: str, model: str, kwargs: dict, task_entry: tuple, seed: int, net, path,
                 stage: int | None = None) -> None:
    """Keep a trained row's weights as a checkpoint (:func:`memorylib.checkpoint.save_checkpoint`:
    ``load_model(path)`` rebuilds the model). ``stage=1``: the weights after the first stage of a
    two-stage recipe, trained on ``task_entry`` (the spec's ``pretrain`` task)."""
    if stage == 1:
        recipe = {"stage": 1, "steps": spec["pretrain"]["steps"], "lr": spec["pretrain"]["lr"], "warmup": 50}
    else:
        recipe = {"steps": spec["steps"], "lr": spec["lr"], "warmup": spec["warmup"], "pretrain": spec["pretrain"]}
    save_checkpoint(path, model=model, model_kwargs=kwargs, task=task_entry[0], task_kwargs=task_entry[1], seed=seed,
                    net=net, train_config={"sweep": spec["out"], "label": label, "batch_size": spec["batch_size"],
                                           **recipe})


def sweep(spec: dict, seeds: list[int], num_examples: int = 512) -> dict:
    torch.set_num_threads(reproducible.THREADS)
    torch.use_deterministic_algorithms(True)
    train_task, evals, pre = build_tasks(spec)
    ckpt_dir = ROOT / spec["out"].replace(".json", "")
    rows, started = [], time.perf_counter()
    for label, model, kwargs, *own_task in spec["rows"]:
        # a row may name its own training task; the eval task "train" is always the row's own
        row_task = task_from(own_task[0]) if own_task else train_task
        row_evals = {name: row_task if spec["eval_tasks"][name] is None else task for name, task in evals.items()}
        trained = []
        for seed in seeds:
            t0 = time.perf_counter()
            result, net = run(model, row_task, seed=seed, steps=spec["steps"], batch_size=spec["batch_size"],
                              lr=spec["lr"], warmup=spec["warmup"], pretrain=pre, model_kwargs=kwargs,
                              eval_tasks=row_evals, num_examples=num_examples, return_model=True)
            result["label"] = label
            result["train_task"] = row_task.config()
            for slots in spec.get("eval_slots", []):
                with memory_size(net, slots):
                    for name, task in row_evals.items():
                        result["eval"][f"{name}@{slots}"] = evaluate(net, task, num_examples=num_examples, seed=seed)
            stats = {}
            for name, task in row_evals.items():
                if not isinstance(net, SlotMemoryModel):
                    break                     # the learned memories of chapter 5 have no slots
                batch = task.sample(64, seed=12345 + seed)
                with torch.no_grad():
                    _, trace = net.eval()(batch.tokens, return_trace=True)
                stats[name] = slot_statistics(trace)
            result["slot_statistics"] = stats or None
            result["seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(result)
            trained.append((result, net))
            accs = {n: (e["accuracy"], e["stale_rate"]) for n, e in result["eval"].items() if "lookup" not in n}
            print(f"{label:40s} seed {seed}: {accs}  ({result['seconds']} s)", flush=True)
        if spec["checkpoints"] == "all" or label in spec["checkpoints"]:
            # keep the weights of the median seed (by accuracy on the first eval task), so that a
            # chapter's live figures show a typical run of each model, not a lucky or a failed one
            first = next(iter(evals))
            trained.sort(key=lambda pair: (pair[0]["eval"][first]["accuracy"], pair[0]["seed"]))
            result, net = trained[(len(trained) - 1) // 2]
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            path = ckpt_dir / (re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_") + ".pt")
            save_weights(spec, label, model, kwargs, own_task[0] if own_task else spec["train_task"], result["seed"],
                         net, path)
            result["checkpoint"] = str(path.relative_to(ROOT))
    return {
        **reproducible.provenance("python experiments/slot_sweeps.py " + " ".join(sys.argv[1:])),
        "seeds": seeds, "num_examples": num_examples,
        "train_task": train_task.config(), "eval_tasks": {n: t.config() for n, t in evals.items()},
        "steps": spec["steps"], "batch_size": spec["batch_size"], "lr": spec["lr"], "warmup": spec["warmup"],
        "pretrain": None if pre is None else {"task": pre["task"].config(), "steps": pre["steps"], "lr": pre["lr"]},
        "total_seconds": round(time.perf_counter() - started, 1), "rows": rows,
    }


def first_stage(spec: dict, seeds: list[int]) -> None:
    """Train only the first stage (``pretrain``) of the spec's first row for each seed and save its
    weights (``<results>/stage1_seed<N>.pt``) and training history (``stage1_seed<N>.json``), so
    that a chapter can train the second stage live from them: :func:`memorylib.experiments.run`
    with ``start_from`` then gives exactly the run that trains both stages with this code. Says
    whether the history equals the one the sweep stored (it does only when the sweep ran with the
    same code and numerics)."""
    torch.set_num_threads(reproducible.THREADS)
    torch.use_deterministic_algorithms(True)
    _, _, pre = build_tasks(spec)
    label, model, kwargs = spec["rows"][0][:3]
    stored = json.loads((ROOT / spec["out"]).read_text())
    ckpt_dir = ROOT / spec["out"].replace(".json", "")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        t0 = time.perf_counter()
        # the first stage of run(): the same call of train() (default warm-up), from the same init
        result, net = run(model, pre["task"], seed=seed, steps=pre["steps"], batch_size=spec["batch_size"],
                          lr=pre["lr"], warmup=50, model_kwargs=kwargs, return_model=True)
        row = next(r for r in stored["rows"] if r["label"] == label and r["seed"] == seed)
        same = result["history"] == row["pretrain_history"]
        save_weights(spec, label, model, kwargs, spec["pretrain"]["task"], seed, net,
                     ckpt_dir / f"stage1_seed{seed}.pt", stage=1)
        info = {**reproducible.provenance("python experiments/slot_sweeps.py " + " ".join(sys.argv[1:])),
                "label": label, "seed": seed, "pretrain": stored["pretrain"], "batch_size": spec["batch_size"],
                "history": result["history"], "history_equals_sweep": same,
                "seconds": round(time.perf_counter() - t0, 1)}
        atomic_write_text(ckpt_dir / f"stage1_seed{seed}.json", json.dumps(info, indent=1) + "\n")
        print(f"{label} seed {seed}: stage 1 in {info['seconds']} s, history equals the sweep's: {same}", flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chapter", choices=sorted(SWEEPS) + ["ch03-stage1"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", metavar="LABEL",
                        help="re-run only these rows and put them in place of the same rows of the existing "
                             "record (after a change that affects only them)")
    parser.add_argument("--out", help="output JSON (default: the chapter's file under book/results/)")
    args = parser.parse_args(argv)
    if args.chapter == "ch03-stage1":
        first_stage(CH03, args.seeds)
        return 0
    spec = SWEEPS[args.chapter]
    out = ROOT / (args.out or spec["out"])
    if not out.parent.is_dir() and not args.rows:
        out.parent.mkdir(parents=True)
    if args.rows:
        labels = [row[0] for row in spec["rows"]]
        bad = [r for r in args.rows if r not in labels]
        if bad:
            parser.error(f"--rows {bad} are not rows of {args.chapter}; its rows: {labels}")
        if not out.exists():
            parser.error(f"--rows replaces rows of an existing record, and {out} does not exist")
        record = json.loads(out.read_text())
        part = sweep({**spec, "rows": [row for row in spec["rows"] if row[0] in args.rows]}, args.seeds)
        if record["seeds"] != part["seeds"] or record["train_task"] != part["train_task"]:
            parser.error(f"{out} was made with other seeds or tasks; re-run the whole sweep")
        rows = [r for r in record["rows"] if r["label"] not in args.rows] + part["rows"]
        rows.sort(key=lambda r: (labels.index(r["label"]), r["seed"]))
        kept = {k: v for k, v in record.items() if k not in part or k in ("command", "total_seconds")}
        result = {**part, **kept, "rows": rows,
                  "rerun": {"command": part["command"], "rows": args.rows, **{k: part[k] for k in
                                                                             ("torch", "fingerprint", "numeric_env")}},
                  "total_seconds": round(sum(r["seconds"] for r in rows), 1)}
        if record.get("fingerprint") != part["fingerprint"]:
            parser.error(f"{out} was made with fingerprint {record.get('fingerprint')}, this machine has "
                         f"{part['fingerprint']}: re-run the whole sweep so its rows share one arithmetic")
    else:
        result = sweep(spec, args.seeds)
    atomic_write_text(out, json.dumps(result, indent=1, allow_nan=False) + "\n")
    print(f"wrote {out.relative_to(ROOT)} in {result['total_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
