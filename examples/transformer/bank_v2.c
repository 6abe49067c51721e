/*
 * bank v2: the account struct is restructured, so v1's values need a
 * transformer (xform_v1_v2.py):
 *
 *   - `name` is renamed `owner`;
 *   - `balance` in euros becomes `cents`;
 *   - a new tagged variable, `total_cents`, sums every account.
 *
 * Commands are v1's; `list` prints cents as euros and the total.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ekiden.h"

struct account {
	char owner[16];
	long cents;
};

static struct account accounts[8];
static int naccounts;
static long total_cents;

int main(void)
{
	char line[128];
	long euros;

	(void)EKIDEN_TAG(accounts);
	if (EKIDEN_TAG(naccounts))
		naccounts = 0;
	if (EKIDEN_TAG(total_cents))
		total_cents = 0;
	for (;;) {
		EKIDEN_UPDATE_POINT(command_loop);
		ssize_t n = read(0, line, sizeof(line) - 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return 0;
		line[n] = '\0';
		struct account *a = &accounts[naccounts];
		if (naccounts < 8 && sscanf(line, "open %15s %ld", a->owner, &euros) == 2) {
			a->cents = euros * 100;
			total_cents += a->cents;
			naccounts++;
			printf("ok\n");
		} else if (strncmp(line, "list", 4) == 0) {
			for (int i = 0; i < naccounts; i++)
				printf("%s: %ld.%02ld EUR\n", accounts[i].owner, accounts[i].cents / 100,
				       accounts[i].cents % 100);
			printf("total: %ld.%02ld EUR\nend\n", total_cents / 100, total_cents % 100);
		} else {
			printf("?\n");
		}
		fflush(stdout);
	}
}
