# SPDX-License-Identifier: Apache-2.0
"""packaging.deb_install: both .deb files (packaging.deb's) installed with a real `dpkg -i`,
then the installed server run, then removed and purged, without touching this machine.

How: the test moves into a private mount namespace (unshare(CLONE_NEWNS), all mounts private)
and mounts an overlay of this machine's root file system at <work>/deb_root/root: the real
root is the read-only lower layer and every write lands in <work>/deb_root/upper. A fresh
/proc and a tmpfs /dev (null, zero, full, random, urandom, tty) are mounted into it. `chroot
root dpkg -i` there is the real thing: this machine's dpkg and its database (so Depends: are
checked against what is really installed), the package's maintainer scripts run with the real
adduser, getent and deb-systemd-helper, and conffiles, md5sums and triggers are handled by
dpkg. Nothing leaves the copy: the mounts disappear with the namespace and the upper folder is
deleted (after unmounting) when the test ends.

Covered: the packages install together; the user and group `asiosmtpd` (a system account, no
login shell, home /var/spool/asiosmtpd) and /var/spool/asiosmtpd (asiosmtpd:asiosmtpd, 0750)
are created; the unit is enabled (the multi-user.target.wants link); `dpkg -V` finds every file
as shipped; the man pages are found by name; the unit's ExecStartPre line runs as the unit's
User=/Group= and passes; the installed server, run as that user with a temp config on
127.0.0.1 (a free port), finds the installed plugins by name, takes a message from smtplib and
stores it with `maildir` in the spool; every plugin of the build is installed; a purge with
mail in the spool keeps the spool and the user and removes the rest (link included); a
reinstall reuses the account (same uid), an administrator's mode on the spool survives a
reinstall; a purge of an empty spool removes it.

Not covered (no booted systemd here): the service is never started by systemd, so the unit's
sandboxing (ProtectSystem=strict, ReadWritePaths=, the ambient capability, Type=notify) is not
exercised by a running service: the unit is checked by `systemd-analyze verify` and read here,
and the server runs as its user without those restrictions. Starting on install (postinst)
is forbidden by a policy-rc.d in the copy, as it is on a machine without systemd. Upgrades
from an older version are only reinstalls of this one.
"""
import ctypes
import glob
import os
import re
import shutil
import signal
import smtplib
import stat
import subprocess
import sys
import time
import unittest

WORK = os.environ["ASIOSMTPD_WORK_DIR"]
BUILD = os.environ["ASIOSMTPD_BUILD_DIR"]
DEB_DIR = os.path.join(WORK, "deb")
TOP = os.path.join(WORK, "deb_root")
ROOT = os.path.join(TOP, "root")
SPOOL = "/var/spool/asiosmtpd"
LISTENING = re.compile(r"info event=listening address=(\S+) port=(\d+)")
CLONE_NEWNS = 0x00020000


def host(path):
    """A path of the installed system, as seen from outside the chroot."""
    return os.path.join(ROOT, path.lstrip("/"))


def run(*argv, check=True, timeout=120, **kw):
    r = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       errors="replace", timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: exit {r.returncode}\n{r.stdout}{r.stderr}")
    return r


def chroot(*argv, user=None, **kw):
    spec = [f"--userspec={user}:{user}"] if user else []
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C.UTF-8")
    return run("chroot", *spec, ROOT, *argv, env=env, **kw)


def passwd_entry(name):
    """The installed system's /etc/passwd line for name, as a list of fields, or None."""
    with open(host("/etc/passwd")) as f:
        for line in f:
            fields = line.rstrip("\n").split(":")
            if fields[0] == name:
                return fields
    return None


def group_id(name):
    with open(host("/etc/group")) as f:
        for line in f:
            fields = line.split(":")
            if fields[0] == name:
                return int(fields[2])
    return None


def unmount_all():
    """Unmounts everything under ROOT, innermost first; True when nothing is left."""
    run("umount", "-R", ROOT, check=False)
    if os.path.ismount(ROOT):
        run("umount", "-R", "-l", ROOT, check=False)
    return not os.path.ismount(ROOT)


def setup_root():
    """The overlay, in this process's own mount namespace; returns a reason to skip, or None."""
    run("mount", "--make-rprivate", "/")  # nothing mounted below propagates to the machine
    if os.path.ismount(ROOT):
        unmount_all()
    shutil.rmtree(TOP, ignore_errors=True)
    for d in ("upper", "work", "root"):
        os.makedirs(os.path.join(TOP, d))
    r = run("mount", "-t", "overlay", "overlay", "-o",
            f"lowerdir=/,upperdir={TOP}/upper,workdir={TOP}/work", ROOT, check=False)
    if r.returncode != 0:
        return f"cannot mount an overlay of /: {r.stderr.strip()}"
    if not os.path.ismount(ROOT):
        return f"the overlay is not mounted at {ROOT}"
    run("mount", "-t", "proc", "proc", host("/proc"))
    # A /dev of its own: no device of the machine is reachable from the copy.
    run("mount", "-t", "tmpfs", "-o", "mode=0755,size=1m", "dev", host("/dev"))
    for name, major, minor in (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
                               ("urandom", 1, 9), ("tty", 5, 0)):
        os.mknod(host("/dev/" + name), 0o666 | stat.S_IFCHR, os.makedev(major, minor))
    # Services may not start (invoke-rc.d, deb-systemd-invoke: 101 = action forbidden), and
    # man-db's trigger need not rebuild the whole index of the copy.
    with open(host("/usr/sbin/policy-rc.d"), "w") as f:
        f.write("#!/bin/sh\nexit 101\n")
    os.chmod(host("/usr/sbin/policy-rc.d"), 0o755)
    if os.path.exists(host("/var/lib/man-db/auto-update")):
        os.remove(host("/var/lib/man-db/auto-update"))
    return None


class DebInstallTest(unittest.TestCase):
    debs = []
    skip_reason = None

    @classmethod
    def setUpClass(cls):
        cls.debs = sorted(glob.glob(os.path.join(DEB_DIR, "asiosmtpd_*.deb")) +
                          glob.glob(os.path.join(DEB_DIR, "asiosmtpd-dev_*.deb")))
        if len(cls.debs) != 2:
            raise AssertionError(f"expected the two .deb files of packaging.deb in {DEB_DIR}, found {cls.debs}")
        os.makedirs(host("/tmp/asiosmtpd-debs"), exist_ok=True)
        for d in cls.debs:
            shutil.copy(d, host("/tmp/asiosmtpd-debs"))
        cls.deb_paths = ["/tmp/asiosmtpd-debs/" + os.path.basename(d) for d in cls.debs]

    def dpkg_install(self):
        t = time.monotonic()
        r = chroot("dpkg", "-i", *self.deb_paths)
        sys.stderr.write(f"dpkg -i both packages: {time.monotonic() - t:.1f} s\n")
        return r

    def assert_account(self):
        pw = passwd_entry("asiosmtpd")
        self.assertIsNotNone(pw, "no user asiosmtpd after the install")
        uid, gid = int(pw[2]), int(pw[3])
        self.assertTrue(100 <= uid < 1000, f"asiosmtpd is not a system user: uid {uid}")
        self.assertEqual(gid, group_id("asiosmtpd"), "its primary group is not the group asiosmtpd")
        self.assertEqual(pw[5], SPOOL)
        self.assertEqual(pw[6], "/usr/sbin/nologin")
        return uid, gid

    def start_server(self, config_text):
        """The installed binary, in the chroot, as user asiosmtpd; returns (process, port,
        stderr path)."""
        with open(host("/tmp/asiosmtpd-test.yaml"), "w") as f:
            f.write(config_text)
        os.chmod(host("/tmp/asiosmtpd-test.yaml"), 0o644)
        err_path = os.path.join(TOP, "server.stderr")
        out_path = os.path.join(TOP, "server.stdout")
        with open(err_path, "wb") as err, open(out_path, "wb") as out:
            proc = subprocess.Popen(["chroot", "--userspec=asiosmtpd:asiosmtpd", ROOT, "/usr/bin/asiosmtpd",
                                     "--config", "/tmp/asiosmtpd-test.yaml"],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
        self.addCleanup(self.stop_server, proc, err_path)
        deadline = time.monotonic() + 10
        while True:
            with open(err_path, errors="replace") as f:
                text = f.read()
            m = LISTENING.search(text)
            if m:
                return proc, int(m.group(2)), err_path
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the installed server did not start (exit {proc.poll()}):\n{text}")
            time.sleep(0.02)

    @staticmethod
    def stop_server(proc, err_path):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        return proc.returncode

    # The steps run in order (unittest sorts by name); each needs the ones before it.
    def test_1_install(self):
        r = self.dpkg_install()
        out = r.stdout + r.stderr
        self.assertIn("Setting up asiosmtpd (", out)
        self.assertIn("Setting up asiosmtpd-dev (", out)
        for pkg in ("asiosmtpd", "asiosmtpd-dev"):
            status = chroot("dpkg-query", "-W", "-f=${Status}", pkg).stdout
            self.assertEqual(status, "install ok installed", pkg)
            # Every file as shipped (md5sums), conffiles included.
            v = chroot("dpkg", "--verify", pkg, check=False)
            self.assertEqual((v.returncode, v.stdout), (0, ""), f"dpkg --verify {pkg}: {v.stderr}")
        uid, gid = self.assert_account()
        st = os.stat(host(SPOOL))
        self.assertTrue(stat.S_ISDIR(st.st_mode))
        self.assertEqual((st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)), (uid, gid, 0o750))
        # Enabled by deb-systemd-helper as systemctl enable would (WantedBy=multi-user.target).
        link = host("/etc/systemd/system/multi-user.target.wants/asiosmtpd.service")
        self.assertTrue(os.path.islink(link), "the unit is not enabled")
        self.assertIn(os.readlink(link), ("/lib/systemd/system/asiosmtpd.service",
                                          "/usr/lib/systemd/system/asiosmtpd.service"))

    def test_2_files(self):
        # Every plugin this build makes is installed, with its README.
        built = sorted(os.path.basename(p) for p in glob.glob(os.path.join(BUILD, "plugins", "*.so")))
        installed = sorted(os.listdir(host("/usr/lib/asiosmtpd/plugins")))
        self.assertEqual(installed, built)
        for so in built:
            self.assertTrue(os.path.exists(host(f"/usr/share/doc/asiosmtpd/plugins/{so[:-3]}.md")), so)
        # The man pages, found by name (man's own search path), rendered without warnings.
        for page in (["8", "asiosmtpd"], ["5", "asiosmtpd.yaml"]):
            r = chroot("env", "MANPAGER=cat", "MANWIDTH=80", "LC_ALL=C.UTF-8", "man", "--warnings", *page)
            self.assertEqual(r.stderr, "", f"man {page}")
            self.assertIn(page[1], r.stdout)
        # The unit as installed: the account, the writable spool, nothing else writable.
        with open(host("/usr/lib/systemd/system/asiosmtpd.service")) as f:
            unit = f.read()
        for line in ("User=asiosmtpd", "Group=asiosmtpd", "ProtectSystem=strict",
                     f"ReadWritePaths={SPOOL}"):
            self.assertIn("\n" + line + "\n", unit)
        self.assertNotIn("DynamicUser", unit.split("[Service]")[1])
        # systemd's own check of the unit, in the installed system: the binary of every Exec
        # line, the user, the man pages of Documentation=. (No booted systemd needed.)
        if shutil.which("systemd-analyze"):
            r = chroot("systemd-analyze", "verify", "/usr/lib/systemd/system/asiosmtpd.service", check=False)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertNotIn("asiosmtpd.service", r.stderr, r.stderr)

    def test_3_unit_check_config(self):
        # The unit's ExecStartPre line, as its User=: the shipped config is valid and its
        # plugin (debugging) is found by name in the installed system.
        with open(host("/usr/lib/systemd/system/asiosmtpd.service")) as f:
            unit = f.read()
        pre = re.search(r"^ExecStartPre=(.*)$", unit, re.M).group(1).split()
        user = re.search(r"^User=(.*)$", unit, re.M).group(1)
        r = chroot(*pre, user=user, check=False)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_4_run_installed_server(self):
        uid, _ = self.assert_account()
        config = ("server:\n"
                  "  hostname: mx.test.example\n"
                  "  listen: [{address: 127.0.0.1, port: 0}]\n"
                  "  workers: 1\n"
                  "  shutdown_grace: 2\n"
                  "plugins:\n"
                  "  - name: ping\n"
                  "  - name: maildir\n"
                  f"    config: {{path: {SPOOL}/Maildir}}\n")
        proc, port, err_path = self.start_server(config)
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            self.assertEqual(s.ehlo("client.example")[0], 250)
            self.assertEqual(s.docmd("PING"), (259, b"Pong"))
            refused = s.sendmail("a@example.org", ["b@example.org"],
                                 b"Subject: installed\r\n\r\nfrom the .deb\r\n")
            self.assertEqual(refused, {})
        self.assertEqual(self.stop_server(proc, err_path), 0)
        stored = glob.glob(host(f"{SPOOL}/Maildir/new/*"))
        self.assertEqual(len(stored), 1, stored)
        self.assertEqual(os.stat(stored[0]).st_uid, uid, "the message is not owned by asiosmtpd")
        with open(stored[0], "rb") as f:
            self.assertIn(b"from the .deb", f.read())

    def test_5_purge_keeps_mail_and_user(self):
        uid, _ = self.assert_account()
        r = chroot("dpkg", "--purge", "asiosmtpd-dev", "asiosmtpd")
        self.assertIn(f"{SPOOL} is not empty: kept", r.stdout + r.stderr)
        for gone in ("/usr/bin/asiosmtpd", "/etc/asiosmtpd", "/usr/lib/asiosmtpd",
                     "/usr/include/asiosmtpd", "/etc/systemd/system/multi-user.target.wants/asiosmtpd.service"):
            self.assertFalse(os.path.lexists(host(gone)), f"{gone} left after the purge")
        self.assertEqual(len(glob.glob(host(f"{SPOOL}/Maildir/new/*"))), 1, "the stored mail is gone")
        self.assertEqual(int(passwd_entry("asiosmtpd")[2]), uid, "the user is gone")
        status = chroot("dpkg-query", "-W", "-f=${Status}", "asiosmtpd", check=False).stdout
        self.assertIn(status, ("", "unknown ok not-installed"))

    def test_6_reinstall_is_idempotent(self):
        uid, gid = self.assert_account()
        self.dpkg_install()  # the account and the spool are there: both kept as they are
        self.assertEqual(self.assert_account(), (uid, gid))
        self.assertEqual(len(glob.glob(host(f"{SPOOL}/Maildir/new/*"))), 1)
        os.chmod(host(SPOOL), 0o770)  # an administrator's choice
        self.dpkg_install()  # over the installed version: postinst configure once more
        self.assertEqual(self.assert_account(), (uid, gid))
        self.assertEqual(stat.S_IMODE(os.stat(host(SPOOL)).st_mode), 0o770)
        with open(host("/etc/passwd")) as f:
            self.assertEqual(sum(line.startswith("asiosmtpd:") for line in f), 1)

    def test_7_purge_removes_empty_spool(self):
        shutil.rmtree(host(f"{SPOOL}/Maildir"))
        chroot("dpkg", "--purge", "asiosmtpd-dev", "asiosmtpd")
        self.assertFalse(os.path.lexists(host(SPOOL)))
        self.assertFalse(os.path.lexists(host("/var/lib/systemd/deb-systemd-helper-enabled/asiosmtpd.service.dsh-also")))


def main():
    if os.geteuid() != 0:
        print("skipped: needs root (mount namespace, overlay, chroot)")
        return 77
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        print(f"skipped: unshare(CLONE_NEWNS) failed: {os.strerror(ctypes.get_errno())}")
        return 77
    # From here on this process has a mount namespace of its own: nothing it mounts is seen
    # by the machine, and the mounts go when it exits.
    try:
        reason = setup_root()
        if reason:
            print(f"skipped: {reason}")
            return 77
        prog = unittest.main(verbosity=2, exit=False, failfast=True)
        return 0 if prog.result.wasSuccessful() else 1
    finally:
        if unmount_all():
            shutil.rmtree(TOP, ignore_errors=True)
        else:
            print(f"{ROOT} still mounted: {TOP} left in place", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
