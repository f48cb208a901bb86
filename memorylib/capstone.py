"""The capstone sweep: every model of the book on every task of the suite, several seeds, into
one results file. Introduced in chapter 8; run by ``memorylib sweep`` (command line).

A sweep is a plain dict (:data:`CAPSTONE`, :data:`REDUCED`): models, training and evaluation
tasks, seeds and the training recipe. Each row is one call of :func:`memorylib.experiments.run`
(build with ``torch.manual_seed(seed)``, train, evaluate on held-out sequences), so a chapter can
re-run any row live and compare. Rows are written to the JSON as they finish: a sweep that is
stopped resumes where it left off (the spec must be unchanged).

The recipe per model is its own chapter's: the learned memories and the full model train at
learning rate 3e-3 (chapter 5 found 1e-2 too high for them), every other model at 1e-2. The
``length_extrapolation`` task trains nothing of its own: it evaluates the model trained for
``associative_lookup`` (the same task at the same length) at 1x to 8x that length.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from . import reproducible
from .checkpoint import save_checkpoint
from .experiments import run
from .files import atomic_write, atomic_write_text
from .registry import build_task
from .stats import describe

LOOKUP_SHORT = ("associative_lookup", dict(seq_len=48, num_pairs=4, num_queries=4, min_distance=18))
CHANGING_SHORT = ("changing_facts", dict(seq_len=84, num_active_keys=3, updates_per_phase=6,
                                         queries_per_phase=2, num_phases=2, min_distance=18))
NEEDLE_SHORT = ("needle_recall", dict(seq_len=96, filler="predictable"))
MULTI_HOP_SHORT = ("multi_hop", dict(seq_len=72, num_chains=2, num_queries=2, min_distance=18))

SLOW_LR = 3e-3
LEARNED = ("linear_memory", "delta_memory", "gated_delta_memory", "mlp_memory", "titans_memory",
           "full_memory", "no_sidecar", "full_no_surprise", "full_no_erase")

CAPSTONE = {
    "name": "capstone",
    "out": "book/results/ch08_capstone.json",
    "models": ["tiny_transformer", "local_transformer", "slot_memory", "no_forget", "fifo_memory",
               "surprise_memory", "no_surprise", "linear_memory", "delta_memory", "titans_memory",
               "full_memory", "no_sidecar", "full_no_surprise", "full_no_erase"],
    # task -> training task and the evaluation tasks (held-out sequences; "train" is the training task)
    "tasks": {
        "associative_lookup": {"train": LOOKUP_SHORT, "eval": {"train": None, "default": ("associative_lookup", {})}},
        "changing_facts": {"train": CHANGING_SHORT, "eval": {"train": None, "default": ("changing_facts", {})}},
        "needle_recall": {"train": NEEDLE_SHORT,
                          "eval": {"train": None,
                                   "default": ("needle_recall", dict(seq_len=192, filler="predictable"))}},
        "multi_hop": {"train": MULTI_HOP_SHORT, "eval": {"train": None, "default": ("multi_hop", {})}},
    },
    "length_extrapolation": {"from": "associative_lookup", "factors": [1, 2, 4, 8]},
    "seeds": [0, 1, 2],
    "steps": 300, "batch_size": 64, "warmup": 50, "lr": 1e-2, "lr_learned": SLOW_LR,
    "num_examples": 256,
    # the weights of the median seed (by held-out accuracy on "default") of these models on these
    # tasks are kept beside the JSON, for chapter 8's live dashboard and its analysis of what was kept
    "checkpoints": {"models": ["slot_memory", "surprise_memory", "full_memory", "no_sidecar", "full_no_surprise",
                               "full_no_erase"],
                    "tasks": ["changing_facts", "needle_recall"]},
}

REDUCED = {
    **CAPSTONE,
    "name": "reduced",
    "out": "runs/sweep_reduced.json",
    "models": ["local_transformer", "full_memory"],
    "model_kwargs": {"d_model": 16, "num_heads": 2},
    "tasks": {name: CAPSTONE["tasks"][name] for name in ("associative_lookup", "needle_recall")},
    "seeds": [0],
    "steps": 4, "batch_size": 8, "warmup": 2, "num_examples": 16,
    "checkpoints": {"models": ["full_memory"], "tasks": ["needle_recall"]},
}
"""A reduced sweep for CI: two small models, two tasks, one seed, a few steps. It checks that the
sweep runs end to end and writes a well-formed file, not what the models learn."""

PRESETS = {"capstone": CAPSTONE, "reduced": REDUCED}


def _task(entry):
    return build_task(entry[0], **entry[1])


def learning_rate(spec: dict, model: str) -> float:
    return spec["lr_learned"] if model in LEARNED else spec["lr"]


def _key(row: dict) -> tuple:
    return row["model"], row["task"], row["seed"]


def _spec_for_record(spec: dict) -> dict:
    return json.loads(json.dumps({k: v for k, v in spec.items() if k != "out"}))


def summary_table(rows: list[dict], eval_name: str = "default") -> dict:
    """``{model: {task: {"mean", "std", "min", "max", "n", "values"}}}`` of held-out accuracy over
    seeds (sample standard deviation), for every task and, for length extrapolation, every factor
    (``"length_extrapolation x4"``)."""
    values: dict = {}
    for r in rows:
        for name, res in r["eval"].items():
            if name == eval_name:
                label = r["task"]
            else:
                label = f"length_extrapolation {name}" if name.startswith("x") else None
            if label is not None:
                values.setdefault(r["model"], {}).setdefault(label, []).append(res["accuracy"])
    out = {model: {task: describe(vals) for task, vals in by_task.items()} for model, by_task in values.items()}
    return out


def checkpoint_path(out: Path, model: str, task: str) -> Path:
    """Where the median seed's weights of ``model`` on ``task`` are kept: beside the results file."""
    return out.with_suffix("") / f"{model}__{task}.pt"


def _keep_median(out: Path, record: dict, model: str, task: str, spec: dict) -> None:
    """Once every seed of (model, task) has run, copy the median seed's weights (seeds' weights
    wait in ``<out>.seeds/``, which is not part of the results) next to the results file."""
    rows = [r for r in record["rows"] if r["model"] == model and r["task"] == task]
    if len(rows) < len(spec["seeds"]):
        return
    rows.sort(key=lambda r: (r["eval"]["default"]["accuracy"], r["seed"]))
    median = rows[(len(rows) - 1) // 2]
    staged = out.with_suffix(".seeds") / f"{model}__{task}__s{median['seed']}.pt"
    if not staged.exists():
        return                                  # the seeds ran in a sitting that did not keep weights
    final = checkpoint_path(out, model, task)
    final.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(final, lambda f: f.write(staged.read_bytes()))     # never a half-copied checkpoint
    for r in rows:
        r["checkpoint"] = str(final.name) if r is median else None


def run_sweep(spec: dict, out: str | Path | None = None, resume: bool = True, progress: bool = False,
              command: str | None = None, models=None, tasks=None, seeds=None, log=print) -> dict:
    """Run every (model, task, seed) row of ``spec`` not already in ``out`` and write the results
    file after every row. ``models``, ``tasks``, ``seeds`` (optional) restrict which rows run now,
    so a long sweep can be split over several sittings into one file. Returns the record: the
    spec, the command, versions, machine, rows (each :func:`~memorylib.experiments.run`'s result
    with ``task`` and ``seconds``), the summary table and the total time."""
    for name, chosen, allowed in (("models", models, spec["models"]), ("tasks", tasks, list(spec["tasks"])),
                                  ("seeds", seeds, spec["seeds"])):
        bad = [x for x in (chosen or []) if x not in allowed]
        if bad:
            raise ValueError(f"{name} {bad} are not in the {spec['name']} sweep; its {name}: {allowed}")
    out = Path(out or spec["out"])
    spec_record = _spec_for_record(spec)
    record = None
    if resume and out.exists():
        record = json.loads(out.read_text())
        if record.get("spec") != spec_record:
            raise ValueError(f"{out} holds a sweep with another spec; pass resume=False (--fresh) to start over, "
                             "or write to another file")
    if record is None:
        record = {"spec": spec_record, "rows": [], "seconds": 0.0}
    record.pop("pinned_arithmetic", None)             # the old spelling of numeric_env
    record.update(reproducible.provenance(command or f"memorylib sweep --preset {spec['name']}"))
    done = {_key(r) for r in record["rows"]}
    extra = spec.get("length_extrapolation")
    todo = [(m, t, s) for m in models or spec["models"] for t in tasks or spec["tasks"] for s in seeds or spec["seeds"]
            if (m, t, s) not in done]
    log(f"{len(done)} rows done, {len(todo)} to run -> {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    for model, task_name, seed in todo:
        entry = spec["tasks"][task_name]
        train_task = _task(entry["train"])
        evals = {name: train_task if e is None else _task(e) for name, e in entry["eval"].items()}
        if extra and task_name == extra["from"]:
            le = build_task("length_extrapolation", base=entry["train"][0], factors=tuple(extra["factors"]),
                            **entry["train"][1])
            evals.update({f"x{f}": le.eval_task(f) for f in le.factors})
        start = time.perf_counter()
        result, net = run(model, train_task, seed=seed, steps=spec["steps"], batch_size=spec["batch_size"],
                          lr=learning_rate(spec, model), warmup=spec["warmup"], model_kwargs=spec.get("model_kwargs"),
                          eval_tasks=evals, num_examples=spec["num_examples"], progress=progress, return_model=True)
        result.update(task=task_name, train_task=train_task.config(), seconds=round(time.perf_counter() - start, 1))
        record["rows"].append(result)
        keep = spec.get("checkpoints") or {}
        if model in keep.get("models", []) and task_name in keep.get("tasks", []):
            staged = out.with_suffix(".seeds") / f"{model}__{task_name}__s{seed}.pt"
            staged.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(staged, model=model, model_kwargs=spec.get("model_kwargs"), task=entry["train"][0],
                            task_kwargs=entry["train"][1], seed=seed, net=net,
                            train_config={"sweep": spec["name"], "steps": spec["steps"],
                                          "batch_size": spec["batch_size"], "lr": learning_rate(spec, model),
                                          "warmup": spec["warmup"]})
            _keep_median(out, record, model, task_name, spec)
        record["seconds"] = round(record["seconds"] + result["seconds"], 1)
        record["table"] = summary_table(record["rows"])
        atomic_write_text(out, json.dumps(record, indent=1) + "\n")   # a stopped sweep never leaves half a file
        acc = result["eval"]["default"]["accuracy"]
        log(f"{model:18s} {task_name:20s} seed {seed}: default {acc:.3f}  ({result['seconds']} s)")
    return record
