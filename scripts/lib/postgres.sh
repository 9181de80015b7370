# shellcheck shell=bash
# Sourced by scripts/dev and scripts/check. Defines `ensure_postgres`, which makes a
# PostgreSQL server available and exports:
#   DATABASE_URL  the service database (default name oath_service; created if absent)
#   PG_ADMIN_URL  the same server and credentials, database `postgres`
#
# Tried in order:
#   (a) DATABASE_URL already set and answering -> use it (its database is created if missing)
#   (b) a server at $OATH_PG_HOST:$OATH_PG_PORT (127.0.0.1:5432) answering as user postgres
#   (c) a Debian cluster (/etc/postgresql/<ver>/main) -> pg_ctlcluster start, use it
#   (d) PostgreSQL server binaries (/usr/lib/postgresql/<ver>/bin/initdb) -> a private
#       cluster in target/pgdata on 127.0.0.1:5433, trust auth, log in target/pgdata.log
#       (kept between runs; stop it with
#       `runuser -u postgres -- /usr/lib/postgresql/<ver>/bin/pg_ctl -D target/pgdata stop`)
#   (e) root with apt-get -> apt-get install postgresql, then (c)
#   (f) otherwise one line on stderr saying what to do, and return 1
#
# Environment it honours (all optional; the defaults are what the project uses):
#   DATABASE_URL            see (a)
#   OATH_DB_NAME            database name for (b)-(e)           (default oath_service)
#   OATH_PG_HOST/PORT       the server probed in (b)            (default 127.0.0.1 / 5432)
#   OATH_PG_PRIVATE_PORT    port of the private cluster (d)     (default 5433)
#   OATH_PG_DATA            data directory of (d)               (default <repo>/target/pgdata)
#   OATH_PG_LOG             server log of (d)                   (default <repo>/target/pgdata.log)
#   OATH_PG_ETC             where Debian cluster configs live   (default /etc/postgresql)
#   OATH_PG_BINDIR          the server binaries (initdb, pg_ctl) for (d), and for
#                           tests/postgres_outage.rs     (default /usr/lib/postgresql/<newest>/bin)
#   OATH_PG_NO_INSTALL=1    never apt-get install anything
# OATH_PG_ETC / OATH_PG_BINDIR pointing at an empty directory switch (c) / (d) off, which is
# how the later branches are exercised on a machine that has a system cluster.
#
# Also defines `pg_server_bindir`, which prints the directory of the server binaries (the same
# rule as (d)) or fails.
#
# Works under `set -euo pipefail` (every failure is checked explicitly) and without a TTY
# (psql runs with -w, so it never prompts for a password).

_OATH_PG_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_OATH_REPO_ROOT="$(cd "$_OATH_PG_LIB_DIR/../.." && pwd)"

# Role created in a Debian cluster (c)/(e) whose TCP login for `postgres` needs a password
# (the stock pg_hba.conf): a local-only development login with CREATEDB.
_OATH_PG_DEV_ROLE=oath_service

_pg_log() { printf 'oath-service: %s\n' "$*" >&2; }

_pg_is_root() { [ "$(id -u)" -eq 0 ]; }

_pg_can_install() {
    [ "${OATH_PG_NO_INSTALL:-0}" != 1 ] && _pg_is_root && command -v apt-get >/dev/null 2>&1
}

# apt-get install quietly; the output goes to a log that is shown only on failure.
_pg_apt_install() {
    local log
    log="$(mktemp "${TMPDIR:-/tmp}/oath-apt.XXXXXX")"
    _pg_log "installing $* with apt-get ..."
    if { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
         DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"; } \
        </dev/null >"$log" 2>&1; then
        rm -f "$log"
        return 0
    fi
    tail -n 20 "$log" >&2
    _pg_log "apt-get install $* failed (full log: $log)"
    return 1
}

# URL without its password, for printing.
_pg_redact() { printf '%s\n' "$1" | sed -E 's#(://[^:/@?]*):[^@/?]*@#\1@#'; }

# Splits a postgres URL: sets _pg_prefix (scheme://userinfo@host:port), _pg_db, _pg_query.
_pg_split_url() {
    local re='^(postgres(ql)?://[^/?#]*)(/([^?#]*))?(\?[^#]*)?$'
    if [[ "$1" =~ $re ]]; then
        _pg_prefix="${BASH_REMATCH[1]}"
        _pg_db="${BASH_REMATCH[4]}"
        _pg_query="${BASH_REMATCH[5]}"
        return 0
    fi
    return 1
}

# True when a SQL session can be opened with this URL.
_pg_answers() {
    PGCONNECT_TIMEOUT="${PGCONNECT_TIMEOUT:-3}" psql -X -w -A -t -q -d "$1" -c 'SELECT 1' >/dev/null 2>&1
}

# Waits up to $2 seconds (default 30) for URL $1 to answer.
_pg_wait() {
    local url="$1" deadline=$((SECONDS + ${2:-30}))
    while [ "$SECONDS" -lt "$deadline" ]; do
        _pg_answers "$url" && return 0
        sleep 1
    done
    _pg_answers "$url"
}

# Creates database $2 through admin URL $1 unless it exists.
_pg_create_db() {
    local admin="$1" db="$2" exists err
    exists="$(psql -X -w -A -t -q -d "$admin" -v ON_ERROR_STOP=1 -v db="$db" \
        <<<"SELECT 1 FROM pg_database WHERE datname = :'db';" 2>&1)" || {
        _pg_log "cannot query $(_pg_redact "$admin"): $exists"
        return 1
    }
    [ "$exists" = 1 ] && return 0
    if err="$(psql -X -w -q -d "$admin" -v ON_ERROR_STOP=1 -v db="$db" \
        <<<'CREATE DATABASE :"db";' 2>&1)"; then
        return 0
    fi
    # Lost a race with another run? Then it exists now.
    exists="$(psql -X -w -A -t -q -d "$admin" -v db="$db" \
        <<<"SELECT 1 FROM pg_database WHERE datname = :'db';" 2>/dev/null)" || true
    [ "$exists" = 1 ] && return 0
    _pg_log "cannot create database $db: $err"
    return 1
}

# Exports DATABASE_URL/PG_ADMIN_URL for server prefix $1 (scheme://user[:pw]@host:port),
# creating database $2, and prints the one success line.
_pg_use() {
    local prefix="$1" db="$2" query="${3:-}"
    local admin="$prefix/postgres$query" url="$prefix/$db$query"
    _pg_create_db "$admin" "$db" || return 1
    _pg_answers "$url" || { _pg_log "cannot connect to $(_pg_redact "$url")"; return 1; }
    export DATABASE_URL="$url" PG_ADMIN_URL="$admin"
    _pg_log "using database $(_pg_redact "$url")${4:+ ($4)}"
}

# Runs a command as user $1 (root only), or directly when we already are that user.
_pg_run_as() {
    local user="$1"
    shift
    if [ "$(id -un)" = "$user" ]; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u "$user" -- "$@"
    else
        su -s /bin/sh "$user" -c "$(printf '%q ' "$@")"
    fi
}

# Highest version directory under $1 matching $2 (a path below the version), e.g.
# _pg_latest /usr/lib/postgresql bin/initdb -> 15
_pg_latest() {
    local base="$1" rel="$2" d
    for d in "$base"/*/"$rel"; do
        [ -e "$d" ] || continue
        d="${d#"$base"/}"
        printf '%s\n' "${d%%/*}"
    done | sort -V | tail -n 1
}

# --- (a) ---------------------------------------------------------------------------------
_pg_try_database_url() {
    [ -n "${DATABASE_URL:-}" ] || return 1
    local url="$DATABASE_URL"
    if ! _pg_split_url "$url"; then
        _pg_log "DATABASE_URL is not a postgres:// URL; ignoring it"
        return 1
    fi
    local admin="$_pg_prefix/postgres$_pg_query" db="$_pg_db"
    if _pg_answers "$url"; then
        export DATABASE_URL="$url" PG_ADMIN_URL="$admin"
        _pg_log "using database $(_pg_redact "$url") (from DATABASE_URL)"
        return 0
    fi
    if [ -n "$db" ] && _pg_answers "$admin"; then
        _pg_use "$_pg_prefix" "$db" "$_pg_query" "from DATABASE_URL" && return 0
    fi
    _pg_log "DATABASE_URL ($(_pg_redact "$url")) does not answer; looking for a local server"
    return 1
}

# --- (b) ---------------------------------------------------------------------------------
_pg_try_default_server() {
    local prefix="postgres://postgres@${OATH_PG_HOST:-127.0.0.1}:${OATH_PG_PORT:-5432}"
    _pg_answers "$prefix/postgres" || return 1
    _pg_use "$prefix" "${OATH_DB_NAME:-oath_service}"
}

# --- (c) ---------------------------------------------------------------------------------
_pg_conf_value() { # file key default
    local v
    v="$(sed -nE "s/^[[:space:]]*$2[[:space:]]*=[[:space:]]*'?([^'#[:space:]]*)'?.*/\1/p" "$1" 2>/dev/null | tail -n 1)"
    printf '%s\n' "${v:-$3}"
}

_pg_try_debian_cluster() {
    local etc="${OATH_PG_ETC:-/etc/postgresql}" ver conf port sockdir owner
    ver="$(_pg_latest "$etc" main/postgresql.conf)"
    [ -n "$ver" ] || return 1
    command -v pg_ctlcluster >/dev/null 2>&1 || return 1
    conf="$etc/$ver/main/postgresql.conf"
    port="$(_pg_conf_value "$conf" port 5432)"
    sockdir="$(_pg_conf_value "$conf" unix_socket_directories /var/run/postgresql)"
    sockdir="${sockdir%%,*}"
    local prefix="postgres://postgres@127.0.0.1:$port" out

    if ! _pg_answers "$prefix/postgres" && ! pg_isready -q -h 127.0.0.1 -p "$port" -t 2; then
        # Exit status 2 means "already running": fine, we only wait for it below.
        out="$(PG_CLUSTER_CONF_ROOT="$etc" pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>&1)" || {
            case "$out" in
            *"already running"*) ;;
            *) _pg_log "pg_ctlcluster $ver main start failed: $out" ;;
            esac
        }
        local deadline=$((SECONDS + 60))
        until pg_isready -q -h 127.0.0.1 -p "$port" -t 2; do
            if [ "$SECONDS" -ge "$deadline" ]; then
                _pg_log "cluster $ver/main did not come up on 127.0.0.1:$port"
                return 1
            fi
            sleep 1
        done
    fi

    # Trust (or a password in ~/.pgpass / PGPASSWORD) for postgres over TCP: use it.
    if _pg_wait "$prefix/postgres" 5; then
        _pg_use "$prefix" "${OATH_DB_NAME:-oath_service}" "" "cluster $ver/main"
        return
    fi

    # Stock Debian pg_hba.conf: TCP needs a password, peer auth on the socket for the
    # cluster owner. Use the latter to make a local development login with CREATEDB.
    owner="$(stat -c %U "$etc/$ver/main" 2>/dev/null || echo postgres)"
    if ! _pg_is_root && [ "$(id -un)" != "$owner" ]; then
        _pg_log "cluster $ver/main runs on port $port but refuses postgres over TCP; set DATABASE_URL"
        return 1
    fi
    local role="$_OATH_PG_DEV_ROLE" err
    if ! err="$(_pg_run_as "$owner" psql -X -w -q -h "$sockdir" -p "$port" -d postgres \
        -v ON_ERROR_STOP=1 -v role="$role" 2>&1 <<'SQL'
SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') AS missing \gset
\if :missing
CREATE ROLE :"role" LOGIN CREATEDB PASSWORD :'role';
\else
ALTER ROLE :"role" LOGIN CREATEDB PASSWORD :'role';
\endif
SQL
    )"; then
        _pg_log "cannot create role $role in cluster $ver/main: $err"
        return 1
    fi
    prefix="postgres://$role:$role@127.0.0.1:$port"
    if ! _pg_answers "$prefix/postgres"; then
        _pg_log "cluster $ver/main refuses $role over TCP (see its pg_hba.conf); set DATABASE_URL"
        return 1
    fi
    _pg_use "$prefix" "${OATH_DB_NAME:-oath_service}" "" "cluster $ver/main, role $role"
}

# --- (d) ---------------------------------------------------------------------------------
# Prints the directory holding initdb and pg_ctl: $OATH_PG_BINDIR when set (and then only it),
# else the newest /usr/lib/postgresql/<ver>/bin. Fails when there is none.
pg_server_bindir() {
    local bin
    if [ -n "${OATH_PG_BINDIR:-}" ]; then
        bin="$OATH_PG_BINDIR"
    else
        local ver
        ver="$(_pg_latest /usr/lib/postgresql bin/initdb)"
        [ -n "$ver" ] || return 1
        bin="/usr/lib/postgresql/$ver/bin"
    fi
    [ -x "$bin/initdb" ] && [ -x "$bin/pg_ctl" ] || return 1
    printf '%s\n' "$bin"
}

_pg_try_private_cluster() {
    local bin ver
    bin="$(pg_server_bindir)" || return 1
    ver="$("$bin/pg_ctl" --version 2>/dev/null | grep -oE '[0-9]+(\.[0-9]+)?' | head -n 1)"

    local data="${OATH_PG_DATA:-$_OATH_REPO_ROOT/target/pgdata}"
    local log="${OATH_PG_LOG:-$_OATH_REPO_ROOT/target/pgdata.log}"
    local port="${OATH_PG_PRIVATE_PORT:-5433}"
    local prefix="postgres://postgres@127.0.0.1:$port"

    # Already running from an earlier run?
    if _pg_answers "$prefix/postgres"; then
        _pg_use "$prefix" "${OATH_DB_NAME:-oath_service}" "" "private cluster $data"
        return
    fi

    # The server refuses to run as root: use the postgres system user, or make one.
    local user
    user="$(id -un)"
    if _pg_is_root; then
        user=postgres
        if ! id -u "$user" >/dev/null 2>&1; then
            user=oath-pg
            if ! id -u "$user" >/dev/null 2>&1 &&
                ! useradd --system --user-group --no-create-home --home-dir /nonexistent \
                    --shell /usr/sbin/nologin "$user" >/dev/null 2>&1; then
                _pg_log "cannot create a system user to run PostgreSQL"
                return 1
            fi
        fi
    fi

    mkdir -p "$(dirname "$data")" "$(dirname "$log")" || return 1
    touch "$log" || return 1

    # The data directory may be a symlink to where the server user can reach (see below).
    local real="$data"
    [ -L "$data" ] && real="$(readlink -f "$data")"
    # An existing cluster is run by whoever owns it.
    if _pg_is_root && [ -s "$real/PG_VERSION" ]; then
        user="$(stat -c %U "$real")"
    fi

    if [ ! -s "$real/PG_VERSION" ]; then
        if [ -e "$data" ] && [ -n "$(ls -A "$data" 2>/dev/null)" ]; then
            _pg_log "$data exists but holds no cluster; remove it and run again"
            return 1
        fi
        rm -rf "$data"
        mkdir -p "$data"
        real="$data"
        if _pg_is_root; then
            chown "$user:" "$data" && chmod 700 "$data" || return 1
            # Every parent must be searchable by $user (not so under /root, for one).
            if ! _pg_run_as "$user" test -w "$data"; then
                rmdir "$data"
                local key
                key="$(printf '%s' "$data" | cksum | cut -d' ' -f1)"
                real="/var/lib/oath-service/pgdata-$key"
                mkdir -p "$real" && chown "$user:" "$real" && chmod 700 "$real" || return 1
                chmod 755 /var/lib/oath-service
                ln -s "$real" "$data" || return 1
            fi
        fi
        _pg_log "creating a private PostgreSQL $ver cluster in $data (port $port) ..."
        if ! _pg_run_as "$user" "$bin/initdb" -D "$real" -U postgres --auth=trust \
            --encoding=UTF8 --no-locale >>"$log" 2>&1 </dev/null; then
            tail -n 20 "$log" >&2
            _pg_log "initdb failed (log: $log)"
            return 1
        fi
        cat >>"$real/postgresql.conf" <<EOF

# added by scripts/lib/postgres.sh: private development cluster
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = ''
fsync = off
EOF
    fi

    if pg_isready -q -h 127.0.0.1 -p "$port" -t 1; then
        _pg_log "port $port is taken by another server; set OATH_PG_PRIVATE_PORT to a free port"
        return 1
    fi
    # The shell opens the log (the server user may not reach it); the server inherits it.
    if ! _pg_run_as "$user" "$bin/pg_ctl" -D "$real" -w -t 60 start >>"$log" 2>&1 </dev/null; then
        tail -n 20 "$log" >&2
        _pg_log "the private cluster in $data did not start (log: $log)"
        return 1
    fi
    _pg_wait "$prefix/postgres" 30 || {
        _pg_log "the private cluster in $data started but does not answer (log: $log)"
        return 1
    }
    _pg_use "$prefix" "${OATH_DB_NAME:-oath_service}" "" "private cluster $data"
}

# --- client tools ------------------------------------------------------------------------
_pg_ensure_client() {
    command -v psql >/dev/null 2>&1 && command -v pg_isready >/dev/null 2>&1 && return 0
    if _pg_can_install; then
        _pg_apt_install postgresql-client || return 1
        hash -r
        command -v psql >/dev/null 2>&1 && command -v pg_isready >/dev/null 2>&1 && return 0
    fi
    _pg_log "psql/pg_isready not found: install the PostgreSQL client (apt-get install postgresql-client)"
    return 1
}

ensure_postgres() {
    _pg_ensure_client || return 1
    _pg_try_database_url && return 0
    _pg_try_default_server && return 0
    _pg_try_debian_cluster && return 0
    _pg_try_private_cluster && return 0
    if _pg_can_install; then
        if _pg_apt_install postgresql; then
            hash -r
            _pg_try_debian_cluster && return 0
            _pg_try_private_cluster && return 0
        fi
    fi
    _pg_log "no PostgreSQL available: set DATABASE_URL to a reachable server or install PostgreSQL 15+ (apt-get install postgresql)"
    return 1
}
