# Sourced by bench scripts: the quick start's topology (m1 PRIMARY + m2 REPLICA, the proxy, the
# cache in front of it) on free ports and fresh data directories under $work, run with $bin.
# The caller sets `bin`, `work` and `pids=()` and removes them on exit. After `quickstart_up`:
# P1/A1 and P2/A2 (m1's and m2's client and admin ports), LB/LBA (the proxy), CP/CA (the cache);
# pids holds m1, m2, the proxy and the cache in that order; `dirkbench.bench` has 10,000 rows.
# QS_EXTRA adds top-level sections to the config, e.g.
# QS_EXTRA='"replication": { "oplog": { "changeFeedRowImageBytes": 0 } }' (no row images).

port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do (echo >/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
# Starts `dirkdb ARGS` in the background, its log in $work/log; its pid goes to pids.
start() { RUST_LOG=warn "$bin" "$@" 2>>"$work/log" & pids+=($!); disown; }

quickstart_up() {
  P1=$(port); P2=$(port); A1=$(port); A2=$(port); LB=$(port); LBA=$(port); CP=$(port); CA=$(port)
  cat > "$work/config.json" <<JSON
{ "instances": [
  { "id": "m1", "role": "PRIMARY", "host": "127.0.0.1", "port": $P1, "adminPort": $A1, "dataDirectory": "$work/m1" },
  { "id": "m2", "role": "REPLICA", "host": "127.0.0.1", "port": $P2, "adminPort": $A2, "dataDirectory": "$work/m2" } ],
  "loadBalancer": { "listenHost": "127.0.0.1", "listenPort": $LB, "adminPort": $LBA },
  "cache": { "listenHost": "127.0.0.1", "listenPort": $CP, "adminPort": $CA, "ttlMillis": 600000, "maxEntries": 20000 }${QS_EXTRA:+, $QS_EXTRA} }
JSON
  start server --config "$work/config.json" --instance m1
  start server --config "$work/config.json" --instance m2
  wait_port $P1; wait_port $P2
  start proxy --config "$work/config.json"; wait_port $LB
  start cache --config "$work/config.json"; wait_port $CP
  "$bin" bench --quiet --json --endpoint 127.0.0.1:$P1 --init --scale 1 -n 1 -w point-select >/dev/null
  sleep 1
}
