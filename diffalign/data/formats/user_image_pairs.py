"""``user_image_pairs``: image pairs tagged with the user who judged them (PPD).

Pick-a-Pic schema: the ``user_id`` column; jsonl: ``"user"``. A user is an integer or a non-empty
string; items carry it as ``user`` (a string), batches as ``users``.
"""

from __future__ import annotations

from diffalign.data.errors import DataError
from diffalign.data.registry import register_format
from diffalign.data.formats.image_pairs import ImagePairs


def user_field(value, where: str, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise DataError(f"{where}, field {name!r}: expected a user id (an integer or a non-empty string), got {value!r}")
    return str(value)


@register_format
class UserImagePairs(ImagePairs):
    name = "user_image_pairs"
    description = "image pairs tagged with a user (Pick-a-Pic v2 user_id, or jsonl \"user\")"

    def pickapic_columns(self):
        return ("user_id",)

    def pickapic_extras(self, table, columns, index, winner):
        return {"user": user_field(columns["user_id"][index], table.where(index), "user_id")}

    def jsonl_extras(self, record, where):
        return {"user": user_field(record.get("user"), where, "user")}
