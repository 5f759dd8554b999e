"""scripts/cluster: a Storefront cluster on one machine (nginx in front of N `storefront
serve` instances and one `storefront worker`). The commands; the usage text is in
scripts/cluster, the pieces in cluster_state.py and cluster_setup.py. Standard library
only.

Also usable from Python: `main(["status"])` returns the exit status (a failure raises
SystemExit)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import cluster_setup as setup
from .cluster_state import ROOT, Ctl, clean_env, die, env_lines, http_get, is_root, log, port_busy, run, send, setting
from .cluster_state import tail, to_signal

USAGE = (
    "usage: scripts/cluster up|down|status|restart [NAME...]|start NAME...|stop NAME...|kill NAME [SIG]|pid NAME|"
    "port NAME|metrics-port NAME|log NAME|env|lint|pg-start|pg-stop [MODE]|pg-restart [MODE]|redis-start|redis-stop|"
    "redis-restart|services-up|services-down"
)


# --- commands ---------------------------------------------------------------------------


def cmd_up(c: Ctl, args: list[str]) -> int:
    for d in (c.dir, c.envd, c.rund, c.logd, c.dir / "mail"):
        d.mkdir(parents=True, exist_ok=True)
    # Others may pass through the state directory (nginx's unprivileged workers reach their
    # temporary files under nginx/), not list it; the secrets are in env/ (0700) and
    # jwt-secret (0600).
    os.chmod(c.dir, 0o711)
    os.chmod(c.envd, 0o700)
    reuse = c.plan_layout()
    if not reuse and not re.fullmatch(r"[a-z_][a-z0-9_]*", setting("CLUSTER_DB", "storefront_cluster")):
        die("CLUSTER_DB must be a plain lower-case name")
    # Every port this run needs must be free before anything starts.
    for name, port, mport in zip(c.names, c.ports, c.metrics_ports):
        if c.pid_of(name) is not None:
            continue
        for what, p in (("port", port), ("metrics port", mport)):
            if p != "-" and (holder := port_busy(p)):
                die(f"{what} {p} for {name} is in use: {holder}")

    setup.ensure_nginx(c)
    if c.own_services == "1":
        setup.own_pg_start(c)
        setup.own_redis_start(c)
    else:
        run([ROOT / "scripts/services", "up"])
    if reuse:
        db = c.database_url.rsplit("/", 1)[-1]
    else:
        db = setting("CLUSTER_DB", "storefront_cluster")
        if c.own_services == "1":
            c.database_url = f"postgres://{setup.OWN_PG_USER}:{setup.OWN_PG_PASSWORD}@127.0.0.1:{c.own_pg_port}/postgres"
            c.redis_url = f"redis://127.0.0.1:{c.own_redis_port}"
        else:
            out = run([ROOT / "scripts/services", "env"], stdout=subprocess.PIPE, text=True).stdout
            found = dict(re.findall(r"^export (DATABASE_URL|REDIS_URL)=(.*)$", out, re.M))
            c.database_url, c.redis_url = found.get("DATABASE_URL", ""), found.get("REDIS_URL", "")
        c.database_url = f"{c.database_url.rsplit('/', 1)[0]}/{db}"
        c.redis_prefix = setting("CLUSTER_REDIS_PREFIX", db)
        if setting("CLUSTER_SKIP_BUILD", "0") != "1" and not setting("CLUSTER_BIN"):
            log("building the release binary")
            run(["cargo", "build", "--release", "--locked", "--bin", "storefront"], cwd=ROOT,
                env={**os.environ, "SQLX_OFFLINE": "true"})
        target = Path(setting("CARGO_TARGET_DIR", "target"))
        target = target if target.is_absolute() else ROOT / target
        c.bin = os.path.abspath(setting("CLUSTER_BIN", str(target / "release" / "storefront")))
    if not (os.path.isfile(c.bin) and os.access(c.bin, os.X_OK)):
        die(f"no storefront binary at {c.bin} (build it, or unset CLUSTER_SKIP_BUILD)")

    c.save_state()
    if setting("CLUSTER_FRESH", "0") == "1":
        if c.own_services != "1":
            die("CLUSTER_FRESH=1 needs CLUSTER_OWN_SERVICES=1 (it drops the database and empties Redis)")
        if reuse:
            die("CLUSTER_FRESH=1 with the cluster running: scripts/cluster down first")
        log(f"fresh start: dropping {db}, emptying the own Redis, {c.dir}/mail and {c.logd}")
        run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", f"{c.database_url.rsplit('/', 1)[0]}/postgres",
             "-c", f"drop database if exists {db} with (force)"], what=f"psql (dropping {db})", stdout=subprocess.DEVNULL)
        setup.own_redis_cli(c, "flushall", stdout=subprocess.DEVNULL)
        for d in (c.dir / "mail", c.logd):
            for entry in d.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
    setup.create_database(c, db)
    setup.write_env_files(c)
    log(f"migrating {db}")
    with open(c.logd / "migrate.log", "ab") as out:
        p = run([c.bin, "migrate"], check=False, cwd=ROOT, env=clean_env(env_lines(c.envd / "common.env")),
                stdout=out, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        tail(c.logd / "migrate.log", 20)
        die("storefront migrate failed")

    before = setup.conf_digest(c)
    setup.write_nginx_conf(c)
    # API instances and the worker first, then nginx in front of them.
    started = []
    for name, kind in zip(c.names, c.kinds):
        if kind == "nginx":
            continue
        if (pid := c.pid_of(name)) is not None:
            log(f"{name} already running (pid {pid}); scripts/cluster restart {name} applies changed settings")
        else:
            c.launch(name)
            started.append(name)
    if started:
        c.wait_ready(started)
    if (pid := c.pid_of("nginx")) is not None:
        if before != setup.conf_digest(c):
            log(f"nginx already running (pid {pid}): configuration changed, reloading")
            send(pid, signal.SIGHUP)
            time.sleep(0.5)
        else:
            log(f"nginx already running (pid {pid})")
    else:
        c.launch("nginx")
    c.wait_ready(["nginx"])
    log(f"ready: {c.url} (logs in {c.logd}, state in {c.dir})")
    print(c.url, flush=True)
    return 0


def cmd_down(c: Ctl, args: list[str]) -> int:
    if not c.load_state():
        log(f"nothing to stop (no state in {c.dir})")
        return 0
    c.stop_procs([n for n, k in zip(c.names, c.kinds) if k == "nginx"])  # no new requests first
    # then the instances drain and the worker finishes its jobs
    c.stop_procs([n for n, k in zip(c.names, c.kinds) if k != "nginx"])
    if c.own_services == "1":
        setup.own_redis_stop(c)
        setup.own_pg_stop(c, "fast")
    log("cluster stopped")
    return 0


def cmd_status(c: Ctl, args: list[str]) -> int:
    c.require_state()
    status = 0

    def row(name: str, pid: str, state: str, addr: str, health: str) -> None:
        print(f"{name:<8} {pid:<8} {state:<7} {addr:<20} {health}")

    row("NAME", "PID", "STATE", "ADDRESS", "HEALTH")
    for name, kind, port in zip(c.names, c.kinds, c.ports):
        if (p := c.pid_of(name)) is not None:
            pid, state = str(p), "alive"
        else:
            status = 1
            pidfile = c.rund / f"{name}.pid"
            pid = pidfile.read_text().strip() if pidfile.is_file() else "-"
            state = "dead" if pidfile.is_file() else "stopped"
        addr = {"nginx": f"{c.host}:{port}", "api": f"127.0.0.1:{port}"}.get(kind, "-")
        health = "-"
        if kind == "worker":
            if state == "alive":
                try:
                    n = (c.logd / f"{name}.log").read_bytes().count(b"worker running")
                except OSError:
                    n = 0
                health = f"no HTTP; {n} start(s) logged"
        elif state == "alive":
            code, body = http_get(f"http://{addr}/health/ready")
            health = f"{code or '000'} {body[:120].decode(errors='replace')}"
            if code != 200:
                status = 1
        row(name, pid, state, addr, health)
    if c.own_services == "1":
        state = "alive" if setup.own_pg_answers(c) else "down"
        status = status if state == "alive" else 1
        row("postgres", setup.own_pg_pid(c) or "-", state, f"127.0.0.1:{c.own_pg_port}", f"own cluster in {c.pgd}/data")
        state = "alive" if setup.own_redis_answers(c) else "down"
        status = status if state == "alive" else 1
        row("redis", setup.own_redis_pid(c) or "-", state, f"127.0.0.1:{c.own_redis_port}", f"appendonly {c.own_redis_aof}")
    print(f"url: {c.url}   logs: {c.logd}")
    return status


def cmd_restart(c: Ctl, args: list[str]) -> int:
    c.require_state()
    names = args or list(c.names)
    for name in names:
        c.index_of(name)
    # By default an API instance is stopped under traffic: it refuses new connections, nginx
    # moves those requests to the others, in-flight requests finish (SHUTDOWN_TIMEOUT). One
    # race is left: a request nginx sends down an idle keep-alive connection as the instance
    # closes it fails (retried if idempotent, a 503 for a POST). CLUSTER_DRAIN=1 drains it
    # first instead (marked `down` in nginx, reloaded, restarted, put back, reloaded): no
    # request reaches a stopping instance, but each reload closes nginx's idle client
    # keep-alive connections, which clients that do not retry on a closed connection see.
    drain = [name for name in names if c.kind_of(name) == "api"]
    if setting("CLUSTER_DRAIN", "0") != "1" or len(drain) >= c.kinds.count("api") or c.pid_of("nginx") is None:
        drain = []
    if drain:
        log(f"draining {' '.join(drain)} in nginx")
        setup.write_servers_conf(c, drain)
        setup.reload_nginx(c)
    c.stop_procs(names)
    cmd_start(c, names)
    if drain:
        setup.write_servers_conf(c)
        setup.reload_nginx(c)
        log(f"{' '.join(drain)} back in nginx")
    return 0


def cmd_start(c: Ctl, args: list[str]) -> int:
    c.require_state()
    if not args:
        die("usage: scripts/cluster start NAME...")
    for name in args:
        c.index_of(name)
        if (pid := c.pid_of(name)) is not None:
            log(f"{name} already running (pid {pid})")
            continue
        envf = c.envd / f"{name}.env"
        if c.kind_of(name) != "nginx" and not (envf.is_file() and envf.stat().st_size > 0):
            die(f"no environment for {name}: run scripts/cluster up")
        c.launch(name)
    c.wait_ready(args)
    log(f"ready: {' '.join(args)}")
    return 0


def cmd_stop(c: Ctl, args: list[str]) -> int:
    c.require_state()
    if not args:
        die("usage: scripts/cluster stop NAME...")
    for name in args:
        c.index_of(name)
    c.stop_procs(args)
    return 0


def cmd_kill(c: Ctl, args: list[str]) -> int:
    c.require_state()
    if not args:
        die("usage: scripts/cluster kill NAME [SIGNAL]")
    name = args[0]
    sig = to_signal(args[1] if len(args) > 1 and args[1] else "KILL")
    c.index_of(name)
    if (pid := c.pid_of(name)) is None:
        die(f"{name} is not running")
    os.kill(pid, sig)
    log(f"sent {sig.name} to {name} (pid {pid})")
    return 0


def one_name(c: Ctl, args: list[str], cmd: str) -> str:
    c.require_state()
    if len(args) != 1:
        die(f"usage: scripts/cluster {cmd} NAME")
    c.index_of(args[0])
    return args[0]


def cmd_pid(c: Ctl, args: list[str]) -> int:
    name = one_name(c, args, "pid")
    if (pid := c.pid_of(name)) is None:
        log(f"{name} is not running")
        return 1
    print(pid)
    return 0


def cmd_port(c: Ctl, args: list[str]) -> int:
    name = one_name(c, args, "port")
    if c.port_of(name) == "-":
        die(f"{name} has no port")
    print(c.port_of(name))
    return 0


def cmd_metrics_port(c: Ctl, args: list[str]) -> int:
    name = one_name(c, args, "metrics-port")
    if c.metrics_port_of(name) == "-":
        die(f"{name} has no metrics port")
    print(c.metrics_port_of(name))
    return 0


def cmd_log(c: Ctl, args: list[str]) -> int:
    print(f"{c.logd}/{one_name(c, args, 'log')}.log")
    return 0


def cmd_env(c: Ctl, args: list[str]) -> int:
    c.require_state()
    for key, value in (("CLUSTER_URL", c.url), ("DATABASE_URL", c.database_url), ("REDIS_URL", c.redis_url),
                       ("REDIS_PREFIX", c.redis_prefix), ("MAIL_DIR", f"{c.dir}/mail"), ("CLUSTER_DIR", str(c.dir)),
                       ("CLUSTER_OWN_SERVICES", c.own_services)):
        print(f"export {key}={shlex.quote(value)}")
    return 0


def cmd_lint(c: Ctl, args: list[str]) -> int:
    """nginx -t of deploy/nginx as it would be installed under /etc/nginx, with the
    certificate and log paths pointed at a temporary directory."""
    setup.ensure_nginx(c)
    if not shutil.which("openssl"):
        die("openssl is needed for the throwaway certificate")
    with tempfile.TemporaryDirectory() as tmp:
        for d in ("conf.d", "logs", "tmp"):
            os.makedirs(f"{tmp}/{d}")
        shutil.copytree(ROOT / "deploy/nginx/storefront", f"{tmp}/storefront")
        conf = Path(tmp) / "conf.d" / "storefront.conf"
        shutil.copy(ROOT / "deploy/nginx/storefront.conf", conf)
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=api.example.com",
             "-keyout", f"{tmp}/privkey.pem", "-out", f"{tmp}/fullchain.pem"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        conf.write_text(conf.read_text().replace("/etc/ssl/storefront/", f"{tmp}/")
                        .replace("/var/log/nginx/", f"{tmp}/logs/"))
        user = f"user {setup.nginx_user()};" if is_root() else ""
        Path(tmp, "nginx.conf").write_text(f"""\
{user}
pid {tmp}/nginx.pid;
error_log {tmp}/logs/error.log;
events {{}}
http {{
    client_body_temp_path tmp/client_body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    include conf.d/*.conf;
}}
""")
        return run([c.nginx, "-t", "-p", f"{tmp}/", "-c", f"{tmp}/nginx.conf", "-e", f"{tmp}/logs/error.log"],
                   check=False).returncode


def own(fn):
    """A command on the own services (CLUSTER_OWN_SERVICES=1)."""

    def cmd(c: Ctl, args: list[str]) -> int:
        setup.require_own(c)
        fn(c, (args[0] if args else "") or "fast")
        return 0

    return cmd


COMMANDS = {
    "up": cmd_up,
    "down": cmd_down,
    "status": cmd_status,
    "restart": cmd_restart,
    "start": cmd_start,
    "stop": cmd_stop,
    "kill": cmd_kill,
    "pid": cmd_pid,
    "port": cmd_port,
    "metrics-port": cmd_metrics_port,
    "log": cmd_log,
    "env": cmd_env,
    "lint": cmd_lint,
    "pg-start": own(lambda c, mode: setup.own_pg_start(c)),
    "pg-stop": own(setup.own_pg_stop),
    "pg-restart": own(lambda c, mode: (setup.own_pg_stop(c, mode), setup.own_pg_start(c))),
    "redis-start": own(lambda c, mode: setup.own_redis_start(c)),
    "redis-stop": own(lambda c, mode: setup.own_redis_stop(c)),
    "redis-restart": own(lambda c, mode: (setup.own_redis_stop(c), setup.own_redis_start(c))),
    "services-up": own(lambda c, mode: (setup.own_pg_start(c), setup.own_redis_start(c))),
    "services-down": own(lambda c, mode: (setup.own_redis_stop(c), setup.own_pg_stop(c, "fast"))),
}


def main(argv: list[str] | None = None, doc: str | None = None) -> int:
    """Runs one command; returns its exit status (a failure raises SystemExit)."""
    argv = sys.argv[1:] if argv is None else argv
    cmd, args = (argv[0], argv[1:]) if argv else ("", [])
    if cmd not in COMMANDS and not (cmd in ("-h", "--help", "help") and doc):
        die(USAGE)
    try:
        if cmd in COMMANDS:
            return COMMANDS[cmd](Ctl(), args)
        print(doc.strip("\n"), flush=True)
        return 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `scripts/cluster help | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
