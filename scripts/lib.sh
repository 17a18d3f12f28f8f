# Shared steps of scripts/demo and scripts/test: find Python, make the virtual environment,
# make sure the services the tests use are installed and running. Sourced, not run.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"

say() { printf '==> %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

APT_UPDATED=""
apt_install() {
  if [ -z "$APT_UPDATED" ]; then
    as_root apt-get update -qq
    APT_UPDATED=1
  fi
  say "installing $* from the distribution's packages"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

find_python() {
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"
      return
    fi
  done
  echo "Python 3.11 or newer is required" >&2
  exit 1
}

# ensure_venv EXTRA: the virtual environment with the package installed (EXTRA: "" or "dev").
ensure_venv() {
  local extra=$1 spec="$ROOT" stamp="$VENV/.installed-$1"
  [ -n "$extra" ] && spec="$ROOT[$extra]"
  if [ ! -x "$VENV/bin/python" ]; then
    local python
    python=$(find_python)
    if ! "$python" -m venv "$VENV" 2>/dev/null; then
      rm -rf "$VENV"
      apt_install python3-venv
      "$python" -m venv "$VENV"
    fi
  fi
  if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    say "installing conveyor${extra:+[$extra]} into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e "$spec"
    touch "$stamp"
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 1; done
  echo "nothing listens on 127.0.0.1:$1 after 60 s" >&2
  return 1
}

ensure_postgres() {
  port_open 5432 && return
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    apt_install postgresql
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  say "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_port 5432
  # The tests log in as postgres/postgres over TCP: set that password (harmless under trust).
  as_root su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
}

ensure_redis() {
  port_open 6379 && return
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  say "starting Redis"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port 6379
}

ensure_rabbitmq() {
  if ! port_open 5672; then
    command -v rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
    say "starting RabbitMQ"
    as_root rabbitmq-server -detached
    as_root rabbitmqctl await_startup >/dev/null
    wait_port 5672
  fi
  if ! port_open 15672; then  # the management API: Flower's queue lengths
    say "enabling RabbitMQ's management plugin"
    as_root rabbitmq-plugins enable rabbitmq_management >/dev/null
    wait_port 15672
  fi
}

ensure_tools() {
  command -v docker-compose >/dev/null 2>&1 || apt_install docker-compose
  command -v npm >/dev/null 2>&1 || apt_install nodejs npm  # celery-node producer tests
  command -v chromium >/dev/null 2>&1 || apt_install chromium  # Flower page in a browser
  command -v chromedriver >/dev/null 2>&1 || apt_install chromium-driver
  command -v promtool >/dev/null 2>&1 || apt_install prometheus  # alert rules checked
}
