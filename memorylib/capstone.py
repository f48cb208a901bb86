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

import torch

from . import reproducible
from .checkpoint import save_checkpoint
from .checks import check_int
from .experiments import run
from .files import atomic_write, atomic_write_text, locked
from .registry import build_task
from .stats import describe
from .training import TrainingDiverged

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

# The capstone at matched budgets (chapter 8, issue-by-issue rebuilt): every model's learning rate
# chosen from one grid on a validation stream, memories compared at equal state, a transformer
# without positions, tasks that can separate the mechanisms, five seeds and 512 sequences.
CHANGING_SPREAD = ("changing_facts", dict(seq_len=240, num_active_keys=3, updates_per_phase=6, queries_per_phase=2,
                                          num_phases=2, min_distance=18, update_spacing=6))
MATCHED = {
    "name": "matched",
    "out": "book/results/ch08_matched.json",
    # label -> (registry name, options); the memories at about 8 KB of state are the full model's budget
    # (the slot memory's own ablations, no_forget, surprise_memory and no_surprise, are chapters 3's
    # and 4's questions, answered there by their own sweeps; the capstone compares mechanisms)
    "models": {
        "tiny_transformer": ("tiny_transformer", {}), "nope_transformer": ("nope_transformer", {}),
        "local_transformer": ("local_transformer", {}),
        "slot_memory": ("slot_memory", {}), "slot_memory 32 slots": ("slot_memory", {"num_slots": 32}),
        "fifo_memory": ("fifo_memory", {}),
        "linear_memory": ("linear_memory", {}), "delta_memory": ("delta_memory", {}),
        "delta_memory 2 heads": ("delta_memory", {"memory_heads": 2}),
        "gated_delta_memory": ("gated_delta_memory", {}), "titans_memory": ("titans_memory", {}),
        "full_memory": ("full_memory", {}), "no_sidecar": ("no_sidecar", {}),
        "full_no_surprise": ("full_no_surprise", {}), "full_no_erase": ("full_no_erase", {}),
        "full_rank_recency": ("full_rank_recency", {}), "full_rank_random": ("full_rank_random", {}),
        "full_rank_write": ("full_rank_write", {}),
    },
    "tasks": {
        "associative_lookup": {"train": LOOKUP_SHORT, "eval": {"train": None, "default": ("associative_lookup", {})}},
        "lookup_markov": {"train": ("associative_lookup", {**LOOKUP_SHORT[1], "filler": "markov"}),
                          "eval": {"train": None, "default": ("associative_lookup", {"filler": "markov"})}},
        "changing_facts": {"train": CHANGING_SHORT, "eval": {"train": None, "default": ("changing_facts", {})}},
        "changing_spread": {"train": CHANGING_SPREAD,
                            "eval": {"train": None,
                                     "default": ("changing_facts", dict(seq_len=528, update_spacing=6))}},
        "needle_markov": {"train": ("needle_recall", dict(seq_len=96, filler="markov")),
                          "eval": {"train": None, "default": ("needle_recall", dict(seq_len=192, filler="markov"))}},
        "multi_hop": {"train": MULTI_HOP_SHORT, "eval": {"train": None, "default": ("multi_hop", {})}},
    },
    # the sidecar's rankings only where a sidecar can matter (many facts, a learnable haystack)
    "only": {m: ["associative_lookup", "lookup_markov", "changing_spread"]
             for m in ("full_rank_recency", "full_rank_random", "full_rank_write")},
    "length_extrapolation": {"from": "associative_lookup", "factors": [1, 2, 4, 8]},
    "seeds": [0, 1, 2, 3, 4],
    "lr_grid": [1e-3, 3e-3, 1e-2],
    "tune_seeds": [0],           # each (model, task) trains at every rate of the grid with these seeds
    "tune_on": "train",          # and keeps the rate with the best validation accuracy on this evaluation
    "steps": 300, "batch_size": 64, "warmup": 50,
    "num_examples": 512,
    "checkpoints": {"models": ["slot_memory", "delta_memory", "full_memory", "no_sidecar", "full_no_surprise",
                               "full_no_erase"],
                    "tasks": ["changing_spread", "needle_markov", "lookup_markov"]},
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

REDUCED_MATCHED = {
    **MATCHED,
    "name": "reduced-matched",
    "out": "runs/sweep_reduced_matched.json",
    "models": {"local_transformer": ("local_transformer", {"d_model": 16, "num_heads": 2}),
               "full_memory": ("full_memory", {"d_model": 16, "num_heads": 2}),
               "full_rank_recency": ("full_rank_recency", {"d_model": 16, "num_heads": 2})},
    "tasks": {name: MATCHED["tasks"][name] for name in ("associative_lookup", "needle_markov")},
    "only": {"full_rank_recency": ["associative_lookup"]},
    "seeds": [0, 1], "lr_grid": [3e-3, 1e-2], "tune_seeds": [0],
    "steps": 4, "batch_size": 8, "warmup": 2, "num_examples": 16,
    "checkpoints": {"models": ["full_memory"], "tasks": ["needle_markov"]},
}
"""The matched sweep in miniature, for the tests: tuning, per-label options, floors."""

FRONTIER_LOOKUP = {
    **MATCHED,
    "name": "frontier-lookup",
    "out": "book/results/ch07_lookup_frontier.json",
    # chapter 7's lookup frontier: the sizes the matched sweep does not train, on its lookup task and
    # with its recipe (the same grid, seeds and evaluation), so the two records read as one
    "models": {
        "slot_memory 4 slots": ("slot_memory", {"num_slots": 4}),
        "slot_memory 64 slots": ("slot_memory", {"num_slots": 64}),
        "linear_memory 16 wide": ("linear_memory", {"key_dim": 16, "value_dim": 16}),
        "linear_memory 64 wide": ("linear_memory", {"key_dim": 64, "value_dim": 64}),
        "delta_memory 16 wide": ("delta_memory", {"key_dim": 16, "value_dim": 16}),
        "delta_memory 64 wide": ("delta_memory", {"key_dim": 64, "value_dim": 64}),
        "titans_memory 16 hidden": ("titans_memory", {"hidden": 16}),
        "titans_memory 64 hidden": ("titans_memory", {"hidden": 64}),
        "full_memory 32 cached": ("full_memory", {"sidecar": 32}),
        "full_memory 64 cached": ("full_memory", {"sidecar": 64}),
    },
    "tasks": {"associative_lookup": MATCHED["tasks"]["associative_lookup"]},
    "only": {},
    "length_extrapolation": None,
    "checkpoints": {},
}

PRESETS = {"capstone": CAPSTONE, "matched": MATCHED, "frontier-lookup": FRONTIER_LOOKUP, "reduced": REDUCED,
           "reduced-matched": REDUCED_MATCHED}
RECIPE_KEYS = ("lr_grid", "tune_seeds", "tune_on", "steps", "batch_size", "warmup", "num_examples", "seeds")


def _task(entry):
    return build_task(entry[0], **entry[1])


def learning_rate(spec: dict, model: str) -> float:
    return spec["lr_learned"] if model in LEARNED else spec["lr"]


def models_of(spec: dict) -> dict[str, tuple[str, dict]]:
    """``{label: (registry name, options)}`` of a sweep: a list of names (every one built with the
    spec's ``model_kwargs``) or a dict of labels."""
    models = spec["models"]
    if isinstance(models, dict):
        return {label: (entry[0], dict(entry[1])) for label, entry in models.items()}
    return {name: (name, dict(spec.get("model_kwargs") or {})) for name in models}


def _rates(spec: dict, label: str, name: str) -> list[float]:
    return list(spec["lr_grid"]) if "lr_grid" in spec else [learning_rate(spec, name)]


def _key(row: dict) -> tuple:
    return row["model"], row["task"], row["seed"], row["lr"]


def _spec_for_record(spec: dict) -> dict:
    return json.loads(json.dumps({k: v for k, v in spec.items() if k != "out"}))


def selected(rows: list[dict]) -> list[dict]:
    """The rows a sweep reports: every row of a sweep without tuning, else the rows at each model's
    chosen learning rate (``"selected": True``)."""
    return [r for r in rows if r.get("selected", True)]


def summary_table(rows: list[dict], eval_name: str = "default") -> dict:
    """``{model: {task: {"mean", "std", "min", "max", "n", "values"}}}`` of held-out accuracy over
    seeds (sample standard deviation) of the :func:`selected` rows, for every task and, for length
    extrapolation, every factor (``"length_extrapolation x4"``); with ``eval_name="train"``, the
    accuracy on each task's own training distribution."""
    values: dict = {}
    names = {(r["model"], r["task"]): list(r["eval"]) for r in rows if r.get("eval")}
    diverged: dict = {}
    for r in selected(rows):
        for name in names.get((r["model"], r["task"]), []):
            if name == eval_name:
                label = r["task"]
            else:
                label = f"length_extrapolation {name}" if name.startswith("x") and eval_name == "default" else None
            if label is not None:
                values.setdefault(r["model"], {}).setdefault(label, []).append(accuracy(r, name))
                if r.get("diverged"):
                    diverged.setdefault(r["model"], {}).setdefault(label, 0)
                    diverged[r["model"]][label] += 1
    return {model: {task: {**describe(vals), "diverged": diverged.get(model, {}).get(task, 0)}
                    for task, vals in by_task.items()} for model, by_task in values.items()}


def matched_frontier(records, families: dict, task: str = "associative_lookup", eval_name: str = "default",
                     min_seeds: int = 5) -> dict:
    """A sweep's models as points of a recall–state frontier (the format of
    :func:`memorylib.analysis.frontier_points`): ``{family: [point, ...]}`` in order of state, each
    point ``{"size", "state_bytes", "seeds", "mean", "low", "high"}`` over the :func:`selected` rows
    of ``task`` on ``eval_name``. ``records``: one sweep record or a list of them, run with one recipe
    (the same grid, seeds, steps and ``task``; anything else is an error that names the difference),
    e.g. the matched sweep and :data:`FRONTIER_LOOKUP`. ``families``: ``{model label: (family, size)}``.
    State is :func:`memorylib.analysis.state_bytes` of the model as the sweep builds it, with full
    attention's key-value cache counted at the length of the ``eval_name`` sequences. A model with
    fewer than ``min_seeds`` seeds in the record is an error that names it (a partial row would
    move as the sweep goes on). Introduced in chapter 7."""
    from .analysis import state_bytes
    from .registry import build_model

    check_int("min_seeds", min_seeds, 1)
    records = [records] if isinstance(records, dict) else list(records)
    if not records:
        raise ValueError("records must hold at least one sweep record")
    spec = records[0]["spec"]
    if task not in spec["tasks"]:
        raise ValueError(f"task must be one of the sweep's tasks {sorted(spec['tasks'])}, got {task!r}")
    for other in records[1:]:
        o = other["spec"]
        differ = [k for k in RECIPE_KEYS if o.get(k) != spec.get(k)]
        if task not in o["tasks"] or o["tasks"][task] != spec["tasks"][task]:
            differ.append(f"tasks[{task!r}]")
        if differ:
            raise ValueError(f"the sweeps {spec.get('name')!r} and {o.get('name')!r} differ in {differ}: "
                             "their rows are not one comparison")
    models, rows_of = {}, {}
    for record in records:
        for label, entry in models_of(record["spec"]).items():
            models.setdefault(label, entry)
            rows_of.setdefault(label, [r for r in record["rows"] if r["model"] == label])
    entry = spec["tasks"][task]["eval"].get(eval_name) or spec["tasks"][task]["train"]
    length = _task(entry).seq_len
    out: dict = {}
    for label, (family, size) in families.items():
        if label not in models:
            raise ValueError(f"{label!r} is not a model of the sweep; its models: {sorted(models)}")
        rows = sorted((r for r in selected(rows_of[label]) if r["task"] == task), key=lambda r: r["seed"])
        if len(rows) < min_seeds:
            raise ValueError(f"{label!r} has {len(rows)} seed(s) of {task!r} in the record, fewer than "
                             f"min_seeds={min_seeds}: the sweep has not finished it")
        name, kwargs = models[label]
        state = state_bytes(build_model(name, **kwargs))
        acc = [accuracy(r, eval_name) for r in rows]
        out.setdefault(family, []).append({
            "size": size, "state_bytes": state["memory"] + state["context"] + state["per_token"] * length,
            "seeds": [r["seed"] for r in rows], "mean": round(sum(acc) / len(acc), 4),
            "low": round(min(acc), 4), "high": round(max(acc), 4)})
    return {family: sorted(points, key=lambda q: q["state_bytes"]) for family, points in out.items()}


def accuracy(row: dict, eval_name: str = "default") -> float:
    """A row's held-out accuracy on ``eval_name``; 0.0 for a run whose training diverged (it
    answers nothing: ranked below every run that trained, and flagged as ``diverged`` wherever it
    is counted)."""
    return 0.0 if row.get("diverged") else row["eval"][eval_name]["accuracy"]


def checkpoint_path(out: Path, model: str, task: str) -> Path:
    """Where the median seed's weights of ``model`` on ``task`` are kept: beside the results file."""
    return out.with_suffix("") / f"{model.replace(' ', '_')}__{task}.pt"


def _staged_path(out: Path, model: str, task: str, seed: int) -> Path:
    return out.with_suffix(".seeds") / f"{model.replace(' ', '_')}__{task}__s{seed}.pt"


def _keep_median(out: Path, record: dict, model: str, task: str, spec: dict) -> None:
    """Once every seed of (model, task) has run, copy the median seed's weights (seeds' weights
    wait in ``<out>.seeds/``, which is not part of the results) next to the results file."""
    rows = [r for r in selected(record["rows"]) if r["model"] == model and r["task"] == task]
    if len(rows) < len(spec["seeds"]):
        return
    rows.sort(key=lambda r: (accuracy(r), r["seed"]))
    median = rows[(len(rows) - 1) // 2]
    staged = _staged_path(out, model, task, median["seed"])
    if not staged.exists():
        return                                  # the seeds ran in a sitting that did not keep weights
    final = checkpoint_path(out, model, task)
    final.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(final, lambda f: f.write(staged.read_bytes()))     # never a half-copied checkpoint
    for r in rows:
        r["checkpoint"] = str(final.name) if r is median else None


def _read(out: Path, spec_record: dict, resume: bool) -> dict:
    if resume and out.exists():
        try:
            record = json.loads(out.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot resume from {out}: it is not a readable JSON file ({type(err).__name__}: "
                             f"{str(err)[:120]}); pass --fresh to start over, or write to another file") from None
        if not isinstance(record, dict) or not isinstance(record.get("rows"), list):
            raise ValueError(f"cannot resume from {out}: it is not a sweep record (a JSON object with a list of "
                             "rows); pass --fresh to start over, or write to another file")
        bad = [i for i, r in enumerate(record["rows"])
               if not isinstance(r, dict) or not {"model", "task", "seed", "lr", "eval"} <= set(r)]
        if bad:
            raise ValueError(f"cannot resume from {out}: its row {bad[0]} is not a sweep row (model, task, seed, lr, "
                             "eval)")
        if record.get("spec") != spec_record:
            raise ValueError(f"{out} holds a sweep with another spec; pass resume=False (--fresh) to start over, "
                             "or write to another file")
        return record
    return {"spec": spec_record, "rows": [], "seconds": 0.0}


def _evaluations(spec: dict, task_name: str) -> tuple:
    """(training task, {eval name: task}) of one task of a sweep, length extrapolation included."""
    entry = spec["tasks"][task_name]
    train_task = _task(entry["train"])
    evals = {name: train_task if e is None else _task(e) for name, e in entry["eval"].items()}
    extra = spec.get("length_extrapolation")
    if extra and task_name == extra["from"]:
        le = build_task("length_extrapolation", base=entry["train"][0], factors=tuple(extra["factors"]),
                        **entry["train"][1])
        evals.update({f"x{f}": le.eval_task(f) for f in le.factors})
    return train_task, evals


def floors(spec: dict, num_examples: int | None = None) -> dict:
    """``{task: {eval name: {"accuracy", "ci"}}}``: the keyless floor (:mod:`memorylib.floors`) of
    every evaluation of the sweep, on the held-out sequences of its first seed."""
    from .floors import keyless_floor

    out = {}
    for task_name in spec["tasks"]:
        _, evals = _evaluations(spec, task_name)
        out[task_name] = {}
        for name, task in evals.items():
            r = keyless_floor(task, num_examples=num_examples or spec["num_examples"], seed=spec["seeds"][0])
            out[task_name][name] = {"accuracy": r["accuracy"], "ci": r["ci"]}
    return out


def chosen_rate(rows: list[dict], spec: dict, model: str, task: str) -> float | None:
    """The learning rate of ``model`` on ``task`` with the best mean validation accuracy (on the
    evaluation ``spec["tune_on"]``) over the tuning seeds; a tie goes to the smaller rate. A rate
    at which a tuning run diverged is never chosen. None until every rate of the grid has run with
    every tuning seed, and None when every rate diverged (:func:`diverged_everywhere`)."""
    scores = {}
    for lr in spec["lr_grid"]:
        runs = [r for r in rows if r["model"] == model and r["task"] == task and r["lr"] == lr
                and r["seed"] in spec["tune_seeds"]]
        if len(runs) < len(spec["tune_seeds"]):
            return None
        if any(r.get("diverged") for r in runs):
            continue
        scores[lr] = sum(r["validation"][spec["tune_on"]]["accuracy"] for r in runs) / len(runs)
    return max(sorted(scores), key=lambda lr: (scores[lr], -lr)) if scores else None


def diverged_everywhere(rows: list[dict], spec: dict, model: str, task: str) -> bool:
    """True when every rate of the grid has run with the tuning seeds and each diverged at least
    once: ``model`` cannot be trained on ``task`` with the sweep's recipe."""
    runs = [r for r in rows if r["model"] == model and r["task"] == task and r["seed"] in spec["tune_seeds"]]
    tried = {r["lr"] for r in runs}
    return tried >= set(spec["lr_grid"]) and all(any(r.get("diverged") for r in runs if r["lr"] == lr)
                                                  for lr in spec["lr_grid"])


def _plan(spec: dict, record: dict, models, tasks, seeds) -> list[tuple]:
    """The next rows to run, in order: ``(label, task, seed, lr, tuning)``. With a grid, a (model,
    task)'s seeds beyond the tuning ones wait for its chosen rate, and the rows go task by task
    (every model on a task before the next task), so that a sweep stopped part way holds complete
    comparisons on the tasks it reached; without one, model by model, as the capstone's record was
    made."""
    done = {_key(r) for r in record["rows"]}
    only = spec.get("only", {})
    labels = models_of(spec)
    if "lr_grid" in spec:
        pairs = [(label, task_name) for task_name in spec["tasks"] for label in labels]
    else:
        pairs = [(label, task_name) for label in labels for task_name in spec["tasks"]]
    todo = []
    for label, task_name in pairs:
        if (models and label not in models) or (tasks and task_name not in tasks):
            continue
        if task_name not in only.get(label, [task_name]):
            continue
        if "lr_grid" not in spec:
            lr = learning_rate(spec, labels[label][0])
            todo += [(label, task_name, s, lr, False) for s in seeds or spec["seeds"]
                     if (label, task_name, s, lr) not in done]
            continue
        todo += [(label, task_name, s, lr, True) for lr in spec["lr_grid"] for s in spec["tune_seeds"]
                 if (label, task_name, s, lr) not in done and (not seeds or s in seeds)]
        lr = chosen_rate(record["rows"], spec, label, task_name)
        if lr is not None:
            todo += [(label, task_name, s, lr, False) for s in seeds or spec["seeds"]
                     if s not in spec["tune_seeds"] and (label, task_name, s, lr) not in done]
    return todo


def _mark_selected(record: dict, spec: dict) -> None:
    if "lr_grid" not in spec:
        return
    pairs = {(r["model"], r["task"]) for r in record["rows"]}
    chosen = {pair: chosen_rate(record["rows"], spec, *pair) for pair in pairs}       # once per pair
    for r in record["rows"]:
        lr = chosen[r["model"], r["task"]]
        r["selected"] = lr is not None and r["lr"] == lr


def run_sweep(spec: dict, out: str | Path | None = None, resume: bool = True, progress: bool = False,
              command: str | None = None, models=None, tasks=None, seeds=None, log=print) -> dict:
    """Run every row of ``spec`` not already in ``out`` and write the results file after every row.
    ``models`` (labels), ``tasks``, ``seeds`` (optional) restrict which rows run now, so a long sweep
    can be split over several sittings, or over several processes writing one file (each re-reads
    it under a lock before adding a row; give them different models). Returns the record: the spec,
    the command and :func:`~memorylib.reproducible.provenance`, rows (each
    :func:`~memorylib.experiments.run`'s result with ``task``, ``seconds`` and, with a learning-rate
    grid, its ``validation`` accuracy and whether it is ``selected``), the keyless ``floors``, the
    summary ``table`` (and ``table_trained``: on the training distributions) and the total time.

    With ``spec["lr_grid"]``, every (model, task) first trains at every rate with the
    ``tune_seeds`` and is evaluated on the validation stream as well; the rate with the best
    validation accuracy (:func:`chosen_rate`) is used for the other seeds, and the tuning run at
    that rate is the result for its seed. The test sequences never choose anything."""
    labels = models_of(spec)
    for name, chosen, allowed in (("models", models, list(labels)), ("tasks", tasks, list(spec["tasks"])),
                                  ("seeds", seeds, spec["seeds"])):
        bad = [x for x in (chosen or []) if x not in allowed]
        if bad:
            raise ValueError(f"{name} {bad} are not in the {spec['name']} sweep; its {name}: {allowed}")
    out = Path(out or spec["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    spec_record = _spec_for_record(spec)
    with locked(out):
        record = _read(out, spec_record, resume)
        if "lr_grid" in spec and "floors" not in record:
            record["floors"] = floors(spec)
        record.pop("pinned_arithmetic", None)             # the old spelling of numeric_env
        record.update(reproducible.provenance(command or f"memorylib sweep --preset {spec['name']}"))
        atomic_write_text(out, json.dumps(record, indent=1, allow_nan=False) + "\n")
    log(f"{len(record['rows'])} rows done, {len(_plan(spec, record, models, tasks, seeds))} to run -> {out}")
    keep = spec.get("checkpoints") or {}
    while True:
        with locked(out):
            record = _read(out, spec_record, True)
        todo = _plan(spec, record, models, tasks, seeds)
        if not todo:
            break
        label, task_name, seed, lr, tuning = todo[0]
        name, kwargs = labels[label]
        entry = spec["tasks"][task_name]
        train_task, evals = _evaluations(spec, task_name)
        start = time.perf_counter()
        validation = {spec["tune_on"]: evals[spec["tune_on"]]} if tuning else None
        try:
            result, net = run(name, train_task, seed=seed, steps=spec["steps"], batch_size=spec["batch_size"],
                              lr=lr, warmup=spec["warmup"], model_kwargs=kwargs, eval_tasks=evals,
                              num_examples=spec["num_examples"], progress=progress, return_model=True,
                              validation_tasks=validation)
        except TrainingDiverged as err:
            # a rate the grid offers may be too large for a model: recorded as diverged (with the
            # step and the loss), never as a score; the rate is then never chosen
            result, net = {"model_kwargs": dict(kwargs), "seed": seed, "steps": spec["steps"],
                           "batch_size": spec["batch_size"], "lr": lr, "history": None, "eval": None,
                           "pretrain_history": None, "diverged": {"step": err.step, "loss": str(err.loss)},
                           **({"validation": None} if tuning else {})}, None
        # each row names the arithmetic it ran in (rows of one file may come from processes with
        # different thread counts): a live re-run can match a row bit for bit only in the same one
        result.update(model=label, registry_model=name, task=task_name, train_task=train_task.config(),
                      seconds=round(time.perf_counter() - start, 1), threads=torch.get_num_threads(),
                      fingerprint=reproducible.fingerprint())
        if net is not None and label in keep.get("models", []) and task_name in keep.get("tasks", []):
            staged = _staged_path(out, label, task_name, seed)
            staged.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(staged, model=name, model_kwargs=kwargs, task=entry["train"][0],
                            task_kwargs=entry["train"][1], seed=seed, net=net,
                            train_config={"sweep": spec["name"], "steps": spec["steps"],
                                          "batch_size": spec["batch_size"], "lr": lr, "warmup": spec["warmup"]})
        with locked(out):
            record = _read(out, spec_record, True)
            if _key(result) not in {_key(r) for r in record["rows"]}:      # another process may have run it
                record["rows"].append(result)
                record["seconds"] = round(record["seconds"] + result["seconds"], 1)
            _mark_selected(record, spec)
            if label in keep.get("models", []) and task_name in keep.get("tasks", []):
                _keep_median(out, record, label, task_name, spec)
            record["table"] = summary_table(record["rows"])
            if "lr_grid" in spec:
                record["table_trained"] = summary_table(record["rows"], "train")
            # atomic: a stopped sweep never leaves half a file; strict JSON: a NaN is an error
            atomic_write_text(out, json.dumps(record, indent=1, allow_nan=False) + "\n")
        if result.get("diverged"):
            log(f"{label:20s} {task_name:20s} seed {seed} (lr {lr:g}): training diverged at step "
                f"{result['diverged']['step']}  ({result['seconds']} s)")
            continue
        acc = result["eval"]["default"]["accuracy"]
        how = f"lr {lr:g}" + (f", validation {result['validation'][spec['tune_on']]['accuracy']:.3f}" if tuning else "")
        log(f"{label:20s} {task_name:20s} seed {seed} ({how}): default {acc:.3f}  ({result['seconds']} s)")
    return record


def compare(record: dict, pairs: list[tuple[str, str]], task: str, eval_name: str = "default",
            level: float = 0.05) -> list[dict]:
    """The verdicts a conclusion names, tested together: for each ``(a, b)`` of ``pairs`` (model
    labels) on ``task``, the per-seed held-out accuracies of the :func:`selected` rows, the
    every-seed rule (every seed of one above every seed of the other), the two-sided rank-sum test
    (:func:`memorylib.stats.rank_sum_test`) and its Holm-adjusted p-value over all the pairs. A
    pair is ``"separated"`` only when both the every-seed rule and the adjusted test (at
    ``level``) say so; otherwise ``"not separated"``, a negative result to be stated as such. A
    seed whose training diverged counts as 0.0 (:func:`accuracy`), and ``a_diverged`` /
    ``b_diverged`` say how many did."""
    from .stats import holm, rank_sum_test

    def rows_of(model):
        rows = sorted((r for r in selected(record["rows"]) if r["model"] == model and r["task"] == task),
                      key=lambda r: r["seed"])
        if not rows:
            raise ValueError(f"no rows of {model!r} on {task!r} in the record")
        return rows

    out = []
    for a, b in pairs:
        ra, rb = rows_of(a), rows_of(b)
        va, vb = [accuracy(r, eval_name) for r in ra], [accuracy(r, eval_name) for r in rb]
        every = "a" if min(va) > max(vb) else "b" if min(vb) > max(va) else None
        out.append({"a": a, "b": b, "task": task, "a_values": va, "b_values": vb,
                    "a_diverged": sum(bool(r.get("diverged")) for r in ra),
                    "b_diverged": sum(bool(r.get("diverged")) for r in rb),
                    "a_mean": round(sum(va) / len(va), 4), "b_mean": round(sum(vb) / len(vb), 4),
                    "every_seed": every, "p": rank_sum_test(va, vb)})
    for row, adjusted in zip(out, holm([r["p"] for r in out])):
        row["p_holm"] = adjusted
        better = row["a"] if row["a_mean"] > row["b_mean"] else row["b"]
        row["verdict"] = (f"{better} separated" if row["every_seed"] is not None and adjusted < level
                          else "not separated")
    return out
