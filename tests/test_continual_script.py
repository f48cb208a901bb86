"""experiments/continual.py resumes: every (model, seed) is written as soon as it exists, a run
already in the record is not done again, and a record of another protocol is refused."""

import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def script(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("continual_script", ROOT / "experiments" / "continual.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"rows": []}))
    monkeypatch.setattr(mod, "SWEEP", sweep)
    monkeypatch.setattr(mod, "MODELS", ["local_transformer"])
    monkeypatch.setattr(mod, "SEEDS", [0, 1])
    monkeypatch.setattr(mod, "STEPS", 2)
    monkeypatch.setattr(mod, "EVAL_EVERY", 1)
    monkeypatch.setattr(mod, "BATCH", 4)
    monkeypatch.setattr(mod, "EXAMPLES", 4)
    monkeypatch.setattr(mod, "phase_rates", lambda record, model, fallback=None: {t: 3e-3 for t in mod.ORDER})
    tuned = []
    monkeypatch.setattr(mod, "joint_rate", lambda *a: tuned.append(a[0]) or (3e-3, {3e-3: 0.5}))
    mod.tuned = tuned
    return mod


def test_each_run_is_kept_and_not_done_again(script, tmp_path, monkeypatch):
    out = tmp_path / "continual.json"
    real = script.forgetting_curves
    calls = []
    monkeypatch.setattr(script, "forgetting_curves", lambda *a, **k: calls.append(k["seed"]) or real(*a, **k))
    # a run stopped during its second seed: the record holds the first
    real_joint, joint_calls = script.joint_training, []

    def stopping_joint(*a, **k):
        joint_calls.append(k["seed"])
        if len(joint_calls) == 2:
            raise KeyboardInterrupt
        return real_joint(*a, **k)

    monkeypatch.setattr(script, "joint_training", stopping_joint)
    with pytest.raises(KeyboardInterrupt):
        script.main(["--out", str(out)])
    record = json.loads(out.read_text())
    assert [(r["model"], r["seed"]) for r in record["runs"]] == [("local_transformer", 0)]
    assert record["rates"]["local_transformer"]["joint"] == 3e-3 and script.tuned == ["local_transformer"]
    # resumed: only seed 1 trains, and the joint rate is not tuned again
    monkeypatch.setattr(script, "joint_training", real_joint)
    calls.clear()
    assert script.main(["--out", str(out)]) == 0
    assert calls == [1] and script.tuned == ["local_transformer"]
    record = json.loads(out.read_text())
    assert sorted(r["seed"] for r in record["runs"]) == [0, 1] and record["steps_per_phase"] == 2
    calls.clear()
    assert script.main(["--out", str(out)]) == 0 and calls == []


def test_a_record_of_another_protocol_is_refused(script, tmp_path):
    out = tmp_path / "continual.json"
    out.write_text(json.dumps({"order": ["lookup"], "runs": []}))
    with pytest.raises(SystemExit, match="another protocol"):
        script.main(["--out", str(out)])
    out.write_text("{not json")
    with pytest.raises(SystemExit, match="not a readable JSON record"):
        script.main(["--out", str(out)])


def test_processes_given_different_models_share_one_record(script, tmp_path, monkeypatch):
    out = tmp_path / "continual.json"
    monkeypatch.setattr(script, "MODELS", ["local_transformer", "slot_memory"])
    monkeypatch.setattr(script, "SEEDS", [0])
    real = script.forgetting_curves
    protocol = {}

    def with_a_neighbour(model, *a, **k):
        # while this process trains the slot memory, another one adds its transformer run
        if model == "slot_memory":
            record = json.loads(out.read_text())
            protocol.update({key: record[key] for key in ("order", "tasks", "steps_per_phase", "eval_every",
                                                           "batch_size", "num_examples")})
            script.add_to_record(out, protocol, "local_transformer", {"joint": 3e-3},
                                 {"model": "local_transformer", "seed": 0, "from": "the other process"}, 1.0)
        return real(model, *a, **k)

    monkeypatch.setattr(script, "forgetting_curves", with_a_neighbour)
    assert script.main(["--out", str(out), "--models", "slot_memory"]) == 0
    record = json.loads(out.read_text())
    assert sorted((r["model"], r["seed"]) for r in record["runs"]) == [("local_transformer", 0), ("slot_memory", 0)]
    assert set(record["rates"]) == {"local_transformer", "slot_memory"}
    # the transformer's run is in the file, so a process given every model does not train it again
    calls = []
    monkeypatch.setattr(script, "forgetting_curves", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    assert script.main(["--out", str(out)]) == 0 and calls == []


def test_an_unknown_model_is_refused_by_name(script, capsys):
    with pytest.raises(SystemExit):
        script.main(["--models", "full_memory,no_such_model"])
    err = capsys.readouterr().err
    assert "no_such_model" in err and "local_transformer" in err
