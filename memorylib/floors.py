"""The line to beat: the best strategy that ignores the asked key. Introduced in chapter 8.

Chance (``1 / 64``) is not what a memory has to beat. A model can score far above it without
remembering which value belongs to which key: in associative lookup, a value that was stated and
not yet asked for is a much better guess than any value; in the needle task the stream holds one
value only. The *keyless floor* of a task is the accuracy of the best strategy that sees the whole
stream before a question except the key it asks. A memory has shown keyed recall only where it
beats that floor.

:class:`KeylessBaseline` is that strategy, written as a model (``logits = model(tokens)``, causal),
so :func:`memorylib.training.evaluate` scores it on the same held-out sequences as any model, with
the same interval. At the key of a question (``ASK k``, position ``t``) it reads the cells before
``t`` and never ``tokens[t]``:

* ``rule="facts"`` (lookup, changing facts, the needle): the candidates are the keys stated so far
  (``SET k v``; a key's value is its latest) that were not asked since the last fact: the tasks ask
  distinct keys in a round, each uniformly among those not yet asked, so the asked key is uniform
  over the candidates. It answers the value most candidates hold (a tie goes to the value stated
  last). This is the Bayes-optimal keyless answer for these generators (values are uniform and
  independent of the keys), so no strategy that ignores the key does better on average.
* ``rule="chains"`` (multi-hop): a chain ends in an entity that is stated as a fact's second
  element and never as a first; the question's answer is such an end, uniformly among the chains
  not yet asked (their answers appeared in earlier questions). It answers the first end not yet
  given, which is again Bayes-optimal.

:func:`keyless_floor` evaluates it on a task, with :func:`rule_for` choosing the rule from the
task's name.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from .checks import check_choice
from .tasks import CELL, TokenLayout

RULES = ("facts", "chains")


def rule_for(task) -> str:
    """``"chains"`` for multi-hop (also inside a length-extrapolation protocol), else ``"facts"``."""
    name = getattr(task, "base", None) or getattr(task, "name", "")
    if name == "needle_family" and getattr(task, "variant", None) == "multi_value":
        raise ValueError("the facts rule is not the floor of multi-value (after the first answer the key is "
                         "known): read NeedleFamilyStream.keyless, the family's own floor")
    return "chains" if name == "multi_hop" else "facts"


def _facts_answer(cells: list[tuple[int, int, int]], layout: TokenLayout) -> int | None:
    value_of, order, asked = {}, {}, set()
    for i, (marker, first, second) in enumerate(cells):
        if marker == layout.SET:
            value_of[first], order[first] = second, i
            asked = set()                            # a new fact opens a new round of questions
        elif marker == layout.ASK:
            asked.add(first)
    candidates = [k for k in value_of if k not in asked] or list(value_of)
    if not candidates:
        return None
    counts = Counter(value_of[k] for k in candidates)
    latest = {}
    for k in candidates:
        latest[value_of[k]] = max(latest.get(value_of[k], -1), order[k])
    return max(counts, key=lambda v: (counts[v], latest[v]))


def _chains_answer(cells: list[tuple[int, int, int]], layout: TokenLayout) -> int | None:
    firsts, seconds, answered = set(), [], set()
    for marker, first, second in cells:
        if marker == layout.SET:
            firsts.add(first)
            seconds.append(second)
        elif marker == layout.ASK:
            answered.add(second)
    ends = [e for e in dict.fromkeys(seconds) if e not in firsts]
    open_ends = [e for e in ends if e not in answered] or ends
    return open_ends[0] if open_ends else None


class KeylessBaseline(nn.Module):
    """The best strategy that ignores the asked key (module docstring), as a causal model: at the
    key of every ``ASK k`` cell its logits pick the keyless answer, elsewhere they are zero. It has
    no parameters and ``tokens[t]`` never enters the prediction at ``t``."""

    def __init__(self, rule: str = "facts", layout: TokenLayout | None = None):
        super().__init__()
        self.rule = check_choice("rule", rule, RULES)
        self.layout = layout or TokenLayout()
        self.vocab_size = self.layout.vocab_size

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        lay = self.layout
        B, T = tokens.shape
        logits = torch.zeros(B, T, self.vocab_size)
        answer = _facts_answer if self.rule == "facts" else _chains_answer
        for b, row in enumerate(tokens.tolist()):
            cells = [tuple(row[c * CELL:(c + 1) * CELL]) for c in range(T // CELL)]
            for c, (marker, _, _) in enumerate(cells):
                t = c * CELL + 1                                # the asked key's position
                if marker == lay.ASK and t < T:
                    guess = answer(cells[:c], lay)              # only cells before the question
                    if guess is not None:
                        logits[b, t, guess] = 1.0
        return logits


def keyless_floor(task, *, num_examples: int = 512, seed: int = 0, digits: int = 4) -> dict:
    """:func:`memorylib.training.evaluate` of :class:`KeylessBaseline` (rule from :func:`rule_for`)
    on ``task``: its ``accuracy`` with the 95 % interval, on the held-out sequences every model is
    scored on with the same ``seed``."""
    from .training import evaluate

    baseline = KeylessBaseline(rule_for(task), getattr(task, "layout", None))
    return evaluate(baseline, task, num_examples=num_examples, seed=seed, digits=digits)
