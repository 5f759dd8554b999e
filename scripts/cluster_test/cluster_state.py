"""scripts/cluster, part one: settings, the state file, and starting, watching and
stopping the cluster's processes (nginx, the API instances, the worker).

The usage text is in scripts/cluster. Standard library only."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]

# cluster.state (written by `up`, and readable by a shell): these as KEY=value, then
# NAMES / KINDS / PORTS / METRICS_PORTS as parallel lists, KEY=(a b c).
STATE_VARS = (
    "BIN", "URL", "HOST", "PORT", "DATABASE_URL", "REDIS_URL", "REDIS_PREFIX", "NGINX",
    "OWN_SERVICES", "OWN_PG_PORT", "OWN_REDIS_PORT", "OWN_REDIS_AOF",
)
STATE_LISTS = ("NAMES", "KINDS", "PORTS", "METRICS_PORTS")
ENV_LINE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def log(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


def die(msg: str) -> None:
    log(f"error: {msg}")
    raise SystemExit(1)


def is_root() -> bool:
    return os.geteuid() == 0


def setting(name: str, default: str = "") -> str:
    """An environment setting; set but empty counts as unset."""
    return os.environ.get(name) or default


def number(name: str, default: str) -> float:
    v = setting(name, default)
    try:
        return float(v)
    except ValueError:
        die(f"{name} is a number of seconds, not '{v}'")


def tail(path: Path | str, n: int) -> None:
    """The last n lines of a file, on stderr."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError as e:
        log(f"cannot read {path}: {e.strerror}")
        return
    sys.stderr.write("".join(line + "\n" for line in lines[-n:]))
    sys.stderr.flush()


def run(argv, *, check: bool = True, what: str | None = None, **kw) -> subprocess.CompletedProcess:
    """A command; with check, a failure ends scripts/cluster."""
    argv = [str(a) for a in argv]
    try:
        p = subprocess.run(argv, **kw)
    except OSError as e:
        die(f"cannot run {argv[0]}: {e.strerror}")
    if check and p.returncode != 0:
        die(f"{what or Path(argv[0]).name} failed (exit status {p.returncode})")
    return p


def env_lines(path: Path | str) -> list[str]:
    """The KEY=VALUE lines of a file, comments and blanks dropped."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        log(f"cannot read {path}: {e.strerror}")
        return []
    return [line for line in text.split("\n") if ENV_LINE.match(line)]


def clean_env(lines: list[str]) -> dict[str, str]:
    """A clean environment: PATH and HOME, then the lines (a later one wins)."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": setting("HOME", "/")}
    for line in lines:
        key, _, value = line.partition("=")
        env[key] = value
    return env


def port_busy(port: str) -> str | None:
    """A description of what listens on the port, None when it is free."""
    if shutil.which("ss"):
        p = run(["ss", "-Hltnp", f"sport = :{port}"], check=False, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True)
        return p.stdout.splitlines()[0] if p.stdout.strip() else None
    try:
        with socket.create_connection(("127.0.0.1", int(port)), timeout=1):
            return f"something on 127.0.0.1:{port}"
    except OSError:
        return None


def http_get(url: str, timeout: float = 2.0) -> tuple[int | None, bytes]:
    """(status, body) of a GET, (None, b"") when there is no answer."""
    import http.client  # here: most commands never need it

    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=timeout)
    try:
        conn.request("GET", u.path or "/")
        r = conn.getresponse()
        return r.status, r.read()
    except (OSError, http.client.HTTPException):
        return None, b""
    finally:
        conn.close()


def comm_of(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().rstrip("\n")
    except OSError:
        return None


def to_signal(name: str) -> signal.Signals:
    """KILL, SIGKILL, kill or 9."""
    try:
        if name.isdigit():
            return signal.Signals(int(name))
        name = name.upper()
        return signal.Signals[name if name.startswith("SIG") else "SIG" + name]
    except (KeyError, ValueError):
        die(f"unknown signal '{name}'")


def send(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class Ctl:
    """The state directory, the layout kept in its state file, and the processes."""

    def __init__(self) -> None:
        d = Path(setting("CLUSTER_DIR", str(ROOT / ".local" / "cluster")))
        self.dir = d if d.is_absolute() else ROOT / d
        self.envd = self.dir / "env"
        self.rund = self.dir / "run"
        self.logd = self.dir / "log"
        self.ngxd = self.dir / "nginx"
        self.pgd = self.dir / "pg"
        self.state_file = self.dir / "cluster.state"
        self.start_timeout = number("CLUSTER_START_TIMEOUT", "60")
        self.stop_timeout = number("CLUSTER_STOP_TIMEOUT", "45")
        for key in STATE_VARS:
            setattr(self, key.lower(), "")
        for key in STATE_LISTS:
            setattr(self, key.lower(), [])
        self.own_services = "0"
        self.children: list[subprocess.Popen] = []

    # --- state

    def load_state(self) -> bool:
        try:
            text = self.state_file.read_text()
        except FileNotFoundError:
            return False
        try:
            for line in text.splitlines():
                key, eq, value = line.partition("=")
                if key in STATE_LISTS and value.startswith("(") and value.endswith(")"):
                    setattr(self, key.lower(), shlex.split(value[1:-1]))
                elif key in STATE_VARS:
                    setattr(self, key.lower(), "".join(shlex.split(value)))
        except ValueError as e:
            die(f"cannot read {self.state_file}: {e}")
        self.own_services = self.own_services or "0"
        if len(self.metrics_ports) != len(self.names):  # a state from before the metrics ports
            self.metrics_ports = self.plan_metrics_ports()
        return True

    def require_state(self) -> None:
        if not self.load_state():
            die(f"no cluster state in {self.dir}: run scripts/cluster up")

    def save_state(self) -> None:
        lines = [f"{key}={shlex.quote(getattr(self, key.lower()))}" for key in STATE_VARS]
        lines += [f"{key}=({' '.join(getattr(self, key.lower()))})" for key in STATE_LISTS]
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in lines))
        os.replace(tmp, self.state_file)

    def plan_layout(self) -> bool:
        """The layout (names, ports, URLs): kept from the running cluster (True), else from
        the settings (False)."""
        if self.load_state() and any(self.pid_of(name) is not None for name in self.names):
            log(f"cluster already (partly) running: keeping its layout, database and binary ({' '.join(self.names)}; "
                f"nginx on {self.host}:{self.port})")
            return True
        self.host = setting("CLUSTER_HOST", "127.0.0.1")
        self.port = setting("CLUSTER_PORT", "3100")
        self.url = f"http://{self.host}:{self.port}"
        api_ports = setting("CLUSTER_API_PORTS", "3101 3102").split()
        if not api_ports:
            die("CLUSTER_API_PORTS names no port")
        self.names = ["nginx", *(f"api{n}" for n in range(1, len(api_ports) + 1)), "worker"]
        self.kinds = ["nginx", *(["api"] * len(api_ports)), "worker"]
        self.ports = [self.port, *api_ports, "-"]
        self.own_services = "1" if setting("CLUSTER_OWN_SERVICES", "0") == "1" else "0"
        self.own_pg_port = setting("CLUSTER_PG_PORT", "55432")
        self.own_redis_port = setting("CLUSTER_REDIS_PORT", "56379")
        self.own_redis_aof = setting("CLUSTER_REDIS_APPENDONLY", "yes")
        if self.own_redis_aof not in ("yes", "no"):
            die("CLUSTER_REDIS_APPENDONLY is yes or no")
        for p in self.ports:
            if p != "-" and not re.fullmatch(r"[0-9]+", p):
                die(f"not a port: {p}")
        self.metrics_ports = self.plan_metrics_ports()
        seen: dict[str, str] = {}
        for name, port, mport in zip(self.names, self.ports, self.metrics_ports):
            for what, p in (("port", port), ("metrics port", mport)):
                if p == "-":
                    continue
                if int(p) > 65535:
                    die(f"{what} {p} of {name} is not a port (over 65535)")
                if p in seen:
                    die(f"port {p} is given twice ({seen[p]}, {what} of {name})")
                seen[p] = f"{what} of {name}"
        return False

    def plan_metrics_ports(self) -> list[str]:
        """Each API instance: its port + CLUSTER_METRICS_OFFSET; the worker: the nginx
        port + CLUSTER_METRICS_OFFSET + 99; nginx has none ("-")."""
        raw = setting("CLUSTER_METRICS_OFFSET", "1000")
        if not (raw.isascii() and raw.isdigit()):
            die(f"CLUSTER_METRICS_OFFSET is a number, not '{raw}'")
        out = []
        for kind, port in zip(self.kinds, self.ports):
            base = port if kind == "api" else self.port if kind == "worker" else "-"
            if not (base.isascii() and base.isdigit()):  # nginx, or a state written with a bad port
                out.append("-")
            else:
                out.append(str(int(base) + int(raw) + (99 if kind == "worker" else 0)))
        return out

    def index_of(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            die(f"unknown process '{name}' (one of: {' '.join(self.names)})")

    def kind_of(self, name: str) -> str:
        return self.kinds[self.index_of(name)]

    def port_of(self, name: str) -> str:
        return self.ports[self.index_of(name)]

    def metrics_port_of(self, name: str) -> str:
        return self.metrics_ports[self.index_of(name)]

    # --- processes

    def pid_of(self, name: str) -> int | None:
        """The pid when the process is alive (not a zombie, and still ours by its name)."""
        try:
            pid = int((self.rund / f"{name}.pid").read_text().strip())
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError):
            return None
        if stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]:
            return None
        if comm_of(pid) not in ("nginx", os.path.basename(self.bin)[:15]):
            return None
        return pid

    def nginx_argv(self, *extra: str) -> list[str]:
        return [self.nginx, *extra, "-p", f"{self.ngxd}/", "-c", f"{self.ngxd}/nginx.conf",
                "-e", f"{self.logd}/nginx.error.log"]

    def launch(self, name: str) -> None:
        """Starts one process in its own session, stdout and stderr appended to its log."""
        kind, port, mport = self.kind_of(name), self.port_of(name), self.metrics_port_of(name)
        for what, p in (("port", port), ("metrics port", mport)):
            if p != "-" and (holder := port_busy(p)):
                die(f"{what} {p} for {name} is in use: {holder}")
        logf = self.logd / f"{name}.log"
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        with open(logf, "a") as f:
            f.write(f"\n===== {stamp} starting {name}\n")
        (self.rund / f"{name}.logoffset").write_text(f"{logf.stat().st_size}\n")
        if kind == "nginx":
            argv, env = self.nginx_argv(), None
        else:
            # A clean environment: only what the env file says (plus PATH/HOME), no .env file.
            argv = [self.bin, "worker" if kind == "worker" else "serve"]
            env = clean_env(env_lines(self.envd / f"{name}.env"))
        with open(logf, "ab") as out:
            try:
                child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=ROOT, env=env, start_new_session=True)
            except OSError as e:
                die(f"cannot start {name} ({argv[0]}): {e.strerror}")
        self.children.append(child)
        (self.rund / f"{name}.pid").write_text(f"{child.pid}\n")
        log(f"{name} started (pid {child.pid})" if port == "-" else f"{name} started (pid {child.pid}, port {port})")

    def ready(self, name: str) -> bool:
        kind, port = self.kind_of(name), self.port_of(name)
        if kind == "api":
            status, _ = http_get(f"http://127.0.0.1:{port}/health/ready")
        elif kind == "nginx":
            status, _ = http_get(f"{self.url}/health/ready")
        else:
            try:
                off = int((self.rund / f"{name}.logoffset").read_text().strip())
            except (OSError, ValueError):
                off = 0
            try:
                with open(self.logd / f"{name}.log", "rb") as f:
                    f.seek(off)
                    return b"worker running" in f.read()
            except OSError:
                return False
        return status is not None and status < 400

    def wait_ready(self, names: list[str]) -> None:
        """Waits for each; fails with the log tail of one that died."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            pending = []
            for name in names:
                if self.pid_of(name) is None:
                    log(f"{name} exited during start-up; last lines of {self.logd}/{name}.log:")
                    tail(self.logd / f"{name}.log", 25)
                    die(f"{name} did not start (scripts/cluster down stops the rest)")
                if not self.ready(name):
                    pending.append(name)
            if not pending:
                return
            if time.monotonic() >= deadline:
                for name in pending:
                    tail(self.logd / f"{name}.log", 15)
                die(f"not ready after {self.start_timeout:g}s: {' '.join(pending)}")
            time.sleep(0.2)

    def nginx_leftovers(self) -> list[int]:
        """nginx workers outlive a SIGKILLed master and keep the port: found by the port."""
        if not self.port or not shutil.which("ss"):
            return []
        p = run(["ss", "-Hltnp", f"sport = :{self.port}"], check=False, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True)
        pids = sorted({int(x) for x in re.findall(r"pid=([0-9]+)", p.stdout)})
        return [pid for pid in pids if comm_of(pid) == "nginx"]

    def stop_procs(self, names: list[str]) -> None:
        """Stops the processes together: SIGTERM (nginx: SIGQUIT, its graceful shutdown),
        up to CLUSTER_STOP_TIMEOUT seconds, then SIGKILL."""
        deadline = time.monotonic() + self.stop_timeout
        todo, pids = [], []
        for name in names:
            if (pid := self.pid_of(name)) is not None:
                send(pid, signal.SIGQUIT if self.kind_of(name) == "nginx" else signal.SIGTERM)
                todo.append(name)
                pids.append(pid)
        while todo:
            todo = [name for name in todo if self.pid_of(name) is not None]
            if not todo:
                break
            if time.monotonic() >= deadline:
                for name in todo:
                    if (pid := self.pid_of(name)) is not None:
                        log(f"{name} (pid {pid}) still running after {self.stop_timeout:g}s: SIGKILL")
                        send(pid, signal.SIGKILL)
                time.sleep(0.5)
                break
            time.sleep(0.2)
        # Exited processes are not ours to reap (their parent is init, which may take a
        # moment): wait briefly until they are gone, so `pgrep` right after a stop finds nothing.
        reap = time.monotonic() + 3
        for pid in pids:
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < reap:
                time.sleep(0.1)
        for name in names:
            if self.kind_of(name) == "nginx":
                for pid in self.nginx_leftovers():
                    log(f"killing leftover nginx process {pid} on port {self.port}")
                    send(pid, signal.SIGKILL)
            if (self.rund / f"{name}.pid").is_file() and self.pid_of(name) is None:
                for f in (f"{name}.pid", f"{name}.logoffset"):
                    (self.rund / f).unlink(missing_ok=True)
                log(f"{name} stopped")
