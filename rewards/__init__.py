"""Scorers: pointwise rewards and pairwise judges behind one interface, and preference-pair building.

Installed as ``diffalign.rewards`` (DESIGN.md §2).
"""

from diffalign.rewards.base import PairwiseResult, PairwiseScorer, Scorer, get_scorer, register_scorer, registered_scorers

__all__ = ["PairwiseResult", "PairwiseScorer", "Scorer", "get_scorer", "register_scorer", "registered_scorers"]
