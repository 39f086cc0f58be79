"""``image_pairs``: a prompt, a chosen and a rejected image (Diffusion-DPO, MaPO, InPO).

Two schemas:

- **Pick-a-Pic v2** (``yuvalkirstain/pickapic_v2``): ``caption``, ``jpg_0``, ``jpg_1`` (image bytes),
  ``label_0`` in {0, 0.5, 1}. ``label_0 == 1`` means jpg_0 won, ``label_0 == 0`` means jpg_1 won;
  ties (0.5) are dropped and counted, never turned into a winner (research/diffusion_methods_A.md
  §1.5, Q6). Read through ``datasets``: a hub id, a ``save_to_disk`` folder, a parquet file.
- **diffalign jsonl**: ``{"prompt", "chosen", "rejected"}`` per line, image paths relative to the
  file (what ``diffalign pairs`` writes).

Subclasses add fields (``scored_image_pairs``, ``user_image_pairs``) or keep only the winner
(``chosen_images``) through the ``extras`` hooks and ``roles``.
"""

from __future__ import annotations

import math
from typing import Optional

from diffalign.data.errors import DataError, SkipReport
from diffalign.data.examples import Example, ImageFormat, require, string_field
from diffalign.data.registry import register_format
from diffalign.data.tables import Table

PICKAPIC_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0")


def is_pickapic(table: Table) -> bool:
    return not isinstance(table.records, list) or "jpg_0" in table.columns


@register_format
class ImagePairs(ImageFormat):
    name = "image_pairs"
    description = "prompt + chosen image + rejected image (Pick-a-Pic v2 schema or diffalign jsonl)"
    roles = ("chosen", "rejected")
    """Which images of the pair an example keeps (``chosen_images`` keeps the winner alone, as ``image``)."""

    def resolver(self, table: Table, skipped: SkipReport):
        return self._pickapic_resolver(table, skipped) if is_pickapic(table) else self._jsonl_resolver(table)

    # ------------------------------------------------------------------------- hooks
    def pickapic_columns(self) -> tuple[str, ...]:
        """Columns beyond ``PICKAPIC_COLUMNS`` that this format reads."""
        return ()

    def pickapic_extras(self, table: Table, columns: dict[str, list], index: int, winner: int) -> dict:
        return {}

    def jsonl_extras(self, record: dict, where: str) -> dict:
        return {}

    # ------------------------------------------------------------------------- schemas
    def _images(self, chosen: str, rejected: str) -> dict[str, str]:
        if self.roles == ("chosen", "rejected"):
            return {"chosen": chosen, "rejected": rejected}
        return {"image": chosen}

    def _pickapic_resolver(self, table: Table, skipped: SkipReport):
        needed = PICKAPIC_COLUMNS + self.pickapic_columns()
        missing = [column for column in needed if column not in table.columns]
        if missing:
            raise DataError(
                f"{table.name}: missing column(s) {', '.join(repr(m) for m in missing)}; the {self.name} format reads "
                f"the Pick-a-Pic v2 schema {needed} or a diffalign jsonl; found columns: {', '.join(table.columns)}"
            )
        columns = {column: table.column(column) for column in needed if not column.startswith("jpg_")}

        def resolve(index: int) -> Optional[Example]:
            where = table.where(index)
            prompt = string_field(columns["caption"][index], where, "caption")
            winner = pickapic_winner(columns["label_0"][index], where)
            if winner is None:
                skipped.add("ties (label_0 = 0.5)", where)
                return None
            images = self._images(f"jpg_{winner}", f"jpg_{1 - winner}")
            return Example(index, prompt, images, self.pickapic_extras(table, columns, index, winner))

        return resolve

    def _jsonl_resolver(self, table: Table):
        def resolve(index: int) -> Example:
            record, where = table.row(index), table.where(index)
            prompt = string_field(record.get("prompt"), where, "prompt")
            if "image" in record and "chosen" not in record:
                if self.roles != ("image",):
                    raise DataError(f"{where}: has a single 'image'; the {self.name} format needs 'chosen' and 'rejected' images")
                require(record, where, "image")
                return Example(index, prompt, {"image": "image"})
            require(record, where, "chosen", "rejected")
            return Example(index, prompt, self._images("chosen", "rejected"), self.jsonl_extras(record, where))

        return resolve


def pickapic_winner(label, where: str) -> Optional[int]:
    """0 or 1 (the winning image's suffix), or None for a tie."""
    if isinstance(label, (int, float)) and not isinstance(label, bool) and not math.isnan(label):
        if label == 1:
            return 0
        if label == 0:
            return 1
        if label == 0.5:
            return None
    raise DataError(f"{where}, field 'label_0': expected 0, 0.5 or 1, got {label!r}")
