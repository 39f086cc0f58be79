"""The training loop's metrics are exact on any number of processes and accumulation steps: a metric is a
(value x count, count) pair summed over micro-batches and processes (KTO's ``rewards/chosen`` counts the
desirable examples, and a micro-batch without one adds nothing), and ``--report-to tensorboard`` writes
what ``metrics.jsonl`` holds."""

import glob
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from diffalign.objectives import kto_ref_point, unpaired_loss, unpaired_step_metrics
from diffalign.tiny import save_tiny_lm
from diffalign.training import TrainConfig, train
from diffalign.training.loop import add_metrics, reduce_metrics
from diffalign.training.sampling import ShardedEpochBatches

PROMPTS = ["the sky is", "the grass is", "what color is the sky?", "the sun is"]
WORDS = [" blue", " green", " red", " yellow"]
SEED = 0
# desirable (True) / undesirable labels of each (step, rank) micro-batch of a 2-process run, 2 rows each:
# step 1 has desirable examples on both processes in unequal numbers (1 and 2: a mean of the two
# processes' means would be wrong), step 2 has none on process 0 and one on process 1.
LAYOUT = {(0, 0): [True, False], (0, 1): [True, True], (1, 0): [False, False], (1, 1): [True, False]}
SUBSET_METRICS = ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected")


def read_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def test_add_and_reduce_weight_each_metric_by_its_count():
    totals = {}
    # micro-batch 1: 1 desirable + 3 undesirable examples; micro-batch 2: 1 undesirable, no desirable
    add_metrics(totals, {"loss": torch.tensor(1.0), "kl": torch.tensor(0.5), "rewards/chosen": torch.tensor(0.3),
                         "rewards/rejected": torch.tensor(0.2), "empty": torch.tensor(float("nan"))},
                {"rewards/chosen": torch.tensor(1), "rewards/rejected": 3, "empty": 0})
    add_metrics(totals, {"loss": torch.tensor(3.0), "kl": torch.tensor(1.5), "rewards/rejected": torch.tensor(-1.0)},
                {"rewards/rejected": torch.tensor(1)})
    reduced = reduce_metrics(totals)
    assert list(reduced) == sorted(reduced)
    assert set(reduced) == {"loss", "kl", "rewards/chosen", "rewards/rejected"}  # "empty" counted 0: left out
    assert reduced["loss"] == 2.0 and reduced["kl"] == 1.0  # count 1 per micro-batch: the plain mean, as before
    assert reduced["rewards/chosen"] == pytest.approx(0.3)  # not 0.15 (the missing micro-batch is not a 0)
    assert reduced["rewards/rejected"] == pytest.approx((3 * 0.2 + 1 * -1.0) / 4)
    assert reduce_metrics({}) == {}


def test_unpaired_counts_and_step_margins():
    policy, ref = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-1.5, -2.0, -2.0])
    out = unpaired_loss(policy, ref, torch.tensor([True, False, False]), beta=0.1, ref_point=torch.tensor(0.0))
    assert out.metric_counts["rewards/chosen"].item() == 1 and out.metric_counts["logps/rejected"].item() == 2
    assert "kl" not in out.metric_counts  # z0 is one number per micro-batch: counts 1
    only_desirable = unpaired_loss(policy[:1], ref[:1], torch.tensor([True]), ref_point=torch.tensor(0.0))
    assert set(only_desirable.metric_counts) == {"rewards/chosen", "logps/chosen"}
    step = unpaired_step_metrics({"rewards/chosen": 0.5, "rewards/rejected": 0.2, "rewards/margins": 9.0, "kl": 0.0})
    assert step["rewards/margins"] == pytest.approx(0.3)
    assert "rewards/margins" not in unpaired_step_metrics({"rewards/chosen": 0.5, "rewards/margins": 9.0})


@pytest.fixture(scope="module")
def kto_files(tmp_path_factory):
    """A tiny LM and 8 unpaired rows whose labels put the examples of each (step, rank) micro-batch of a
    2-process run with 2 rows per process as ``LAYOUT`` says (the run's own sampler decides the rows)."""
    root = tmp_path_factory.mktemp("kto-exact")
    model = save_tiny_lm(str(root / "lm"), [p + w for p in PROMPTS for w in WORDS])
    labels, rows = [None] * 8, {0: set(), 1: set()}
    for rank in (0, 1):
        batches = iter(ShardedEpochBatches(8, 2, rank, 2, SEED))
        for step in (0, 1):
            for (_, index), label in zip(next(batches), LAYOUT[(step, rank)]):
                labels[index] = label
                rows[step].add(index)
    # one process with 4 rows per batch (or 2 rows x 2 accumulation steps) sees the same rows at each step
    one = iter(ShardedEpochBatches(8, 4, 0, 1, SEED))
    assert [{index for _, index in next(one)} for _ in (0, 1)] == [rows[0], rows[1]]
    data = root / "kto.jsonl"
    with open(data, "w") as handle:
        for i, label in enumerate(labels):
            completion = WORDS[(3 * i) % 4] + (" and" + WORDS[i % 4] if i >= 4 else "")
            handle.write(json.dumps({"prompt": PROMPTS[i % 4], "completion": completion, "label": label}) + "\n")
    return {"model": model, "data": str(data)}


def kto_config(files, output_dir, **overrides):
    values = dict(method="text-kto", model=files["model"], data=files["data"], output_dir=str(output_dir), max_steps=2,
                  train_batch_size=4, learning_rate=1e-3, seed=SEED, progress_bar=False, checkpointing_steps=100)
    values.update(overrides)
    return TrainConfig(**values)


def assert_subset_metrics_match(records, expected):
    assert [r["step"] for r in records] == [r["step"] for r in expected] == [1, 2]
    for record, reference in zip(records, expected):
        for key in SUBSET_METRICS:
            assert record[key] == pytest.approx(reference[key], abs=1e-5, rel=1e-6), (record["step"], key)
        assert record["rewards/margins"] == pytest.approx(record["rewards/chosen"] - record["rewards/rejected"], abs=1e-7)
    assert expected[1]["rewards/chosen"] != 0.0  # step 2 runs on updated weights: the rewards are not trivially 0


def test_kto_accumulation_matches_one_batch_of_the_same_rows(kto_files, tmp_path):
    # micro-batch 2 of step 1 has no undesirable example, micro-batch 1 of step 2 no desirable one
    train(kto_config(kto_files, tmp_path / "one"))
    train(kto_config(kto_files, tmp_path / "acc", train_batch_size=2, gradient_accumulation_steps=2))
    expected, records = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "acc")
    assert_subset_metrics_match(records, expected)
    # the undesirable examples of step 1 are all in micro-batch 1: a mean over micro-batches would halve it
    assert records[0]["logps/rejected"] == pytest.approx(expected[0]["logps/rejected"], rel=1e-6)


@pytest.mark.slow
def test_two_processes_kto_metrics_are_count_weighted(kto_files, tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "diffalign", "train", "--method", "text-kto", "--model", kto_files["model"], "--data", kto_files["data"],
        "--max-steps", "2", "--train-batch-size", "2", "--learning-rate", "1e-3", "--seed", str(SEED),
        "--output-dir", str(tmp_path / "two"), "--no-progress-bar",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    first, second = summary["parameter_checksums"]
    assert first == second
    # the independent computation: one process, the same 4 rows per step in one batch. Step 1's update is
    # the same (z0 = 0 at initialisation, DDP averages the two halves' gradients), so the step-2 rewards,
    # computed before step 2's update, are the same numbers.
    train(kto_config(kto_files, tmp_path / "one"))
    assert_subset_metrics_match(read_metrics(tmp_path / "two"), read_metrics(tmp_path / "one"))


def test_tensorboard_event_file_has_the_logged_scalars(tiny_model_dir, pair_jsonl, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(TrainConfig(method="diffusion-dpo", model=tiny_model_dir("sd"), data=pair_jsonl, output_dir=str(tmp_path),
                      resolution=64, max_steps=2, train_batch_size=2, progress_bar=False, checkpointing_steps=100,
                      report_to="tensorboard"))
    # accelerate's tracker writes the scalars under <output_dir>/diffalign and the run config (hparams)
    # in a subfolder of it: read every event file
    events = glob.glob(str(tmp_path / "**" / "events.out.tfevents.*"), recursive=True)
    assert events
    logged = {}
    for path in events:
        accumulator = EventAccumulator(path)
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            logged.setdefault(tag, {}).update({event.step: event.value for event in accumulator.Scalars(tag)})
    records = read_metrics(tmp_path)
    for key in ("loss", "lr", "grad_norm", "rewards/chosen", "rewards/accuracies"):
        assert key in logged, sorted(logged)
        assert set(logged[key]) == {1, 2}, (key, logged[key])
        for record in records:
            assert math.isclose(logged[key][record["step"]], record[key], rel_tol=1e-6, abs_tol=1e-9), (key, record)
