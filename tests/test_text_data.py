"""Tokenisation, masking and log-probs of the text side on a tiny tokenizer and LM."""


import pytest
import torch

import diffalign  # noqa: F401
from diffalign.data import DataError, Table, TextOptions, get_format
from diffalign.data.formats.text_pairs import collate_pairs
from diffalign.data.formats.text_ranked import collate_ranked
from diffalign.data.formats.text_unpaired import collate_unpaired
from diffalign.text import TextModel, sequence_logps, tokenize_completions
from diffalign.tiny import tiny_lm, tiny_tokenizer

COLLATE = {"text_pairs": collate_pairs, "text_unpaired": collate_unpaired, "text_ranked": collate_ranked}


def build_text_dataset(rows, data_format, tokenizer, max_length, skip_bad_rows):
    dataset, _ = get_format(data_format).build(Table("rows", rows), TextOptions(tokenizer, max_length, skip_bad_rows))
    return dataset


CORPUS = ["the sky is blue", "the grass is green", "what color is the sky?", "it is red"] * 3


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(CORPUS)


def test_standard_pair_shares_prompt_and_appends_eos(tokenizer):
    prompt_ids, (chosen, rejected) = tokenize_completions(tokenizer, "the sky is", [" blue", " green"])
    assert prompt_ids == tokenizer("the sky is")["input_ids"]
    assert tokenizer("the sky is blue" + tokenizer.eos_token)["input_ids"] == prompt_ids + chosen
    assert chosen[-1] == rejected[-1] == tokenizer.eos_token_id


def test_conversational_pair_uses_generation_prompt(tokenizer):
    prompt = [{"role": "user", "content": "sky?"}]
    prompt_ids, (chosen, _) = tokenize_completions(tokenizer, prompt, [[{"role": "assistant", "content": "blue"}],
                                                                       [{"role": "assistant", "content": "red"}]])
    rendered = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(prompt_ids) == rendered
    assert tokenizer.decode(chosen) == "blue<|im_end|>\n"


def test_collated_pairs_mask_prompt_tokens_only(tokenizer):
    rows = [{"prompt": "the sky is", "chosen": " blue", "rejected": " green and red"},
            {"prompt": "what color is the sky?", "chosen": " it is blue", "rejected": " red"}]
    dataset = build_text_dataset(rows, "text_pairs", tokenizer, 1024, skip_bad_rows=False)
    batch = COLLATE["text_pairs"]([dataset[0], dataset[1]], tokenizer.pad_token_id, 1024)
    assert batch["input_ids"].shape[0] == 4  # [chosen_1, chosen_2, rejected_1, rejected_2]
    for row, example, which in ((0, dataset[0], 0), (1, dataset[1], 0), (2, dataset[0], 1), (3, dataset[1], 1)):
        n_prompt, n_completion = len(example.prompt_ids), len(example.completion_ids[which])
        assert batch["input_ids"][row, :n_prompt].tolist() == example.prompt_ids  # chosen and rejected share it
        assert batch["completion_mask"][row].tolist()[: n_prompt + n_completion] == [0] * n_prompt + [1] * n_completion
        assert batch["completion_mask"][row, n_prompt + n_completion:].sum() == 0  # padding never counts
        assert batch["attention_mask"][row].sum() == n_prompt + n_completion


def test_logps_count_completion_tokens_only(tokenizer):
    model = tiny_lm(len(tokenizer)).eval()
    rows = [{"prompt": "the sky is", "chosen": " blue", "rejected": " green"}]
    dataset = build_text_dataset(rows, "text_pairs", tokenizer, 1024, skip_bad_rows=False)
    batch = COLLATE["text_pairs"]([dataset[0]], tokenizer.pad_token_id, 1024)
    scores = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    example = dataset[0]
    for row, completion in enumerate(example.completion_ids):
        ids = torch.tensor([example.prompt_ids + completion])
        logp = model(ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
        expected = logp[len(example.prompt_ids) - 1:].sum()  # positions predicting completion tokens
        assert scores.sum[row].item() == pytest.approx(expected.item(), rel=1e-5)
        assert scores.lengths[row].item() == len(completion)
    changed = batch["input_ids"].clone()
    changed[:, 0] = (changed[:, 0] + 1) % len(tokenizer)  # a prompt token: changes the context, not the count
    assert sequence_logps(model, changed, batch["attention_mask"], batch["completion_mask"]).lengths.tolist() == scores.lengths.tolist()


def test_lora_reference_is_the_base_model(tokenizer):
    from peft import LoraConfig, get_peft_model

    base = tiny_lm(len(tokenizer)).eval()
    ids = torch.tensor([tokenizer("the sky is blue")["input_ids"]])
    mask = torch.ones_like(ids)
    expected = sequence_logps(base, ids, mask, mask).sum
    policy = get_peft_model(base, LoraConfig(r=4, lora_alpha=4, target_modules="all-linear", init_lora_weights=False))
    model = TextModel(policy, tokenizer, reference="adapters", lora=True)
    assert model.policy_logps(ids, mask, mask).sum.item() != pytest.approx(expected.item())
    torch.testing.assert_close(model.reference_logps(ids, mask, mask).sum, expected)


def test_implicit_prompt_unpairing_and_ranked(tokenizer):
    rows = [{"chosen": "the sky is blue", "rejected": "the sky is red"}]
    pairs = build_text_dataset(rows, "text_pairs", tokenizer, 1024, False)
    assert tokenizer.decode(pairs[0].prompt_ids) == "the sky is"
    unpaired = build_text_dataset(rows, "text_unpaired", tokenizer, 1024, False)
    assert [e.label for e in unpaired.examples] == [True, False]
    batch = COLLATE["text_unpaired"](unpaired.examples, tokenizer.pad_token_id, 1024)
    assert torch.equal(batch["KL_input_ids"][0], batch["input_ids"][1][: batch["KL_input_ids"].shape[1]])  # rotated
    ranked = build_text_dataset([{"prompt": "sky", "completions": [" blue", " red", " green"], "scores": [1, 0.5, 0]},
                                 {"prompt": "grass", "completions": [" green", " red"], "scores": [1, 0]}],
                                "text_ranked", tokenizer, 1024, False)
    batch = COLLATE["text_ranked"](ranked.examples, tokenizer.pad_token_id, 1024)
    assert batch["input_ids"].shape[0] == 5 and batch["valid"].tolist() == [[True] * 3, [True, True, False]]


def test_bad_rows_name_row_and_field_or_are_counted(tokenizer):
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"}, {"prompt": 3, "chosen": "b", "rejected": "c"}]
    with pytest.raises(DataError, match=r"row 1: missing field 'rejected'"):
        build_text_dataset(rows, "text_pairs", tokenizer, 1024, False)
    dataset = build_text_dataset(rows, "text_pairs", tokenizer, 1024, True)
    assert len(dataset) == 1 and dataset.skipped.counts == {"bad rows": 2}
    with pytest.raises(DataError, match=r"row 0: field 'label'"):
        build_text_dataset([{"prompt": "a", "completion": "b", "label": "yes"}], "text_unpaired", tokenizer, 1024, False)
    long_prompt = build_text_dataset([rows[0], {"prompt": "the sky is blue " * 10, "chosen": "b", "rejected": "c"}],
                                     "text_pairs", tokenizer, 8, False)
    assert len(long_prompt) == 1 and long_prompt.skipped.counts == {"prompt fills max_length": 1}
