# SPDX-License-Identifier: Apache-2.0
"""Broken plugin files never end the process. A half-copied deploy (sink.so cut anywhere, in
particular inside its last loadable segment, which used to be SIGBUS in dlopen()), a build for
another machine, not an ELF at all, a directory, a FIFO (dlopen() would block on it), a sparse
all-zero file: at start-up and with --check-config each is one line naming the file and the
reason, exit 1; on SIGHUP under load the reload is refused with that line, the server stays
up on its running plugins, and every message a client got 250 for is in the server's log.

The broken files are made from the real sink.so; where to cut it comes from its own program
headers (parsed here with struct)."""
import os
import re
import shutil
import signal
import smtplib
import socket
import struct
import tempfile
import threading
import time
import unittest

import harness
from harness import HOST, ServerTestCase, run_binary, server_config, to_yaml

SINK = os.path.join(harness.PLUGIN_DIR, "sink.so")
PT_LOAD, PT_DYNAMIC = 1, 2
ET_EXEC = 2
EM_X86_64, EM_AARCH64 = 62, 183


def elf_layout(data):
    """(byte order, 64-bit?, header fields, [program headers]) of an ELF file: the fields this
    test needs, as dicts."""
    assert data[:4] == b"\x7fELF", "not an ELF file"
    is64 = data[4] == 2
    order = "<" if data[5] == 1 else ">"
    if is64:
        fields = struct.unpack_from(order + "HHIQQQIHHHHHH", data, 16)
    else:
        fields = struct.unpack_from(order + "HHIIIIIHHHHHH", data, 16)
    header = dict(zip(("type", "machine", "version", "entry", "phoff", "shoff", "flags", "ehsize",
                       "phentsize", "phnum", "shentsize", "shnum", "shstrndx"), fields))
    phdrs = []
    for i in range(header["phnum"]):
        at = header["phoff"] + i * header["phentsize"]
        if is64:
            p_type, _, offset, vaddr, _, filesz, memsz, _ = struct.unpack_from(order + "IIQQQQQQ", data, at)
        else:
            p_type, offset, vaddr, _, filesz, memsz, _, _ = struct.unpack_from(order + "IIIIIIII", data, at)
        phdrs.append({"type": p_type, "offset": offset, "filesz": filesz, "memsz": memsz, "at": at})
    return order, is64, header, phdrs


def broken_files(folder):
    """[(label, path, reason)]: every broken file, written into `folder`; `reason` is how the
    refusal's reason starts."""
    with open(SINK, "rb") as f:
        good = f.read()
    order, is64, header, phdrs = elf_layout(good)
    ehdr_size = 64 if is64 else 52
    cases = []

    def add(label, content, reason):
        path = os.path.join(folder, f"sink.{len(cases)}.so")
        with open(path, "wb") as f:
            f.write(content)
        cases.append((label, path, reason))

    def cut(at, label, after=""):
        reason = "empty file (0 bytes)" if at == 0 else f"truncated: the file has {at} bytes{after}"
        add(f"cut at {at} ({label})", good[:at], reason)

    cut(0, "empty")
    cut(10, "inside e_ident", ", shorter than an ELF header")
    cut(ehdr_size - 20, "inside the ELF header", ", shorter than an ELF header")
    table_end = header["phoff"] + header["phnum"] * header["phentsize"]
    cut(header["phoff"] + header["phentsize"] + 3, "inside the program headers", ", the program header table needs")
    loads = [p for p in phdrs if p["type"] == PT_LOAD]
    assert len(loads) >= 2, loads
    for n, p in enumerate(loads, 1):
        middle = p["offset"] + p["filesz"] // 2
        if p["filesz"] >= 2 and middle > table_end:
            cut(middle, f"inside loadable segment {n}", f", loadable segment {n} ")
    last = max(range(len(loads)), key=lambda i: loads[i]["offset"] + loads[i]["filesz"])
    last_end = loads[last]["offset"] + loads[last]["filesz"]
    # The attack's cut: a few hundred bytes into the last loadable segment (SIGBUS before).
    cut(loads[last]["offset"] + min(300, loads[last]["filesz"] - 1), "early in the last loadable segment",
        f", loadable segment {last + 1} ")
    cut(last_end - 1, "one byte short", f", loadable segment {last + 1} ")

    add("wrong magic", b"\x7fELX" + good[4:], "not an ELF file")
    add("a text file", b"#!/bin/sh\nexit 0\n", "not an ELF file")
    other_class = bytearray(good)
    other_class[4] = 1 if is64 else 2
    add("another ELF class", bytes(other_class), "built for another machine (")
    other_machine = bytearray(good)
    machine = EM_AARCH64 if header["machine"] == EM_X86_64 else EM_X86_64
    struct.pack_into(order + "H", other_machine, 18, machine)
    add("another e_machine", bytes(other_machine), f"built for another machine (e_machine {machine}")
    executable = bytearray(good)
    struct.pack_into(order + "H", executable, 16, ET_EXEC)
    add("an executable", bytes(executable), "not a shared library (e_type 2, an executable)")

    sparse = os.path.join(folder, "sparse.so")
    with open(sparse, "wb") as f:
        f.truncate(len(good))  # a hole: reads as zeros
    cases.append(("sparse, all zeros", sparse, "not an ELF file"))
    directory = os.path.join(folder, "directory.so")
    os.mkdir(directory)
    cases.append(("a directory", directory, "not a regular file (a directory)"))
    fifo = os.path.join(folder, "fifo.so")
    os.mkfifo(fifo)
    cases.append(("a FIFO", fifo, "not a regular file (a FIFO)"))
    return cases


def error_lines(stderr):
    """What is not an info/debug log event: what the operator must read."""
    return [l for l in stderr.splitlines() if l.strip() and not re.match(r"^(?:\S+ )?(debug|info) ", l)]


class BrokenPluginTest(ServerTestCase):
    @classmethod
    def setUpClass(cls):
        cls.folder = tempfile.mkdtemp(prefix="asiosmtpd-broken-")
        cls.cases = broken_files(cls.folder)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.folder, ignore_errors=True)

    def refuses_at_start(self, args):
        for label, path, reason in self.cases:
            with self.subTest(label):
                # Bounded: the old loader blocked for ever on the FIFO (subprocess kills it).
                p = run_binary(args, server_config(plugins=[{"path": path}]), timeout=15)
                self.assertEqual(p.returncode, 1, f"{label}: exit {p.returncode}\n{p.stdout}{p.stderr}")
                lines = error_lines(p.stderr)
                self.assertEqual(len(lines), 1, f"{label}: expected one error line:\n{p.stderr}")
                self.assertRegex(lines[0], r"^asiosmtpd: \S+asiosmtpd\.yaml: plugins\[0\]: ")
                self.assertIn(f": plugins[0]: {path}: {reason}", lines[0])

    def test_start_up_refuses_each_with_one_line(self):
        self.refuses_at_start([])

    def test_check_config_refuses_each_with_one_line(self):
        self.refuses_at_start(["--check-config"])

    def test_reload_under_load_refuses_each_and_service_goes_on(self):
        for label, path, reason in self.cases:
            with self.subTest(label):
                self.reload_under_load(label, path, reason)

    def reload_under_load(self, label, path, reason):
        with socket.socket() as probe:  # a fixed port: the reload would keep the listener
            probe.bind((HOST, 0))
            port = probe.getsockname()[1]
        config = server_config(plugins=[{"path": SINK}], listen=[{"address": HOST, "port": port}])
        server = self.start_server(config)
        results = {"ok": 0, "errors": []}
        lock = threading.Lock()
        stop = threading.Event()

        def client():
            # Bounded in count and time; a message per session, as real clients do.
            deadline = time.monotonic() + 20
            for _ in range(2000):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                try:
                    with smtplib.SMTP(HOST, port, timeout=10) as s:
                        s.sendmail("a@b.example", ["c@d.example"], b"Subject: load\r\n\r\nbody\r\n")
                    with lock:
                        results["ok"] += 1
                except Exception as e:  # any failure is a finding
                    with lock:
                        results["errors"].append(repr(e))
                    if len(results["errors"]) > 5 or server.process.poll() is not None:
                        return

        def sent():
            with lock:
                return results["ok"]

        def wait_sent(n, timeout=10):
            deadline = time.monotonic() + timeout
            while sent() < n and time.monotonic() < deadline and server.process.poll() is None:
                time.sleep(0.01)

        thread = threading.Thread(target=client)
        thread.start()
        try:
            wait_sent(3)
            broken = server_config(plugins=[{"path": path}], listen=[{"address": HOST, "port": port}])
            with open(server.config_path, "w", encoding="utf-8") as f:
                f.write(to_yaml(broken))
            server.signal(signal.SIGHUP)
            # The reload's verdict, or the server gone (the old loader: SIGBUS).
            deadline = time.monotonic() + 10
            while "event=reload " not in server.stderr() and server.process.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.02)
            at_reload = sent()
            wait_sent(at_reload + 3)  # still served after the refusal
        finally:
            stop.set()
            thread.join(timeout=30)
        self.assertFalse(thread.is_alive())
        self.assertIsNone(server.process.poll(), f"{label}: the server died (exit {server.process.returncode})")
        reloads = [l for l in server.stderr().splitlines() if "event=reload " in l]
        self.assertEqual(len(reloads), 1, f"{label}: {reloads}")
        self.assertIn("event=reload result=failed", reloads[0])
        self.assertIn(f": plugins[0]: {path}: {reason}", reloads[0])
        self.assertIn('action="keeping the running configuration"', reloads[0])
        self.assertEqual(results["errors"], [], label)
        self.assertGreaterEqual(results["ok"], at_reload + 3, f"{label}: not served after the refused reload")
        self.assertEqual(server.stop(), 0, label)
        # Every 250 the client got is a message of the running (sink) plugins in the log.
        _, err = server.final_output()
        accepted = [l for l in err.splitlines() if "event=message " in l]
        self.assertEqual(len(accepted), results["ok"], label)
        for line in accepted:
            self.assertIn("result=250 decided_by=sink", line)
        print(f"{label}: refused; {results['ok']} messages accepted, {results['ok'] - at_reload} after the refusal")


if __name__ == "__main__":
    harness.main()
