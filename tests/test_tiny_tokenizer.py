"""The offline CLIP tokenizer rebuilt from open_clip's BPE file gives OpenAI CLIP's token ids."""

import open_clip
import torch

from diffalign.tiny import clip_tokenizer_from_open_clip


def test_ids_equal_open_clip_tokenizer():
    texts = ["a photo of a cat", "A Corgi, astronaut!  riding a horse", "café crème brûlée", "x" * 300]
    ours = clip_tokenizer_from_open_clip()
    encoded = ours(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    ids = encoded.input_ids.masked_fill(encoded.attention_mask == 0, 0)  # open_clip pads with 0
    assert len(ours) == 49408
    assert torch.equal(ids, open_clip.get_tokenizer("ViT-B-32")(texts))
