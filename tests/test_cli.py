"""The command line, in-process on tiny models: what train writes, that eval reproduces it, plot,
demo with any trace, and bad input answered with exit code 2 and one line that names it."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from torch import nn

from memorylib import registry
from memorylib.cli import VERBS, main, per_token_signals
from memorylib.experiments import run as run_experiment
from memorylib.registry import build_model, build_task, task_names
from memorylib.tasks import TokenLayout
from memorylib.training import predict

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = ["--model", "local_transformer", "--model-arg", "d_model=16", "--model-arg", "num_heads=2"]
TASK = ["--task", "associative_lookup", "--task-arg", "seq_len=48", "--task-arg", "num_pairs=2",
        "--task-arg", "num_queries=2", "--task-arg", "min_distance=18"]
TASK_KWARGS = {"seq_len": 48, "num_pairs": 2, "num_queries": 2, "min_distance": 18}
TRAIN = ["train", *MODEL, *TASK, "--steps", "3", "--batch-size", "4", "--eval-examples", "8"]
RUN_NAME = "local_transformer-associative_lookup-s0"
SMALL_FULL = ["--model", "full_memory", "--model-arg", "d_model=16", "--model-arg", "num_heads=2",
              "--model-arg", "key_dim=8", "--model-arg", "value_dim=8", "--model-arg", "sidecar_dim=8"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread is enough, and leaves the other core to whatever else runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    runs = tmp_path_factory.mktemp("cli") / "runs"
    assert main([*TRAIN, "--runs", str(runs), "--no-progress"]) == 0
    return runs / RUN_NAME


def _loaded(run_dir):
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    model = build_model(ckpt["model"], **ckpt["model_kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    return ckpt, model.eval()


def test_train_writes_a_run_that_matches_the_library_and_eval_reproduces_it(run_dir, tmp_path, capsys):
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt", "config.json", "metrics.json"]
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["format_version"] == 1 and ckpt["memorylib_version"]
    assert (ckpt["model"], ckpt["model_kwargs"]) == ("local_transformer", {"d_model": 16, "num_heads": 2})
    assert (ckpt["task"], ckpt["task_kwargs"], ckpt["seed"]) == ("associative_lookup", TASK_KWARGS, 0)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["history"]["step"] == [0, 2] and len(metrics["history"]["loss"]) == 2
    assert set(metrics["timings"]) == {"train_s", "eval_s", "total_s"}
    assert metrics["command"][:2] == ["memorylib", "train"] and "--eval-examples" in metrics["command"]
    assert metrics["versions"]["torch"] == torch.__version__
    assert json.loads((run_dir / "config.json").read_text())["task_kwargs"] == TASK_KWARGS
    saved = metrics["eval"]["associative_lookup"]
    assert (saved["num_examples"], saved["num_answers"]) == (8, 16)

    # the same run through memorylib.experiments.run: same weights, same numbers
    task = build_task("associative_lookup", **TASK_KWARGS)
    result, model = run_experiment("local_transformer", task, seed=0, steps=3, batch_size=4, lr=1e-2,
                                   model_kwargs={"d_model": 16, "num_heads": 2}, num_examples=8,
                                   return_model=True)
    for key, tensor in model.state_dict().items():
        assert torch.equal(ckpt["state_dict"][key], tensor), key
    torch.manual_seed(0)
    fresh = build_model("local_transformer", d_model=16, num_heads=2).state_dict()
    assert not all(torch.equal(fresh[k], v) for k, v in ckpt["state_dict"].items())   # trained weights saved
    assert result["history"] == metrics["history"] and result["eval"]["train"] == saved

    # eval reads the checkpoint's task, seed and example count: the saved result, number for number
    out = tmp_path / "eval.json"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run_dir / "checkpoint.pt"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["results"] == {"associative_lookup": saved} and data["seed"] == 0
    assert f"associative_lookup     {saved['accuracy']:.3f}" in printed


def test_progress_bars_overwrite_protection_and_force(tmp_path, capsys):
    small = ["train", *MODEL, *TASK, "--steps", "1", "--batch-size", "2", "--eval-examples", "2",
             "--runs", str(tmp_path)]
    assert main(small) == 0
    assert "local_transformer on associative_lookup" in capsys.readouterr().err     # the tqdm bar
    assert main(small) == 2
    err = capsys.readouterr().err
    assert RUN_NAME in err and "already exists" in err and "--force" in err
    assert main([*small, "--steps", "2", "--force", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    assert json.loads((tmp_path / RUN_NAME / "metrics.json").read_text())["steps"] == 2


def test_eval_on_all_tasks(tmp_path, capsys):
    out = tmp_path / "all.json"
    assert main(["eval", *MODEL, "--task", "all", "--num-examples", "2", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())["results"]
    expected = [n for n in task_names() if n != "length_extrapolation"] + \
        [f"length_extrapolation x{f}" for f in (1, 2, 4, 8)]
    assert sorted(results) == sorted(expected)
    for label, r in results.items():
        assert label in printed
        assert r["num_examples"] == 2 and r["ci"][0] <= r["accuracy"] <= r["ci"][1]
    assert results["length_extrapolation x8"]["max_distance"] > results["length_extrapolation x1"]["max_distance"]


def test_plot_writes_html_for_a_run_and_for_an_eval(run_dir, tmp_path, capsys):
    html = tmp_path / "run.html"
    assert main(["plot", str(run_dir / "metrics.json"), "--out", str(html)]) == 0
    text = html.read_text()
    assert "cdn.plot.ly" in text and "Plotly.newPlot" in text and "held-out accuracy by distance" in text
    evaluated = tmp_path / "eval.json"
    assert main(["eval", *MODEL, "--task", "needle_recall", "--num-examples", "2", "--out", str(evaluated)]) == 0
    assert main(["plot", str(evaluated)]) == 0                            # default: beside the input
    text = (tmp_path / "eval.html").read_text()
    assert "Plotly.newPlot" in text and "needle_recall" in text and '"chance"' in text


def test_png_without_kaleido_is_a_clear_error(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "kaleido", None)                    # import kaleido now fails
    png = tmp_path / "run.png"
    assert main(["plot", str(run_dir / "metrics.json"), "--out", str(png)]) == 2
    err = capsys.readouterr().err
    assert "kaleido" in err and "pip install" in err and "--out FILE.html" in err and "Traceback" not in err
    assert not png.exists()


@pytest.mark.parametrize("content,match", [
    ('{"foo": 1}', "its keys: foo"),
    ("[1, 2]", "it holds a JSON list"),
    ("not json", "is not JSON"),
])
def test_plot_rejects_other_files(tmp_path, capsys, content, match):
    path = tmp_path / "other.json"
    path.write_text(content)
    assert main(["plot", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and match in err and err.count("\n") == 1


def test_demo_marks_every_answer_as_evaluate_scores_it(run_dir, capsys):
    assert main(["demo", "--checkpoint", str(run_dir / "checkpoint.pt"), "--index", "3"]) == 0
    out = capsys.readouterr().out
    answers = [line.split() for line in out.splitlines() if "✓" in line or "✗" in line]
    # the same held-out sequence as evaluate's example 3 with the checkpoint's seed
    ckpt, model = _loaded(run_dir)
    p = predict(model, build_task("associative_lookup", **TASK_KWARGS), num_examples=32, seed=0)
    mine = p["example"] == 3
    label = TokenLayout().label
    assert len(answers) == int(mine.sum()) == 2
    for cells, pred, target, ok in zip(answers, p["predicted"][mine], p["target"][mine], p["correct"][mine]):
        assert cells[2:5] == [label(pred), label(target), "✓" if ok else "✗"]
    assert f"{int(p['correct'][mine].sum())}/2 answers correct on this sequence" in out
    assert "no trace" in out          # a transformer: tokens and predictions only


@pytest.mark.parametrize("model,columns,notes", [
    (["slot_memory", "slot_dim=8", "num_slots=4"], ["read", "write", "age_before", "write_gate", "erase"],
     ["read, write, age_before: the largest of 4 slots"]),
    (["gated_delta_memory", "memory_heads=2"], ["lr", "retain"],
     ["lr, retain: mean over 2 heads", "not shown (None, or not one number per token): momentum, reads"]),
])
def test_demo_shows_a_models_trace(capsys, model, columns, notes):
    args = ["demo", "--model", model[0], "--model-arg", "d_model=16", "--model-arg", "num_heads=2"]
    for extra in model[1:]:
        args += ["--model-arg", extra]
    assert main([*args, "--task", "associative_lookup", "--task-arg", "seq_len=36", "--task-arg", "num_pairs=2",
                 "--task-arg", "num_queries=2", "--task-arg", "min_distance=12"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[1].split()
    assert header[:2] == ["pos", "token"] and header[2:2 + len(columns)] == columns
    assert all(note in out for note in notes)
    assert sum(line.count("✓") + line.count("✗") for line in out.splitlines()) == 2


class _Traced(nn.Module):
    """A stand-in for a model not written yet: a trace with keys the command line does not know."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(TokenLayout().vocab_size, 8)
        self.head = nn.Linear(8, TokenLayout().vocab_size)

    def forward(self, tokens, return_trace=False):
        logits = self.head(self.embed(tokens))
        B, T = tokens.shape
        trace = {"sidecar_weight": torch.rand(B, T, 3), "surprise": torch.rand(B, T), "gate": torch.rand(B, 2, T),
                 "cache": torch.zeros(B, T, 3, 4), "momentum": None, "info": "text"}
        return (logits, trace) if return_trace else logits


def test_demo_handles_trace_keys_it_does_not_know(monkeypatch, capsys):
    monkeypatch.setitem(registry._MODELS, "traced_stand_in", lambda **kw: _Traced())
    assert main(["demo", "--model", "traced_stand_in", "--task", "associative_lookup", "--task-arg", "seq_len=36",
                 "--task-arg", "num_pairs=2", "--task-arg", "num_queries=2", "--task-arg", "min_distance=12"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split()[:5] == ["pos", "token", "sidecar_weight", "surprise", "gate"]
    assert "not shown (None, or not one number per token): cache, momentum, info" in out


class _RemembersTheOldValue(nn.Module):
    """Answers every query with the value its key had before the latest update (when it had one)."""

    def forward(self, tokens):
        lay = TokenLayout()
        logits = torch.zeros(*tokens.shape, lay.vocab_size)
        for b, row in enumerate(tokens.tolist()):
            stated = {}
            for c in range(0, len(row) - 2, 3):
                marker, key, value = row[c:c + 3]
                if marker == lay.SET:
                    stated.setdefault(key, []).append(value)
                elif marker == lay.ASK and key in stated:
                    logits[b, c + 1, stated[key][-2 if len(stated[key]) > 1 else -1]] = 1.0
        return logits


def test_demo_says_when_an_answer_is_the_overwritten_value(monkeypatch, capsys):
    monkeypatch.setitem(registry._MODELS, "stale_stand_in", lambda **kw: _RemembersTheOldValue())
    assert main(["demo", "--model", "stale_stand_in", "--task", "changing_facts", "--full"]) == 0
    out = capsys.readouterr().out
    p = predict(_RemembersTheOldValue(), build_task("changing_facts"), num_examples=32, seed=0)
    mine = p["example"] == 0
    has_stale = int((p["stale"][mine] >= 0).sum())
    assert 0 < has_stale < int(mine.sum())                 # both kinds of answer occur
    assert out.count("✗ stale") == has_stale and out.count("✓") == int(p["correct"][mine].sum())
    assert f"{has_stale} predicted the overwritten (stale) value" in out


def test_per_token_signals_reduces_heads_and_slots_and_skips_the_rest():
    B, T = 2, 5
    g = torch.Generator().manual_seed(0)
    trace = {"surprise": torch.rand(B, T, generator=g), "gate": torch.rand(B, 3, T, generator=g),
             "lr": torch.rand(B, 1, T, generator=g), "sidecar_weight": torch.rand(B, T, 4, generator=g),
             "reads": torch.rand(B, 3, T, 8, generator=g), "momentum": None, "note": "text",
             "scalar": torch.tensor(1.0), "other_batch": torch.rand(1, T, generator=g)}
    signals, skipped = per_token_signals(trace, B, T)
    assert list(signals) == ["surprise", "gate", "lr", "sidecar_weight"]
    assert skipped == ["reads", "momentum", "note", "scalar", "other_batch"]
    assert torch.equal(signals["surprise"][0], trace["surprise"])
    assert torch.allclose(signals["gate"][0], trace["gate"].mean(1)) and signals["gate"][2] == "mean over 3 heads"
    assert signals["lr"][2] is None
    values, slots, _ = signals["sidecar_weight"]
    assert torch.equal(slots, trace["sidecar_weight"].argmax(-1))
    assert torch.equal(values, trace["sidecar_weight"].amax(-1))


def test_demo_shortens_long_sequences_unless_full(capsys):
    args = ["demo", *MODEL, "--task", "needle_recall"]                   # 192 tokens, one answer
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    answer = next(line.split() for line in lines if "✓" in line or "✗" in line)
    target = answer[3]
    needle = [line for line in lines if line.split()[1:2] == [target]]   # the fact the answer needs
    assert sum("..." in line for line in lines) >= 2 and len(lines) < 30 and len(needle) >= 2
    assert main([*args, "--full"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines()
            if line.split()[:1] and line.split()[0].isdigit()]
    assert [int(r.split()[0]) for r in rows] == list(range(192))


def _bad_inputs(ctx):
    ckpt = str(ctx["run_dir"] / "checkpoint.pt")
    tmp = ctx["tmp"]
    return {
        "unknown model": (["train", "--model", "tiny_transformr", "--task", "associative_lookup", "--runs", str(tmp)],
                          "unknown model 'tiny_transformr' (did you mean 'tiny_transformer'?)"),
        "unknown task": (["eval", *MODEL, "--task", "lookup"], "unknown task 'lookup'"),
        "no equals sign": (["eval", "--model", "local_transformer", "--model-arg", "d_model",
                            "--task", "needle_recall"],
                           "expected key=value (e.g. d_model=16), got 'd_model'"),
        "bad key": (["eval", "--model", "local_transformer", "--model-arg", "1x=3", "--task", "needle_recall"],
                    "got '1x=3'"),
        "unknown option": (["eval", "--model", "local_transformer", "--model-arg", "d_modle=16",
                            "--task", "needle_recall"],
                           "unexpected keyword argument 'd_modle'"),
        "bad option value": (["demo", "--model", "local_transformer", "--model-arg", "window=0",
                              "--task", "needle_recall"],
                             "from window=0: window must be None (full attention) or an int >= 1, got 0"),
        "bad number": (["train", *MODEL, *TASK, "--steps", "0"], "--steps: must be an int >= 1, got '0'"),
        "missing checkpoint": (["eval", "--checkpoint", str(tmp / "missing.pt")], "missing.pt' does not exist"),
        "random bytes": (["eval", "--checkpoint", ctx["random"]], "random.pt' is not a memorylib checkpoint"),
        "foreign torch file": (["demo", "--checkpoint", ctx["foreign"]], "it lacks format_version, model"),
        "weights do not fit": (["eval", "--checkpoint", ckpt, "--model-arg", "d_model=32"],
                               "do not fit model 'local_transformer' with d_model=32, num_heads=2: shapes differ"),
        "weights missing": (["eval", "--checkpoint", ctx["pruned"]], "do not fit model 'local_transformer'"),
        "run folder exists": ([*TRAIN, "--runs", str(ctx["run_dir"].parent)], f"{RUN_NAME}' already exists"),
        "model cannot stream": (["stream", "--checkpoint", ckpt, "--length", "600"],
                                "model 'local_transformer' cannot stream"),
        "fresh model cannot stream": (["stream", "--model", "tiny_transformer", "--length", "300"],
                                      "model 'tiny_transformer' cannot stream (its state grows with the sequence); "
                                      "streaming models: full_learned_keep, full_memory,"),
        "stream needles 0": (["stream", *SMALL_FULL, "--variant", "multi_key", "--needles", "0", "--length", "300"],
                             "--needles must be an int in [1, 64], got 0"),
        "stream variant": (["stream", *SMALL_FULL, "--variant", "nonsense", "--length", "300"],
                           "--variant must be one of ('single', 'multi_key', 'multi_query', 'multi_value', "
                           "'update'), got 'nonsense'"),
        "stream haystack": (["stream", *SMALL_FULL, "--haystack", "cycle", "--length", "300"],
                            "--haystack must be one of ('random', 'markov'), got 'cycle'"),
        "stream control": (["stream", *SMALL_FULL, "--control", "other_key", "--length", "300"],
                           "--control must be one of ('removed', 'shuffled'), got 'other_key'"),
        "stream queries": (["stream", *SMALL_FULL, "--variant", "multi_query", "--needles", "4", "--queries", "5",
                            "--length", "300"], "--queries must be an int in [1, 4], got 5"),
        "queries not asked": (["stream", *SMALL_FULL, "--variant", "multi_key", "--queries", "3", "--length", "300"],
                              "--queries applies to multi_query only"),
        "distractors not used": (["stream", *SMALL_FULL, "--variant", "update", "--distractors", "2",
                                  "--length", "300"], "--distractors applies to multi_value only"),
        "stream too short": (["stream", *SMALL_FULL, "--variant", "multi_key", "--length", "60"],
                             "--length 60 is too short for multi_key (8 needles, one asked); the shortest --length "
                             "for these options is 75"),
        "stream length range": (["stream", *SMALL_FULL, "--length", "2"], "--length must be an int in [3, 67108864]"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs({"run_dir": pathlib.Path("x"), "tmp": pathlib.Path("x"),
                                                   "random": "", "foreign": "", "pruned": ""})))
def test_bad_input_exits_2_with_one_line_naming_it(case, run_dir, tmp_path, capsys):
    (tmp_path / "random.pt").write_bytes(os.urandom(512))
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    del ckpt["state_dict"]["head.weight"]
    torch.save(ckpt, tmp_path / "pruned.pt")
    ctx = {"run_dir": run_dir, "tmp": tmp_path, "random": str(tmp_path / "random.pt"),
           "foreign": str(tmp_path / "foreign.pt"), "pruned": str(tmp_path / "pruned.pt")}
    argv, match = _bad_inputs(ctx)[case]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert match in captured.err, captured.err
    assert captured.err.count("\n") == 1 and captured.err.startswith(f"memorylib {argv[0]}: error: ")
    assert "Traceback" not in captured.err


def test_stream_runs_the_needle_family_and_writes_its_result(tmp_path, capsys):
    out = tmp_path / "stream.json"
    argv = ["stream", *SMALL_FULL, "--variant", "multi_key", "--needles", "4", "--length", "150", "--trials", "6",
            "--depths", "3", "--batch-size", "3", "--haystack", "markov", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert all(len(line) <= 88 for line in text.splitlines()), text
    assert "multi_key: 4 needles, one asked" in text and "150 tokens a stream, markov haystack, 6 streams" in text
    for label in ("accuracy ", "first question ", "keyless floor ", "the line to beat", "another needle ",
                  "value cached ", "depth ", "state carried per stream:"):
        assert label in text, (label, text)
    assert "stale value" not in text and "stored value" not in text and "leakage control" not in text
    record = json.loads(out.read_text())
    r = record["result"]
    assert record["format"] == "memorylib-stream" and record["format_version"] == 2
    assert (record["variant"], record["haystack"], record["control"]) == ("multi_key", "markov", None)
    assert record["command"][1] == "stream" and record["model"] == "full_memory"
    assert (r["variant"], r["num_needles"], r["trials"], r["seq_len"]) == ("multi_key", 4, 6, 150)
    assert 0 <= r["accuracy"] <= 1 and len(r["ci"]) == 2 and 0 <= r["floor"]["accuracy"] <= 1
    assert sum(r["by_depth"]["n"]) == 6 and len(r["outcomes"]) == 6 and r["state_bytes"] > 0
    assert r["stale_rate"] is None and r["value_cached"] is not None


@pytest.mark.parametrize("variant, extra, questions", [
    ("update", ["--control", "removed"], 1),
    ("multi_query", ["--needles", "3", "--control", "shuffled"], 3),
])
def test_stream_records_the_leakage_control(variant, extra, questions, tmp_path, capsys):
    out = tmp_path / "control.json"
    argv = ["stream", *SMALL_FULL, "--variant", variant, *extra, "--length", "300", "--trials", "4",
            "--batch-size", "4", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert all(len(line) <= 88 for line in text.splitlines()), text
    control = extra[-1]
    assert f"leakage control: {control}" in text
    record = json.loads(out.read_text())
    r = record["result"]
    assert record["control"] == r["control"] == control and record["variant"] == variant
    assert r["num_queries"] == questions
    if control == "removed":
        assert r["value_cached"] is None and r["stored_value_rate"] is None and "stale value" in text
    else:
        assert r["stored_value_rate"] is not None and "stored value" in text


def test_stream_help_names_every_variant_haystack_and_control_and_not_the_old_options(capsys):
    from memorylib.needles import CONTROLS, HAYSTACKS, VARIANTS

    assert main(["stream", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in (*VARIANTS, *HAYSTACKS, *CONTROLS)), text
    assert "--mode " not in text and "--filler" not in text
    assert main(["stream", *SMALL_FULL, "--length", "300", "--filler", "random"]) == 2
    assert "unrecognized arguments: --filler random" in capsys.readouterr().err


def test_help_through_python_dash_m_and_the_console_script(capsys):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "memorylib", "--help"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert all(verb in done.stdout for verb in VERBS) and done.stdout.startswith("usage: memorylib")
    assert main(["train", "--help"]) == 0 and "--model-arg KEY=VALUE" in capsys.readouterr().out
    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"memorylib": "memorylib.cli:main"}


# --- sweep ----------------------------------------------------------------------------------------


def test_reduced_sweep_writes_every_row_resumes_and_matches_the_library(tmp_path, capsys):
    from memorylib.capstone import REDUCED, learning_rate

    out = tmp_path / "sweep.json"
    assert main(["sweep", "--preset", "reduced", "--out", str(out), "--models", "full_memory"]) == 0
    first = json.loads(out.read_text())
    assert [(r["model"], r["task"]) for r in first["rows"]] == [("full_memory", "associative_lookup"),
                                                                 ("full_memory", "needle_recall")]
    assert main(["sweep", "--preset", "reduced", "--out", str(out)]) == 0       # resumes: adds the other model
    text = capsys.readouterr().out
    assert "2 rows done, 2 to run" in text and "4 rows done, 0 to run" not in text
    record = json.loads(out.read_text())
    assert record["rows"][:2] == first["rows"] and len(record["rows"]) == 4
    assert record["spec"]["models"] == REDUCED["models"] and record["command"].startswith("memorylib sweep")
    assert {"memorylib", "torch", "fingerprint", "threads", "seconds"} <= set(record)
    lookup = next(r for r in record["rows"] if r["task"] == "associative_lookup" and r["model"] == "local_transformer")
    assert set(lookup["eval"]) == {"train", "default", "x1", "x2", "x4", "x8"}
    assert lookup["eval"]["x8"]["max_distance"] > lookup["eval"]["x1"]["max_distance"]
    table = record["table"]["local_transformer"]
    assert set(table) == {"associative_lookup", "needle_recall", *(f"length_extrapolation x{f}" for f in (1, 2, 4, 8))}
    assert table["needle_recall"]["n"] == 1 and "lookup" in text and "len x8" in text
    # a row is experiments.run with the same arguments: a chapter can re-run it live and compare
    spec = REDUCED["tasks"]["needle_recall"]
    task = build_task(spec["train"][0], **spec["train"][1])
    evals = {"train": task, "default": build_task(spec["eval"]["default"][0], **spec["eval"]["default"][1])}
    again = run_experiment("full_memory", task, seed=0, steps=REDUCED["steps"], batch_size=REDUCED["batch_size"],
                           lr=learning_rate(REDUCED, "full_memory"), warmup=REDUCED["warmup"],
                           model_kwargs=REDUCED["model_kwargs"], eval_tasks=evals, num_examples=REDUCED["num_examples"])
    row = next(r for r in record["rows"] if (r["model"], r["task"]) == ("full_memory", "needle_recall"))
    assert again["eval"] == row["eval"] and again["history"] == row["history"]
    assert main(["sweep", "--preset", "reduced", "--out", str(out)]) == 0
    assert "4 rows done, 0 to run" in capsys.readouterr().out
    # the kept weights (median seed) are a checkpoint that eval reads
    assert row["checkpoint"] == "full_memory__needle_recall.pt"
    assert main(["eval", "--checkpoint", str(tmp_path / "sweep" / row["checkpoint"]), "--num-examples", "16",
                 "--no-progress"]) == 0
    assert "needle_recall" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    (["--preset", "huge"],
     "--preset must be one of capstone, matched, frontier-lookup, reduced, reduced-matched, got 'huge'"),
    (["--preset", "reduced", "--models", "full_memroy"],
     "'full_memroy' is not a model of the reduced sweep (did you mean 'full_memory'?)"),
    (["--preset", "reduced", "--models", "slot_memory"], "its models: local_transformer, full_memory"),
    (["--preset", "reduced", "--tasks", "length_extrapolation"], "length_extrapolation is not trained on its own"),
    (["--preset", "reduced", "--seeds", "5"], "seeds [5] are not in the reduced sweep"),
])
def test_bad_sweep_arguments(argv, match, tmp_path, capsys):
    assert main(["sweep", *argv, "--out", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1


def test_matched_sweep_tunes_the_rate_on_validation_and_reports_the_chosen_rows(tmp_path, capsys):
    from memorylib.capstone import REDUCED_MATCHED, chosen_rate, selected

    out = tmp_path / "matched.json"
    assert main(["sweep", "--preset", "reduced-matched", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    record = json.loads(out.read_text())
    rows = record["rows"]
    # 2 models x 2 tasks + 1 ranked model x 1 task, each: 2 rates x seed 0 (tuning), then seed 1 at the chosen rate
    assert len(rows) == 5 * 3 and "keyless floor" in text
    for (model, task) in {(r["model"], r["task"]) for r in rows}:
        mine = [r for r in rows if (r["model"], r["task"]) == (model, task)]
        lr = chosen_rate(rows, REDUCED_MATCHED, model, task)
        assert sorted(r["lr"] for r in mine if r["seed"] == 0) == [3e-3, 1e-2]
        assert all("validation" in r for r in mine if r["seed"] == 0)
        assert [r["lr"] for r in mine if r["seed"] == 1] == [lr] and "validation" not in mine[-1]
        assert sorted(r["seed"] for r in selected(mine)) == [0, 1] and all(r["lr"] == lr for r in selected(mine))
        best = max(r["validation"]["train"]["accuracy"] for r in mine if r["seed"] == 0)
        assert next(r for r in mine if r["seed"] == 0 and r["lr"] == lr)["validation"]["train"]["accuracy"] == best
    assert {r["registry_model"] for r in rows if r["model"] == "full_rank_recency"} == {"full_rank_recency"}
    # every row names the arithmetic it ran in: the thread count and the fingerprint
    import torch

    from memorylib import reproducible

    assert {(r["threads"], r["fingerprint"]) for r in rows} == {(torch.get_num_threads(),
                                                                 reproducible.fingerprint())}
    assert record["table"]["full_memory"]["needle_markov"]["n"] == 2
    assert record["floors"]["needle_markov"]["default"]["accuracy"] == 1.0
    assert 0.4 < record["floors"]["associative_lookup"]["train"]["accuracy"] < 0.7
    assert set(record["table_trained"]["full_memory"]) == {"associative_lookup", "needle_markov"}
    assert main(["sweep", "--preset", "reduced-matched", "--out", str(out)]) == 0
    assert "15 rows done, 0 to run" in capsys.readouterr().out


def test_a_rate_that_diverges_is_recorded_never_chosen_and_counted_as_zero(tmp_path, monkeypatch, capsys):
    """A learning rate of the grid at which training diverges is recorded as diverged (with its
    step), not as a score, and never chosen; when every rate diverges, nothing is chosen and the
    sweep still finishes; a seed that diverges at the chosen rate counts 0.0 and is flagged."""
    import memorylib.capstone as capstone
    from memorylib.training import TrainingDiverged

    real_run = capstone.run

    def run(name, task, *, seed, lr, **kwargs):
        if lr == 1e-2 or (name == "local_transformer" and (seed == 1 or lr == 3e-3)):
            raise TrainingDiverged(3, float("nan"), lr)
        return real_run(name, task, seed=seed, lr=lr, **kwargs)

    monkeypatch.setattr(capstone, "run", run)
    out = tmp_path / "matched.json"
    assert main(["sweep", "--preset", "reduced-matched", "--out", str(out)]) == 0
    assert "training diverged at step 3" in capsys.readouterr().out
    record = json.loads(out.read_text())
    rows = record["rows"]
    spec = capstone.REDUCED_MATCHED
    for task in ("associative_lookup", "needle_markov"):
        # full_memory: 1e-2 diverged, so 3e-3 is chosen whatever the validation says
        assert capstone.chosen_rate(rows, spec, "full_memory", task) == 3e-3
        bad = next(r for r in rows if (r["model"], r["task"], r["lr"]) == ("full_memory", task, 1e-2))
        assert bad["diverged"] == {"step": 3, "loss": "nan"} and bad["eval"] is None and not bad["selected"]
        # local_transformer: every rate diverged; nothing chosen, no seed 1 run, no table entry
        assert capstone.chosen_rate(rows, spec, "local_transformer", task) is None
        assert capstone.diverged_everywhere(rows, spec, "local_transformer", task)
        assert not capstone.diverged_everywhere(rows, spec, "full_memory", task)
        assert {r["seed"] for r in rows if (r["model"], r["task"]) == ("local_transformer", task)} == {0}
    assert "local_transformer" not in record["table"]
    assert record["table"]["full_memory"]["needle_markov"]["diverged"] == 0
    # a seed that diverges at the chosen rate: 0.0, flagged, ranked last
    ok = next(r for r in capstone.selected(rows) if r["model"] == "full_memory" and r["task"] == "needle_markov")
    broken = {**ok, "seed": 7, "diverged": {"step": 1, "loss": "inf"}, "eval": None}
    table = capstone.summary_table([*rows, broken])["full_memory"]["needle_markov"]
    assert table["diverged"] == 1 and 0.0 in table["values"] and table["n"] == 3
    verdict = capstone.compare({"rows": [*rows, broken]}, [("full_memory", "full_rank_recency")], "associative_lookup")
    assert verdict[0]["a_diverged"] == 0
    verdict = capstone.compare({"rows": [*rows, broken]}, [("full_memory", "full_memory")], "needle_markov")
    assert verdict[0]["a_diverged"] == 1 and min(verdict[0]["a_values"]) == 0.0


def test_two_sweep_processes_share_one_results_file(tmp_path):
    out = tmp_path / "shared.json"
    procs = [subprocess.Popen([sys.executable, "-m", "memorylib", "sweep", "--preset", "reduced", "--out", str(out),
                               "--models", model], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for model in ("local_transformer", "full_memory")]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    rows = json.loads(out.read_text())["rows"]
    assert sorted((r["model"], r["task"]) for r in rows) == sorted(
        (m, t) for m in ("local_transformer", "full_memory") for t in ("associative_lookup", "needle_recall"))


def test_sweep_refuses_to_resume_a_file_with_another_spec(tmp_path, capsys):
    out = tmp_path / "s.json"
    out.write_text(json.dumps({"spec": {"name": "something else"}, "rows": []}))
    assert main(["sweep", "--preset", "reduced", "--out", str(out)]) == 2
    assert "holds a sweep with another spec" in capsys.readouterr().err
