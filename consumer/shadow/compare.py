"""A shadow verdict against the production verdict for the same input."""

from __future__ import annotations

from dataclasses import dataclass

from schemas import Verdict


@dataclass(frozen=True, slots=True)
class Comparison:
    """How the candidate's verdict differs from production's."""

    #: Both chose the same action (allow, review, block).
    agrees: bool
    #: Categories the candidate flags that production does not.
    flagged: tuple[str, ...]
    #: Categories production flags that the candidate does not.
    unflagged: tuple[str, ...]


def compare(production: Verdict, shadow: Verdict) -> Comparison:
    """Compare two verdicts; a category one policy lacks counts as not flagged there."""
    ours = {name for name, score in production.categories.items() if score.flagged}
    theirs = {name for name, score in shadow.categories.items() if score.flagged}
    return Comparison(
        agrees=production.action is shadow.action,
        flagged=tuple(sorted(theirs - ours)),
        unflagged=tuple(sorted(ours - theirs)),
    )
