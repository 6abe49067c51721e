"""A large synthetic C program for the planning benchmarks: thousands of types and globals.

`write(directory, types, globals_, version)` writes synthetic_vN.c: `types` struct
types (scalars, arrays, enums, pointers to and copies of earlier types, a union
now and then), `globals_` globals of those types, a function per four types, a few
big tagged structs (one with an array hint), a tagged local and three update
points.  Version 2 changes what an update must map: a field added to every 7th
type, a field widened in every 11th, a dropped tag and a new one.
"""

from __future__ import annotations

from pathlib import Path

HEADER = '#include <stdio.h>\n#include <stdlib.h>\n#include <unistd.h>\n\n#include "ekiden.h"\n'
ENUM_EVERY = 20  # one enum per this many types
FUNCTION_EVERY = 4  # one function per this many types


def _enum(i: int) -> str:
    names = ", ".join(f"E{i}_V{k}" for k in range(8))
    return f"enum e{i} {{ {names} }};\n"


def _struct(i: int, types: int, version: int) -> str:
    wide = "long" if version == 2 and i % 11 == 0 else "int"
    fields = [
        f"\t{wide} a;",
        "\tlong b;",
        "\tchar name[16];",
        f"\tenum e{(i // ENUM_EVERY) * ENUM_EVERY} kind;",
        f"\tstruct s{i} *self;",
        "\tdouble x;",
        "\tunsigned short flags[4];",
    ]
    for child in (2 * i + 1, 2 * i + 2):  # a binary tree: s0 reaches every type
        if child < types:
            fields.append(f"\tstruct s{child} *child{child - 2 * i};")
    if i % 10 == 5:
        fields.append(f"\tstruct s{(i // 10) % 5} inner;")  # a copy of a small, earlier type
    if i % 13 == 0:
        fields.append(f"\tunion {{ int n; float f; char c[8]; }} u{i};")
    if version == 2 and i % 7 == 0:
        fields.append("\tint added_in_v2;")
    return f"struct s{i} {{\n" + "\n".join(fields) + f"\n}};\ntypedef struct s{i} s{i}_t;\n"


def _function(i: int) -> str:
    return (
        f"__attribute__((noinline)) long f{i}(void *p, int k)\n{{\n"
        f"\tstruct s{i} *s = p;\n\tlong acc = s->b + k;\n\tint j;\n\n"
        f"\tfor (j = 0; j < 4; j++)\n\t\tacc += s->flags[j] * (j + k);\n"
        f"\ts->a = (int)acc;\n\treturn acc + s->kind;\n}}\n"
    )


BIG = """
struct big{n} {{
	int count;
	long data[4096];
	struct s{a} items[64];
	char *names[256];
	struct big{n} *next;
	size_t nitems;
	struct s{b} *heap;
}};
EKIDEN_HINT_ARRAY(struct big{n}, heap, nitems);
struct big{n} big{n};
"""

MAIN = """
static long work_loop(int rounds)
{{
	long acc = 0;
	int i;

	for (i = 0; i < rounds; i++) {{
		EKIDEN_UPDATE_POINT(work_loop);
		acc += fns[i % NFUNCTIONS](&g{g0}, i);
	}}
	return acc;
}}

int main(int argc, char **argv)
{{
	long total;
	int round;

	(void)argv;
	if (EKIDEN_TAG(big0))
		big0.count = argc;
{tags}	if (EKIDEN_TAG(total))
		total = 0;
	for (round = 0; round < argc * 1000; round++) {{
		EKIDEN_UPDATE_POINT(main_loop);
		total += work_loop(argc);
		if (round % 100 == 99) {{
			EKIDEN_UPDATE_POINT(idle_loop);
			usleep(1000);
		}}
	}}
	printf("%ld\\n", total);
	return 0;
}}
"""


def source(types: int, globals_: int, version: int) -> str:
    """The C source of one version."""
    parts = [HEADER]
    parts += [_enum(i) for i in range(0, types, ENUM_EVERY)]
    parts += [_struct(i, types, version) for i in range(types)]
    parts += [f"struct s{i % types} g{i};\n" for i in range(globals_)]
    # Items of the tree's root type: through its children the tagged state reaches every type.
    parts += [BIG.format(n=n, a=0, b=n + 1) for n in range(4)]
    if version == 2:
        parts.append("struct s3 newstate;\n")
    functions = range(0, types, FUNCTION_EVERY)
    parts += [_function(i) for i in functions]
    parts.append(f"#define NFUNCTIONS {len(functions)}\n")
    parts.append("static long (*const fns[])(void *, int) = {\n")
    parts += [f"\tf{i},\n" for i in functions]
    parts.append("};\n")
    tags = "\t(void)EKIDEN_TAG(big1);\n\t(void)EKIDEN_TAG(big2);\n"
    tags += "\t(void)EKIDEN_TAG(newstate);\n" if version == 2 else "\t(void)EKIDEN_TAG(big3);\n"
    parts.append(MAIN.format(g0=0, tags=tags))
    return "".join(parts)


def write(directory: Path, types: int, globals_: int, version: int) -> Path:
    """Write synthetic_v{version}.c into directory; return its path."""
    path = directory / f"synthetic_v{version}.c"
    path.write_text(source(types, globals_, version))
    return path
