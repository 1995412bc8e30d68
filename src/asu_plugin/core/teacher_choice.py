"""The automatic teacher choice (``tau=auto`` / ``layers=auto``): the rule, on measured numbers.

Why: ASU's forget target is the original model with its attention at temperature tau. The
paper's setting (tau 2.3 on every layer) suits Llama-2-7b, but on SmolLM2-135M the same
teacher ends its turn at once or loops, and the unlearned model learns to answer nothing.
The rule picks, from the model and the forget set alone (no retain model, no evaluation split,
no unlearning run), the teacher that removes the most of the forget facts while it still
speaks. The measurements are :mod:`.teacher_health`'s; the search that runs them is
:mod:`.teacher_search`.

**Candidates.** tau in :data:`TAUS` (1.5, 2.0, 2.3, 2.8: the paper's stable range around its
2.3) x the layer sets of :data:`LAYER_SETS` over the model's L decoder layers: all [0, L),
first half [0, L/2), first third [0, L/3), first sixth [0, L/6), middle third [L/3, 2L/3),
last third [2L/3, L) (integer division, at least one layer). ``tau=auto`` with fixed layers
tries the four taus on those layers; ``layers=auto`` with a fixed tau tries the six layer sets.

**1. Screen, teacher-forced (every candidate; one forward each on the first 8 forget rows).**
A candidate is out when any of these holds (figures of :func:`.teacher_health.teacher_forced_figures`):

* ``special_first > 0.10`` — on rows with a question, the teacher's probability mass on special
  tokens (end-of-turn and friends) at the first answer position: the student would learn to
  end its turn before saying anything;
* ``special_nonfinal > 0.02`` — the same mass at answer positions whose gold token is not
  special: the student would learn to stop mid-answer;
* ``function_damage > 1.0`` nats/token — the teacher's NLL increase on the gold answers'
  *function* tokens (stop words, punctuation; :mod:`.words`): a teacher that no longer predicts
  "the", "of", "." does not speak, it loops or babbles;
* ``removal < 0.25`` nats/token — the NLL increase on the gold answers' *factual* tokens (the
  facts the teacher no longer predicts): a teacher that keeps the facts teaches nothing.

Without word classes (no text) the function and factual figures are taken over every non-final
answer token; the bounds stay the same.

**2. Rank** the survivors by ``removal``, largest first. Tie-break: candidates within 0.05
nats/token of the best removal left are tied, and among them the smaller tau wins, then the
fewer layers, then the earlier first layer (the gentler teacher: the paper's own ablation finds
a few shallow layers nearly as good as all of them).

**3. Generate for at most 3 finalists** (forget sets with questions only): in rank order,
greedy answers of the candidate teacher to up to 8 forget questions (32 new tokens). A finalist
is out when more than 25% of its answers are empty, or more than 25% loop (word-repetition rate
> 0.25), or more than 25% are not fluent (empty, looping, fewer than 2 words, or the *original*
model's mean NLL of the answer above 5 nats/token). The first finalist that passes is the
choice: it removes the most among the teachers that pass. Forget sets without questions
(MUSE, WMDP text) skip this step: the choice is the first survivor of the screen.

**4. Refuse** when no candidate passes: :class:`TeacherChoiceError` names the best candidate
(the first finalist, else the screened candidate failing the fewest bounds, then the largest
removal), its failure with figures, and what to try.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

from .errors import SmoothingError

TAUS = (1.5, 2.0, 2.3, 2.8)
LAYER_SETS = ("all", "first half", "first third", "first sixth", "middle third", "last third")


@dataclass(frozen=True)
class Rule:
    """The rule's bounds (see the module docstring); the defaults are the documented rule."""

    screen_rows: int = 8
    special_first_max: float = 0.10
    special_nonfinal_max: float = 0.02
    function_damage_max: float = 1.0
    min_removal: float = 0.25
    tie_nats: float = 0.05
    finalists: int = 3
    prompts: int = 8
    max_new_tokens: int = 32
    empty_max: float = 0.25
    loop_max: float = 0.25
    not_fluent_max: float = 0.25

    def as_dict(self) -> dict:
        return asdict(self)


DEFAULT_RULE = Rule()


class TeacherChoiceError(SmoothingError):
    """No candidate teacher passes the rule; the message names the best one's failure and the fix."""


def layer_set(name: str, num_layers: int) -> tuple[int, ...]:
    """The layer indices of a named set of :data:`LAYER_SETS` on a model with ``num_layers``."""
    n = int(num_layers)
    if n < 1:
        raise SmoothingError(f"a model needs at least one layer, got num_layers={num_layers}")
    bounds = {
        "all": (0, n),
        "first half": (0, n // 2),
        "first third": (0, n // 3),
        "first sixth": (0, n // 6),
        "middle third": (n // 3, 2 * n // 3),
        "last third": (2 * n // 3, n),
    }
    if name not in bounds:
        raise SmoothingError(f"unknown layer set {name!r}; known: {', '.join(LAYER_SETS)}")
    start, stop = bounds[name]
    stop = max(stop, start + 1)  # at least one layer on tiny models
    return tuple(range(start, min(stop, n))) or (n - 1,)


@dataclass(frozen=True)
class Candidate:
    """One teacher: tau and the layers it smooths (``name`` says which set they came from)."""

    tau: float
    layers: tuple[int, ...]
    name: str

    @property
    def key(self) -> str:
        span = f"{self.layers[0]}-{self.layers[-1]}" if len(self.layers) > 1 else f"{self.layers[0]}"
        return f"tau={self.tau:g} layers={self.name} ({span})"

    @property
    def layers_arg(self) -> str:
        """The layers as ``smoothed_attention`` and ``method_args.layers`` take them."""
        span = f"{self.layers[0]}-{self.layers[-1]}"
        return span if len(self.layers) > 1 else str(self.layers[0])

    def gentleness(self) -> tuple:
        """Tie-break order: smaller tau, fewer layers, earlier first layer."""
        return (self.tau, len(self.layers), self.layers[0])


def candidates(num_layers: int, tau=None, layers=None) -> list[Candidate]:
    """The candidate grid; a fixed ``tau`` (a number) or fixed ``layers`` (indices, already
    validated) narrows it to the other axis."""
    taus = TAUS if tau is None else (float(tau),)
    if layers is None:
        sets = [(name, layer_set(name, num_layers)) for name in LAYER_SETS]
        seen, unique = set(), []
        for name, ids in sets:  # tiny models: two names can give the same indices
            if ids not in seen:
                seen.add(ids)
                unique.append((name, ids))
        sets = unique
    else:
        sets = [("configured", tuple(sorted(set(int(i) for i in layers))))]
    return [Candidate(float(t), ids, name) for t in taus for name, ids in sets]


@dataclass
class Screened:
    """A candidate with its teacher-forced figures and the bounds it breaks."""

    candidate: Candidate
    figures: dict
    failures: list[str] = field(default_factory=list)


def screen_failures(figures: dict, rule: Rule = DEFAULT_RULE) -> list[str]:
    """The screen's bounds that ``figures`` break, each as a sentence with its numbers."""
    out = []
    first = figures.get("special_first")
    if first is not None and first > rule.special_first_max:
        out.append(f"special-token mass at the first answer position {first:.3f} > {rule.special_first_max:g} "
                   "(the student would learn to end its turn at once)")
    nonfinal = figures.get("special_nonfinal")
    if nonfinal is not None and nonfinal > rule.special_nonfinal_max:
        out.append(f"special-token mass at non-final answer positions {nonfinal:.3f} > {rule.special_nonfinal_max:g} "
                   "(the student would learn to stop mid-answer)")
    damage = figures.get("function_damage")
    if damage is not None and damage > rule.function_damage_max:
        out.append(f"function-token NLL increase {damage:.2f} > {rule.function_damage_max:g} nats/token "
                   "(the teacher no longer forms sentences)")
    removal = figures.get("removal")
    if removal is None or removal < rule.min_removal:
        shown = "n/a" if removal is None else f"{removal:.2f}"
        out.append(f"factual-token NLL increase {shown} < {rule.min_removal:g} nats/token (it keeps the facts)")
    return out


def rank(screened: Sequence[Screened], rule: Rule = DEFAULT_RULE) -> list[Screened]:
    """Survivors of the screen in rule order: largest removal first, ties (within
    ``rule.tie_nats`` of the best left) to the gentler teacher."""
    left = [s for s in screened if not s.failures]
    order = []
    while left:
        best = max(s.figures["removal"] for s in left)
        tied = [s for s in left if s.figures["removal"] >= best - rule.tie_nats]
        pick = min(tied, key=lambda s: s.candidate.gentleness())
        order.append(pick)
        left.remove(pick)
    return order


def generation_failures(figures: dict, rule: Rule = DEFAULT_RULE) -> list[str]:
    """The generation bounds that a finalist's answer figures break (see :func:`.teacher_health.answer_figures`)."""
    n = figures.get("n") or 0
    out = []
    for key, bound, what in (
        ("empty_rate", rule.empty_max, "empty"),
        ("loop_rate", rule.loop_max, "looping"),
        ("not_fluent_rate", rule.not_fluent_max, "not fluent"),
    ):
        value = figures.get(key)
        if value is not None and value > bound:
            out.append(f"{round(value * n)} of {n} greedy answers {what} ({value:.0%} > {bound:.0%})")
    return out


def best_failure(screened: Sequence[Screened], finalists: Sequence[tuple[Screened, list[str]]]) -> tuple[Screened, list[str]]:
    """The candidate to name when nothing passes: the first finalist, else the screened
    candidate breaking the fewest bounds (then the largest removal)."""
    if finalists:
        return finalists[0]
    best = min(screened, key=lambda s: (len(s.failures), -(s.figures.get("removal") or 0.0), s.candidate.gentleness()))
    return best, best.failures


def refusal(screened: Sequence[Screened], finalists: Sequence[tuple[Screened, list[str]]]) -> TeacherChoiceError:
    """The error for a model / forget set on which no candidate passes."""
    best, failures = best_failure(screened, finalists)
    removal_only = all("keeps the facts" in f for f in failures)
    hint = (
        "try a higher tau or more layers (e.g. tau=2.8 layers=null), or check that the model has learned the forget set"
        if removal_only
        else "try a lower tau (e.g. tau=1.5) or fewer layers (e.g. the first sixth), or a larger model"
    )
    return TeacherChoiceError(
        f"no candidate teacher passes the automatic choice ({len(screened)} screened, {len(finalists)} generated): "
        f"the best, {best.candidate.key}, fails: {'; '.join(failures)}. {hint[0].upper() + hint[1:]}; to train "
        "with a setting anyway, set trainer.method_args.tau / layers explicitly."
    )


def decide(screened: Sequence[Screened], generate, rule: Rule = DEFAULT_RULE) -> tuple[Screened, list[dict]]:
    """Apply steps 2-4 of the rule. ``generate(candidate)`` returns a finalist's answer figures,
    or None when the forget set has no questions (then the first survivor is the choice).
    Returns (the choice, the finalists' records); raises :class:`TeacherChoiceError`."""
    ranked = rank(screened, rule)
    tried: list[tuple[Screened, list[str]]] = []
    records = []
    for finalist in ranked[: rule.finalists]:
        figures = generate(finalist.candidate)
        failures = [] if figures is None else generation_failures(figures, rule)
        records.append({"candidate": finalist.candidate.key, "generation": figures, "failures": failures})
        if not failures:
            return finalist, records
        tried.append((finalist, failures))
    raise refusal(screened, tried)


def with_class_figures(figures: dict) -> dict:
    """``figures`` plus ``removal`` and ``function_damage``: the factual- and function-token NLL
    increases, or the all-token increase where the rows carry no word classes."""
    by_class = figures.get("by_class") or {}
    factual = (by_class.get("factual") or {}).get("nll_increase")
    function = (by_class.get("function") or {}).get("nll_increase")
    overall = figures.get("gold_nll_increase")
    return {
        **figures,
        "removal": factual if factual is not None else overall,
        "function_damage": function if function is not None else overall,
    }


__all__ = [
    "Candidate", "DEFAULT_RULE", "LAYER_SETS", "Rule", "Screened", "TAUS", "TeacherChoiceError",
    "candidates", "decide", "generation_failures", "layer_set", "rank", "refusal", "screen_failures",
    "with_class_figures",
]
