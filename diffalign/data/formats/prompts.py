"""``prompts``: one prompt per row, optionally with an image (methods without preference data,
such as Self-NPO, which may seed from real images).

Sources: a ``.txt`` file with one prompt per line (blank lines skipped), or jsonl / datasets rows
``{"prompt"}`` or ``{"prompt", "image"}`` (image paths relative to the jsonl). Either every row has
an image or none has. Items: ``prompt``, and ``image_pixels`` (or its cached latents) with an image.
"""

from __future__ import annotations

from diffalign.data.errors import DataError
from diffalign.data.examples import Example, ImageFormat, require, string_field
from diffalign.data.registry import register_format


@register_format
class Prompts(ImageFormat):
    name = "prompts"
    description = "a prompt per row (.txt lines or jsonl {prompt}), optionally with an image ({prompt, image})"

    def resolver(self, table, skipped):
        if "prompt" not in table.columns:
            raise DataError(f"{table.name}: the prompts format needs a 'prompt' field; found {', '.join(table.columns)}")
        with_images = bool(len(table)) and table.row(0).get("image") is not None

        def resolve(index: int) -> Example:
            record, where = table.row(index), table.where(index)
            prompt = string_field(record.get("prompt"), where, "prompt")
            if (record.get("image") is not None) != with_images:
                first = "has an 'image'" if with_images else "has none"
                raise DataError(f"{where}: either every row has an 'image' or none has ({table.where(0)} {first})")
            if with_images:
                require(record, where, "image")
                return Example(index, prompt, {"image": "image"})
            return Example(index, prompt)

        return resolve
