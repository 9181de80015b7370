#!/usr/bin/env python3
"""oath-service benchmarks: each figure is a ratio against a baseline measured on the same
database in the same run. Started by bench/run, which provides the database, the tools and the
release binary; prints the table and writes it to bench/REPORT.md with the machine's description.

The table's lines are the entries of MEASUREMENTS, in order: each is a function that measures and
returns its lines (a job's lines, a wrk-vs-pgbench pair's line). Add a line by adding a function.

Requests authenticate as in production: RS256 access tokens, signed here with the test key of
tests/fixtures/jwt (`openssl dgst -sha256 -sign`, kid rsa-1) and verified by the service against
that directory's JWKS file (auth.jwks_path). One line, `get_hs256`, uses the development HS256
token of `oath-service dev-token` for comparison.

Environment (set by bench/run; all optional but DATABASE_URL and OATH_BIN):
  DATABASE_URL       server to use; a database `oath_bench_<pid>` of its own is made and dropped
  OATH_BIN           release binary
  BENCH_REPS         runs of each 100k job (default 3; medians)
  BENCH_TOKENS       tokens per job (default 100000)
  BENCH_DURATION     seconds per wrk or pgbench measurement (default 10)
  BENCH_ROUNDS       alternating wrk/pgbench rounds per line (default 3; medians)
  BENCH_CONNECTIONS  wrk connections = pgbench clients (default 16)
  BENCH_THREADS      wrk threads = pgbench threads (default 2)
  BENCH_HTTP_TOKENS  tokens the GET and validate measurements spread over (default 10000)
  BENCH_FAIR_JOBS    environment A's backlog for the fairness line: jobs (default 3)...
  BENCH_FAIR_TOKENS  ...of this many tokens each (default 60000)
  BENCH_FAIR_REPS    environment B's small jobs timed alone, then behind the backlog (at most;
                     default 5)
  BENCH_TOKEN_CACHE  the service's auth.token_cache_size (default: the service's, 10000; 0: off,
                     every request verifies its token's signature)
  BENCH_ONLY         comma-separated measurement names to run (default: all but scale): jobs,
                     events, get, get_hs256, create, validate, fairness, scale
  BENCH_SCALE        1: run scale as well (it runs only when named in BENCH_ONLY or so asked:
                     about 15 minutes more at the defaults)
  BENCH_SCALE_TOKENS scale: tokens in the table once loaded (default 2000000)...
  BENCH_SCALE_ENVS   ...across this many environments, the measured one included (default 200)

The scale measurement runs GET, validate, single create and the create and revoke jobs (the same
functions as their own lines) in the environment of the GET and validate lines, first while the
table holds about its BENCH_HTTP_TOKENS tokens, then again once filler environments are loaded
in SQL up to BENCH_SCALE_TOKENS; each of its lines is the ratio at scale over the ratio before
(goal >= 0.9). In both passes the write baselines (COPY, DELETE, the pgbench INSERT) write into
oath_tokens itself, in an environment of their own. It also reports the bytes per token of oath_tokens on disk, and the p99 of the job
list, the token list by serial, the environment and the activities feed at that size, one
request at a time (wrk -c 1; goal <= 25 ms; 16 connections beside it). See bench/README.md, Scale.
"""

import json
import os
import platform
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from base64 import b64encode, urlsafe_b64decode, urlsafe_b64encode
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ["OATH_BIN"]
REPS = int(os.environ.get("BENCH_REPS", "3"))
TOKENS = int(os.environ.get("BENCH_TOKENS", "100000"))
DURATION = int(os.environ.get("BENCH_DURATION", "10"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "16"))
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
HTTP_TOKENS = int(os.environ.get("BENCH_HTTP_TOKENS", "10000"))
FAIR_JOBS = int(os.environ.get("BENCH_FAIR_JOBS", "3"))
FAIR_TOKENS = int(os.environ.get("BENCH_FAIR_TOKENS", "60000"))
FAIR_REPS = int(os.environ.get("BENCH_FAIR_REPS", "5"))
ONLY = [m for m in os.environ.get("BENCH_ONLY", "").split(",") if m]
TOKEN_CACHE = os.environ.get("BENCH_TOKEN_CACHE")
SCALE = os.environ.get("BENCH_SCALE") == "1"
SCALE_TOKENS = int(os.environ.get("BENCH_SCALE_TOKENS", "2000000"))
SCALE_ENVS = int(os.environ.get("BENCH_SCALE_ENVS", "200"))
SERVER_URL = os.environ["DATABASE_URL"].split("?")[0].rsplit("/", 1)[0]
DB_NAME = f"oath_bench_{os.getpid()}"
DB_URL = f"{SERVER_URL}/{DB_NAME}"
ADMIN_URL = SERVER_URL + "/postgres"
CREATE_TYPE = "application/vnd.pingidentity.job.oathtokens.create+json"
REVOKE_TYPE = "application/vnd.pingidentity.job.oathtokens.revoke+json"
CSV_TYPE = "text/csv"
CSV_HEADER = "serialNumber,secret,type,otpLength,hashAlgorithm,counter,timeStep"
SECRET = "3132333435363738393031323334353637383930"
# The RS256 key pair the service trusts: a JWKS file and the private key of one of its keys.
JWKS_FILE = os.path.join(ROOT, "tests", "fixtures", "jwt", "jwks.json")
RSA_KEY_FILE = os.path.join(ROOT, "tests", "fixtures", "jwt", "rsa-private.txt")
RSA_KID = "rsa-1"
ISSUER = "https://idp.bench.test"
AUDIENCE = "oath-service"
SCOPES = ("oath:tokens:read oath:tokens:write oath:jobs:read oath:jobs:write oath:otp:validate "
          "oath:activities:read oath:subscriptions:read oath:subscriptions:write")


# What `say` puts before its message: the scale measurement's phase ("at 2,000,000 tokens: "),
# while it runs the other lines' functions a second time.
PHASE = [""]


def say(*args):
    print("==>", PHASE[0] + " ".join(str(a) for a in args), file=sys.stderr, flush=True)


def psql(url, sql, *args):
    out = subprocess.run(["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql, *args],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def psql_timed(url, statement):
    """Seconds the server spends on one statement (or \\copy), timed inside one psql session by
    the server's clock_timestamp(): psql's start and connection (30-50 ms) are left out, as the
    service's pool leaves its connection set-up out of a job's time."""
    script = ("select extract(epoch from clock_timestamp()) as bench_t0 \\gset\n"
              f"{statement}\n"
              "select extract(epoch from clock_timestamp()) - :bench_t0;\n")
    out = subprocess.run(["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", url],
                         input=script, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def b64url(data):
    return urlsafe_b64encode(data).rstrip(b"=").decode()


def check_rsa_key():
    """Fails unless RSA_KEY_FILE is the private half of JWKS_FILE's RS256 key RSA_KID."""
    keys = [k for k in json.load(open(JWKS_FILE))["keys"] if k.get("kid") == RSA_KID]
    if len(keys) != 1 or keys[0].get("kty") != "RSA" or keys[0].get("alg", "RS256") != "RS256":
        sys.exit(f"bench: {JWKS_FILE} has no single RS256 key {RSA_KID!r}")
    n = keys[0]["n"]
    modulus = urlsafe_b64decode(n + "=" * (-len(n) % 4)).hex().upper().lstrip("0")
    out = subprocess.run(["openssl", "rsa", "-noout", "-modulus", "-in", RSA_KEY_FILE],
                         check=True, capture_output=True, text=True).stdout.strip()
    if out.split("=", 1)[1].lstrip("0") != modulus:
        sys.exit(f"bench: {RSA_KEY_FILE} is not the private key of {RSA_KID!r} in {JWKS_FILE}")


def rs256_token(env, ttl=7200):
    """An access token as an identity provider issues it: RS256, kid RSA_KID, every scope."""
    now = int(time.time())
    header = {"alg": "RS256", "typ": "JWT", "kid": RSA_KID}
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "bench", "env": env, "scope": SCOPES,
              "iat": now, "exp": now + ttl}
    signing_input = ".".join(b64url(json.dumps(part, separators=(",", ":")).encode())
                             for part in (header, claims))
    signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", RSA_KEY_FILE],
                               input=signing_input.encode(), check=True, capture_output=True).stdout
    return f"{signing_input}.{b64url(signature)}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- CPU time, per party ----------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def proc_stat(pid):
    """The fields of /proc/<pid>/stat after the command name (field 3 onwards), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def postmaster_pid():
    """The PostgreSQL server's main process when it runs on this machine (found as the parent of
    its checkpointer), else None."""
    try:
        pid = int(psql(DB_URL, "select pid from pg_stat_activity where backend_type = 'checkpointer'"))
    except (subprocess.CalledProcessError, ValueError):
        return None
    fields = proc_stat(pid)
    return int(fields[1]) if fields else None


def server_children(postmaster):
    """The /proc/<pid>/stat fields of the server's child processes."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = proc_stat(entry)
            if fields and fields[1] == str(postmaster):
                children.append(fields)
    return children


def database_cpu(postmaster):
    """Seconds of CPU the server has used: its main process, the children it has reaped (the
    backends of connections that ended) and the children still running."""
    if postmaster is None:
        return float("nan")
    main = proc_stat(postmaster)
    ticks = sum(int(x) for x in main[11:15])  # utime, stime, cutime, cstime
    ticks += sum(int(f[11]) + int(f[12]) for f in server_children(postmaster))
    return ticks / TICK


def machine_busy():
    """Busy and total jiffies of all cores so far (/proc/stat)."""
    values = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(values) - values[3] - values[4], sum(values)


@dataclass
class Cpu:
    """Microseconds of CPU per operation: the service's, the database's, the load generator's
    (wrk or pgbench; psql for the job baselines); and how busy the machine's cores were."""
    service: float
    database: float
    generator: float
    busy: float  # 0..1

    @property
    def total(self):
        return self.service + self.database + self.generator


class CpuMeter:
    """Measures what each party spends while a block of work runs:
    `with meter.measure() as m: ...; m.per(operations)`."""

    def __init__(self, svc):
        self.svc = svc
        self.postmaster = postmaster_pid()

    def snapshot(self):
        children = os.times()
        return (self.svc.cpu_seconds(), database_cpu(self.postmaster),
                children.children_user + children.children_system, machine_busy())

    def measure(self):
        return _Measured(self)


class _Measured:
    def __init__(self, meter):
        self.meter = meter

    def __enter__(self):
        postmaster = self.meter.postmaster
        self.backends = len(server_children(postmaster)) if postmaster else 0
        self.before = self.meter.snapshot()
        return self

    def __exit__(self, *exc):
        # The backends of a load generator's connections end after it does: their CPU counts
        # once the server has reaped them (at most 2 s).
        postmaster = self.meter.postmaster
        deadline = time.time() + 2
        while postmaster and len(server_children(postmaster)) > self.backends and time.time() < deadline:
            time.sleep(0.05)
        self.after = self.meter.snapshot()

    def per(self, operations, service=True):
        (s0, d0, g0, (b0, t0)), (s1, d1, g1, (b1, t1)) = self.before, self.after
        return Cpu((s1 - s0) * 1e6 / operations if service else 0.0, (d1 - d0) * 1e6 / operations,
                   (g1 - g0) * 1e6 / operations, (b1 - b0) / max(t1 - t0, 1))


class Service:
    """The release binary on the bench database, with generated development secrets."""

    def __init__(self):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ,
                        DATABASE_URL=DB_URL,
                        OATH_CONFIG_DIR=os.path.join(ROOT, "config"),
                        OATH__SERVER__ADDR=f"127.0.0.1:{self.port}",
                        OATH__SERVER__PUBLIC_BASE_URL=self.base,
                        OATH__DATABASE__MAX_CONNECTIONS=str(CONNECTIONS),
                        # Production's verification: RS256 against a JWKS file. The HS256
                        # secret serves the get_hs256 line only.
                        OATH__AUTH__JWKS_PATH=JWKS_FILE,
                        OATH__AUTH__ISSUER=ISSUER,
                        OATH__AUTH__AUDIENCE=AUDIENCE,
                        OATH__AUTH__HS256_SECRET=b64encode(secrets.token_bytes(48)).decode(),
                        OATH__CRYPTO__ACTIVE_KEY_ID="bench",
                        OATH__CRYPTO__KEYS__BENCH=b64encode(secrets.token_bytes(32)).decode(),
                        # Single creates add up over the rounds; validations never lock a token.
                        OATH__LIMITS__TOKENS_PER_ENVIRONMENT="100000000",
                        OATH__OTP__MAX_FAILURES="2147483647",
                        # Checked on every validate, as in production, but never reached.
                        OATH__LIMITS__OTP_PER_TOKEN_PER_MINUTE="1000000",
                        # The events line's receiver listens on 127.0.0.1, over http.
                        OATH__EVENTS__ALLOW_HTTP="true",
                        OATH__EVENTS__ALLOW_PRIVATE_TARGETS="true",
                        OATH__LOG__LEVEL="warn")
        if TOKEN_CACHE is not None:
            self.env["OATH__AUTH__TOKEN_CACHE_SIZE"] = TOKEN_CACHE
        self.env.pop("RUST_LOG", None)
        subprocess.run([BIN, "migrate"], env=self.env, check=True, capture_output=True)
        self.proc = subprocess.Popen([BIN, "serve", "--no-migrate"], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=sys.stderr)
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(self.base + "/health/ready", timeout=1):
                    break
            except (urllib.error.URLError, ConnectionError):
                if time.time() > deadline or self.proc.poll() is not None:
                    sys.exit("bench: the service did not become ready")
                time.sleep(0.1)

    def token(self, env):
        """An RS256 token for `env`, as production's clients present."""
        return rs256_token(env)

    def dev_token(self, env):
        """The development HS256 token of `oath-service dev-token`."""
        return subprocess.run([BIN, "dev-token", "--env", env, "--ttl", "7200"], env=self.env,
                              check=True, capture_output=True, text=True).stdout.strip()

    def request(self, method, path, token, body=None, content_type=None):
        req = urllib.request.Request(self.base + path, data=body, method=method)
        req.add_header("Authorization", "Bearer " + token)
        if content_type:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=600) as res:
            return res.status, json.loads(res.read() or b"null")

    def peak_rss_mb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self):
        """User + system CPU time of the service so far."""
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


@dataclass
class Line:
    metric: str
    baseline: str
    value: float  # a ratio, MB for memory, ms for a latency
    goal: str  # ">= 0.6", "<= 200 MB", "<= 25 ms"; "" for a figure with no goal
    detail: str
    latency: tuple = None  # an HTTP line's wrk p50 and p99 in ms (of the median round)
    rounds: "Rounds" = None  # an HTTP line's measurements, for the CPU account
    same: str = None  # what the rounds' `extra` pgbench ran: the service's statements alone

    def met(self):
        """Whether the goal is met; None for a line with no goal."""
        if not self.goal:
            return None
        op, limit = self.goal.split()[:2]
        return self.value >= float(limit) if op == ">=" else self.value <= float(limit)

    def shown(self):
        if self.goal.endswith("MB"):
            return f"{self.value:.0f} MB"
        return milliseconds(self.value) if self.goal.endswith("ms") else f"{self.value:.2f}"

    def percentiles(self):
        return tuple(milliseconds(ms) for ms in self.latency) if self.latency else ("", "")

    def account(self):
        """The CPU account of an HTTP line: a row of the report's second table."""
        r, goal = self.rounds, float(self.goal.split()[1])
        cpu, base = r.cpu, r.base_cpu
        # With the cores saturated on both sides, the ratio is the baseline's CPU per transaction
        # over the service's per request: what is left of the goal's budget after the database
        # and wrk is what the service may spend.
        others = cpu.database + cpu.generator
        budget = base.total / goal - others
        same = (f"{self.same}: {r.extra:,.0f} tps ({r.extra / r.base:.2f}), database "
                f"{r.extra_cpu.database:.0f} us"
                if r.extra is not None else "")
        return (f"| {self.metric} | {cpu.service:.0f} + {cpu.database:.0f} + {cpu.generator:.0f} = "
                f"{cpu.total:.0f} ({cpu.busy:.0%}) | {base.database:.0f} + {base.generator:.0f} = "
                f"{base.total:.0f} ({base.busy:.0%}) | {same} | {base.total / others:.2f} | "
                + (f"{budget:.0f} us (now {cpu.service:.0f})" if budget > 0 else "none") + " |")


def milliseconds(ms):
    return f"{ms:.2f} ms" if ms < 100 else f"{ms:,.0f} ms"


# --- the 100k jobs against COPY and DELETE ----------------------------------------------------

def wal_lsn():
    """The server's current WAL position, in bytes."""
    return int(psql(DB_URL, "select pg_current_wal_lsn() - '0/0'"))


def run_job(svc, env, token, body, content_type, wal=None):
    """Seconds from POST to DONE, and to the 202; appends the WAL bytes the server wrote meanwhile
    (the job's and anything else on the server) to `wal` when given."""
    lsn = wal_lsn() if wal is not None else 0
    started = time.perf_counter()
    status, job = svc.request("POST", f"/v1/environments/{env}/oathJobs", token, body, content_type)
    assert status == 202, job
    accepted = time.perf_counter() - started
    path = f"/v1/environments/{env}/oathJobs/{job['id']}"
    while job["status"] not in ("DONE", "FAILED"):
        time.sleep(0.02)
        _, job = svc.request("GET", path, token)
    elapsed = time.perf_counter() - started
    assert job["status"] == "DONE", job
    if wal is not None:
        wal.append(wal_lsn() - lsn)
    return elapsed, accepted


def token_rows(n, prefix):
    return [(f"{prefix}{i:07d}", secrets.token_hex(20).upper()) for i in range(n)]


def create_body(rows):
    return json.dumps({"type": "CREATE_OATH_TOKENS", "tokens": [
        {"serialNumber": s, "secret": sec, "type": "HOTP", "otpLength": 6} for s, sec in rows]}).encode()


# Where the write baselines (COPY, DELETE, pgbench INSERT) write: an empty copy of oath_tokens,
# or, while the scale measurement runs (True), oath_tokens itself, in an environment of their own,
# so that at 2,000,000 tokens they meet indexes as large as the service's lines do.
IN_TOKEN_TABLE = [False]
# The COPY baseline's environment in oath_tokens, for the DELETE baseline after it.
COPIED_ENV = [None]


def copy_baseline(env, rows, wal):
    """Raw COPY of the same tokens (same columns and indexes, ciphertext-sized secrets); appends
    its WAL bytes to `wal`."""
    if IN_TOKEN_TABLE[0]:
        table, env = "oath_tokens", str(uuid.uuid4())
        COPIED_ENV[0] = env
    else:
        table = "bench_copy"
        psql(DB_URL, "drop table if exists bench_copy; create table bench_copy (like oath_tokens including all)")
    with tempfile.NamedTemporaryFile("w", suffix=".tsv", delete=False) as f:
        for serial, _ in rows:
            f.write(f"{env}\t{uuid.uuid4()}\t{serial}\tHOTP\t6\tHmacSHA1\t0\t\\\\x{secrets.token_hex(48)}\tbench\n")
        path = f.name
    lsn = wal_lsn()
    elapsed = psql_timed(DB_URL, f"\\copy {table} (environment_id, id, serial_number, type, otp_length, "
                                 f"hash_algorithm, counter, secret_ciphertext, secret_key_id) from '{path}'")
    wal.append(wal_lsn() - lsn)
    os.unlink(path)
    return elapsed


def delete_baseline(wal):
    """Raw DELETE of the same number of rows by id, from the COPY baseline's table (its rows);
    appends its WAL bytes to `wal`."""
    if IN_TOKEN_TABLE[0]:
        rows = f"oath_tokens where environment_id = '{COPIED_ENV[0]}'"
        delete = f"delete from oath_tokens where environment_id = '{COPIED_ENV[0]}' and id in (select id from bench_ids);"
    else:
        rows = "bench_copy"
        delete = "delete from bench_copy where id in (select id from bench_ids);"
    psql(DB_URL, f"drop table if exists bench_ids; create table bench_ids as select id from {rows}")
    lsn = wal_lsn()
    elapsed = psql_timed(DB_URL, delete)
    wal.append(wal_lsn() - lsn)
    return elapsed


def jobs(svc, env=None, csv=True):
    """The create and revoke jobs against COPY and DELETE, the CSV import against the create job
    (unless `csv` is false), peak RSS. Each run's jobs go to an environment of their own, or to
    `env` when given (the scale measurement's), whose other tokens they leave as they are."""
    fixed_env = env
    figures = {"create": [], "copy": [], "revoke": [], "delete": [], "csv": []}
    # WAL bytes written during each, per item; CPU per item.
    wal = {k: [] for k in figures}
    cpu = {k: [] for k in figures}
    accepted = {"create": [], "revoke": []}  # seconds from POST to 202
    meter = CpuMeter(svc)

    def measured(name, run, *args):
        with meter.measure() as m:
            result = run(*args)
        cpu[name].append(m.per(TOKENS, service=name in ("create", "revoke", "csv")))
        return result
    for rep in range(REPS):
        env = fixed_env or str(uuid.uuid4())
        token = svc.token(env)
        rows = token_rows(TOKENS, f"B{rep}x")
        t_job, t_accept = measured("create", run_job, svc, env, token, create_body(rows), CREATE_TYPE,
                                   wal["create"])
        t_copy = measured("copy", copy_baseline, env, rows, wal["copy"])
        ids = psql(DB_URL, f"select id from oath_tokens where environment_id = '{env}' "
                           f"and serial_number like 'B{rep}x%'").split()
        assert len(ids) == TOKENS
        revoke = json.dumps({"type": "REVOKE_OATH_TOKENS", "tokenIds": ids}).encode()
        t_revoke, t_revoke_accept = measured("revoke", run_job, svc, env, token, revoke, REVOKE_TYPE,
                                             wal["revoke"])
        t_delete = measured("delete", delete_baseline, wal["delete"])
        # The same kind of rows as a CSV file, into an environment of its own.
        t_csv = t_csv_accept = float("nan")
        if csv:
            csv_env = str(uuid.uuid4())
            csv_rows = token_rows(TOKENS, f"C{rep}x")
            csv_body = "\n".join([CSV_HEADER] + [f"{s},{sec},HOTP,6,,," for s, sec in csv_rows]).encode()
            t_csv, t_csv_accept = measured("csv", run_job, svc, csv_env, svc.token(csv_env), csv_body,
                                           CSV_TYPE, wal["csv"])
            psql(DB_URL, f"delete from oath_tokens where environment_id = '{csv_env}'")
        for k, v in (("create", t_job), ("copy", t_copy), ("revoke", t_revoke), ("delete", t_delete),
                     ("csv", t_csv)):
            if k != "csv" or csv:
                figures[k].append(v)
        accepted["create"].append(t_accept)
        accepted["revoke"].append(t_revoke_accept)
        say(f"jobs {rep + 1}/{REPS}: create job {t_job:.2f}s (202 after {t_accept:.2f}s), "
            f"COPY {t_copy:.2f}s, revoke job {t_revoke:.2f}s (202 after {t_revoke_accept:.2f}s), "
            f"DELETE {t_delete:.2f}s" + (f", CSV import {t_csv:.2f}s (202 after {t_csv_accept:.2f}s)" if csv else "")
            + "; WAL per item: " + ", ".join(f"{k} {v[-1] / TOKENS:,.0f} B" for k, v in wal.items() if v)
            + "; CPU per item: "
            + ", ".join(f"{k} {c[-1].service:.1f} + {c[-1].database:.1f} us" for k, c in cpu.items() if c))
    rss = svc.peak_rss_mb()
    med = {k: statistics.median(v) for k, v in figures.items() if v}
    per_item = {k: statistics.median(v) / TOKENS for k, v in wal.items() if v}
    # The service's and the database's CPU per item (microseconds, medians).

    def cpu_of(name, base):
        service = statistics.median(c.service for c in cpu[name])
        database = statistics.median(c.database for c in cpu[name])
        baseline = statistics.median(c.database for c in cpu[base])
        return (f"; 202 after {statistics.median(accepted[name]):.2f} s of {med[name]:.2f} s; CPU per item: "
                f"service {service:.1f} + database {database:.1f} us vs database {baseline:.1f} us")
    k = f"{TOKENS // 1000}k"
    return [
        Line(f"{k}-token create job, POST to DONE", "raw COPY of the same rows", med["copy"] / med["create"],
             ">= 0.6", f"{TOKENS / med['create']:,.0f} tokens/s vs {TOKENS / med['copy']:,.0f} rows/s; "
             f"WAL {per_item['create']:,.0f} vs {per_item['copy']:,.0f} bytes/item" + cpu_of("create", "copy")),
        Line(f"{k}-id revoke job, POST to DONE", "raw DELETE of the same ids", med["delete"] / med["revoke"],
             ">= 0.5", f"{TOKENS / med['revoke']:,.0f} ids/s vs {TOKENS / med['delete']:,.0f} rows/s; "
             f"WAL {per_item['revoke']:,.0f} vs {per_item['delete']:,.0f} bytes/item" + cpu_of("revoke", "delete")),
    ] + ([
        Line(f"{k}-row CSV import, POST to DONE", "JSON create job of the same rows",
             med["create"] / med["csv"], ">= 0.8",
             f"{TOKENS / med['csv']:,.0f} rows/s vs {TOKENS / med['create']:,.0f} tokens/s; "
             f"WAL {per_item['csv']:,.0f} vs {per_item['create']:,.0f} bytes/item"),
    ] if csv else []) + [
        Line(f"peak RSS of the service during the {k} jobs", "", rss, "<= 200 MB",
             f"VmHWM after {REPS} create and {REPS} revoke jobs"),
    ]


# --- HTTP with wrk against pgbench ------------------------------------------------------------

WRK_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def wrk_ms(text):
    """wrk's latency ("812.00us", "1.23ms", "1.40s", "2.00m") in milliseconds."""
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * WRK_UNITS_MS[unit]


def run_wrk(svc, script, label, threads=THREADS, connections=CONNECTIONS):
    """Requests/s of wrk with `script`, and its p50 and p99 latency in ms; fails on any non-2xx
    answer or socket error. An answer is waited for up to 10 s (a checkpoint's I/O can stall one
    for seconds on this machine)."""
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{DURATION}s",
                          "--timeout", "10s", "--latency", "-s", script, svc.base],
                         check=True, capture_output=True, text=True).stdout
    if "Non-2xx" in out or re.search(r"Socket errors:.*(connect [1-9]|read [1-9]|write [1-9]|timeout [1-9])", out):
        sys.exit(f"bench: {label}: some requests failed:\n{out}")
    rps = float(re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M).group(1))
    count = int(re.search(r"^\s+(\d+) requests in ", out, re.M).group(1))
    p50 = wrk_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = wrk_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    return rps, count, (p50, p99)


def run_pgbench(args, label):
    """Transactions/s of pgbench on the bench database, and how many it ran."""
    out = subprocess.run(["pgbench", "-n", "-M", "prepared", "-c", str(CONNECTIONS), "-j", str(THREADS),
                          "-T", str(DURATION), *args, DB_URL], capture_output=True, text=True)
    if out.returncode != 0 or re.search(r"number of failed transactions: [1-9]", out.stdout):
        sys.exit(f"bench: {label}: pgbench failed:\n{out.stdout}\n{out.stderr}")
    return (float(re.search(r"^tps = ([\d.]+)", out.stdout, re.M).group(1)),
            int(re.search(r"^number of transactions actually processed: (\d+)", out.stdout, re.M).group(1)))


@dataclass
class Rounds:
    """Medians over the rounds: requests/s, baseline tps, `extra` tps (or None), the ratio of
    each round (wrk / baseline); and, of the round whose ratio is the median, the wrk p50 and p99
    in ms and the CPU per request (wrk) and per transaction (baseline, `extra`)."""
    http: float
    base: float
    extra: float
    ratio: float
    latency: tuple
    cpu: Cpu
    base_cpu: Cpu
    extra_cpu: Cpu


def alternate(svc, label, wrk_script, pgbench_args, extra=None):
    """ROUNDS alternating rounds of wrk and pgbench (and `extra` pgbench args, if any), so that
    load from elsewhere on the machine hits both alike; the ratio is the median of the rounds'."""
    # Write out what the jobs left dirty first, so that a checkpoint does not land in a round.
    try:
        psql(DB_URL, "checkpoint")
    except subprocess.CalledProcessError:
        pass  # not a superuser: measure anyway
    say(f"{label}: warming up (2 s)")
    subprocess.run(["wrk", "-t", str(THREADS), "-c", str(CONNECTIONS), "-d", "2s", "-s", wrk_script, svc.base],
                   check=True, capture_output=True)
    meter = CpuMeter(svc)
    http, base, more, lat, cpu, base_cpu, more_cpu = [], [], [], [], [], [], []
    for r in range(ROUNDS):
        with meter.measure() as m:
            rps, count, latency = run_wrk(svc, wrk_script, label)
        cpu.append(m.per(count))
        with meter.measure() as m:
            tps, count = run_pgbench(pgbench_args, label)
        base_cpu.append(m.per(count, service=False))
        if extra:
            with meter.measure() as m:
                x, count = run_pgbench(extra, label)
            more.append(x)
            more_cpu.append(m.per(count, service=False))
        http.append(rps)
        base.append(tps)
        lat.append(latency)
        say(f"{label} {r + 1}/{ROUNDS}: {rps:,.0f} requests/s (p50 {milliseconds(latency[0])}, "
            f"p99 {milliseconds(latency[1])}; CPU {cpu[-1].service:.0f} + {cpu[-1].database:.0f} + "
            f"{cpu[-1].generator:.0f} us) vs pgbench {tps:,.0f} tps ({base_cpu[-1].database:.0f} + "
            f"{base_cpu[-1].generator:.0f} us)"
            + (f", ceiling {more[-1]:,.0f} tps" if extra else "") + f"; load {load_average()}")
    ratios = [h / b for h, b in zip(http, base)]
    middle = sorted(range(ROUNDS), key=lambda i: ratios[i])[ROUNDS // 2]
    return Rounds(statistics.median(http), statistics.median(base), statistics.median(more) if more else None,
                  statistics.median(ratios), lat[middle], cpu[middle], base_cpu[middle],
                  more_cpu[middle] if more_cpu else None)


def lua_ids(ids):
    return "local ids = {\n" + "".join(f'  "{i}",\n' for i in ids) + "}\n"


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def http_tokens(svc, work):
    """An environment with HTTP_TOKENS HOTP tokens (made by a create job), for GET and validate."""
    env = str(uuid.uuid4())
    token = svc.token(env)
    rows = [(f"H{i:07d}", SECRET) for i in range(HTTP_TOKENS)]
    run_job(svc, env, token, create_body(rows), CREATE_TYPE)
    ids = psql(DB_URL, f"select id from oath_tokens where environment_id = '{env}'").split()
    assert len(ids) == HTTP_TOKENS
    # A numbered copy of those rows, for pgbench to run the service's own statements on.
    psql(DB_URL, f"""drop table if exists bench_tokens;
        create table bench_tokens (like oath_tokens including all);
        alter table bench_tokens add column n serial unique;
        insert into bench_tokens select * from oath_tokens where environment_id = '{env}'""")
    psql(DB_URL, "vacuum analyze bench_tokens")
    return env, token, ids


HTTP_SETUP = {}


def shared_tokens(svc, work):
    if not HTTP_SETUP:
        HTTP_SETUP["tokens"] = http_tokens(svc, work)
    return HTTP_SETUP["tokens"]


RANDOM_SEED = 'math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0))'


def get_line(svc, work, token, label, metric):
    """GETs of random tokens of the shared environment with `token` against pgbench -S."""
    env, _, ids = shared_tokens(svc, work)
    script = write(os.path.join(work, f"{label.replace(' ', '_')}.lua"), lua_ids(ids) + f"""
local prefix = "/v1/environments/{env}/oathTokens/"
local headers = {{["Authorization"] = "Bearer {token}"}}
function init(args) {RANDOM_SEED} end
function request() return wrk.format("GET", prefix .. ids[math.random(#ids)], headers) end
""")
    if "pgbench" not in HTTP_SETUP:
        say("pgbench -i -s 1 (100,000 pgbench_accounts rows)")
        subprocess.run(["pgbench", "-i", "-q", "-s", "1", DB_URL], check=True, capture_output=True)
        HTTP_SETUP["pgbench"] = True
    # The service's own round trip: one token row by its key, every column the answer shows (its
    # connection goes to the next request untested: `database::reuse`).
    same = write(os.path.join(work, "get.sql"), f"""\\set n random(1, {len(ids)})
select environment_id, id, serial_number, type, otp_length, hash_algorithm, counter, time_step, drift,
       status, user_id, created_at, updated_at
  from bench_tokens where n = :n;
""")
    r = alternate(svc, label, script, ["-S"], ["-f", same])
    return [Line(metric, f"pgbench -S (select by primary key), {CONNECTIONS} clients", r.ratio, ">= 0.5",
                 f"{r.http:,.0f} requests/s vs {r.base:,.0f} tps", r.latency, r,
                 "the token's SELECT")]


def get_by_id(svc, work):
    _, token, _ = shared_tokens(svc, work)
    return get_line(svc, work, token, "GET token",
                    f"GET token by id, RS256 token, {CONNECTIONS} connections (wrk)")


def get_by_id_hs256(svc, work):
    env, _, _ = shared_tokens(svc, work)
    return get_line(svc, work, svc.dev_token(env), "GET token HS256",
                    f"GET token by id, HS256 development token, {CONNECTIONS} connections (wrk)")


def single_create(svc, work, env=None):
    """Creates of distinct serials in a new environment, or in `env` (the scale measurement's; its
    serials start with W), against pgbench INSERT."""
    env = env or str(uuid.uuid4())
    token = svc.token(env)
    script = write(os.path.join(work, "create.lua"), f"""
local threads = 0
function setup(thread) threads = threads + 1; thread:set("tid", threads) end
local prefix, n = nil, 0
function init(args) prefix = "W" .. os.time() .. "x" .. tid .. "x" end
local path = "/v1/environments/{env}/oathTokens"
local headers = {{["Authorization"] = "Bearer {token}", ["Content-Type"] = "application/json"}}
function request()
  n = n + 1
  local body = '{{"serialNumber": "' .. prefix .. n .. '", "secret": "{SECRET}", "type": "HOTP", "otpLength": 6}}'
  return wrk.format("POST", path, headers, body)
end
""")
    psql(DB_URL, "drop table if exists bench_insert; drop sequence if exists bench_serial; "
                 "create table bench_insert (like oath_tokens including all); create sequence bench_serial")
    # During the scale measurement, into oath_tokens itself, in an environment of its own.
    table, insert_env = ("oath_tokens", str(uuid.uuid4())) if IN_TOKEN_TABLE[0] else ("bench_insert", env)
    insert = write(os.path.join(work, "insert.sql"), f"""
insert into {table} (environment_id, id, serial_number, type, otp_length, hash_algorithm, counter,
                          secret_ciphertext, secret_key_id)
values ('{insert_env}', gen_random_uuid(), 'P' || nextval('bench_serial'), 'HOTP', 6, 'HmacSHA1', 0,
        '\\x{secrets.token_hex(48)}', 'bench');
""")
    r = alternate(svc, "single create", script, ["-f", insert])
    if IN_TOKEN_TABLE[0]:
        psql(DB_URL, f"delete from oath_tokens where environment_id = '{insert_env}'")
    return [Line(f"single create in one environment, {CONNECTIONS} connections (wrk)",
                 f"pgbench single-row INSERT into a copy of oath_tokens, {CONNECTIONS} clients", r.ratio,
                 ">= 0.6", f"{r.http:,.0f} creates/s vs {r.base:,.0f} tps", r.latency, r)]


def validate(svc, work):
    env, token, ids = shared_tokens(svc, work)
    # A wrong code: every request reads the token, searches its window and writes the failure
    # count, the same database work as a success (read, then one conditional UPDATE).
    script = write(os.path.join(work, "validate.lua"), lua_ids(ids) + f"""
local prefix = "/v1/environments/{env}/oathTokens/"
local headers = {{["Authorization"] = "Bearer {token}", ["Content-Type"] = "application/json"}}
local body = '{{"otp": "000000"}}'
function init(args) {RANDOM_SEED} end
function request() return wrk.format("POST", prefix .. ids[math.random(#ids)] .. "/validate", headers, body) end
""")
    rows = len(ids)
    psql(DB_URL, f"""drop table if exists bench_rows;
        create table bench_rows (id integer primary key, n bigint not null default 0);
        insert into bench_rows (id) select generate_series(1, {rows})""")
    psql(DB_URL, "vacuum analyze bench_rows")
    update = write(os.path.join(work, "update.sql"), f"""\\set id random(1, {rows})
update bench_rows set n = n + 1 where id = :id;
""")
    # A validation's own statement on a copy of oath_tokens: what the database alone allows. A
    # validation of a token checked before, as the service runs it: one conditional UPDATE on a
    # copy of oath_tokens (its connection goes to the next request untested).
    ceiling = write(os.path.join(work, "validation.sql"), f"""\\set n random(1, {rows})
update bench_tokens set fail_count = fail_count + 1
 where n = :n and fail_count < 2147483647 and (counter = counter or counter is null)
 returning fail_count;
""")
    r = alternate(svc, "validate", script, ["-f", update], ["-f", ceiling])
    return [Line(f"validate (a wrong code), {CONNECTIONS} connections (wrk)",
                 f"pgbench single-row UPDATE, {CONNECTIONS} clients", r.ratio, ">= 0.5",
                 f"{r.http:,.0f} requests/s vs {r.base:,.0f} tps", r.latency, r,
                 "the validation's UPDATE")]


# The table, in order. Each entry: (name for BENCH_ONLY, function(svc, workdir) -> [Line]).
# --- fairness: a small job of one environment behind another's backlog ----------------------

def small_job_latency(svc, env, token, n):
    """Seconds from POST to the answer of a 10-token "async": false job."""
    body = json.dumps({"type": "CREATE_OATH_TOKENS", "async": False, "tokens": [
        {"serialNumber": f"F{n}x{i}", "secret": SECRET, "type": "HOTP", "otpLength": 6}
        for i in range(10)]}).encode()
    started = time.perf_counter()
    status, job = svc.request("POST", f"/v1/environments/{env}/oathJobs", token, body, CREATE_TYPE)
    elapsed = time.perf_counter() - started
    assert status == 200 and job["status"] == "DONE", job
    return elapsed


def fairness(svc, work):
    """Environment B's 10-token "async": false job, alone and while environment A has
    FAIR_JOBS jobs of FAIR_TOKENS tokens queued: B's jobs are timed only while A has at least
    two unfinished jobs, so that both runners of the service are busy with A."""
    b = str(uuid.uuid4())
    b_token = svc.token(b)
    alone = [small_job_latency(svc, b, b_token, n) for n in range(FAIR_REPS)]
    a = str(uuid.uuid4())
    a_token = svc.token(a)
    for n in range(FAIR_JOBS):
        status, job = svc.request("POST", f"/v1/environments/{a}/oathJobs", a_token,
                                  create_body(token_rows(FAIR_TOKENS, f"A{n}x")), CREATE_TYPE)
        assert status == 202, job
    chunks = f"select count(*) from oath_job_chunks where environment_id = '{a}'"
    open_jobs = f"select count(*) from oath_jobs where environment_id = '{a}' and status not in ('DONE', 'FAILED')"
    behind, left = [], []
    n = FAIR_REPS
    while len(behind) < FAIR_REPS and int(psql(DB_URL, open_jobs)) >= 2:
        behind.append(small_job_latency(svc, b, b_token, n))
        left.append(int(psql(DB_URL, chunks)))
        n += 1
    say("fairness: B alone " + ", ".join(f"{t * 1000:.0f}" for t in alone) + " ms; behind A's backlog "
        + ", ".join(f"{t * 1000:.0f} ms ({c} chunks left)" for t, c in zip(behind, left)))
    assert behind, "A's backlog ended before B's first job"
    while int(psql(DB_URL, open_jobs)) > 0:
        time.sleep(0.1)
    psql(DB_URL, f"delete from oath_tokens where environment_id in ('{a}', '{b}')")
    t_alone, worst = statistics.median(alone), max(behind)
    return [Line(f"10-token async:false job of env B behind env A's {FAIR_JOBS} x {FAIR_TOKENS // 1000}k tokens",
                 "the same job with no backlog (median)", t_alone / worst, ">= 0.5",
                 f"worst {worst * 1000:.0f} ms, median {statistics.median(behind) * 1000:.0f} ms of "
                 f"{len(behind)} behind the backlog (A still had {left[-1]} chunks queued) vs "
                 f"{t_alone * 1000:.0f} ms alone")]


# --- Events: the cost of the outbox, and delivery -------------------------------------------

def receiver():
    """A webhook receiver on 127.0.0.1 that acknowledges every batch (204) and counts the events;
    returns its URL and a function giving the count."""
    import http.server
    import threading
    count = [0]
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            # Counted, not parsed: the receiver's CPU is the machine's, which the job shares.
            with lock:
                count[0] += body.count(b'"occurredAt"')
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}/hook", lambda: count[0]


def events(svc, work):
    """The 100k create job with one subscription on every type against the same job without
    (alternating, in turn first, median of BENCH_REPS each), and delivery throughput to a local
    receiver."""
    url, delivered = receiver()
    with_sub, without, rates = [], [], []

    def plain(rep):
        env = str(uuid.uuid4())
        token = svc.token(env)
        # Each job starts after a checkpoint: none falls due in the middle of one of them.
        psql(DB_URL, "checkpoint")
        t, _ = run_job(svc, env, token, create_body(token_rows(TOKENS, f"E{rep}x")), CREATE_TYPE)
        without.append(t)
        return t

    for rep in range(REPS):
        # Which job runs first alternates: the second of two pays for the first's aftermath
        # (autovacuum of oath_tokens, a checkpoint), whichever it is.
        if rep % 2 == 0:
            t_plain = plain(rep)
        env = str(uuid.uuid4())
        token = svc.token(env)
        status, _ = svc.request("POST", f"/v1/environments/{env}/subscriptions", token,
                                json.dumps({"name": "bench", "httpEndpoint": {"url": url}}).encode(),
                                "application/json")
        assert status == 201
        before = delivered()
        psql(DB_URL, "checkpoint")
        started = time.perf_counter()
        t_sub, _ = run_job(svc, env, token, create_body(token_rows(TOKENS, f"F{rep}x")), CREATE_TYPE)
        with_sub.append(t_sub)
        # Every event of the job (its tokens, CREATED and COMPLETED) reaches the receiver.
        while delivered() - before < TOKENS + 2:
            time.sleep(0.05)
        rates.append(TOKENS / (time.perf_counter() - started))
        if rep % 2 == 1:
            t_plain = plain(rep)
        say(f"events {rep + 1}/{REPS}: create job {t_plain:.2f}s without a subscription, "
            f"{t_sub:.2f}s with one; delivered at {rates[-1]:,.0f} events/s from the POST")
    ratio = statistics.median(without) / statistics.median(with_sub)
    return [
        Line(f"{TOKENS // 1000}k-token create job with a subscription on every type",
             "the same job without one", ratio, ">= 0.9",
             f"{statistics.median(with_sub):.2f} s vs {statistics.median(without):.2f} s; every event "
             f"delivered to a local receiver at {statistics.median(rates):,.0f} events/s "
             f"(from the POST to the last event acknowledged)"),
    ]


# --- scale: the same lines in one of many environments of a large table ---------------------

def table_rows():
    return int(psql(DB_URL, "select count(*) from oath_tokens"))


def fix_usage(env):
    """The environment's token count as its tokens say, after tokens were deleted in SQL."""
    psql(DB_URL, f"update environment_usage set token_count = (select count(*) from oath_tokens "
                 f"where environment_id = '{env}') where environment_id = '{env}'")


def latency_lines(svc, work, env):
    """The reads that list or sum up an environment, each with wrk for DURATION s after a 2 s
    warm-up: one connection (a request at a time: what the request itself takes), then
    CONNECTIONS connections. {name: ((requests/s, (p50, p99)) with one, the same with CONNECTIONS)}."""
    serials = psql(DB_URL, f"select serial_number from oath_tokens where environment_id = '{env}' "
                           f"and serial_number like 'H%' order by random() limit 1000").split()
    base = f"/v1/environments/{env}"
    paths = {
        "job list (GET .../oathJobs)": f'local paths = {{"{base}/oathJobs"}}\n',
        'token list by serial (GET .../oathTokens?filter=serialNumber eq "...")': "local paths = {\n" + "".join(
            f'  "{base}/oathTokens?filter=serialNumber%20eq%20%22{s}%22",\n' for s in serials) + "}\n",
        "environment (GET /v1/environments/{env})": f'local paths = {{"{base}"}}\n',
        "activities feed, first page (GET .../activities)": f'local paths = {{"{base}/activities"}}\n',
    }
    token = svc.token(env)
    out = {}
    for name, table in paths.items():
        script = write(os.path.join(work, f"scale_{name.split()[0]}_{len(out)}.lua"), table + f"""
local headers = {{["Authorization"] = "Bearer {token}"}}
function init(args) {RANDOM_SEED} end
function request() return wrk.format("GET", paths[math.random(#paths)], headers) end
""")
        subprocess.run(["wrk", "-t", str(THREADS), "-c", str(CONNECTIONS), "-d", "2s", "-s", script, svc.base],
                       check=True, capture_output=True)
        one, _, one_latency = run_wrk(svc, script, name, 1, 1)
        rps, _, latency = run_wrk(svc, script, name)
        say(f"{name}: one connection {one:,.0f} requests/s, p50 {milliseconds(one_latency[0])}, p99 "
            f"{milliseconds(one_latency[1])}; {CONNECTIONS} connections {rps:,.0f} requests/s, p50 "
            f"{milliseconds(latency[0])}, p99 {milliseconds(latency[1])}")
        out[name] = ((one, one_latency), (rps, latency))
    return out


def scale_pass(svc, work, env):
    """The chosen lines in `env`: GET, validate, single create, the create and revoke jobs (their
    CSV import left out), then the reads of latency_lines. Returns the lines by name and those
    reads' figures."""
    lines = {}
    lines["GET"] = get_by_id(svc, work)[0]
    lines["validate"] = validate(svc, work)[0]
    lines["create"] = single_create(svc, work, env)[0]
    # The environment back to its tokens: the creates' rows deleted, its count recounted.
    psql(DB_URL, f"delete from oath_tokens where environment_id = '{env}' and serial_number like 'W%'")
    fix_usage(env)
    psql(DB_URL, "vacuum analyze oath_tokens")
    lines["create job"], lines["revoke job"] = jobs(svc, env, csv=False)[:2]
    # The reads on fresh statistics (as autovacuum keeps them), and with what the jobs left dirty
    # written out, so that a checkpoint does not land in them.
    psql(DB_URL, "vacuum analyze")
    try:
        psql(DB_URL, "checkpoint")
    except subprocess.CalledProcessError:
        pass  # not a superuser: measure anyway
    return lines, latency_lines(svc, work, env)


def uuid_v7_sql():
    """A function of the bench database: a UUIDv7 of the given Unix time in milliseconds (random
    otherwise), as the service makes token and job ids (`Uuid::now_v7`)."""
    psql(DB_URL, """create or replace function bench_uuid_v7(ms bigint) returns uuid language sql volatile as $$
        select (lpad(to_hex(ms), 12, '0') || '7' || substr(replace(gen_random_uuid()::text, '-', ''), 14))::uuid
    $$""")


def load_filler(env):
    """SCALE_TOKENS tokens in SCALE_ENVS environments in all: `env` holds its real tokens; the
    other SCALE_ENVS - 1 environments share the rest, written in SQL in the row format the store
    writes, a batch of environments per statement. Each filler environment also gets what its
    tokens' create job would have left: the job (DONE), its CREATED and COMPLETED events and one
    event row per 1,000 tokens (as a job's chunk writes them), its usage row and its place in
    the job schedule. Filler tokens carry the sealed secret and key id of one of `env`'s real
    tokens (never opened: it is sealed for that token's id). Returns the seconds it took, VACUUM
    ANALYZE included."""
    started = time.perf_counter()
    filler = SCALE_TOKENS - table_rows()
    envs = SCALE_ENVS - 1
    assert filler > 0 and envs > 0, "BENCH_SCALE_TOKENS must exceed the tokens already there"
    uuid_v7_sql()
    now_ms = int(time.time() * 1000)
    ids = sorted(str(uuid.uuid4()) for _ in range(envs))
    # (environment, tokens, first token's time in ms): a job's tokens are created 1 ms apart,
    # jobs an hour apart, the oldest first.
    plan = [(e, filler // envs + (1 if i < filler % envs else 0), now_ms - (envs - i) * 3_600_000)
            for i, e in enumerate(ids)]
    batch = max(1, 200_000 // (filler // envs or 1))
    loaded = 0
    for b in range(0, envs, batch):
        part = plan[b:b + batch]
        values = ", ".join(f"('{e}'::uuid, {n}, {ms}::int8)" for e, n, ms in part)
        psql(DB_URL, f"""
begin;
create temporary table filler_envs (environment_id uuid, n integer, ms bigint, job_id uuid) on commit drop;
insert into filler_envs select e, n, ms, bench_uuid_v7(ms - 1000) from (values {values}) as v(e, n, ms);
insert into oath_jobs (environment_id, id, type, async, status, total, chunk_size, processed, created,
                       attempt, actor, created_at, updated_at, completed_at)
select environment_id, job_id, 'CREATE_OATH_TOKENS', true, 'DONE', n, 1000, n, n, 1, 'bench',
       to_timestamp((ms - 1000) / 1000.0), to_timestamp((ms + n) / 1000.0), to_timestamp((ms + n) / 1000.0)
  from filler_envs;
insert into oath_tokens (environment_id, id, serial_number, type, otp_length, hash_algorithm, counter,
                         secret_ciphertext, secret_key_id, created_at, updated_at)
select f.environment_id, bench_uuid_v7(f.ms + g.i), (2300000000000 + g.i)::text, 'HOTP', 6, 'HmacSHA1', 0,
       s.secret_ciphertext, s.secret_key_id, to_timestamp((f.ms + g.i) / 1000.0), to_timestamp((f.ms + g.i) / 1000.0)
  from filler_envs f
  cross join lateral generate_series(0, f.n - 1) as g(i)
  cross join (select secret_ciphertext, secret_key_id from oath_tokens
               where environment_id = '{env}' limit 1) as s
 order by f.environment_id, g.i;
insert into events (environment_id, type, occurred_at, actor, resource_id, job_id, result)
select environment_id, 'OATH_JOB.CREATED', to_timestamp((ms - 1000) / 1000.0), 'bench', job_id, null, null
  from filler_envs;
insert into events (environment_id, type, occurred_at, actor, job_id, token_ids, serial_numbers)
select c.environment_id, 'OATH_TOKEN.CREATED', to_timestamp(max(c.ms) / 1000.0), 'bench', c.job_id,
       array_agg(c.id order by c.id), array_agg(c.serial_number order by c.id)
  from (select t.environment_id, t.id, t.serial_number, f.job_id, f.ms,
               (row_number() over (partition by t.environment_id order by t.id) - 1) / 1000 as chunk
          from oath_tokens t join filler_envs f using (environment_id)) as c
 group by c.environment_id, c.job_id, c.chunk
 order by c.environment_id, c.chunk;
insert into events (environment_id, type, occurred_at, actor, resource_id, job_id, result)
select environment_id, 'OATH_JOB.COMPLETED', to_timestamp((ms + n) / 1000.0), 'bench', job_id, job_id,
       event_job_result('CREATE_OATH_TOKENS', n, 0, 0, 0, 0, 0, null)
  from filler_envs;
insert into environment_usage (environment_id, token_count) select environment_id, n from filler_envs;
insert into environment_schedule (environment_id, last_served_at)
select environment_id, to_timestamp((ms + n) / 1000.0) from filler_envs;
commit;
""")
        loaded += sum(n for _, n, _ in part)
        say(f"filler: {loaded:,} of {filler:,} tokens in {min(b + batch, envs)} of {envs} environments, "
            f"{time.perf_counter() - started:.0f} s")
    psql(DB_URL, "vacuum analyze")
    elapsed = time.perf_counter() - started
    say(f"filler: loaded and vacuumed in {elapsed:.0f} s")
    return elapsed


def disk_line(loaded_s):
    """Bytes per token of oath_tokens on disk (heap with its free space and visibility maps,
    indexes, TOAST) against the raw row (the average pg_column_size of a whole row)."""
    rows, total, heap, indexes, toast, raw = psql(DB_URL, """
select (select count(*) from oath_tokens), pg_total_relation_size(c.oid), pg_relation_size(c.oid),
       pg_indexes_size(c.oid), coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0),
       (select avg(pg_column_size(t.*)) from oath_tokens t)
  from pg_class c where c.oid = 'oath_tokens'::regclass""").split("|")
    rows, total, heap, indexes, toast, raw = int(rows), int(total), int(heap), int(indexes), int(toast), float(raw)
    each = psql(DB_URL, "select i.indexrelid::regclass, pg_relation_size(i.indexrelid) from pg_index i "
                        "where i.indrelid = 'oath_tokens'::regclass order by 1::text").splitlines()
    events = psql(DB_URL, "select pg_total_relation_size('events'), (select count(*) from events), "
                          "(select coalesce(sum(len), 0) from events)").split("|")
    other = total - heap - indexes - toast  # free space and visibility maps
    say(f"disk: {rows:,} tokens, {total / 2**20:,.0f} MB in all; per token {total / rows:.0f} B")
    indexes_each = ", ".join(f"{name} {int(size) / rows:.0f}" for name, size in (l.split("|") for l in each))
    return Line(f"bytes per token of oath_tokens on disk at {rows:,} tokens (table, indexes, TOAST)",
                "the raw row (average pg_column_size of a row)", total / rows / raw, "",
                f"{total / rows:.0f} B per token: heap {heap / rows:.0f} + maps {other / rows:.0f} + indexes "
                f"{indexes / rows:.0f} ({indexes_each}) + TOAST {toast / rows:.0f}, against a raw row of "
                f"{raw:.0f} B; {total / 2**20:,.0f} MB in all. Events: {int(events[1]):,} rows holding "
                f"{int(events[2]):,} events, {int(events[0]) / 2**20:,.0f} MB. Filler loaded and vacuumed in "
                f"{loaded_s:.0f} s")


def scale(svc, work):
    """GET, validate, single create and the create and revoke jobs in one environment, first
    while the table holds its HTTP_TOKENS tokens (about), then again once SCALE_TOKENS tokens in
    SCALE_ENVS environments are loaded; each line's ratio at scale over its ratio before
    (goal >= 0.9). Then bytes per token on disk, and the p99 of the job list, the token list
    by serial, the environment and the activities feed at that size, one request at a time
    (goal <= 25 ms)."""
    env, _, _ = shared_tokens(svc, work)
    # What lines before this one left in other environments is deleted: the first pass runs on
    # the measured environment's tokens alone.
    left = int(psql(DB_URL, f"select count(*) from oath_tokens where environment_id <> '{env}'"))
    if left:
        say(f"scale: deleting {left:,} tokens that earlier lines left in other environments")
        psql(DB_URL, f"delete from oath_tokens where environment_id <> '{env}'")
        psql(DB_URL, "update environment_usage u set token_count = (select count(*) from oath_tokens t "
                     "where t.environment_id = u.environment_id)")
        psql(DB_URL, "vacuum analyze")
    small_rows = table_rows()
    PHASE[0] = f"at {small_rows:,} tokens: "
    IN_TOKEN_TABLE[0] = True
    try:
        small, small_reads = scale_pass(svc, work, env)
        PHASE[0] = ""
        loaded_s = load_filler(env)
        disk = disk_line(loaded_s)
        SCALE_RUN["loaded"] = loaded_s
        big_rows = table_rows()
        PHASE[0] = f"at {big_rows:,} tokens: "
        big, big_reads = scale_pass(svc, work, env)
    finally:
        PHASE[0] = ""
        IN_TOKEN_TABLE[0] = False
    at_small, at_big = f"at {small_rows:,} tokens", f"at {big_rows:,} tokens in {SCALE_ENVS} environments"
    lines = []
    for name, a in small.items():
        b = big[name]
        lines.append(Line(f"{b.metric}, {at_big}", f"the same line {at_small}", b.value / a.value, ">= 0.9",
                          f"ratio {a.value:.2f} {at_small} ({a.detail}" + (f"; p99 {milliseconds(a.latency[1])}"
                          if a.latency else "") + f"), {b.value:.2f} {at_big} ({b.detail})", b.latency))
    lines.append(disk)
    def figures(one, many):
        return (f"{one[0]:,.0f} requests/s one at a time; {many[0]:,.0f} requests/s, p50 {milliseconds(many[1][0])}, "
                f"p99 {milliseconds(many[1][1])} at {CONNECTIONS} connections")
    for name, (one, many) in big_reads.items():
        one_small, many_small = small_reads[name]
        lines.append(Line(f"{name} {at_big}, p99 one request at a time (wrk -c 1)",
                          f"the same {at_small}: p50 {milliseconds(one_small[1][0])}, p99 {milliseconds(one_small[1][1])}",
                          one[1][1], "<= 25 ms",
                          f"{figures(one, many)}; {at_small}: {figures(one_small, many_small)}", one[1]))
    return lines


SCALE_RUN = {}


MEASUREMENTS = [
    ("jobs", lambda svc, work: jobs(svc)),
    ("events", events),
    ("get", get_by_id),
    ("get_hs256", get_by_id_hs256),
    ("create", single_create),
    ("validate", validate),
    ("fairness", fairness),
    # Opt-in (BENCH_ONLY=scale or BENCH_SCALE=1); last, since it loads the table.
    ("scale", scale),
]
OPT_IN = set() if SCALE else {"scale"}


def load_average():
    return " ".join(open("/proc/loadavg").read().split()[:3])


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) // 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    return (f"{platform.node()}: {os.cpu_count()} cores ({cpu}), {mem / 1024:.0f} GiB, "
            f"Linux {platform.release()}, PostgreSQL {psql(ADMIN_URL, 'show server_version')} on the same "
            f"machine (fsync {psql(ADMIN_URL, 'show fsync')}, synchronous_commit "
            f"{psql(ADMIN_URL, 'show synchronous_commit')})")


def main():
    check_rsa_key()
    psql(ADMIN_URL, f"drop database if exists {DB_NAME} with (force)")
    psql(ADMIN_URL, f"create database {DB_NAME}")
    started, load_before = time.time(), load_average()
    svc = Service()
    lines = []
    try:
        with tempfile.TemporaryDirectory(prefix="oath-bench.") as work:
            for name, measure in MEASUREMENTS:
                if name in ONLY or (not ONLY and name not in OPT_IN) or (name == "scale" and SCALE):
                    lines.extend(measure(svc, work))
    finally:
        svc.stop()
        psql(ADMIN_URL, f"drop database if exists {DB_NAME} with (force)")
    report(lines, started, load_before)


def report(lines, started, load_before):
    table = ["| metric | baseline (same database, same run) | ratio | goal | met | p50 | p99 | figures |",
             "| --- | --- | ---: | --- | --- | ---: | ---: | --- |"]
    for l in lines:
        p50, p99 = l.percentiles()
        met = {True: "yes", False: "NO", None: ""}[l.met()]
        table.append(f"| {l.metric} | {l.baseline} | {l.shown()} | {l.goal} | {met} "
                     f"| {p50} | {p99} | {l.detail} |")
    accounted = [l for l in lines if l.rounds]
    if accounted:
        table += ["", "CPU per request of each HTTP line's median round, in microseconds: service + "
                  "database (all PostgreSQL processes) + load generator, and how busy the 2 cores were; "
                  "against the baseline's per transaction. With the cores saturated the ratio is the "
                  "baseline's total over the line's: the service meets the goal when its own CPU is "
                  "at most the last column.", "",
                  "| line | service + database + wrk = total (busy) | baseline: database + pgbench = total (busy) "
                  "| the service's round trips alone in pgbench | ratio if the service took no CPU "
                  "| service CPU that meets the goal |",
                  "| --- | --- | --- | --- | ---: | --- |"]
        table += [l.account() for l in accounted]
    text = "\n".join(table)
    print(text)
    met = sum(bool(l.met()) for l in lines)
    goals = sum(l.met() is not None for l in lines)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    report = os.path.join(ROOT, "bench", "REPORT.md")
    # The failover section is bench/failover's (it needs pg_auto_failover): kept as it is.
    failover = ""
    if os.path.exists(report):
        with open(report) as f:
            earlier = f.read()
        if FAILOVER_HEADING in earlier:
            failover = "\n" + earlier[earlier.index(FAILOVER_HEADING):]
    with open(report, "w") as f:
        f.write(f"# Benchmark report\n\n"
                f"Machine: {machine()}.\n"
                f"Run: {when}, {time.time() - started:.0f} s; load average {load_before} before, "
                f"{load_average()} at the end (the run's own processes count in it; other work on the "
                f"machine slows both sides of a ratio, not always alike). Jobs: median of {REPS} runs of {TOKENS:,} tokens. HTTP lines: "
                f"{ROUNDS} alternating rounds of {DURATION} s, wrk -t {THREADS} -c {CONNECTIONS} "
                f"against pgbench -M prepared -j {THREADS} -c {CONNECTIONS}, over {HTTP_TOKENS:,} "
                f"tokens; the ratio is the median round's, the figures are medians, p50 and p99 are wrk's "
                f"latency percentiles in the median round. Requests carry RS256 tokens verified against "
                f"a JWKS file (auth.jwks_path), as in production, except the HS256 line; "
                f"auth.token_cache_size: {TOKEN_CACHE if TOKEN_CACHE is not None else 'default (10000)'}."
                + (f" Scale lines: the lines again once {SCALE_TOKENS:,} tokens in {SCALE_ENVS} environments are "
                   f"loaded ({SCALE_RUN['loaded']:.0f} s, VACUUM ANALYZE included), each line's ratio then over its "
                   f"ratio before (`bench/README.md`, Scale)." if SCALE_RUN else "") + "\n"
                f"Command: `bench/run`. Goals met: {met} of {goals}; what limits each figure: "
                f"`bench/README.md`.\n\n{text}\n{failover}")

FAILOVER_HEADING = "## Primary failover (bench/failover)"

if __name__ == "__main__":
    main()
