"""The cost of one breadth-first level of a numpy-columns walk (run with any Python that
has numpy; numpy is not a dependency of the project).

For a level of k objects of one struct type (a node: name, id, next): view the level's
bytes as records, gather the pointer columns, drop nulls, deduplicate, and look them up
among 1,000,000 known starts with searchsorted.  Prints the time per level and per object.
"""

import time

import numpy as np

NODE = np.dtype([("name", "<u8"), ("id", "<i8"), ("next", "<u8")])


def level(known: np.ndarray, blob: bytes, k: int) -> np.ndarray:
    """The new pointers of one level."""
    records = np.frombuffer(blob, dtype=NODE, count=k)
    pointers = np.concatenate([records["name"], records["next"]])
    pointers = np.unique(pointers[pointers != 0])
    pos = np.minimum(np.searchsorted(known, pointers), len(known) - 1)
    return pointers[known[pos] != pointers]


def main() -> None:
    rng = np.random.default_rng(1)
    known = np.sort(rng.integers(1 << 20, 1 << 40, 1_000_000, dtype=np.uint64) & ~np.uint64(15))
    for k in (1, 1000, 262_144):
        blob = rng.integers(0, 1 << 40, 3 * k, dtype=np.uint64).tobytes()
        rounds = max(1, 200_000 // k)
        started = time.perf_counter()
        for _ in range(rounds):
            level(known, blob, k)
        per_level = (time.perf_counter() - started) / rounds
        per_object = per_level / k * 1e9
        print(f"level of {k:>7,} objects: {per_level * 1e6:9.1f} µs, {per_object:7.0f} ns/object")


if __name__ == "__main__":
    main()
