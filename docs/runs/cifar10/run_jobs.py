"""Runs the campaign's jobs.txt: lines ``name|dependencies|command`` (dependencies: names,
comma-separated, or empty), at most ``--slots`` at a time, each job once all its dependencies
have ended with exit status 0, in the file's order otherwise. Every start and end is appended
to progress.txt (UTC, seconds, exit status); a job already recorded as done with status 0 is
not run again, so the runner can be stopped and started again (a stopped run resumes from its
checkpoint only if its command says --resume; here a stopped job starts over).

    python run_jobs.py jobs.txt progress.txt [--slots 2]
"""
import argparse
import datetime
import subprocess
import time


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+0000")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("jobs")
    parser.add_argument("progress")
    parser.add_argument("--slots", type=int, default=2)
    args = parser.parse_args()
    done, failed = set(), set()
    try:
        for line in open(args.progress):
            parts = line.split()
            if len(parts) >= 5 and parts[1] == "done":
                (done if parts[4] == "rc=0" else failed).add(parts[2])
    except FileNotFoundError:
        pass
    failed -= done
    running = {}
    log = open(args.progress, "a", buffering=1)
    while True:
        jobs = []
        for line in open(args.jobs):  # read again each round: jobs may be appended
            if line.strip() and not line.startswith("#"):
                name, deps, command = line.rstrip("\n").split("|", 2)
                jobs.append((name, [d for d in deps.split(",") if d], command))
        for name, (proc, start) in list(running.items()):
            if proc.poll() is not None:
                del running[name]
                (done if proc.returncode == 0 else failed).add(name)
                log.write(f"{now()} done {name} {time.time() - start:.0f}s rc={proc.returncode}\n")
        for name, deps, command in jobs:
            if len(running) >= args.slots:
                break
            if name in done or name in failed or name in running:
                continue
            if all(d in done for d in deps):
                log.write(f"{now()} start {name}\n")
                running[name] = (subprocess.Popen(["bash", "-c", command]), time.time())
        waiting = [n for n, deps, _ in jobs if n not in done and n not in failed
                   and n not in running and not any(d in failed for d in deps)]
        if not running and not any(all(d in done for d in deps) for n, deps, _ in jobs
                                   if n in waiting):
            break
        time.sleep(10)
    log.write(f"{now()} runner ends: {len(done)} done, {len(failed)} failed\n")


if __name__ == "__main__":
    main()
