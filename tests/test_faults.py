"""memorylib under faults and bad input: no lost run, no silent NaN, every bad input one line.

Each case is a cause found by trying the command line and the API with hostile input: a re-run
that fails while saving, output paths checked only after the work, two writers of one sweep file,
NaN and infinity passed as results, outputs that overwrite inputs, sizes without bounds, hand-made
files, gaps in the API (batch 0, half precision, a foreign streaming state)."""

import json
import os
import pathlib
import resource
import subprocess
import sys

import pytest
import torch
from test_cli import MODEL, TASK, one_thread  # noqa: F401 (one_thread: the autouse fixture, shared)

from memorylib.checkpoint import load_model, read_checkpoint, save_checkpoint
from memorylib.cli import main
from memorylib.files import atomic_write, atomic_write_text
from memorylib.registry import build_model, build_task, model_names
from memorylib.training import evaluate, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN = ["train", *MODEL, *TASK, "--steps", "2", "--batch-size", "4", "--eval-examples", "8", "--no-progress"]
RUN = "local_transformer-associative_lookup-s0"
SMALL = {"d_model": 16, "num_heads": 2}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    runs = tmp_path_factory.mktemp("faults") / "runs"
    assert main([*TRAIN, "--runs", str(runs)]) == 0
    return runs / RUN / "checkpoint.pt"


def one_line_error(capsys, argv, code=2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def files_of(folder: pathlib.Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# --- 1. a failed re-run never destroys the earlier run --------------------------------------------


def test_a_rerun_killed_while_saving_leaves_the_earlier_run_whole(tmp_path):
    runs = tmp_path / "runs"
    assert main([*TRAIN, "--runs", str(runs)]) == 0
    before = files_of(runs / RUN)

    def small_files():                       # the disk is full after 20 KB: the checkpoint cannot be written
        resource.setrlimit(resource.RLIMIT_FSIZE, (20 * 1024, 20 * 1024))

    done = subprocess.run([sys.executable, "-m", "memorylib", *TRAIN, "--runs", str(runs), "--force", "--steps", "3"],
                          cwd=ROOT, preexec_fn=small_files, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert files_of(runs / RUN) == before                         # byte for byte
    # a fresh run that fails the same way leaves nothing that blocks running it again
    done = subprocess.run([sys.executable, "-m", "memorylib", *TRAIN, "--runs", str(runs), "--name", "fresh"],
                          cwd=ROOT, preexec_fn=small_files, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and not (runs / "fresh").exists()
    assert main([*TRAIN, "--runs", str(runs), "--name", "fresh"]) == 0


def test_a_diverged_rerun_keeps_the_earlier_run_and_says_where_it_diverged(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main([*TRAIN, "--runs", str(runs)]) == 0
    before = files_of(runs / RUN)
    err = one_line_error(capsys, [*TRAIN, "--runs", str(runs), "--force", "--lr", "1e30", "--warmup", "0"])
    assert "training diverged at step" in err and "try a smaller learning rate" in err
    assert files_of(runs / RUN) == before and sorted(p.name for p in runs.iterdir()) == [RUN]


def test_atomic_writes_keep_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "record.json"
    atomic_write_text(path, "old")

    def half_then_fail(f):
        f.write(b"new, half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_a_lock_shared_by_two_processes_lets_one_in_at_a_time(tmp_path):
    import subprocess
    import sys
    import time

    from memorylib.files import locked

    out = tmp_path / "record.json"
    holder = ("import sys, time; sys.path.insert(0, sys.argv[1]); from memorylib.files import locked\n"
              "with locked(sys.argv[2]):\n    print('in', flush=True); time.sleep(1.5)")
    root = str(pathlib.Path(__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, "-c", holder, root, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "in"                   # the other process holds the lock
    start = time.perf_counter()
    with locked(out):
        waited = time.perf_counter() - start
    proc.wait(timeout=30)
    assert waited > 0.5 and (tmp_path / "record.json.lock").exists() and not out.exists()


# --- 2. output paths are checked before the work ---------------------------------------------------


@pytest.mark.parametrize("case", ["runs is a file", "run name is a file", "plot into a file's folder",
                                  "eval into a folder", "stream into a file's folder"])
def test_output_locations_are_checked_before_any_work(case, tmp_path, capsys, checkpoint):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    argv, match = {
        "runs is a file": ([*TRAIN, "--runs", str(a_file)], "is a file, not a folder"),
        "run name is a file": ([*TRAIN, "--runs", str(tmp_path), "--name", "a_file"], "is not a run folder"),
        "plot into a file's folder": (["plot", str(checkpoint.parent / "metrics.json"), "--out",
                                       str(a_file / "m.html")], "cannot write --out"),
        "eval into a folder": (["eval", "--checkpoint", str(checkpoint), "--out", str(tmp_path)], "is a folder"),
        "stream into a file's folder": (["stream", "--checkpoint", str(checkpoint), "--length", "300", "--out",
                                         str(a_file / "s.json")], "cannot write --out"),
    }[case]
    err = one_line_error(capsys, argv)
    assert match in err
    assert "held-out" not in capsys.readouterr().out                 # nothing was evaluated


# --- 4. NaN and infinity are errors, never results ------------------------------------------------


@pytest.mark.parametrize("make,match", [
    (lambda: train(build_model("local_transformer", **SMALL), build_task("needle_recall"), steps=1, lr=float("inf")),
     "lr must be a number > 0, got inf"),
    (lambda: train(build_model("local_transformer", **SMALL), build_task("needle_recall"), steps=1, lr=float("nan")),
     "lr must be a number > 0, got nan"),
    (lambda: train(build_model("local_transformer", **SMALL), build_task("needle_recall"), steps=1, clip=-1.0),
     "clip must be a number > 0"),
    (lambda: build_model("full_memory", aux_weight=float("inf")), "aux_weight must be a number >= 0, got inf"),
    (lambda: build_model("mlp_memory", max_lr=float("inf")), "max_lr must be a number > 0, got inf"),
    (lambda: build_model("full_memory", threshold=float("nan")), "threshold must be a number, got nan"),
    (lambda: build_model("surprise_memory", temperature=float("inf")), "temperature must be a number > 0"),
    (lambda: build_model("slot_memory", fixed_erase=float("nan")), "fixed_erase must be None"),
    (lambda: build_model("surprise_memory", momentum=True), "momentum must be a number in"),
    (lambda: evaluate(build_model("local_transformer", **SMALL), build_task("needle_recall"), num_examples=2,
                      digits=-1), "digits must be an int in"),
])
def test_non_finite_and_out_of_range_options_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_training_that_diverges_stops_with_the_step():
    with pytest.raises(ValueError, match=r"training diverged at step \d+: the loss is (nan|inf)"):
        train(build_model("local_transformer", **SMALL), build_task("associative_lookup", seq_len=48, num_pairs=2,
                                                                   num_queries=2, min_distance=18),
              steps=20, batch_size=4, lr=1e30, warmup=0, progress=False)


def test_weights_that_are_not_finite_are_never_saved_nor_read(tmp_path, checkpoint, capsys):
    net = build_model("local_transformer", **SMALL)
    with torch.no_grad():
        net.head.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite .* nothing was saved"):
        save_checkpoint(tmp_path / "nan.pt", model="local_transformer", model_kwargs=SMALL, task="needle_recall",
                        task_kwargs={}, seed=0, net=net)
    assert not (tmp_path / "nan.pt").exists()
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["state_dict"]["head.weight"][0, 0] = float("nan")
    torch.save(ckpt, tmp_path / "hand.pt")
    err = one_line_error(capsys, ["eval", "--checkpoint", str(tmp_path / "hand.pt")])
    assert "holds weights that are not finite" in err and "head.weight" in err
    with pytest.raises(ValueError, match="not finite"):
        load_model(tmp_path / "hand.pt")


def test_model_options_that_are_nan_on_the_command_line(capsys):
    err = one_line_error(capsys, ["eval", "--model", "full_memory", "--model-arg", "threshold=NaN", "--task",
                                  "needle_recall", "--num-examples", "2"])
    assert "threshold must be a number, got nan" in err


def test_records_are_strict_json(tmp_path):
    from memorylib.cli import _write_json

    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        _write_json(tmp_path / "r.json", {"accuracy": float("nan")})
    assert not (tmp_path / "r.json").exists()


# --- 5. an output never overwrites an input, nor a file that is not its own kind --------------------


@pytest.mark.parametrize("verb", ["eval", "stream"])
def test_the_input_of_a_command_is_never_its_output(verb, checkpoint, capsys):
    before = checkpoint.read_bytes()
    extra = ["--length", "300"] if verb == "stream" else []
    err = one_line_error(capsys, [verb, "--checkpoint", str(checkpoint), *extra, "--out", str(checkpoint), "--force"])
    assert "is also this command's input" in err and checkpoint.read_bytes() == before


def test_overwriting_a_file_of_another_kind_needs_force(tmp_path, checkpoint, capsys):
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    args = ["eval", "--checkpoint", str(checkpoint), "--out", str(notes), "--no-progress"]
    err = one_line_error(capsys, args)
    assert "exists and is not a memorylib-eval file" in err and json.loads(notes.read_text()) == {"mine": True}
    assert main([*args, "--force"]) == 0 and json.loads(notes.read_text())["format"] == "memorylib-eval"
    assert main(args) == 0                                        # now it is eval's own output: no --force needed
    page = tmp_path / "page.html"
    page.write_text("<html>someone's page</html>")
    capsys.readouterr()
    err = one_line_error(capsys, ["plot", str(notes), "--out", str(page)])
    assert "not a memorylib-plot file" in err and "someone's page" in page.read_text()
    assert main(["plot", str(notes), "--out", str(page), "--force"]) == 0
    assert main(["plot", str(notes), "--out", str(page)]) == 0   # plot's own figure: replaced freely


# --- 6. sizes have bounds ---------------------------------------------------------------------------


@pytest.mark.parametrize("argv,match", [
    (["demo", *MODEL, "--task", "needle_recall", "--index", "1000000000"], "--index: must be an int in [0, 65535]"),
    ([*TRAIN, "--batch-size", "100000000"], "--batch-size: must be an int in [1, 65536]"),
    (["train", *MODEL, "--task", "needle_recall", "--task-arg", "seq_len=1000000000"],
     "seq_len must be an int in [3, 1048576], got 1000000000"),
    (["train", *MODEL, "--task", "needle_recall", "--task-arg", "seq_len=100000000000000000000000"],
     "seq_len must be an int in [3, 1048576]"),
    (["eval", "--model", "local_transformer", "--model-arg", "d_model=1000000000", "--task", "needle_recall"],
     "not enough memory"),
    (["stream", "--model", "full_memory", "--length", "1000000000000", "--trials", "1"],
     "--length must be an int in [3, 67108864], got 1000000000000"),
])
def test_sizes_beyond_the_machine_end_in_one_line(argv, match, capsys):
    err = one_line_error(capsys, argv)
    assert match in err


# --- 7. hand-made files are validated field by field ------------------------------------------------


@pytest.mark.parametrize("change,match", [
    (lambda c: c.update(seed=-3), "seed must be an int >= 0, got -3"),
    (lambda c: c["state_dict"].update({7: torch.zeros(1)}), "the keys of state_dict must be names, got 7"),
    (lambda c: c.update(model_kwargs={1: 2}), "the keys of model_kwargs must be names"),
    (lambda c: c.update(format_version=9), "format_version=9"),
    (lambda c: c.update(model=3), "model is a int, not a str"),
    (lambda c: c.pop("task"), "it lacks task"),
])
def test_hand_made_checkpoints_name_the_file_and_the_field(change, match, checkpoint, tmp_path):
    ckpt = torch.load(checkpoint, weights_only=True)
    change(ckpt)
    path = tmp_path / "hand.pt"
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=match) as err:
        read_checkpoint(path)
    assert "hand.pt" in str(err.value)


@pytest.mark.parametrize("content,match", [
    ("[1, 2, 3]", "it is not a sweep record"),
    ('{"spec": {}}', "it is not a sweep record"),
    ('{"rows": [{"model": "x"}]}', "its row 0 is not a sweep row"),
    ('{"rows": [', "not a readable JSON file"),
])
def test_hand_made_sweep_files_name_the_file(content, match, tmp_path, capsys):
    out = tmp_path / "sweep.json"
    out.write_text(content)
    err = one_line_error(capsys, ["sweep", "--preset", "reduced", "--out", str(out)])
    assert match in err and "sweep.json" in err


@pytest.mark.parametrize("results", [
    {"t": {"accuracy": "high", "ci": [0.1, 0.2], "chance": 0.1}},
    {"t": {"accuracy": 0.5, "ci": [0.1], "chance": 0.1}},
    {"t": {"accuracy": 0.5, "ci": [0.1, 0.6], "chance": None}},
])
def test_plot_refuses_a_result_whose_numbers_are_not_numbers(results, tmp_path, capsys):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"format": "memorylib-eval", "results": results}))
    err = one_line_error(capsys, ["plot", str(path)])
    assert "is neither a run's metrics.json" in err


# --- 8. gaps in the API -------------------------------------------------------------------------------


def test_sweep_models_that_name_nothing(capsys):
    err = one_line_error(capsys, ["sweep", "--preset", "reduced", "--models", ","])
    assert "names no model" in err


def test_stream_checks_the_vocabulary(capsys):
    err = one_line_error(capsys, ["stream", "--model", "full_memory", "--model-arg", "vocab_size=50", "--length",
                                  "300", "--trials", "1"])
    assert "vocab_size=50" in err and "163 token ids" in err


@pytest.mark.parametrize("name", ["local_transformer", "slot_memory", "delta_memory", "titans_memory",
                                  "full_memory"])
def test_a_batch_of_no_sequences_is_refused_clearly(name):
    with pytest.raises(ValueError, match=r"batch >= 1 and seq_len >= 1, got \(0, 12\)"):
        build_model(name)(torch.zeros(0, 12, dtype=torch.long))


@pytest.mark.parametrize("name", model_names())
def test_every_model_runs_in_bfloat16(name):
    torch.manual_seed(0)
    model = build_model(name).to(torch.bfloat16).eval()
    with torch.no_grad():
        logits = model(torch.randint(3, 163, (2, 40)))
    assert logits.dtype == torch.bfloat16 and bool(torch.isfinite(logits).all())


def test_a_long_bfloat16_stream_stays_finite():
    torch.manual_seed(0)
    model = build_model("full_memory").to(torch.bfloat16).eval()
    g, state = torch.Generator().manual_seed(0), None
    for _ in range(64):                                               # 65,536 tokens
        logits, state = model.stream(torch.randint(3, 163, (2, 1024), generator=g), state, last_only=True)
    assert state.seen == 65536 and bool(torch.isfinite(logits).all())


def test_stream_refuses_a_state_of_another_model():
    small = build_model("full_memory", key_dim=8, value_dim=8, sidecar_dim=8)
    x = torch.randint(3, 163, (2, 20))
    _, state = build_model("no_sidecar").stream(x)
    with pytest.raises(ValueError, match="carried by another model"):
        build_model("full_memory").stream(x, state)
    _, mine = small.stream(x)
    with pytest.raises(ValueError, match="carried by another model"):
        build_model("full_memory").stream(x, mine)
    with pytest.raises(ValueError, match="must be the FullStreamState that stream\\(\\) returned"):
        small.stream(x, {"memory": None})
    with pytest.raises(ValueError, match="the state is for a batch of 2, got 1 sequences"):
        small.stream(x[:1], mine)


def test_a_nan_in_a_memorys_gates_is_named():
    from memorylib.delta_rule import delta_rule

    q = k = torch.nn.functional.normalize(torch.randn(1, 1, 8, 4), dim=-1)
    retain = torch.full((1, 1, 8), 0.9)
    retain[0, 0, 3] = float("nan")
    with pytest.raises(ValueError, match="retain must not hold NaN"):
        delta_rule(q, k, torch.randn(1, 1, 8, 4), torch.full((1, 1, 8), 0.5), retain)


def test_output_of_the_sweep_is_checked_before_the_first_row(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        err = one_line_error(capsys, ["sweep", "--preset", "reduced", "--out", str(locked / "s.json")])
        assert "s.json" in err and "rows done" not in capsys.readouterr().out
    finally:
        locked.chmod(0o700)
