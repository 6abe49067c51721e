"""Reading binaries: files only, never a process.

Owns the ELF reader, the marks (update points, tags, hints) a program carries,
its DWARF types, variables, locations and call-frame info (`dwarf/`, cached per
build-id), the `Program` model that ties them together, and compiled struct
layouts. It may import only `ekiden_trace.errors`; nothing here takes a pid.
"""
