"""For the tests that run Ray jobs and clusters of their own (`ray start` processes): free loopback
ports, a process's descendants by command line and ending them, and whether Ray Train has
registered a checkpoint."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def free_ports_and_worker_range(count: int, width: int) -> tuple[list[int], int]:
    """`count` free ports and the first port of a worker range `width` wide that holds none of them
    (Ray refuses to start when a component's port falls inside the worker range)."""
    while True:
        *ports, min_worker = free_ports(count + 1)
        if not any(min_worker <= port <= min_worker + width for port in ports):
            return ports, min_worker


def stop_tree(process: subprocess.Popen, kill: bool = False) -> None:
    """End `process` and all its descendants (SIGKILL at once with `kill`, else SIGTERM first)."""
    import psutil

    try:
        procs = [psutil.Process(process.pid)] + psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill() if kill else p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def descendants(root_pid: int, *words: str) -> list:
    """The descendant processes of `root_pid` (this test's own, not another Ray's on the machine)
    whose command line holds every one of `words`."""
    import psutil

    found = []
    for process in psutil.Process(root_pid).children(recursive=True):
        try:
            line = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if all(word in line for word in words):
            found.append(process)
    return found


def registered(run_dir: Path, checkpoint: str) -> bool:
    """Ray Train's controller has registered `checkpoint` of the run in `run_dir` (its snapshot
    file names it)."""
    try:
        return checkpoint in (Path(run_dir) / "checkpoint_manager_snapshot.json").read_text()
    except OSError:
        return False
