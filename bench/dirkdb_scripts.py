#!/usr/bin/env python3
"""Feeds DirkDB's shipped scripts, statement by statement, to DirkDB's Java server and to ours
(a server, the proxy or the cache), and prints each statement whose answers differ, then the
count of statements answered byte for byte alike (issue #11).

    python3 bench/dirkdb_scripts.py script/a.dirkdb,script/b.dirkdb java=39481,server=3948

Scripts are split as a DirkDB user pastes them: comment lines (`--`, `//`, a `#` line that is
not one of DirkDB's clause words) dropped, statements split at `;`. Every database on both sides
is dropped first. How to build and run DirkDB's Java server: docs/dirkdb-compatibility.md."""
import re, socket, sys, json

KEYWORDS = ("ao", "rehefa", "tonona", "ka", "vondrona", "fetra", "limit", "antso", "ankambana",
            "analana", "atifitra", "sanda", "ary", "na")

def statements(text):
    kept = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("--") or s.startswith("//"):
            continue
        if s.startswith("#"):
            word = re.match(r"#\s*([A-Za-z]*)", s).group(1).lower()
            if not any(word.startswith(k) for k in KEYWORDS):
                continue
        kept.append(line)
    return [p.strip() for p in "\n".join(kept).split(";") if p.strip()]

class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.settimeout(20)
        self.buf = b""
    def ask(self, stmt):
        self.s.sendall(stmt.encode() + b";\n")
        lines = []
        while True:
            while b"\n" not in self.buf:
                d = self.s.recv(65536)
                if not d:
                    return "\n".join(lines) + "\n<closed>"
                self.buf += d
            line, self.buf = self.buf.split(b"\n", 1)
            line = line.decode(errors="replace")
            lines.append(line)
            if line == "END":
                return "\n".join(lines)

def main():
    scripts = sys.argv[1].split(",")
    ports = dict(p.split("=") for p in sys.argv[2].split(","))
    conns = {name: Conn(int(port)) for name, port in ports.items()}
    for c in conns.values():  # a fresh start on every side: drop every database
        listed = c.ask("asehoy ny tahiry")
        for line in listed.splitlines():
            if line.startswith("{"):
                for row in json.loads(line)["rows"]:
                    c.ask("ravao ny tahiry " + row[0])
    total = same = 0
    report = []
    for path in scripts:
        for stmt in statements(open(path).read()):
            total += 1
            answers = {name: c.ask(stmt) for name, c in conns.items()}
            java = answers["java"]
            ours = {n: a for n, a in answers.items() if n != "java"}
            agree = len(set(ours.values())) == 1
            if java == next(iter(ours.values())) and agree:
                same += 1
            else:
                report.append((path.split("/")[-1], stmt, answers, agree))
    for script, stmt, answers, agree in report:
        print("=" * 100)
        print(f"[{script}] {stmt}")
        print(f"-- ours agree across {'/'.join(a for a in answers if a != 'java')}: {agree}")
        for n, a in answers.items():
            print(f"-- {n}:\n{a}")
    print(f"\n{same} of {total} statements answer byte for byte as DirkDB's Java server; "
          f"ours agree across parts on {total - sum(1 for r in report if not r[3])} of {total}")

main()
