"""The demo's charts (matplotlib on an Agg canvas): training curves and reward distributions."""

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from diffalign.toy.plots import curves, moving_average, reward_distributions
from diffalign.toy.reporting import TRAINING_CURVES, save_reward_distributions, save_training_curves


def _write_metrics(path, steps=60, accuracy=True):
    rng = np.random.default_rng(0)
    with open(path, "w") as handle:
        for step in range(1, steps + 1):
            row = {"step": step, "loss": 0.7 * np.exp(-step / 30) + 0.05 * rng.standard_normal()}
            if accuracy:
                row["rewards/accuracies"] = float(rng.random() < 0.5 + step / (2 * steps))
            handle.write(json.dumps(row) + "\n")


def _non_trivial(image: Image.Image) -> None:
    pixels = np.asarray(image.convert("RGB"), dtype=int)
    assert (pixels < 200).any(axis=-1).mean() > 0.01  # text, axes and lines drawn
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # anti-aliased lines and colours, not a blank card


def test_curves_with_and_without_implicit_accuracy(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    _write_metrics(metrics, accuracy=True)
    save_training_curves(tmp_path / "both.png", metrics, "dpo training")
    both = Image.open(tmp_path / "both.png")
    assert both.format == "PNG" and both.size == (900, 400)
    _non_trivial(both)

    _write_metrics(metrics, accuracy=False)  # e.g. self-npo, tkto: no rewards/accuracies
    save_training_curves(tmp_path / "loss.png", metrics, "self-npo training")
    loss = Image.open(tmp_path / "loss.png")
    assert loss.size == (900, 400)
    _non_trivial(loss)
    # one panel, not two: the accuracy panel's plotting area would leave a column of axis lines in the right half
    assert not np.array_equal(np.asarray(both), np.asarray(loss))


def test_curves_leave_out_metrics_never_logged_and_survive_none_and_no_data(tmp_path):
    series = {label: [(s, None) for s in range(5)] for label in TRAINING_CURVES}
    empty = np.asarray(curves(series, title="nothing logged"), dtype=int)
    assert empty.shape == (400, 900, 3) and (empty < 200).any()  # the title and a "no training metrics" note
    _non_trivial(curves({"loss": [(1, 0.5)]}, title="one step"))
    save_training_curves(tmp_path / "missing.png", tmp_path / "absent.jsonl", "no metrics file")
    assert Image.open(tmp_path / "missing.png").size == (900, 400)


def test_moving_average_is_trailing():
    assert moving_average([(1, 1.0), (2, 3.0), (3, 5.0)], window=2) == [(1, 1.0), (2, 2.0), (3, 4.0)]


def test_reward_distributions_from_two_score_lists(tmp_path):
    rng = np.random.default_rng(1)
    before, after = rng.normal(0.4, 0.1, 40).tolist(), rng.normal(0.55, 0.1, 40).tolist()
    image = reward_distributions(before, after)
    assert image.size == (900, 400)
    _non_trivial(image)

    class Evaluation:  # the two fields save_reward_distributions reads
        pass

    evaluation = Evaluation()
    evaluation.before, evaluation.after = before, after
    save_reward_distributions(tmp_path / "rewards.png", evaluation)
    assert Image.open(tmp_path / "rewards.png").size == (900, 400)
    _non_trivial(reward_distributions([0.5, 0.5], [0.5, 0.5]))  # all equal: still one bin, no error


def test_charts_need_no_display_or_gui_backend(tmp_path):
    code = ("import matplotlib, os; os.environ.pop('DISPLAY', None); "
            "from diffalign.toy.plots import curves, reward_distributions; "
            f"curves({{'loss': [(1, 1.0), (2, 0.5)]}}, title='x').save({str(tmp_path / 'c.png')!r}); "
            f"reward_distributions([0.1, 0.2], [0.3]).save({str(tmp_path / 'r.png')!r}); "
            "import sys; assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env={"MPLBACKEND": "TkAgg", "PATH": ""})
    assert (tmp_path / "c.png").is_file() and (tmp_path / "r.png").is_file()
