#!/usr/bin/env python3
"""Runs a command and samples memory through its whole run, from /proc.

Prints, when it ends: the wall time; the command's own peak RSS (VmHWM: the kernel keeps the
high-water mark for the process's whole life; the last sample, at most --every seconds before
the exit, is reported); the largest VmHWM of any descendant (a worker); and the peak of the
summed RSS of the command and every descendant, sampled every --every seconds. The command's
stdout and stderr pass through.

usage: scripts/peak-memory.py [--every 0.2] [--exclude NAME] -- COMMAND ARGS...
"""
import argparse
import os
import subprocess
import sys
import time


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import descendants, kib  # noqa: E402
from benchlib import proc_status as status  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--every", type=float, default=0.2)
    parser.add_argument("--exclude", action="append", default=[],
                        help="leave processes with this name out of the fleet sum (e.g. supervisor's mockapi)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    started = time.monotonic()
    proc = subprocess.Popen(command)
    hwm = fleet_peak = worker_peak = 0
    while proc.poll() is None:
        own = status(proc.pid)
        if own:
            hwm = max(hwm, kib(own.get("VmHWM")))
            total = kib(own.get("VmRSS"))
            for pid in descendants(proc.pid):
                st = status(pid)
                try:
                    with open(f"/proc/{pid}/cmdline") as f:
                        cmdline = f.read()
                except OSError:
                    continue
                if not st or any(name in cmdline for name in args.exclude):
                    continue
                rss = kib(st.get("VmRSS"))
                worker_peak = max(worker_peak, kib(st.get("VmHWM")))
                total += rss
            fleet_peak = max(fleet_peak, total)
        time.sleep(args.every)
    wall = time.monotonic() - started
    print(f"peak-memory: wall {wall:.1f} s, supervisor VmHWM {hwm / 1024:.1f} MiB, "
          f"largest child VmHWM {worker_peak / 1024:.1f} MiB, fleet peak RSS {fleet_peak / 1024:.1f} MiB, "
          f"exit {proc.returncode}", file=sys.stderr)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
