/* What an injected restore loop would cost inside the new process: for each object,
 * malloc(size) and memcpy its encoded bytes from a shared buffer; then patch every
 * pointer slot with its target's new address.  kvstore-like: 1M entries (24 B) with
 * two strings each (~10 B key, ~101 B value), every entry pointing at its strings. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(void) {
	enum { N = 3000000 };
	uint32_t *size = malloc(N * 4); uint64_t *src = malloc(N * 8); void **newp = malloc(N * 8);
	uint64_t total = 0;
	for (int i = 0; i < N; i++) { size[i] = i % 3 == 0 ? 24 : i % 3 == 1 ? 12 : 101; src[i] = total; total += size[i]; }
	char *image = malloc(total); memset(image, 'x', total);
	/* relocations: entry i*3 has slots at 0 and 8 pointing to objects i*3+1, i*3+2 */
	uint32_t nrel = 2 * (N / 3); uint32_t *robj = malloc(nrel * 4), *rtgt = malloc(nrel * 4); uint16_t *roff = malloc(nrel * 2);
	for (uint32_t r = 0; r < nrel; r++) { robj[r] = (r / 2) * 3; roff[r] = (r % 2) * 8; rtgt[r] = (r / 2) * 3 + 1 + r % 2; }
	double t0 = now();
	for (int i = 0; i < N; i++) { newp[i] = malloc(size[i]); memcpy(newp[i], image + src[i], size[i]); }
	double t1 = now();
	for (uint32_t r = 0; r < nrel; r++) { void *p = newp[rtgt[r]]; memcpy((char *)newp[robj[r]] + roff[r], &p, 8); }
	double t2 = now();
	printf("malloc+memcpy %.3f s (%.0f ns/object), relocate %.3f s (%.0f ns/slot)\n", t1 - t0, (t1 - t0) / N * 1e9, t2 - t1, (t2 - t1) / nrel * 1e9);
	return 0;
}
