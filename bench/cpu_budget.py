#!/usr/bin/env python3
"""CPU time per statement of every process on each path (issue #19, item 5).

On a machine where the bench client, the servers and the proxy share the same cores, a path
that keeps every core busy runs at (cores / CPU time per statement), whatever the load: the
throughput ratio of two paths is then the inverse ratio of what a statement costs on each,
summed over every process it goes through. This script measures that sum, per process, from
the kernel's own accounting (user + system time in /proc/<pid>/stat, and the bench client's
rusage), for the paths of bench/compare.sh's first table: straight to m1, HAProxy in TCP mode
in front of m1, the proxy in front of m1 alone, the quick start's proxy (m1 PRIMARY + m2
REPLICA, reads to either) and the cache in front of it.

Usage: python3 bench/cpu_budget.py [statements] [workload]   (default 40000 point-select)
       python3 bench/cpu_budget.py [statements] replicas   (writes with 0 and 2 replicas, below)
The `replicas` mode is the profile of compare.sh's section 3 (single-row INSERTs on a primary
with `synchronous = FULL`, at 1 and 16 clients, first alone, then with two replicas attached):
what each process spends per write, and how busy the machine is, on each side.
DIRKDB_BIN=path uses that binary (default target/release/dirkdb: build it first with
`cargo build --release --locked`). HAProxy is used when `haproxy` is on the machine.
Prints a Markdown table; leaves nothing running.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

TICK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, seconds=20.0):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"port {port} never opened")


def cpu_seconds(pid):
    """User + system time of a live process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3 of stat); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy():
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def run_bench(binary, port, workload, statements, clients=16):
    """Runs `dirkdb bench` and returns (its JSON report, its own CPU seconds)."""
    cmd = [binary, "bench", "--quiet", "--json", "--endpoint", f"127.0.0.1:{port}",
           "-c", str(clients), "-w", workload, "-n", str(statements), "--warmup", "0"]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        sys.exit(f"bench against {port} failed: {' '.join(cmd)}")
    return json.loads(out), usage.ru_utime + usage.ru_stime


def write_configs(work, ports):
    p = ports
    instances = [
        {"id": "m1", "role": "PRIMARY", "host": "127.0.0.1", "port": p["m1"],
         "adminPort": p["a1"], "dataDirectory": f"{work}/m1"},
        {"id": "m2", "role": "REPLICA", "host": "127.0.0.1", "port": p["m2"],
         "adminPort": p["a2"], "dataDirectory": f"{work}/m2"},
    ]
    two = {"instances": instances,
           "loadBalancer": {"listenHost": "127.0.0.1", "listenPort": p["lb"], "adminPort": p["lba"]},
           "cache": {"listenHost": "127.0.0.1", "listenPort": p["cp"], "adminPort": p["ca"],
                     "ttlMillis": 600000, "maxEntries": 20000},
           "replication": {"heartbeatMillis": 500}}
    one = dict(two, instances=instances[:1],
               loadBalancer={"listenHost": "127.0.0.1", "listenPort": p["lb1"], "adminPort": p["lba1"]})
    for name, config in (("two", two), ("one", one)):
        with open(f"{work}/config-{name}.json", "w") as f:
            json.dump(config, f)


def start_haproxy(work, ports, procs):
    if not shutil.which("haproxy"):
        print("HAProxy: skipped: not installed (Debian: apt-get install haproxy)\n")
        return None
    port = free_port()
    with open(f"{work}/haproxy.cfg", "w") as f:
        f.write("global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 5s\n"
                "  timeout client 1h\n  timeout server 1h\n"
                f"frontend dirkdb\n  bind 127.0.0.1:{port}\n  default_backend m1\n"
                f"backend m1\n  server m1 127.0.0.1:{ports['m1']}\n")
    log = open(f"{work}/haproxy.log", "w")
    procs["haproxy"] = subprocess.Popen(["haproxy", "-db", "-f", f"{work}/haproxy.cfg"],
                                        stdout=log, stderr=log)
    wait_port(port)
    return port


def start_cluster(binary, work, procs):
    ports = {k: free_port() for k in ("m1", "m2", "a1", "a2", "lb", "lba", "cp", "ca", "lb1", "lba1")}
    write_configs(work, ports)
    env = dict(os.environ, RUST_LOG="warn")

    def start(name, *args):
        log = open(f"{work}/{name}.log", "w")
        procs[name] = subprocess.Popen([binary, *args], stdout=log, stderr=log, env=env)

    start("m1", "server", "--config", f"{work}/config-two.json", "--instance", "m1")
    start("m2", "server", "--config", f"{work}/config-two.json", "--instance", "m2")
    wait_port(ports["m1"])
    wait_port(ports["m2"])
    start("proxy (2)", "proxy", "--config", f"{work}/config-two.json")
    start("proxy (1)", "proxy", "--config", f"{work}/config-one.json")
    start("cache", "cache", "--config", f"{work}/config-two.json")
    for key in ("lb", "lb1", "cp"):
        wait_port(ports[key])
    subprocess.run([binary, "bench", "--quiet", "--json", "--endpoint", f"127.0.0.1:{ports['m1']}",
                    "--init", "--scale", "1", "-n", "1"], check=True, stdout=subprocess.DEVNULL)
    time.sleep(1.0)  # the replica applies the initial rows
    return ports


def measure(binary, procs, via, port, workload, statements, clients=16):
    """One path: a warm-up pass, then `statements` measured; returns the table's row."""
    run_bench(binary, port, workload, min(statements, 20000), clients)
    before = {name: cpu_seconds(p.pid) for name, p in procs.items()}
    busy0, total0 = machine_busy()
    report, bench_cpu = run_bench(binary, port, workload, statements, clients)
    busy1, total1 = machine_busy()
    after = {name: cpu_seconds(p.pid) for name, p in procs.items()}
    per = {name: (after[name] - before[name]) * 1e6 / statements for name in procs}
    per["bench client"] = bench_cpu * 1e6 / statements
    return {"via": via, "ops": report["ops_per_sec"], "per": per,
            "busy": (busy1 - busy0) / max(1, total1 - total0)}


def print_table(rows, names):
    print(f"CPU time per statement (µs, user + system), {CORES} cores. 'bound' is cores ÷ the sum:")
    print("the rate the path would reach if CPU were all that limits it.\n")
    print("| path | ops/s | machine busy | " + " | ".join(names) + " | sum µs | bound ops/s | ops/s ÷ bound |")
    print("|---|---|---|" + "---|" * len(names) + "---|---|---|")
    for r in rows:
        total = sum(r["per"].values())
        bound = CORES * 1e6 / total if total else 0
        cells = " | ".join("%.1f" % r["per"][n] if r["per"][n] >= 0.05 else "·" for n in names)
        print("| %s | %.0f | %.0f %% | %s | %.1f | %.0f | %.2f |" % (
            r["via"], r["ops"], 100 * r["busy"], cells, total, bound, r["ops"] / bound if bound else 0))


def replica_synced(admin_port, primary_admin):
    """True when the replica behind `admin_port` stands at the primary's committed position."""
    import urllib.request

    def get(port, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return json.loads(r.read())
    try:
        mine = get(admin_port, "/health")["committedSequence"]
        theirs = get(primary_admin, "/health")["committedSequence"]
    except (OSError, KeyError, ValueError):
        return False
    return mine >= theirs


def replicas_profile(binary, statements):
    """compare.sh's section 3 with each process's CPU per write: alone, then two replicas."""
    work = tempfile.mkdtemp()
    procs = {}
    ports = {k: free_port() for k in ("m1", "m2", "m3", "a1", "a2", "a3")}
    instances = [{"id": f"m{i}", "role": "PRIMARY" if i == 1 else "REPLICA", "host": "127.0.0.1",
                  "port": ports[f"m{i}"], "adminPort": ports[f"a{i}"],
                  "dataDirectory": f"{work}/m{i}"} for i in (1, 2, 3)]
    with open(f"{work}/config.json", "w") as f:
        json.dump({"instances": instances, "replication": {"heartbeatMillis": 500}}, f)
    env = dict(os.environ, RUST_LOG="warn")

    def start(name):
        log = open(f"{work}/{name}.log", "w")
        procs[name] = subprocess.Popen([binary, "server", "--config", f"{work}/config.json",
                                        "--instance", name], stdout=log, stderr=log, env=env)
        wait_port(ports[name])
    try:
        start("m1")
        subprocess.run([binary, "bench", "--quiet", "--json", "--endpoint",
                        f"127.0.0.1:{ports['m1']}", "--init", "--scale", "1", "-n", "1"],
                       check=True, stdout=subprocess.DEVNULL)
        print(f"single-row INSERTs, {statements} per row after a warm-up pass, storage.synchronous "
              f"= FULL; load at the start {os.getloadavg()[0]:.1f}\n")
        rows = [measure(binary, procs, f"no replica, {c} client{'s' if c > 1 else ''}",
                        ports["m1"], "insert", statements, c) for c in (1, 16)]
        start("m2")
        start("m3")
        deadline = time.time() + 120
        while not all(replica_synced(ports[a], ports["a1"]) for a in ("a2", "a3")):
            if time.time() > deadline:
                sys.exit("the replicas never caught up")
            time.sleep(0.2)
        rows += [measure(binary, procs, f"2 replicas, {c} client{'s' if c > 1 else ''}",
                         ports["m1"], "insert", statements, c) for c in (1, 16)]
        for r in rows:
            for name in procs:
                r["per"].setdefault(name, 0.0)
        print_table(rows, ["bench client"] + list(procs))
        print()
        for c, i in ((1, 0), (16, 1)):
            print(f"{c} client(s): 2 replicas ÷ none = {rows[i + 2]['ops'] / rows[i]['ops']:.2f}")
    finally:
        for p in procs.values():
            p.kill()
        shutil.rmtree(work, ignore_errors=True)


def main():
    statements = int(sys.argv[1]) if len(sys.argv) > 1 else 40000
    workload = sys.argv[2] if len(sys.argv) > 2 else "point-select"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    binary = os.environ.get("DIRKDB_BIN", f"{root}/target/release/dirkdb")
    if not os.access(binary, os.X_OK):
        sys.exit(f"no binary at {binary}: cargo build --release --locked")
    if workload == "replicas":
        replicas_profile(binary, statements)
        return
    work = tempfile.mkdtemp()
    procs = {}
    try:
        ports = start_cluster(binary, work, procs)
        hp = start_haproxy(work, ports, procs)
        paths = [("direct", ports["m1"])]
        if hp:
            paths.append(("HAProxy-TCP", hp))
        paths += [("proxy (1)", ports["lb1"]), ("proxy (2)", ports["lb"]), ("cache+proxy (2)", ports["cp"])]
        print(f"{workload}, {statements} statements per path after a warm-up pass, 16 clients; "
              f"load at the start {os.getloadavg()[0]:.1f}\n")
        rows = [measure(binary, procs, via, port, workload, statements) for via, port in paths]
        names = ["bench client"] + list(procs)
        print_table(rows, names)
    finally:
        for p in procs.values():
            p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
