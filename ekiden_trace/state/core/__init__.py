"""The compiled core of the capture/restore engine (issue 14).

C code (`*.c` here) loaded with ctypes, compiled by `build.py` on first use, before
any pause, into the cache directory.  The Python capture and encoder stay the
reference: wherever the core cannot express a shape, or cannot be built, they run,
and the tests compare the two on every fixture pair.
"""
