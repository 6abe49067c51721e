/*
 * ekiden.h -- marks for ekiden-trace, the state-transfer updater.
 *
 * Include this header in a C program (C99 or later, gcc or clang) to mark:
 *
 *   EKIDEN_UPDATE_POINT(name);    a statement at a loop head: an update may
 *                                 happen here.
 *   EKIDEN_TAG(var)               an expression: true when var must be
 *                                 initialised normally, false when an update
 *                                 has just written the transferred value.
 *                                 (void)EKIDEN_TAG(var); just carries var over.
 *   EKIDEN_FROM(name)             an expression: true when this run replaces a
 *                                 process that was updated at point name.
 *   EKIDEN_UPDATING()             an expression: true when this run was started
 *                                 by an update.
 *
 * Pointer hints, for pointers whose shape DWARF cannot tell.  They may stand
 * at file scope or inside a function, each followed by a semicolon:
 *
 *   EKIDEN_HINT_ARRAY(struct table, buckets, nbuckets);
 *       field buckets points to nbuckets elements.
 *   EKIDEN_HINT_BUFFER(struct session, buf, buflen);
 *       a char * (or void *) that is a buffer of buflen bytes, not a
 *       NUL-ended string.
 *   EKIDEN_HINT_STRING(struct mystr, p_buf, len, alloc_bytes);
 *       a string with capacity: p_buf holds alloc_bytes bytes, of which the
 *       first len are the text.  Shown as a string, carried whole.
 *   EKIDEN_HINT_POINTS_TO(struct entry, data, struct blob);
 *       a void * field that really points to one struct blob.
 *   EKIDEN_HINT_OPAQUE(struct conn, cookie);
 *       a pointer that must not be followed (shown and carried as a number).
 *   EKIDEN_HINT_UNION_CASE(struct config, u, kind, KIND_PORT, port);
 *       when field kind equals KIND_PORT, member port of union u is active.
 *   EKIDEN_HINT_UNION_MEMBER(struct job, u, fn);
 *       member fn of union u is always the active one (a union with no
 *       discriminant field).  A union holding a pointer that no hint or
 *       transformer explains is refused before an update.
 *   EKIDEN_HINT_VAR_ARRAY(var, length);   EKIDEN_HINT_VAR_BUFFER(var, length);
 *   EKIDEN_HINT_VAR_POINTS_TO(var, type); EKIDEN_HINT_VAR_OPAQUE(var);
 *       the same for a tagged variable (a global, or any tagged variable
 *       named so in this source file).
 *
 * A length is a C constant expression, macros expanded: numbers, sizeof of a
 * type or variable (sizeof(struct item), sizeof ranges / sizeof ranges[0]),
 * + - * / % << >>, casts to integer types, and names: a field of the struct
 * that holds the pointer, a path through its fields (table->key_size: the
 * length lives in the struct the field `table` points to), or an integer
 * global or tagged variable.  Every hint is checked against the debug info
 * when the tool reads the binary (points, diff, attach alike).
 *
 * Build with -DEKIDEN_DISABLE to compile every mark out.
 *
 * ---------------------------------------------------------------------------
 * How the marks talk to the tool, and why a dying tool cannot kill the target
 * ---------------------------------------------------------------------------
 *
 * The tool never plants a breakpoint: an int3 or a debug register left armed
 * when a tracer is SIGKILLed later kills the target with SIGTRAP.  Instead each
 * program holds one control block, `ekiden_control`, and every mark is a load
 * of `ekiden_control.armed` and a branch predicted not taken.  Update points
 * also emit a USDT probe (<sys/sdt.h>, provider "ekiden"), a single nop, so
 * readelf -n, gdb's `info probes` and bpftrace list them.
 *
 * To stop the program at a mark, the tool (its tracer) writes `armed` and a
 * signal number `signo` into the block.  The next mark takes the slow path,
 * ekiden__stop(): it records which mark it is, disarms the block (one shot),
 * presets the answer "initialise normally", and sends itself `signo` with a
 * raw tgkill.  The tool picks `signo` among signals whose default action is
 * to ignore them and that the program neither catches nor blocks, so:
 *
 *   - with the tool alive, the signal stops the program in a ptrace
 *     signal-delivery-stop, right after the `syscall` instruction, where the
 *     tool reads or writes state, suppresses the signal and resumes it;
 *   - with the tool dead at any moment, the signal (if any is sent at all) is
 *     delivered to a program that ignores it, the mark answers "initialise
 *     normally", and the block stays disarmed: the program runs on as if no
 *     tool had ever been attached.
 *
 * One exception: while an update writes the new version's state, the tool
 * sets `guarded` (right at the exec stop), marks stay armed, and a guardian
 * process the tool started waits for the tool's death.  A mark whose stop no
 * tool took then waits (sleeping 1 ms at a time) instead of running on
 * half-restored; the guardian execs the old version again and gives it back
 * its state.  The tool clears `guarded` when the new version has all of its
 * state.  Only the start-up code between two marks can run after the tool's
 * death.
 *
 * The note section .note.ekiden records, for the tool, where each tag, from
 * mark and hint stands (source file, code address, names), and the address
 * of the control block.  It is not loaded into memory.
 */
#ifndef EKIDEN_H
#define EKIDEN_H

#define EKIDEN_ABI_VERSION 1

#ifdef EKIDEN_DISABLE

#define EKIDEN_UPDATE_POINT(name) do { } while (0)
#define EKIDEN_TAG(var) ((void)sizeof(var), 1)
#define EKIDEN_FROM(name) 0
#define EKIDEN_UPDATING() 0
#define EKIDEN__NO_HINT extern char ekiden__no_hint[1] __attribute__((unused))
#define EKIDEN_HINT_ARRAY(type, field, length) EKIDEN__NO_HINT
#define EKIDEN_HINT_BUFFER(type, field, length) EKIDEN__NO_HINT
#define EKIDEN_HINT_POINTS_TO(type, field, target) EKIDEN__NO_HINT
#define EKIDEN_HINT_OPAQUE(type, field) EKIDEN__NO_HINT
#define EKIDEN_HINT_UNION_CASE(type, field, discr, value, member) EKIDEN__NO_HINT
#define EKIDEN_HINT_UNION_MEMBER(type, field, member) EKIDEN__NO_HINT
#define EKIDEN_HINT_STRING(type, field, length, capacity) EKIDEN__NO_HINT
#define EKIDEN_HINT_VAR_ARRAY(var, length) EKIDEN__NO_HINT
#define EKIDEN_HINT_VAR_BUFFER(var, length) EKIDEN__NO_HINT
#define EKIDEN_HINT_VAR_POINTS_TO(var, target) EKIDEN__NO_HINT
#define EKIDEN_HINT_VAR_OPAQUE(var) EKIDEN__NO_HINT

#else /* marks enabled */

#include <sys/sdt.h>

/* The control block.  Its layout is the ABI between a program and the tool. */
struct ekiden_control {
	unsigned int magic;          /* EKIDEN_MAGIC */
	unsigned int abi_version;    /* EKIDEN_ABI_VERSION */
	volatile int armed;          /* tool: nonzero makes the next mark stop */
	volatile int signo;          /* tool: the signal a stop is reported by */
	volatile int updating;       /* tool: this run was started by an update */
	volatile int kind;           /* mark: what stopped (EKIDEN_KIND_*) */
	const char *volatile what;   /* mark: the point's or the tag's name */
	void *volatile addr;         /* mark, tag: address of the variable */
	volatile unsigned long size; /* mark, tag: its size in bytes */
	volatile int answer;         /* tool, tag: 0 = value written, 1 = init */
	volatile int guarded;        /* tool: an update is under way (see below) */
	char from[64];               /* tool: the point the old run stopped at */
};

#define EKIDEN_MAGIC 0x4e444b45u /* "EKDN" */
#define EKIDEN_KIND_POINT 1
#define EKIDEN_KIND_TAG 2

/* One block per program: every file that includes this header shares it. */
__attribute__((weak)) struct ekiden_control ekiden_control = {
	EKIDEN_MAGIC, EKIDEN_ABI_VERSION, 0, 0, 0, 0, 0, 0, 0, 1, 0, {0}
};

#if defined(__has_attribute)
#if __has_attribute(noipa)
#define EKIDEN__NOIPA __attribute__((noipa))
#endif
#endif
#ifndef EKIDEN__NOIPA
#define EKIDEN__NOIPA
#endif

#define EKIDEN__STR(x) #x
#define EKIDEN__XSTR(x) EKIDEN__STR(x)

/* Note records: namesz, descsz, type, "ekiden", then the description:
 * an 8-byte code address (0 when the mark has none), the source file, and
 * the strings of the record, each NUL-terminated. */
#define EKIDEN__NOTE_TAG 1
#define EKIDEN__NOTE_FROM 2
#define EKIDEN__NOTE_HINT 3
#define EKIDEN__NOTE_CONTROL 4

#define EKIDEN__NOTE_BEGIN(type, addr)                                         \
	".pushsection .note.ekiden,\"\",\"note\"\n"                            \
	".balign 4\n"                                                          \
	".4byte 7f-6f, 9f-8f, " EKIDEN__XSTR(type) "\n"                        \
	"6: .asciz \"ekiden\"\n"                                               \
	"7: .balign 4\n"                                                       \
	"8: .8byte " addr "\n"                                                 \
	".asciz \"" __FILE__ "\"\n"
#define EKIDEN__NOTE_STRING(s) ".asciz \"" s "\"\n"
#define EKIDEN__NOTE_END "9: .balign 4\n.popsection\n"

/* The address of the control block, for binaries without a symbol table. */
__asm__(EKIDEN__NOTE_BEGIN(EKIDEN__NOTE_CONTROL, "ekiden_control")
	EKIDEN__NOTE_END);

/* The slow path of every mark: runs only while a tool has armed the block. */
__attribute__((noinline, cold, unused)) EKIDEN__NOIPA static int
ekiden__stop(int kind, const char *what, void *addr, unsigned long size)
{
	int signo = ekiden_control.signo;

	ekiden_control.kind = kind;
	ekiden_control.what = what;
	ekiden_control.addr = addr;
	ekiden_control.size = size;
	ekiden_control.answer = 1;
	if (!ekiden_control.guarded)
		ekiden_control.armed = 0; /* one shot, except during an update */
	if (signo > 0) {
#if defined(__x86_64__)
		/* Raw syscalls, so the stop lands in this function, whose unwind
		 * info is the program's own, and next to a syscall instruction. */
		long pid, tid, ret;
		__asm__ volatile("syscall" : "=a"(pid) : "0"(39L)
				 : "rcx", "r11", "memory");
		__asm__ volatile("syscall" : "=a"(tid) : "0"(186L)
				 : "rcx", "r11", "memory");
		__asm__ volatile("syscall"
				 : "=a"(ret)
				 : "0"(234L), "D"(pid), "S"(tid), "d"((long)signo)
				 : "rcx", "r11", "memory");
		(void)ret;
#else
		extern int raise(int);
		raise(signo);
#endif
	}
	__asm__ volatile("" ::: "memory");
	/* While an update writes this run's state, a mark whose stop no tool took
	 * (the tool died) waits here for the tool's guardian, which rolls the
	 * process back: a half-restored version must never run free. */
	while (ekiden_control.guarded && ekiden_control.kind) {
#if defined(__x86_64__)
		static const long pause_1ms[2] = { 0, 1000000 };
		long ret;
		__asm__ volatile("syscall" : "=a"(ret) : "0"(35L), "D"(pause_1ms), "S"(0L)
				 : "rcx", "r11", "memory");
		(void)ret;
#endif
	}
	return ekiden_control.answer;
}

static inline int ekiden__from(const char *point)
{
	const char *have = ekiden_control.from;

	if (!ekiden_control.updating)
		return 0;
	while (*point && *point == *have)
		point++, have++;
	return *point == *have;
}

#define EKIDEN__ARMED() __builtin_expect(ekiden_control.armed != 0, 0)

#define EKIDEN_UPDATE_POINT(name)                                              \
	do {                                                                   \
		STAP_PROBE(ekiden, name);                                      \
		if (EKIDEN__ARMED())                                           \
			(void)ekiden__stop(EKIDEN_KIND_POINT, #name, 0, 0);    \
	} while (0)

#define EKIDEN_TAG(var)                                                        \
	(__extension__({                                                       \
		__asm__ volatile("5: nop\n" EKIDEN__NOTE_BEGIN(                \
			EKIDEN__NOTE_TAG, "5b") EKIDEN__NOTE_STRING(#var)      \
			EKIDEN__NOTE_END);                                     \
		EKIDEN__ARMED() ? ekiden__stop(EKIDEN_KIND_TAG, #var,          \
					       (void *)&(var), sizeof(var))    \
				: 1;                                           \
	}))

#define EKIDEN_FROM(name)                                                      \
	(__extension__({                                                       \
		__asm__ volatile("5: nop\n" EKIDEN__NOTE_BEGIN(                \
			EKIDEN__NOTE_FROM, "5b") EKIDEN__NOTE_STRING(#name)    \
			EKIDEN__NOTE_END);                                     \
		ekiden__from(#name);                                           \
	}))

#define EKIDEN_UPDATING() (ekiden_control.updating != 0)

/* A hint: a compile-time check that its subject exists, then its record. */
#define EKIDEN__HINT(check, kind, subject, field, arg1, arg2)                  \
	extern char ekiden__hint_checked[(check) ? 1 : 1]                      \
		__attribute__((unused));                                       \
	__asm__(EKIDEN__NOTE_BEGIN(EKIDEN__NOTE_HINT, "0")                     \
		EKIDEN__NOTE_STRING(kind) EKIDEN__NOTE_STRING(subject)         \
		EKIDEN__NOTE_STRING(field) EKIDEN__NOTE_STRING(arg1)           \
		EKIDEN__NOTE_STRING(arg2) EKIDEN__NOTE_END)

#define EKIDEN__FIELD_SIZE(type, field) sizeof(((type *)0)->field)

/* Lengths and case values are stringified after macro expansion (XSTR). */
#define EKIDEN_HINT_ARRAY(type, field, length)                                 \
	EKIDEN__HINT(EKIDEN__FIELD_SIZE(type, field), "array", #type, #field,  \
		     EKIDEN__XSTR(length), "")
#define EKIDEN_HINT_BUFFER(type, field, length)                                \
	EKIDEN__HINT(EKIDEN__FIELD_SIZE(type, field), "buffer", #type, #field, \
		     EKIDEN__XSTR(length), "")
#define EKIDEN_HINT_STRING(type, field, length, capacity)                      \
	EKIDEN__HINT(EKIDEN__FIELD_SIZE(type, field), "string", #type, #field, \
		     EKIDEN__XSTR(length), EKIDEN__XSTR(capacity))
#define EKIDEN_HINT_POINTS_TO(type, field, target)                             \
	EKIDEN__HINT(EKIDEN__FIELD_SIZE(type, field) + sizeof(target),         \
		     "points_to", #type, #field, #target, "")
#define EKIDEN_HINT_OPAQUE(type, field)                                        \
	EKIDEN__HINT(EKIDEN__FIELD_SIZE(type, field), "opaque", #type, #field, \
		     "", "")
#define EKIDEN_HINT_UNION_CASE(type, field, discr, value, member)              \
	EKIDEN__HINT(EKIDEN__FIELD_SIZE(type, field.member) +                  \
			     EKIDEN__FIELD_SIZE(type, discr) + ((value) & 0),  \
		     "union_case", #type, #field, #discr "=" EKIDEN__XSTR(value),     \
		     #member)
#define EKIDEN_HINT_UNION_MEMBER(type, field, member)                          \
	EKIDEN__HINT(EKIDEN__FIELD_SIZE(type, field.member), "union_member",   \
		     #type, #field, "", #member)

/* Variable hints name a variable that may be a local of another function, so
 * only the target type is checked. */
#define EKIDEN_HINT_VAR_ARRAY(var, length)                                     \
	EKIDEN__HINT(1, "array", "", #var, EKIDEN__XSTR(length), "")
#define EKIDEN_HINT_VAR_BUFFER(var, length)                                    \
	EKIDEN__HINT(1, "buffer", "", #var, EKIDEN__XSTR(length), "")
#define EKIDEN_HINT_VAR_POINTS_TO(var, target)                                 \
	EKIDEN__HINT(sizeof(target), "points_to", "", #var, #target, "")
#define EKIDEN_HINT_VAR_OPAQUE(var) EKIDEN__HINT(1, "opaque", "", #var, "", "")

#endif /* EKIDEN_DISABLE */
#endif /* EKIDEN_H */
