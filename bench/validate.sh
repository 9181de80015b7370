#!/usr/bin/env bash
# Validate throughput against the database's own write throughput, in the same run.
#
# Builds the release binary, creates a database of its own on the PostgreSQL server that
# scripts/lib/postgres.sh finds (the server of DATABASE_URL when set), starts the service on a
# free port with generated development secrets, creates N HOTP tokens, then measures:
#   1. POST .../oathTokens/{id}/validate with wrk (random token per request, a wrong code, so every
#      request reads the token, searches its window and writes the failure count: the steady
#      state; otp.max_failures is set so high that no token ever locks), and
#   2. pgbench running a single-row UPDATE on a table of N rows (prepared statements), and
#   3. pgbench running a validation's own two statements (read the token, count the failure) on a
#      copy of oath_tokens: what the database alone allows for this pattern,
# with the same number of connections and duration, in alternating rounds, and prints each
# round's figures and ratios and their medians.
# It stops the server and drops its database on exit, whatever happens.
#
# Environment (all optional):
#   BENCH_DURATION     seconds per measurement            (default 10)
#   BENCH_CONNECTIONS  wrk connections = pgbench clients  (default 16)
#   BENCH_TOKENS       tokens = pgbench table rows        (default 1000)
#   BENCH_THREADS      wrk threads = pgbench threads      (default 2)
#   BENCH_ROUNDS       alternating rounds of the three     (default 3; the medians are reported)
#   DATABASE_URL       its server is used (with a database of the benchmark's own)
#   CARGO_TARGET_DIR   as usual
set -euo pipefail

cd "$(dirname "$0")/.."
root="$(pwd)"
# shellcheck source=scripts/lib/postgres.sh
. scripts/lib/postgres.sh

duration="${BENCH_DURATION:-10}"
connections="${BENCH_CONNECTIONS:-16}"
tokens="${BENCH_TOKENS:-1000}"
threads="${BENCH_THREADS:-2}"
rounds="${BENCH_ROUNDS:-3}"
target_dir="${CARGO_TARGET_DIR:-$root/target}"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench/validate.sh: %s\n' "$*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------------------
for tool in cargo curl psql pgbench; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done
if ! command -v wrk >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing wrk"
        { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk; } >/dev/null 2>&1 ||
            die "could not install wrk (apt-get install wrk)"
    else
        die "wrk not found (apt-get install wrk)"
    fi
fi

# --- cleanup, whatever happens -------------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/oath-bench.XXXXXX")"
server_pid=""
db="oath_bench_$$"
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [ -n "${PG_ADMIN_URL:-}" ]; then
        psql -X -w -q -d "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" \
            >/dev/null 2>&1 || printf 'bench/validate.sh: could not drop database %s\n' "$db" >&2
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- database of its own -------------------------------------------------------------------
export OATH_DB_NAME="$db"
if [ -n "${DATABASE_URL:-}" ]; then
    _pg_split_url "$DATABASE_URL" || die "DATABASE_URL is not a postgres:// URL"
    export DATABASE_URL="$_pg_prefix/$db$_pg_query"
fi
ensure_postgres || die "no PostgreSQL server"
bench_url="$DATABASE_URL"

# --- build and start ------------------------------------------------------------------------
say "building the release binary"
SQLX_OFFLINE=true cargo build --release --locked --bin oath-service >&2
bin="$target_dir/release/oath-service"

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
    echo $((20000 + RANDOM % 20000)))"
env_id="$(cat /proc/sys/kernel/random/uuid)"
export OATH__SERVER__ADDR="127.0.0.1:$port"
export OATH__SERVER__PUBLIC_BASE_URL="http://127.0.0.1:$port"
export OATH__DATABASE__URL="$bench_url"
export OATH__DATABASE__MAX_CONNECTIONS="$connections"
export OATH__AUTH__HS256_SECRET="$(head -c 48 /dev/urandom | base64 | tr -d '\n')"
export OATH__CRYPTO__ACTIVE_KEY_ID=bench
export OATH__CRYPTO__KEYS__BENCH="$(head -c 32 /dev/urandom | base64 | tr -d '\n')"
export OATH__OTP__MAX_FAILURES=2147483647
export OATH__LOG__FORMAT=json
unset RUST_LOG

say "starting the service on port $port (log: $work/server.log)"
"$bin" serve >"$work/server.log" 2>&1 &
server_pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
    curl -sf "$base/health/ready" >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || { tail -n 20 "$work/server.log" >&2; die "the service exited"; }
    sleep 0.2
done
curl -sf "$base/health/ready" >/dev/null || die "the service did not become ready"
bearer="$("$bin" dev-token --env "$env_id" --ttl 3600)"

# --- tokens ----------------------------------------------------------------------------------
say "creating $tokens HOTP tokens"
api="$base/v1/environments/$env_id/oathTokens"
seq 1 "$tokens" | xargs -P 4 -I{} curl -s -o /dev/null -w '%{http_code}\n' -X POST "$api" \
    -H "Authorization: Bearer $bearer" -H 'Content-Type: application/json' \
    -d '{"serialNumber": "B{}", "secret": "3132333435363738393031323334353637383930", "type": "HOTP", "otpLength": 6}' \
    >"$work/created"
created="$(grep -c '^201$' "$work/created" || true)"
[ "$created" -eq "$tokens" ] || die "created $created of $tokens tokens"

# A code that is none of the codes in the first token's window (all tokens share the secret).
first_id="$(psql -X -w -A -t -q -d "$bench_url" -c 'select id from oath_tokens order by id limit 1')"
answer="$(curl -s -X POST "$api/$first_id/validate" -H "Authorization: Bearer $bearer" \
    -H 'Content-Type: application/json' -d '{"otp": "000000"}')"
[ "$answer" = '{"status":"INVALID"}' ] || die "unexpected validate answer: $answer"

# --- wrk script: a random token per request ---------------------------------------------------
{
    echo "local ids = {"
    psql -X -w -A -t -q -d "$bench_url" -c 'select id from oath_tokens' | sed 's/.*/  "&",/'
    echo "}"
    cat <<LUA
local prefix = "/v1/environments/$env_id/oathTokens/"
local headers = {
  ["Authorization"] = "Bearer $bearer",
  ["Content-Type"] = "application/json",
}
local body = '{"otp": "000000"}'
function init(args)
  math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0))
end
function request()
  return wrk.format("POST", prefix .. ids[math.random(#ids)] .. "/validate", headers, body)
end
LUA
} >"$work/validate.lua"

# --- measurements -----------------------------------------------------------------------------
# The baseline tables: N rows to update, and a copy of oath_tokens (same columns and constraints)
# on which pgbench runs a validation's own statements: what the database alone allows for them.
psql -X -w -q -d "$bench_url" -v ON_ERROR_STOP=1 -v rows="$tokens" >/dev/null <<'SQL'
create table bench_rows (id integer primary key, n bigint not null default 0);
insert into bench_rows (id) select generate_series(1, :rows);
create table bench_tokens (like oath_tokens including all);
alter table bench_tokens add column n serial unique;
insert into bench_tokens select * from oath_tokens;
vacuum analyze bench_rows;
vacuum analyze bench_tokens;
SQL
cat >"$work/update.sql" <<SQL
\\set id random(1, $tokens)
update bench_rows set n = n + 1 where id = :id;
SQL
cat >"$work/validation.sql" <<SQL
\\set n random(1, $tokens)
select otp_length, hash_algorithm, counter, time_step, drift, last_time_step, fail_count, status,
       secret_ciphertext, secret_key_id
  from bench_tokens where n = :n;
update bench_tokens set fail_count = fail_count + 1
 where n = :n and fail_count < 2147483647 returning fail_count;
SQL

run_wrk() { # -> requests/s
    wrk -t "$threads" -c "$connections" -d "${duration}s" --latency -s "$work/validate.lua" "$base" \
        >"$work/wrk.out"
    cat "$work/wrk.out" >&2
    if grep -q 'Non-2xx' "$work/wrk.out"; then
        die "some validate requests failed: $(grep 'Non-2xx' "$work/wrk.out")"
    fi
    awk '/^Requests\/sec:/ {print $2}' "$work/wrk.out"
}
run_pgbench() { # script -> transactions/s
    pgbench -n -M prepared -f "$1" -c "$connections" -j "$threads" -T "$duration" "$bench_url" \
        >"$work/pgbench.out" 2>&1
    grep -E '^(tps|number of failed)' "$work/pgbench.out" >&2
    awk -F'= ' '/^tps = / {split($2, a, " "); print a[1]; exit}' "$work/pgbench.out"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

say "warming up (2 s)"
wrk -t "$threads" -c "$connections" -d 2s -s "$work/validate.lua" "$base" >/dev/null

# Alternating rounds, so that a neighbour's load on the machine hits all three alike.
: >"$work/rounds"
for round in $(seq 1 "$rounds"); do
    say "round $round/$rounds: validate (wrk -t $threads -c $connections -d ${duration}s)"
    v="$(run_wrk)"
    say "round $round/$rounds: single-row UPDATE (pgbench -M prepared -c $connections -j $threads -T $duration)"
    u="$(run_pgbench "$work/update.sql")"
    say "round $round/$rounds: a validation's read + write (pgbench, same options)"
    c="$(run_pgbench "$work/validation.sql")"
    [ -n "$v" ] && [ -n "$u" ] && [ -n "$c" ] || die "could not read the results of round $round"
    printf '%s %s %s %s %s\n' "$v" "$u" "$c" "$(ratio "$v" "$u")" "$(ratio "$c" "$u")" >>"$work/rounds"
done

printf '\n%-7s %14s %14s %16s %8s %14s\n' round validate/s 'UPDATE tps' 'read+write tps' ratio 'db ceiling'
awk '{printf "%-7s %14.0f %14.0f %16.0f %8s %14s\n", NR, $1, $2, $3, $4, $5}' "$work/rounds"
printf '%-7s %14.0f %14.0f %16.0f %8.2f %14.2f\n' median \
    "$(cut -d' ' -f1 "$work/rounds" | median)" "$(cut -d' ' -f2 "$work/rounds" | median)" \
    "$(cut -d' ' -f3 "$work/rounds" | median)" "$(cut -d' ' -f4 "$work/rounds" | median)" \
    "$(cut -d' ' -f5 "$work/rounds" | median)"
printf '\nratio = validate requests/s / pgbench single-row UPDATE/s (goal >= 0.5); db ceiling = the\n'
printf 'same for pgbench running only the two statements of a validation.\n'
printf '(%s tokens/rows, %s connections, %s s per measurement, %s threads, %s cores, load average %s)\n' \
    "$tokens" "$connections" "$duration" "$threads" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
