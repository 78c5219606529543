"""What one seed study declares: the thread, its question, each side's claims quoted from it,
the litmus scenarios before and after the patch, the timed runs and recordings that price it,
the figures published in the thread, and the conclusion with the verdicts it rests on.

Not provided: judgement - a conclusion whose verdicts the checker does not reproduce, or whose
figures its seed's ``disagrees`` finds against it, is printed with a note saying which.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from vtdsim.study.costs import Costs
from vtdsim.study.evidence import Figure
from vtdsim.study.recordings import Recordings


@dataclass(frozen=True)
class Claim:
    who: str
    when: str
    quote: str  # verbatim from the thread (shared/seeds/<file>)


@dataclass(frozen=True)
class Context:
    """What a seed's cost function may use."""

    costs: Costs
    recordings: Recordings


@dataclass(frozen=True)
class Seed:
    number: str
    title: str
    thread: str  # the file in shared/seeds
    question: str
    claims: tuple[Claim, ...]
    before: tuple[str, ...]  # litmus scenarios: the code before the patch (or the one side)
    after: tuple[str, ...]  # after the patch (or the other side)
    recordings: tuple[str, ...]  # recordings the cost function reads (replayed ahead of time)
    figures: Callable[[Context], list[Figure]]
    published: tuple[Figure, ...]
    conclusion: str
    rests_on: dict[str, str] = field(default_factory=dict)  # scenario -> verdict word
    open_questions: str = ""
    # what in the figures would contradict the conclusion ("" when nothing does)
    disagrees: Callable[[list[Figure]], str] | None = None

    def scenarios(self) -> list[str]:
        return [*self.before, *self.after]

    def note_on(self, words: dict[str, str], figures: list[Figure] = ()) -> str:
        """Empty when the checker gave the verdicts the conclusion rests on and the figures
        bear it out; otherwise the scenarios whose verdict differs, and what in the figures
        does not fit."""
        notes = []
        differ = [f"{name} is {words.get(name, 'not run')}, the conclusion assumes {want}"
                  for name, want in sorted(self.rests_on.items()) if words.get(name) != want]
        if differ:
            notes.append("the verdicts differ from those this conclusion rests on: "
                         + "; ".join(differ))
        against = self.disagrees(list(figures)) if self.disagrees else ""
        if against:
            notes.append(f"the figures do not bear this conclusion out: {against}")
        return "; ".join(notes)
