"""What flota's benchmark scripts share: the release binary, mockapi on loopback, a figure of
flota's summary, and how they say what they do."""
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUP = ROOT / "target" / "release" / "supervisor"


def say(*a):
    print(*a, file=sys.stderr, flush=True)


class MockApi:
    def __init__(self, args):
        self.proc = subprocess.Popen([str(SUP), "mockapi", "--listen", "127.0.0.1:0", *args],
                                     stdout=subprocess.PIPE, text=True)
        self.addr = self.proc.stdout.readline().strip()

    def url(self):
        return f"http://{self.addr}/items/{{id}}"

    def stats(self):
        with urllib.request.urlopen(f"http://{self.addr}/stats", timeout=10) as r:
            return json.load(r)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def figure(summary, label):
    """The number after `label` in flota's summary."""
    at = summary.find(label)
    if at < 0:
        return 0
    digits = ""
    for c in summary[at + len(label):].lstrip():
        if c.isdigit():
            digits += c
        elif c != ",":
            break
    return int(digits or 0)
