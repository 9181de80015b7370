#!/usr/bin/env python3
"""oath-service benchmarks: each figure is a ratio against a baseline measured on the same
database in the same run. Started by bench/run, which provides the database and the binary.

Environment (set by bench/run): DATABASE_URL (server to use; the database BENCH_DB, default
`oath_bench`, is recreated), OATH_BIN (release binary), BENCH_REPS, BENCH_TOKENS.
"""

import json
import os
import platform
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
from base64 import b64encode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ["OATH_BIN"]
REPS = int(os.environ.get("BENCH_REPS", "3"))
TOKENS = int(os.environ.get("BENCH_TOKENS", "100000"))
SERVER_URL = os.environ["DATABASE_URL"].split("?")[0].rsplit("/", 1)[0]
DB_NAME = os.environ.get("BENCH_DB", "oath_bench")
DB_URL = SERVER_URL + "/" + DB_NAME
ADMIN_URL = SERVER_URL + "/postgres"
CREATE_TYPE = "application/vnd.pingidentity.job.oathtokens.create+json"
REVOKE_TYPE = "application/vnd.pingidentity.job.oathtokens.revoke+json"
CSV_TYPE = "text/csv"
CSV_HEADER = "serialNumber,secret,type,otpLength,hashAlgorithm,counter,timeStep"


def psql(url, sql, *args):
    out = subprocess.run(["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql, *args],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
                        OATH__AUTH__HS256_SECRET=b64encode(secrets.token_bytes(48)).decode(),
                        OATH__CRYPTO__ACTIVE_KEY_ID="bench",
                        OATH__CRYPTO__KEYS__BENCH=b64encode(secrets.token_bytes(32)).decode(),
                        OATH__LOG__LEVEL="warn")
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

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def run_job(svc, env, token, body, content_type):
    """Seconds from POST to DONE."""
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
    return elapsed, accepted


def token_rows(n, prefix):
    return [(f"{prefix}{i:07d}", secrets.token_hex(20).upper()) for i in range(n)]


def copy_baseline(env, rows):
    """Raw COPY of the same tokens (same columns and indexes, ciphertext-sized secrets)."""
    with tempfile.NamedTemporaryFile("w", suffix=".tsv", delete=False) as f:
        for serial, _ in rows:
            f.write(f"{env}\t{uuid.uuid4()}\t{serial}\tHOTP\t6\tHmacSHA1\t0\t\\\\x{secrets.token_hex(48)}\tbench\n")
        path = f.name
    psql(DB_URL, "drop table if exists bench_copy; create table bench_copy (like oath_tokens including all)")
    started = time.perf_counter()
    psql(DB_URL, f"\\copy bench_copy (environment_id, id, serial_number, type, otp_length, hash_algorithm, "
                 f"counter, secret_ciphertext, secret_key_id) from '{path}'")
    elapsed = time.perf_counter() - started
    os.unlink(path)
    return elapsed


def delete_baseline():
    """Raw DELETE of the same number of rows by id, from the COPY baseline's table."""
    psql(DB_URL, "drop table if exists bench_ids; create table bench_ids as select id from bench_copy")
    started = time.perf_counter()
    psql(DB_URL, "delete from bench_copy where id in (select id from bench_ids)")
    return time.perf_counter() - started


def main():
    psql(ADMIN_URL, f"drop database if exists {DB_NAME} with (force)")
    psql(ADMIN_URL, f"create database {DB_NAME}")
    svc = Service()
    figures = {"create": [], "copy": [], "revoke": [], "delete": [], "csv": []}
    try:
        for rep in range(REPS):
            env = str(uuid.uuid4())
            token = svc.token(env)
            rows = token_rows(TOKENS, f"B{rep}x")
            body = json.dumps({"type": "CREATE_OATH_TOKENS", "tokens": [
                {"serialNumber": s, "secret": sec, "type": "HOTP", "otpLength": 6} for s, sec in rows]}).encode()
            t_job, t_accept = run_job(svc, env, token, body, CREATE_TYPE)
            t_copy = copy_baseline(env, rows)
            ids = psql(DB_URL, f"select id from oath_tokens where environment_id = '{env}'").split()
            revoke = json.dumps({"type": "REVOKE_OATH_TOKENS", "tokenIds": ids}).encode()
            t_revoke, t_revoke_accept = run_job(svc, env, token, revoke, REVOKE_TYPE)
            t_delete = delete_baseline()
            # The same kind of rows as a CSV file, into an environment of its own (after the
            # revoke: the tables hold the JSON job's dead rows, which only slows the import).
            csv_env = str(uuid.uuid4())
            csv_rows = token_rows(TOKENS, f"C{rep}x")
            csv_body = "\n".join([CSV_HEADER] + [f"{s},{sec},HOTP,6,,," for s, sec in csv_rows]).encode()
            t_csv, t_csv_accept = run_job(svc, csv_env, svc.token(csv_env), csv_body, CSV_TYPE)
            psql(DB_URL, f"delete from oath_tokens where environment_id = '{csv_env}'")
            for k, v in (("create", t_job), ("copy", t_copy), ("revoke", t_revoke), ("delete", t_delete),
                         ("csv", t_csv)):
                figures[k].append(v)
            print(f"rep {rep + 1}/{REPS}: create job {t_job:.2f}s (202 after {t_accept:.2f}s), "
                  f"COPY {t_copy:.2f}s, revoke job {t_revoke:.2f}s (202 after {t_revoke_accept:.2f}s), "
                  f"DELETE {t_delete:.2f}s, CSV import {t_csv:.2f}s (202 after {t_csv_accept:.2f}s)",
                  file=sys.stderr)
        rss = svc.peak_rss_mb()
    finally:
        svc.stop()
        psql(ADMIN_URL, f"drop database if exists {DB_NAME} with (force)")

    med = {k: statistics.median(v) for k, v in figures.items()}
    lines = [
        ("100k-token create job, POST to DONE", "raw COPY of the same rows", med["copy"] / med["create"], ">= 0.6",
         f"{TOKENS / med['create']:,.0f} tokens/s vs {TOKENS / med['copy']:,.0f} rows/s"),
        ("100k-id revoke job, POST to DONE", "raw DELETE of the same ids", med["delete"] / med["revoke"], ">= 0.5",
         f"{TOKENS / med['revoke']:,.0f} ids/s vs {TOKENS / med['delete']:,.0f} rows/s"),
        ("100k-row CSV import, POST to DONE", "JSON create job of the same rows", med["create"] / med["csv"],
         ">= 0.8", f"{TOKENS / med['csv']:,.0f} rows/s vs {TOKENS / med['create']:,.0f} tokens/s"),
        ("peak RSS of the service", "", rss, "<= 200 MB", f"{rss:.0f} MB"),
    ]
    report(lines)


def report(lines):
    machine = (f"{platform.node()}: {os.cpu_count()} cores, {platform.machine()}, "
               f"{psql(ADMIN_URL, 'show server_version')} PostgreSQL, "
               f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, median of {REPS} runs, {TOKENS:,} tokens")
    table = ["| metric | baseline | ratio | goal | figures |", "| --- | --- | --- | --- | --- |"]
    for metric, baseline, value, goal, detail in lines:
        shown = f"{value:.0f} MB" if "RSS" in metric else f"{value:.2f}"
        table.append(f"| {metric} | {baseline} | {shown} | {goal} | {detail} |")
    text = "\n".join(table)
    print(text)
    with open(os.path.join(ROOT, "bench", "REPORT.md"), "w") as f:
        f.write(f"# Benchmark report\n\nMachine: {machine}.\nCommand: `bench/run`.\n\n{text}\n")


if __name__ == "__main__":
    main()
