"""Runs the campaign's jobs.txt: lines ``name|dependencies|command`` (dependencies: names,
comma-separated, or empty), at most ``--slots`` at a time, each job once all its dependencies
have ended with exit status 0, in the file's order otherwise. Every start and end is appended
to progress.txt (UTC, seconds, exit status); a job recorded as done with status 0 is not run
again, so the runner can be stopped and started again.

A training job (``twinsnn train ... --out-dir R ... --name N``) that was killed (by the
kernel's out-of-memory killer on a shared machine: exit status 137) is started again, at most
``--retries`` times: with ``--resume`` in place of ``--branch-from`` where its run folder holds
an end-of-epoch checkpoint (the resumed run ends as the uninterrupted one would), else from
scratch in an emptied folder. A job that an earlier runner started and that is still running
(its run folder's lock is held) is waited for; one whose process is gone counts as killed,
or as done if its run finished.

    python run_jobs.py jobs.txt progress.txt [--slots 2] [--retries 3]
"""
import argparse
import datetime
import fcntl
import re
import shutil
import subprocess
import time
from pathlib import Path

KILLED = (137, -9)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+0000")


def run_dir(command: str) -> Path | None:
    """The run folder of a training job's command, None for any other job."""
    out, name = re.search(r"--out-dir (\S+)", command), re.search(r"--name (\S+)", command)
    return Path(out[1], name[1]) if " train " in command and out and name else None


def lock_held(folder: Path) -> bool:
    try:
        with open(folder / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(f, fcntl.LOCK_UN)
        return False
    except FileNotFoundError:
        return False
    except BlockingIOError:
        return True


def retry_command(command: str, folder: Path) -> tuple[str, str]:
    """The command that continues a killed training job, and how."""
    if (folder / "checkpoint.pt").exists():
        head, sep, tail = command.partition(" > ")
        head = re.sub(r" --branch-from (?:\$\([^)]*\)|[^\s$])+", "", head)  # $(cat ...) too
        return head + " --resume" + sep + tail, "resume"
    shutil.rmtree(folder, ignore_errors=True)
    return command, "from scratch"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("jobs")
    parser.add_argument("progress")
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--retries", type=int, default=3)
    args = parser.parse_args()
    status, starts = {}, {}  # name: "started" | exit status; name: times started
    try:
        for line in open(args.progress):
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "start":
                status[parts[2]], starts[parts[2]] = "started", starts.get(parts[2], 0) + 1
            elif len(parts) >= 5 and parts[1] == "done":
                status[parts[2]] = int(parts[4].removeprefix("rc="))
    except FileNotFoundError:
        pass
    log = open(args.progress, "a", buffering=1)
    running, elsewhere = {}, {}  # name: (process, start time); name: run folder
    while True:
        jobs = []
        for line in open(args.jobs):  # read again each round: jobs may be appended
            if line.strip() and not line.startswith("#"):
                name, deps, command = line.rstrip("\n").split("|", 2)
                jobs.append((name, [d for d in deps.split(",") if d], command))
        for name, deps, command in jobs:  # started by an earlier runner, never ended
            folder = run_dir(command)
            if status.get(name) == "started" and name not in running and name not in elsewhere:
                if folder is not None and lock_held(folder):
                    elsewhere[name] = folder
                else:
                    finished = folder is not None and (folder / "model.safetensors").exists()
                    status[name] = 0 if finished else 137
                    log.write(f"{now()} done {name} 0s rc={status[name]} (earlier runner)\n")
        for name, folder in list(elsewhere.items()):
            if not lock_held(folder):
                del elsewhere[name]
                status[name] = 0 if (folder / "model.safetensors").exists() else 137
                log.write(f"{now()} done {name} 0s rc={status[name]} (earlier runner)\n")
        for name, (proc, start) in list(running.items()):
            if proc.poll() is not None:
                del running[name]
                status[name] = proc.returncode
                log.write(f"{now()} done {name} {time.time() - start:.0f}s rc={proc.returncode}\n")
        for name, deps, command in jobs:
            if len(running) + len(elsewhere) >= args.slots:
                break
            if name in running or name in elsewhere or not all(status.get(d) == 0 for d in deps):
                continue
            state, how = status.get(name), ""
            if state in KILLED and run_dir(command) and starts.get(name, 0) <= args.retries:
                command, how = retry_command(command, run_dir(command))
                how = f" (retry {starts[name]}, {how})"
            elif state is not None:
                continue
            log.write(f"{now()} start {name}{how}\n")
            starts[name] = starts.get(name, 0) + 1
            status[name] = "started"
            running[name] = (subprocess.Popen(["bash", "-c", command]), time.time())
        ready = [n for n, deps, c in jobs if n not in running and all(
            status.get(d) == 0 for d in deps) and (status.get(n) is None or (
                status.get(n) in KILLED and run_dir(c) and starts.get(n, 0) <= args.retries))]
        if not running and not elsewhere and not ready:
            break
        time.sleep(10)
    failed = [n for n, s in status.items() if s not in (0, "started")]
    log.write(f"{now()} runner ends: {sum(s == 0 for s in status.values())} done, "
              f"{len(failed)} not done ({', '.join(failed) or 'none'})\n")


if __name__ == "__main__":
    main()
