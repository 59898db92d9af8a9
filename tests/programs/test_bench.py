"""The benchmark (python -m streamfs_fuse.bench) runs end to end at quick sizes, started
by scripts/bench; it measures, tests do not time."""

import json
import subprocess
from pathlib import Path

#: Executed directly: its shebang and its hand-over to the package are under test too.
BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench"


def test_an_unknown_section_is_a_one_line_error(tmp_path):
    result = subprocess.run([BENCH, "--only", "throughput,nope", "--out", tmp_path],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("bench: no section nope (--only takes throughput,")
    assert result.stderr.count("\n") == 1


def test_quick_benchmark_runs_every_workload(tmp_path, fuse_device):
    result = subprocess.run([BENCH, "--quick", "--repeats", "1", "--out", tmp_path],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads((tmp_path / "results.json").read_text())
    expected = {"throughput_1 MiB", "throughput_1 MiB_pipe", "throughput_128 KiB",
                "throughput_128 KiB_pipe", "fanout_4", "fanout_4_tee", "latency_1_pipe",
                "latency_1", "memory_idle_readers", "flood_no_stalled", "flood_stalled",
                "idle_cpu", "drop_policy", "http_1", "http_4", "http_latency_16", "scale",
                "http_stalled", "http_idle_readers", "join_late", "join_index_throughput_1 MiB",
                "join_index_throughput_1 MiB_pipe", "join_index_cpu_ts", "join_index_cpu_nonts"}
    assert expected <= set(document["results"])
    assert len(document["table"]) >= 13
    left = [line for line in Path("/proc/mounts").read_text().splitlines()
            if "streamfs-bench-" in line]
    assert left == []
