"""Programs the benchmark runs as child processes, one file each (run by path, never imported)."""
