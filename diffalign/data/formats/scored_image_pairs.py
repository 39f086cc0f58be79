"""``scored_image_pairs``: image pairs with both images' reward scores (SmPO).

Pick-a-Pic schema: ``ps_score_0`` / ``ps_score_1`` (floats or 1-element lists, as SmPO's
preprocessing stores PickScores); jsonl: ``chosen_score`` / ``rejected_score`` (what ``diffalign
pairs`` writes). Items carry ``chosen_score`` / ``rejected_score``.
"""

from __future__ import annotations

from diffalign.data.examples import require, score_field
from diffalign.data.registry import register_format
from diffalign.data.formats.image_pairs import ImagePairs


@register_format
class ScoredImagePairs(ImagePairs):
    name = "scored_image_pairs"
    description = "image pairs that also carry both images' reward scores"

    def pickapic_columns(self):
        return ("ps_score_0", "ps_score_1")

    def pickapic_extras(self, table, columns, index, winner):
        where = table.where(index)
        return {"chosen_score": score_field(columns[f"ps_score_{winner}"][index], where, f"ps_score_{winner}"),
                "rejected_score": score_field(columns[f"ps_score_{1 - winner}"][index], where, f"ps_score_{1 - winner}")}

    def jsonl_extras(self, record, where):
        require(record, where, "chosen_score", "rejected_score")
        return {"chosen_score": score_field(record["chosen_score"], where, "chosen_score"),
                "rejected_score": score_field(record["rejected_score"], where, "rejected_score")}
