"""A run as a process: one run per directory (a lock), a clean stop on SIGINT/SIGTERM, log files inside the run,
and every failure told in one line. `run_rounds` is the one run path: `iterdpo run`, `iterdpo resume` and the Python
API (`iterdpo.run`) all go through it.

- The lock is an `flock` on RUN_DIR/.lock, which names its holder (pid, host, command, start). The kernel drops it
  when the holder dies, however it dies, so a killed run never leaves it stuck.
- The first SIGINT or SIGTERM (Ctrl-C, `ray job stop`, a scheduler's preemption) raises `Interrupted` in the main
  thread, wherever the driver waits; the run stops, its actors and the Ray node it started are shut down, and the
  rounds already in metrics.jsonl stay (every file is written atomically): `iterdpo resume` goes on from there. A
  second signal exits at once, still resumable.
- RUN_DIR/logs/iterdpo.log gets the driver's log; on a failure, RUN_DIR/logs/error.log gets the whole story (remote
  tracebacks included) and RUN_DIR/logs/ray/ a copy of the Ray logs written during the run.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Iterator

from iterdpo.core.errors import ConfigError, RunError
from iterdpo.rundir.layout import RunDir, check_new, placed

if TYPE_CHECKING:
    from iterdpo.config.schedule import Schedule
    from iterdpo.config.schema import Config

log = logging.getLogger("iterdpo")

STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


class RunFailed(RunError):
    """A run stopped on a failure: the message is the one line the console shows (cause, where the details are,
    how to go on); the failure itself is the exception's cause."""


def run_rounds(cfg: Config, run_dir: Path, schedule: Schedule | None = None, fresh: bool = True
               ) -> list[dict[str, Any]]:
    """Runs (`fresh`) or resumes the rounds of `cfg` in `run_dir`, returns the metrics rows. Under the directory's
    lock; SIGINT/SIGTERM raise `Interrupted` (when called from the main thread); the driver's log also goes to
    RUN_DIR/logs/iterdpo.log; the actors, and the Ray node this call started, are shut down however it ends. A run-time
    failure or a failing disk is raised as `RunFailed`, its details written to RUN_DIR/logs/ first."""
    import ray
    from ray.exceptions import RayError

    from iterdpo.rounds.orchestrator import Orchestrator

    started = time.time()
    run_dir = placed(run_dir)
    with locked(run_dir), stop_on_signals():
        if fresh:
            check_new(run_dir)
        started_ray = not ray.is_initialized()
        try:
            with log_file(run_dir):
                orchestrator = Orchestrator(cfg, run_dir, schedule)  # bad input stops it with one line, first
                log.info("run directory: %s (on %s; only this process writes it)", run_dir, socket.gethostname())
                try:
                    return orchestrator.run()
                finally:
                    orchestrator.shutdown()
        except Exception as err:
            stop = _interruption(err)
            if stop is not None:  # a signal that landed inside a C extension comes back wrapped (a SystemError)
                raise stop from None
            if isinstance(err, (RunError, RayError)) or storage_error(err) is not None:
                raise RunFailed(one_line(err, run_dir, started)) from err
            raise
        finally:
            if started_ray and ray.is_initialized():
                ray.shutdown()  # the local node this run started goes with it (a cluster it joined stays)


def _interruption(err: BaseException) -> Interrupted | None:
    """The stop signal behind `err`, where its chain of causes holds one."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, Interrupted):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class Interrupted(BaseException):
    """A stop signal arrived (a BaseException, like KeyboardInterrupt: no `except Exception` swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Holds RUN_DIR/.lock for the block; a directory another live process holds is a one-line error."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(RunDir(run_dir).lock, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = _holder(handle.read())
        handle.close()
        raise ConfigError(f"run directory '{run_dir}' is in use by {holder}; one run per directory") from None
    handle.truncate(0)
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%F %T"),
                             "command": " ".join(sys.argv[:4])}))
    handle.flush()
    try:
        yield
    finally:
        handle.close()  # releases the lock


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']} (`{info['command']}`, since {info['started']})"
    except (ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` once; a second one exits at once (exit code 128 + signal). Only the
    main thread can take signals: elsewhere (a run started from a worker thread) the block runs without this."""
    def first(signum: int, _frame: FrameType | None) -> None:
        for name in (signal.SIGINT, signal.SIGTERM):
            signal.signal(name, second)
        print(f"iterdpo: {signal.Signals(signum).name}: stopping (another signal stops at once)", file=sys.stderr,
              flush=True)
        raise Interrupted(signum)

    def second(signum: int, _frame: FrameType | None) -> None:
        print(f"iterdpo: {signal.Signals(signum).name} again: stopped at once (the run can be resumed)",
              file=sys.stderr, flush=True)
        os._exit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {name: signal.signal(name, first) for name in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(name, handler)


@contextmanager
def log_file(run_dir: Path) -> Iterator[Path]:
    """The driver's log lines also go to RUN_DIR/logs/iterdpo.log."""
    path = RunDir(run_dir).logs / "iterdpo.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    try:
        yield path
    finally:
        log.removeHandler(handler)
        handler.close()


def storage_error(err: BaseException) -> OSError | None:
    """The OSError behind `err` when it is the disk's fault (full, read-only, not writable), else None."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in STORAGE_ERRORS:
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    return None


def one_line(err: BaseException, run_dir: Path, started: float) -> str:
    """What the console says of a failure; the full story goes to RUN_DIR/logs/error.log (named in the line)."""
    details = _write_details(err, run_dir, started)
    disk = storage_error(err)
    if disk is not None:
        cause = f"cannot write {disk.filename or 'the run directory'}: {disk.strerror}"
    else:
        cause = " ".join(str(err).split()) or type(err).__name__
    where = f"details in {details}; " if details else ""
    return f"{cause} ({where}the finished rounds are kept: `iterdpo resume {run_dir}` goes on from there)"


def _write_details(err: BaseException, run_dir: Path, started: float) -> Path | None:
    """RUN_DIR/logs/error.log (the exception with every traceback, remote ones included) and RUN_DIR/logs/ray/ (the
    Ray logs of this run); None when the run directory cannot be written either."""
    folder = RunDir(run_dir).logs
    try:
        folder.mkdir(parents=True, exist_ok=True)
        text = "".join(traceback.format_exception(err))
        details = getattr(err, "details", "")
        (folder / "error.log").write_text(text + (f"\n{details}\n" if details else ""), encoding="utf-8")
        _copy_ray_logs(folder / "ray", started)
        return folder / "error.log"
    except OSError:
        return None


def _copy_ray_logs(target: Path, since: float) -> None:
    """The Ray session's log files written since the run started (the actors' stdout and stderr among them)."""
    from iterdpo.rounds.runtime import ray_logs_dir

    source = ray_logs_dir()
    if source is None:
        return
    for path in source.glob("*"):
        if path.is_file() and path.stat().st_mtime >= since and path.stat().st_size:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / path.name)


__all__ = ["Interrupted", "RunError", "RunFailed", "locked", "log_file", "one_line", "run_rounds", "stop_on_signals",
           "storage_error"]
