"""The local jobs' sandbox: bubblewrap namespaces, and slirp4netns for outbound-only network.

`python -I .../litbotd/backends/sandbox.py SPEC ERROR_FILE WORK -- COMMAND...` (standard library
only, run as a file so that no package import slows each job down) is what the job's bootstrap
runs instead of the bare script, after it fetched the code (so the fetch never depends on the
network mode). It starts COMMAND under `bwrap` with new user, PID, IPC, UTS, cgroup and (unless
`network = "host"`) network namespaces:

- the file system is an empty tmpfs holding read-only binds of /usr, /etc and the /bin, /lib…
  links, a fresh /proc, /dev and /tmp, and read-write binds of WORK (the checkout and the script),
  the job's HOME and `writable_paths` — nothing else of the host: not the daemon's config, key,
  credentials directory, state directory or other jobs' directories. Paths under /etc that hold
  secrets (/etc/litbotd, the config file and key wherever they are, /etc/shadow, ssh host keys)
  are masked;
- the job is uid/gid 65534 in its user namespace, with no capabilities;
- the sandbox's PID 1 is bwrap's reaper: when the script ends, it exits and the kernel kills every
  process left in the PID namespace, `setsid` ones included. `--die-with-parent` ties the sandbox
  to this wrapper, which the job's runner owns, not the daemon: a daemon restart leaves it alone;
- `network = "isolated"`: slirp4netns gives the namespace a NAT'ed tap0 with
  `--disable-host-loopback`, so the job reaches the internet but no port on the host's loopback;
  bwrap waits on `--block-fd` until the network is up. `"none"`: loopback only.

When the sandbox cannot be set up, the wrapper writes the reason to ERROR_FILE (outside the
sandbox) and exits 125; the bootstrap then fails the job with that reason. A job never runs
unsandboxed because the sandbox failed.
"""
from __future__ import annotations

import base64
import ctypes
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Sequence

UID = GID = 65534  # "nobody" inside the job's user namespace
SYSTEM_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ALWAYS_HIDDEN = ("/etc/litbotd", "/etc/shadow", "/etc/gshadow", "/etc/ssh", "/etc/sudoers", "/etc/sudoers.d")
SLIRP_DNS = "nameserver 10.0.2.3\n"  # slirp4netns's built-in DNS forwarder
EXIT_SETUP_FAILED = 125
PR_SET_PDEATHSIG = 1
NS_GET_USERNS = 0xB701  # ioctl: the user namespace owning a namespace (linux/nsfs.h)

NO_BWRAP = ("jobs.local.sandbox: bwrap not found on PATH: install the bubblewrap package "
            "(or set jobs.local.sandbox = false, for trusted code only)")
NO_SLIRP = ('jobs.local.network = "isolated": slirp4netns not found on PATH: install the slirp4netns package '
            '(or set jobs.local.network = "none")')
TUN = "/dev/net/tun"
NO_TUN = (f'jobs.local.network = "isolated": slirp4netns needs {TUN} readable and writable by this user '
          '(mode 0666 on Debian/Ubuntu; under systemd see BindPaths=/DeviceAllow= in the unit), '
          'or set jobs.local.network = "none"')
NO_USERNS = ("jobs.local.sandbox: bwrap cannot create user namespaces on this machine ({detail}): allow them "
             "with sysctl kernel.unprivileged_userns_clone=1 (Debian) or kernel.apparmor_restrict_unprivileged_userns=0 "
             "(Ubuntu 24.04+), or set jobs.local.sandbox = false (trusted code only)")


def problem(network: str, timeout: float = 10.0) -> str | None:
    """Why `sandbox = true` cannot work here (one line naming the package or sysctl), or None."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return NO_BWRAP
    if network == "isolated" and shutil.which("slirp4netns") is None:
        return NO_SLIRP
    if network == "isolated" and not os.access(TUN, os.R_OK | os.W_OK):
        return NO_TUN
    try:
        r = subprocess.run([bwrap, *_unshare(network), "--die-with-parent", "--ro-bind", "/", "/", "true"],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return NO_USERNS.format(detail=f"{type(e).__name__}: {e}")
    if r.returncode != 0:
        lines = r.stderr.decode("utf-8", "replace").strip().splitlines()
        return NO_USERNS.format(detail=lines[-1] if lines else f"bwrap exited with status {r.returncode}")
    return None


def _unshare(network: str) -> list[str]:
    args = ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    return args if network == "host" else [*args, "--unshare-net"]


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def bwrap_argv(spec: dict[str, Any], work: str, cwd: str, info_fd: int, block_fd: int,
               resolv_fd: int | None) -> list[str]:
    """The bwrap command line, in mount order: system, fresh dirs, the job's binds, then the masks."""
    argv = [shutil.which("bwrap") or "bwrap", *_unshare(spec["network"]), "--die-with-parent",
            "--uid", str(UID), "--gid", str(GID)]  # no --hostname: systemd's ProtectHostname= forbids sethostname
    exposed = []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):  # merged /usr: /bin -> usr/bin
            argv += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            argv += ["--ro-bind", d, d]
            exposed.append(d)
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run", "--dir", "/var/tmp"]
    for path in (work, *spec["writable"]):
        argv += ["--bind", path, path]
    for path in dict.fromkeys((*ALWAYS_HIDDEN, *spec["hidden"])):
        path = os.path.realpath(path)
        if not _under(path, exposed) or path in exposed:
            continue  # not visible in the sandbox anyway
        if os.path.isdir(path):
            argv += ["--tmpfs", path]
        elif os.path.exists(path):
            argv += ["--ro-bind", "/dev/null", path]
    if resolv_fd is not None:  # /etc/resolv.conf may be a link into /run (systemd-resolved)
        argv += ["--ro-bind-data", str(resolv_fd), os.path.realpath("/etc/resolv.conf")]
    return argv + ["--chdir", cwd, "--info-fd", str(info_fd), "--block-fd", str(block_fd), "--"]


def _read_info(fd: int) -> dict[str, Any] | None:
    """bwrap's --info-fd JSON (the sandbox's PID 1 as seen from here), or None if bwrap failed first."""
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
        try:
            info = json.loads(data)
            return info if isinstance(info, dict) else None
        except ValueError:
            continue
    return None


def _wait_loopback(pid: int, within: float = 5.0) -> None:
    """Until bwrap has brought up the sandbox's lo: slirp4netns --configure also touches lo, and
    when it comes first bwrap's own setup fails ("loopback: Failed RTM_NEWADDR")."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/net/if_inet6") as f:
                if any(line.split()[-1:] == ["lo"] for line in f):
                    return  # ::1 exists once lo is up
            with open(f"/proc/{pid}/net/fib_trie") as f:  # IPv6 off: 127.0.0.1 at least assigned
                if "127.0.0.1" in f.read() and not os.path.exists("/proc/sys/net/ipv6"):
                    return
        except OSError:
            pass
        time.sleep(0.001)


def _start_slirp(pid: int) -> tuple[subprocess.Popen[bytes], int] | str:
    """slirp4netns attached to the sandbox's netns, up and configured; or the reason it is not."""
    try:
        netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        return f"the sandbox's network namespace is gone: {e}"
    try:
        # The user namespace that owns the netns. Not /proc/PID/ns/user: bwrap moves its PID 1 into
        # a nested user namespace later (to switch to --uid), which cannot enter this netns.
        userns = fcntl.ioctl(netns, NS_GET_USERNS)
    except OSError as e:
        os.close(netns)
        return f"cannot find the owner of the sandbox's network namespace: {e}"
    _wait_loopback(pid)
    ready_r, ready_w = os.pipe()
    exit_r, exit_w = os.pipe()  # slirp4netns exits when this wrapper (holding exit_w) is gone
    try:
        slirp = subprocess.Popen(
            ["slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback",
             f"--ready-fd={ready_w}", f"--exit-fd={exit_r}", f"--userns-path=/proc/self/fd/{userns}",
             "--netns-type=path", f"/proc/self/fd/{netns}", "tap0"],
            pass_fds=(ready_w, exit_r, netns, userns), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
    except OSError as e:
        os.close(exit_w)
        return f"cannot run slirp4netns: {e}"
    finally:
        for fd in (ready_w, exit_r, netns, userns):
            os.close(fd)
    with os.fdopen(ready_r, "rb") as ready:
        ok = ready.read(1) == b"1"
    if not ok:
        slirp.kill()
        err = slirp.communicate(timeout=5)[1].decode("utf-8", "replace").strip().splitlines()
        os.close(exit_w)
        return "slirp4netns could not set up the job's network" + (": " + " / ".join(err) if err else "")
    if slirp.stderr is not None:  # piped above; read only on a failed start
        slirp.stderr.close()
    return slirp, exit_w


def _fail(error_file: str, reason: str) -> int:
    with open(error_file, "w") as f:
        f.write("sandbox: " + reason)
    print("litci: sandbox: " + reason, flush=True)
    return EXIT_SETUP_FAILED


def _die_with_parent() -> None:
    """SIGKILL when the bootstrap dies (and with this wrapper, bwrap's --die-with-parent ends the
    sandbox): a job whose runner was killed leaves nothing running. The runner, not the daemon."""
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(EXIT_SETUP_FAILED)


def run(spec: dict[str, Any], error_file: str, work: str, command: list[str]) -> int:
    _die_with_parent()
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return _fail(error_file, NO_BWRAP)
    if spec["network"] == "isolated" and shutil.which("slirp4netns") is None:
        return _fail(error_file, NO_SLIRP)
    info_r, info_w = os.pipe()
    block_r, block_w = os.pipe()
    resolv_fd = None
    if spec["network"] != "none" and os.path.exists("/etc/resolv.conf"):
        resolv_r, resolv_w = os.pipe()
        if spec["network"] == "isolated":
            text = SLIRP_DNS.encode()
        else:
            try:
                with open("/etc/resolv.conf", "rb") as f:
                    text = f.read(65536)
            except OSError:
                text = b""
        os.write(resolv_w, text)
        os.close(resolv_w)
        resolv_fd = resolv_r
    fds = tuple(fd for fd in (info_w, block_r, resolv_fd) if fd is not None)
    argv = bwrap_argv(spec, work, os.getcwd(), info_w, block_r, resolv_fd)
    # SIGTERM from the bootstrap reaches the whole group (bwrap, the job, slirp4netns): this
    # process only waits for bwrap; a handler, not SIG_IGN, which bwrap and the job would inherit.
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, lambda *_: None)
    proc = subprocess.Popen(argv + command, pass_fds=fds, stdin=subprocess.DEVNULL)
    for fd in fds:
        os.close(fd)
    info = _read_info(info_r)
    os.close(info_r)
    if info is None or not isinstance(info.get("child-pid"), int):
        proc.wait()
        return _fail(error_file, problem(spec["network"]) or "bwrap could not set up the sandbox (its message is above)")
    slirp = None
    if spec["network"] == "isolated":
        started = _start_slirp(info["child-pid"])
        if isinstance(started, str):
            proc.kill()
            proc.wait()
            return _fail(error_file, started)
        slirp, exit_w = started
    os.write(block_w, b"1")  # the network is ready: let the job start
    os.close(block_w)
    rc = proc.wait()
    if slirp is not None:
        os.close(exit_w)
        try:
            slirp.wait(5)
        except subprocess.TimeoutExpired:
            slirp.kill()
            slirp.wait()
    return rc if rc >= 0 else 128 - rc


def encode_spec(network: str, writable: Sequence[str], hidden: Sequence[str]) -> str:
    spec = {"network": network, "writable": list(writable), "hidden": [p for p in hidden if p]}
    return base64.b64encode(json.dumps(spec).encode()).decode("ascii")


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[3] != "--":
        print("usage: sandbox.py SPEC ERROR_FILE WORK -- COMMAND...", file=sys.stderr)
        return 2
    spec = json.loads(base64.b64decode(argv[0]))
    return run(spec, argv[1], argv[2], argv[4:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
