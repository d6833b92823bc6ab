#!/usr/bin/env python3
"""CPU seconds by component between two snapshots of /proc — where a benchmark's CPU went.

    scripts/cpu-by-component.py snap > before.json
    ... load ...
    scripts/cpu-by-component.py snap > after.json
    scripts/cpu-by-component.py diff before.json after.json

Components: each thread of a `sagaflow` process by its name (`tokio-rt-worker`: the
platform's code; `broker-worker`: the embedded broker; `rdk:*` and `producer pollin`:
librdkafka), and PostgreSQL backends by database (the last `_` part of its name, so a
`sagaflow bench` run's `bench_<tag>_saga` shows as `pg:saga`), other PostgreSQL processes
by their title. A process or thread born between the snapshots counts from zero; one that
ended is missed, so take the snapshots while the load runs (see docs/benchmarks.md).
"""
import collections
import json
import os
import sys

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_of(stat_path):
    """(name, user + system seconds) from a /proc/<pid>[/task/<tid>]/stat file."""
    with open(stat_path) as f:
        stat = f.read()
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return name, (int(fields[11]) + int(fields[12])) / TICKS


def postgres_component(cmdline):
    """`postgres: <user> <database> <client> <state>` → pg:<database's last part>."""
    words = cmdline.split()[1:]
    if len(words) >= 3 and (words[2].startswith("[") or words[2][:1].isdigit()):
        return "pg:" + words[1].split("_")[-1]
    return "pg:" + " ".join(words[:2])


def snapshot():
    seen = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            name, cpu = cpu_of(f"/proc/{pid}/stat")
        except (OSError, ValueError):
            continue  # ended meanwhile
        if cmdline.startswith("postgres:"):
            seen[pid] = (postgres_component(cmdline), cpu)
        elif name == "sagaflow":
            for tid in os.listdir(f"/proc/{pid}/task"):
                try:
                    thread, cpu = cpu_of(f"/proc/{pid}/task/{tid}/stat")
                except (OSError, ValueError):
                    continue
                # Numbered threads of one pool (`rdk:broker12`) count as one component.
                seen[f"{pid}/{tid}"] = ("sf:" + thread.rstrip("0123456789-#/ "), cpu)
    return seen


def diff(before, after):
    spent = collections.Counter()
    for key, (component, cpu) in after.items():
        spent[component] += cpu - (before[key][1] if key in before else 0)
    total = sum(v for v in spent.values() if v > 0)
    for component, seconds in spent.most_common():
        if seconds >= 0.05:
            print(f"{seconds:8.2f} s  {100 * seconds / total:5.1f} %  {component}")
    print(f"{total:8.2f} s  total")


if __name__ == "__main__":
    if sys.argv[1:2] == ["snap"]:
        json.dump(snapshot(), sys.stdout)
    elif sys.argv[1:2] == ["diff"] and len(sys.argv) == 4:
        with open(sys.argv[2]) as a, open(sys.argv[3]) as b:
            diff(json.load(a), json.load(b))
    else:
        sys.exit(__doc__)
