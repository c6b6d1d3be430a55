#!/usr/bin/env python3
"""CPU time per statement of a primary alone, user and system apart (issue #20, item 4).

Starts m1 alone on a new data directory, loads `dirkbench.bench` (10,000 rows), warms up with
2,000 statements, then runs N statements of the workload with 16 clients and prints m1's user
and system CPU per statement (from /proc/<pid>/stat) and the throughput. Use it to compare two
builds on the same machine: run them in turn, several rounds.

Usage: python3 bench/primary_cpu.py [statements] [workload]   (default 20000 update)
Environment: DIRKDB_BIN (default target/release/dirkdb), SYNC (storage.synchronous, default
FULL), PRE (a command the server runs under, e.g. "perf record -g -o /tmp/perf.data --"; the CPU
figures are then that command's, so read the profile instead).
Leaves nothing running.
"""

import json
import os
import subprocess
import sys
import tempfile

from cpu_budget import free_port, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("DIRKDB_BIN", os.path.join(HERE, "..", "target", "release", "dirkdb"))
TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid):
    """(user, system) seconds of a live process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def bench(port, workload, statements, init=False):
    cmd = [BIN, "bench", "--quiet", "--json", "--endpoint", f"127.0.0.1:{port}", "-c", "16",
           "-n", str(statements), "-w", workload]
    cmd += ["--init", "--scale", "1"] if init else ["--warmup", "0"]
    return json.loads(subprocess.run(cmd, check=True, stdout=subprocess.PIPE).stdout)


def main():
    statements = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    workload = sys.argv[2] if len(sys.argv) > 2 else "update"
    sync = os.environ.get("SYNC", "FULL")
    if not os.access(BIN, os.X_OK):
        sys.exit(f"no binary at {BIN}: cargo build --release --locked")
    with tempfile.TemporaryDirectory() as work:
        port, admin = free_port(), free_port()
        config = {"instances": [{"id": "m1", "role": "PRIMARY", "host": "127.0.0.1",
                                 "port": port, "adminPort": admin,
                                 "dataDirectory": f"{work}/m1"}],
                  "storage": {"synchronous": sync}}
        with open(f"{work}/config.json", "w") as f:
            json.dump(config, f)
        pre = os.environ.get("PRE", "").split()
        server = subprocess.Popen(pre + [BIN, "server", "--config", f"{work}/config.json",
                                         "--instance", "m1"],
                                  env=dict(os.environ, RUST_LOG="warn"))
        try:
            wait_port(port)
            bench(port, workload, 2000, init=True)
            user0, sys0 = cpu(server.pid)
            report = bench(port, workload, statements)
            user1, sys1 = cpu(server.pid)
        finally:
            server.terminate()
            server.wait()
    print(f"{workload}, synchronous={sync}, 16 clients: {report['ops_per_sec']:.0f} ops/s; "
          f"m1 user {1e6 * (user1 - user0) / statements:.0f} us, "
          f"system {1e6 * (sys1 - sys0) / statements:.0f} us per statement")


if __name__ == "__main__":
    main()
