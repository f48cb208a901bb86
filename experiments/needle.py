"""Chapter 7's long needle: train the full model and two ablations on sequences of 512 tokens, then
stream needles hidden in predictable haystacks of 16K, 64K and 256K tokens through them with a
carried state of constant size, with leakage controls.

    python experiments/needle.py                 # ~40 min on 2 cores; writes book/results/ch07_needle.json
    python experiments/needle.py --eval-only     # reuse the checkpoints in book/results/ch07_needle/
    python experiments/needle.py --quick         # 16K only, 20 trials (a smoke run; not committed)

Training (every model, seed 0): a 50/50 mixture (one task per batch) of chapter 1's needle task
and associative lookup with 8 facts, both 512 tokens with a predictable haystack, 300 steps of
batch 32 at learning rate 3e-3. The lookup half makes the model match keys: trained on needles
alone, a model can answer "the most surprising value" without reading the key.

Evaluation (:func:`memorylib.streaming.stream_needle`): 200 streams per length, needle depths spread
evenly over the whole stream (10 depths x 20 streams), fed in pieces of 64 tokens; the answer is
scored at ``ASK k``, the model never sees the answer token. Leakage controls on the full model:
the needle removed and the needle's value shuffled across streams (256K; chance is 1/64), and the
value filed under another key (16K). Checkpoints are written in the format of ``memorylib train``
(``memorylib eval --checkpoint ...`` and ``memorylib stream --checkpoint ...`` read them with
``torch.load(..., weights_only=True)``).

Unlike the sweeps, this script runs with 2 threads, not the book's one (:mod:`memorylib.reproducible`):
its models are larger and its streams long, and it was run when the book's environment still pinned
slow code paths. Nothing here is compared bit for bit: chapter 7 re-runs the first 100 streams at 16K
and compares their outcomes.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from memorylib import checkpoint, reproducible  # noqa: E402
from memorylib.checkpoint import save_checkpoint  # noqa: E402
from memorylib.registry import build_model, build_task  # noqa: E402
from memorylib.streaming import stream_needle  # noqa: E402
from memorylib.tasks import TaskMixture  # noqa: E402
from memorylib.training import evaluate, train  # noqa: E402

OUT = ROOT / "book/results/ch07_needle.json"
CKPT = ROOT / "book/results/ch07_needle"
TRAIN_LEN = 512
NEEDLE = ("needle_recall", dict(seq_len=TRAIN_LEN, filler="predictable"))
LOOKUP = ("associative_lookup", dict(seq_len=TRAIN_LEN, num_pairs=8, num_queries=8, filler="predictable"))
RECIPE = dict(steps=300, batch_size=32, lr=3e-3, warmup=20, seed=0)
MODELS = ["full_memory", "no_sidecar", "full_no_surprise"]
LENGTHS = [16384, 65536, 262144]
TRIALS, PIECE, BATCH = 200, 64, 100
CONTROLS = [("removed", 262144), ("shuffled", 262144), ("other_key", 16384)]


def training_task():
    return TaskMixture([build_task(NEEDLE[0], **NEEDLE[1]), build_task(LOOKUP[0], **LOOKUP[1])])


def train_model(name: str) -> tuple:
    torch.manual_seed(RECIPE["seed"])
    model = build_model(name)
    start = time.perf_counter()
    fit = train(model, training_task(), steps=RECIPE["steps"], batch_size=RECIPE["batch_size"], lr=RECIPE["lr"],
                warmup=RECIPE["warmup"], seed=RECIPE["seed"], log_every=25, desc=name)
    seconds = time.perf_counter() - start
    save_checkpoint(CKPT / f"{name}.pt", model=name, model_kwargs={}, task=NEEDLE[0], task_kwargs=NEEDLE[1],
                    seed=RECIPE["seed"], net=model,
                    train_config={**RECIPE, "task": "mixture", "tasks": [list(NEEDLE), list(LOOKUP)]})
    return model, fit["history"], round(seconds, 1)


def load_model(name: str):
    return checkpoint.load_model(CKPT / f"{name}.pt")[0]


def main(argv: list[str]) -> int:
    torch.set_num_threads(2)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--eval-only", action="store_true", help="reuse the saved checkpoints")
    p.add_argument("--quick", action="store_true", help="16K tokens, 20 trials; writes nothing")
    args = p.parse_args(argv)
    lengths, trials = ([16384], 20) if args.quick else (LENGTHS, TRIALS)
    CKPT.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = {}
    for name in MODELS:
        if args.eval_only:
            model, history, train_s = load_model(name), None, None
        else:
            model, history, train_s = train_model(name)
        held_out = {label: evaluate(model, build_task(t, **kw), num_examples=256, seed=0)["accuracy"]
                    for label, (t, kw) in (("needle 512", NEEDLE), ("lookup 512", LOOKUP))}
        row = {"train_seconds": train_s, "history": history, "held_out": held_out, "streams": {}}
        for length in lengths:
            r = stream_needle(model, length, trials, piece=PIECE, batch_size=BATCH, seed=0)
            row["streams"][f"needle {length}"] = r
            print(f"{name} needle {length}: {r['accuracy']} {r['ci']} ({r['seconds']} s)", flush=True)
        if name == "full_memory":
            for mode, length in CONTROLS:
                if length in lengths:
                    r = stream_needle(model, length, trials, piece=PIECE, batch_size=BATCH, seed=0, mode=mode)
                    row["streams"][f"{mode} {length}"] = r
                    print(f"{name} {mode} {length}: {r['accuracy']} {r['ci']} ({r['seconds']} s)", flush=True)
        rows[name] = row
    if args.quick:
        return 0
    d, layers = 64, 2          # a full-attention transformer of the book's width (tiny_transformer)
    record = {
        **reproducible.provenance("python experiments/needle.py" + (" --eval-only" if args.eval_only else "")),
        "train_length": TRAIN_LEN,
        "training": {"tasks": [list(NEEDLE), list(LOOKUP)], **RECIPE},
        "trials": trials, "piece": PIECE, "batch": BATCH, "lengths": lengths,
        "kv_cache_bytes_per_token": 2 * layers * d * 4,
        "models": rows, "seconds": round(time.perf_counter() - started, 1),
    }
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {OUT} in {record['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
