"""Time the optimiser steps of an unmodified training script or module.

    python -m diffalign.benchmarks.step_timer --out times.json [--threads 1] -- train.py --its-args ...
    python -m diffalign.benchmarks.step_timer --out times.json -- -m diffalign train --its-args ...

Installs a global optimiser post-step hook (``torch.optim.optimizer.register_optimizer_step_post_hook``,
called after ``step()`` of every ``torch.optim.Optimizer``, including those wrapped by accelerate),
which records ``time.perf_counter()`` (and ``time.process_time()``, the process's CPU time, which
time-slicing by other processes on a shared machine does not inflate); fixes the thread count (``torch.set_num_threads``, and
``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` when not already set, before torch is imported); then runs
the target in this process with ``runpy`` (``run_path`` for a script file, with its folder first on
``sys.path`` as ``python script.py`` does; ``run_module`` for ``-m``), with ``sys.argv`` set to what
the target would see. At exit, also on an exception or ``sys.exit``, it writes to ``--out``:
``{"stamps": [...], "cpu_stamps": [...], "threads": N, "exit": "ok" | error text, "vm_hwm_kib": ...}``.

Step time is the interval between consecutive stamps: it covers everything a step does (data
loading, forward, backward, the optimiser, logging). Peak memory is for the caller to take from the
child's ``os.wait4`` rusage (``ru_maxrss``, KiB on Linux), as ``benchmarks/step_cost.py`` does;
``vm_hwm_kib`` (``VmHWM`` of ``/proc/self/status``, this process image only) is a cross-check.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import time


def step_intervals(stamps: list[float], warmup: int = 2) -> list[float]:
    """Seconds between consecutive optimiser steps, without the first ``warmup`` intervals."""
    return [later - earlier for earlier, later in zip(stamps, stamps[1:])][warmup:]


def _vm_hwm_kib() -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" not in argv:
        raise SystemExit("usage: python -m diffalign.benchmarks.step_timer --out FILE [--threads N] -- SCRIPT|-m MODULE [ARGS...]")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m diffalign.benchmarks.step_timer", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file for the step timestamps")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args(argv[:split])
    target = argv[split + 1:]
    if not target or (target[0] == "-m" and len(target) < 2):
        parser.error("nothing to run after --")
    return args, target


def main(argv: list[str] | None = None) -> None:
    args, target = _parse(list(sys.argv[1:] if argv is None else argv))
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, str(args.threads))
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    torch.set_num_threads(args.threads)
    stamps: list[float] = []
    cpu_stamps: list[float] = []

    def record(optimizer, hook_args, hook_kwargs) -> None:
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.process_time())

    register_optimizer_step_post_hook(record)
    outcome = "ok"
    try:
        if target[0] == "-m":
            sys.argv = [target[1], *target[2:]]
            runpy.run_module(target[1], run_name="__main__", alter_sys=True)
        else:
            script = os.path.abspath(target[0])
            sys.argv = [script, *target[1:]]
            sys.path.insert(0, os.path.dirname(script))
            runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        if stop.code not in (None, 0):
            outcome = f"SystemExit({stop.code!r})"
        raise
    except BaseException as error:
        outcome = f"{type(error).__name__}: {error}"
        raise
    finally:
        with open(args.out, "w") as handle:
            json.dump({"stamps": stamps, "cpu_stamps": cpu_stamps, "threads": torch.get_num_threads(), "exit": outcome,
                       "vm_hwm_kib": _vm_hwm_kib()}, handle)


if __name__ == "__main__":
    main()
