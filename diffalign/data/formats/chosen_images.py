"""``chosen_images``: a prompt and one preferred image (SFT).

Image pairs (either ``image_pairs`` schema) are reduced to their winner; jsonl rows may also be
``{"prompt", "image"}``. The item's image role is ``image``.
"""

from __future__ import annotations

from diffalign.data.registry import register_format
from diffalign.data.formats.image_pairs import ImagePairs


@register_format
class ChosenImages(ImagePairs):
    name = "chosen_images"
    description = "prompt + one preferred image (image pairs are reduced to their winner; or jsonl {prompt, image})"
    roles = ("image",)
