"""The README's on-prem cluster commands, run for real: `ray up` over SSH to this machine, the
smoke sweep as a Ray job, its report, `ray down`; and what goes wrong on the way.

    .venv/bin/python -m pytest -q tests/test_cluster_launch.py     # as root; about 4 minutes

The head machine is a user made for the test (its own home, uid and Ray), reached through a real
sshd on 127.0.0.1 with a host key and a client key made here, so nothing of the calling user's
own files changes: the "laptop" side runs Ray's CLI with HOME, TMPDIR and RAY_TMPDIR in a temp
dir (its ~/.ssh key, its ~/.ray/auth_token). The cluster file is a copy of cluster_onprem.yaml
with the head on 127.0.0.1, no workers, that user and key, and torch from pip's own index (the
CPU wheel here) instead of the CUDA one. Ray's SSH has no port setting, so it reaches the test's
sshd through `auth.ssh_proxy_command` (netcat). The head's Ray keeps the file's own start
commands: token auth on, its dashboard on 127.0.0.1:8265, which `ray dashboard` tunnels to a free
local port (the "laptop" and the head share this machine).

Setting up the head installs nothing it can reuse: when the node user can read this checkout's
.venv, its ~/venv sees those packages (a .pth file) and cluster_setup.sh only installs ray_mtl
from the synced copy; otherwise cluster_setup.sh builds the venv from pip (a few minutes more).

Needs root (useradd), sshd, rsync and nc: `.ci/run` installs openssh-server, rsync and
netcat-openbsd. Tests marked `cluster` run last, after the session's Ray is shut down
(conftest.py): two Ray clusters on one 2-core machine starve each other.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import sized_space

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"
README_FILE = "cluster_onprem.yaml"
README_SPACE, README_STORAGE = "tune_spaces/paper_fr_ro.yaml", "/mnt/nfs/ray_mtl"
README_DASHBOARD = "http://127.0.0.1:8265"
HEAD_PORTS = {6379: "Ray's GCS", 8265: "Ray's dashboard"}  # cluster_onprem.yaml's head_start
# The `ray` commands of the README's on-prem steps, in the order the tests below run them.
STEPS = ["get-auth-token", "up", "dashboard", "job submit", "job logs", "down"]

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


# --------------------------------------------------------------------------------------------
# The README's commands
# --------------------------------------------------------------------------------------------


def readme_onprem() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"^### On your own machines\n.*?(?=^##)", text, re.M | re.S)
    assert found, "README.md: no '### On your own machines' section"
    return found.group(0)


def readme_commands() -> list[str]:
    """The command lines of the section's bash blocks, comments removed."""
    blocks = re.findall(r"```bash\n(.*?)```", readme_onprem(), re.S)
    lines = (line.split("  #")[0].strip() for block in blocks for line in block.splitlines())
    return [line for line in lines if line]


def ray_step(argv: list[str]) -> str:
    """`up`, `job submit`, ...: the Ray command of an argv ('' if it runs no ray)."""
    if "ray" not in argv:
        return ""
    rest = argv[argv.index("ray") + 1 :]
    return " ".join(rest[:2]) if rest[0] == "job" else rest[0]


def readme_step(step: str) -> tuple[dict[str, str], list[str]]:
    """The README's line for ``step``: its VAR=value prefix and the ray argv."""
    for line in readme_commands():
        argv = shlex.split(line)
        if ray_step(argv) == step:
            i = argv.index("ray")
            return dict(a.split("=", 1) for a in argv[:i]), argv[i:]
    raise AssertionError(f"README.md, on-prem steps: no `ray {step}` line")


def test_readme_steps_are_the_ones_run_here():
    run = [ray_step(shlex.split(line)) for line in readme_commands()]
    assert [s for s in run if s] == STEPS
    assert any(README_STORAGE in line and "report/index.html" in line for line in readme_commands())


# --------------------------------------------------------------------------------------------
# Processes and the test's SSH server
# --------------------------------------------------------------------------------------------


def processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (uid, parent pid, command line) of every process now."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            status = dict(
                line.split(":", 1)
                for line in (d / "status").read_text().splitlines()
                if ":" in line
            )
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue  # ended meanwhile
        if status["State"].strip().startswith("Z"):
            continue  # ended, its parent has yet to reap it
        out[int(d.name)] = (int(status["Uid"].split()[0]), int(status["PPid"]), cmdline)
    return out


def end_processes(pids: set[int], grace_s: float = 10) -> set[int]:
    """SIGTERM each, SIGKILL those still there after ``grace_s``; returns any still left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while (pids & processes().keys()) and time.monotonic() < deadline:
            time.sleep(0.2)
        pids = pids & processes().keys()
        if not pids:
            break
    return pids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def run_as(user: str, command: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``command`` in a login shell of ``user`` (its own HOME and PATH, none of ours)."""
    return subprocess.run(
        ["runuser", "-l", user, "-c", command],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class Head:
    """The test's head machine: a user reached over SSH on 127.0.0.1, and the laptop side."""

    user: str
    uid: int
    home: Path
    ssh_port: int
    sshd: subprocess.Popen
    dir: Path  # the laptop side: home/ (HOME), tmp/ (TMPDIR, RAY_TMPDIR), storage/, configs
    key: Path
    corpora: Path  # what the suite reads (../shared/data, else the in-repo slices)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
        tmp = str(self.dir / "tmp")
        return env | {"HOME": str(self.dir / "home"), "TMPDIR": tmp, "RAY_TMPDIR": tmp} | extra

    def cluster_file(self, name: str, via_sshd: bool = True) -> Path:
        """A copy of cluster_onprem.yaml with the head on 127.0.0.1 as this user, no workers,
        torch from pip's own index, the suite's corpora; SSH through the test's sshd, or else to
        port 22."""
        cfg = yaml.safe_load((ROOT / README_FILE).read_text(encoding="utf-8"))
        cfg["provider"] |= {"head_ip": "127.0.0.1", "worker_ips": []}
        cfg["auth"] |= {"ssh_user": self.user, "ssh_private_key": str(self.key)}
        assert "~/shared/data" in cfg["file_mounts"]  # where RAY_MTL_DATA points on the nodes
        cfg["file_mounts"]["~/shared/data"] = str(self.corpora)
        if via_sshd:
            cfg["auth"]["ssh_proxy_command"] = f"nc %h {self.ssh_port}"
        else:
            cfg["cluster_name"] += "-unreachable"  # a state file of its own
        index = re.compile(r"\bRAY_MTL_TORCH_INDEX=\S+")
        assert sum(len(index.findall(c)) for c in cfg["setup_commands"]) == 1
        cfg["setup_commands"] = [
            index.sub("RAY_MTL_TORCH_INDEX=", c) for c in cfg["setup_commands"]
        ]
        path = self.dir / name
        path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        return path

    def ray(self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 600):
        """One Ray CLI command from the repo root (file mounts name paths relative to it)."""
        r = subprocess.run(
            [str(RAY), *argv[1:]],
            cwd=ROOT,
            env=env or self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return r, r.stdout + r.stderr

    def ours(self) -> set[int]:
        """Every process this test started that is still there: the head user's (Ray, SSH
        sessions), the sshd's children, and the SSH clients that reach the sshd (Ray keeps
        master connections open) with their netcat."""
        procs = processes()
        pids = {self.sshd.pid} | {pid for pid, (uid, _, _) in procs.items() if uid == self.uid}
        nc = f"nc 127.0.0.1 {self.ssh_port}"
        for pid, (_, ppid, cmd) in procs.items():
            if cmd == nc:
                pids.add(pid)
                if procs.get(ppid, (0, 0, ""))[2].startswith("ssh"):
                    pids.add(ppid)
        while grown := {pid for pid, (_, ppid, _) in procs.items() if ppid in pids} - pids:
            pids |= grown
        return pids


def need(tool: str) -> str:
    found = shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if not found:
        why = (
            f"{tool} missing: apt-get install -y openssh-server rsync netcat-openbsd (.ci/run does)"
        )
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return found


def overlay_venv(user: str, home: Path) -> bool:
    """Give ``user`` a ~/venv that sees this checkout's .venv (read-only), if it can read it;
    else none (cluster_setup.sh makes one)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    python = shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")
    site = Path(sys.prefix) / "lib" / version / "site-packages"
    if python is None or run_as(user, f"{python} -m venv ~/venv").returncode != 0:
        return False
    venv = home / "venv"
    (venv / "lib" / version / "site-packages" / "ray_mtl_checkout.pth").write_text(
        f"import site; site.addsitedir({str(site)!r})\n"
    )
    # `ray start` runs the `ray` script: the checkout's, on this venv's Python.
    script = (Path(sys.prefix) / "bin" / "ray").read_text().split("\n", 1)[1]
    (venv / "bin" / "ray").write_text(f"#!{venv}/bin/python\n{script}")
    (venv / "bin" / "ray").chmod(0o755)
    for path in venv.rglob("*"):
        os.chown(path, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
    check = "import importlib.util as u, sys; sys.exit(not all(map(u.find_spec, %r)))"
    modules = ("ray", "torch", "aiohttp", "ray_mtl")
    if run_as(user, f"~/venv/bin/python -c {shlex.quote(check % (modules,))}").returncode == 0:
        return True
    shutil.rmtree(venv)
    return False


@pytest.fixture(scope="module")
def head(shared_data) -> Iterator[Head]:
    if os.geteuid() != 0:
        pytest.skip("makes a user for the head machine: needs root")
    sshd, _, _ = need("sshd"), need("rsync"), need("nc")
    for port, what in HEAD_PORTS.items():
        assert not answers(port), f"port {port} ({what}) is taken: another Ray head runs here"
    import ray

    ray.shutdown()  # the session's Ray, if a test started it (cluster tests run last)

    d = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: Ray's AF_UNIX paths
    d.chmod(0o711)  # the head user reaches its storage dir in here
    for sub in ("home/.ssh", "home/.ray", "tmp", "sshd"):
        (d / sub).mkdir(parents=True)
    key = d / "home" / ".ssh" / "id_ed25519"
    for path in (key, d / "sshd" / "host_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)
    # The head's Ray under a short temp dir of its own (not /tmp/ray, which may be root's).
    ray_tmp = Path(tempfile.mkdtemp(prefix="rn", dir="/tmp"))
    user, port = f"rmtl{os.getpid()}", free_port()
    # '*': no password, yet not locked (sshd without PAM refuses locked accounts).
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", "-p", "*", user], check=True)
    h = None
    try:
        h = start_head(user, port, d, key, ray_tmp, sshd, shared_data)
        wait_for_sshd(h)
        yield h
    finally:
        if h is not None:
            left = end_processes(h.ours())
            h.sshd.wait(timeout=10)
            assert not left, f"still running after SIGKILL: {left}"
        subprocess.run(["userdel", "-r", user], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def start_head(
    user: str, port: int, d: Path, key: Path, ray_tmp: Path, sshd: str, corpora: Path
) -> Head:
    """The head user's home (authorized key, RAY_TMPDIR, ~/venv) and its sshd, started."""
    entry = pwd.getpwnam(user)
    home = Path(entry.pw_dir)
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    shutil.copy(f"{key}.pub", ssh_dir / "authorized_keys")
    with (home / ".bashrc").open("a") as f:
        f.write(f"export RAY_TMPDIR={ray_tmp}\n")
    for path in (ssh_dir, ssh_dir / "authorized_keys", home / ".bashrc", ray_tmp):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    overlay_venv(user, home)

    config = d / "sshd" / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {d}/sshd/host_key\nPidFile none\n"
        f"AllowUsers {user}\nAuthorizedKeysFile .ssh/authorized_keys\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation dir
    log = d / "sshd" / "log"
    with log.open("w") as out:
        proc = subprocess.Popen([sshd, "-D", "-e", "-f", config], stdout=out, stderr=out)
    return Head(user, entry.pw_uid, home, port, proc, d, key, corpora)


def wait_for_sshd(h: Head) -> None:
    deadline = time.monotonic() + 30
    while not answers(h.ssh_port):
        assert h.sshd.poll() is None, (h.dir / "sshd" / "log").read_text()
        assert time.monotonic() < deadline, "sshd did not listen within 30 s"
        time.sleep(0.2)


@dataclass
class Cluster:
    head: Head
    file: Path
    address: str  # the dashboard through `ray dashboard`'s tunnel
    storage: Path
    space: Path  # the smoke space at test size, with DDP (two workers) in every segment

    def submit(self, storage: Path, **env: str):
        """The README's `ray job submit` line with the (test-size) smoke sweep, this storage and
        address."""
        prefix, argv = readme_step("job submit")
        env = prefix | env
        env = {k: (self.address if v == README_DASHBOARD else v) for k, v in env.items()}
        swap = {README_SPACE: str(self.space), README_STORAGE: str(storage)}
        argv = [swap.get(a, a) for a in argv]
        assert str(self.space) in argv and str(storage) in argv, argv
        return self.head.ray(argv, self.head.env(**env), timeout=1800)


@pytest.fixture(scope="module")
def cluster(head) -> Iterator[Cluster]:
    """The README's first three steps: the token, `ray up`, `ray dashboard` (kept open)."""
    _, argv = readme_step("get-auth-token")
    r, out = head.ray(argv)
    assert r.returncode == 0, out
    token = head.dir / "home" / ".ray" / "auth_token"
    assert token.is_file()

    file = head.cluster_file("cluster.yaml")
    _, argv = readme_step("up")
    r, out = head.ray([a if a != README_FILE else str(file) for a in argv] + ["-y"])
    assert r.returncode == 0, out[-8000:]
    assert (head.home / ".ray" / "auth_token").read_bytes() == token.read_bytes()

    port = free_port()
    _, argv = readme_step("dashboard")
    argv = [a if a != README_FILE else str(file) for a in argv] + ["--port", str(port)]
    log = (head.dir / "dashboard.log").open("w")
    tunnel = subprocess.Popen(
        [str(RAY), *argv[1:]], cwd=ROOT, env=head.env(), stdout=log, stderr=log,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not answers(port):
            assert tunnel.poll() is None, (head.dir / "dashboard.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "no dashboard tunnel within 60 s"
            time.sleep(0.5)
        storage = head.dir / "storage"  # as the NFS export: the head user writes it
        storage.mkdir()
        os.chown(storage, head.uid, -1)
        (head.dir / "spaces").mkdir()
        (head.dir / "spaces").chmod(0o755)
        ddp = {"num_workers": 2, "cpus_per_worker": 0.45}
        space = sized_space(head.dir / "spaces", "smoke", resources=ddp)
        space.chmod(0o644)
        yield Cluster(head, file, f"http://127.0.0.1:{port}", storage, space)
    finally:
        os.killpg(tunnel.pid, signal.SIGTERM)
        tunnel.wait(timeout=30)
        if answers(8265):  # a test failed before `ray down`
            head.ray(["ray", "down", "-y", str(file)])


def test_job_without_the_token_is_refused(cluster):
    env = {"RAY_AUTH_MODE": ""}  # the README's line without its RAY_AUTH_MODE=token
    r, out = cluster.submit(cluster.storage, **env)
    assert r.returncode != 0
    assert "Authentication required" in out and "Missing authentication token" in out, out
    r, out = cluster.submit(cluster.storage, RAY_AUTH_TOKEN="0" * 32)  # another cluster's
    assert r.returncode != 0 and "Invalid authentication token" in out, out
    assert not list(cluster.storage.iterdir()), "a refused job must not run"


def test_smoke_sweep_runs_as_a_job_and_writes_its_report(cluster):
    r, out = cluster.submit(cluster.storage)
    assert r.returncode == 0, out[-8000:]
    job = re.search(r"Job '(\S+)' succeeded", out)
    assert job, out[-4000:]
    report = cluster.storage / "smoke" / "report" / "index.html"
    assert report.is_file() and "<img" in report.read_text(encoding="utf-8")
    assert (cluster.storage / "smoke" / "frontier.json").is_file()

    env, argv = readme_step("job logs")
    env = {k: (cluster.address if v == README_DASHBOARD else v) for k, v in env.items()}
    r, logs = cluster.head.ray(
        [a if a != "<id>" else job.group(1) for a in argv], cluster.head.env(**env)
    )
    assert r.returncode == 0, logs
    assert "7/7 segments" in logs and f"report: {report}" in logs, logs[-4000:]


def test_job_with_unwritable_storage_names_it(cluster):
    readonly = cluster.head.dir / "readonly"  # root's, mode 755: the head user cannot write
    readonly.mkdir()
    r, out = cluster.submit(readonly / "sweeps")
    assert r.returncode != 0 and "failed" in out
    assert f"error: {readonly / 'sweeps'}: storage path is not writable" in out, out[-4000:]
    assert not list(readonly.iterdir())


def test_ray_down_stops_the_head(cluster):
    _, argv = readme_step("down")
    r, out = cluster.head.ray([a if a != README_FILE else str(cluster.file) for a in argv] + ["-y"])
    assert r.returncode == 0, out[-4000:]
    deadline = time.monotonic() + 60
    while any("ray" in cmd for uid, _, cmd in processes().values() if uid == cluster.head.uid):
        assert time.monotonic() < deadline, "Ray processes of the head left after `ray down`"
        time.sleep(1)
    assert not answers(8265) and not answers(6379)


def test_unreachable_head_is_named(head):
    assert not answers(22), "this case needs nothing listening on 127.0.0.1:22"
    # Plain SSH as the file has it (no proxy): port 22 of 127.0.0.1, where nothing listens. Ray
    # tries `uptime` over SSH every 5 s for AUTOSCALER_NODE_START_WAIT_S (900 s unless set).
    if not (head.dir / "home" / ".ray" / "auth_token").is_file():  # run alone: no cluster before
        assert head.ray(readme_step("get-auth-token")[1])[0].returncode == 0
    file = head.cluster_file("unreachable.yaml", via_sshd=False)
    env = head.env(AUTOSCALER_NODE_START_WAIT_S="20")
    r, out = head.ray(["ray", "up", "-y", str(file)], env, timeout=300)
    assert r.returncode != 0
    assert "ssh: connect to host 127.0.0.1 port 22: Connection refused" in out, out[-4000:]
    assert "SSH still not available" in out and "Failed to setup head node" in out, out[-4000:]
