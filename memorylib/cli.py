"""The command line: ``memorylib train | eval | plot | demo | stream | sweep`` (the README's "Command line").

Every verb is a thin layer over the library: models and tasks are chosen by their registry names
(:mod:`memorylib.registry`), trained and evaluated on held-out data by :mod:`memorylib.training`,
drawn with :mod:`memorylib.figures`. A verb is one entry of :data:`VERBS`: a function that adds
its options to an ``argparse`` parser and a handler that takes the parsed options and returns an
exit code, so a new verb is two functions and one line.

Bad input (an unknown name, a malformed ``key=value``, a missing or foreign checkpoint, weights
that do not fit the model, a run folder that already exists) ends with exit code 2 and one line on
stderr that names the bad value; no traceback. A checkpoint is a plain dict of strings, numbers and
tensors written by ``torch.save`` and read only with ``torch.load(..., weights_only=True)``.

torch is imported inside the handlers, so ``memorylib --help`` answers at once.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path

RUN_FORMAT, EVAL_FORMAT, STREAM_FORMAT = "memorylib-run", "memorylib-eval", "memorylib-stream"
LOG_EVERY = 25          # training history points, as in memorylib.experiments.run
EVAL_BATCH = 32         # evaluate()'s batch size: demo draws its sequence the same way
SHORT_SEQUENCE = 48     # demo prints sequences up to this length in full
MAX_DEMO_INDEX = 65535  # demo draws every held-out batch up to its sequence: seconds, not hours
MAX_BATCH = 65536       # sequences per step or per evaluation batch


class CLIError(ValueError):
    """Bad input: reported as one line on stderr with exit code 2 (a ``ValueError``, so library
    callers such as :func:`memorylib.checkpoint.load_model` can catch it as one)."""

    def __init__(self, message: str, prog: str | None = None):
        super().__init__(message)
        self.prog = prog


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors raised as :class:`CLIError` (one line, exit code 2)."""

    def error(self, message):
        raise CLIError(f"{message} (see {self.prog} --help)", prog=self.prog)


# --- option types -----------------------------------------------------------------------------

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def key_value(text: str) -> tuple[str, object]:
    """``"d_model=16"`` -> ``("d_model", 16)``: the value is parsed as JSON when it is JSON (ints,
    floats, ``true``/``false``, ``null``, lists), else kept as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not _KEY.match(key):
        raise argparse.ArgumentTypeError(f"expected key=value (e.g. d_model=16), got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be an int >= {low}, got {text!r}")
        return value
    return parse


def _int_in(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an int in [{low}, {high}], got {text!r}")
        return value
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _kwargs(pairs: list | None, flag: str) -> dict:
    out = {}
    for key, value in pairs or []:
        if key in out:
            raise CLIError(f"{flag} {key} is given twice ({key}={out[key]!r} and {key}={value!r})")
        out[key] = value
    return out


def _fmt(kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "no arguments"


# --- models, tasks, checkpoints ---------------------------------------------------------------


def _build(kind: str, name: str, kwargs: dict):
    """A model or task from the registry; errors become one-line :class:`CLIError` s."""
    from . import registry

    names = registry.model_names() if kind == "model" else registry.task_names()
    build = registry.build_model if kind == "model" else registry.build_task
    if name not in names:
        try:
            build(name)                     # raises the registry's "did you mean" error
        except ValueError as err:
            raise CLIError(str(err)) from None
    try:
        return build(name, **kwargs)
    except (TypeError, ValueError) as err:
        raise CLIError(f"cannot build {kind} {name!r} from {_fmt(kwargs)}: {_one_line(err)}") from None


def _check_vocab(model, task, model_name: str, task_name: str) -> None:
    vocab = getattr(model, "vocab_size", None)
    if vocab is not None and vocab < task.vocab_size:
        raise CLIError(f"model {model_name!r} has vocab_size={vocab}, but task {task_name!r} uses "
                       f"{task.vocab_size} token ids")


def read_checkpoint(path) -> dict:
    """:func:`memorylib.checkpoint.read_checkpoint`, its errors as :class:`CLIError`."""
    from .checkpoint import read_checkpoint as read

    try:
        return read(path)
    except ValueError as err:
        raise CLIError(str(err)) from None


def _load_weights(model, state_dict: dict, path, name: str, kwargs: dict) -> None:
    from .checkpoint import load_weights

    try:
        load_weights(model, state_dict, path, name, kwargs)
    except ValueError as err:
        raise CLIError(str(err)) from None


def _model_from_args(args) -> tuple:
    """``(model, info)`` from ``--checkpoint`` (plus ``--model-arg`` overrides) or ``--model``;
    ``info``: model, model_kwargs, checkpoint (path or None) and the checkpoint dict (or None).
    A fresh model is built after ``torch.manual_seed(seed)``."""
    import torch

    overrides = _kwargs(args.model_arg, "--model-arg")
    if args.checkpoint is not None:
        ckpt = read_checkpoint(args.checkpoint)
        name, kwargs = ckpt["model"], {**ckpt["model_kwargs"], **overrides}
        model = _build("model", name, kwargs)
        _load_weights(model, ckpt["state_dict"], args.checkpoint, name, kwargs)
    else:
        ckpt, name, kwargs = None, args.model, overrides
        torch.manual_seed(args.seed if args.seed is not None else 0)
        model = _build("model", name, kwargs)
    model.eval()
    return model, {"model": name, "model_kwargs": kwargs, "checkpoint": args.checkpoint, "ckpt": ckpt}


def _describe(info: dict, seed: int) -> str:
    if info["ckpt"] is not None:
        return f"{info['model']} from {info['checkpoint']}"
    return f"{info['model']} freshly initialised with seed {seed}"


def _task_from_args(args, ckpt: dict | None, allow_all: bool) -> tuple:
    """``[(task name, task kwargs)]``: the named task (``all``: every registered task with its
    defaults), or the checkpoint's task when none is named."""
    from .registry import task_names

    overrides = _kwargs(args.task_arg, "--task-arg")
    if args.task is None:
        if ckpt is None:
            raise CLIError("--task is needed with --model (there is no checkpoint to take the task from)")
        return [(ckpt["task"], {**ckpt["task_kwargs"], **overrides})]
    if args.task == "all" and allow_all:
        if overrides:
            raise CLIError("--task-arg cannot be combined with --task all (every task runs with its defaults)")
        return [(name, {}) for name in task_names()]
    if ckpt is not None and args.task == ckpt["task"]:
        return [(args.task, {**ckpt["task_kwargs"], **overrides})]
    return [(args.task, overrides)]


def _eval_targets(name: str, task) -> list[tuple[str, object]]:
    """``[(label, task)]`` to evaluate: a length-extrapolation protocol at each of its factors."""
    from .tasks import LengthExtrapolation

    if isinstance(task, LengthExtrapolation):
        return [(f"{name} x{f}", task.eval_task(f)) for f in task.factors]
    return [(name, task)]


def _evaluate_all(model, targets: list, num_examples: int, seed: int, progress: bool) -> dict:
    from tqdm.auto import tqdm

    from .training import evaluate

    out = {}
    bar = tqdm(targets, desc="evaluating", disable=not progress or len(targets) < 2, leave=False)
    for label, task in bar:
        bar.set_postfix_str(label)
        out[label] = evaluate(model, task, num_examples=num_examples, seed=seed)
    return out


def results_table(results: dict[str, dict]) -> str:
    """An aligned text table: task, accuracy, 95 % interval, chance and scored answers."""
    rows = [("task", "accuracy", "95% CI", "chance", "n")]
    for label, r in results.items():
        rows.append((label, f"{r['accuracy']:.3f}", f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]",
                     f"{r['chance']:.3f}", str(r["num_answers"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _versions() -> dict:
    import platform

    import torch

    from . import __version__

    return {"memorylib": __version__, "torch": torch.__version__, "python": platform.python_version()}


def _write_json(path: Path, data: dict) -> None:
    from .files import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1, allow_nan=False) + "\n")   # strict JSON: NaN is an error


PLOT_MARK = "memorylib-plot"      # in the layout's meta of every figure plot writes


def _is_own_output(path: Path, fmt: str) -> bool:
    """Is the file at ``path`` memorylib's own output of kind ``fmt`` (a JSON record's ``format``;
    for plot, the mark in the figure)?"""
    try:
        if fmt == PLOT_MARK:
            return path.suffix.lower() in (".html", ".htm") and PLOT_MARK in path.read_text(errors="replace")
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("format") == fmt


def check_output(path, fmt: str, force: bool = False, inputs=(), flag: str = "--out") -> Path:
    """Check where a command will write before it does any work: not one of its ``inputs``, not a
    folder, a folder that exists (or can be made) and can be written to; an existing file is
    replaced only if it is memorylib's own output of the same kind, or with ``--force``."""
    out = Path(path)
    for given in inputs:
        if given is not None and Path(given).exists() and out.exists() and out.resolve() == Path(given).resolve():
            raise CLIError(f"{flag} {str(out)!r} is also this command's input; write the output elsewhere")
    if out.is_dir():
        raise CLIError(f"{flag} {str(out)!r} is a folder; give a file name")
    if out.exists() and not force and not _is_own_output(out, fmt):
        raise CLIError(f"{flag} {str(out)!r} exists and is not a {fmt} file written by memorylib; pass --force "
                       "to overwrite it, or choose another name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".check"):
            pass
    except OSError as err:
        raise CLIError(f"cannot write {flag} {str(out)!r}: {err.strerror or err}") from None
    return out


def _add_model_source(p) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="PATH", help="a checkpoint.pt written by train")
    source.add_argument("--model", metavar="NAME", help="a registered model, freshly initialised")
    p.add_argument("--model-arg", metavar="KEY=VALUE", type=key_value, action="append",
                   help="model option (repeatable); with --checkpoint it overrides the saved one")


def _add_task_args(p, all_tasks: bool) -> None:
    extra = " or 'all'" if all_tasks else ""
    p.add_argument("--task", metavar="NAME", help=f"a registered task{extra} (default: the checkpoint's)")
    p.add_argument("--task-arg", metavar="KEY=VALUE", type=key_value, action="append",
                   help="task option (repeatable), e.g. seq_len=96")


# --- train ------------------------------------------------------------------------------------


def _train_arguments(p) -> None:
    p.add_argument("--model", required=True, metavar="NAME", help="a registered model, e.g. local_transformer")
    p.add_argument("--task", required=True, metavar="NAME", help="a registered task, e.g. associative_lookup")
    p.add_argument("--model-arg", metavar="KEY=VALUE", type=key_value, action="append",
                   help="model option (repeatable), e.g. d_model=32; values are JSON when they parse")
    p.add_argument("--task-arg", metavar="KEY=VALUE", type=key_value, action="append",
                   help="task option (repeatable), e.g. seq_len=96")
    p.add_argument("--steps", type=_int_at_least(1), default=300, metavar="N", help="training steps (default 300)")
    p.add_argument("--batch-size", type=_int_in(1, MAX_BATCH), default=64, metavar="N",
                   help="sequences per step (default 64)")
    p.add_argument("--lr", type=_positive_float, default=1e-2, metavar="X", help="peak learning rate (default 0.01)")
    p.add_argument("--warmup", type=_int_at_least(0), default=50, metavar="N", help="warm-up steps (default 50)")
    p.add_argument("--seed", type=_int_at_least(0), default=0, metavar="N",
                   help="initialisation and data seed (default 0)")
    p.add_argument("--runs", default="runs", metavar="DIR", help="where run folders go (default runs)")
    p.add_argument("--name", metavar="RUN_NAME", help="run folder name (default <model>-<task>-s<seed>)")
    p.add_argument("--eval-examples", type=_int_at_least(1), default=512, metavar="N",
                   help="held-out sequences evaluated after training (default 512)")
    p.add_argument("--force", action="store_true", help="overwrite an existing run folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _write_run(run_dir: Path, model, args, model_kwargs: dict, task_kwargs: dict, config: dict, command: list,
               metrics: dict) -> None:
    """Write a run folder so that it is whole or absent: the files go to a new hidden folder beside
    it (``metrics.json``, which marks a run complete, last), which then takes the run's name; an
    earlier run of that name (``--force``) is removed only after that. A failure on the way (a full
    disk, an interrupt) leaves the earlier run as it was and nothing that blocks a re-run."""
    import shutil

    from .checkpoint import save_checkpoint

    staging = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.partial-", dir=run_dir.parent))
    old = None
    try:
        save_checkpoint(staging / "checkpoint.pt", model=args.model, model_kwargs=model_kwargs, task=args.task,
                        task_kwargs=task_kwargs, seed=args.seed, net=model, train_config=config)
        _write_json(staging / "config.json", {**config, "command": command})
        _write_json(staging / "metrics.json", metrics)
        if run_dir.exists():
            old = run_dir.with_name(f".{run_dir.name}.old-{staging.name.rsplit('-', 1)[-1]}")
            run_dir.rename(old)
        staging.rename(run_dir)
    except OSError as err:
        raise CLIError(f"cannot write the run folder {str(run_dir)!r}: {err.strerror or err}; "
                       "an earlier run of that name is unchanged") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if old is not None and run_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
        elif old is not None:                 # the new run could not take its place: put the old one back
            old.rename(run_dir)


def _train(args, argv: list) -> int:
    """Train, evaluate on held-out data, write checkpoint.pt, metrics.json and config.json.

    The order (``torch.manual_seed(seed)``, build, train with ``log_every=25``, evaluate with the
    same seed) is :func:`memorylib.experiments.run`'s, so the same arguments give the same numbers.
    """
    import torch

    from . import reproducible
    from .training import train

    model_kwargs = _kwargs(args.model_arg, "--model-arg")
    task_kwargs = _kwargs(args.task_arg, "--task-arg")
    name = args.name or f"{args.model}-{args.task}-s{args.seed}"
    if not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise CLIError(f"--name must be a folder name, not a path, got {name!r}")
    runs = Path(args.runs)
    run_dir = runs / name
    if runs.exists() and not runs.is_dir():
        raise CLIError(f"--runs {str(runs)!r} is a file, not a folder")
    if run_dir.exists() and not run_dir.is_dir():
        raise CLIError(f"{str(run_dir)!r} exists and is not a run folder; choose another --name")
    if run_dir.exists() and not args.force:
        raise CLIError(f"run folder {str(run_dir)!r} already exists; pass --force to overwrite it "
                       "or choose another --name")
    try:                                      # where the run will be written: checked before any work
        runs.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=runs, prefix=f".{name}.", suffix=".check"):
            pass
    except OSError as err:
        raise CLIError(f"cannot write run folders in --runs {str(runs)!r}: {err.strerror or err}") from None
    task = _build("task", args.task, task_kwargs)
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    model = _build("model", args.model, model_kwargs)
    _check_vocab(model, task, args.model, args.task)
    fit = train(model, task, steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                seed=args.seed, log_every=LOG_EVERY, progress=not args.no_progress,
                desc=f"{args.model} on {args.task}")
    trained = time.perf_counter()
    evals = _evaluate_all(model, _eval_targets(args.task, task), args.eval_examples, args.seed,
                          progress=not args.no_progress)
    done = time.perf_counter()

    config = {"model": args.model, "model_kwargs": model_kwargs, "task": args.task, "task_kwargs": task_kwargs,
              "seed": args.seed, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
              "warmup": args.warmup, "eval_examples": args.eval_examples}
    command = ["memorylib", *argv]
    metrics = {"format": RUN_FORMAT, "format_version": 1, "name": name, **config,
               "task_config": task.config(),
               "num_parameters": sum(p.numel() for p in model.parameters()),
               "history": fit["history"], "eval": evals,
               "timings": {"train_s": round(trained - start, 2), "eval_s": round(done - trained, 2),
                           "total_s": round(done - start, 2)},
               "command": command, "versions": _versions(), "provenance": reproducible.provenance(),
               "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _write_run(run_dir, model, args, model_kwargs, task_kwargs, config, command, metrics)
    print(results_table(evals))
    print(f"\n{args.eval_examples} held-out sequences per task (seed {args.seed}); n: scored answers.")
    print(f"trained {args.steps} steps in {trained - start:.1f} s, evaluated in {done - trained:.1f} s")
    print(f"wrote {run_dir}/: checkpoint.pt, metrics.json, config.json")
    return 0


# --- eval -------------------------------------------------------------------------------------


def _eval_arguments(p) -> None:
    _add_model_source(p)
    _add_task_args(p, all_tasks=True)
    p.add_argument("--num-examples", type=_int_at_least(1), metavar="N",
                   help="held-out sequences per task (default: the checkpoint's --eval-examples, else 512)")
    p.add_argument("--seed", type=_int_at_least(0), metavar="N",
                   help="evaluation data seed, and the initialisation seed of a fresh --model "
                        "(default: the checkpoint's seed, else 0)")
    p.add_argument("--out", metavar="FILE.json", help="also write the results as JSON")
    p.add_argument("--force", action="store_true", help="overwrite --out even if it is not an eval result")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _eval(args, argv: list) -> int:
    if args.out:
        check_output(args.out, EVAL_FORMAT, args.force, inputs=[args.checkpoint])
    model, info = _model_from_args(args)
    ckpt = info["ckpt"]
    seed = args.seed if args.seed is not None else (ckpt["seed"] if ckpt else 0)
    num_examples = args.num_examples or (ckpt or {}).get("train_config", {}).get("eval_examples", 512)
    targets = []
    for name, kwargs in _task_from_args(args, ckpt, allow_all=True):
        task = _build("task", name, kwargs)
        _check_vocab(model, task, info["model"], name)
        targets += _eval_targets(name, task)
    results = _evaluate_all(model, targets, num_examples, seed, progress=not args.no_progress)
    print(_describe(info, seed))
    print(results_table(results))
    print(f"\n{num_examples} held-out sequences per task (seed {seed}); n: scored answers; "
          "95% CI: bootstrap over sequences.")
    if args.out:
        out = Path(args.out)
        record = {"format": EVAL_FORMAT, "format_version": 1, "model": info["model"],
                  "model_kwargs": info["model_kwargs"], "checkpoint": info["checkpoint"], "seed": seed,
                  "num_examples": num_examples, "results": results, "command": ["memorylib", *argv],
                  "versions": _versions()}
        try:
            _write_json(out, record)
        except OSError as err:
            raise CLIError(f"cannot write {str(out)!r}: {err.strerror or err}") from None
        print(f"wrote {out}")
    return 0


# --- plot -------------------------------------------------------------------------------------


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_result(r) -> bool:
    """An evaluation result: numbers for accuracy and chance, an interval of two numbers."""
    return (isinstance(r, dict) and _is_number(r.get("accuracy")) and _is_number(r.get("chance"))
            and isinstance(r.get("ci"), list) and len(r["ci"]) == 2 and all(map(_is_number, r["ci"])))


def _figure_from_json(path: str):
    from .figures import eval_figure, run_figure

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"{path!r} does not exist" if not p.exists() else f"{path!r} is not a file")
    try:
        data = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CLIError(f"{path!r} is not JSON ({_one_line(err, 120)})") from None
    if isinstance(data, dict):
        history, evals = data.get("history"), data.get("eval")
        if (isinstance(history, dict) and all(k in history for k in ("step", "loss", "accuracy"))
                and isinstance(evals, dict) and evals and all(_is_result(r) for r in evals.values())):
            return run_figure(data)
        results = data.get("results")
        if isinstance(results, dict) and results and all(_is_result(r) for r in results.values()):
            source = data.get("checkpoint") or "freshly initialised"
            return eval_figure(results, title=f"{data.get('model', 'model')} ({source})")
    json_type = {"list": "list", "str": "string", "int": "number", "float": "number", "bool": "boolean"}
    found = (f"its keys: {', '.join(map(str, list(data)[:8])) or 'none'}" if isinstance(data, dict)
             else f"it holds a JSON {json_type.get(type(data).__name__, 'null')}")
    raise CLIError(f"{path!r} is neither a run's metrics.json (with history and eval) nor an eval JSON "
                   f"from 'memorylib eval --out' (with results); {found}")


def _plot_arguments(p) -> None:
    p.add_argument("file", metavar="FILE.json", help="a run's metrics.json or the JSON of eval --out")
    p.add_argument("--out", metavar="FILE.html|FILE.png",
                   help="where to write (default: FILE.html beside the input); .png needs kaleido")
    p.add_argument("--force", action="store_true", help="overwrite --out even if plot did not write it")


def _write_png(fig, out: Path) -> None:
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise CLIError("PNG export needs plotly's image exporter kaleido, which is not installed: "
                       "pip install 'kaleido>=1' (it also needs Chrome: plotly_get_chrome), "
                       "or write HTML with --out FILE.html") from None
    from .files import atomic_write

    try:
        image = fig.to_image(format="png", width=1200, height=fig.layout.height)
        atomic_write(out, lambda f: f.write(image))
    except (RuntimeError, ValueError, OSError) as err:
        raise CLIError(f"PNG export failed: {_one_line(err, 300)}") from None


def _plot(args, argv: list) -> int:
    out = Path(args.out) if args.out else Path(args.file).with_suffix(".html")
    if out.suffix.lower() not in (".html", ".htm", ".png"):
        raise CLIError(f"--out must end in .html or .png, got {str(out)!r}")
    check_output(out, PLOT_MARK, args.force, inputs=[args.file])
    fig = _figure_from_json(args.file)
    fig.update_layout(meta=PLOT_MARK)
    if out.suffix.lower() == ".png":
        _write_png(fig, out)
    else:
        from .files import atomic_write_text

        try:
            atomic_write_text(out, fig.to_html(include_plotlyjs="cdn"))   # small; plotly.js comes from its CDN
        except OSError as err:
            raise CLIError(f"cannot write {str(out)!r}: {err.strerror or err}") from None
    print(f"wrote {out}")
    return 0


# --- demo -------------------------------------------------------------------------------------


def per_token_signals(trace, batch_size: int, seq_len: int) -> tuple[dict, list[str]]:
    """The per-token numbers in a model's trace, whatever its keys.

    ``trace``: the dict from ``model(tokens, return_trace=True)``. A tensor of shape
    ``(batch, seq_len)`` is one number per token; ``(batch, heads, seq_len)`` is averaged over
    heads; ``(batch, seq_len, slots)`` is shown as the slot with the largest value and that value.
    Returns ``({key: (values, slots, note)}, skipped)`` with ``values`` (batch, seq_len) float,
    ``slots`` (batch, seq_len) int64 or None, ``note`` a short description or None; ``skipped``
    lists the keys that are not per-token (other shapes, None, non-tensors). When a 3-d shape
    fits both readings (heads == seq_len or slots == seq_len), heads win.
    """
    import torch

    signals, skipped = {}, []
    for key, value in (trace.items() if isinstance(trace, dict) else []):
        if not isinstance(value, torch.Tensor) or value.is_complex() or value.shape[:1] != (batch_size,):
            skipped.append(str(key))
            continue
        v = value.detach().float().cpu()
        if v.shape == (batch_size, seq_len):
            signals[str(key)] = (v, None, None)
        elif v.dim() == 3 and v.shape[2] == seq_len:
            note = f"mean over {v.shape[1]} heads" if v.shape[1] > 1 else None
            signals[str(key)] = (v.mean(dim=1), None, note)
        elif v.dim() == 3 and v.shape[1] == seq_len and v.shape[2] > 0:
            top = v.max(dim=2)
            signals[str(key)] = (top.values, top.indices, f"the largest of {v.shape[2]} slots, as slot:value")
        else:
            skipped.append(str(key))
    return signals, skipped


def _num(x: float) -> str:
    return f"{x:.3g}"


def _needed_positions(tokens: list[int], targets: list[int], distance: list[int], layout) -> set[int]:
    """Positions worth printing in a long sequence: every scored query cell, the cell of its
    evidence, and the latest statement of each fact its answer follows (``SET k v``, and for
    multi-hop ``SET v w`` after it)."""
    from .tasks import CELL

    def cell(pos: int) -> range:
        start = pos - pos % CELL
        return range(start, min(start + CELL, len(tokens)))

    keep = set()
    for t, target in enumerate(targets):
        if target < 0:
            continue
        keep.update(cell(t))
        if distance[t] >= 0:
            keep.update(cell(t - distance[t]))
        node, seen = tokens[t], set()
        while node not in seen and len(seen) < 4:
            seen.add(node)
            latest = None
            for c in range(0, t - t % CELL, CELL):
                if c + 2 < len(tokens) and tokens[c] == layout.SET and tokens[c + 1] == node:
                    latest = c
            if latest is None:
                break
            keep.update(cell(latest))
            node = tokens[latest + 2]
    return keep


def _marks() -> tuple[str, str]:
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "✓✗".encode(encoding)
        return "✓", "✗"
    except (UnicodeEncodeError, LookupError):
        return "ok", "X"


def _demo_arguments(p) -> None:
    _add_model_source(p)
    _add_task_args(p, all_tasks=False)
    p.add_argument("--seed", type=_int_at_least(0), metavar="N",
                   help="evaluation data seed, and the initialisation seed of a fresh --model "
                        "(default: the checkpoint's seed, else 0)")
    p.add_argument("--index", type=_int_in(0, MAX_DEMO_INDEX), default=0, metavar="I",
                   help="which held-out sequence (default 0); with the same seed, the sequence eval scores as number I "
                        "among its default 512")
    p.add_argument("--full", action="store_true",
                   help=f"print every token (default: sequences longer than {SHORT_SEQUENCE} tokens show "
                        "only the answers and the facts they need)")


def _demo(args, argv: list) -> int:
    import inspect

    import torch

    from .tasks import derive_seed, make_generator

    model, info = _model_from_args(args)
    ckpt = info["ckpt"]
    seed = args.seed if args.seed is not None else (ckpt["seed"] if ckpt else 0)
    [(task_name, task_kwargs)] = _task_from_args(args, ckpt, allow_all=False)
    if task_name == "all":
        raise CLIError("demo shows one task, not 'all'; name it with --task")
    task = _build("task", task_name, task_kwargs)
    _check_vocab(model, task, info["model"], task_name)
    # the held-out stream evaluate() reads with this seed, in its batches of 32
    gen = make_generator(derive_seed(seed, "eval"))
    for _ in range(args.index // EVAL_BATCH + 1):
        batch = task.sample(EVAL_BATCH, gen)
    row = args.index % EVAL_BATCH
    tokens = batch.tokens[row:row + 1]
    T = tokens.shape[1]
    traced = "return_trace" in inspect.signature(model.forward).parameters
    trace = None
    with torch.no_grad():
        out = model(tokens, return_trace=True) if traced else model(tokens)
    if isinstance(out, tuple):
        out, trace = out[0], (out[1] if len(out) > 1 else None)
    pred = out.argmax(-1)[0].tolist()
    signals, skipped = per_token_signals(trace, 1, T)

    layout = task.layout
    toks, targets = tokens[0].tolist(), batch.targets[row].tolist()
    distance, stale = batch.distance[row].tolist(), batch.stale[row].tolist()
    right, wrong = _marks()
    header = ["pos", "token", *signals, "predicted", "target", "", "evidence"]
    rows, correct, answers, stale_hits = {}, 0, 0, 0
    for t in range(T):
        cells = [str(t), layout.label(toks[t])]
        for values, slots, _ in signals.values():
            v = float(values[0, t])
            cells.append(_num(v) if slots is None else f"{int(slots[0, t])}:{_num(v)}")
        if targets[t] >= 0:
            ok = pred[t] == targets[t]
            correct, answers = correct + ok, answers + 1
            mark = right if ok else wrong
            if not ok and stale[t] >= 0 and pred[t] == stale[t]:
                mark, stale_hits = f"{wrong} stale", stale_hits + 1
            cells += [layout.label(pred[t]) if 0 <= pred[t] < layout.vocab_size else f"id{pred[t]}",
                      layout.label(targets[t]), mark, f"{distance[t]} back"]
        else:
            cells += ["", "", "", ""]
        rows[t] = cells
    shown = range(T) if args.full or T <= SHORT_SEQUENCE else sorted(_needed_positions(toks, targets, distance, layout))
    widths = [len(h) for h in header]
    for t in shown:
        widths = [max(w, len(c)) for w, c in zip(widths, rows[t])]

    def line(cells):
        return "  ".join(c.ljust(w) if i in (1, len(cells) - 2) else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    print(f"{_describe(info, seed)} on {task_name}: held-out sequence {args.index} of seed {seed}, {T} tokens")
    print(line(header))
    print("  ".join("-" * w for w in widths))
    previous = -1
    for t in shown:
        if t != previous + 1:
            print(f"{'...':>{widths[0]}}  ({t - previous - 1} tokens)")
        print(line(rows[t]))
        previous = t
    if previous != T - 1:
        print(f"{'...':>{widths[0]}}  ({T - 1 - previous} tokens)")
    print()
    summary = (f"{correct}/{answers} answers correct on this sequence ({correct / answers:.2f}); "
               f"chance {task.chance:.3f}")
    if stale_hits:
        summary += f"; {stale_hits} predicted the overwritten (stale) value"
    print(summary)
    notes = {}
    for key, (_, _, note) in signals.items():
        if note:
            notes.setdefault(note, []).append(key)
    for note, keys in notes.items():
        print(f"{', '.join(keys)}: {note}")
    if not traced:
        print(f"{info['model']} has no trace (return_trace): tokens and predictions only")
    elif skipped:
        print("trace entries not shown (None, or not one number per token): " + ", ".join(skipped))
    return 0


# --- stream -----------------------------------------------------------------------------------

STREAM_WIDTH = 88       # stream prints no line longer than this (a path given on the command line aside)
# what each variant of the needle family runs with when --needles, --queries, --distractors are not
# given: chapter 7's cells (experiments/needle_family.py); multi_query asks every needle
FAMILY_DEFAULTS = {"single": {"num_needles": 1}, "multi_key": {"num_needles": 8},
                   "multi_query": {"num_needles": 8}, "multi_value": {"num_needles": 4, "num_distractors": 3},
                   "update": {"num_needles": 4}}
# stream_family's argument names as the options that set them, for its error messages
FAMILY_FLAGS = {"num_needles": "--needles", "num_queries": "--queries", "num_distractors": "--distractors",
                "seq_len": "--length", "variant": "--variant", "haystack": "--haystack", "control": "--control",
                "num_depths": "--depths", "piece": "--piece", "batch_size": "--batch-size", "trials": "--trials"}


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int, got {text!r}") from None


def _stream_arguments(p) -> None:
    _add_model_source(p)
    p.add_argument("--variant", default="single", metavar="NAME",
                   help="single (default), multi_key, multi_query, multi_value or update")
    p.add_argument("--needles", type=_int, metavar="N",
                   help="needles (multi_value: values per key; default 8 for multi_key and multi_query, "
                        "4 for multi_value and update, 1 for single)")
    p.add_argument("--queries", type=_int, metavar="N",
                   help="multi_query: needles asked in turn (default: every one)")
    p.add_argument("--distractors", type=_int, metavar="N",
                   help="multi_value: keys besides the asked one, each with as many values (default 3)")
    p.add_argument("--haystack", default="random", metavar="KIND",
                   help="random (default: uniform filler tokens) or markov (each token one of two successors)")
    p.add_argument("--control", metavar="KIND",
                   help="a leakage control: removed (the first asked needle gone) or shuffled (it carries "
                        "a value no needle has)")
    p.add_argument("--length", type=_int, required=True, metavar="TOKENS", help="tokens per stream, e.g. 262144")
    p.add_argument("--trials", type=_int_at_least(1), default=200, metavar="N", help="streams (default 200)")
    p.add_argument("--depths", type=_int_at_least(2), default=10, metavar="N",
                   help="equal bins of the asked needle's depth in the by-depth accuracy (default 10)")
    p.add_argument("--piece", type=_int_at_least(1), default=256, metavar="TOKENS",
                   help="tokens fed per call (default 256)")
    p.add_argument("--batch-size", type=_int_in(1, MAX_BATCH), default=50, metavar="N",
                   help="streams run side by side (default 50)")
    p.add_argument("--seed", type=_int_at_least(0), metavar="N", help="stream seed (default 0)")
    p.add_argument("--out", metavar="FILE.json", help="also write the result as JSON")
    p.add_argument("--force", action="store_true", help="overwrite --out even if it is not a stream result")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _family_error(err: ValueError) -> CLIError:
    """The needle family's ValueError with its argument names as the options that set them."""
    text = re.sub(r"\b(" + "|".join(k for k in FAMILY_FLAGS if "_" in k) + r")\b",
                  lambda m: FAMILY_FLAGS[m.group(1)], str(err))
    text = re.sub(r"\A(" + "|".join(k for k in FAMILY_FLAGS if "_" not in k) + r") must\b",
                  lambda m: FAMILY_FLAGS[m.group(1)] + " must", text)
    return CLIError(text)


def _check_family(args, kwargs: dict) -> None:
    """Every option of the stream checked on one short stream before any work; a stream too short
    for its needles is told the shortest length that holds them."""
    from .needles import NeedleFamilyStream
    from .tasks import MAX_STREAM_LEN

    def fits(length: int) -> bool:
        try:
            NeedleFamilyStream(args.variant, length, 1, haystack=args.haystack, control=args.control, **kwargs)
        except ValueError as err:
            if "too short" in str(err):
                return False
            raise _family_error(err) from None
        return True

    if fits(args.length):
        return
    lo, hi = args.length, min(MAX_STREAM_LEN, 2 * args.length)
    while not fits(hi):
        if hi == MAX_STREAM_LEN:
            raise CLIError(f"no --length up to {MAX_STREAM_LEN} holds {args.variant} ({_what(args, kwargs)})")
        lo, hi = hi, min(MAX_STREAM_LEN, 2 * hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    raise CLIError(f"--length {args.length} is too short for {args.variant} ({_what(args, kwargs)}); the "
                   f"shortest --length for these options is {hi}")


def _family_kwargs(args) -> dict:
    """stream_family's needles, queries and distractors: the options given, else the variant's defaults."""
    if args.queries is not None and args.variant != "multi_query":
        raise CLIError(f"--queries applies to multi_query only (the other variants ask a fixed number of "
                       f"questions), got --queries {args.queries} with --variant {args.variant}")
    kwargs = dict(FAMILY_DEFAULTS.get(args.variant, {}))
    for key, given in (("num_needles", args.needles), ("num_distractors", args.distractors)):
        if given is not None:
            kwargs[key] = given
    if args.variant == "multi_query":
        kwargs["num_queries"] = args.queries if args.queries is not None else kwargs["num_needles"]
    return kwargs


def _streaming_models() -> list[str]:
    """The registered models that can stream (a ``stream`` method), each built with its defaults."""
    from . import registry

    names = []
    for name in registry.model_names():
        try:
            model = registry.build_model(name)
        except (TypeError, ValueError):
            continue
        if hasattr(model, "stream"):
            names.append(name)
    return names


def _what(args, kwargs: dict) -> str:
    n, d = kwargs.get("num_needles", 1), kwargs.get("num_distractors", 0)
    return {"single": "one needle, asked once", "multi_key": f"{n} needles, one asked",
            "multi_query": f"{n} needles, {kwargs.get('num_queries')} of them asked in turn",
            "multi_value": f"{1 + d} keys with {n} values each, one key asked ({d} distractors)",
            "update": f"{n} keys, each stated and then updated, one asked"}[args.variant]


def _setup(args, kwargs: dict) -> list[str]:
    lines = [f"{args.variant}: {_what(args, kwargs)}",
             f"{args.length:,} tokens a stream, {args.haystack} haystack, {args.trials} streams"]
    if args.control:
        lines.append(f"leakage control: {args.control} (the first asked needle " + (
            "is not in the stream)" if args.control == "removed" else "carries a value no needle has)"))
    return lines


def _depth_rows(by_depth: dict) -> list[str]:
    """The by-depth accuracy as rows of bins (centre, streams, accuracy), as many bins a row as fit."""
    cells = [(f"{d:.2f}", str(n), f"{a:.2f}")
             for d, n, a in zip(by_depth["depth"], by_depth["n"], by_depth["accuracy"])]
    width = max([5, *(len(c) for cell in cells for c in cell)])
    per_row = max(1, (STREAM_WIDTH - 10) // (width + 1))
    rows = []
    for i in range(0, len(cells), per_row):
        chunk = cells[i:i + per_row]
        for j, label in enumerate(("depth", "streams", "accuracy")):
            rows.append(f"{label:<9}" + "".join(f" {cell[j]:>{width}}" for cell in chunk))
    return rows


def _stream_report(r: dict, args, kwargs: dict) -> list[str]:
    def rate(value, ci):
        return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"

    floor = r["floor"]
    lines = [*_setup(args, kwargs),
             f"accuracy        {rate(r['accuracy'], r['ci'])} over {r['trials'] * r['num_queries']} questions",
             f"first question  {rate(r['first_accuracy'], r['first_ci'])} over {r['trials']} streams",
             f"keyless floor   {rate(floor['accuracy'], floor['ci'])}  the line to beat; chance {r['chance']:.3f}",
             "    (the keyless floor: the best answers that ignore the asked key)",
             f"another needle  {r['other_needle_rate']:.3f} of answers: the value of a needle not asked"]
    if r["stale_rate"] is not None:
        lines.append(f"stale value     {r['stale_rate']:.3f} of answers: the overwritten value")
    if r["value_cached"] is not None:
        lines.append(f"value cached    {r['value_cached']:.3f} of streams: the asked value in the sidecar "
                     "at the question")
    if r["stored_value_rate"] is not None:
        lines.append(f"stored value    {r['stored_value_rate']:.3f} of first answers: the value the "
                     "shuffled needle carried")
    lines.append("by depth of the first asked needle (0: the first cell), first-question accuracy:")
    lines += _depth_rows(r["by_depth"])
    lines.append(f"state carried per stream: {r['state_bytes']:,} bytes at any length; {r['seconds']} s")
    return lines


def _stream(args, argv: list) -> int:
    """A variant of chapter 7's needle family (:func:`memorylib.needles.stream_family`) on long
    streams fed piece by piece with a carried state of constant size."""
    import textwrap

    from .needles import stream_family
    from .tasks import TokenLayout

    kwargs = _family_kwargs(args)
    _check_family(args, kwargs)
    if args.out:
        check_output(args.out, STREAM_FORMAT, args.force, inputs=[args.checkpoint])
    model, info = _model_from_args(args)
    if not hasattr(model, "stream"):
        raise CLIError(f"model {info['model']!r} cannot stream (its state grows with the sequence); streaming "
                       f"models: {', '.join(_streaming_models())}")
    if getattr(model, "vocab_size", 0) < TokenLayout().vocab_size:
        raise CLIError(f"model {info['model']!r} has vocab_size={model.vocab_size}, but the needle streams use "
                       f"{TokenLayout().vocab_size} token ids")
    seed = args.seed or 0
    try:
        r = stream_family(model, args.variant, args.length, args.trials, haystack=args.haystack,
                          num_depths=args.depths, piece=args.piece, batch_size=args.batch_size, seed=seed,
                          control=args.control, progress=not args.no_progress, **kwargs)
    except ValueError as err:
        raise _family_error(err) from None
    print(_describe(info, seed))
    for line in _stream_report(r, args, kwargs):
        print("\n".join(textwrap.wrap(line, STREAM_WIDTH, subsequent_indent="    ", break_long_words=False,
                                      drop_whitespace=True)) if len(line) > STREAM_WIDTH else line)
    if args.out:
        out = Path(args.out)
        try:
            _write_json(out, {"format": STREAM_FORMAT, "format_version": 2, "model": info["model"],
                              "model_kwargs": info["model_kwargs"], "checkpoint": info["checkpoint"],
                              "variant": args.variant, "haystack": args.haystack, "control": args.control,
                              "result": r, "command": ["memorylib", *argv], "versions": _versions()})
        except OSError as err:
            raise CLIError(f"cannot write {str(out)!r}: {err.strerror or err}") from None
        print(f"wrote {out}")
    return 0


# --- sweep ------------------------------------------------------------------------------------


def _sweep_arguments(p) -> None:
    p.add_argument("--preset", default="capstone", metavar="NAME",
                   help="capstone (the book's table; hours on 2 cores), matched (the capstone at matched budgets, "
                        "learning rates tuned on a validation stream; many hours), frontier-lookup (chapter 7's "
                        "lookup frontier: the matched sweep's lookup at other memory sizes; hours), reduced or "
                        "reduced-matched (seconds; what the tests run)")
    p.add_argument("--models", metavar="A,B", help="only these models (comma-separated labels of the sweep)")
    p.add_argument("--tasks", metavar="X,Y", help="only these tasks")
    p.add_argument("--seeds", type=_int_at_least(0), nargs="+", metavar="N", help="only these seeds")
    p.add_argument("--out", metavar="FILE.json", help="results file (default: the preset's)")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming the rows already in --out")
    p.add_argument("--progress", action="store_true", help="a progress bar per training run")


def _sweep(args, argv: list) -> int:
    """Run a sweep preset (optionally restricted), resuming a stopped one, and print its table."""
    from .capstone import PRESETS, models_of, run_sweep
    from .registry import task_names

    if args.preset not in PRESETS:
        raise CLIError(f"--preset must be one of {', '.join(PRESETS)}, got {args.preset!r}")
    spec = PRESETS[args.preset]
    labels = list(models_of(spec))
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models is not None else None
    if models == []:
        raise CLIError(f"--models {args.models!r} names no model; its models: {', '.join(labels)}")
    for m in models or []:
        if m not in labels:
            close = difflib.get_close_matches(m, labels, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise CLIError(f"--models: {m!r} is not a model of the {spec['name']} sweep{hint}; "
                           f"its models: {', '.join(labels)}")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks is not None else None
    if tasks == []:
        raise CLIError(f"--tasks {args.tasks!r} names no task; its tasks: {', '.join(spec['tasks'])}")
    for t in tasks or []:
        if t == "length_extrapolation":
            raise CLIError("--tasks: length_extrapolation is not trained on its own; it evaluates the "
                           "associative_lookup models at longer lengths")
        if t not in spec["tasks"] and t not in task_names():
            _build("task", t, {})
    out = Path(args.out or spec["out"])
    try:
        record = run_sweep(spec, out, resume=not args.fresh, progress=args.progress,
                           command=" ".join(["memorylib", *argv]), models=models, tasks=tasks,
                           seeds=sorted(set(args.seeds)) if args.seeds else None)
    except ValueError as err:
        raise CLIError(str(err)) from None
    except OSError as err:
        raise CLIError(f"cannot write the sweep's results {str(out)!r}: {err.strerror or err}") from None
    table = record.get("table", {})
    extra = spec.get("length_extrapolation") or {}
    columns = list(spec["tasks"]) + [f"length_extrapolation x{f}" for f in extra.get("factors", [])
                                     if extra.get("from") in spec["tasks"]]
    short = {c: c.replace("length_extrapolation ", "len ").replace("associative_lookup", "lookup")
             .replace("changing_facts", "changing").replace("needle_recall", "needle") for c in columns}
    width = max(18, *(len(label) + 2 for label in labels))
    print(f"{'model':{width}s}" + "".join(f"{short[c][:15]:>16s}" for c in columns))
    for model in labels:
        cells = []
        for c in columns:
            t = table.get(model, {}).get(c)
            cells.append(f"{t['mean']:.3f} ± {t['std']:.3f}".rjust(16) if t else "—".rjust(16))
        print(f"{model:{width}s}" + "".join(cells))
    if record.get("floors"):
        cells = []
        for c in columns:
            if c.startswith("length_extrapolation x"):
                floor = record["floors"].get(extra["from"], {}).get("x" + c.rsplit("x", 1)[1])
            else:
                floor = record["floors"].get(c, {}).get("default")
            cells.append(f"{floor['accuracy']:.3f}".rjust(16) if floor else "—".rjust(16))
        print(f"{'keyless floor':{width}s}" + "".join(cells))
    print(f"\nheld-out accuracy, mean ± standard deviation over the seeds run so far (sweep: {spec['seeds']}); "
          f"{len(record['rows'])} rows in {out} ({record['seconds'] / 60:.1f} min of training and evaluation)")
    return 0


# --- the verbs ----------------------------------------------------------------------------------

VERBS = {
    "train": ("train a model on a task, evaluate it on held-out data, save the run",
              _train_arguments, _train),
    "eval": ("held-out accuracy of a checkpoint or a fresh model on one task or all",
             _eval_arguments, _eval),
    "plot": ("draw a run's metrics.json or an eval JSON to HTML or PNG", _plot_arguments, _plot),
    "demo": ("one held-out sequence token by token: the model's trace and its answers",
             _demo_arguments, _demo),
    "stream": ("chapter 7's needle family on long streams fed piece by piece with a state of constant size",
               _stream_arguments, _stream),
    "sweep": ("every model on every task over several seeds into one results file (resumable)",
              _sweep_arguments, _sweep),
}
"""verb -> (one-line help, add_arguments(parser), handler(args, argv) -> exit code)."""


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="memorylib", description="Train, evaluate, plot and inspect memorylib models "
                     "(models and tasks by their registry names).")
    parser.add_argument("--version", action="version", version=f"memorylib {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, (help_text, add_arguments, handler) in VERBS.items():
        p = sub.add_parser(verb, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        add_arguments(p)
        p.set_defaults(handler=handler)
    return parser


def _out_of_memory(err: BaseException) -> bool:
    text = str(err).lower()
    return any(w in text for w in ("can't allocate", "cannot allocate", "out of memory", "not enough memory"))


def main(argv: list[str] | None = None) -> int:
    """Run one verb; returns the exit code (0 on success, 2 on bad input)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except CLIError as err:
        print(f"{err.prog or 'memorylib'}: error: {_one_line(err, 1000)}", file=sys.stderr)
        return 2
    except SystemExit as stop:          # --help and --version
        return stop.code if isinstance(stop.code, int) else 0
    try:
        return args.handler(args, argv)
    except (CLIError, ValueError, OverflowError) as err:
        # the library's ValueErrors name the bad value and the allowed range: bad input, not a bug
        print(f"memorylib {args.verb}: error: {_one_line(err, 1000)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and not _out_of_memory(err):
            raise
        print(f"memorylib {args.verb}: error: not enough memory for what was asked "
              f"({_one_line(err, 300) or type(err).__name__}); ask for smaller sizes", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"memorylib {args.verb}: interrupted", file=sys.stderr)
        return 130
