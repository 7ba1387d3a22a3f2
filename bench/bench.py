#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Side-by-side SMTP server benchmark: asiosmtpd against Postfix's smtp-sink, aiosmtpd and Haraka.

Run it through bench/run (which installs the peers and builds asiosmtpd); see bench/README.md
for how to read the output. Standard library only. The same file also holds the two small
client helpers the driver starts as subprocesses (`_probe`: latency, `_idle`: idle sessions).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import resource
import select
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / ".out"
DEPS = BENCH / ".deps"
SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
SYS_PYTHON = "/usr/bin/python3"  # Debian's python3-aiosmtpd is importable only here
HARAKA_PKG = DEPS / "haraka" / "node_modules" / "Haraka"
HOSTNAME = "bench.local"
TICK = os.sysconf("SC_CLK_TCK")
KIB_1 = 1024
MIB_10 = 10 * 1024 * 1024


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# /proc readings of the server process
# ---------------------------------------------------------------------------------------------

def cpu_ticks(pid: int) -> tuple[int, int]:
    """(utime, stime) of the whole process (all threads, live and exited), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]), int(rest[12])


def run_ns(pid: int) -> int | None:
    """CPU time of the process's live threads in ns (/proc/PID/task/TID/schedstat): the
    precise figure, where /proc/PID/stat counts 10 ms ticks. None where the kernel has none."""
    total = 0
    try:
        for task in os.scandir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task.name}/schedstat") as f:
                    total += int(f.read().split()[0])
            except FileNotFoundError:
                continue  # a thread that left meanwhile
    except OSError:
        return None
    return total


def tree_stats(root: int) -> list[tuple[int, str, int, int, int, int]]:
    """(pid, comm, utime, stime, cutime, cstime) of root and every live descendant, in ticks.

    A process that exited and was waited for is in its parent's cutime/cstime, one still
    unreaped is in the list itself: the sum over the tree of all four is the CPU the tree has
    used since root started (a multi-process server such as Postfix: master, smtpd, cleanup...).
    Walks /proc/PID/task/TID/children (Linux >= 3.5), so it reads only the tree's own entries."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/stat") as f:
                raw = f.read()
            kids: list[int] = []
            for task in os.scandir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task.name}/children") as f:
                    kids += [int(x) for x in f.read().split()]
        except OSError:
            continue  # gone meanwhile: its time is in its parent's cutime/cstime once reaped
        head, rest = raw.rsplit(")", 1)
        v = rest.split()
        out.append((pid, head.split("(", 1)[1], int(v[11]), int(v[12]), int(v[13]), int(v[14])))
        todo.extend(kids)
    return out


def status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def system_busy() -> float:
    """CPU seconds the whole machine spent busy so far (all CPUs, /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / TICK


def reset_peak_rss(pid: int) -> bool:
    """Resets VmHWM (Linux >= 4.0, needs ptrace rights over pid) so each round has its own peak."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def wait_pid(proc: subprocess.Popen, deadline: float) -> bool:
    """Waits for proc to exit until the monotonic deadline, precisely (pidfd, no polling)."""
    if proc.poll() is not None:
        return True
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        p = select.poll()
        p.register(fd, select.POLLIN)
        while proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            p.poll(left * 1000)
        return True
    finally:
        os.close(fd)


def kill_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM to the process group we created for proc, then SIGKILL after grace seconds."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        if wait_pid(proc, time.monotonic() + wait):
            return


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_greeting(port: int, timeout: float) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            data = b""
            while b"\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    return False
                data += chunk
            ok = data.startswith(b"220")
            s.sendall(b"QUIT\r\n")
            return ok
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Peers
# ---------------------------------------------------------------------------------------------

@dataclass
class Peer:
    name: str
    argv: list[str]
    note: str
    cwd: Path | None = None
    start_timeout: float = 30.0
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    # Which scenarios it runs in: "main" (every scenario but the milter ones) and/or "milter".
    groups: tuple[str, ...] = ("main",)
    # The server's CPU is that of its whole process tree (Postfix: master and its daemons).
    tree: bool = False
    # A milter started before the server (its argv names @MILTER_PORT@, as may the server's):
    # its CPU is measured apart from the server's.
    milter_argv: list[str] | None = None
    milter: subprocess.Popen | None = None
    # The TLS peers' implicit-TLS port (@SPORT@ in argv: a free port at each start; STARTTLS is
    # on the main port).
    sport: int = 0
    # Idle scenarios: at most this many connections (0: the scenario's count), and whether the
    # peer is measured at all (not the floors: they keep fixed buffers, which says nothing).
    idle_cap: int = 0
    idle_mem: bool = True

    def start(self, port: int, cpus: str | None) -> None:
        self.log_path = OUT / f"{self.name}.log"
        mport = ""
        if self.milter_argv:
            mport = str(free_port())
            self.start_milter(mport, cpus)
        self.sport = free_port() if any("@SPORT@" in a for a in self.argv) else 0
        argv = [a.replace("@PORT@", str(port)).replace("@MILTER_PORT@", mport).replace("@SPORT@", str(self.sport))
                for a in self.argv]
        if cpus:
            argv = ["taskset", "-c", cpus] + argv
        logf = open(self.log_path, "ab")
        logf.write(f"\n=== {time.ctime()} {' '.join(argv)}\n".encode())
        logf.flush()
        # Own process group: stop() signals the group, so nothing the peer forks survives us.
        self.proc = subprocess.Popen(argv, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise RuntimeError(f"{self.name} exited with {code} at start-up; see {self.log_path}")
            if read_greeting(port, 2.0):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not greet on 127.0.0.1:{port} within {self.start_timeout:.0f} s; see {self.log_path}")

    def start_milter(self, mport: str, cpus: str | None) -> None:
        """Starts the milter on 127.0.0.1:mport, pinned with the server, and waits until it listens."""
        assert self.milter_argv is not None
        argv = [a.replace("@MILTER_PORT@", mport) for a in self.milter_argv]
        if cpus:
            argv = ["taskset", "-c", cpus] + argv
        mlog = OUT / f"{self.name}.milter.log"
        with open(mlog, "wb") as logf:
            # stdin: a pipe the milter watches (noop.c -s): it leaves when we close it or die.
            self.milter = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=logf, stderr=subprocess.STDOUT,
                                           start_new_session=True)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self.milter.poll() is not None:
                code = self.milter.returncode
                self.stop()
                raise RuntimeError(f"{self.name}: the milter exited with {code} at start-up; see {mlog}")
            if b"listening on" in mlog.read_bytes():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name}: the milter did not listen within 10 s; see {mlog}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def ticks(self) -> tuple[int, int]:
        """(user, system) CPU ticks of the server so far (its whole tree for a tree peer)."""
        if not self.tree:
            return cpu_ticks(self.pid)
        t = tree_stats(self.pid)
        return sum(x[2] + x[4] for x in t), sum(x[3] + x[5] for x in t)

    def cpu_mark(self) -> tuple[int, int, int | None]:
        """What cpu_between() needs: the ticks and, for a one-process peer, its threads' ns."""
        u, s = self.ticks()
        return u, s, None if self.tree else run_ns(self.pid)

    def cpu_between(self, a: tuple[int, int, int | None], b: tuple[int, int, int | None]) -> tuple[float, float]:
        """(user, system) CPU seconds between two marks: the ns total where there is one, split
        between user and system as the ticks are; the ticks alone otherwise (a tree peer)."""
        du, ds = (b[0] - a[0]) / TICK, (b[1] - a[1]) / TICK
        if a[2] is None or b[2] is None or b[2] < a[2]:
            return du, ds
        total = (b[2] - a[2]) / 1e9
        share = du / (du + ds) if du + ds > 0 else 1.0
        return total * share, total * (1 - share)

    # A tree peer's CPU per program over a round: every process is sampled while the round runs
    # (Postfix's daemons come and go: max_use), so one that exits is counted up to its last sample.
    def parts_begin(self) -> None:
        self._base = {pid: u + s for pid, _, u, s, _, _ in tree_stats(self.pid)} if self.tree else {}
        self._last: dict[int, tuple[str, int]] = {}
        self.parts_sample()

    def parts_sample(self) -> None:
        for pid, comm, u, s, _, _ in tree_stats(self.pid) if self.tree else []:
            self._last[pid] = (comm, u + s)

    def parts_end(self, total_ticks: int) -> dict[str, int]:
        """Ticks per program (comm) since parts_begin; what exited between two samples, unseen,
        is "(unattributed)", so that the parts add up to total_ticks."""
        if not self.tree:
            return {}
        self.parts_sample()
        out: dict[str, int] = {}
        for pid, (comm, t) in self._last.items():
            d = t - self._base.get(pid, 0)
            if d > 0:
                out[comm] = out.get(comm, 0) + d
        rest = total_ticks - sum(out.values())
        if rest > 0:
            out["(unattributed)"] = rest
        return out

    def milter_ticks(self) -> int:
        if self.milter is None or self.milter.poll() is not None:
            return 0
        u, s = cpu_ticks(self.milter.pid)
        return u + s

    def alive(self) -> bool:
        return (self.proc is not None and self.proc.poll() is None
                and (self.milter_argv is None or (self.milter is not None and self.milter.poll() is None)))

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)
            # The leader is gone; a daemon it forked may still be leaving (Postfix's children
            # get SIGTERM from their master): give them a moment, then SIGKILL what is left.
            deadline = time.monotonic() + 3.0
            while group_alive(self.proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if group_alive(self.proc.pid):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc = None
        if self.milter is not None:
            try:
                self.milter.stdin.close()
            except (OSError, AttributeError):
                pass
            if not wait_pid(self.milter, time.monotonic() + 3.0):
                kill_group(self.milter, 6.0)  # libmilter answers SIGTERM at its next poll (<= 5 s)
            self.milter = None


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


RUNNING: list[Peer] = []


def build_floor() -> Path | str:
    """Compiles floor/floor.c into .out/ when the binary is missing or older: the path, or why not."""
    return build_c(BENCH / "floor" / "floor.c", OUT / "floor", [])


def build_milter() -> Path | str:
    """Compiles milter/noop.c (libmilter) into .out/ when the binary is missing or older."""
    if not Path("/usr/include/libmilter/mfapi.h").exists():
        return "libmilter's header is missing (Debian package libmilter-dev; bench/run installs it)"
    return build_c(BENCH / "milter" / "noop.c", OUT / "noop-milter", ["-lmilter", "-lpthread"])


POSTFIX = "/usr/sbin/postfix"
POSTFIX_MASTER = "/usr/lib/postfix/sbin/master"
RUN_DIRS: list[Path] = []  # private Postfix instances' folders, removed at exit (remove_run_dirs)


def remove_run_dirs() -> None:
    while RUN_DIRS:
        shutil.rmtree(RUN_DIRS.pop(), ignore_errors=True)


def postfix_run_dir(name: str) -> Path:
    """A fresh folder for a private Postfix instance, on tmpfs when there is one (/dev/shm): the
    queue's fsyncs then cost no disk wait, so its figures are CPU and round trips as the others'."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    d = Path(tempfile.mkdtemp(prefix=f"asiosmtpd-bench-{name}-", dir=base))
    RUN_DIRS.append(d)
    d.chmod(0o755)  # Postfix's daemons run as user postfix below it
    for f in ("main.cf", "master.cf"):
        shutil.copy(BENCH / "postfix" / f, d / f"{f}.in")
    return d


def milter_peers(args, binary: Path, plugins: Path) -> tuple[list[Peer], list[str]]:
    """The milter scenarios' peers: asiosmtpd with the milter plugin in front of sink, and a
    private Postfix instance without and with the same milter; the milter is bench/milter/noop.c,
    once negotiating no replies (NR_*), once answering every event ("-replies")."""
    peers: list[Peer] = []
    skipped: list[str] = []
    milter = build_milter()
    if isinstance(milter, str):
        return [], [f"the milter peers: {milter}"]
    flavours = [("", [str(milter), "-s", "inet:@MILTER_PORT@@127.0.0.1"], "no-op milter, NR_* (a reply at end of message only)"),
                ("-replies", [str(milter), "-s", "-r", "inet:@MILTER_PORT@@127.0.0.1"], "no-op milter, a reply to every event")]
    if binary.exists() and (plugins / "milter.so").exists() and (plugins / "sink.so").exists():
        cfg = OUT / "asiosmtpd-milter.yaml"
        template = (BENCH / "conf" / "asiosmtpd-milter.yaml").read_text()
        cfg.write_text(template.replace("@WORKERS@", str(args.workers)).replace("@PLUGINS@", str(plugins)))
        for suffix, margv, what in flavours:
            peers.append(Peer(f"asiosmtpd+milter{suffix}",
                              [str(BENCH / "conf" / "start-asiosmtpd"), str(binary), str(cfg), "@PORT@", "@MILTER_PORT@"],
                              f"asiosmtpd, milter plugin then sink, workers: {args.workers}; {what}",
                              groups=("milter",), milter_argv=margv))
    else:
        skipped.append(f"asiosmtpd+milter: {binary}, {plugins}/milter.so or sink.so missing (bench/run builds them)")
    if os.geteuid() != 0:
        skipped.append("postfix, postfix+milter: a private Postfix instance needs root")
    elif not (os.access(POSTFIX, os.X_OK) and os.access(POSTFIX_MASTER, os.X_OK)):
        skipped.append(f"postfix, postfix+milter: {POSTFIX} or {POSTFIX_MASTER} missing (Debian package postfix)")
    else:
        start = str(BENCH / "conf" / "start-postfix")
        version = subprocess.run(["/usr/sbin/postconf", "-d", "-h", "mail_version"], capture_output=True,
                                 text=True).stdout.strip()
        peers.append(Peer("postfix", [start, str(postfix_run_dir("postfix")), "@PORT@", "-"],
                          f"Postfix {version} smtpd, a private instance, queue on tmpfs, discard transport; no milter",
                          groups=("milter",), tree=True))
        for suffix, margv, what in flavours:
            name = f"postfix+milter{suffix}"
            peers.append(Peer(name, [start, str(postfix_run_dir(name)), "@PORT@", "@MILTER_PORT@"],
                              f"the same Postfix with smtpd_milters; {what}", groups=("milter",), tree=True,
                              milter_argv=margv))
    return peers, skipped


sys.path.insert(0, str(ROOT / "tests" / "integration"))
import dovecot_instance  # noqa: E402  (the private Dovecot of the tests, shared with them)


def durable_dir(args) -> Path:
    """Where both durable peers keep their Maildir: a real disk (the checkout's by default), not tmpfs."""
    return Path(args.durable_dir).resolve() if args.durable_dir else OUT / "durable"


def filesystem_of(path: Path) -> str:
    """The filesystem holding path, as "ext4 on /dev/vda (mounted on /)" (/proc/self/mounts)."""
    best = ("", "?", "?")
    try:
        real = os.path.realpath(path)
        for line in open("/proc/self/mounts"):
            dev, mnt, fstype = line.split()[:3]
            mnt = mnt.replace("\\040", " ")
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                best = (mnt, dev, fstype)
    except OSError:
        pass
    return f"{best[2]} on {best[1]} (mounted on {best[0] or '?'})"


def durable_peers(args, binary: Path, plugins: Path) -> tuple[list[Peer], list[str]]:
    """The durable-delivery scenarios' peers, both behind LMTP (smtp-source -L) and both writing a
    Maildir with fsync in the same folder of a real disk: asiosmtpd's LMTP listener with the
    maildir plugin, and Dovecot's LMTP server (a private instance, mail_fsync at its default)."""
    peers: list[Peer] = []
    skipped: list[str] = []
    base = durable_dir(args)
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    RUN_DIRS.append(base)
    fs = filesystem_of(base)
    if fs.startswith("tmpfs") or fs.startswith("ramfs"):
        log(f"WARNING: {base} is on {fs}: fsync costs nothing there; use --durable-dir on a real disk")
    if binary.exists() and (plugins / "maildir.so").exists():
        cfg = OUT / "asiosmtpd-maildir.yaml"
        template = (BENCH / "conf" / "asiosmtpd-maildir.yaml").read_text()
        cfg.write_text(template.replace("@WORKERS@", str(args.workers)).replace("@PLUGINS@", str(plugins))
                       .replace("@MAILDIR@", str(base / "asiosmtpd" / "Maildir"))
                       .replace("@MAILDIR_WORKERS@", str(args.maildir_workers)))
        peers.append(Peer("asiosmtpd+maildir",
                          [str(BENCH / "conf" / "start-asiosmtpd"), str(binary), str(cfg), "@PORT@"],
                          f"asiosmtpd, LMTP listener, maildir plugin (workers: {args.maildir_workers}), workers:"
                          f" {args.workers}; Maildir on {fs}", groups=("durable",)))
    else:
        skipped.append(f"asiosmtpd+maildir: {binary} or {plugins}/maildir.so missing (bench/run builds them)")
    if not dovecot_instance.available():
        skipped.append("dovecot: /usr/sbin/dovecot or its lmtp missing (Debian packages dovecot-core, dovecot-lmtpd)")
    else:
        version = subprocess.run([dovecot_instance.DOVECOT, "--version"], capture_output=True, text=True).stdout.strip()
        peers.append(DovecotPeer("dovecot", [], f"Dovecot {version} LMTP server, a private instance, mail_fsync ="
                                 f" optimized (its default), info log to /dev/null; Maildir on {fs}",
                                 groups=("durable",), tree=True, run_dir=base))
    return peers, skipped


class DovecotPeer(Peer):
    """Dovecot's master (-F) with a config of its own; the port is known only at start()."""

    def __init__(self, *a, run_dir: Path, **kw):
        super().__init__(*a, **kw)
        self.run_dir = run_dir

    def start(self, port: int, cpus: str | None) -> None:
        # info_log_path: asiosmtpd runs at --log-level warn, so Dovecot's per-message info lines
        # ("saved mail to INBOX") are not written either.
        inst = dovecot_instance.DovecotInstance(str(self.run_dir), port=port, extra="info_log_path = /dev/null\n")
        inst.prepare()
        self.argv = inst.argv()
        super().start(port, cpus)


def build_c(src: Path, exe: Path, libs: list[str]) -> Path | str:
    """Compiles one C file of the benchmark into .out/ when the binary is missing or older than the
    file or a header of the benchmark it includes ("floor.h"): the path, or why not."""
    deps = [src] + [src.parent / h for h in re.findall(r'^#include "([^"]+)"', src.read_text(), re.M)]
    if exe.exists() and exe.stat().st_mtime >= max(d.stat().st_mtime for d in deps):
        return exe
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return f"no C compiler (cc) to build {src.relative_to(ROOT)}"
    r = subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(exe), str(src), *libs],
                       capture_output=True, text=True)
    return exe if r.returncode == 0 else f"building {src.relative_to(ROOT)} failed: {r.stderr.strip()[:300]}"


def make_certificate(kind: str) -> tuple[Path, Path] | str:
    """A throwaway self-signed certificate for bench.local in a fresh folder (removed at exit):
    ECDSA P-256 (kind "ec", what ACME clients issue by default) or RSA 2048 ("rsa")."""
    openssl = shutil.which("openssl")
    if not openssl:
        return "no openssl command to make the TLS scenarios' certificate (Debian package openssl)"
    d = Path(tempfile.mkdtemp(prefix="asiosmtpd-bench-tls-"))
    RUN_DIRS.append(d)
    d.chmod(0o755)  # read by every peer, some of which drop privileges (Postfix's smtpd reads it as root)
    cert, key = d / "cert.pem", d / "key.pem"
    algo = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if kind == "ec" else ["-newkey", "rsa:2048"]
    r = subprocess.run([openssl, "req", "-x509", *algo, "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
                        "-subj", f"/CN={HOSTNAME}", "-addext", f"subjectAltName=DNS:{HOSTNAME}"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return f"openssl req failed: {r.stderr.strip()[:300]}"
    key.chmod(0o644)
    return cert, key


def tls_peers(args, binary: Path, plugins: Path) -> tuple[list[Peer], list[str]]:
    """The TLS scenarios' peers, each with STARTTLS on its port and implicit TLS on a second one,
    all with the same throwaway certificate: asiosmtpd, Postfix's smtpd (a private instance),
    Haraka with its tls plugin, aiosmtpd with an SSL context, and the TLS floor."""
    peers: list[Peer] = []
    skipped: list[str] = []
    client = build_c(BENCH / "tls" / "tlsload.c", OUT / "tlsload", ["-lssl", "-lcrypto"])
    if isinstance(client, str):
        return [], [f"the TLS scenarios: {client} (Debian package libssl-dev)"]
    made = make_certificate(args.tls_key)
    if isinstance(made, str):
        return [], [f"the TLS scenarios: {made}"]
    cert, key = made
    what = "ECDSA P-256" if args.tls_key == "ec" else "RSA 2048"
    if binary.exists() and (plugins / "sink.so").exists():
        cfg = OUT / "asiosmtpd-tls.yaml"
        cfg.write_text((BENCH / "conf" / "asiosmtpd-tls.yaml").read_text().replace("@WORKERS@", str(args.workers))
                       .replace("@PLUGINS@", str(plugins)).replace("@CERT@", str(cert)).replace("@KEY@", str(key)))
        peers.append(Peer("asiosmtpd-tls", [str(BENCH / "conf" / "start-asiosmtpd"), str(binary), str(cfg), "@PORT@", "",
                                            "@SPORT@"],
                          f"asiosmtpd, workers: {args.workers}, sink plugin, tls.session_resumption default (on)",
                          groups=("tls",)))
        # --baseline-build: another build's asiosmtpd with the same TLS config, in the same rounds.
        base_bin = Path(args.baseline_build).resolve() / "bin" / "asiosmtpd" if args.baseline_build else None
        if base_bin and base_bin.exists():
            peers.append(Peer("asiosmtpd-tls-base", [str(BENCH / "conf" / "start-asiosmtpd"), str(base_bin), str(cfg),
                                                     "@PORT@", "", "@SPORT@"],
                              f"{base_bin}, the same config (--baseline-build)", groups=("tls",)))
        elif base_bin:
            skipped.append(f"asiosmtpd-tls-base: {base_bin} missing")
    else:
        skipped.append(f"asiosmtpd-tls: {binary} or {plugins}/sink.so missing (bench/run builds them)")
    if os.geteuid() != 0:
        skipped.append("postfix-tls: a private Postfix instance needs root")
    elif not (os.access(POSTFIX, os.X_OK) and os.access(POSTFIX_MASTER, os.X_OK)):
        skipped.append(f"postfix-tls: {POSTFIX} or {POSTFIX_MASTER} missing (Debian package postfix)")
    else:
        version = subprocess.run(["/usr/sbin/postconf", "-d", "-h", "mail_version"], capture_output=True,
                                 text=True).stdout.strip()
        peers.append(Peer("postfix-tls", [str(BENCH / "conf" / "start-postfix"), str(postfix_run_dir("postfix-tls")),
                                          "@PORT@", "-", "@SPORT@", str(cert), str(key)],
                          f"Postfix {version} smtpd, a private instance, queue on tmpfs, discard transport,"
                          " smtpd_tls_security_level=may, tlsmgr, Postfix's TLS defaults", groups=("tls",), tree=True,
                          idle_cap=90))
    if args.no_haraka:
        skipped.append("haraka-tls: --no-haraka")
    elif (HARAKA_PKG / "bin" / "haraka").exists() and shutil.which("node"):
        run_dir = OUT / "haraka-tls"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        shutil.copytree(HARAKA_PKG / "config", run_dir / "config")
        shutil.copytree(BENCH / "haraka" / "config", run_dir / "config", dirs_exist_ok=True)
        shutil.copytree(BENCH / "haraka" / "tls", run_dir / "config", dirs_exist_ok=True)
        shutil.copytree(BENCH / "haraka" / "plugins", run_dir / "plugins")
        shutil.copy(cert, run_dir / "config" / "tls_cert.pem")
        shutil.copy(key, run_dir / "config" / "tls_key.pem")
        peers.append(Peer("haraka-tls", [str(BENCH / "conf" / "start-haraka"), shutil.which("node"),
                                         str(HARAKA_PKG / "bin" / "haraka"), str(run_dir), "@PORT@", "@SPORT@"],
                          "Haraka, nodes=0, tls plugin (node's TLS defaults), bench_sink plugin", groups=("tls",)))
    else:
        skipped.append(f"haraka-tls: Haraka not installed in {HARAKA_PKG}")
    if subprocess.run([SYS_PYTHON, "-c", "import aiosmtpd"], capture_output=True).returncode == 0:
        peers.append(Peer("aiosmtpd-tls", [SYS_PYTHON, str(BENCH / "conf" / "aiosmtpd-tls.py"), str(cert), str(key),
                                           "127.0.0.1", "@PORT@", "@SPORT@"],
                          "python3-aiosmtpd, Sink handler, ssl.create_default_context (STARTTLS and implicit)",
                          groups=("tls",)))
    else:
        skipped.append("aiosmtpd-tls: /usr/bin/python3 cannot import aiosmtpd (Debian package python3-aiosmtpd)")
    floor = build_c(BENCH / "tls" / "tlsfloor.c", OUT / "tlsfloor", ["-lssl", "-lcrypto"])
    if isinstance(floor, Path):
        peers.append(Peer("tls-floor", [str(floor), str(cert), str(key), "127.0.0.1:@PORT@", "@SPORT@"],
                          "bench/tls/tlsfloor.c: the handshake and the answers, nothing else (OpenSSL's defaults,"
                          " no buffer release)", groups=("tls",), idle_mem=False))
    else:
        skipped.append(f"tls-floor: {floor}")
    for p in peers:
        p.note += f"; certificate {what}"
    return peers, skipped


def main_peers(args) -> tuple[list[Peer], list[str]]:
    """The peers of every scenario but the milter ones, besides asiosmtpd."""
    peers: list[Peer] = []
    skipped: list[str] = []
    if os.access(SMTP_SINK, os.X_OK):
        argv = [SMTP_SINK]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # smtp-sink refuses to run as root without it
        # -m: concurrency cap (default 256, excess stays queued in the kernel).
        argv += ["-m", "20000", "-h", HOSTNAME, "127.0.0.1:@PORT@", "4096"]
        # idle_cap: 1,000 connections at most (idle10k too): smtp-sink takes a constant 130 KiB per
        # connection, and 10,000 of them (1.3 GB) took 18 s of the run to open.
        peers.append(Peer("smtp-sink", argv, "Postfix smtp-sink, defaults", idle_cap=1000))
    else:
        skipped.append(f"smtp-sink: {SMTP_SINK} missing (Debian package postfix)")

    if subprocess.run([SYS_PYTHON, "-c", "import aiosmtpd"], capture_output=True).returncode == 0:
        peers.append(Peer("aiosmtpd", [SYS_PYTHON, "-m", "aiosmtpd", "-n", "-l", "127.0.0.1:@PORT@",
                                       "-c", "aiosmtpd.handlers.Sink"], "python3-aiosmtpd, Sink handler"))
    else:
        skipped.append("aiosmtpd: /usr/bin/python3 cannot import aiosmtpd (Debian package python3-aiosmtpd)")

    # The floor: not a server, a yardstick (floor/floor.c). Built here, so --no-build has it too.
    floor = build_floor()
    if isinstance(floor, Path):
        peers.append(Peer("floor", [str(floor), "127.0.0.1:@PORT@"],
                          "bench/floor/floor.c: answers smtp-source and does nothing else (the least any server spends here)",
                          idle_mem=False))
    else:
        skipped.append(f"floor: {floor}")

    if args.no_haraka:
        skipped.append("Haraka: --no-haraka")
    elif (HARAKA_PKG / "bin" / "haraka").exists() and shutil.which("node"):
        run_dir = OUT / "haraka"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        # Haraka reads only its config folder: start from the package's defaults, then ours.
        shutil.copytree(HARAKA_PKG / "config", run_dir / "config")
        shutil.copytree(BENCH / "haraka" / "config", run_dir / "config", dirs_exist_ok=True)
        shutil.copytree(BENCH / "haraka" / "plugins", run_dir / "plugins")
        peers.append(Peer("haraka", [str(BENCH / "conf" / "start-haraka"), shutil.which("node"),
                                     str(HARAKA_PKG / "bin" / "haraka"), str(run_dir), "@PORT@"],
                          "Haraka, nodes=0 (one process), bench_sink plugin"))
    else:
        skipped.append(f"Haraka: not installed in {HARAKA_PKG} (npm install failed or was skipped)")
    return peers, skipped


def python_peers(args, binary: Path, plugins: Path) -> tuple[list[Peer], list[str]]:
    """The Python-handler scenarios' peers: the same handler class (python/counting.py) under
    asiosmtpd's python plugin and under aiosmtpd."""
    peers: list[Peer] = []
    skipped: list[str] = []
    handlers = BENCH / "python"
    if binary.exists() and (plugins / "python.so").exists():
        cfg = OUT / "asiosmtpd-python.yaml"
        template = (BENCH / "conf" / "asiosmtpd-python.yaml").read_text()
        cfg.write_text(template.replace("@WORKERS@", str(args.workers)).replace("@PLUGINS@", str(plugins))
                       .replace("@HANDLERS@", str(handlers)))
        peers.append(Peer("asiosmtpd+python", [str(BENCH / "conf" / "start-asiosmtpd"), str(binary), str(cfg), "@PORT@"],
                          f"asiosmtpd, python plugin, counting.CountingHandler, workers: {args.workers}",
                          groups=("python",)))
        # --baseline-build: that build's server and python.so, the same handler and config.
        base = Path(args.baseline_build).resolve() if args.baseline_build else None
        if base and (base / "bin" / "asiosmtpd").exists() and (base / "plugins" / "python.so").exists():
            cfg_b = OUT / "asiosmtpd-python-base.yaml"
            cfg_b.write_text(template.replace("@WORKERS@", str(args.workers)).replace("@PLUGINS@", str(base / "plugins"))
                             .replace("@HANDLERS@", str(handlers)))
            peers.append(Peer("asiosmtpd+python-base", [str(BENCH / "conf" / "start-asiosmtpd"), str(base / "bin" / "asiosmtpd"),
                                                        str(cfg_b), "@PORT@"],
                              f"{base}: asiosmtpd and python.so (--baseline-build)", groups=("python",)))
        elif base:
            skipped.append(f"asiosmtpd+python-base: {base}/bin/asiosmtpd or {base}/plugins/python.so missing")
    else:
        skipped.append(f"asiosmtpd+python: {binary} or {plugins}/python.so missing (bench/run builds them;"
                       " the plugin needs python3-dev)")
    if subprocess.run([SYS_PYTHON, "-c", "import aiosmtpd"], capture_output=True).returncode == 0:
        # python -m puts the working folder first on sys.path: counting.py is found there.
        peers.append(Peer("aiosmtpd+python", [SYS_PYTHON, "-m", "aiosmtpd", "-n", "-l", "127.0.0.1:@PORT@",
                                              "-c", "counting.CountingHandler"],
                          "python3-aiosmtpd, counting.CountingHandler", cwd=handlers, groups=("python",)))
    else:
        skipped.append("aiosmtpd+python: /usr/bin/python3 cannot import aiosmtpd (Debian package python3-aiosmtpd)")
    return peers, skipped


def make_peers(args, groups: set[str]) -> tuple[list[Peer], list[str]]:
    peers: list[Peer] = []
    skipped: list[str] = []
    OUT.mkdir(exist_ok=True)

    # asiosmtpd: the sink plugin loaded through the ABI, one event-loop thread by default (every
    # peer here is a single event loop), logs at warn (no per-connection log line).
    build = Path(args.build_dir).resolve() if args.build_dir else ROOT / "build" / "release"
    binary = build / "bin" / "asiosmtpd"
    plugins = build / "plugins"
    for old in OUT.glob("asiosmtpd-*.yaml"):
        old.unlink()  # per-port copies written by conf/start-asiosmtpd in earlier runs
    if binary.exists() and (plugins / "sink.so").exists():
        template = (BENCH / "conf" / "asiosmtpd.yaml").read_text()
        cfg = OUT / "asiosmtpd.yaml"
        cfg.write_text(template.replace("@WORKERS@", str(args.workers)).replace("@PLUGINS@", str(plugins)))
        # The port is per run: the config names @PORT@, written just before each start.
        peers.append(Peer("asiosmtpd", [str(BENCH / "conf" / "start-asiosmtpd"), str(binary), str(cfg), "@PORT@"],
                          f"{binary}, workers: {args.workers}, sink plugin via the ABI", groups=("main", "milter", "isolation", "many")))
        # --baseline-build: another build of asiosmtpd (e.g. the commit before a change), same config.
        if args.baseline_build:
            base_bin = Path(args.baseline_build).resolve() / "bin" / "asiosmtpd"
            if base_bin.exists():
                bw = args.baseline_workers if args.baseline_workers is not None else args.workers
                cfg_b = OUT / "asiosmtpd-base.yaml"
                cfg_b.write_text(template.replace("@WORKERS@", str(bw)).replace("@PLUGINS@", str(plugins)))
                peers.append(Peer("asiosmtpd-base", [str(BENCH / "conf" / "start-asiosmtpd"), str(base_bin), str(cfg_b), "@PORT@"],
                                  f"{base_bin}, workers: {bw}, sink plugin via the ABI (--baseline-build)",
                                  groups=("main", "many")))
            else:
                skipped.append(f"asiosmtpd-base: {base_bin} missing")
        # --also-workers: the same server with other worker counts, measured in the same rounds.
        for n in [int(x) for x in args.also_workers.split(",") if x.strip()] if args.also_workers else []:
            cfg_n = OUT / f"asiosmtpd-w{n}.yaml"
            cfg_n.write_text(template.replace("@WORKERS@", str(n)).replace("@PLUGINS@", str(plugins)))
            peers.append(Peer(f"asiosmtpd-w{n}", [str(BENCH / "conf" / "start-asiosmtpd"), str(binary), str(cfg_n), "@PORT@"],
                              f"{binary}, workers: {n}{' (one per core)' if n == 0 else ''}, sink plugin via the ABI"))
        if "isolation" in groups:
            # The same sink in a child process (isolation: process): its CPU is the server's tree.
            icfg = OUT / "asiosmtpd-isolated.yaml"
            icfg.write_text(cfg.read_text().replace("  - name: sink", "  - name: sink\n    isolation: process"))
            if (build / "bin" / "asiosmtpd-plugin-host").exists():
                peers.append(Peer("asiosmtpd+isolated", [str(BENCH / "conf" / "start-asiosmtpd"), str(binary), str(icfg),
                                                         "@PORT@"],
                                  "the same, sink with isolation: process (asiosmtpd-plugin-host)",
                                  groups=("isolation",), tree=True))
            else:
                skipped.append(f"asiosmtpd+isolated: {build}/bin/asiosmtpd-plugin-host missing (bench/run builds it)")
            # --baseline-build: that build's isolation too (its own plugin host, beside its server).
            base_dir = Path(args.baseline_build).resolve() if args.baseline_build else None
            if base_dir and (base_dir / "bin" / "asiosmtpd-plugin-host").exists():
                peers.append(Peer("asiosmtpd-base+isolated", [str(BENCH / "conf" / "start-asiosmtpd"),
                                                              str(base_dir / "bin" / "asiosmtpd"), str(icfg), "@PORT@"],
                                  f"{base_dir}/bin/asiosmtpd, sink with isolation: process (--baseline-build)",
                                  groups=("isolation",), tree=True))
    else:
        skipped.append(f"asiosmtpd: {binary} or {plugins}/sink.so missing (bench/run builds them)")

    if "main" in groups:
        more, why = main_peers(args)
        peers += more
        skipped += why
    if "milter" in groups:
        more, why = milter_peers(args, binary, plugins)
        peers += more
        skipped += why
    if "tls" in groups:
        more, why = tls_peers(args, binary, plugins)
        peers += more
        skipped += why
    if "python" in groups:
        more, why = python_peers(args, binary, plugins)
        peers += more
        skipped += why
    if "durable" in groups:
        more, why = durable_peers(args, binary, plugins)
        peers += more
        skipped += why
    peers = [p for p in peers if groups & set(p.groups)]  # e.g. no sink-only asiosmtpd for the durable scenarios alone
    if args.peers:
        wanted = set(args.peers.split(","))
        peers = [p for p in peers if p.name in wanted]
    return peers, skipped


# ---------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------

@dataclass
class Scenario:
    key: str
    title: str
    kind: str            # "source" | "latency" | "idle"
    sessions: int = 1
    length: int = KIB_1
    rcpts: int = 1
    reuse: bool = True   # smtp-source -d: several messages per connection
    lmtp: bool = False   # smtp-source -L: LMTP (the durable scenarios)
    warmup_msgs: int = 0
    min_msgs: int = 0
    max_msgs: int = 0
    idle: int = 0
    group: str = "main"  # "milter": asiosmtpd, asiosmtpd+milter..., postfix...; "python": the
                         # same Python handler under asiosmtpd and aiosmtpd; "tls": the TLS peers (Peer.groups)
    tls: str = ""            # TLS scenarios (kind "tls", client bench/tls/tlsload.c): "starttls" | "implicit" | "plain"
    tls_version: str = "1.3"
    resume: bool = False     # every connection offers its session's newest ticket (tlsload -R)
    round_factor: float = 1.0  # rounds last --round-seconds times this


def scenarios(quick: bool) -> list[Scenario]:
    s = [
        Scenario("c1", "1 KiB, c=1, connection reuse", "source", 1, warmup_msgs=300, min_msgs=300, max_msgs=200000),
        Scenario("c10", "1 KiB, c=10, connection reuse", "source", 10, warmup_msgs=1000, min_msgs=1000, max_msgs=500000),
        Scenario("c100", "1 KiB, c=100, connection reuse", "source", 100, warmup_msgs=2000, min_msgs=2000, max_msgs=500000),
        Scenario("c100new", "1 KiB, c=100, new connection per message", "source", 100, reuse=False,
                 warmup_msgs=1000, min_msgs=1000, max_msgs=200000),
        Scenario("r5", "1 KiB, c=10, 5 recipients per message", "source", 10, rcpts=5,
                 warmup_msgs=1000, min_msgs=1000, max_msgs=500000),
        Scenario("big", "10 MiB messages, c=1", "source", 1, length=MIB_10, warmup_msgs=1, min_msgs=2, max_msgs=60),
        Scenario("lat", "latency, 1 KiB, one client, unloaded", "latency"),
        Scenario("latload", "latency, 1 KiB, one client, beside c=50 load", "latency", sessions=50),
        Scenario("idle1k", "1,000 idle connections", "idle", idle=1000),
        Scenario("idle10k", "10,000 idle connections", "idle", idle=10000),
        # asiosmtpd alone: 100,000 clients from 127.0.0.2-9 (bench/many/holder.c), the accept rate,
        # and a new client's greeting + EHLO + QUIT with all of them open (--quick: 2,000).
        Scenario("idle100k", f"{2000 if quick else 100000:,} idle connections from 127.0.0.2-9, then new clients",
                 "idle", idle=2000 if quick else 100000, group="many"),
        # One milter in front: its peers are asiosmtpd (sink alone), asiosmtpd+milter and Postfix.
        # At least 600 messages a round: Postfix's CPU in a round (0.8-1.4 ms a message) is then
        # >= 50 ticks of /proc's 10 ms, and its milter's (about 0.15 ms a message) >= 9.
        Scenario("milter", "1 KiB, c=10, connection reuse, one milter", "source", 10,
                 warmup_msgs=300, min_msgs=600, max_msgs=500000, group="milter"),
        Scenario("milternew", "1 KiB, c=10, new connection per message, one milter", "source", 10, reuse=False,
                 warmup_msgs=300, min_msgs=600, max_msgs=200000, group="milter"),
        # One aiosmtpd handler (python/counting.py) under asiosmtpd's python plugin and aiosmtpd.
        Scenario("python1", "Python handler, 1 KiB, c=1, connection reuse", "source", 1,
                 warmup_msgs=300, min_msgs=300, max_msgs=200000, group="python"),
        Scenario("python10", "Python handler, 1 KiB, c=10, connection reuse", "source", 10,
                 warmup_msgs=500, min_msgs=1000, max_msgs=500000, group="python"),
        # The sink in process and in a child process (isolation: process, issue 21).
        Scenario("iso1", "1 KiB, c=1, connection reuse, sink in process vs isolated", "source", 1,
                 warmup_msgs=300, min_msgs=300, max_msgs=200000, group="isolation"),
        Scenario("iso10", "1 KiB, c=10, connection reuse, sink in process vs isolated", "source", 10,
                 warmup_msgs=1000, min_msgs=1000, max_msgs=500000, group="isolation"),
    ]
    # Durable delivery: LMTP (smtp-source -L) into asiosmtpd+maildir and Dovecot, each writing a
    # Maildir on a real disk with fsync before every reply. A message costs disk flushes and
    # Dovecot ~3 ms of CPU (30-130 msgs/s here): rounds of at least 150-300 messages (>= 0.5 s of
    # Dovecot's CPU), longer for the fast peer (--round-seconds).
    for n, warm, least in ((1, 50, 150), (10, 200, 300), (50, 300, 300)):
        s.append(Scenario(f"d{n}", f"1 KiB, c={n}, LMTP, delivered to a Maildir with fsync", "source", n,
                          lmtp=True, warmup_msgs=warm, min_msgs=least, max_msgs=200000, group="durable"))
    # TLS (bench/tls/tlsload.c): 1 KiB messages, c=10. A new connection (so a handshake) per
    # message, TLS 1.3 and 1.2, without and with resumption, STARTTLS and implicit TLS; then
    # connection reuse (the records' cost alone); then idle TLS sessions. At least 150 messages
    # a round (Postfix and Haraka make 100-200 a second: 0.5 s or more of their CPU), rounds of
    # --round-seconds: the nine scenarios take about 2.5 minutes of the full run.
    tls = dict(group="tls", warmup_msgs=50, min_msgs=150, max_msgs=100000)
    s += [
        Scenario("tls13", "TLS 1.3, STARTTLS, c=10, new connection per message", "tls", 10, reuse=False,
                 tls="starttls", **tls),
        Scenario("tls13r", "TLS 1.3, STARTTLS, c=10, new connection, resumed", "tls", 10, reuse=False,
                 tls="starttls", resume=True, **tls),
        Scenario("tls12", "TLS 1.2, STARTTLS, c=10, new connection per message", "tls", 10, reuse=False,
                 tls="starttls", tls_version="1.2", **tls),
        Scenario("tls12r", "TLS 1.2, STARTTLS, c=10, new connection, resumed", "tls", 10, reuse=False,
                 tls="starttls", tls_version="1.2", resume=True, **tls),
        Scenario("smtps13", "TLS 1.3, implicit TLS, c=10, new connection per message", "tls", 10, reuse=False,
                 tls="implicit", **tls),
        Scenario("tlsreuse", "TLS 1.3, STARTTLS, c=10, connection reuse", "tls", 10, tls="starttls",
                 **dict(tls, warmup_msgs=300, min_msgs=500, max_msgs=500000)),
        Scenario("tlsidle", "idle TLS sessions (STARTTLS, EHLO answered)", "idle", idle=1000, group="tls"),
        # The same servers and client without TLS (tlsload -m plain): what the conversation costs
        # in plaintext, so that TLS's own cost (a TLS scenario's CPU minus this) can be compared.
        Scenario("notls", "no TLS (same client), c=10, new connection per message", "tls", 10, reuse=False,
                 tls="plain", **tls),
        Scenario("notlsreuse", "no TLS (same client), c=10, connection reuse", "tls", 10, tls="plain",
                 **dict(tls, warmup_msgs=300, min_msgs=500, max_msgs=500000)),
    ]
    if quick:
        s = [x for x in s if x.key not in ("c100", "latload", "idle10k", "milternew")]
        for x in s:
            if x.group == "milter":  # a smoke test: Postfix with the milter makes ~200 msgs/s
                x.warmup_msgs = x.min_msgs = 300
            if x.group == "durable":
                x.warmup_msgs, x.min_msgs = max(50, x.warmup_msgs // 2), 100 if x.sessions < 50 else 200
            if x.group == "tls":
                x.warmup_msgs, x.min_msgs = 50, 100
                x.idle = min(x.idle, 300)
    return s


@dataclass
class Round:
    msgs: int
    elapsed: float
    srv_user: float
    srv_sys: float
    peak_kib: int
    client_cpu: float
    ok: bool
    error: str = ""
    other_cpu: float = 0.0  # CPU seconds used meanwhile by processes that are neither server nor client
    milter_cpu: float = 0.0  # CPU seconds of the peer's milter process (milter peers)
    parts: dict = field(default_factory=dict)  # a tree peer's CPU seconds per program (Postfix: smtpd, cleanup...)
    handshakes: int = 0  # TLS scenarios: handshakes done (one per connection) ...
    resumed: int = 0     # ... of which abbreviated (a session ticket or ID accepted)
    cipher: str = ""     # what the first handshake negotiated: version, cipher, key exchange group


@dataclass
class Result:
    peer: str
    scenario: str
    rounds: list[Round] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    error: str = ""

    def good(self) -> list[Round]:
        return [r for r in self.rounds if r.ok]

    def median(self, f) -> float | None:
        g = self.good()
        return statistics.median(f(r) for r in g) if g else None


def source_argv(sc: Scenario, port: int, sessions: int, msgs: int, cpus: str | None) -> list[str]:
    argv = ["taskset", "-c", cpus] if cpus else []
    argv += [SMTP_SOURCE]
    if sc.reuse:
        argv.append("-d")
    if sc.lmtp:
        argv.append("-L")
    argv += ["-s", str(sessions), "-m", str(msgs), "-l", str(sc.length), "-r", str(sc.rcpts),
             "-M", HOSTNAME, "-f", f"sender@{HOSTNAME}", "-t", f"rcpt@{HOSTNAME}", f"127.0.0.1:{port}"]
    return argv


def run_source_round(peer: Peer, port: int, sc: Scenario, msgs: int, args) -> Round:
    """One round: `procs` smtp-source processes in parallel share sessions and messages."""
    procs = 1 if sc.sessions < 4 else args.client_procs
    procs = max(1, min(procs, msgs, sc.sessions))
    msgs -= msgs % procs
    argvs = []
    for i in range(procs):
        sessions = sc.sessions // procs + (1 if i < sc.sessions % procs else 0)
        argvs.append(source_argv(sc, port, sessions, msgs // procs, args.client_cpus))
    # Generous; bounds a hang. Durable delivery waits for the disk: 20 msgs/s at least.
    expected = max(30.0, 20.0 * msgs * sc.length / 10e6 + msgs / (20.0 if sc.group == "durable" else 200.0))
    r, _ = measure_round(peer, argvs, msgs, expected, args, "smtp-source")
    return r


def measure_round(peer: Peer, argvs: list[list[str]], msgs: int, expected: float, args,
                  what: str) -> tuple[Round, list[str]]:
    """Runs the client processes `argvs` at once against the peer and measures the round: the
    server's CPU (its tree's for a tree peer), its peak RSS, the clients' CPU, the rest of the
    machine's. Returns the round and each client's standard output."""
    reset_peak_rss(peer.pid)
    mark0 = peer.cpu_mark()
    m0 = peer.milter_ticks()
    peer.parts_begin()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0 = system_busy()
    t0 = time.monotonic()
    clients = [subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True) for argv in argvs]
    deadline = t0 + min(expected, args.round_timeout)
    if peer.tree:
        # Sampled every 0.1 s for the per-program figures (parts_end).
        for c in clients:
            while not wait_pid(c, min(deadline, time.monotonic() + 0.1)) and time.monotonic() < deadline:
                peer.parts_sample()
        finished = all(c.poll() is not None for c in clients)
    else:
        finished = all(wait_pid(c, deadline) for c in clients)
    elapsed = time.monotonic() - t0
    mark1 = peer.cpu_mark()
    m1 = peer.milter_ticks()
    busy1 = system_busy()
    peak = status_kib(peer.pid, "VmHWM")
    error = ""
    if not finished:
        for c in clients:
            kill_group(c, 1.0)
        error = f"timeout after {elapsed:.0f} s"
    outs = []
    for c in clients:
        # The clients print little (smtp-source nothing, tlsload one line): the pipes never fill.
        outs.append(c.stdout.read().decode(errors="replace") if c.stdout else "")
        err = c.stderr.read().decode(errors="replace").strip() if c.stderr else ""
        for f in (c.stdout, c.stderr):
            if f:
                f.close()
        if not error and (c.returncode != 0 or err):
            error = f"{what} exit {c.returncode}: {err.splitlines()[-1] if err else ''}"
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    if not peer.alive():
        error = error or f"server died (exit {peer.proc.returncode if peer.proc else '?'})"
    srv_user, srv_sys = peer.cpu_between(mark0, mark1)
    milter_cpu = (m1 - m0) / TICK
    parts = {k: v / TICK for k, v in peer.parts_end((mark1[0] - mark0[0]) + (mark1[1] - mark0[1])).items()}
    other = max(0.0, (busy1 - busy0) - srv_user - srv_sys - client_cpu - milter_cpu)
    return Round(msgs, elapsed, srv_user, srv_sys, peak, client_cpu, not error, error, other, milter_cpu,
                 parts), outs


def tls_argv(sc: Scenario, port: int, msgs: int, cpus: str | None) -> list[str]:
    argv = ["taskset", "-c", cpus] if cpus else []
    argv += [str(OUT / "tlsload"), "-m", sc.tls, "-v", sc.tls_version, "-c", str(sc.sessions), "-n", str(msgs),
             "-d", "0" if sc.reuse else "1", "-l", str(sc.length), "-t", "110"]
    if sc.resume:
        argv.append("-R")
    return argv + [f"127.0.0.1:{port}"]


def run_tls_round(peer: Peer, port: int, sc: Scenario, msgs: int, args) -> Round:
    """One round of a TLS scenario: one tlsload process (an epoll loop over all its sessions)."""
    if sc.tls == "implicit":
        port = peer.sport
    expected = max(30.0, msgs / 50.0)  # generous (Postfix: a few hundred a second); bounds a hang
    r, outs = measure_round(peer, [tls_argv(sc, port, msgs, args.client_cpus)], msgs, expected, args, "tlsload")
    if r.ok:
        try:
            d = json.loads(outs[0])
            r.handshakes, r.resumed, r.cipher = d["handshakes"], d["resumed"], f"{d['version']} {d['cipher']} {d['group']}"
            if d["msgs"] != msgs:
                r.ok, r.error = False, f"tlsload sent {d['msgs']} of {msgs} messages"
        except (ValueError, KeyError, IndexError) as e:
            r.ok, r.error = False, f"tlsload's report unreadable ({e}): {outs[0][:200]!r}"
    return r


def log_round(peer: Peer, sc: Scenario, i: int, r: Round) -> None:
    log(f"  {peer.name:9} {sc.key:8} round {i + 1}: {r.msgs} msgs in {r.elapsed:.2f} s"
        + (f" = {r.msgs / r.elapsed:,.0f}/s, server CPU {(r.srv_user + r.srv_sys) / r.msgs * 1e6:.0f} us/msg,"
           + (f" milter CPU {r.milter_cpu / r.msgs * 1e6:.0f} us/msg," if peer.milter_argv else "")
           + f" others {r.other_cpu / r.elapsed / (os.cpu_count() or 1) * 100:.0f} %"
           if r.ok else f" FAILED: {r.error}"))


def run_source(live: list[tuple[Peer, int]], sc: Scenario, args, results: dict) -> None:
    """Warm-up per peer, then round i of every peer before round i + 1 of any: whatever else the
    machine does meanwhile falls on all peers alike."""
    run_round = run_tls_round if sc.kind == "tls" else run_source_round
    sizes: dict[str, int] = {}
    for peer, port in live:
        res = results[(peer.name, sc.key)] = Result(peer.name, sc.key)
        warm = run_round(peer, port, sc, sc.warmup_msgs, args)
        if not warm.ok:
            res.error = f"warm-up: {warm.error}"
            continue
        # Size the rounds so that each lasts about --round-seconds for this peer.
        rate = warm.msgs / max(warm.elapsed, 1e-3)
        seconds = args.round_seconds * sc.round_factor
        sizes[peer.name] = int(min(max(rate * seconds, sc.min_msgs), sc.max_msgs))
        if not peer.tree and not peer.milter_argv:
            # One process, its CPU read in nanoseconds: a slow one (aiosmtpd, Haraka on a busy
            # machine) need not reach min_msgs; its rounds last at most three times the target.
            sizes[peer.name] = min(sizes[peer.name], max(int(rate * seconds * 3), 100))
    for i in range(args.rounds):
        for peer, port in live:
            res = results[(peer.name, sc.key)]
            if peer.name not in sizes or res.error:
                continue
            r = run_round(peer, port, sc, sizes[peer.name], args)
            res.rounds.append(r)
            log_round(peer, sc, i, r)
            if not r.ok:
                res.error = r.error


def helper_argv(cpus: str | None, *args: str) -> list[str]:
    pre = ["taskset", "-c", cpus] if cpus else []
    return pre + [sys.executable, str(Path(__file__).resolve()), *args]


def latency_round(peer: Peer, port: int, sc: Scenario, args, res: Result, i: int) -> None:
    count, seconds = (300, 1.0) if args.quick else (2000, 2.0)
    load = None
    if sc.sessions > 1:
        load = subprocess.Popen(source_argv(Scenario("", "", "source", sc.sessions), port, sc.sessions, 10**9,
                                            args.client_cpus),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        time.sleep(0.5)
    try:
        p = subprocess.run(helper_argv(args.client_cpus, "_probe", str(port), str(count), str(seconds)),
                           capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            res.error = (p.stderr.strip().splitlines() or ["probe failed"])[-1]
            return
        d = json.loads(p.stdout)
        res.rounds.append(Round(d["n"], d["elapsed"], 0, 0, 0, 0, True))
        for k in ("p50", "p90", "p99", "n"):
            res.extra.setdefault(k, []).append(d[k])
        log(f"  {peer.name:9} {sc.key:8} round {i + 1}: {d['n']} transactions, p50 {d['p50']:.0f} us,"
            f" p99 {d['p99']:.0f} us")
    except subprocess.TimeoutExpired:
        res.error = "probe timed out"
    finally:
        if load is not None:
            kill_group(load, 1.0)
    if load is not None and not peer.alive():
        res.error = "server died under load"


def run_latency(live: list[tuple[Peer, int]], sc: Scenario, args, results: dict) -> None:
    for peer, _ in live:
        results[(peer.name, sc.key)] = Result(peer.name, sc.key)
    for i in range(args.rounds):
        for peer, port in live:
            res = results[(peer.name, sc.key)]
            if not res.error:
                latency_round(peer, port, sc, args, res, i)


def memory_kib(peer: Peer) -> int:
    """The server's resident memory: VmRSS, or for a tree peer (Postfix: a process per
    connection) the sum of its processes' proportional set sizes (Pss: pages shared between
    them counted once in all), which is what the connections really add."""
    if not peer.tree:
        return status_kib(peer.pid, "VmRSS")
    total = 0
    for pid, *_ in tree_stats(peer.pid):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("Pss:")), 0)
        except OSError:
            pass
    return total


def run_idle(peer: Peer, port: int, sc: Scenario, args) -> Result:
    """Opens sc.idle connections, waits for every greeting (TLS: every EHLO answered over TLS),
    then reads the server's RSS."""
    res = Result(peer.name, sc.key)
    count = min(sc.idle, peer.idle_cap) if peer.idle_cap else sc.idle
    time.sleep(0.3)
    base = memory_kib(peer)
    reset_peak_rss(peer.pid)
    if sc.group == "tls":  # tlsload's idle mode: STARTTLS, the handshake, EHLO; then it holds them
        pre = ["taskset", "-c", args.client_cpus] if args.client_cpus else []
        argv = pre + [str(OUT / "tlsload"), "-I", str(count), "-B", "50", f"127.0.0.1:{port}"]
    elif sc.group == "many":
        argv = many_argv(port, count, args)
        if isinstance(argv, str):
            res.error = argv
            return res
    else:
        argv = helper_argv(args.client_cpus, "_idle", str(port), str(count))
    holder = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        ready, _, _ = select.select([holder.stdout], [], [], 120)
        line = holder.stdout.readline() if ready else ""
        if not line:
            res.error = "idle holder gave no report within 120 s: " + (holder.stderr.read(2000) if holder.poll() is not None else "")
            return res
        d = json.loads(line)
        time.sleep(1.0)  # let the server finish whatever the greetings started
        rss = memory_kib(peer)
        peak = status_kib(peer.pid, "VmHWM")
        res.extra = {"held": d["held"], "errors": d["errors"], "seconds": d["elapsed"], "base_kib": base,
                     "rss_kib": rss, "peak_kib": peak, "kib_per_conn": (rss - base) / max(1, d["held"]),
                     "first_error": d.get("first_error", ""), "wanted": count}
        res.extra.update({k: d[k] for k in ("rate", "probes", "probe_ok", "probe_p50_ms", "probe_max_ms") if k in d})
        # Still serving with all of them open? One full transaction says so.
        res.extra["serving"] = read_greeting(port, 5.0) if peer.alive() else False
        log(f"  {peer.name:9} {sc.key:8}: held {d['held']}/{count}, errors {d['errors']}, RSS {base} -> {rss} KiB"
            f" = {res.extra['kib_per_conn']:.1f} KiB/conn")
        if d["errors"] or d["held"] < count:
            res.error = f"{d['errors']} errors, held {d['held']}/{count} ({d.get('first_error', '')})"
    finally:
        try:
            holder.stdin.close()
        except OSError:
            pass
        if not wait_pid(holder, time.monotonic() + 30):
            kill_group(holder, 1.0)
        holder.stdout.close()
        holder.stderr.close()
    return res


# ---------------------------------------------------------------------------------------------
# Client helpers run as subprocesses
# ---------------------------------------------------------------------------------------------

def many_argv(port: int, count: int, args) -> list[str] | str:
    """The idle100k holder (bench/many/holder.c): count connections from 127.0.0.2-9, 1,000
    being opened at a time, then 20 new clients timed one after the other."""
    exe = build_c(BENCH / "many" / "holder.c", OUT / "holder", [])
    if isinstance(exe, str):
        return exe
    pre = ["taskset", "-c", args.client_cpus] if args.client_cpus else []
    return pre + [str(exe), str(port), str(count), "-B", "1000", "-A", "8", "-P", "20"]


def raise_nofile(scs: list[Scenario], want: int) -> int:
    """idle100k: every process of the run (server, holder) needs a descriptor per connection,
    more than the usual hard limit; root may raise it (up to fs.nr_open). The new limit."""
    need = max((s.idle for s in scs if s.group == "many"), default=0) + 1000
    if need <= want:
        return want
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
        return need
    except (ValueError, OSError) as e:
        log(f"cannot raise RLIMIT_NOFILE to {need} ({e}): raising the hard limit needs CAP_SYS_RESOURCE (root,"
            f" not in every container), or run under a higher ulimit -Hn (bench/README.md)")
        return want


def many_table(results: dict, peers: list[str], sc: Scenario, w) -> None:
    """idle100k: memory, accept rate and a new client's latency with every connection open."""
    w(f"== {sc.title} (bench/many/holder.c; RSS of a freshly started server) ==")
    w(f"{'peer':14} {'held':>7} {'errors':>6} {'RSS before':>11} {'RSS after':>11} {'KiB/conn':>9} {'accept/s':>9}"
      f" {'new client p50':>15} {'max':>9}")
    for p in peers:
        r = results.get((p, sc.key))
        if r is None:
            continue
        if not r.extra:
            w(f"{p:14} FAILED: {r.error}")
            continue
        e = r.extra
        w(f"{p:14} {e['held']:7} {e['errors']:6} {e['base_kib'] / 1024:7.1f} MiB {e['rss_kib'] / 1024:7.1f} MiB"
          f" {e['kib_per_conn']:9.2f} {e.get('rate', 0):9,.0f} {e.get('probe_p50_ms', -1):12.1f} ms"
          f" {e.get('probe_max_ms', -1):6.1f} ms" + (f"   ({e['first_error']})" if e.get("first_error") else ""))
    w("(new client: connect, greeting, EHLO, QUIT, one after the other; targets: <= 2.5 KiB/conn, < 100 ms)")


def read_reply(s: socket.socket, buf: bytearray) -> bytes:
    """Reads one (possibly multi-line) SMTP reply; returns its last line."""
    while True:
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = bytes(buf[start:nl + 1])
            if len(line) >= 4 and line[3:4] != b"-":
                del buf[:nl + 1]
                return line
            start = nl + 1
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk


def probe(port: int, count: int, seconds: float) -> None:
    """Per-transaction latency as smtp-source sends it (no pipelining): MAIL, RCPT, DATA, body.
    Stops after `count` transactions or `seconds`, whichever comes first."""
    body = (f"From: <sender@{HOSTNAME}>\r\nTo: <rcpt@{HOSTNAME}>\r\nSubject: probe\r\n\r\n"
            + ("X" * 78 + "\r\n") * 13).encode() + b".\r\n"
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()
    read_reply(s, buf)
    s.sendall(f"EHLO {HOSTNAME}\r\n".encode())
    read_reply(s, buf)
    samples = []
    t_all = time.perf_counter()
    while len(samples) < count and time.perf_counter() - t_all < seconds:
        t0 = time.perf_counter()
        for cmd in (f"MAIL FROM:<sender@{HOSTNAME}>\r\n".encode(), f"RCPT TO:<rcpt@{HOSTNAME}>\r\n".encode(),
                    b"DATA\r\n", body):
            s.sendall(cmd)
            reply = read_reply(s, buf)
            if reply[:1] not in (b"2", b"3"):
                raise RuntimeError(f"unexpected reply {reply!r}")
        samples.append((time.perf_counter() - t0) * 1e6)
    elapsed = time.perf_counter() - t_all
    s.sendall(b"QUIT\r\n")
    s.close()
    samples.sort()

    def pct(p: float) -> float:
        return samples[min(len(samples) - 1, int(p / 100 * len(samples)))]
    print(json.dumps({"p50": pct(50), "p90": pct(90), "p99": pct(99), "mean": statistics.fmean(samples),
                      "n": len(samples), "elapsed": elapsed}))


def idle(port: int, n: int) -> None:
    """Holds n connections that each got their greeting; reports, then waits for stdin to close."""
    sel = selectors.DefaultSelector()
    held: list[socket.socket] = []
    errors = 0
    first_error = ""
    t0 = time.monotonic()
    batch = 100  # aiosmtpd listens with asyncio's default backlog of 100: more would drop SYNs
    opened = 0
    while opened < n:
        pending = {}
        for _ in range(min(batch, n - opened)):
            opened += 1
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect_ex(("127.0.0.1", port))
            except OSError as e:
                errors += 1
                first_error = first_error or str(e)
                s.close()
                continue
            sel.register(s, selectors.EVENT_READ)
            pending[s] = b""
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1.0):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except OSError as e:
                    data = b""
                    first_error = first_error or str(e)
                if not data:
                    errors += 1
                    first_error = first_error or "closed before greeting"
                    sel.unregister(s)
                    s.close()
                    del pending[s]
                    continue
                pending[s] += data
                if b"\n" in pending[s]:
                    sel.unregister(s)
                    if pending[s].startswith(b"220"):
                        held.append(s)
                    else:
                        errors += 1
                        first_error = first_error or pending[s][:80].decode(errors="replace").strip()
                        s.close()
                    del pending[s]
        for s in pending:
            errors += 1
            first_error = first_error or "no greeting within 30 s"
            sel.unregister(s)
            s.close()
    print(json.dumps({"held": len(held), "errors": errors, "first_error": first_error,
                      "elapsed": time.monotonic() - t0}), flush=True)
    sys.stdin.read()  # the driver closes our stdin when it has measured
    for s in held:
        s.close()


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def fmt(v: float | None, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def med_of(results: dict, name: str, key: str, f) -> float | None:
    """The median of f over the good rounds of peer `name` in scenario `key` (None: no good round)."""
    r = results.get((name, key))
    return r.median(f) if r and r.good() else None


def per_s(x: Round) -> float:
    return x.msgs / x.elapsed


def srv_us(x: Round) -> float:
    """The server's CPU per message, us."""
    return (x.srv_user + x.srv_sys) / x.msgs * 1e6


def peer_rows(results: dict, peers: list[str], sc: Scenario, w, width: int, row) -> list[float]:
    """The peer rows of one scenario's table: a peer without a result is left out, one whose rounds
    all failed gets a FAILED line; for the others row(p, r, spread, others) formats the line
    (spread: of msgs/s over the rounds, %; others: CPU of the rest of the machine, % of all CPUs),
    followed by the error of a round that failed. Returns the others figures."""
    noisy: list[float] = []
    for p in peers:
        r: Result | None = results.get((p, sc.key))
        if r is None:
            continue
        if not r.good():
            w(f"{p:{width}} FAILED: {r.error}")
            continue
        rates = [per_s(x) for x in r.good()]
        spread = (max(rates) - min(rates)) / r.median(per_s) * 100 if len(rates) > 1 else 0.0
        others = r.median(lambda x: x.other_cpu / (x.elapsed * (os.cpu_count() or 1)) * 100)
        noisy.append(others)
        w(row(p, r, spread, others) + (f"   ({r.error})" if r.error else ""))
    return noisy


def idle_rows(results: dict, peers: list[str], sc: Scenario, base: str, w, width: int, held_width: int,
              mem: str) -> None:
    """An idle scenario's table under its title: per peer the connections held, errors, the
    server's memory (`mem`: its label) before and after, KiB per connection, whether it still
    served, and KiB per connection against `base`."""
    w(f"{'peer':{width}} {'held':>{held_width}} {'errors':>6} {mem + ' before':>11} {mem + ' after':>11} {'KiB/conn':>9}"
      f" {'serving':>7} | {'KiB/conn':>8} vs {base}")
    b = results.get((base, sc.key))
    bk = b.extra.get("kib_per_conn") if b and b.extra else None
    for p in peers:
        r = results.get((p, sc.key))
        if r is None:
            continue
        if not r.extra:
            w(f"{p:{width}} FAILED: {r.error}")
            continue
        e = r.extra
        w(f"{p:{width}} {e['held']:{held_width}} {e['errors']:6} {e['base_kib'] / 1024:7.1f} MiB"
          f" {e['rss_kib'] / 1024:7.1f} MiB {e['kib_per_conn']:9.1f} {'yes' if e['serving'] else 'NO':>7}"
          f" | {ratio(e['kib_per_conn'], bk):>8}" + (f"   ({e['first_error']})" if e.get("first_error") else ""))


def titled(w, heading: str, lines: list[str]) -> None:
    """Writes the heading and the lines under it, or nothing when there are no lines."""
    if lines:
        w(heading)
        for line in lines:
            w(line)


def by_program(results: dict, peers: list[str], sc: Scenario, w) -> None:
    """A tree peer's CPU per message split by program (Postfix: smtpd, cleanup...; Dovecot)."""
    for p in peers:
        r = results.get((p, sc.key))
        if r is None or not r.good() or not any(x.parts for x in r.good()):
            continue
        progs = sorted({k for x in r.good() for k in x.parts}, key=lambda k: -r.median(lambda x: x.parts.get(k, 0.0)))
        w(f"  {p} by program, us/msg: " + ", ".join(
            f"{k} {r.median(lambda x: x.parts.get(k, 0.0) / x.msgs * 1e6):.1f}" for k in progs))


def isolation_table(results: dict, peers: list[str], sc: Scenario, w) -> list[float]:
    """One isolation scenario: the sink in process (asiosmtpd) and in a child process
    (asiosmtpd+isolated): rates, the server's and the child's CPU per message, and the latency
    a hook call gains (at c=1: the time per message added, over the sink's 2 hook calls per
    1 KiB message, DATA_CHUNK and DATA)."""
    base = "asiosmtpd"

    def child(x: Round) -> float:
        return sum(v for k, v in x.parts.items() if k.startswith("asiosmtpd-plug")) / x.msgs * 1e6

    def row(p: str, r: Result, spread: float, others: float) -> str:
        ch = r.median(child) if p != base else None
        return (f"{p:20} {r.median(per_s):8,.0f} {spread:6.1f}% {r.median(srv_us) - (ch or 0.0):8.1f}"
                f" {fmt(ch, '8.1f'):>8} {r.median(srv_us):8.1f} {r.median(lambda x: x.client_cpu / x.msgs * 1e6):8.1f}"
                f" {others:5.0f}% | {ratio(r.median(per_s), med_of(results, base, sc.key, per_s)):>7}"
                f" {ratio(r.median(srv_us), med_of(results, base, sc.key, srv_us)):>7}")

    w(f"== {sc.title} (smtp-source {'-d ' if sc.reuse else ''}-s {sc.sessions} -l {sc.length} -r {sc.rcpts}) ==")
    w(f"{'peer':20} {'msgs/s':>8} {'spread':>7} {'server':>8} {'child':>8} {'total':>8} {'client':>8} {'others':>6}"
      f" | {'msgs/s':>7} {'total':>7} vs {base} (in process)")
    w(f"{'':20} {'':>8} {'':>7} {'us/msg':>8} {'us/msg':>8} {'us/msg':>8} {'us/msg':>8} {'':>6} |")
    noisy = peer_rows(results, peers, sc, w, 20, row)
    for name in ("asiosmtpd+isolated", "asiosmtpd-base+isolated"):
        a, b = med_of(results, name, sc.key, per_s), med_of(results, base, sc.key, per_s)
        if a and b and sc.sessions == 1:
            w(f"added per hook call (c=1, {name}): ({1e6 / a:.1f} - {1e6 / b:.1f}) us/msg / 2 calls"
              f" = {(1e6 / a - 1e6 / b) / 2:.1f} us")
    return noisy


def milter_table(results: dict, peers: list[str], sc: Scenario, w) -> list[float]:
    """One milter scenario: each peer's rate and CPU (the server's, the milter's, both), as ratios
    to asiosmtpd with the sink alone, then what the milter adds to asiosmtpd and to Postfix."""
    base = "asiosmtpd"

    def med(name: str, f) -> float | None:
        return med_of(results, name, sc.key, f)

    def mil(x: Round) -> float:
        return x.milter_cpu / x.msgs * 1e6

    def tot(x: Round) -> float:
        return srv_us(x) + mil(x)

    def row(p: str, r: Result, spread: float, others: float) -> str:
        return (f"{p:24} {r.median(per_s):8,.0f} {spread:6.1f}% {r.median(srv_us):8.1f}"
                f" {fmt(r.median(mil) if '+milter' in p else None, '8.1f'):>8} {r.median(tot):8.1f}"
                f" {r.median(lambda x: x.client_cpu / x.msgs * 1e6):8.1f} {others:5.0f}%"
                f" | {ratio(r.median(per_s), med(base, per_s)):>7} {ratio(r.median(srv_us), med(base, srv_us)):>7}"
                f" {ratio(r.median(tot), med(base, tot)):>7}")

    w(f"== {sc.title} (smtp-source {'-d ' if sc.reuse else ''}-s {sc.sessions} -l {sc.length} -r {sc.rcpts}) ==")
    w(f"{'peer':24} {'msgs/s':>8} {'spread':>7} {'server':>8} {'milter':>8} {'total':>8} {'client':>8} {'others':>6}"
      f" | {'msgs/s':>7} {'server':>7} {'total':>7} vs {base} (sink alone)")
    w(f"{'':24} {'':>8} {'':>7} {'us/msg':>8} {'us/msg':>8} {'us/msg':>8} {'us/msg':>8} {'':>6} |")
    noisy = peer_rows(results, peers, sc, w, 24, row)
    lines = []
    for mta, without in (("asiosmtpd", "asiosmtpd"), ("postfix", "postfix")):
        for flavour, what in (("", "NR_*"), ("-replies", "replies")):
            with_ = f"{mta}+milter{flavour}"
            a, b = med(with_, srv_us), med(without, srv_us)
            if a is None or b is None:
                continue
            lines.append(f"  {mta:9} with the milter ({what:7}): server {a - b:+7.1f} us/msg ({ratio(a, b)}),"
                         f" milter {med(with_, mil):6.1f} us/msg; msgs/s {ratio(med(with_, per_s), med(without, per_s))}")
    titled(w, "what one milter adds (the same server without it as the base):", lines)
    by_program(results, peers, sc, w)
    return noisy


def durable_table(results: dict, peers: list[str], sc: Scenario, w) -> list[float]:
    """One durable-delivery scenario: each peer's rate and CPU, as ratios to Dovecot's."""
    base = "dovecot"

    def row(p: str, r: Result, spread: float, others: float) -> str:
        sysp = r.median(lambda x: x.srv_sys / max(1e-9, x.srv_user + x.srv_sys) * 100)
        return (f"{p:18} {r.median(per_s):8,.0f} {spread:6.1f}% {r.median(srv_us):11.1f} {sysp:4.0f}%"
                f" {r.median(lambda x: x.client_cpu / x.msgs * 1e6):13.1f} {others:5.0f}%"
                f" | {ratio(r.median(per_s), med_of(results, base, sc.key, per_s)):>7}"
                f" {ratio(r.median(srv_us), med_of(results, base, sc.key, srv_us)):>7}")

    w(f"== {sc.title} (smtp-source -L {'-d ' if sc.reuse else ''}-s {sc.sessions} -l {sc.length} -r {sc.rcpts}) ==")
    w(f"{'peer':18} {'msgs/s':>8} {'spread':>7} {'CPU us/msg':>11} {'sys%':>5} {'client us/msg':>13} {'others':>6}"
      f" | {'msgs/s':>7} {'CPU/msg':>7} vs {base}")
    noisy = peer_rows(results, peers, sc, w, 18, row)
    by_program(results, peers, sc, w)
    return noisy


TLS_BASE, TLS_FLOOR, TLS_US = "postfix-tls", "tls-floor", "asiosmtpd-tls"


def tls_table(results: dict, peers: list[str], sc: Scenario, w) -> list[float]:
    """One TLS scenario: per peer, rates (messages and handshakes), the share of resumed
    handshakes, CPU per message, then the ratios to Postfix and to the TLS floor."""
    def med(name: str, f) -> float | None:
        return med_of(results, name, sc.key, f)

    def hs(x: Round) -> float:
        return x.handshakes / x.elapsed

    if sc.kind == "idle":
        w(f"== {sc.title} (tlsload -I N: STARTTLS, handshake, EHLO, then idle; memory of a freshly started server) ==")
        idle_rows(results, peers, sc, TLS_BASE, w, 14, 6, "mem")
        return []
    negotiated = []

    def row(p: str, r: Result, spread: float, others: float) -> str:
        resumed = sum(x.resumed for x in r.good()) / max(1, sum(x.handshakes for x in r.good())) * 100
        sysp = r.median(lambda x: x.srv_sys / max(1e-9, x.srv_user + x.srv_sys) * 100)
        negotiated.append(f"{p} {r.good()[0].cipher}")
        return (f"{p:14} {r.median(per_s):8,.0f} {spread:6.1f}% {r.median(hs):8,.0f} {resumed:6.0f}%"
                f" {r.median(srv_us):10.1f} {sysp:4.0f}% {r.median(lambda x: x.client_cpu / x.msgs * 1e6):13.1f}"
                f" {others:5.0f}% | {ratio(r.median(hs), med(TLS_BASE, hs)):>6}"
                f" {ratio(r.median(srv_us), med(TLS_BASE, srv_us)):>7}"
                f"{'':>{len(TLS_BASE) + 4}} | {ratio(r.median(srv_us), med(TLS_FLOOR, srv_us)):>7}")

    w(f"== {sc.title} (tlsload -m {sc.tls} -v {sc.tls_version} -c {sc.sessions} -d {0 if sc.reuse else 1}"
      f" -l {sc.length}{' -R' if sc.resume else ''}) ==")
    w(f"{'peer':14} {'msgs/s':>8} {'spread':>7} {'hs/s':>8} {'resumed':>7} {'CPU us/msg':>10} {'sys%':>5}"
      f" {'client us/msg':>13} {'others':>6} | {'hs/s':>6} {'CPU/msg':>7} vs {TLS_BASE} | {'CPU/msg':>7} vs {TLS_FLOOR}")
    noisy = peer_rows(results, peers, sc, w, 14, row)
    if negotiated:
        w("negotiated: " + "; ".join(negotiated))
    return noisy


def tls_summary(results: dict, peers: list[str], scs: list[Scenario], w) -> None:
    """asiosmtpd-tls against every TLS peer, scenario by scenario, then the issue's targets."""
    if TLS_US not in peers:
        return
    others = [p for p in peers if p != TLS_US]

    def med(name: str, key: str, f) -> float | None:
        r = results.get((name, key))
        return r.median(f) if r and r.good() else None

    def hs(x: Round) -> float:
        return x.handshakes / x.elapsed

    def cpu(x: Round) -> float:
        return (x.srv_user + x.srv_sys) / x.msgs

    def kib(name: str, key: str) -> float | None:
        r = results.get((name, key))
        return r.extra.get("kib_per_conn") if r and r.extra else None

    w("")
    w(f"== {TLS_US} / peer (handshakes/s: >1 is faster; CPU per message, KiB per idle session: <1 is leaner) ==")
    w(f"{'scenario':56} " + " ".join(f"{p:>22}" for p in others))
    for sc in scs:
        cells = []
        for p in others:
            if sc.kind == "idle":
                cells.append(f"{ratio(kib(TLS_US, sc.key), kib(p, sc.key))} KiB/conn")
            else:
                cells.append(f"{ratio(med(TLS_US, sc.key, hs), med(p, sc.key, hs))} hs "
                             f"{ratio(med(TLS_US, sc.key, cpu), med(p, sc.key, cpu))} cpu")
        w(f"{sc.title:56} " + " ".join(f"{c:>22}" for c in cells))
    w("")
    w("TLS targets (issue 22): handshakes/s >= 1.0x Postfix's, CPU per TLS message <= 0.8x Postfix's and"
      " <= 1.15x the TLS floor's, <= 16 KiB per idle TLS session")

    def verdict(v: float | None, ok) -> str:
        return "-" if v is None else f"{v:.2f}x {'met' if ok(v) else 'MISSED'}"

    for sc in scs:
        if sc.kind == "idle":
            k = kib(TLS_US, sc.key)
            w(f"  {sc.title:56} {'-' if k is None else f'{k:.1f} KiB ' + ('met' if k <= 16 else 'MISSED')}")
            continue
        if sc.tls == "plain":
            a_cpu, f_cpu = med(TLS_US, sc.key, cpu), med(TLS_FLOOR, sc.key, cpu)
            w(f"  {sc.title:56} (no TLS: not a target)  cpu vs floor {ratio(a_cpu, f_cpu):>12}")
            continue
        a_hs, a_cpu = med(TLS_US, sc.key, hs), med(TLS_US, sc.key, cpu)
        p_hs, p_cpu, f_cpu = med(TLS_BASE, sc.key, hs), med(TLS_BASE, sc.key, cpu), med(TLS_FLOOR, sc.key, cpu)
        hs_cell = (verdict(a_hs / p_hs, lambda v: v >= 1.0) if a_hs and p_hs and not sc.reuse
                   else "- (connection reuse)" if sc.reuse else "-")
        w(f"  {sc.title:56} hs/s vs postfix {hs_cell:>18}  cpu vs postfix"
          f" {verdict(a_cpu / p_cpu if a_cpu and p_cpu else None, lambda v: v <= 0.8):>12}"
          f"  cpu vs floor {verdict(a_cpu / f_cpu if a_cpu and f_cpu else None, lambda v: v <= 1.15):>12}")
    # TLS's own cost: a TLS scenario's CPU per message minus the same conversation's without TLS
    # (notls, notlsreuse: same servers, same client), asiosmtpd against the floor. What the
    # session does for any message (parsing, hooks, the event loop) is not in it.
    own = []
    for sc in scs:
        plain = "notlsreuse" if sc.reuse else "notls"
        if sc.kind != "tls" or sc.tls == "plain" or not any(s.key == plain for s in scs):
            continue
        a, ap = med(TLS_US, sc.key, cpu), med(TLS_US, plain, cpu)
        f, fp = med(TLS_FLOOR, sc.key, cpu), med(TLS_FLOOR, plain, cpu)
        if None in (a, ap, f, fp):
            continue
        own.append(f"  {sc.title:56} asiosmtpd {(a - ap) * 1e6:7.1f} us  floor {(f - fp) * 1e6:7.1f} us"
                   f"  {ratio(a - ap, f - fp):>7}  (with the plaintext part: {ratio(a, f)})")
    titled(w, "TLS's own CPU per message (the scenario minus the same servers without TLS, notls or notlsreuse):", own)


def report(results: dict, peers: list[str], scs: list[Scenario], args, skipped: list[str], meta: dict,
           groups: dict[str, tuple[str, ...]] | None = None) -> str:
    out: list[str] = []
    w = out.append
    groups = groups or {}
    main_peers_ = [p for p in peers if "main" in groups.get(p, ("main",))]
    milter_peers_ = [p for p in peers if "milter" in groups.get(p, ())]
    tls_peers_ = [p for p in peers if "tls" in groups.get(p, ())]
    python_peers_ = [p for p in peers if "python" in groups.get(p, ())]
    durable_peers_ = [p for p in peers if "durable" in groups.get(p, ())]
    main_scs = [sc for sc in scs if sc.group == "main"]
    w("")
    w("asiosmtpd benchmark — " + meta["when"])
    w(f"machine: {meta['cpu']}, {meta['ncpu']} CPUs, {meta['kernel']}, TCP congestion control {meta.get('tcp_cc', '?')},"
      f" load average {meta['load']} at start; server pinned to CPU {args.server_cpus or '-'},"
      f" clients to CPU {args.client_cpus or '-'}")
    w(f"rounds: {args.rounds} (medians), each about {args.round_seconds:g} s after a warm-up round;"
      f" {args.client_procs} smtp-source processes in parallel for c>=10")
    for name, note in meta.get("peers", {}).items():
        w(f"peer {name}: {note}")
    for s in skipped:
        w(f"skipped: {s}")
    w("")
    w("msgs/s: messages accepted per wall second. CPU us/msg: server CPU (user+sys, all threads; schedstat, Postfix /proc/PID/stat)")
    w("per message = server CPU seconds per 1,000 messages x 1000. sys%: kernel share of it. peak RSS: VmHWM")
    w("during the round. client us/msg: smtp-source CPU per message (if it nears 1e6/msgs-per-s the client is the limit).")

    w("others: CPU the machine spent on neither server nor client during the round (other processes, interrupts),")
    w("as % of all CPUs; above ~10 % the figures are disturbed: rerun on a quiet machine.")
    if durable_peers_:
        w("durable tables: both peers write each message to a Maildir on the same disk and fsync it and new/ before")
        w("answering; CPU us/msg is the server's (Dovecot: all its processes), not the kernel's writeback threads.")
    if milter_peers_:
        w("milter tables: server us/msg is the MTA's CPU (Postfix: all its processes), milter us/msg the no-op")
        w("milter's, total both; the ratios are to asiosmtpd with the sink plugin alone in the same run.")
    base = "smtp-sink"
    noisy: list[float] = []
    for sc in scs:
        w("")
        if sc.group == "milter":
            noisy += milter_table(results, milter_peers_, sc, w)
        elif sc.group == "durable":
            noisy += durable_table(results, durable_peers_, sc, w)
        elif sc.group == "isolation":
            noisy += isolation_table(results, [p for p in peers if "isolation" in groups.get(p, ())], sc, w)
        elif sc.group == "tls":
            noisy += tls_table(results, tls_peers_, sc, w)
        elif sc.group == "many":
            many_table(results, [p for p in peers if "many" in groups.get(p, ())], sc, w)
        elif sc.kind == "source":
            # The Python-handler tables compare with aiosmtpd running the same handler.
            tpeers, tbase = (python_peers_, "aiosmtpd+python") if sc.group == "python" else (main_peers_, base)
            pw = 16 if sc.group == "python" else 10
            w(f"== {sc.title} (smtp-source {'-d ' if sc.reuse else ''}-s {sc.sessions} -l {sc.length} -r {sc.rcpts}) ==")
            w(f"{'peer':{pw}} {'msgs/s':>9} {'spread':>7} {'MB/s':>7} {'CPU us/msg':>11} {'sys%':>5} {'peak RSS':>10}"
              f" {'client us/msg':>13} {'others':>6} | {'msgs/s':>7} {'CPU/msg':>7} vs {tbase}")
            for p in tpeers:
                r: Result | None = results.get((p, sc.key))
                if r is None:
                    continue
                if not r.good():
                    w(f"{p:{pw}} FAILED: {r.error}")
                    continue
                rate = r.median(lambda x: x.msgs / x.elapsed)
                rates = [x.msgs / x.elapsed for x in r.good()]
                spread = (max(rates) - min(rates)) / rate * 100 if len(rates) > 1 else 0.0
                cpu = r.median(lambda x: (x.srv_user + x.srv_sys) / x.msgs * 1e6)
                sysp = r.median(lambda x: x.srv_sys / max(1e-9, x.srv_user + x.srv_sys) * 100)
                peak = max(x.peak_kib for x in r.good()) / 1024
                ccpu = r.median(lambda x: x.client_cpu / x.msgs * 1e6)
                others = r.median(lambda x: x.other_cpu / (x.elapsed * meta["ncpu"]) * 100)
                noisy.append(others)
                mbs = rate * sc.length / 1e6
                b = results.get((tbase, sc.key))
                brate = b.median(lambda x: x.msgs / x.elapsed) if b and b.good() else None
                bcpu = b.median(lambda x: (x.srv_user + x.srv_sys) / x.msgs * 1e6) if b and b.good() else None
                w(f"{p:{pw}} {rate:9,.0f} {spread:6.1f}% {mbs:7.1f} {cpu:11.1f} {sysp:4.0f}% {peak:7.1f} MiB"
                  f" {ccpu:13.1f} {others:5.0f}% | {ratio(rate, brate):>7} {ratio(cpu, bcpu):>7}"
                  + (f"   ({r.error})" if r.error else ""))
        elif sc.kind == "latency":
            w(f"== {sc.title} (one transaction MAIL..final 250 = 4 round trips; up to"
              f" {300 if args.quick else 2000} per round, at most {1 if args.quick else 2} s) ==")
            w(f"{'peer':10} {'p50 us':>9} {'p90 us':>9} {'p99 us':>9} {'samples':>8} | {'p50':>7} {'p99':>7} vs {base}")
            bp = results.get((base, sc.key))
            for p in main_peers_:
                r = results.get((p, sc.key))
                if r is None:
                    continue
                if not r.good():
                    w(f"{p:10} FAILED: {r.error}")
                    continue
                m = {k: statistics.median(v) for k, v in r.extra.items()}
                bm = {k: statistics.median(v) for k, v in bp.extra.items()} if bp and bp.good() else {}
                w(f"{p:10} {m['p50']:9.0f} {m['p90']:9.0f} {m['p99']:9.0f} {m['n']:8.0f} | {ratio(m['p50'], bm.get('p50')):>7}"
                  f" {ratio(m['p99'], bm.get('p99')):>7}")
        else:
            w(f"== {sc.title} (each has its greeting; RSS of a freshly started server) ==")
            idle_rows(results, main_peers_, sc, base, w, 10, 7, "RSS")

    if noisy and max(noisy) > 10:
        w("")
        w(f"WARNING: other processes used up to {max(noisy):.0f} % of the machine during some rounds (median"
          f" {statistics.median(noisy):.0f} %): the figures above are disturbed; rerun on a quiet machine.")
    # asiosmtpd / peer, the issue's ratios, in one table.
    if "asiosmtpd" in main_peers_ and main_scs:
        others = [p for p in main_peers_ if p != "asiosmtpd"]
        w("")
        w("== asiosmtpd / peer (msgs/s: >1 is faster; CPU/msg, latency, KiB/conn: <1 is leaner) ==")
        w(f"{'scenario':44} " + " ".join(f"{p:>20}" for p in others))
        for sc in main_scs:
            a = results.get(("asiosmtpd", sc.key))
            cells = []
            for p in others:
                r = results.get((p, sc.key))
                if sc.kind == "source":
                    ok = a and a.good() and r and r.good()
                    if not ok:
                        cells.append("-")
                        continue
                    rr = ratio(a.median(lambda x: x.msgs / x.elapsed), r.median(lambda x: x.msgs / x.elapsed))
                    cr = ratio(a.median(lambda x: (x.srv_user + x.srv_sys) / x.msgs),
                               r.median(lambda x: (x.srv_user + x.srv_sys) / x.msgs))
                    cells.append(f"{rr} rate {cr} cpu")
                elif sc.kind == "latency":
                    ok = a and a.good() and r and r.good()
                    cells.append(f"{ratio(statistics.median(a.extra['p50']), statistics.median(r.extra['p50']))} p50"
                                 f" {ratio(statistics.median(a.extra['p99']), statistics.median(r.extra['p99']))} p99"
                                 if ok else "-")
                else:
                    ok = a and a.extra and r and r.extra
                    cells.append(f"{ratio(a.extra['kib_per_conn'], r.extra['kib_per_conn'])} KiB/conn" if ok else "-")
            w(f"{sc.title:44} " + " ".join(f"{c:>20}" for c in cells))
    # What the do-nothing floor reaches against smtp-sink: the best ratio any server can show on
    # this machine with this client (a target below it is out of anyone's reach here).
    if "floor" in peers and base in peers:
        w("")
        w(f"== floor / {base}: a server that only answers (its CPU/msg is about the least any server spends here:"
          f" the kernel's TCP and wake-ups) ==")
        for sc in main_scs:
            f, b = results.get(("floor", sc.key)), results.get((base, sc.key))
            if sc.kind == "source" and f and f.good() and b and b.good():
                w(f"{sc.title:44} {ratio(f.median(lambda x: x.msgs / x.elapsed), b.median(lambda x: x.msgs / x.elapsed)):>7} rate"
                  f" {ratio(f.median(lambda x: (x.srv_user + x.srv_sys) / x.msgs), b.median(lambda x: (x.srv_user + x.srv_sys) / x.msgs)):>7} cpu")
            elif sc.kind == "latency" and f and f.good() and b and b.good():
                w(f"{sc.title:44} {ratio(statistics.median(f.extra['p50']), statistics.median(b.extra['p50'])):>7} p50"
                  f" {ratio(statistics.median(f.extra['p99']), statistics.median(b.extra['p99'])):>7} p99")
    tls_scs = [sc for sc in scs if sc.group == "tls"]
    if tls_scs:
        tls_summary(results, tls_peers_, tls_scs, w)
    w("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def machine() -> dict:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cc = Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    except OSError:
        cc = "?"
    return {"cpu": cpu, "ncpu": os.cpu_count(), "tcp_cc": cc, "load": " ".join(f"{x:.1f}" for x in os.getloadavg()), "kernel": os.uname().release, "when": time.strftime("%Y-%m-%d %H:%M:%S")}


def stop_all(*_):
    for p in list(RUNNING):
        p.stop()
    remove_run_dirs()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_probe":
        probe(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_idle":
        idle(int(sys.argv[2]), int(sys.argv[3]))
        return 0

    ap = argparse.ArgumentParser(description="asiosmtpd vs smtp-sink, aiosmtpd, Haraka and the floor (see bench/README.md)")
    ap.add_argument("--quick", action="store_true", help="one round, short rounds, fewer scenarios (< 60 s)")
    ap.add_argument("--rounds", type=int, help="rounds per scenario (default 3, --quick 1)")
    ap.add_argument("--round-seconds", type=float, help="target length of one round (default 1.2, --quick 0.4)")
    ap.add_argument("--peers", help="comma-separated subset: asiosmtpd,smtp-sink,aiosmtpd,haraka,floor; for the milter"
                    " scenarios asiosmtpd,asiosmtpd+milter,asiosmtpd+milter-replies,postfix,postfix+milter,postfix+milter-replies;"
                    " for the python ones asiosmtpd+python,aiosmtpd+python;"
                    " for the TLS ones asiosmtpd-tls,postfix-tls,haraka-tls,aiosmtpd-tls,tls-floor")
    ap.add_argument("--scenarios", help="comma-separated subset of: c1,c10,c100,c100new,r5,big,lat,latload,idle1k,idle10k,idle100k,"
                    "milter,milternew,python1,python10,d1,d10,d50,iso1,iso10,tls13,tls13r,tls12,tls12r,smtps13,"
                    "tlsreuse,tlsidle,notls,notlsreuse (or tls: all the TLS ones)")
    ap.add_argument("--durable-dir", help="folder on a real disk for the durable scenarios' Maildirs (default"
                    " bench/.out/durable, on the checkout's filesystem; emptied before and removed after)")
    ap.add_argument("--maildir-workers", type=int, default=4, help="the maildir plugin's workers in the durable"
                    " scenarios (default 4, the plugin's default)")
    ap.add_argument("--tls-key", choices=("ec", "rsa"), default="ec",
                    help="the TLS scenarios' certificate: ECDSA P-256 (default) or RSA 2048")
    ap.add_argument("--build-dir", help="asiosmtpd build folder holding bin/asiosmtpd and plugins/sink.so"
                    " (default build/release; bench/run builds it)")
    ap.add_argument("--workers", type=int, default=1, help="asiosmtpd event-loop threads (default 1)")
    ap.add_argument("--also-workers", help="comma-separated worker counts (0: one per core) measured as extra peers"
                    " asiosmtpd-wN beside asiosmtpd (e.g. 2,0)")
    ap.add_argument("--baseline-build", help="another asiosmtpd build folder (bin/asiosmtpd), measured as the extra"
                    " peer asiosmtpd-base with the same config and plugins (before/after a change, in the same rounds)")
    ap.add_argument("--baseline-workers", type=int, help="workers of asiosmtpd-base (default: --workers)")
    ap.add_argument("--client-procs", type=int, default=2, help="parallel smtp-source processes for c>=10 (default 2)")
    ap.add_argument("--server-cpus", help="taskset list for servers (default: CPU 0 when there are >= 2 CPUs)")
    ap.add_argument("--client-cpus", help="taskset list for clients (default: the other CPUs)")
    ap.add_argument("--no-pin", action="store_true", help="no taskset at all")
    ap.add_argument("--no-haraka", action="store_true")
    ap.add_argument("--round-timeout", type=float, default=120.0, help="upper bound on one round, seconds")
    ap.add_argument("--json", default=str(OUT / "last.json"), help="where to write the raw results")
    args = ap.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.round_seconds = args.round_seconds or (0.4 if args.quick else 1.2)
    ncpu = os.cpu_count() or 1
    if args.no_pin or ncpu < 2:
        args.server_cpus = args.client_cpus = None
    else:
        args.server_cpus = args.server_cpus or "0"
        args.client_cpus = args.client_cpus or f"1-{ncpu - 1}"

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: (stop_all(), sys.exit(128 + s)))
    started = time.monotonic()
    OUT.mkdir(exist_ok=True)
    meta = machine()

    # Every server and the idle holder need a descriptor per connection.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    scs = scenarios(args.quick)
    if args.scenarios:
        keys = args.scenarios.split(",")
        scs = [s for s in scs if s.key in keys or (s.group == "tls" and "tls" in keys)]
    want = raise_nofile(scs, want)
    for s in scs:
        if s.kind == "idle" and s.idle + 200 > want:
            log(f"{s.key}: RLIMIT_NOFILE is {want}; holding {want - 200} connections instead of {s.idle}")
            s.idle = want - 200

    atexit.register(remove_run_dirs)
    peers, skipped = make_peers(args, {s.group for s in scs})
    for s in skipped:
        log(f"skipped {s}")
    if not peers:
        log("no peer to measure")
        return 1
    meta["peers"] = {p.name: p.note for p in peers}
    results: dict = {}
    try:
        for peer in peers:
            # Idle memory first, each on a freshly started server (nothing freed earlier to reuse).
            # Not the floor's: it keeps a fixed 4 KiB per connection, which says nothing.
            for sc in [s for s in scs if s.kind == "idle" and peer.idle_mem and s.group in peer.groups]:
                port = free_port()
                log(f"{peer.name}: {sc.title}")
                RUNNING.append(peer)
                try:
                    peer.start(port, args.server_cpus)
                    results[(peer.name, sc.key)] = run_idle(peer, port, sc, args)
                except RuntimeError as e:
                    results[(peer.name, sc.key)] = Result(peer.name, sc.key, error=str(e))
                finally:
                    peer.stop()
                    RUNNING.remove(peer)
        # Throughput and latency: every peer runs at once (each on its own port, all pinned to the
        # server CPUs; an idle one costs nothing) so that rounds can alternate between peers.
        work = [s for s in scs if s.kind != "idle"]
        live: list[tuple[Peer, int]] = []
        if work:
            for peer in [p for p in peers if {s.group for s in work} & set(p.groups)]:
                port = free_port()
                RUNNING.append(peer)
                try:
                    peer.start(port, args.server_cpus)
                    live.append((peer, port))
                except RuntimeError as e:
                    log(f"{peer.name}: {e}")
                    for sc in [s for s in work if s.group in peer.groups]:
                        results[(peer.name, sc.key)] = Result(peer.name, sc.key, error=str(e))
        for sc in work:
            log(f"{sc.title}: {', '.join(p.name for p, _ in live if sc.group in p.groups)}")
            mine = [(p, port) for p, port in live if sc.group in p.groups]
            for peer, _ in mine:
                if not peer.alive():
                    results[(peer.name, sc.key)] = Result(peer.name, sc.key, error="server not running")
            running = [(p, port) for p, port in mine if p.alive()]
            (run_latency if sc.kind == "latency" else run_source)(running, sc, args, results)
    finally:
        stop_all()

    text = report(results, [p.name for p in peers], scs, args, skipped, meta, {p.name: p.groups for p in peers})
    print(text)
    print(f"total run time {time.monotonic() - started:.0f} s; raw results in {args.json}; server logs in {OUT}/")
    raw = {"meta": meta, "args": vars(args), "skipped": skipped,
           "results": [{"peer": r.peer, "scenario": r.scenario, "error": r.error, "extra": r.extra,
                        "rounds": [vars(x) for x in r.rounds]} for r in results.values()]}
    Path(args.json).write_text(json.dumps(raw, indent=1))
    Path(args.json).with_suffix(".txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
