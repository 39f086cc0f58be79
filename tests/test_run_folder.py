"""The output folder of ``diffalign train`` (``diffalign.training.run_folder``), through the command line:
a folder holding a run is refused unless resumed or overwritten, a resume must share the run's settings
and have steps left, every run config is kept, one writer at a time (a lock with the owner's pid), and
orphaned workers stop when their launcher dies."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from diffalign.cli import main
from diffalign.training.checkpoints import list_checkpoints
from diffalign.training.metrics_log import MetricsLog
from diffalign.training.run_folder import LOCK_FILE, lock_owner_alive


def command(tiny_model_dir, pair_jsonl, output_dir, *extra, method="sft"):
    return ["train", "--method", method, "--model", tiny_model_dir("sd"), "--data", pair_jsonl, "--resolution", "64",
            "--max-steps", "2", "--train-batch-size", "2", "--no-progress-bar", "--output-dir", str(output_dir), *extra]


def run_cli(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def error_line(err):
    lines = [line for line in err.splitlines() if line.startswith("diffalign train: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def steps(output_dir):
    with open(os.path.join(output_dir, "metrics.jsonl")) as handle:
        return [json.loads(line)["step"] for line in handle]


def snapshot(folder):
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, folder)] = handle.read()
    return found


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, pair_jsonl, tmp_path_factory):
    """A finished 2-step sft run (full fine-tuning, lr 1e-5, batch 2) that the refusals below must leave alone."""
    output = tmp_path_factory.mktemp("finished-run")
    assert main(command(tiny_model_dir, pair_jsonl, output)) == 0
    return output


# ------------------------------------------------------------------------------------ reusing a folder
def test_a_folder_holding_a_run_is_refused(tiny_model_dir, pair_jsonl, finished_run, capsys):
    before = snapshot(finished_run)
    code, _, err = run_cli(capsys, command(tiny_model_dir, pair_jsonl, finished_run))
    assert code == 2
    assert error_line(err) == (
        f"diffalign train: error: --output-dir {finished_run} already holds a diffalign run (checkpoints up to step 2); "
        "continue it with --resume-from latest, replace it with --overwrite, or choose another --output-dir")
    assert snapshot(finished_run) == before  # nothing truncated, nothing overwritten, no lock left behind


def test_overwrite_clears_the_run_and_keeps_other_files(tiny_model_dir, pair_jsonl, tmp_path, capsys):
    assert main(command(tiny_model_dir, pair_jsonl, tmp_path, "--max-steps", "3", "--checkpointing-steps", "1")) == 0
    (tmp_path / "slurm-1.out").write_text("a scheduler's log\n")
    code, out, _ = run_cli(capsys, command(tiny_model_dir, pair_jsonl, tmp_path, "--overwrite"))
    assert code == 0
    assert f"--overwrite: removed the previous run from {tmp_path} (README.md, checkpoints, data_report.json" in out
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2]  # no step-3 of the old run left behind
    assert steps(tmp_path) == [1, 2]
    assert (tmp_path / "slurm-1.out").read_text() == "a scheduler's log\n"
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert "slurm-1.out" not in summary["files"] and "unet" in summary["files"]
    assert not (tmp_path / LOCK_FILE).exists()


def test_other_files_never_block_a_run_but_foreign_exports_do(tiny_model_dir, pair_jsonl, tmp_path, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "job.out").write_text("log\n")
    code, _, _ = run_cli(capsys, command(tiny_model_dir, pair_jsonl, logs))
    assert code == 0 and (logs / "job.out").read_text() == "log\n"

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    for extra in ([], ["--overwrite"]):
        code, _, err = run_cli(capsys, command(tiny_model_dir, pair_jsonl, foreign, *extra))
        assert code == 2
        assert ("holds config.json, which diffalign writes, but no diffalign run (run_config.json, train_summary.json "
                "or a checkpoint) is there; diffalign replaces only its own runs") in error_line(err)
    assert sorted(os.listdir(foreign)) == ["config.json"]


def test_overwrite_excludes_resume_and_never_deletes_the_model(tiny_model_dir, pair_jsonl, finished_run, capsys):
    code, _, err = run_cli(capsys, command(tiny_model_dir, pair_jsonl, finished_run, "--overwrite", "--resume-from", "latest"))
    assert code == 2 and "--overwrite and --resume-from exclude each other" in error_line(err)
    argv = command(tiny_model_dir, pair_jsonl, finished_run, "--overwrite")
    argv[argv.index("--model") + 1] = str(finished_run)  # training on from the export, into its own folder
    code, _, err = run_cli(capsys, argv)
    assert code == 2 and f"--overwrite would delete --model {finished_run}, which is --output-dir itself" in error_line(err)
    assert (finished_run / "model_index.json").exists()


# ------------------------------------------------------------------------------------------- resuming
def test_resume_without_steps_left_says_so(tiny_model_dir, pair_jsonl, finished_run, capsys):
    for max_steps in ("2", "1"):
        code, _, err = run_cli(capsys, command(tiny_model_dir, pair_jsonl, finished_run, "--resume-from", "latest",
                                               "--max-steps", max_steps))
        assert code == 2
        assert error_line(err) == (
            f"diffalign train: error: --resume-from latest: the checkpoint {finished_run}/checkpoints/step-00000002 is "
            f"at step 2 and --max-steps is {max_steps}, so nothing is left to train; pass --max-steps above 2 to train "
            "further, or choose another --output-dir for a new run")


@pytest.mark.parametrize("extra, expected", [
    (["--learning-rate", "1e-4"], "was trained with --learning-rate 1e-05, this run has 0.0001;"),
    (["--train-batch-size", "1"], "was trained with --train-batch-size 2, this run has 1;"),
    (["--method", "mapo"], "was trained with --method sft"),
    (["--lora-rank", "4"], "was trained with --lora-rank 0 (full fine-tuning), this run has 4 (LoRA);"),
    (["--seed", "1", "--no-random-flip"], "was trained with --random-flip and --seed 0, this run has --no-random-flip and 1;"),
], ids=["learning-rate", "batch", "method", "lora-vs-full", "two-settings"])
def test_resume_with_other_settings_is_refused_by_name(tiny_model_dir, pair_jsonl, finished_run, capsys, extra, expected):
    before = snapshot(finished_run)
    code, _, err = run_cli(capsys, command(tiny_model_dir, pair_jsonl, finished_run, "--resume-from", "latest",
                                           "--max-steps", "4", *extra))
    assert code == 2
    line = error_line(err)
    assert line.startswith(f"diffalign train: error: --resume-from latest: the checkpoint {finished_run}/checkpoints/"
                           "step-00000002 ")
    assert expected in line and line.endswith("resume with the same settings or start a new --output-dir")
    if extra[:2] == ["--method", "mapo"]:
        assert "this run has mapo" in line
    assert snapshot(finished_run) == before


def test_run_configs_are_kept_and_the_summary_is_the_last_runs(tiny_model_dir, pair_jsonl, tmp_path, capsys):
    assert main(command(tiny_model_dir, pair_jsonl, tmp_path, "--checkpointing-steps", "1")) == 0
    first = (tmp_path / "run_config.json").read_text()
    for max_steps in ("3", "4"):
        code, out, _ = run_cli(capsys, command(tiny_model_dir, pair_jsonl, tmp_path, "--resume-from", "latest",
                                               "--max-steps", max_steps, "--checkpointing-steps", "1"))
        assert code == 0 and "resumed from" in out
    assert (tmp_path / "run_config.json").read_text() == first
    assert json.loads(first)["resumed_from"] is None
    for step in (2, 3):
        resumed = json.loads((tmp_path / f"run_config.resume-step-{step}.json").read_text())
        assert resumed["resumed_from"]["step"] == step and resumed["train_config"]["max_steps"] == step + 1
    assert steps(tmp_path) == [1, 2, 3, 4]
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["resumed_from_step"] == 3 and summary["trained_steps"] == 1 and summary["steps"] == 4
    assert summary["final_metrics"]["step"] == 4 and "loss" in summary["final_metrics"]
    state = json.loads((tmp_path / "checkpoints" / "step-00000004" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["identity"]["learning_rate"] == 1e-5


def test_resuming_an_earlier_checkpoint_drops_the_later_ones(tiny_model_dir, pair_jsonl, tmp_path, capsys):
    assert main(command(tiny_model_dir, pair_jsonl, tmp_path, "--max-steps", "3", "--checkpointing-steps", "1")) == 0
    earlier = tmp_path / "checkpoints" / "step-00000001"
    code, out, _ = run_cli(capsys, command(tiny_model_dir, pair_jsonl, tmp_path, "--resume-from", str(earlier)))
    assert code == 0 and "removed the later checkpoints step-00000002, step-00000003" in out
    assert [step for step, _ in list_checkpoints(tmp_path)] == [1, 2]  # `latest` is now this run's step 2
    assert steps(tmp_path) == [1, 2]
    code, _, err = run_cli(capsys, command(tiny_model_dir, pair_jsonl, tmp_path, "--resume-from", str(tmp_path)))
    assert code == 2 and f"--resume-from {tmp_path} is a run folder, not a checkpoint" in error_line(err)
    # another run's checkpoint continues that run in an empty folder (a fork), never in one holding a run
    fork = tmp_path / "fork"
    code, _, _ = run_cli(capsys, command(tiny_model_dir, pair_jsonl, fork, "--resume-from", str(earlier)))
    assert code == 0 and steps(fork) == [2]
    assert json.loads((fork / "run_config.json").read_text())["resumed_from"] == {"checkpoint": str(earlier), "step": 1}
    code, _, err = run_cli(capsys, command(tiny_model_dir, pair_jsonl, fork, "--resume-from", str(earlier)))
    assert code == 2 and f"--output-dir {fork} already holds a run (checkpoints up to step 2)" in error_line(err)


def test_max_steps_changes_only_under_a_schedule_that_ignores_it(tiny_model_dir, pair_jsonl, tmp_path, capsys):
    assert main(command(tiny_model_dir, pair_jsonl, tmp_path, "--lr-scheduler", "cosine")) == 0
    code, _, err = run_cli(capsys, command(tiny_model_dir, pair_jsonl, tmp_path, "--lr-scheduler", "cosine",
                                           "--resume-from", "latest", "--max-steps", "4"))
    assert code == 2
    assert ("was trained for --max-steps 2 under --lr-scheduler cosine, which depends on it; --max-steps 4 would change "
            "the learning rate from step 3 on") in error_line(err)


def test_resume_latest_after_a_crash_before_the_first_checkpoint(tiny_model_dir, pair_jsonl, finished_run, tmp_path, capsys):
    # what a run killed during step 1 leaves: its run config, data report, a partial metrics line, a temporary checkpoint
    for name in ("run_config.json", "data_report.json"):
        (tmp_path / name).write_text((finished_run / name).read_text())
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "lo')
    (tmp_path / "checkpoints" / ".tmp-step-00000001").mkdir(parents=True)
    code, _, err = run_cli(capsys, command(tiny_model_dir, pair_jsonl, tmp_path, "--resume-from", "latest",
                                           "--learning-rate", "1e-4"))
    assert code == 2
    assert ("holds a run that stopped before its first checkpoint and was started with --learning-rate 1e-05, this run "
            "has 0.0001; rerun it with the same settings") in error_line(err)
    code, out, _ = run_cli(capsys, command(tiny_model_dir, pair_jsonl, tmp_path, "--resume-from", "latest"))
    assert code == 0 and "starting over; removed checkpoints, data_report.json, metrics.jsonl, run_config.json" in out
    assert steps(tmp_path) == [1, 2] and [step for step, _ in list_checkpoints(tmp_path)] == [2]


def test_resume_latest_in_a_finished_run_without_checkpoints_is_refused(tiny_model_dir, pair_jsonl, finished_run,
                                                                       tmp_path, capsys):
    shutil.copytree(finished_run, tmp_path, dirs_exist_ok=True)
    shutil.rmtree(tmp_path / "checkpoints")  # deleted by hand to save space
    code, _, err = run_cli(capsys, command(tiny_model_dir, pair_jsonl, tmp_path, "--resume-from", "latest", "--max-steps", "4"))
    assert code == 2 and f"--resume-from latest: {tmp_path} holds a finished run (" in error_line(err)
    assert "but no checkpoint to continue from; replace it with --overwrite" in error_line(err)


def test_a_line_cut_short_by_a_crash_is_dropped_on_resume(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n{"step": 3, "lo')
    MetricsLog(str(tmp_path), resume_step=2).write({"step": 3, "loss": 0.25})
    assert steps(tmp_path) == [1, 2, 3]


# ----------------------------------------------------------------------------------------------- lock
def test_a_live_lock_is_refused_and_a_dead_one_taken_over(tiny_model_dir, pair_jsonl, tmp_path, capsys):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        for owner in (sleeper.pid, os.getpid()):
            (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": owner}))
            code, _, err = run_cli(capsys, command(tiny_model_dir, pair_jsonl, tmp_path))
            assert code == 2
            assert error_line(err) == (
                f"diffalign train: error: --output-dir {tmp_path} is in use by another diffalign run (pid {owner}); "
                f"wait for it to end or stop it (its lock {tmp_path / LOCK_FILE} is taken over once that process has "
                "exited)")
            assert json.loads((tmp_path / LOCK_FILE).read_text()) == {"pid": owner}
            assert not (tmp_path / "metrics.jsonl").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert lock_owner_alive({"pid": os.getpid()}) is True
    assert lock_owner_alive({"pid": os.getpid(), "create_time": 1.0}) is False  # the pid of another process now
    assert lock_owner_alive({"pid": os.getpid(), "host": "elsewhere"}) is None  # refused: cannot be checked
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": sleeper.pid}))  # that process has exited
    code, out, _ = run_cli(capsys, command(tiny_model_dir, pair_jsonl, tmp_path))
    assert code == 0 and f"taking over {tmp_path / LOCK_FILE} from pid {sleeper.pid}, which is no longer running" in out
    assert steps(tmp_path) == [1, 2]
    assert not (tmp_path / LOCK_FILE).exists()  # released at the end


def test_the_lock_is_released_when_a_run_fails(tiny_model_dir, pair_jsonl, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a red circle", "chosen": "img/missing.png"}) + "\n")
    output = tmp_path / "run"
    code, _, err = run_cli(capsys, command(tiny_model_dir, str(bad), output))  # fails after the lock was taken
    assert code == 2 and str(bad) in error_line(err)
    assert not (output / LOCK_FILE).exists()
    code, _, _ = run_cli(capsys, command(tiny_model_dir, pair_jsonl, output))
    assert code == 0


# ------------------------------------------------------------------------------------ orphaned workers
def _processes_mentioning(text):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if text.encode() in handle.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the workers through /proc")
def test_workers_stop_when_the_launcher_is_killed(tiny_model_dir, pair_jsonl, tmp_path):
    output = tmp_path / "orphans"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launcher = subprocess.Popen([
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        *(["-m", "diffalign"] + command(tiny_model_dir, pair_jsonl, output, "--max-steps", "2000",
                                        "--checkpointing-steps", "100000", "--lora-rank", "4")),
    ], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not (output / "metrics.jsonl").exists() or not (output / "metrics.jsonl").read_text().strip():
            assert launcher.poll() is None, launcher.communicate()[1][-3000:]
            assert time.time() < deadline, "training did not start"
            time.sleep(0.5)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        started = time.time()
        # the workers hold the pipes: they are read to the end once both have exited
        out, err = launcher.communicate(timeout=120)
        assert time.time() - started < 120
        assert err.count("the launcher that started this run (pid ") == 2, err[-3000:]
        assert "has exited: stopping before step" in err and "Traceback" not in err
        assert not (output / "model_index.json").exists() and not (output / "pytorch_lora_weights.safetensors").exists()
        assert not (output / "train_summary.json").exists()
        assert not (output / LOCK_FILE).exists()
        assert _processes_mentioning(str(output)) == []
    finally:
        for pid in _processes_mentioning(str(output)):
            os.kill(pid, signal.SIGKILL)
