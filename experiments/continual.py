"""Chapter 8's continual-learning curves: the four trained tasks of the capstone, one after another.

    python experiments/continual.py          # writes book/results/ch08_continual.json
    python experiments/continual.py --quick  # one model, one seed, a few steps; writes nothing

Each model (built with ``torch.manual_seed(seed)``) is trained on associative lookup, then changing
facts, then the needle, then multi-hop (the capstone's short training tasks, in that order), 150
steps of batch 64 each, with a fresh optimizer per phase, at its capstone learning rate
(:func:`memorylib.capstone.learning_rate`); every 30 steps it is evaluated on 512 held-out
sequences of every task (:func:`memorylib.continual.forgetting_curves`). The reference for each
(model, seed) is the same model trained on all four tasks at once for as many steps
(:func:`memorylib.continual.joint_training`). Runs in torch's default
arithmetic with 2 threads, like ``memorylib sweep``.
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

from memorylib import reproducible  # noqa: E402
from memorylib.capstone import CAPSTONE, learning_rate  # noqa: E402
from memorylib.continual import forgetting_curves, joint_training  # noqa: E402
from memorylib.registry import build_task  # noqa: E402

OUT = ROOT / "book/results/ch08_continual.json"
MODELS = ["local_transformer", "slot_memory", "delta_memory", "full_memory"]
ORDER = ["associative_lookup", "changing_facts", "needle_recall", "multi_hop"]
SEEDS = [0, 1, 2]
STEPS, EVAL_EVERY, BATCH, EXAMPLES = 150, 30, 64, 512


def main(argv: list[str]) -> int:
    torch.set_num_threads(2)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    models, seeds, steps = (MODELS[:1], [0], 4) if args.quick else (MODELS, SEEDS, STEPS)
    phases = [(name, build_task(*CAPSTONE["tasks"][name]["train"][:1], **CAPSTONE["tasks"][name]["train"][1]))
              for name in ORDER]
    started, runs = time.perf_counter(), []
    for model in models:
        for seed in seeds:
            r = forgetting_curves(model, phases, steps=steps, eval_every=EVAL_EVERY if not args.quick else 2,
                                  batch_size=BATCH, lr=learning_rate(CAPSTONE, model), seed=seed,
                                  num_examples=EXAMPLES if not args.quick else 8)
            r["seed"] = seed
            r["joint"] = joint_training(model, phases, steps=steps, batch_size=BATCH, lr=learning_rate(CAPSTONE, model),
                                        seed=seed, num_examples=EXAMPLES if not args.quick else 8)
            runs.append(r)
            print(f"{model:18s} seed {seed}: final {[r['accuracy'][t][-1] for t in ORDER]}, "
                  f"forgetting {r['forgetting']} ({r['seconds']} s)", flush=True)
    if args.quick:
        return 0
    record = {**reproducible.provenance("python experiments/continual.py"),
              "order": ORDER, "tasks": {n: CAPSTONE["tasks"][n]["train"] for n in ORDER}, "steps_per_phase": STEPS,
              "eval_every": EVAL_EVERY, "batch_size": BATCH, "num_examples": EXAMPLES,
              "runs": runs, "seconds": round(time.perf_counter() - started, 1)}
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {OUT} in {record['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
