"""Writes chapters/04_surprise.ipynb (unexecuted). Kept only until the chapter is executed and
committed; from then on the notebook is the source.

It needs book/results/ch04_surprise.json and ch04_surprise_long.json
(`python experiments/slot_sweeps.py ch04` and `... ch04-long`).
"""

import pathlib

import nbformat
from nbformat.v4 import new_code_cell as code, new_markdown_cell as md, new_notebook

ROOT = pathlib.Path(__file__).resolve().parents[2]
cells = []
M = lambda s: cells.append(md(s.strip("\n")))


def C(s, tags=None):
    c = code(s.strip("\n"))
    if tags:
        c.metadata["tags"] = tags
    cells.append(c)


M(r"""
# 4. Surprise: writing what the model did not expect

[Open in Colab](https://colab.research.google.com/github/memorylib-book/memory-book/blob/main/chapters/04_surprise.ipynb) ·
[Launch on Binder](https://mybinder.org/v2/gh/memorylib-book/memory-book/main?labpath=chapters/04_surprise.ipynb)

A memory of four slots cannot keep a stream of a hundred tokens. Something has to decide which
tokens earn a slot. In chapters 2 and 3 that was a learned write gate: a small network looking at
each token and its neighbours, trained on the task. This chapter tries a signal that is not
trained on the task at all: **surprise**, how badly the model predicted a token before it arrived.
In this chapter you will

* compute surprise from a next-token prediction made one step *earlier*, and run the test that
  tells a causal surprise from a leaky one;
* train a four-slot memory whose writes are gated by surprise, live, to find a needle hidden in a
  predictable haystack, where the needle is the only surprise;
* set four models side by side, each trained on a predictable and on a random haystack (where
  every token is a surprise), three seeds each: surprise alone, a learned gate times surprise,
  the same with momentum (the form used by Titans {cite}`behrouz2024titans`), and the same model
  without surprise (`no_surprise`);
* measure accuracy against the needle's depth (does surprise need a warm-up?) and slide the
  surprise threshold between writing too little and writing too much.
""")
C(r'''
import sys
if "google.colab" in sys.modules:  # Colab opens only this file: install the book's package first
    %pip install -q "memorylib @ git+https://github.com/memorylib-book/memory-book"

from memorylib.book import setup
setup(seed=0)
''')
M(r"""
The next cell holds the chapter's parameters. `FAST = True` makes a quick smoke run (used by CI);
it changes numbers only, and the claims at the end are checked at full strength only with
`FAST = False`.
""")
C("SEED = 0\nFAST = False", tags=["parameters"])
C(r'''
STEPS = 20 if FAST else 200             # training steps of the live run (the sweep's recipe)
BATCH_SIZE = 64
EVAL_EXAMPLES = 128 if FAST else 512    # held-out sequences per evaluation
CURVE_EXAMPLES = 64 if FAST else 512    # per point of the depth and threshold curves
NUM_SLOTS = 4                           # a needle, and room for little else
''')
M(r"""
## Surprise, measured before the write

Let $p_{t-1}(\cdot)$ be the model's prediction, made at position $t-1$, of the token that comes
next. When $x_t$ arrives, its surprise is

$$s_t = 1 - p_{t-1}(x_t) \qquad\text{or}\qquad s_t = -\log p_{t-1}(x_t),$$

zero for a token the model was sure of, near one (or large) for a token it did not expect. The
first token, which nothing predicts, gets the surprise of a uniform guess. The momentum form
carries past surprise along with a decay $\eta$, so that a surprising event keeps the gate open
for a few tokens after it:

$$S_t = \eta\, S_{t-1} + s_t, \qquad S_t = s_t \text{ when } \eta = 0.$$

The memory's write gate at $t$ is multiplied by $\sigma\big((S_t - \tau)/T\big)$, with a threshold
$\tau$ and a temperature $T$ (here $\tau = 0.5$, $T = 0.1$).

Two details decide whether this means anything. First, the prediction $p_{t-1}$ must come from
a head that is **trained to predict the next token at every position**; the model's output head
is trained only at the answers, and its "prediction" of a filler token is noise. We add a small
head on the local features and train it with an auxiliary next-token loss (weight 0.1); the
surprise is read from its logits *detached*, so the answer loss cannot teach the head to be
surprised on purpose. Second, $p_{t-1}$ must be computed from what the model knew **before**
$x_t$: from features of tokens up to $t-1$, not from a state that has already absorbed $x_t$.
Both were wrong in the first release of a published project (ForgetNet: a surprise from a state
that had seen the token, and a prediction head that was never trained).

Here are both forms, by hand, against `memorylib.surprise`.
""")
C(r'''
import math
import torch
from memorylib.surprise import momentum_surprise, token_surprise

g = torch.Generator().manual_seed(SEED)
V, T = 10, 12
tokens = torch.randint(0, V, (1, T), generator=g)
logits = torch.randn(1, T, V, generator=g)           # logits[:, t] predicts tokens[:, t + 1]

by_hand = [1 - 1 / V] + [1 - torch.softmax(logits[0, t - 1], -1)[tokens[0, t]].item() for t in range(1, T)]
assert torch.allclose(token_surprise(logits, tokens)[0], torch.tensor(by_hand), atol=1e-6)

sure = 50.0 * torch.nn.functional.one_hot(torch.roll(tokens, -1, dims=1), V).float()   # always right
print("surprise of a perfect predictor:", token_surprise(sure, tokens)[0, 1:].abs().max().item())
assert token_surprise(sure, tokens)[0, 1:].abs().max() < 1e-6

eta, carried, S = 0.5, [], 0.0
for s in by_hand:
    S = eta * S + s
    carried.append(S)
assert torch.allclose(momentum_surprise(torch.tensor([by_hand]), eta)[0], torch.tensor(carried), atol=1e-6)
assert torch.equal(momentum_surprise(torch.tensor([by_hand]), 0.0), torch.tensor([by_hand]))
print("plain :", [round(s, 2) for s in by_hand])
print("eta .5:", [round(s, 2) for s in carried])
''')
M(r"""
## A leaky surprise, and the test that catches it

The test for "computed before the write" is simple to state: the prediction used for $s_t$ must
be *exactly* the prediction the model makes when it is shown only $x_0 \dots x_{t-1}$. Below, the
model's own surprise passes it. A leaky variant, which reads the prediction off the features at
$t$ (features that have already seen $x_t$), fails it: the leaky "surprise" knows the token it is
supposed to be surprised by. The same test runs in `tests/test_surprise.py` for every surprise
model, together with the causality test of every registered model (no output depends on a later
token).
""")
C(r'''
from memorylib.registry import build_model, build_task

torch.manual_seed(SEED)
probe = build_model("surprise_only", num_slots=NUM_SLOTS).eval()
seq = build_task("needle_recall", seq_len=96, filler="predictable").sample(2, seed=SEED).tokens

def prefix_prediction(model, tokens, t):
    """p_{t-1}(x_t) from the model shown tokens[:, :t] only."""
    p = torch.softmax(model.predictor(model.features(tokens[:, :t]))[:, -1], dim=-1)
    return p.gather(1, tokens[:, t:t + 1]).squeeze(1)

with torch.no_grad():
    _, trace = probe(seq, return_trace=True)
    h = probe.features(seq)
    leaky = 1 - torch.softmax(probe.predictor(h), -1).gather(2, seq[..., None]).squeeze(-1)   # uses h_t
    gap_ours = max((trace["surprise"][:, t] - (1 - prefix_prediction(probe, seq, t))).abs().max().item() for t in range(1, 96))
    gap_leaky = max((leaky[:, t] - (1 - prefix_prediction(probe, seq, t))).abs().max().item() for t in range(1, 96))
print(f"largest gap to the prefix-only prediction: ours {gap_ours:.1e}, leaky {gap_leaky:.2f}")
assert gap_ours < 1e-5 and gap_leaky > 0.01
''')
M(r"""
## The task: one needle, two haystacks

`needle_recall` (chapter 1) hides one fact, `SET k v`, somewhere in a stream and asks for it in the
last cell, at least 48 tokens later (beyond the 17 tokens the local attention reaches). The
haystack is either **predictable**, a cycle through the filler tokens (each token follows from
the one before), or **random**, filler drawn uniformly. In the first, once the prediction head
has learned the cycle, the needle is the only surprise in the stream. In the second, every filler
token is as surprising as the needle (a random filler token has probability 1/32, a key 1/64), so
surprise cannot single it out.

The memory has **4 slots**. A model that writes every token evicts the needle within a few tokens;
it has to write (almost) only the needle. Each model is trained on one haystack, 96 tokens per
sequence, so that its prediction head learns the statistics of the stream it will be surprised
by. (We first trained on a 50/50 mixture of both haystacks: in 300 steps, seed 0, neither
`surprise_only` nor `no_surprise` left chance. We did not pursue it further.)
""")
C(r'''
from memorylib.figures import token_figure

haystacks = {"predictable": build_task("needle_recall", seq_len=96, filler="predictable"),
             "random": build_task("needle_recall", seq_len=96, filler="random")}
long_haystacks = {f"{name}, 192 tokens": build_task("needle_recall", seq_len=192, filler=name) for name in haystacks}
train_task = haystacks["predictable"]
print(train_task)
for name, task in haystacks.items():
    token_figure(task.sample(1, seed=SEED), title=f"needle_recall, {name} haystack").show()
''')
M(r"""
## Train surprise alone, live

First the purest form: the learned write gate is pinned open (`fixed_write=1.0`, registered as
`surprise_only`), so what is written is decided by surprise alone. Everything else (content
addressing, the erase gate, the allocation of chapter 3, the read) is as before and is learned.
Two hundred steps on the predictable haystack, a little over a minute on a laptop CPU.
""")
C(r'''
from memorylib.experiments import run

eval_tasks = {"train": train_task, **haystacks, **long_haystacks}
result, model = run("surprise_only", train_task, seed=SEED, steps=STEPS, batch_size=BATCH_SIZE, lr=1e-2,
                    model_kwargs={"num_slots": NUM_SLOTS}, eval_tasks=eval_tasks, num_examples=EVAL_EXAMPLES,
                    progress=True, return_model=True)
''', tags=["nbval-ignore-output"])
C(r'''
import json, pathlib
from memorylib import reproducible

for name, r in result["eval"].items():
    print(f"{name:24s} accuracy {r['accuracy']:.3f} (95% CI {r['ci'][0]:.3f}-{r['ci'][1]:.3f}), chance {r['chance']:.3f}")

sweep = json.loads(pathlib.Path("../book/results/ch04_surprise.json").read_text())
assert sweep["eval_tasks"]["random"] == haystacks["random"].config()
row0 = next(r for r in sweep["rows"] if r["label"] == "surprise only | predictable" and r["seed"] == SEED)
assert row0["train_task"] == train_task.config() and row0["steps"] == 200
print(f"sweep: {sweep['command']} (torch {sweep['torch']}, {sweep['threads']} threads, {sweep['total_seconds']:.0f} s)")
print(f"live accuracy {result['eval']['train']['accuracy']:.4f} / sweep {row0['eval']['train']['accuracy']:.4f}")
exact = not FAST and reproducible.is_reference()     # the book's numerics: see chapter 2
if exact:
    assert result["eval"] == row0["eval"], "the live run must reproduce the committed sweep"
''')
M(r"""
## The surprise trace

One held-out sequence of each haystack through the model we just trained, token by token: the
surprise $s_t$ (red) and the write strength the memory used (blue; for this model it is the
surprise gate itself). The fact cell is shaded orange, the query cell blue, and the dashed line is
the threshold. Look for three things: where the needle is, what happens in the first few tokens,
and what the random haystack does to a head that has learned a cycle.
""")
C(r'''
from memorylib.figures import surprise_trace_figure

samples = {name: task.sample(8, seed=SEED + 1) for name, task in haystacks.items()}
with torch.no_grad():
    traces = {name: model(b.tokens, return_trace=True)[1] for name, b in samples.items()}
surprise_trace_figure(traces, {n: b.tokens for n, b in samples.items()}, threshold=model.threshold,
                      title="Surprise and write strength, surprise-only model").show()

def needle_mask(tokens):
    """(batch, seq_len) True at the SET, key and value of the needle cell."""
    first = tokens == 1                                    # SET
    return first | torch.roll(first, 1, 1) | torch.roll(first, 2, 1)

def surprise_split(trace, tokens, warmup=8):
    """Mean surprise and write strength at the needle vs. the filler after the first ``warmup`` tokens."""
    needle = needle_mask(tokens)
    filler = ~needle & (tokens >= 131)
    filler[:, :warmup] = False
    s, w = trace["surprise"], trace["write_gate"]
    return {k: round(float(v), 3) for k, v in {"needle surprise": s[needle].mean(), "filler surprise": s[filler].mean(),
            "needle write": w[needle].mean(), "filler write": w[filler].mean()}.items()}

split = {name: surprise_split(traces[name], samples[name].tokens) for name in haystacks}
for name, numbers in split.items():
    print(f"{name:12s} {numbers}")
''')
M(r"""
TRACE-TEXT
""")
M(r"""
## Four models, two haystacks, three seeds

The sweep behind this chapter (`python experiments/slot_sweeps.py ch04`, about half an hour on two
cores, committed in `book/results/`) trains four models exactly as above, once on each haystack,
with seeds 0, 1 and 2, and keeps each one's median seed:

* **surprise only** (`surprise_only`): the model we just trained;
* **learned gate × surprise** (`surprise_memory`): the learned write gate of chapters 2 and 3,
  multiplied by the surprise gate;
* **momentum surprise** (`momentum_surprise`): the same with $\eta = 0.5$;
* **no_surprise**: the same model, prediction head and auxiliary loss included, with the
  surprise gate removed: the learned write gate alone.

Every model is evaluated on 512 held-out sequences of the haystack it was trained on, and of the
same haystack twice as long (192 tokens). We load the median models and check that they
reproduce their rows.
""")
C(r'''
from memorylib.experiments import summarize
from memorylib.figures import ablation_figure
from memorylib.training import evaluate

models = {}
for r in (r for r in sweep["rows"] if "checkpoint" in r):
    net = build_model(r["model"], **r["model_kwargs"])
    net.load_state_dict(torch.load(pathlib.Path("..") / r["checkpoint"], weights_only=True))
    models[r["label"]] = net.eval()
    check = evaluate(net, haystacks[r["label"].split(" | ")[1]], num_examples=EVAL_EXAMPLES, seed=r["seed"])
    print(f"{r['label']:36s} median seed {r['seed']}: checkpoint accuracy {check['accuracy']:.4f} / "
          f"sweep {r['eval']['train']['accuracy']:.4f}")
    if exact:
        assert check == r["eval"]["train"]

labels = list(dict.fromkeys(r["label"] for r in sweep["rows"]))
names = list(dict.fromkeys(label.split(" | ")[0] for label in labels))
table = {label: {e: summarize([r for r in sweep["rows"] if r["label"] == label], "accuracy", e)
                 for e in ("train", "predictable, 192 tokens", "random, 192 tokens")} for label in labels}
panels = {"predictable": ("predictable", "train"), "predictable, 192 tokens": ("predictable", "predictable, 192 tokens"),
          "random": ("random", "train"), "random, 192 tokens": ("random", "random, 192 tokens")}
print(f"{'mean ± sd over 3 seeds':24s}" + "".join(f"{p:>26s}" for p in panels))
for name in names:
    print(f"{name:24s}" + "".join(f"{table[f'{name} | {h}'][e]['mean']:>18.3f} ± {table[f'{name} | {h}'][e]['std']:.3f}"
                                  for h, e in panels.values()))
rows = [{"model": name, "seed": s, **{p: table[f"{name} | {h}"][e]["values"][s] for p, (h, e) in panels.items()}}
        for name in names for s in range(3)]
ablation_figure(rows, metrics=tuple(panels), title="Needle recall with 4 slots: each model on the haystack it was trained on").show()
''')
M(r"""
TABLE-TEXT
""")
M(r"""
## How fast each model learns

Surprise needs no training to know *what* to write; a learned gate has to find it. The training
curves below are the sweep's own (answer accuracy on each training batch, every 25 steps), the
median seed of each model. Next to them, the `no_surprise` rows trained three times as long
(`python experiments/slot_sweeps.py ch04-long`): is it only slower, or does it stop short?
""")
C(r'''
from memorylib.figures import training_curves_figure

median_rows = {r["label"]: r for r in sweep["rows"] if "checkpoint" in r}
for haystack in haystacks:
    training_curves_figure({name: median_rows[f"{name} | {haystack}"] for name in names},
                           title=f"Training on the {haystack} haystack (median seeds)").show()
long = json.loads(pathlib.Path("../book/results/ch04_surprise_long.json").read_text())
assert long["steps"] == 3 * sweep["steps"] and long["train_task"] == sweep["train_task"]
long_table = {label: summarize([r for r in long["rows"] if r["label"] == label], "accuracy", "train")
              for label in dict.fromkeys(r["label"] for r in long["rows"])}
for label, t in long_table.items():
    print(f"{label:22s} {sweep['steps']} steps: {table[label]['train']['values']}   "
          f"{long['steps']} steps: {t['values']}")
''')
M(r"""
LONG-TEXT
""")
M(r"""
## Write strength against surprise

What did the trained models learn to write? Every token of two held-out sequences of the haystack
each was trained on: the surprise the model measured against the write strength it used.
Surprise alone writes exactly what is surprising; a learned gate is free to ignore surprise.
""")
C(r'''
from memorylib.figures import surprise_scatter_figure

def scatter_points(net, batch, n=2):
    with torch.no_grad():
        _, tr = net(batch.tokens, return_trace=True)
    needle = needle_mask(batch.tokens)
    return {"surprise": tr["surprise"][:n].flatten().tolist(), "write": tr["write_gate"][:n].flatten().tolist(),
            "role": ["needle" if x else "filler" for x in needle[:n].flatten().tolist()]}

shown = ["surprise only | predictable", "learned gate x surprise | predictable", "no_surprise | predictable",
         "no_surprise | random"]
points = {label: scatter_points(models[label], samples[label.split(" | ")[1]]) for label in shown}
surprise_scatter_figure(points, title="Write strength against surprise (median models, own haystack)").show()
with torch.no_grad():
    written = {label: surprise_split(net(samples[label.split(" | ")[1]].tokens, return_trace=True)[1],
                                     samples[label.split(" | ")[1]].tokens) for label, net in models.items()}
for label, v in written.items():
    print(f"{label:36s} needle: surprise {v['needle surprise']:.2f}, write {v['needle write']:.2f}   "
          f"filler: surprise {v['filler surprise']:.2f}, write {v['filler write']:.2f}")
''')
M(r"""
SCATTER-TEXT
""")
M(r"""
## Does surprise need a warm-up? Accuracy against needle depth

The prediction head needs a little context before it can predict the cycle, so the first tokens
of every sequence are surprising, and a surprise-gated memory writes them. A needle near the start
shares the memory with them. Below, the four models trained on the predictable haystack, on
predictable haystacks with the needle placed at a fixed depth (0: the first cell; 1: as late as
the 48-token gap allows), 512 sequences per point.
""")
C(r'''
from memorylib.figures import accuracy_curve_figure

depths = [0.0, 0.05, 0.1, 0.25, 0.5, 1.0] if not FAST else [0.0, 1.0]
by_depth = {name: {d: evaluate(models[f"{name} | predictable"],
                               build_task("needle_recall", seq_len=96, filler="predictable", depth=d),
                               num_examples=CURVE_EXAMPLES, seed=SEED) for d in depths} for name in names}
accuracy_curve_figure(by_depth, "needle depth (0 = first cell)", chance=1 / 64,
                      title="Predictable haystack: accuracy against where the needle is").show()
print("depth  " + "  ".join(f"{name:>24s}" for name in by_depth))
for d in depths:
    print(f"{d:5.2f}  " + "  ".join(f"{by_depth[name][d]['accuracy']:24.3f}" for name in by_depth))
''')
M(r"""
DEPTH-TEXT
""")
M(r"""
## The surprise threshold

The threshold $\tau$ is not a weight, so the trained surprise-only model can be run with any
other. Too low, and filler is written and evicts the needle; too high, and the needle itself is
not written. Drag the slider (it works in the static book): each step shows one sequence of each
haystack with the write strength at that threshold, and the held-out accuracy in the title. The
curve below it is the same sweep in one picture, and the table adds the number of tokens written
per sequence (the sum of the write strengths).
""")
C(r'''
from memorylib.figures import threshold_slider_figure
from memorylib.widgets import surprise_settings, threshold_curve

net = model                                  # the live surprise-only model (trained on the predictable haystack)
thresholds = [0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.98] if not FAST else [0.1, 0.5, 0.9]
one = {name: b.tokens[:1] for name, b in samples.items()}
with torch.no_grad():
    surprise = {name: net(t, return_trace=True)[1]["surprise"][0] for name, t in one.items()}
gates, summary, by_threshold, writes = {}, {}, {name: {} for name in haystacks}, {}
for thr in thresholds:
    with surprise_settings(net, threshold=thr), torch.no_grad():
        gates[thr] = {name: net(t, return_trace=True)[1]["write_gate"][0] for name, t in one.items()}
        writes[thr] = {name: round(float(net(b.tokens, return_trace=True)[1]["write_gate"].sum(1).mean()), 1)
                       for name, b in samples.items()}
    for name, task in haystacks.items():
        by_threshold[name][thr] = threshold_curve(net, task, thr, num_examples=CURVE_EXAMPLES, seed=SEED)
    summary[thr] = ", ".join(f"{n} {by_threshold[n][thr]['accuracy']:.2f}" for n in haystacks)
threshold_slider_figure(surprise, gates, summary, title="Surprise only").show()
accuracy_curve_figure(by_threshold, "surprise threshold", chance=1 / 64,
                      title="Surprise only: accuracy against the threshold").show()
print("threshold  accuracy (predictable, random)  tokens written per sequence (predictable, random)")
for thr in thresholds:
    print(f"{thr:9.2f}  {by_threshold['predictable'][thr]['accuracy']:10.3f}  {by_threshold['random'][thr]['accuracy']:.3f}"
          f"                      {writes[thr]['predictable']:5.1f}  {writes[thr]['random']:5.1f}")
''')
M(r"""
THRESHOLD-TEXT

In Jupyter or Colab the widget below does the same live, with a second slider for the
temperature, re-evaluating the model at every setting.
""")
C(r'''
from memorylib.widgets import surprise_explorer

surprise_explorer(net, haystacks, thresholds=tuple(thresholds), num_examples=CURVE_EXAMPLES // 4, seed=SEED)
''', tags=["nbval-ignore-output"])
M(r"""
## Claims

Every number this chapter states is measured here, on held-out sequences (512 per evaluation),
and asserted, so a claim that stops holding fails the book's CI.
""")
C(r'''
CLAIMS
''')
M(r"""
## Summary

SUMMARY
""")

nb = new_notebook(cells=cells)
nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
nb.metadata["language_info"] = {"name": "python"}
out = ROOT / "chapters" / "04_surprise.ipynb"
nbformat.write(nb, out)
print(len(cells), "cells ->", out)
