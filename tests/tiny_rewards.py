"""Tiny offline stand-ins for the real reward models, built through the same loading code paths.

Test-only (not shipped with the library; pytest puts ``tests/`` on ``sys.path``, so tests import it as
``from tiny_rewards import ...``):

- ``save_tiny_hps_checkpoint``: a small open_clip CLIP saved in HPSv2's layout (fp16 tensors under
  ``"state_dict"``) plus its JSON architecture config;
- ``save_tiny_pickscore``: a small transformers ``CLIPModel`` and ``CLIPProcessor`` in one folder;
- ``save_tiny_unifiedreward``: a Qwen2.5-VL judge (tokenizer trained with ``tokenizers``, research
  ``packaging.md`` §7) whose weights are set so that greedy decoding always answers ``answer``: every
  attention and MLP output is zeroed, so the last hidden state is the last token's embedding, and the
  embedding / LM-head rows chain "end of prompt" -> ``answer`` (one added token) -> ``<|im_end|>``.
"""

from __future__ import annotations

import json
import os

import torch

from diffalign.tiny import small_clip_tokenizer

TINY_OPEN_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}

QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def save_tiny_hps_checkpoint(folder: str, seed: int = 0, config: dict | None = None) -> tuple[str, str]:
    """Write ``tiny_hps.pt`` ({"state_dict": fp16 tensors}) and ``tiny_hps.json``; return both paths."""
    import open_clip

    config = config or TINY_OPEN_CLIP
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**config)
    checkpoint_path, config_path = os.path.join(folder, "tiny_hps.pt"), os.path.join(folder, "tiny_hps.json")
    torch.save({"state_dict": {key: value.half() for key, value in model.state_dict().items()}}, checkpoint_path)
    with open(config_path, "w") as handle:
        json.dump(config, handle)
    return checkpoint_path, config_path


def save_tiny_pickscore(folder: str, seed: int = 0) -> str:
    """A tiny ``CLIPModel`` + ``CLIPProcessor`` (LAION CLIP-H image settings at 224 px) saved to ``folder``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = small_clip_tokenizer(["a red circle on a blue background", "a photo of a cat", "a corgi astronaut"])
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=3,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    vocab_size = len(tokenizer)
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=77, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=224, patch_size=32),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def _qwen_tokenizer(corpus: list[str], answer: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=QWEN_SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    trained = json.loads(bpe.to_str())["model"]
    merges = [tuple(merge) if isinstance(merge, list) else tuple(merge.split()) for merge in trained["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=trained["vocab"], merges=merges, model_max_length=4096)
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS[1:]})
    tokenizer.add_tokens([AddedToken(answer, special=False, normalized=False)])
    return tokenizer


def save_tiny_unifiedreward(folder: str, answer: str, seed: int = 0) -> str:
    """A tiny Qwen2.5-VL judge that always answers ``answer``, saved with its processor to ``folder``."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    from diffalign.rewards.unifiedreward_prompts import pair_rank_prompt, point_score_prompt

    tokenizer = _qwen_tokenizer([pair_rank_prompt("a red circle"), point_score_prompt("a blue square"), answer], answer)
    pixels = dict(min_pixels=56 * 56, max_pixels=112 * 112)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2, **pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tokenizer,
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], bos_token_id=None,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=56, out_hidden_size=64, fullatt_block_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    prompt_end = tokenizer("\n")["input_ids"][-1]  # the generation prompt "<|im_start|>assistant\n" ends here
    answer_id = tokenizer.convert_tokens_to_ids(answer)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")) and "visual" not in name:
                parameter.zero_()
        embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        embedding.zero_()
        head.zero_()
        embedding[prompt_end, 0] = embedding[answer_id, 1] = 1.0
        head[answer_id, 0] = head[ids["<|im_end|>"], 1] = 10.0
    processor.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder
