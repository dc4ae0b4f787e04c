"""A real OpenSSH server on 127.0.0.1 for the --device ssh:// tests: a throwaway host key and user
key in a temporary folder, loopback only, stopped after the tests. `start_sshd` returns None with
the reason where it cannot start (no openssh-server, not root and not the same user, ...)."""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/bin/sshd") if os.path.exists(p)), None)


@dataclass
class LoopbackSshd:
    port: int
    user: str
    key: Path  # accepted
    wrong_key: Path  # not in authorized_keys
    ssh_config: Path  # "Host testdevice" -> this server with `key`; known hosts off
    process: subprocess.Popen

    def url(self, python: str, alias: bool = False, key: Path | None = None) -> str:
        if alias:
            return f"ssh://testdevice?ssh_config={self.ssh_config}&python={python}"
        return (f"ssh://{self.user}@127.0.0.1:{self.port}?ssh_config={self.ssh_config}"
                f"&identity={key or self.key}&python={python}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def start_sshd(folder: Path) -> LoopbackSshd | str:
    if SSHD is None or not shutil.which("ssh") or not shutil.which("ssh-keygen"):
        return "openssh-server/openssh-client not installed (apt-get install -y openssh-server)"
    if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation folder
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "key", "wrong_key"):
        _keygen(folder / name)
    shutil.copy(folder / "key.pub", folder / "authorized_keys")
    port, user = free_port(), getpass.getuser()
    config = folder / "sshd_config"
    config.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\n"
                      f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPidFile {folder / 'sshd.pid'}\n"
                      "StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                      "PubkeyAuthentication yes\nUsePAM no\nPermitRootLogin prohibit-password\n")
    client = folder / "ssh_config"
    client.write_text(f"Host testdevice\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n"
                      f"  IdentityFile {folder / 'key'}\n  IdentitiesOnly yes\n"
                      "Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n")
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                               stderr=open(folder / "sshd.log", "w"))
    for _ in range(50):
        if process.poll() is not None:
            return f"sshd did not start: {(folder / 'sshd.log').read_text().strip()[-300:]}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return LoopbackSshd(port, user, folder / "key", folder / "wrong_key", client, process)
        time.sleep(0.1)
    process.kill()
    return "sshd did not listen within 5 s"
