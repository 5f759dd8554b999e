"""scripts/cluster, part two: what `up` prepares (nginx, its configuration, the
environment files, the database) and the own services of CLUSTER_OWN_SERVICES=1.

The own services: a PostgreSQL cluster and a redis-server of the cluster's own, under the
state directory, so fault tests can stop them without touching the developer's services.
PostgreSQL refuses to run as root: as root its files belong to user postgres and every
pg_ctl runs through runuser. Standard library only."""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .cluster_state import ROOT, Ctl, die, env_lines, is_root, log, port_busy, run, send, setting, tail

OWN_PG_USER = "storefront"
OWN_PG_PASSWORD = "storefront"
QUIET = {"stdout": subprocess.DEVNULL}

# --- own PostgreSQL ---------------------------------------------------------------------


def own_pg_bin() -> Path:
    d = Path("/usr/lib/postgresql/15/bin")
    if not os.access(d / "pg_ctl", os.X_OK):
        for v in sorted(Path("/usr/lib/postgresql").glob("*/bin")):
            if os.access(v / "pg_ctl", os.X_OK):
                d = v
    if not os.access(d / "pg_ctl", os.X_OK):
        die("no PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql-15)")
    return d


def as_pg(*argv) -> list[str]:
    """A command as the owner of the own cluster."""
    return ["runuser", "-u", "postgres", "--", *map(str, argv)] if is_root() else [str(a) for a in argv]


def own_pg_answers(c: Ctl) -> bool:
    p = run([own_pg_bin() / "pg_isready", "-q", "-h", "127.0.0.1", "-p", c.own_pg_port], check=False,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return p.returncode == 0


def own_pg_init(c: Ctl) -> None:
    data = c.pgd / "data"
    if (data / "PG_VERSION").is_file() and (data / "PG_VERSION").stat().st_size > 0:
        return
    bin_dir = own_pg_bin()
    (c.pgd / "run").mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    if is_root():
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            die("user postgres is missing (it comes with the postgresql package)")
        run(["chown", "-R", "postgres:", c.pgd])
    os.chmod(c.pgd, 0o700)
    os.chmod(data, 0o700)
    log(f"initialising an own PostgreSQL cluster in {data}")
    # Socket: trust for the cluster's owner (administration); TCP: passwords.
    with open(c.pgd / "initdb.log", "w") as out:
        p = run(as_pg(bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth-local=trust",
                      "--auth-host=scram-sha-256", "-E", "UTF8"), check=False, stdout=out, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        tail(c.pgd / "initdb.log", 20)
        die("initdb failed")


def own_pg_start(c: Ctl) -> None:
    own_pg_init(c)
    if own_pg_answers(c):
        log(f"own PostgreSQL already answers on 127.0.0.1:{c.own_pg_port}")
    else:
        if holder := port_busy(c.own_pg_port):
            die(f"port {c.own_pg_port} for PostgreSQL is in use: {holder}")
        run(as_pg("mkdir", "-p", c.pgd / "run"))
        opts = f"-p {c.own_pg_port} -k {c.pgd}/run -c listen_addresses=127.0.0.1 -c max_connections=200"
        p = run(as_pg(own_pg_bin() / "pg_ctl", "-D", c.pgd / "data", "-l", c.pgd / "postgres.log", "-w", "-t", "60",
                      "-o", opts, "start"), check=False, **QUIET)
        if p.returncode != 0:
            tail(c.pgd / "postgres.log", 20)
            die("own PostgreSQL did not start")
        log(f"own PostgreSQL started on 127.0.0.1:{c.own_pg_port} (log {c.pgd}/postgres.log)")
    sql = (
        "do $$ begin\n"
        f"  if not exists (select from pg_roles where rolname = '{OWN_PG_USER}') then\n"
        f"    create role {OWN_PG_USER} login createdb password '{OWN_PG_PASSWORD}';\n"
        "  end if;\n"
        "end $$;\n"
    )
    run(as_pg("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", c.pgd / "run", "-p", c.own_pg_port, "-U", "postgres",
              "-d", "postgres"), input=sql, text=True, what="psql (the own PostgreSQL's role)", **QUIET)


def own_pg_stop(c: Ctl, mode: str = "fast") -> None:
    if mode not in ("fast", "immediate", "smart"):
        die("pg-stop MODE is fast, immediate or smart")
    pidfile = c.pgd / "data" / "postmaster.pid"
    if not (pidfile.is_file() and pidfile.stat().st_size > 0):
        log("own PostgreSQL is not running")
        return
    p = run(as_pg(own_pg_bin() / "pg_ctl", "-D", c.pgd / "data", "-m", mode, "-w", "-t", "60", "stop"),
            check=False, **QUIET)
    if p.returncode == 0:
        log(f"own PostgreSQL stopped ({mode})")
    elif own_pg_answers(c):
        die(f"own PostgreSQL did not stop (see {c.pgd}/postgres.log)")
    else:
        log("own PostgreSQL was not running (stale postmaster.pid)")


def own_pg_pid(c: Ctl) -> str | None:
    try:
        return (c.pgd / "data" / "postmaster.pid").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None


# --- own Redis --------------------------------------------------------------------------


def own_redis_cli(c: Ctl, *args: str, **kw) -> subprocess.CompletedProcess:
    return run(["redis-cli", "-h", "127.0.0.1", "-p", c.own_redis_port, *args], check=False, **kw)


def own_redis_answers(c: Ctl) -> bool:
    p = own_redis_cli(c, "ping", stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return p.stdout.rstrip("\n") == "PONG"


def own_redis_pid(c: Ctl) -> str | None:
    try:
        return (c.dir / "redis" / "redis.pid").read_text().strip() or None
    except OSError:
        return None


def own_redis_start(c: Ctl) -> None:
    if own_redis_answers(c):
        log(f"own Redis already answers on 127.0.0.1:{c.own_redis_port}")
        return
    if not shutil.which("redis-server"):
        die("redis-server is missing (scripts/services up installs it)")
    if holder := port_busy(c.own_redis_port):
        die(f"port {c.own_redis_port} for Redis is in use: {holder}")
    rd = c.dir / "redis"
    rd.mkdir(parents=True, exist_ok=True)
    persist = ["--appendonly", "yes", "--appendfsync", "everysec"] if c.own_redis_aof == "yes" else ["--appendonly", "no"]
    run(["redis-server", "--port", c.own_redis_port, "--bind", "127.0.0.1", "--daemonize", "yes", "--dir", rd,
         "--pidfile", rd / "redis.pid", "--logfile", rd / "redis.log", "--save", "", *persist], **QUIET)
    for _ in range(100):
        if own_redis_answers(c):
            log(f"own Redis started on 127.0.0.1:{c.own_redis_port} (appendonly {c.own_redis_aof})")
            return
        time.sleep(0.1)
    tail(rd / "redis.log", 20)
    die(f"own Redis did not start on port {c.own_redis_port}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def own_redis_stop(c: Ctl) -> None:
    pid = own_redis_pid(c)
    if own_redis_answers(c):
        # SHUTDOWN flushes the append-only file; it does not answer when it succeeds.
        own_redis_cli(c, "shutdown", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if pid and pid.isdigit():
        deadline = time.monotonic() + 20
        while alive(int(pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(int(pid)):
            log(f"Redis (pid {pid}) ignored SHUTDOWN: SIGKILL")
            send(int(pid), signal.SIGKILL)
    (c.dir / "redis" / "redis.pid").unlink(missing_ok=True)
    log("own Redis stopped")


def require_own(c: Ctl) -> None:
    c.require_state()
    if c.own_services != "1":
        die("this cluster uses scripts/services (started without CLUSTER_OWN_SERVICES=1)")


# --- preparation (up) -------------------------------------------------------------------


def ensure_nginx(c: Ctl) -> None:
    c.nginx = setting("CLUSTER_NGINX") or shutil.which("nginx") or ""
    if not c.nginx and os.access("/usr/sbin/nginx", os.X_OK):
        c.nginx = "/usr/sbin/nginx"
    if c.nginx:
        return
    sudo = []
    if not is_root():
        if not (shutil.which("sudo") and run(["sudo", "-n", "true"], check=False, stderr=subprocess.DEVNULL).returncode == 0):
            die("nginx is missing; install it (apt-get install nginx) or run as root")
        sudo = ["sudo"]
    log("installing nginx with apt (the system service is neither started nor enabled)")
    # Keep apt from starting the distribution's nginx (it would take port 80): a
    # policy-rc.d that refuses every start, unless the machine already has one.
    policy, ours = "/usr/sbin/policy-rc.d", False
    if not os.path.lexists(policy):
        run([*sudo, "tee", policy], input="#!/bin/sh\nexit 101\n", text=True, **QUIET)
        run([*sudo, "chmod", "755", policy])
        ours = True
    apt = [*sudo, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]
    rc = run([*apt, "update", "-qq"], check=False).returncode
    if rc == 0:
        for pkg in ("nginx", "nginx-light"):
            rc = run([*apt, "install", "-y", "-qq", "--no-install-recommends", pkg], check=False, **QUIET).returncode
            if rc == 0:
                break
    if ours:
        run([*sudo, "rm", "-f", policy], check=False)
    if rc != 0:
        die("apt-get could not install nginx")
    if os.path.isdir("/run/systemd/system") and shutil.which("systemctl"):
        run([*sudo, "systemctl", "disable", "--now", "nginx"], check=False, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
    c.nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(c.nginx, os.X_OK):
        die("nginx was installed but no nginx binary was found")


def write_private(path: Path, text: str) -> None:
    """Writes a file that only its owner may read (mode 0600 when it is created)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def ensure_secret(c: Ctl) -> str:
    f = c.dir / "jwt-secret"
    if not (f.is_file() and f.stat().st_size > 0):
        secret = base64.b64encode(os.urandom(48)).decode().translate(str.maketrans("", "", "\n+/="))
        write_private(f, secret)
        log(f"generated JWT_SECRET in {f} (0600)")
    os.chmod(f, 0o600)
    return f.read_text().rstrip("\n")


def write_env_files(c: Ctl) -> None:
    lines = [
        "# Written by scripts/cluster up; every process gets these (and nothing else but PATH/HOME).",
        "NO_DOTENV=1",
        f"APP_ENV={setting('CLUSTER_APP_ENV', 'development')}",
        "HOST=127.0.0.1",
        f"DATABASE_URL={c.database_url}",
        f"REDIS_URL={c.redis_url}",
        f"REDIS_PREFIX={c.redis_prefix}",
        f"JWT_SECRET={ensure_secret(c)}",
        "EMAIL_TRANSPORT=file",
        f"MAIL_DIR={c.dir}/mail",
        f"PUBLIC_URL={c.url}",
        "RUN_MIGRATIONS=false",
        "TRUSTED_PROXIES=127.0.0.1",
        # A few test accounts place hundreds of orders: every confirmation must go out.
        "MAIL_MAX_PER_RECIPIENT_PER_HOUR=0",
    ]
    if setting("CLUSTER_ENV_FILE"):
        lines += env_lines(setting("CLUSTER_ENV_FILE"))
    write_private(c.envd / "common.env", "".join(line + "\n" for line in lines))
    common = lines
    background = "true" if setting("CLUSTER_API_BACKGROUND", "0") == "1" else "false"
    for name, kind, port, mport in zip(c.names, c.kinds, c.ports, c.metrics_ports):
        # Each process has its own metrics listener (/metrics, /health) on the loopback.
        metrics = ["METRICS_HOST=127.0.0.1", f"METRICS_PORT={mport}"]
        if kind == "api":
            lines = [
                *common,
                f"# {name}: HTTP only; the worker runs the background roles.",
                f"PORT={port}",
                *metrics,
                "SCHEDULER_ENABLED=false",
                f"RELAY_ENABLED={background}",
                f"JOBS_ENABLED={background}",
            ]
            extra = setting("CLUSTER_API_ENV_FILE")
        elif kind == "worker":
            lines = [
                *common,
                f"# {name}: the one process that runs the scheduled tasks, the relay and the job workers.",
                *metrics,
                "SCHEDULER_ENABLED=true",
                "RELAY_ENABLED=true",
                "JOBS_ENABLED=true",
            ]
            extra = setting("CLUSTER_WORKER_ENV_FILE")
        else:
            continue
        if extra:
            lines += env_lines(extra)
        write_private(c.envd / f"{name}.env", "".join(line + "\n" for line in lines))


def write_servers_conf(c: Ctl, drained: list[str] = ()) -> None:
    """storefront/servers.conf: one line per API instance, with the passive-check
    parameters of the shipped one; the names given are marked `down` (drained)."""
    params = ""
    for line in (ROOT / "deploy/nginx/storefront/servers.conf").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == "server":
            params = " ".join(fields[2:]).removesuffix(";")
            break
    out = ["# Generated by scripts/cluster from deploy/nginx/storefront/servers.conf."]
    for name, kind, port in zip(c.names, c.kinds, c.ports):
        if kind == "api":
            down = " down" if name in drained else ""
            out.append(f"server 127.0.0.1:{port} {params}{down}; # {name}")
    (c.ngxd / "storefront" / "servers.conf").write_text("".join(line + "\n" for line in out))


def nginx_test(c: Ctl) -> bool:
    return run(c.nginx_argv("-t", "-q"), check=False).returncode == 0


def reload_nginx(c: Ctl) -> None:
    pid = c.pid_of("nginx")
    if pid is None:
        return
    if not nginx_test(c):
        die(f"nginx -t failed for {c.ngxd}/nginx.conf")
    send(pid, signal.SIGHUP)
    # New workers take over at once; old ones finish their requests, then close their
    # idle upstream connections and exit.
    time.sleep(1)


def nginx_user() -> str:
    try:
        pwd.getpwnam("www-data")
        return "www-data"
    except KeyError:
        return "nobody"


def write_nginx_conf(c: Ctl) -> None:
    """nginx.conf for this cluster: the production pieces from deploy/nginx/storefront/
    (http.conf, proxy.conf) as they are, servers.conf for the local ports, and a listen
    on CLUSTER_PORT."""
    src = ROOT / "deploy/nginx/storefront"
    (c.ngxd / "storefront").mkdir(parents=True, exist_ok=True)
    (c.ngxd / "tmp").mkdir(parents=True, exist_ok=True)
    for f in ("http.conf", "proxy.conf"):
        shutil.copy(src / f, c.ngxd / "storefront" / f)
    write_servers_conf(c)
    # As root, the workers run unprivileged (as in production) when that user can reach the
    # temporary files (request bodies over 128k, large responses); else as root.
    user = ""
    if is_root():
        u = nginx_user()
        probe = ["runuser", "-u", u, "--", "test", "-x", c.ngxd / "tmp"]
        if run(probe, check=False, stderr=subprocess.DEVNULL).returncode == 0:
            user = f"user {u};"
        else:
            log(f"nginx workers run as root: {u} cannot reach {c.ngxd}/tmp")
            user = "user root;"
    (c.ngxd / "nginx.conf").write_text(f"""\
# Generated by scripts/cluster up. The proxy configuration is deploy/nginx/storefront/
# (copied to storefront/ here); only this file and storefront/servers.conf are local.
{user}
worker_processes 2;
daemon off;
pid {c.ngxd}/nginx.pid;
error_log {c.logd}/nginx.error.log notice;

events {{
    worker_connections 1024;
}}

http {{
    # Temporary files under the prefix (-p {c.ngxd}/), not /var/lib/nginx.
    client_body_temp_path tmp/client_body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;

    include storefront/http.conf;

    server {{
        listen {c.host}:{c.port};
        server_name _;
        access_log {c.logd}/nginx.access.log storefront;
        include storefront/proxy.conf;
    }}
}}
""")
    if not nginx_test(c):
        die(f"the generated nginx configuration does not pass nginx -t ({c.ngxd}/nginx.conf)")


def conf_digest(c: Ctl) -> str:
    h = hashlib.md5()
    for f in [c.ngxd / "nginx.conf", *sorted((c.ngxd / "storefront").glob("*.conf"))]:
        try:
            h.update(f.read_bytes())
        except OSError:
            pass
    return h.hexdigest()


def create_database(c: Ctl, db: str) -> None:
    base = c.database_url.rsplit("/", 1)[0]
    sql = (
        f"select format('create database %I', '{db}') where not exists "
        f"(select from pg_database where datname = '{db}')\n\\gexec\n"
    )
    run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", f"{base}/postgres"], input=sql, text=True,
        what=f"psql (creating the database {db})", **QUIET)
