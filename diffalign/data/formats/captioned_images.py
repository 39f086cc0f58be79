"""``captioned_images``: one image, its caption and optional perturbed captions (TPO).

jsonl / datasets rows ``{"image", "prompt", "negative_prompts": [...]}``; ``negative_prompts`` is a
list of non-empty strings and may be absent or empty. Items: ``prompt``, ``image_pixels`` (or its
cached latents), ``negative_prompts``; batches also carry ``negative_counts`` (B,).
"""

from __future__ import annotations

from diffalign.data.examples import Example, ImageFormat, require, string_field, string_list_field
from diffalign.data.registry import register_format


@register_format
class CaptionedImages(ImageFormat):
    name = "captioned_images"
    description = "one image + its caption + optional perturbed captions (jsonl {image, prompt, negative_prompts})"

    def resolver(self, table, skipped):
        def resolve(index: int) -> Example:
            record, where = table.row(index), table.where(index)
            prompt = string_field(record.get("prompt"), where, "prompt")
            require(record, where, "image")
            negatives = record.get("negative_prompts")
            negatives = [] if negatives is None else string_list_field(negatives, where, "negative_prompts")
            return Example(index, prompt, {"image": "image"}, {"negative_prompts": negatives})

        return resolve
