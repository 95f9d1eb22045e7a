"""Run every benchmark, one after the other, each in its own process; print their tables and
the time each took. With --write-readme, put the tables into benchmarks/README.md between the
markers <!-- bench:NAME --> and <!-- /bench:NAME -->.

    python benchmarks/run_all.py --write-readme          # CPU here: under 10 minutes
    python benchmarks/run_all.py --only overhead,claim --device cuda
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from datetime import datetime, timezone

import _common as c

SCRIPTS = ("overhead", "claim", "logging_overhead", "startup", "parallel_sweeps")
README = c.REPO / "benchmarks" / "README.md"


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=c.REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=c.REPO,
                           capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + ("+changes" if dirty else "")


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"error: {README} has no <!-- bench:{name} --> ... <!-- /bench:{name} --> block")
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


def wait_quiet(limit: float) -> float:
    """Wait (up to `limit` s) for a 5 s window in which other processes use < QUIET cores."""
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        with c.Contention() as contention:
            time.sleep(5)
        if contention.others < c.QUIET:
            break
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--only", default=",".join(SCRIPTS), help="comma-separated subset of " + ", ".join(SCRIPTS))
    p.add_argument("--write-readme", action="store_true")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each script, wait up to this long for a 5 s window in which other processes "
                        f"use less than {c.QUIET} cores (default 0: do not wait)")
    args = p.parse_args()
    outputs, seconds, waits = {}, {}, {}
    started = time.perf_counter()
    for name in args.only.split(","):
        waited = wait_quiet(args.wait_quiet)
        command = [c.PYTHON, str(c.REPO / "benchmarks" / f"{name}.py"), "--device", args.device]
        print(f"\n$ python benchmarks/{name}.py --device {args.device}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(command, cwd=c.REPO, stdout=subprocess.PIPE, text=True)
        seconds[name] = time.perf_counter() - start
        waits[name] = waited
        outputs[name] = done.stdout
        print(done.stdout, flush=True)
        if done.returncode:
            print(f"benchmarks/{name}.py exited {done.returncode}", file=sys.stderr)
    total = time.perf_counter() - started
    summary = c.table(
        ["script", "seconds", "waited for a quiet machine before it, s"],
        [[f"benchmarks/{n}.py", f"{s:.0f}", f"{waits[n]:.0f}"] for n, s in seconds.items()]
        + [["all scripts", f"{sum(seconds.values()):.0f}", f"{sum(waits.values()):.0f}"]],
    )
    stamp = (f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, commit {git_commit()}, --device {args.device}, "
             f"{total:.0f} s from start to end")
    print(f"\n{summary}\n\n{stamp}")
    if args.write_readme:
        text = README.read_text()
        for name, out in outputs.items():
            text = replace_block(text, name, out)
        if set(outputs) == set(SCRIPTS):  # a partial run leaves the summary of the last full one
            text = replace_block(text, "summary", f"Last run: {stamp}.\n\n{summary}\n")
        README.write_text(text)
        print(f"wrote {README}")


if __name__ == "__main__":
    main()
