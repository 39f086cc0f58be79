"""``labelled_images``: one image, its prompt and a desirable / undesirable label (Diffusion-KTO).

Row shapes (a jsonl may mix the first two):

- jsonl ``{"prompt", "image", "label": true|false}``: one example, ``label`` true = desirable;
- a preference pair in either ``image_pairs`` schema (diffalign jsonl ``{"prompt", "chosen",
  "rejected"}``, or Pick-a-Pic v2 ``caption``, ``jpg_0``, ``jpg_1``, ``label_0``): two examples, the
  preferred image desirable and the other undesirable. Pick-a-Pic ties (``label_0`` = 0.5) have no
  preferred image: they are dropped and counted, as in ``image_pairs``.

Items: ``prompt``, ``image_pixels`` (or its cached latents), ``label`` (bool); batches carry ``label``
as a list of bools. A latent cache built with this format stores each example as a row of its own
(for a pair: the row with one image's reference); one built with ``image_pairs`` stores a pair in one
row. Both read back as the same examples.
"""

from __future__ import annotations

from typing import Any, Optional

from diffalign.data.cache import IMAGE_REFERENCE
from diffalign.data.errors import DataError, SkipReport
from diffalign.data.examples import Example, collate_examples, finish_examples, require, resolve_examples, string_field
from diffalign.data.formats.image_pairs import ImagePairs, is_pickapic, pickapic_winner
from diffalign.data.registry import register_format
from diffalign.data.tables import Table


@register_format
class LabelledImages(ImagePairs):
    name = "labelled_images"
    description = ("prompt + one image + desirable/undesirable label (jsonl {prompt, image, label}); an image pair "
                   "(either image_pairs schema) gives a desirable and an undesirable example")

    def build(self, table: Table, options):
        """As ``ImageFormat.build``, except that a row resolves to a list of examples (two for a pair)."""
        skipped = SkipReport()
        rows = resolve_examples(table, self.resolver(table, skipped), options.skip_bad_rows, skipped)
        return finish_examples(table, [example for row in rows for example in row], options, skipped), collate_examples

    def resolver(self, table: Table, skipped: SkipReport):
        cached = table.encoded is not None
        pickapic = is_pickapic(table) and not cached
        pairs = super().resolver(table, skipped) if pickapic else self._jsonl_resolver(table)

        def resolve(index: int) -> Optional[list[Example]]:
            if pickapic:
                pair = pairs(index)
                return None if pair is None else split_pair(pair)
            record, where = table.row(index), table.where(index)
            if cached and "label_0" in record:
                return cached_pickapic_images(record, where, index, skipped)
            if "chosen" in record or "rejected" in record:
                return split_pair(pairs(index), record if cached else None)
            return [labelled_example(record, where, index)]

        return resolve


def labelled_example(record: dict, where: str, index: int) -> Example:
    prompt = string_field(record.get("prompt"), where, "prompt")
    require(record, where, "image", "label")
    label = record["label"]
    if not isinstance(label, bool):
        raise DataError(f"{where}, field 'label': expected true (desirable) or false (undesirable), got {label!r:.80}")
    return Example(index, prompt, {"image": "image"}, {"label": label})


def split_pair(pair: Example, cached_record: Optional[dict] = None) -> list[Example]:
    """The pair's preferred image as a desirable example and the other as an undesirable one; from a
    cache, only the images the cached row references (this format caches each image in a row of its own)."""
    return [Example(pair.index, pair.prompt, {"image": column}, {"label": role == "chosen"})
            for role, column in pair.images.items()
            if cached_record is None or is_cached_image(cached_record.get(column))]


def cached_pickapic_images(record: dict, where: str, index: int, skipped: SkipReport) -> Optional[list[Example]]:
    """The images a cached Pick-a-Pic row references, labelled by ``label_0``."""
    prompt = string_field(record.get("caption"), where, "caption")
    winner = pickapic_winner(record.get("label_0"), where)
    if winner is None:
        skipped.add("ties (label_0 = 0.5)", where)
        return None
    return [Example(index, prompt, {"image": f"jpg_{side}"}, {"label": side == winner})
            for side in (winner, 1 - winner) if is_cached_image(record.get(f"jpg_{side}"))]


def is_cached_image(value: Any) -> bool:
    return isinstance(value, dict) and IMAGE_REFERENCE in value
