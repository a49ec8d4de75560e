"""Reading a source in a fresh interpreter to measure what it holds: the peak memory the reading adds
(from VmHWM, which starts afresh at exec, unlike ru_maxrss, which a child starts from its parent's) under
a bounded address space, so that a reader that would swell fails instead of eating the machine."""

from __future__ import annotations

import json
import subprocess
import sys

PEAK = """
import re

def peak():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
"""
"""Source of `peak()`: this process's peak resident memory in bytes."""

READ_SOURCE = (
    PEAK
    + """
import json, re, resource, sys
import pyarrow as pa
from pipeline import ingest  # imported first: what imports take is the baseline

# Reserve what pyarrow's allocator reserves at its first use (an arena of address space, not memory),
# then allow the address space to grow by the margin given.
pa.allocate_buffer(1 << 20)
size = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + int(sys.argv[2]), size + int(sys.argv[2])))
before = peak()
source = ingest.make_reader(json.loads(sys.argv[1]))
rows = [
    (row["key"], row.get("reason"), row.get("detail"))
    for file in source.files()
    for row in source.read_file(file)
]
print(json.dumps({"rows": rows, "growth": peak() - before}))
"""
)


def read_in_subprocess(source: dict, address_space: int = 1 << 30) -> tuple[list[tuple], int]:
    """The (key, reason, detail) rows (reason and detail None for a sample) of a source mapping (absolute
    paths) read in a fresh interpreter whose address space may grow by at most `address_space` bytes
    once its imports are done, and how much its peak memory grew while reading."""
    done = subprocess.run(
        [sys.executable, "-c", READ_SOURCE, json.dumps(source), str(address_space)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    return [tuple(row) for row in result["rows"]], result["growth"]
