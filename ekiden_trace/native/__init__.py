"""The compiled core: C code loaded with ctypes (issue 14).

`build.py` compiles every `*.c` of this package, on first use and before any
pause, into one shared library in the cache directory.  Python code stays the
reference: wherever the core cannot be built or cannot express a case, the
Python path runs, and the tests compare the two.  This package sits just above
`binary`: target, state and ops may use it.
"""
