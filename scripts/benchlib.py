"""What flota's benchmark scripts share: the release binary, mockapi and nginx on loopback,
wrk, what /proc says of a process, a figure of flota's summary, and how they say what they do.
Each is written once, here; the scripts import it."""
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUP = ROOT / "target" / "release" / "supervisor"
NGINX_ECHO = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")


def say(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    """A loopback port free now, below the kernel's ephemeral range: one in that range, freed,
    can be taken by any client socket before the server binds it (tests/util.rs says more)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    low = low if low > 12000 else 32768
    while True:
        port = random.randrange(10000, low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


class MockApi:
    """mockapi (`supervisor mockapi`) on a free loopback port, with `args`."""

    def __init__(self, args):
        self.proc = subprocess.Popen([str(SUP), "mockapi", "--listen", "127.0.0.1:0", *args],
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        self.addr = self.proc.stdout.readline().strip()

    def url(self):
        return f"http://{self.addr}/items/{{id}}"

    def stats(self):
        with urllib.request.urlopen(f"http://{self.addr}/stats", timeout=10) as r:
            return json.load(r)

    def requests(self):
        return self.stats()["requests"]

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Nginx:
    """nginx on a free loopback port, one worker process, its configuration written in a
    directory of its own: `server` is what goes inside its server block (the locations),
    `http` more directives of its http block, `echo` loads the echo module. Installed with
    apt-get (nginx-light, libnginx-mod-http-echo) when missing. `reconfigure(server)` reloads it
    with other locations."""

    def __init__(self, server, http="", echo=False):
        if not (shutil.which("nginx") and (NGINX_ECHO.exists() or not echo)) and shutil.which("apt-get"):
            subprocess.run(["apt-get", "update", "-qq"], check=False)
            subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light", "libnginx-mod-http-echo"],
                           check=False, stdout=subprocess.DEVNULL)
        if not shutil.which("nginx") or (echo and not NGINX_ECHO.exists()):
            raise SystemExit("bench: nginx (and libnginx-mod-http-echo) are needed: apt-get install them")
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="flota-bench-nginx-"))
        self.http, self.echo = http, echo
        self.write_conf(server)
        self.start()

    def write_conf(self, server):
        d = self.dir
        (d / "nginx.conf").write_text(
            (f"load_module {NGINX_ECHO};\n" if self.echo else "")
            + f"worker_processes 1;\ndaemon off;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\n"
            "events { worker_connections 8192; }\n"
            "http {\n"
            f"  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n"
            f"  uwsgi_temp_path {d}; scgi_temp_path {d};\n"
            "  keepalive_requests 1000000; default_type application/json;\n"
            f"{self.http}"
            f"  server {{ listen 127.0.0.1:{self.port} backlog=4096;\n{server}\n  }}\n}}\n")

    def start(self):
        d = self.dir
        self.proc = subprocess.Popen(["nginx", "-c", str(d / "nginx.conf"), "-p", str(d)],
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(f"http://{self.addr}/items/1", timeout=1).read()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"bench: nginx did not start (see {d}/error.log)")
                time.sleep(0.05)

    def signal(self, sig):
        subprocess.run(["nginx", "-c", str(self.dir / "nginx.conf"), "-p", str(self.dir), "-s", sig],
                       stderr=subprocess.DEVNULL, check=False)

    def reconfigure(self, server):
        self.write_conf(server)
        self.signal("reload")

    def url(self):
        return f"http://{self.addr}/items/{{id}}"

    def halt(self):
        self.proc.terminate()
        self.proc.wait()

    def stop(self):
        self.halt()
        shutil.rmtree(self.dir, ignore_errors=True)


# The bodies nginx answers /items/N with in the benchmarks: mockapi's default record (~70 bytes),
# and a 1 KiB one.
SMALL_BODY = '{"id":1,"name":"item-1","price":42.5,"tags":["a","b"],"in_stock":true}'
KIB_BODY = '{"id":1,"text":"' + "x" * (1024 - 20) + '"}'


def nginx_items(body, delay_ms=0):
    """nginx answering /items/N with `body` (after `delay_ms`, through the echo module), as
    mockapi's interface has it."""
    if delay_ms:
        answer = f"echo_sleep {delay_ms / 1000}; echo -n '{body}';"
    else:
        answer = f"return 200 '{body}';"
    return Nginx(f"    location /items/ {{ {answer} }}", http="  access_log off;\n", echo=bool(delay_ms))


def run_wrk(addr, seconds, connections):
    """wrk's requests a second against `addr`, each request a new id under /items/; None
    without wrk."""
    if not shutil.which("wrk"):
        return None
    lua = Path(tempfile.mkdtemp(prefix="flota-wrk-")) / "ids.lua"
    lua.write_text('local id = 0\nrequest = function()\n  id = id + 1\n'
                   '  return wrk.format(nil, "/items/" .. id)\nend\n')
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(lua), f"http://{addr}/"],
                         capture_output=True, text=True).stdout
    shutil.rmtree(lua.parent, ignore_errors=True)
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    say(f"bench: wrk printed no rate:\n{out}")
    return None


def proc_status(pid):
    """/proc/PID/status as a dict of its fields (values stripped); None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return {k: v.strip() for k, v in (line.split(":", 1) for line in f if ":" in line)}
    except OSError:
        return None


def kib(value):
    """A /proc status value in kB (`12345 kB`) as a number."""
    return int(value.split()[0]) if value else 0


def cpu_seconds(pid):
    """utime + stime of a live process, in seconds; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return None


def context_switches(pid):
    """Voluntary + involuntary context switches of every thread of a live process so far."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total = 0
    for tid in tids:
        st = proc_status(f"{pid}/task/{tid}") or {}
        total += int(st.get("voluntary_ctxt_switches", 0)) + int(st.get("nonvoluntary_ctxt_switches", 0))
    return total


def descendants(root):
    """The pids below `root` (children, theirs, ...), from every process's parent in /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


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


class Run:
    """One supervisor run: its summary, wall seconds, VmHWM (MiB, sampled through the run) and
    the CPU seconds of it and its workers (the rusage of it and the children it reaped)."""

    def __init__(self, args):
        out_file = tempfile.TemporaryFile(mode="w+")
        err_file = tempfile.TemporaryFile(mode="w+")
        started = time.monotonic()
        proc = subprocess.Popen([str(SUP), "-q", "--summary", "json", *args], stdout=out_file, stderr=err_file)
        hwm = 0
        while True:
            st = proc_status(proc.pid)
            if st and st.get("State", "").startswith("Z"):
                st = None
            if st:
                hwm = max(hwm, kib(st.get("VmHWM")))
            pid, code, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.1)
        self.wall = time.monotonic() - started
        out_file.seek(0)
        err_file.seek(0)
        if code != 0:
            raise SystemExit(f"bench: exit {code}:\n{err_file.read()}")
        self.summary = json.loads(out_file.read())
        self.hwm = hwm / 1024
        self.cpu = usage.ru_utime + usage.ru_stime
