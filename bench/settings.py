"""How much each section measures: the full suite, or a quick pass for iteration."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """Sizes, repeats and time limits of every section."""

    quick: bool
    # 1. overhead
    overhead_pairs: int
    kv_keys: int
    kv_batch: int
    kv_conns: int
    kv_procs: int
    kv_seconds: float
    ftp_concurrent: int
    ftp_procs: int
    ftp_seconds: float
    retr_bytes: int
    retr_per_sample: int
    # 2. pause
    pause_repeats: int
    little_keys: int
    client_trials: int
    client_keys: int
    client_conns: int
    # 3. scaling
    scale_sizes: tuple[int, ...]
    scale_repeats: tuple[int, ...]  # one per size
    list_sizes: tuple[int, ...]  # nodes of bench/biglist.c's one list
    list_repeats: tuple[int, ...]
    scale_timeout: float
    value_len: int
    vm_bytes: int
    # 5. instructions (under callgrind)
    instr_units: tuple[int, int, int]  # counter lines, kvstore requests, ftpd sessions
    instr_repeats: int
    # 4. planning
    synthetic_types: int
    synthetic_globals: int
    planning_repeats: int


FULL = Settings(
    quick=False,
    overhead_pairs=20,
    kv_keys=10_000,
    kv_batch=4000,
    kv_conns=8,
    kv_procs=1,
    kv_seconds=1.5,
    ftp_concurrent=8,
    ftp_procs=1,
    ftp_seconds=1.5,
    retr_bytes=256 << 20,
    retr_per_sample=4,
    pause_repeats=20,
    little_keys=10,
    client_trials=5,
    client_keys=1000,
    client_conns=4,
    scale_sizes=(1_000, 10_000, 100_000, 1_000_000),
    scale_repeats=(5, 5, 3, 1),
    list_sizes=(100_000, 1_000_000),
    list_repeats=(3, 1),
    scale_timeout=300.0,
    value_len=100,
    vm_bytes=256 << 20,
    instr_units=(5000, 20_000, 100),
    instr_repeats=2,
    synthetic_types=3000,
    synthetic_globals=3000,
    planning_repeats=5,
)

QUICK = Settings(
    quick=True,
    overhead_pairs=3,
    kv_keys=2000,
    kv_batch=4000,
    kv_conns=8,
    kv_procs=1,
    kv_seconds=0.5,
    ftp_concurrent=8,
    ftp_procs=1,
    ftp_seconds=0.5,
    retr_bytes=64 << 20,
    retr_per_sample=1,
    pause_repeats=3,
    little_keys=10,
    client_trials=1,
    client_keys=200,
    client_conns=2,
    scale_sizes=(1_000, 10_000),
    scale_repeats=(2, 1),
    list_sizes=(10_000,),
    list_repeats=(1,),
    scale_timeout=60.0,
    value_len=100,
    vm_bytes=64 << 20,
    instr_units=(1000, 4000, 20),
    instr_repeats=1,
    synthetic_types=600,
    synthetic_globals=600,
    planning_repeats=2,
)
