/*
 * bank v1: accounts in whole euros, driven by lines on stdin.
 *
 *   open NAME EUROS    open an account        -> "ok"
 *   list               every account, then    -> "end"
 *
 * The accounts and their number are tagged, so an update carries them over.
 * Build: cc $(ekiden-trace cflags) -g -O2 bank_v1.c -o bank_v1
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ekiden.h"

struct account {
	char name[16];
	long balance; /* euros */
};

static struct account accounts[8];
static int naccounts;

int main(void)
{
	char line[128];

	(void)EKIDEN_TAG(accounts);
	if (EKIDEN_TAG(naccounts))
		naccounts = 0;
	for (;;) {
		EKIDEN_UPDATE_POINT(command_loop);
		ssize_t n = read(0, line, sizeof(line) - 1);
		if (n < 0 && errno == EINTR) /* ekiden-trace nudges a blocked read */
			continue;
		if (n <= 0)
			return 0;
		line[n] = '\0';
		struct account *a = &accounts[naccounts];
		if (naccounts < 8 && sscanf(line, "open %15s %ld", a->name, &a->balance) == 2) {
			naccounts++;
			printf("ok\n");
		} else if (strncmp(line, "list", 4) == 0) {
			for (int i = 0; i < naccounts; i++)
				printf("%s: %ld euros\n", accounts[i].name, accounts[i].balance);
			printf("end\n");
		} else {
			printf("?\n");
		}
		fflush(stdout); /* nothing may wait in stdio's buffer at an update */
	}
}
