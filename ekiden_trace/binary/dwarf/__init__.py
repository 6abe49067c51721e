"""DWARF, read without pyelftools on the hot path: DIEs, types, variables,
location expressions and call-frame info, indexed once per build-id and cached."""
