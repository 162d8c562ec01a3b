"""What every benchmark's "Machine" table starts from: the CPU model and the memory."""

from __future__ import annotations


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" where it has none)."""
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    return "unknown"


def ram_gib() -> str:
    """The machine's memory, e.g. "23.5 GiB"."""
    with open("/proc/meminfo", encoding="utf-8") as f:
        mem_kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    return f"{mem_kib / 1024 / 1024:.1f} GiB"
