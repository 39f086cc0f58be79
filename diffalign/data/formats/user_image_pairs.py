"""``user_image_pairs``: image pairs tagged with the user who judged them (PPD).

Pick-a-Pic schema: the ``user_id`` column; jsonl: ``"user"``. A user is an integer or a non-empty
string; items carry it as ``user`` (a string), batches as ``users``.

With ``ImageOptions.user_embeddings`` (a ``diffalign users embed`` folder built from the same data),
every item also carries ``user_embedding`` (D,): the embedding of one of its user's chunks of few-shot
pairs, drawn afresh for each epoch from the chunks that do not contain the pair itself (PPD,
research/diffusion_methods_B.md §3.4: a pair never conditions on its own shots; re-drawing the chunk
is the augmentation the spec recommends). The draw is seeded by (seed, epoch, item), so a resumed run
sees the same embeddings. Pairs without such a chunk cannot be trained on and are counted: those of
users the embedder skipped (fewer usable pairs than shots) and those whose user's only chunks contain
them. A chunk naming a row that is not a usable pair of that user in this data means the embeddings
were built from other data: a ``DataError`` before the first step.
"""

from __future__ import annotations

import random

from diffalign.data.errors import DataError, SkipReport
from diffalign.data.examples import Example, ImageExamples, ImageOptions, collate_examples, finish_examples, resolve_examples
from diffalign.data.formats.image_pairs import ImagePairs
from diffalign.data.registry import register_format
from diffalign.data.tables import Table
from diffalign.data.user_embeddings import UserEmbeddings

NO_EMBEDDING = "pairs of users without an embedding"
ONLY_OWN_SHOTS = "pairs whose user's every embedding was built from them"


def user_field(value, where: str, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise DataError(f"{where}, field {name!r}: expected a user id (an integer or a non-empty string), got {value!r}")
    return str(value)


class UserConditionedExamples(ImageExamples):
    """``ImageExamples`` whose items also carry a ``user_embedding`` (see the module docstring)."""

    def __init__(self, table, examples, options, skipped, embeddings: UserEmbeddings, usable: dict[int, list[int]]):
        super().__init__(table, examples, options, skipped)
        self.embeddings = embeddings
        self.usable = usable

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        rng = random.Random(f"{self.options.seed}/{self.epoch}/{index}/user")
        item["user_embedding"] = self.embeddings.embeddings[rng.choice(self.usable[self.examples[index].index])]
        return item


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

    def build(self, table: Table, options: ImageOptions):
        if options.user_embeddings is None:
            return super().build(table, options)
        embeddings = UserEmbeddings.load(options.user_embeddings)
        skipped = SkipReport()
        examples = resolve_examples(table, self.resolver(table, skipped), options.skip_bad_rows, skipped)
        check_chunks_match(table, examples, embeddings, options.user_embeddings)
        kept, usable = [], {}
        known_users = set(embeddings.users())
        for example in examples:
            user = example.extras["user"]
            chunks = embeddings.chunks_excluding(user, example.index)
            if not chunks:
                skipped.add(NO_EMBEDDING if user not in known_users else ONLY_OWN_SHOTS, f"{table.where(example.index)} (user {user})")
                continue
            kept.append(example)
            usable[example.index] = chunks
        dataset = finish_examples(table, kept, options, skipped, UserConditionedExamples, embeddings=embeddings, usable=usable)
        return dataset, collate_examples


def check_chunks_match(table: Table, examples: list[Example], embeddings: UserEmbeddings, folder: str) -> None:
    """Every shot of every chunk must be a usable pair of the chunk's user in this data."""
    users = {example.index: example.extras["user"] for example in examples}
    for position, chunk in enumerate(embeddings.chunks):
        for row in chunk.rows:
            if users.get(row) != chunk.user:
                found = f"user {users[row]}'s pair" if row in users else "not a usable pair (a tie, a bad row or past the end)"
                raise DataError(
                    f"{folder}: chunk {position} (user {chunk.user}) names row {row}, which in {table.name} is {found}; "
                    f"were the user embeddings built from another --data? Rebuild them with diffalign users embed"
                )
