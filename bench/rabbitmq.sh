#!/usr/bin/env bash
# RabbitMQ transactions peer: a private rabbitmq-server on loopback (own ports, own data,
# own epmd, own cookie), then bench/rabbitmq_txn.py for N=1 and N=100 messages per
# transaction, `runs` times each, printing every run and the medians.
#   bench/rabbitmq.sh [runs=3] [messages_n1=10000] [messages_n100=60000]
# Needs: apt-get install -y rabbitmq-server; pip install pika.
set -euo pipefail
cd "$(dirname "$0")"
runs="${1:-3}"
messages_n1="${2:-10000}"
messages_n100="${3:-60000}"
rmq=/usr/lib/rabbitmq/bin   # not /usr/sbin: those wrappers su to the rabbitmq user and /var/lib

work=$(mktemp -d /tmp/strata-bench-rabbitmq.XXXXXX)
# Four distinct free ports: AMQP, Erlang distribution, epmd, and the CLI tools' distribution.
read -r amqp_port dist_port epmd_port ctl_port < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(4)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')

export HOME="$work"   # Erlang writes its own .erlang.cookie here, shared by server and CLI
export RABBITMQ_NODENAME="strata-bench-$$@localhost"
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$amqp_port"
export RABBITMQ_DIST_PORT="$dist_port" ERL_EPMD_PORT="$epmd_port" ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_CTL_DIST_PORT_MIN="$ctl_port" RABBITMQ_CTL_DIST_PORT_MAX="$ctl_port"
export RABBITMQ_MNESIA_BASE="$work/mnesia" RABBITMQ_LOG_BASE="$work/log"
# Keep /etc/rabbitmq out of it: no env file, config or plugins of the system's node.
export RABBITMQ_CONF_ENV_FILE="$work/rabbitmq-env.conf" RABBITMQ_CONFIG_FILE="$work/rabbitmq"
export RABBITMQ_ENABLED_PLUGINS_FILE="$work/enabled_plugins"
mkdir -p "$RABBITMQ_MNESIA_BASE" "$RABBITMQ_LOG_BASE"
echo '[].' > "$RABBITMQ_ENABLED_PLUGINS_FILE"

server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then
    "$rmq/rabbitmqctl" -n "$RABBITMQ_NODENAME" stop >/dev/null 2>&1 || kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  epmd -port "$epmd_port" -kill >/dev/null 2>&1 || true   # the epmd this node started
  rm -rf "$work"
}
trap cleanup EXIT

"$rmq/rabbitmq-server" > "$work/server.out" 2>&1 &
server_pid=$!

# Ready when the AMQP port takes a connection (the listener opens last in boot).
deadline=$((SECONDS + 120))
until python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $amqp_port), 1)" 2>/dev/null; do
  if ! kill -0 "$server_pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
    echo "rabbitmq-server did not come up:" >&2; tail -20 "$work/server.out" "$work"/log/*.log >&2
    exit 1
  fi
  sleep 0.1
done

rmq_version=$("$rmq/rabbitmqctl" -n "$RABBITMQ_NODENAME" version 2>/dev/null || echo '?')
erl_version=$(erl -noshell -eval 'io:format("~s",[erlang:system_info(otp_release)]),halt().')
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
  "RabbitMQ $rmq_version, Erlang/OTP $erl_version, node $RABBITMQ_NODENAME on 127.0.0.1:$amqp_port"

median() { # file, mode, field
  grep "^mode=$2 " "$1" | sed -n "s/.* $3=\([0-9.]*\).*/\1/p" | sort -g \
    | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'
}

for n in 1 100; do
  messages=$([ "$n" = 1 ] && echo "$messages_n1" || echo "$messages_n100")
  out="$work/n$n.txt"
  for _ in $(seq 1 "$runs"); do
    python3 rabbitmq_txn.py --port "$amqp_port" --n "$n" --messages "$messages" | tee -a "$out"
  done
  echo "median of $runs: mode=txn n=$n txns_per_s=$(median "$out" txn txns_per_s)" \
    "msgs_per_s=$(median "$out" txn msgs_per_s) commit_p50_ms=$(median "$out" txn commit_p50_ms)" \
    "commit_p99_ms=$(median "$out" txn commit_p99_ms)"
  echo "median of $runs: mode=plain n=$n msgs_per_s=$(median "$out" plain msgs_per_s)"
done
