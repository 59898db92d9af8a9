"""The run's results and its table: repeats and medians, one printed row per
figure, progress on stderr, and bench.png."""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def gbs(value: float) -> str:
    return f"{value / 1e9:.2f} GB/s"


def mbs(value: float) -> str:
    return f"{value / 1e6:.0f} MB/s"


def verdict(ok: bool, text: str) -> str:
    return f"{'met' if ok else 'MISSED'}: {text}"


def median_of(runs: list):
    """The median of numbers, or of each key of dicts with the same keys."""
    if isinstance(runs[0], dict):
        return {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    return statistics.median(runs)


HEADER = (f"  {'workload':<42} {'streamfs-fuse':>20} {'reference (x: ours/ref)':>28}"
          f" {'baseline (x: ours/it)':>32}   target")


@dataclass
class Report:
    repeats: int
    results: dict = field(default_factory=dict)
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    #: The sections this run measures, in order, and how many have begun.
    sections: list[str] = field(default_factory=list)
    begun: int = 0
    started: float = field(default_factory=time.monotonic)
    #: When the section under way began, in seconds since ``started``.
    section_began: float = 0.0

    def begin(self, section: str) -> None:
        self.begun += 1
        self.section_began = time.monotonic() - self.started
        self.progress(section)

    def progress(self, what: str) -> None:
        """Where the run is, on stderr: section k of n, and the time left.

        The time left assumes the sections still to come take as long as the
        finished ones did on average: a guess, shown once one section is done.
        """
        elapsed = time.monotonic() - self.started
        done = self.begun - 1
        guess = (self.section_began / done * (len(self.sections) - done)
                 - (elapsed - self.section_began)) if done else 0
        left = f", about {minutes(max(0, guess))} left" if done else ""
        print(f"bench: [{self.begun}/{len(self.sections)}] {what}; {minutes(elapsed)} elapsed"
              f"{left}", file=sys.stderr, flush=True)

    def rounds(self, name):
        """The repeats of workload ``name``, each announced."""
        for repeat in range(self.repeats):
            if self.sections:
                self.progress(f"{self.sections[self.begun - 1]}: {name}, round {repeat + 1}"
                              f"/{self.repeats}")
            yield repeat

    def measure(self, name, fn, *args):
        """``fn(*args)`` once per repeat; stores the runs and their median under ``name``
        and returns the median."""
        runs = [fn(*args) for _ in self.rounds(name)]
        self.results[name] = {"median": (median := median_of(runs)), "runs": runs}
        return median

    def compare(self, name, systems):
        """Each of ``systems`` ((key suffix, fn, *args)) once per repeat, interleaved
        (rep 1: ours, reference, pipe; rep 2: ...); stores ``name + suffix`` as measure
        does and returns the medians, in order."""
        runs = {suffix: [] for suffix, *_ in systems}
        for _ in self.rounds(name):
            for suffix, fn, *args in systems:
                runs[suffix].append(fn(*args))
        medians = []
        for suffix, values in runs.items():
            self.results[name + suffix] = {"median": (median := median_of(values)),
                                           "runs": values}
            medians.append(median)
        return medians

    def row(self, workload, ours, theirs, verdict, reference=""):
        self.rows.append((workload, ours, reference, theirs, verdict))
        print(f"  {workload:<42} {ours:>20} {reference:>28} {theirs:>32}   {verdict}", flush=True)

    def rate_row(self, name, workload, ours, theirs, baseline_name, target):
        """A bytes/s row: ratios to the reference and to pipe/tee (``theirs``: the
        reference's median if any, then the baseline's); a verdict against the reference
        when there is one and the issue sets a ``target``, else "reported"."""
        result = self.results[name]
        *ref, baseline = theirs
        result[f"ratio_vs_{baseline_name}"] = vs_baseline = ours / baseline
        kernel = f"{baseline_name} {gbs(baseline)} {vs_baseline:.2f}x"
        if not ref:
            self.row(workload, gbs(ours), kernel,
                     f"reported: {vs_baseline:.2f}x {baseline_name} (no --reference)")
            return
        result["ratio_vs_reference"] = vs_ref = ours / ref[0]
        outcome = (verdict(vs_ref >= target, f"{vs_ref:.2f}x reference (>= {target}x)")
                   if target else f"reported: {vs_ref:.2f}x reference")
        self.row(workload, gbs(ours), kernel, outcome, f"{gbs(ref[0])} {vs_ref:.2f}x")


def plot(report: Report, path: Path) -> bool:
    """bench.png: fanout and latency; False without matplotlib (the bench extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    results = report.results
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    fanouts = sorted(int(k.split("_")[1]) for k in results
                     if k.startswith("fanout_") and k.split("_")[1].isdigit() and k.count("_") == 1)
    if fanouts:
        for suffix, style, label in [("", "o-", "streamfs-fuse (block)"),
                                     ("_reference", "^-", "reference"),
                                     ("_tee", "s--", "tee into pipes")]:
            if all(f"fanout_{n}{suffix}" in results for n in fanouts):
                left.plot(fanouts, [results[f"fanout_{n}{suffix}"]["median"] / 1e9
                                    for n in fanouts], style, label=label)
        left.set_xscale("log", base=2)
        left.set_xlabel("readers")
        left.set_ylabel("aggregate delivered GB/s")
        left.set_title("Fanout, 1 MiB writes")
        left.legend()

    def system(key):  # latency_N[_reference|_pipe] (and an older run's latency_pipe_1)
        parts = key.split("_")[1:]
        if parts[0] == "pipe":
            return int(parts[1]), 2, "pipe"
        kind = parts[1] if len(parts) > 1 else "streamfs"
        return int(parts[0]), {"streamfs": 0, "reference": 1}.get(kind, 2), kind

    latencies = [k for k in results if k.startswith("latency_")]
    if latencies:
        names = sorted(latencies, key=system)
        x = range(len(names))
        for offset, key in [(-0.25, "p50_ms"), (0, "p99_ms"), (0.25, "max_ms")]:
            right.bar([i + offset for i in x], [results[n]["median"][key] for n in names],
                      width=0.25, label=key.replace("_ms", ""))
        right.set_xticks(list(x), [f"{system(n)[2]}\n{system(n)[0]} rd" for n in names],
                         fontsize=8)
        right.set_yscale("log")
        right.set_ylabel("write-to-read latency, ms")
        right.set_title("Latency, 1 KiB every 1 ms")
        right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True
