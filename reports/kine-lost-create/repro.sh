#!/bin/sh
# Kine acknowledges a create it never wrote, and reports failed a create it did write: both, on demand, with
# etcdctl and psql only.
#
#   KINE=/path/to/kine PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres PGPASSWORD=... sh repro.sh
#
# PGUSER must be a Postgres superuser (the script creates a database of its own, adds two triggers to Kine's
# table and ends one session). Nothing else is needed: Kine is started here on 127.0.0.1:$PORT (23790) against a
# new database, and stopped, with the database dropped, at the end.
#
# The triggers only choose WHEN Kine's INSERT fails (a refusal, SQLSTATE 53300 as from "too many clients") or
# WHEN its session ends (pg_terminate_backend, 57P01) for one key each; under load, connection exhaustion and
# terminated sessions do the same by themselves (notebooks/09-did-this-release-lose-writes.ipynb).
#
# Prints one line per case, e.g. on Kine v0.17.5:
#   acknowledged-but-missing: etcdctl=SUCCESS rows=0
#   reported-failed-but-written: etcdctl=FAILURE rows=1 sessions_ended=1
# and on v0.17.2:
#   acknowledged-but-missing: etcdctl=ERROR rows=0
#   reported-failed-but-written: etcdctl=SUCCESS rows=1 sessions_ended=0
set -eu
: "${KINE:?set KINE to a kine binary}" "${PGUSER:?set PGUSER (a superuser), PGPASSWORD, PGHOST, PGPORT}"
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PORT=${PORT:-23790}
DB=kine_repro_$$
WORK=$(mktemp -d)
export PGHOST PGPORT PGUSER
ETCDCTL="etcdctl --endpoints=127.0.0.1:$PORT --command-timeout=10s"

sql() { psql -X -q -t -A -v ON_ERROR_STOP=1 -d "$DB" "$@"; }
create() {  # a create as kube-apiserver makes it: Txn(MOD(key) == 0, [Put key value])
    printf 'mod("%s") = "0"\n\nput %s %s\n\n\n' "$1" "$1" "$2" | $ETCDCTL txn >"$WORK/txn.out" 2>&1 || true
    if grep -q '^SUCCESS' "$WORK/txn.out"; then echo SUCCESS
    elif grep -q '^FAILURE' "$WORK/txn.out"; then echo FAILURE
    else echo ERROR; fi
}
rows() { sql -c "SELECT count(*) FROM kine WHERE name = '$1'"; }
cleanup() {
    [ -n "${KINE_PID:-}" ] && kill "$KINE_PID" 2>/dev/null && wait "$KINE_PID" 2>/dev/null
    psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "CREATE DATABASE $DB"
KINE_ENDPOINT="postgres://$PGUSER:$PGPASSWORD@$PGHOST:$PGPORT/$DB?sslmode=disable" \
    "$KINE" --listen-address="127.0.0.1:$PORT" --metrics-bind-address=0 >"$WORK/kine.log" 2>&1 &
KINE_PID=$!
tries=0
until $ETCDCTL get /registry/health >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -lt 60 ] || { echo "kine did not start:" >&2; tail -5 "$WORK/kine.log" >&2; exit 2; }
    sleep 0.5
done

# 1. The INSERT fails while reads work.
sql <<'SQL'
CREATE FUNCTION repro_refuse() RETURNS trigger LANGUAGE plpgsql AS
    $$BEGIN RAISE EXCEPTION 'insert refused by repro.sh' USING ERRCODE = '53300'; END$$;
CREATE TRIGGER repro_refuse BEFORE INSERT ON kine FOR EACH ROW WHEN (NEW.name = '/repro/lost')
    EXECUTE FUNCTION repro_refuse();
SQL
said=$(create /repro/lost v1)
echo "acknowledged-but-missing: etcdctl=$said rows=$(rows /repro/lost)"

# 2. The INSERT is written, then the session holding Append's transaction ends before its COMMIT.
sql <<'SQL'
CREATE FUNCTION repro_slow() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN PERFORM pg_sleep(3); RETURN NEW; END$$;
CREATE TRIGGER repro_slow BEFORE INSERT ON kine FOR EACH ROW WHEN (NEW.name = '/repro/written')
    EXECUTE FUNCTION repro_slow();
SQL
create /repro/written v1 >"$WORK/said" &
sleep 1
ended=$(sql -c "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
                WHERE datname = current_database() AND state = 'idle in transaction'")
wait $!
echo "reported-failed-but-written: etcdctl=$(cat "$WORK/said") rows=$(rows /repro/written) sessions_ended=$ended"
