"""The output folder of ``diffalign train``: what a run may do with it, decided before any work is done.

One writer at a time
    The main process holds ``<output_dir>/diffalign.lock`` (JSON: pid, host, process start time) for the
    whole run. A lock whose process is alive is refused; one whose process has exited (or whose pid now
    belongs to another process, told apart by the start time) is taken over, with a printed note. A lock
    written on another host cannot be checked and is refused with the file to delete. Every other
    process of a multi-process run waits for the main process's decision and fails with the same message.

What the folder may hold
    Entries are classified by name: *run files* (``metrics.jsonl``, ``run_config*.json``,
    ``data_report.json``, ``train_summary.json``, ``checkpoints/``, the tensorboard folder
    ``diffalign/``), *export files* (what a finished run exports: ``pytorch_lora_weights.safetensors``, a
    diffusers pipeline's ``model_index.json`` and component folders, a transformers or peft model folder's
    files, and whatever ``train_summary.json`` lists under ``files``) and *other files* (a scheduler's log,
    notes): other files are never touched and never block a run. A folder *holds a run* when it has run
    or export files; it *is a diffalign run* when it has ``run_config.json``, ``train_summary.json`` or a
    complete checkpoint.

    ====================  =========================================  =======================================
    options               the folder                                 result
    ====================  =========================================  =======================================
    (none)                holds no run                               a new run
    (none)                holds a run                                refused: --resume-from latest,
                                                                     --overwrite or another --output-dir
    --overwrite           holds no run                               a new run
    --overwrite           is a diffalign run                         its run and export files are removed
                                                                     (other files kept), then a new run
    --overwrite           holds export files but is no diffalign run refused (never deletes what it did not
                                                                     write)
    --overwrite +         anything                                   refused: they exclude each other
    --resume-from
    --resume-from latest  holds no run                               a new run (restartable jobs)
    --resume-from latest  has a checkpoint                           resumes from the highest step
    --resume-from latest  a run that stopped before its first        starts over (its files removed) if it
                          checkpoint (no summary, no export)         was started with the same settings
    --resume-from latest  a finished run without checkpoints         refused
    --resume-from PATH    PATH in this folder's checkpoints/         resumes; later checkpoints (of the
                                                                     abandoned continuation) are removed
    --resume-from PATH    PATH elsewhere, this folder holds no run   continues that run here (a fork)
    ====================  =========================================  =======================================

Resuming
    The checkpoint's ``trainer_state.json`` holds the run's identity (``run_identity``): every
    ``TrainConfig`` field except those in ``MAY_CHANGE_ON_RESUME``, the method's resolved config and the
    number of processes. A resume whose identity differs is refused naming each setting; ``--max-steps``
    must be above the checkpoint's step, and may change only under a schedule that does not depend on it
    (``constant``, ``constant_with_warmup``, ``piecewise_constant``). Each run writes its resolved config:
    ``run_config.json`` for the first, ``run_config.resume-step-N.json`` for a resume from step N
    (``...-step-N.2.json`` for a second resume from the same step); none is overwritten.

Orphaned workers
    A process started by a launcher (torchrun / ``accelerate launch`` with several processes:
    ``LOCAL_RANK`` or ``TORCHELASTIC_RUN_ID`` set; or a parent whose command line is ``accelerate``)
    remembers its parent's pid; ``check_launcher`` (every step and before the export) stops the run with
    a clear error when the parent has gone (the process was re-parented). With several processes the
    decision is all-reduced, so every process stops at the same step. A process started directly (a
    shell, nohup) is never stopped because its parent exited.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import re
import shutil
import socket
import time
from typing import Any, Optional

from diffalign.errors import UserError
from diffalign.training.checkpoints import STATE_FILE, checkpoints_dir, list_checkpoints, read_state

LOCK_FILE = "diffalign.lock"
RUN_CONFIG = "run_config.json"
SUMMARY = "train_summary.json"
RUN_FILES = frozenset({"metrics.jsonl", RUN_CONFIG, "data_report.json", SUMMARY, "checkpoints", "validation", "diffalign"})
RUN_CONFIG_PATTERN = re.compile(r"^run_config\.resume-step-\d+(\.\d+)?\.json$")
EXPORT_FILES = frozenset({
    # diffusers: LoRA weights, a pipeline's index (its component folders are the index's keys)
    "pytorch_lora_weights.safetensors", "model_index.json",
    # transformers / peft model folders
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
    "pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_config.json", "adapter_model.safetensors",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "vocab.txt", "merges.txt",
    "added_tokens.json", "tokenizer.model", "spiece.model", "chat_template.jinja", "chat_template.json",
})
EXPORT_PATTERN = re.compile(r"^(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)$")

# Settings that may differ between a checkpoint's run and the run resuming it (everything else is the
# run's identity). max_steps is compared separately (it may grow under a schedule that ignores it).
MAY_CHANGE_ON_RESUME = frozenset({
    "output_dir", "resume_from", "overwrite", "max_steps", "checkpointing_steps", "checkpoints_total_limit",
    "report_to", "progress_bar", "dataloader_num_workers", "num_threads", "attention", "gradient_checkpointing",
    "validation_prompts", "validation_steps", "validation_images", "validation_inference_steps", "validation_guidance",
    "validation_scorer",
})
SCHEDULES_WITHOUT_MAX_STEPS = frozenset({"constant", "constant_with_warmup", "piecewise_constant"})
LAUNCHER_ENV = ("TORCHELASTIC_RUN_ID", "LOCAL_RANK")


class RunFolderError(UserError, ValueError):
    """The output folder or the resume settings do not allow this run (the CLI prints it, exit code 2)."""


class LauncherGoneError(RunFolderError):
    """The launcher that started this worker has exited: the run stops instead of training as an orphan."""


# ----------------------------------------------------------------------------------------- identity
def run_identity(train_config: dict, method_config: dict, world_size: int) -> dict:
    """What a resume must share with its checkpoint: JSON-plain values, local model/data paths resolved."""
    identity = {key: value for key, value in train_config.items()
                if key not in MAY_CHANGE_ON_RESUME and key != "method_args"}
    for key in ("model", "data"):
        if isinstance(identity.get(key), str) and identity[key] and os.path.exists(identity[key]):
            identity[key] = os.path.realpath(identity[key])
    identity.update({f"method.{key}": value for key, value in method_config.items()})
    identity["world_size"] = world_size
    identity["max_steps"] = train_config.get("max_steps")
    return json.loads(json.dumps(identity, default=str))


def identity_mismatches(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """(name, saved value, current value) for each identity entry both have and that differ."""
    return [(name, saved[name], current[name]) for name in current
            if name != "max_steps" and name in saved and saved[name] != current[name]]


def describe_mismatches(mismatches: list[tuple[str, Any, Any]]) -> str:
    """'--learning-rate 1e-05, this run has 0.0001' (several joined with 'and')."""
    before = " and ".join(_setting(name, old) for name, old, _ in mismatches)
    after = " and ".join(_setting(name, new, value_only=True) for name, _, new in mismatches)
    return f"{before}, this run has {after}"


def _setting(name: str, value: Any, value_only: bool = False) -> str:
    if name == "world_size":
        return f"{value} process{'es' if value != 1 else ''}"
    flag = "--" + name.split(".", 1)[-1].replace("_", "-")
    if isinstance(value, bool):
        return flag if value else "--no-" + flag[2:]
    if value is None:
        shown = "unset"
    elif isinstance(value, list):
        shown = " ".join(str(item) for item in value)
    else:
        shown = str(value)
    if name == "lora_rank":
        shown += " (full fine-tuning)" if value == 0 else " (LoRA)"
    return shown if value_only else f"{flag} {shown}"


# --------------------------------------------------------------------------------------------- lock
def _create_time(pid: int) -> Optional[float]:
    """The process's start time (to tell a reused pid apart); None if it cannot be read."""
    import psutil  # an accelerate dependency

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def lock_owner_alive(owner: dict) -> Optional[bool]:
    """True / False for a lock written on this host; None when it cannot be told (another host)."""
    import psutil

    if owner.get("host") not in (None, socket.gethostname()):
        return None
    pid = int(owner["pid"])
    if pid <= 0:
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False  # exited, not yet reaped by its parent
        created = process.create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # another user's live process
    started = owner.get("create_time")
    if isinstance(started, (int, float)) and abs(created - started) > 1.0:
        return False  # the pid now belongs to another process
    return True


@contextlib.contextmanager
def _folder_guard(folder: str):
    """An exclusive flock on the folder while the lock file is inspected and replaced (where supported)."""
    try:
        import fcntl

        descriptor = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(descriptor)  # releases the flock


class RunLock:
    """``<output_dir>/diffalign.lock``, held by the main process for the whole run."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, LOCK_FILE)
        self.held = False

    def acquire(self) -> None:
        payload = {"pid": os.getpid(), "host": socket.gethostname(), "create_time": _create_time(os.getpid()),
                   "started": datetime.datetime.now().isoformat(timespec="seconds")}
        with _folder_guard(self.output_dir):
            for attempt in range(5):
                try:
                    descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    if not os.path.exists(self.path):
                        continue  # released meanwhile
                    owner = self._read_owner()
                    if owner is None:  # being written right now (no flock here), or damaged
                        if attempt < 4:
                            time.sleep(0.2)
                            continue
                        raise RunFolderError(f"--output-dir {self.output_dir}: the lock file {self.path} is unreadable; "
                                             "if no run is using this folder, delete it")
                    alive = lock_owner_alive(owner)
                    if alive is None:
                        raise RunFolderError(
                            f"--output-dir {self.output_dir} is locked by pid {owner['pid']} on host {owner.get('host')}, "
                            f"which cannot be checked from {socket.gethostname()}; if that run has ended, delete {self.path}")
                    if alive:
                        since = f", since {owner['started']}" if owner.get("started") else ""
                        raise RunFolderError(
                            f"--output-dir {self.output_dir} is in use by another diffalign run (pid {owner['pid']}{since}); "
                            f"wait for it to end or stop it (its lock {self.path} is taken over once that process has exited)")
                    print(f"taking over {self.path} from pid {owner['pid']}, which is no longer running")
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.path)
                    continue
                with os.fdopen(descriptor, "w") as handle:
                    json.dump(payload, handle)
                    handle.flush()
                    os.fsync(handle.fileno())
                self.held = True
                return
        raise RunFolderError(f"--output-dir {self.output_dir}: could not take the lock {self.path}; try again")

    def _read_owner(self) -> Optional[dict]:
        try:
            with open(self.path) as handle:
                owner = json.load(handle)
            int(owner["pid"])
            return owner
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        owner = self._read_owner()
        if owner is not None and int(owner["pid"]) == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


# ------------------------------------------------------------------------------------ launcher watch
def _parent_is_accelerate(parent: int) -> bool:
    """Whether the parent process is ``accelerate launch`` (which starts one process without torchrun)."""
    import psutil

    try:
        arguments = psutil.Process(parent).cmdline()[:3]
    except (psutil.Error, OSError):
        return False
    return any(os.path.basename(argument) in ("accelerate", "accelerate-launch", "accelerate.commands.launch")
               for argument in arguments)


class LauncherWatch:
    """Remembers the launcher's pid when this process was started by one; ``gone`` once it has exited."""

    def __init__(self):
        parent = os.getppid()
        launched = any(name in os.environ for name in LAUNCHER_ENV) or _parent_is_accelerate(parent)
        self.parent = parent if launched and parent > 1 else None

    def gone(self) -> bool:
        return self.parent is not None and os.getppid() != self.parent


# ------------------------------------------------------------------------------------ folder contents
def _export_names(output_dir: str, entries: list[str]) -> set[str]:
    names = {name for name in entries if name in EXPORT_FILES or EXPORT_PATTERN.match(name)}
    if "README.md" in entries and "adapter_config.json" in entries:
        names.add("README.md")  # peft writes a model card beside the adapter
    if "model_index.json" in entries:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            with open(os.path.join(output_dir, "model_index.json")) as handle:
                index = json.load(handle)
            names |= {key for key, value in index.items() if not key.startswith("_") and isinstance(value, list)
                      and key in entries}
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
        with open(os.path.join(output_dir, SUMMARY)) as handle:
            names |= {name for name in json.load(handle).get("files", []) if name in entries}
    return names


def _ours(output_dir: str, name: str) -> bool:
    """Whether a bookkeeping folder holds only what diffalign writes there."""
    path = os.path.join(output_dir, name)
    if not os.path.isdir(path) or os.path.islink(path):
        return False
    inside = os.listdir(path)
    if name == "checkpoints":
        return all(re.match(r"^(\.tmp-)?step-\d+$", entry) for entry in inside)
    # accelerate's tensorboard tracker: event files, and the hyperparameters under a timestamp folder
    return all(entry.startswith("events.out.tfevents.") or re.match(r"^[\d.]+$", entry) for entry in inside)


@dataclasses.dataclass
class FolderContents:
    output_dir: str
    run: list[str]  # run and export files a diffalign run wrote (what --overwrite removes)
    conflicts: list[str]  # names a run writes, holding what diffalign does not write there (never removed)
    other: list[str]  # never touched, never in the way
    checkpoints: list[tuple[int, str]]
    exported: list[str]

    @classmethod
    def read(cls, output_dir: str) -> "FolderContents":
        entries = sorted(name for name in os.listdir(output_dir) if name != LOCK_FILE) if os.path.isdir(output_dir) else []
        exported = _export_names(output_dir, entries)
        run, conflicts, other = [], [], []
        for name in entries:
            if name in ("checkpoints", "diffalign"):
                (run if _ours(output_dir, name) else conflicts).append(name)
            elif name in RUN_FILES or RUN_CONFIG_PATTERN.match(name) or name in exported:
                run.append(name)
            else:
                other.append(name)
        return cls(output_dir, run, conflicts, other, list_checkpoints(output_dir), sorted(exported - RUN_FILES))

    @property
    def holds_run(self) -> bool:
        return bool(self.run or self.conflicts)

    @property
    def is_diffalign_run(self) -> bool:
        return not self.conflicts and (RUN_CONFIG in self.run or SUMMARY in self.run or bool(self.checkpoints))

    @property
    def finished(self) -> bool:
        return SUMMARY in self.run or bool(self.exported)

    def names(self) -> str:
        names = self.conflicts + [name for name in self.run if name not in self.conflicts]
        return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")

    def describe(self) -> str:
        if self.checkpoints:
            return f"checkpoints up to step {self.checkpoints[-1][0]}"
        return self.names()

    def not_ours(self, option: str) -> RunFolderError:
        return RunFolderError(
            f"{option}: {self.output_dir} holds {self.names()}, which diffalign writes, but {self._why_not_ours()}; "
            "diffalign replaces only its own runs: choose another --output-dir or remove those yourself")

    def _why_not_ours(self) -> str:
        if self.conflicts:
            return f"{', '.join(self.conflicts)} holds files diffalign does not write"
        return f"no diffalign run ({RUN_CONFIG}, {SUMMARY} or a checkpoint) is there"

    def remove_run(self) -> list[str]:
        for name in self.run:
            path = os.path.join(self.output_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        return list(self.run)


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _state(checkpoint: str) -> dict:
    try:
        state = read_state(checkpoint)
        int(state["step"])
        return state
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunFolderError(f"--resume-from {checkpoint}: its {STATE_FILE} is unreadable ({error}); resume from "
                             "another checkpoint") from error


def _saved_identity(checkpoint: str) -> Optional[dict]:
    """The identity stored with a checkpoint, or (older checkpoints) rebuilt from its run's run_config.json."""
    state = _state(checkpoint)
    if isinstance(state.get("identity"), dict):
        return state["identity"]
    return _identity_from_run_config(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(checkpoint))), RUN_CONFIG))


def _identity_from_run_config(path: str) -> Optional[dict]:
    try:
        with open(path) as handle:
            run = json.load(handle)
        return run.get("identity") or run_identity(run["train_config"], run["method_config"], run["world_size"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


# ------------------------------------------------------------------------------------------- the plan
@dataclasses.dataclass
class RunFolder:
    """The decision for this run's output folder (the same object on every process; the lock only on the main)."""

    output_dir: str
    identity: dict
    checkpoint: Optional[str] = None
    start_step: int = 0
    run_config_name: str = RUN_CONFIG
    kept: list[str] = dataclasses.field(default_factory=list)  # other files present at the start
    lock: Optional[RunLock] = None
    watch: Optional[LauncherWatch] = None

    @property
    def resumed_from(self) -> Optional[dict]:
        return None if self.checkpoint is None else {"checkpoint": self.checkpoint, "step": self.start_step}

    def check_launcher(self, accelerator, where: str) -> None:
        """Stop (on every process at once) when the launcher that started this process has exited.

        Every process must call this at the same points (one all-reduce with several processes)."""
        gone = self.watch is not None and self.watch.gone()
        if accelerator.num_processes > 1:
            import torch

            flag = torch.tensor([1.0 if gone else 0.0], device=accelerator.device)
            gone = accelerator.reduce(flag, reduction="sum").item() > 0
        if gone:
            parent = self.watch.parent if self.watch is not None and self.watch.parent else "?"
            raise LauncherGoneError(
                f"the launcher that started this run (pid {parent}) has exited: stopping {where} without exporting; "
                f"continue the run with --resume-from latest --output-dir {self.output_dir}")

    def summary_files(self) -> list[str]:
        """What this run folder holds that a run wrote (train_summary.json's ``files``: --overwrite may remove them)."""
        present = set(os.listdir(self.output_dir)) - {LOCK_FILE} - set(self.kept)
        return sorted(present | {SUMMARY})

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()


_OPEN: list[RunFolder] = []


@contextlib.contextmanager
def closing_run_folders():
    """Release the locks of the run folders opened inside the block when it ends, however it ends."""
    mark = len(_OPEN)
    try:
        yield
    finally:
        while len(_OPEN) > mark:
            _OPEN.pop().close()


def open_run_folder(config, method_config, accelerator) -> RunFolder:
    """Check the options against the output folder, take its lock and prepare it (main process), and share
    the decision with every process. Raises ``RunFolderError`` on every process when the run is refused."""
    identity = run_identity(dataclasses.asdict(config), dataclasses.asdict(method_config), accelerator.num_processes)
    decision, error, failure = None, None, None
    folder = None
    if accelerator.is_main_process:
        try:
            folder = prepare_run_folder(config, identity)
            decision = {"checkpoint": folder.checkpoint, "start_step": folder.start_step,
                        "run_config_name": folder.run_config_name, "kept": folder.kept}
        except RunFolderError as caught:
            error = str(caught)
        except Exception as caught:  # noqa: BLE001  (tell the other processes, then raise it here)
            error, failure = f"--output-dir {config.output_dir}: {caught}", caught
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        shared = broadcast_object_list([(decision, error)], from_process=0)[0]
        decision, error = shared
    if failure is not None:
        raise failure
    if error is not None:
        raise RunFolderError(error)
    if folder is None:
        folder = RunFolder(config.output_dir, identity, **decision)
    folder.watch = LauncherWatch()
    _OPEN.append(folder)
    return folder


def prepare_run_folder(config, identity: dict) -> RunFolder:
    """The main process's part: validate, lock, decide and clear (see the module docstring)."""
    output_dir = config.output_dir  # max_steps, checkpointing_steps >= 1: TrainConfig checks them
    if config.overwrite and config.resume_from:
        raise RunFolderError("--overwrite and --resume-from exclude each other (--overwrite deletes the run that "
                             "--resume-from would continue); drop one of them")
    explicit = None
    if config.resume_from and config.resume_from != "latest":
        explicit = config.resume_from
        if not os.path.isfile(os.path.join(explicit, STATE_FILE)):
            found = list_checkpoints(explicit) if os.path.isdir(explicit) else []
            if found:
                raise RunFolderError(f"--resume-from {explicit} is a run folder, not a checkpoint: pass --resume-from latest "
                                     f"--output-dir {explicit}, or a checkpoint such as {found[-1][1]}")
            raise RunFolderError(f"--resume-from {explicit}: not a complete diffalign checkpoint (no {STATE_FILE}); "
                                 "pass latest or a folder checkpoints/step-N of a run")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise RunFolderError(f"--output-dir {output_dir} is a file, not a folder")

    created = not os.path.exists(output_dir)
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as error:
        raise RunFolderError(f"--output-dir {output_dir}: cannot create it ({error.strerror})") from error
    lock = RunLock(output_dir)
    try:
        lock.acquire()
        folder = _decide(config, identity, FolderContents.read(output_dir), explicit)
    except BaseException:
        lock.release()
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(output_dir)
        raise
    folder.lock = lock
    return folder


def _decide(config, identity: dict, contents: FolderContents, explicit: Optional[str]) -> RunFolder:
    output_dir = config.output_dir
    folder = RunFolder(output_dir, identity, kept=contents.other)

    if config.overwrite:
        if contents.holds_run:
            if not contents.is_diffalign_run:
                raise contents.not_ours("--overwrite")
            _refuse_deleting_inputs(config, contents, "--overwrite")
            removed = contents.remove_run()
            print(f"--overwrite: removed the previous run from {output_dir} ({', '.join(removed)})")
        return folder

    if explicit is not None and not _inside(explicit, checkpoints_dir(output_dir)):
        # a checkpoint of another folder: continue that run here (a fork); this folder must hold no run
        if contents.holds_run:
            raise RunFolderError(f"--output-dir {output_dir} already holds a run ({contents.describe()}); to continue "
                                 f"the checkpoint {explicit} in a new folder, choose an empty --output-dir")
        return _resume(config, folder, explicit)

    if explicit is not None:  # a checkpoint of this folder, perhaps not the latest
        step = int(_state(explicit)["step"])
        return _resume(config, folder, explicit, later=[path for done, path in contents.checkpoints if done > step])

    if config.resume_from == "latest":
        if contents.checkpoints:
            return _resume(config, folder, contents.checkpoints[-1][1])
        if not contents.holds_run:
            print(f"--resume-from latest: no checkpoint in {output_dir} yet: starting a new run")
            return folder
        crashed = not contents.finished and not contents.conflicts and all(
            name in RUN_FILES or RUN_CONFIG_PATTERN.match(name) for name in contents.run)
        if not crashed:
            if not contents.is_diffalign_run:
                raise contents.not_ours("--resume-from latest")
            raise RunFolderError(
                f"--resume-from latest: {output_dir} holds a {'finished ' if contents.finished else ''}run "
                f"({contents.describe()}) but no checkpoint to continue from; replace it with --overwrite or choose "
                "another --output-dir")
        saved = _identity_from_run_config(os.path.join(output_dir, RUN_CONFIG))
        mismatches = identity_mismatches(saved, identity) if saved else []
        if mismatches:
            raise RunFolderError(
                f"--resume-from latest: {output_dir} holds a run that stopped before its first checkpoint and was started "
                f"with {describe_mismatches(mismatches)}; rerun it with the same settings, replace it with --overwrite, "
                "or choose another --output-dir")
        _refuse_deleting_inputs(config, contents, "--resume-from latest (starting over)")
        removed = contents.remove_run()
        print(f"--resume-from latest: no checkpoint in {output_dir} yet (its run stopped before the first one): "
              f"starting over; removed {', '.join(removed)}")
        return folder

    if contents.holds_run:
        if not contents.is_diffalign_run:
            raise contents.not_ours("--output-dir")
        raise RunFolderError(f"--output-dir {output_dir} already holds a diffalign run ({contents.describe()}); continue "
                             "it with --resume-from latest, replace it with --overwrite, or choose another --output-dir")
    return folder


def _resume(config, folder: RunFolder, checkpoint: str, later: Optional[list[str]] = None) -> RunFolder:
    output_dir = config.output_dir
    step = int(_state(checkpoint)["step"])
    what = f"--resume-from {config.resume_from}: the checkpoint {checkpoint}"
    saved = _saved_identity(checkpoint)
    if saved is None:
        print(f"{what} records no settings (an older diffalign): resuming without checking them")
    else:
        mismatches = identity_mismatches(saved, folder.identity)
        if mismatches:
            raise RunFolderError(f"{what} was trained with {describe_mismatches(mismatches)}; resume with the same "
                                 "settings or start a new --output-dir")
    if config.max_steps <= step:
        raise RunFolderError(f"{what} is at step {step} and --max-steps is {config.max_steps}, so nothing is left to "
                             f"train; pass --max-steps above {step} to train further, or choose another --output-dir "
                             "for a new run")
    scheduled = (saved or {}).get("max_steps")
    schedule = (saved or {}).get("lr_scheduler", config.lr_scheduler)
    if scheduled is not None and scheduled != config.max_steps and schedule not in SCHEDULES_WITHOUT_MAX_STEPS:
        raise RunFolderError(
            f"{what} was trained for --max-steps {scheduled} under --lr-scheduler {schedule}, which depends on it; "
            f"--max-steps {config.max_steps} would change the learning rate from step {step + 1} on: resume with "
            f"--max-steps {scheduled}, or start a new --output-dir")
    for path in later or []:
        shutil.rmtree(path)
    if later:
        print(f"{what}: removed the later checkpoints {', '.join(os.path.basename(p) for p in later)} "
              "(the continuation this resume replaces)")
    summary = os.path.join(output_dir, SUMMARY)
    if os.path.exists(summary):
        os.unlink(summary)  # rewritten when this run finishes; until then the folder is not a finished run
    folder.checkpoint, folder.start_step = checkpoint, step
    if os.path.exists(os.path.join(output_dir, RUN_CONFIG)):
        name, count = f"run_config.resume-step-{step}.json", 1
        while os.path.exists(os.path.join(output_dir, name)):
            count += 1
            name = f"run_config.resume-step-{step}.{count}.json"
        folder.run_config_name = name
    return folder


def _refuse_deleting_inputs(config, contents: FolderContents, option: str) -> None:
    for flag, path in (("--model", config.model), ("--data", config.data)):
        if path and os.path.exists(path) and any(_inside(path, os.path.join(contents.output_dir, name)) for name in contents.run):
            raise RunFolderError(f"{option} would delete {flag} {path}, which lies in --output-dir {contents.output_dir}; "
                                 "choose another --output-dir")
        if path and os.path.exists(path) and os.path.realpath(path) == os.path.realpath(contents.output_dir):
            raise RunFolderError(f"{option} would delete {flag} {path}, which is --output-dir itself; "
                                 "choose another --output-dir")


__all__ = [
    "LOCK_FILE", "MAY_CHANGE_ON_RESUME", "LauncherGoneError", "LauncherWatch", "RunFolder", "RunFolderError", "RunLock",
    "closing_run_folders", "describe_mismatches", "identity_mismatches", "open_run_folder", "prepare_run_folder", "run_identity",
]
