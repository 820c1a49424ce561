"""What the graph costs at rest: the CPU each process of the local Ray cluster uses while the
graph, deployed as benchmarks/serving.py runs it, serves nothing. On a small CPU machine this
background is a share of every core that requests never get. Writes idle_cpu.json and
idle_cpu.md to --out.

    python -m benchmarks.idle_cpu --out benchmarks/results

The checkpoint has RANDOM weights (the hub cannot be reached); no request is sent, so only the
processes' background work is measured.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from benchmarks.serving import (REPO, add_graph_arguments, graph_setting, machine, preset_checkpoint,
                                ray_cpu_seconds, serve_config, serve_graph, wait_until_idle, write_report)

SETTLE_S = 20


def process_name(command: str) -> str:
    """`ray::ServeReplica:app:Ingress`, `ray::ServeController`, or the program's file name
    (`raylet`, `gcs_server`, `log_monitor.py`...)."""
    words = command.split()
    if words[0].startswith("ray::"):
        return words[0].split(".")[0]  # a busy actor's title adds the method it runs
    program = Path(words[0]).name
    if program.startswith("python"):  # the script it runs, past options such as -u
        program = next((Path(word).name for word in words[1:] if not word.startswith("-")), program)
    return program


def idle_cores(seconds: float) -> tuple[Counter, Counter]:
    """Per process name: the cores used on average over `seconds`, and how many processes."""
    before = ray_cpu_seconds(process_name)
    time.sleep(seconds)
    after = ray_cpu_seconds(process_name)
    cores, count = Counter(), Counter()
    for pid, (name, used) in after.items():
        if pid in before:  # a process started meanwhile is not idle background
            cores[name] += (used - before[pid][1]) / seconds
            count[name] += 1
    return cores, count


def markdown(report: dict) -> str:
    lines = [f"Machine: {report['machine']}; checkpoint `{report['preset']}` (random weights); "
             f"graph: {report['graph_encoders']}; measured over {report['seconds']:g} s with no "
             "request in flight.", "", f"Command: `{report['command']}`", "",
             f"All processes: **{report['total_cores']:.3f} cores**.", "",
             "| process | count | cores |", "|---|---:|---:|"]
    lines += [f"| {row['process']} | {row['count']} | {row['cores']:.4f} |" for row in report["rows"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base", choices=["tiny", "base", "so400m"])
    parser.add_argument("--seconds", type=float, default=60, help="how long to measure")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    add_graph_arguments(parser)
    args = parser.parse_args()

    config = serve_config()
    with serve_graph(config, preset_checkpoint(args.preset), args):
        # Replicas keep importing and warming up for a while after Serve reports them running,
        # and Serve's first autoscaling and health-check rounds follow.
        wait_until_idle(ray_cpu_seconds)
        time.sleep(SETTLE_S)
        cores, count = idle_cores(args.seconds)
    rows = [{"process": name, "count": count[name], "cores": round(used, 4)}
            for name, used in cores.most_common()]
    report = {"machine": machine(), "graph_encoders": graph_setting(args), "preset": args.preset,
              "seconds": args.seconds, "command": "python -m benchmarks.idle_cpu " + " ".join(sys.argv[1:]),
              "total_cores": round(sum(cores.values()), 4), "rows": rows}
    write_report(args.out, "idle_cpu", report, markdown(report))


if __name__ == "__main__":
    main()
