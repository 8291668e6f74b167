#!/usr/bin/env bash
# A local PostgreSQL for the run store's Postgres tests: installs Debian's postgresql if missing, starts
# its cluster (Debian's default listen_addresses is localhost: loopback only), and makes a role and a
# database for the tests. Safe to run again: each step is skipped when already done.
#
# The last stdout line is the URL to export; everything else goes to stderr:
#   export DSMOE_TEST_POSTGRES=$(.ci/postgres.sh)
# Role, database and password can be changed with DSMOE_PG_USER, DSMOE_PG_DB, DSMOE_PG_PASSWORD.
set -euo pipefail

user=${DSMOE_PG_USER:-dsmoe_test}
db=${DSMOE_PG_DB:-dsmoe_test}
password=${DSMOE_PG_PASSWORD:-dsmoe_test}
for name in "$user" "$db"; do
  [[ $name =~ ^[a-z_][a-z0-9_]*$ ]] || { echo "postgres.sh: bad name \"$name\" (use a-z, 0-9, _)" >&2; exit 2; }
done
[[ $password =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "postgres.sh: use letters, digits, _ . - in the password" >&2; exit 2; }

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  echo "postgres.sh: installing Debian's postgresql" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
fi
version=$(ls /usr/lib/postgresql | sort -V | tail -1)

# The newest version's first cluster, created if there is none.
cluster=$(pg_lsclusters -h | awk -v v="$version" '$1 == v { print $2; exit }')
if [ -z "$cluster" ]; then
  cluster=main
  echo "postgres.sh: creating cluster $version/$cluster" >&2
  pg_createcluster "$version" "$cluster" >&2
fi
status=$(pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1 == v && $2 == c { print $4 }')
if [ "$status" != online ]; then
  echo "postgres.sh: starting cluster $version/$cluster" >&2
  pg_ctlcluster "$version" "$cluster" start >&2
fi
port=$(pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1 == v && $2 == c { print $3 }')

as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi
}
psql_admin() {
  as_postgres psql -p "$port" -X -q -v ON_ERROR_STOP=1 -At "$@"
}

if [ -z "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$user'")" ]; then
  echo "postgres.sh: creating role $user" >&2
  psql_admin -c "CREATE ROLE $user LOGIN"
fi
psql_admin -c "ALTER ROLE $user PASSWORD '$password'"
if [ -z "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]; then
  echo "postgres.sh: creating database $db" >&2
  psql_admin -c "CREATE DATABASE $db OWNER $user ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
fi

url="postgres://$user:$password@127.0.0.1:$port/$db"
# Check what the tests will do: log in over TCP on loopback with the password.
PGPASSWORD=$password psql "postgres://$user@127.0.0.1:$port/$db" -X -q -At -c "SELECT 1" >/dev/null
echo "postgres.sh: PostgreSQL $version ready at postgres://$user@127.0.0.1:$port/$db" >&2
echo "$url"
