"""Convert the chapter 2-5 sweeps' weights from bare ``state_dict`` files to memorylib checkpoints.

    python tools/convert_sweep_checkpoints.py            # converts what is not converted yet

Until memorylib 0.1.0's checkpoint module owned the format, ``experiments/slot_sweeps.py`` saved
each kept model as a bare ``state_dict``, which only a reader who knew the model's name and options
could load. This rewrites every such file under ``book/results/`` as a checkpoint
(:func:`memorylib.checkpoint.save_checkpoint`, through the sweep's own ``save_weights``), taking
the model, its options, the task and the seed from the sweep's JSON record and spec. The weights
are the same tensors, bit for bit (checked before a file is replaced); files that already are
checkpoints are left alone, so the script can be run again.
"""

from __future__ import annotations

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import slot_sweeps  # noqa: E402
import torch  # noqa: E402

from memorylib.checkpoint import CHECKPOINT_KEYS, load_model  # noqa: E402
from memorylib.registry import build_model  # noqa: E402


def bare(path: pathlib.Path):
    """The state dict in ``path`` if it is a bare one, else None (already a checkpoint)."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return None if all(k in obj for k in CHECKPOINT_KEYS) else obj


def convert(path: pathlib.Path, spec: dict, label: str, model: str, kwargs: dict, task_entry, seed: int,
            stage: int | None = None) -> bool:
    state = bare(path)
    if state is None:
        return False
    net = build_model(model, **kwargs)
    net.load_state_dict(state)
    slot_sweeps.save_weights(spec, label, model, kwargs, task_entry, seed, net, path, stage=stage)
    back = load_model(path)[0].state_dict()
    if list(back) != list(state) or not all(torch.equal(back[k], state[k]) for k in state):
        raise SystemExit(f"{path}: the converted weights differ from the original")
    print(f"converted {path.relative_to(ROOT)} ({model}, seed {seed})")
    return True


def main() -> int:
    done = 0
    for spec in slot_sweeps.SWEEPS.values():
        record_path = ROOT / spec["out"]
        if not record_path.exists():
            continue
        rows = {row[0]: row for row in spec["rows"]}
        for r in json.loads(record_path.read_text())["rows"]:
            if not r.get("checkpoint"):
                continue
            label, model, kwargs, *own = rows[r["label"]]
            done += convert(ROOT / r["checkpoint"], spec, label, model, kwargs,
                            own[0] if own else spec["train_task"], r["seed"])
    spec = slot_sweeps.CH03                               # chapter 3's first-stage weights
    label, model, kwargs = spec["rows"][0][:3]
    for path in sorted((ROOT / spec["out"].replace(".json", "")).glob("stage1_seed*.pt")):
        seed = int(path.stem.removeprefix("stage1_seed"))
        done += convert(path, spec, label, model, kwargs, spec["pretrain"]["task"], seed, stage=1)
    print(f"{done} files converted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
