/* Run a traced process through its system calls, stopping only where the tool must look.
 *
 * Under PTRACE_SYSCALL a process stops at the entry and the exit of every system
 * call.  The tool cares about a few (exit, the signal calls, a mark's first call);
 * handing every other stop to Python costs ~25 µs each, ~60 times in a small
 * program's start-up.  Here the loop over uninteresting stops runs in C.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>

#define SYSCALL_STOP (((SIGTRAP | 0x80) << 8) | 0x7f)

enum { EK_TIMEOUT = -1, EK_GONE = -2, EK_ERROR = -3, EK_INTERRUPTED = -4 };
enum { EK_RUNNING = 0, EK_SYSCALL = 1, EK_CONT = 2 }; /* how to resume first */

static int64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Wait for pid's next state change until deadline_ns; SIGCHLD must be blocked by the
 * caller, so a change after a waitpid leaves it pending and none is missed.  A signal
 * for the tool itself (Ctrl-C) returns EK_INTERRUPTED, for Python's handler to run. */
static int wait_change(int pid, int64_t deadline_ns, int *status)
{
	sigset_t chld;
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	for (;;) {
		int got = waitpid(pid, status, WNOHANG | __WALL);
		if (got > 0)
			return 0;
		if (got < 0)
			return errno == ECHILD ? EK_GONE : EK_ERROR;
		int64_t left = deadline_ns - now_ns();
		if (left <= 0)
			return EK_TIMEOUT;
		if (left > 100000000)
			left = 100000000; /* a SIGCHLD taken by another thread costs at most this */
		struct timespec slice = { left / 1000000000, left % 1000000000 };
		if (sigtimedwait(&chld, NULL, &slice) < 0 && errno == EINTR)
			return EK_INTERRUPTED;
	}
}

/* Whether pid, at a system-call stop, is entering a call marked in watched[]. */
static int entering_watched(int pid, const uint8_t *watched, long nwatched)
{
	long nr = ptrace(PTRACE_PEEKUSER, pid, offsetof(struct user_regs_struct, orig_rax), 0);
	if (nr < 0 || nr >= nwatched || !watched[nr])
		return 0;
	long rax = ptrace(PTRACE_PEEKUSER, pid, offsetof(struct user_regs_struct, rax), 0);
	return rax == -ENOSYS; /* the entry, not the exit */
}

/* Resume pid (first with `resume`: EK_SYSCALL, EK_CONT, or EK_RUNNING when it already
 * runs, delivering signo) and step over system-call stops until any other stop or the
 * entry of a watched call.  EK_INTERRUPTED leaves it running.
 * deadline_ns is on CLOCK_MONOTONIC (Python's time.monotonic()).  Returns that stop's
 * wait status, or EK_TIMEOUT, EK_GONE (not our tracee any more) or EK_ERROR (errno says
 * why). */
int ek_syscalls_run(int pid, const uint8_t *watched, long nwatched, int resume, int signo,
		    int64_t deadline_ns)
{
	for (;;) {
		if (resume != EK_RUNNING) {
			int request = resume == EK_CONT ? PTRACE_CONT : PTRACE_SYSCALL;
			if (ptrace(request, pid, 0, (void *)(long)signo) < 0)
				return errno == ESRCH ? EK_GONE : EK_ERROR;
		}
		resume = EK_SYSCALL;
		signo = 0;
		int status, waited = wait_change(pid, deadline_ns, &status);
		if (waited < 0)
			return waited;
		if (status != SYSCALL_STOP || entering_watched(pid, watched, nwatched))
			return status;
	}
}
