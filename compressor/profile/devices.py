"""Where an engine is profiled: this host, this host's RISC-V emulator, or a device over SSH.

    device = open_device("ssh://user@board:2222?python=/opt/venv/bin/python3")
    result = device.run(Job(files={"runner.py": path, ...}, argv=["{python}", "runner.py", ...],
                            fetch=["result.json"]))

Every device runs a job the same way: the job's files go into a fresh temporary folder (a tar
stream on stdin), the command runs there, and its exit status, stdout, stderr and the files it
wrote come back as a tar stream on stdout; the folder is removed. Here that is `sh -c`, on a device
`ssh HOST sh -c`, so the SSH path is the local path plus a connection. A device kind is a scheme in
DEVICES; the C engine's `qemu` is this host with the engine's RISC-V build under qemu-user.
"""
from __future__ import annotations

import io
import re
import shlex
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ..errors import CompressError

# the device runners' exit status for "a module this runner needs is not installed" (they print
# "missing-runtime NAME: HOW TO INSTALL" on stderr)
MISSING_RUNTIME_EXIT = 17
CONNECT_TIMEOUT_S = 10
SSH_OPTIONS = ("python", "identity", "ssh_config", "arch", "connect_timeout")


@dataclass
class Job:
    files: dict[str, Path]  # name in the job folder -> file here
    argv: list[str]  # run in the job folder; "{python}" is the device's Python
    fetch: list[str] = field(default_factory=list)  # files the command writes, brought back
    timeout_s: float = 600
    needs: str = ""  # what the command needs on the device, for the error when it is missing


@dataclass
class JobResult:
    stdout: str
    stderr: str
    files: dict[str, bytes]


_SCRIPT = ('d=$(mktemp -d) || exit 96; trap \'rm -rf "$d"\' EXIT; cd "$d" && tar -xf - || exit 97; '
           '{{ {command}; }} >.out 2>.err; echo $? >.rc; '
           'set -- .rc .out .err; for f in {fetch}; do [ -e "$f" ] && set -- "$@" "$f"; done; tar -cf - "$@"')


class Device:
    """Runs jobs; subclasses say how the job script reaches a shell."""

    scheme = ""
    remote = False  # the numbers come from another machine
    emulated = False  # RISC-V builds under qemu-user here (instruction counts, not device time)
    python = sys.executable
    arch: str | None = None  # the C engine build it runs (None: this host's)

    @property
    def label(self) -> str:
        return "this host"

    def _shell(self, script: str, stdin: bytes, timeout_s: float) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(["sh", "-c", script], input=stdin, capture_output=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise CompressError(f"{self.label}: the job timed out after {timeout_s:.0f} s") from None

    def run(self, job: Job) -> JobResult:
        argv = [self.python if a == "{python}" else a for a in job.argv]
        script = _SCRIPT.format(command=" ".join(shlex.quote(a) for a in argv),
                                fetch=" ".join(shlex.quote(f) for f in job.fetch) or "''")
        done = self._shell(script, _pack(job.files), job.timeout_s)
        self._check_transport(done)
        files = _unpack(done.stdout)
        if ".rc" not in files:
            raise CompressError(f"{self.label}: the job did not run: "
                                f"{_last_line(done.stderr.decode(errors='replace')) or f'exit {done.returncode}'}")
        rc = int(files.pop(".rc").decode().strip() or -1)
        out, err = (files.pop(k).decode(errors="replace") for k in (".out", ".err"))
        if rc:
            raise CompressError(self._failure(rc, err, job, argv[0]))
        return JobResult(out, err, files)

    def check(self) -> None:
        """Raise now for a device that cannot run jobs (refused, unreachable, key refused)."""
        self.run(Job({}, ["true"], timeout_s=30))

    def _check_transport(self, done: subprocess.CompletedProcess) -> None:
        """Raise for a failed connection (devices reached over a network)."""

    def _failure(self, rc: int, err: str, job: Job, program: str) -> str:
        missing = re.search(r"missing-runtime (\S+): (.*)", err)
        if rc == MISSING_RUNTIME_EXIT and missing:
            where = ("on the device", "there") if self.remote else ("here", "here")
            return (f"{self.label}: {missing.group(1).replace(',', ', ')} not installed {where[0]} for {program}: "
                    f"install {where[1]} with `{missing.group(2).strip()}`"
                    + (", or name another interpreter with ?python=PATH in --device" if self.remote else ""))
        if rc == 127:
            return (f"{self.label}: {program} not found on the device: install {job.needs or program} there"
                    + (", or name the interpreter with ?python=PATH in --device" if program == self.python else ""))
        return f"{self.label}: {Path(program).name} failed (exit {rc}): {_last_line(err)}"


class HereDevice(Device):
    scheme = "here"


class QemuDevice(Device):
    scheme = "qemu"
    emulated = True

    @property
    def label(self) -> str:
        return "qemu-user on this host"


class SshDevice(Device):
    """ssh://[user@]host[:port][?python=PATH&identity=KEY&ssh_config=FILE&arch=ARCH&connect_timeout=S];
    host may be an alias of the ssh config. Password prompts are off (BatchMode): keys or an agent
    only. `arch`: the C engine build the device runs (host, rv64gc, rv64gcv; default host)."""

    scheme = "ssh"
    remote = True

    def __init__(self, url: str):
        parts = urlsplit(url)
        if not parts.hostname:
            raise CompressError(f"--device {url}: no host; expected ssh://[user@]host[:port]")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = sorted(set(query) - set(SSH_OPTIONS))
        if unknown:
            raise CompressError(f"--device {url}: unknown option(s) {', '.join(unknown)}; known: {', '.join(SSH_OPTIONS)}")
        self.arch = query.get("arch")
        try:
            self.connect_timeout = int(query.get("connect_timeout", CONNECT_TIMEOUT_S))
        except ValueError:
            raise CompressError(f"--device {url}: connect_timeout must be whole seconds") from None
        try:
            self.port = parts.port
        except ValueError:
            raise CompressError(f"--device {url}: the port is not a number") from None
        self.user, self.host = parts.username, parts.hostname
        self.python = query.get("python", "python3")
        self.options = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}"]
        if "ssh_config" in query:
            self.options += ["-F", query["ssh_config"]]
        if "identity" in query:
            self.options += ["-i", query["identity"], "-o", "IdentitiesOnly=yes"]
        if self.port:
            self.options += ["-p", str(self.port)]

    @property
    def label(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}{f':{self.port}' if self.port else ''}"

    def _shell(self, script: str, stdin: bytes, timeout_s: float) -> subprocess.CompletedProcess:
        destination = f"{self.user}@{self.host}" if self.user else self.host
        command = ["ssh", *self.options, destination, "sh -c " + shlex.quote(script)]
        try:
            return subprocess.run(command, input=stdin, capture_output=True, timeout=timeout_s + self.connect_timeout)
        except FileNotFoundError:
            raise CompressError("--device ssh://... needs the ssh client here: apt-get install openssh-client") from None
        except subprocess.TimeoutExpired:
            raise CompressError(f"{self.label}: timed out after {timeout_s + self.connect_timeout:.0f} s") from None

    def _check_transport(self, done: subprocess.CompletedProcess) -> None:
        if done.returncode != 255:  # ssh's own failures; anything else is the remote command's
            return
        err = done.stderr.decode(errors="replace")
        for pattern, why in _SSH_FAILURES:
            if re.search(pattern, err, re.IGNORECASE):
                raise CompressError(f"{self.label}: {why.format(timeout=self.connect_timeout)}")
        raise CompressError(f"{self.label}: ssh failed: {_last_line(err)}")


_SSH_FAILURES = (
    (r"connection refused", "connection refused (no SSH server on that port?)"),
    (r"timed out", "connection timed out (no answer in {timeout} s)"),
    (r"permission denied", "authentication failed (the key was refused; password prompts are off: "
                           "use a key, ?identity=KEY, or an agent)"),
    (r"could not resolve hostname|name or service not known", "unknown host (not in DNS or the ssh config)"),
    (r"host key verification failed", "host key verification failed (unknown or changed host key: "
                                      "check ~/.ssh/known_hosts)"),
    (r"no route to host|network is unreachable", "no route to host"),
)

# device kind (the scheme of --device) -> class
DEVICES: dict[str, type[Device]] = {"here": HereDevice, "qemu": QemuDevice, "ssh": SshDevice}


def open_device(spec: str | None) -> Device:
    """`None`/"here": this host; "qemu": the C engine's RISC-V build in qemu-user; "ssh://...": a device."""
    spec = spec or "here"
    scheme = spec.split("://", 1)[0] if "://" in spec else spec
    if scheme not in DEVICES:
        raise CompressError(f"--device {spec}: unknown device; expected one of here, qemu, ssh://[user@]host[:port]")
    return DEVICES[scheme](spec) if "://" in spec else DEVICES[scheme]()


def _pack(files: dict[str, Path]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, path in files.items():
            tar.add(str(path), arcname=name)
    return buffer.getvalue()


def _unpack(data: bytes) -> dict[str, bytes]:
    if not data:
        return {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            return {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except tarfile.TarError:
        return {}


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""
