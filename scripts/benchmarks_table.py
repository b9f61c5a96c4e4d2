#!/usr/bin/env python3
"""Turns scripts/compare.sh's results (JSON lines) into BENCHMARKS.md: medians per server and figure,
with Rookery's ratio to the best of the others."""
import json
import platform
import statistics
import subprocess
import sys
from collections import defaultdict

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
values = defaultdict(list)  # (figure, server) -> [values]

FIGURES = [
    # (key, label, scenario filter, metric, higher is better)
    ("login", "logins/s, SCRAM, plain TCP", lambda r: r["scenario"] == "login" and not r["tls"], "logins_per_s", True),
    ("login-cpu", "server CPU per login (ms), plain", lambda r: r["scenario"] == "login" and not r["tls"], "server_cpu_ms_per_login", False),
    ("login-tls", "logins/s, SCRAM, STARTTLS", lambda r: r["scenario"] == "login" and r["tls"], "logins_per_s", True),
    ("login-tls-cpu", "server CPU per login (ms), STARTTLS", lambda r: r["scenario"] == "login" and r["tls"], "server_cpu_ms_per_login", False),
    ("chat", "chat closed loop: delivered msg/s", lambda r: r["scenario"] == "chat" and r["mode"] == "closed", "msg_per_s", True),
    ("chat-cpu", "chat closed loop: server CPU per msg (µs)", lambda r: r["scenario"] == "chat" and r["mode"] == "closed", "server_cpu_us_per_msg", False),
    ("chat-loss", "chat: lost + duplicated + out of order", lambda r: r["scenario"] == "chat", None, False),
    ("open-p50", "chat at 1,000 msg/s: latency p50 (ms)", lambda r: r["scenario"] == "chat" and r["mode"] == "open" and r["rate"] <= 1000, "latency_ms_p50", False),
    ("open-p99", "chat at 1,000 msg/s: latency p99 (ms)", lambda r: r["scenario"] == "chat" and r["mode"] == "open" and r["rate"] <= 1000, "latency_ms_p99", False),
    ("open5-p50", "chat at 5,000 msg/s: latency p50 (ms)", lambda r: r["scenario"] == "chat" and r["mode"] == "open" and r["rate"] > 1000, "latency_ms_p50", False),
    ("open5-p99", "chat at 5,000 msg/s: latency p99 (ms)", lambda r: r["scenario"] == "chat" and r["mode"] == "open" and r["rate"] > 1000, "latency_ms_p99", False),
    ("offline", "offline: stored msg/s", lambda r: r["scenario"] == "offline", "stored_msg_per_s", True),
    ("drain", "offline: drain time (s)", lambda r: r["scenario"] == "offline", "drain_s", False),
    ("muc", "MUC rooms × occupants: deliveries/s", lambda r: r["scenario"] == "muc" and r["rooms"] > 1, "msg_per_s", True),
    ("muc-cpu", "MUC: server CPU per delivery (µs)", lambda r: r["scenario"] == "muc" and r["rooms"] > 1, "server_cpu_us_per_msg", False),
    ("muc-p99", "MUC: latency p99 (ms)", lambda r: r["scenario"] == "muc" and r["rooms"] > 1, "latency_ms_p99", False),
    ("muc-loss", "MUC: lost + duplicated + out of order", lambda r: r["scenario"] == "muc", None, False),
    ("idle", "memory per idle session (KiB), plain", lambda r: r["scenario"] == "idle" and not r["tls"], "kib_per_session", False),
    ("idle-tls", "memory per idle session (KiB), TLS", lambda r: r["scenario"] == "idle" and r["tls"], "kib_per_session", False),
]

servers = []
args_of = {}
for row in rows:
    server, result = row["server"], row["result"]
    if server not in servers:
        servers.append(server)
    for key, _, keep, metric, _ in FIGURES:
        if keep(result):
            value = sum(result.get(k, 0) for k in ("lost", "duplicated", "out_of_order")) if metric is None else result[metric]
            values[(key, server)].append(value)
            args_of.setdefault(key, row["args"])


def fmt(v):
    return "–" if v is None else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}")


print("# Benchmarks: Rookery, Prosody and ejabberd side by side\n")
print("Produced by `scripts/compare.sh` (medians of the runs; one machine, one run, servers one after")
print("another, load generator `rookery-bench` on the same machine). Do not edit by hand.\n")
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2; nproc"], capture_output=True, text=True).stdout.split("\n")
print(f"- machine: {cpu[0].strip()}, {cpu[1].strip()} cores, {platform.system()} {platform.release()}")
print("- SASL: Rookery SCRAM-SHA-256, Prosody and ejabberd SCRAM-SHA-1 (what their Debian builds offer);")
print("  4096 PBKDF2 iterations everywhere; the load generator keeps salted passwords, as clients do")
print("- server CPU figures come from /proc (user + system time of the server process)")
print(f"- runs per figure: {max((len(v) for (k, _), v in values.items() if k == 'chat'), default=0)}\n")
header = "| figure | " + " | ".join(servers) + " | Rookery vs best other |"
print(header)
print("|" + " --- |" * (len(servers) + 2))
for key, label, _, metric, higher in FIGURES:
    medians = {s: statistics.median(values[(key, s)]) if values.get((key, s)) else None for s in servers}
    ratio = "–"
    others = [v for s, v in medians.items() if s != "rookery" and v]
    mine = medians.get("rookery")
    if mine and others and metric is not None:
        best = max(others) if higher else min(others)
        ratio = f"{mine / best:.2f}×" if higher else f"{best / mine:.2f}× better" if mine < best else f"{mine / best:.2f}× worse"
    print(f"| {label} | " + " | ".join(fmt(medians[s]) for s in servers) + f" | {ratio} |")
print("\nScenario arguments:\n")
for key, label, *_ in FIGURES:
    if key in args_of:
        print(f"- {label}: `rookery-bench {args_of[key]}`")

scale = defaultdict(list)  # occupants -> [results], one room, Rookery only
for row in rows:
    result = row["result"]
    if row["server"] == "rookery" and result["scenario"] == "muc" and result["rooms"] == 1:
        scale[result["occupants"]].append(result)
if scale:
    print("\nRookery, one room, by room size (`rookery-bench muc --rooms 1 --occupants N --messages M --window 10`,")
    print("window: messages in flight that some occupant has not seen yet):\n")
    print("| occupants | deliveries/s | server CPU per delivery (µs) | latency p50 (ms) | latency p99 (ms) | lost + dup + reordered |")
    print("| --- | --- | --- | --- | --- | --- |")
    for occupants in sorted(scale):
        runs = scale[occupants]
        med = lambda k: statistics.median(r[k] for r in runs)
        bad = sum(r["lost"] + r["duplicated"] + r["out_of_order"] for r in runs)
        print(f"| {occupants:,} | {fmt(med('msg_per_s'))} | {fmt(med('server_cpu_us_per_msg'))} | {fmt(med('latency_ms_p50'))} | {fmt(med('latency_ms_p99'))} | {bad} |")
