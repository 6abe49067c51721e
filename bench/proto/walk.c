/* A measurement prototype, not the engine (see bench/analysis.md): the capture side
 * of a compiled core.  It walks a stopped process's heap from one root by type
 * recipes (size, pointer fields, C strings, an array length held in a field) into
 * compact columns: per object address, type, size and its bytes in one arena; per
 * pointer slot the target object's index.  `mode` selects, bit by bit:
 *   bit 0   how memory is read: 0 = 64 KiB chunks read on demand with one
 *           process_vm_readv each and kept; 1 = breadth-first levels, each level's
 *           objects read in batches of 1,024 iovecs (strings still from chunks);
 *   bit 1   how a pointer finds its object: 0 = a hash of start addresses;
 *           1 = a granule index, per chunk one uint32 per 16 bytes naming the object
 *           that covers them (so interior pointers are found in O(1) too);
 *   bit 2   each level sorted by address before its pointers are followed.
 * write_back() then times the restore's writes as one iovec per object.
 * Built by bench/proto/capture.py with gcc -O2 -shared. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
double read_seconds;
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

struct pfield { uint32_t off; int32_t target; int32_t count_off; }; /* target -1: C string */
struct rtype { uint32_t size; uint32_t nptr; struct pfield *ptrs; };

struct out {
	uint64_t *addr; int32_t *type; uint32_t *size; uint64_t *data_off; /* per object */
	int64_t *edge;       /* per pointer slot: object index << 20 | offset, -1 null */
	uint64_t n, cap, nedge, edgecap;
	uint8_t *arena; uint64_t arena_len, arena_cap;
	uint64_t syscalls, bytes_read;
};

/* open addressing map addr -> index */
static uint64_t *hkeys; static uint32_t *hvals; static uint64_t hcap;
static inline uint64_t mix(uint64_t x) { x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; return x; }
static int64_t hget(uint64_t k) { uint64_t i = mix(k) & (hcap - 1); while (hkeys[i]) { if (hkeys[i] == k) return hvals[i]; i = (i + 1) & (hcap - 1);} return -1; }
static void hput(uint64_t k, uint32_t v) { uint64_t i = mix(k) & (hcap - 1); while (hkeys[i]) i = (i + 1) & (hcap - 1); hkeys[i] = k; hvals[i] = v; }

static pid_t PID;
struct out;
static uint8_t *chunk(struct out *o, uint64_t base);
static int64_t gget(struct out *o, uint64_t p);
static void gput(struct out *o, uint64_t addr, uint64_t size, uint32_t id);
/* chunk cache */
#define CSHIFT 16
#define CSIZE (1u << CSHIFT)
static uint64_t *ckeys; static uint8_t **cvals; static uint32_t **cidx; static uint64_t ccap;
static int GRANULE_INDEX;
static uint64_t cslot(uint64_t base) {
	uint64_t i = mix(base) & (ccap - 1);
	while (ckeys[i] && ckeys[i] != base) i = (i + 1) & (ccap - 1);
	return i;
}
static uint8_t *chunk(struct out *o, uint64_t base) {
	uint64_t i = mix(base) & (ccap - 1);
	while (ckeys[i]) { if (ckeys[i] == base) return cvals[i]; i = (i + 1) & (ccap - 1); }
	uint8_t *buf = malloc(CSIZE);
	struct iovec l = { buf, CSIZE }, r = { (void *)base, CSIZE };
	double t0 = now();
	ssize_t got = process_vm_readv(PID, &l, 1, &r, 1, 0);
	read_seconds += now() - t0;
	o->syscalls++;
	if (got < (ssize_t)CSIZE) { /* partial: read page by page */
		memset(buf, 0, CSIZE);
		for (uint64_t p = 0; p < CSIZE; p += 4096) {
			struct iovec l2 = { buf + p, 4096 }, r2 = { (void *)(base + p), 4096 };
			process_vm_readv(PID, &l2, 1, &r2, 1, 0); o->syscalls++;
		}
	}
	o->bytes_read += CSIZE;
	ckeys[i] = base; cvals[i] = buf; cidx[i] = calloc(CSIZE / 16, 4);
	return buf;
}
static void copy_from(struct out *o, uint8_t *dst, uint64_t addr, uint64_t len) {
	while (len) {
		uint64_t base = addr & ~(uint64_t)(CSIZE - 1), in = addr - base;
		uint64_t n = CSIZE - in < len ? CSIZE - in : len;
		memcpy(dst, chunk(o, base) + in, n);
		dst += n; addr += n; len -= n;
	}
}
static uint64_t strlen_at(struct out *o, uint64_t addr) {
	uint64_t n = 0;
	for (;;) {
		uint64_t base = addr & ~(uint64_t)(CSIZE - 1), in = addr - base;
		uint8_t *c = chunk(o, base);
		uint8_t *z = memchr(c + in, 0, CSIZE - in);
		if (z) return n + (uint64_t)(z - (c + in));
		n += CSIZE - in; addr += CSIZE - in;
	}
}

static int64_t gget(struct out *o, uint64_t p) {
	uint64_t base = p & ~(uint64_t)(CSIZE - 1);
	chunk(o, base);
	uint32_t v = cidx[cslot(base)][(p - base) >> 4];
	if (!v) return -1;
	v--;
	return (p >= o->addr[v] && p < o->addr[v] + o->size[v]) ? (int64_t)v : -1;
}
static void gput(struct out *o, uint64_t addr, uint64_t size, uint32_t id) {
	for (uint64_t g = addr & ~15ull; g < addr + size; g += 16) {
		uint64_t base = g & ~(uint64_t)(CSIZE - 1);
		chunk(o, base);
		uint32_t *slot = &cidx[cslot(base)][(g - base) >> 4];
		if (!*slot) *slot = id + 1;
	}
}
static void grow(struct out *o) {
	if (o->n < o->cap) return;
	o->cap = o->cap ? o->cap * 2 : 1 << 16;
	o->addr = realloc(o->addr, o->cap * 8); o->type = realloc(o->type, o->cap * 4);
	o->size = realloc(o->size, o->cap * 4); o->data_off = realloc(o->data_off, o->cap * 8);
}
static void arena_room(struct out *o, uint64_t n) {
	if (o->arena_len + n <= o->arena_cap) return;
	while (o->arena_len + n > o->arena_cap) o->arena_cap = o->arena_cap ? o->arena_cap * 2 : 1 << 20;
	o->arena = realloc(o->arena, o->arena_cap);
}

/* queue of objects whose pointers are still to be followed */
static uint32_t *q; static uint64_t qh, qt, qcap;
static void qpush(uint32_t v) { if (qt == qcap) { qcap = qcap ? qcap * 2 : 1 << 16; q = realloc(q, qcap * 4); } q[qt++] = v; }

static struct rtype *T;
static int MODE;

/* register a new object: returns its index; contents read now (chunk mode) or later */
static uint32_t newobj(struct out *o, uint64_t addr, int32_t type, uint64_t count) {
	grow(o);
	uint32_t id = (uint32_t)o->n++;
	uint64_t size = type < 0 ? strlen_at(o, addr) + 1 : (uint64_t)T[type].size * count;
	o->addr[id] = addr; o->type[id] = type; o->size[id] = (uint32_t)size;
	arena_room(o, size);
	o->data_off[id] = o->arena_len;
	if (MODE == 0 || type < 0) copy_from(o, o->arena + o->arena_len, addr, size);
	o->arena_len += size;
	if (GRANULE_INDEX) gput(o, addr, size, id); else hput(addr, id);
	if (type >= 0) qpush(id);
	return id;
}

static void edges(struct out *o, uint32_t id) {
	int32_t t = o->type[id];
	uint64_t count = o->size[id] / T[t].size;
	for (uint64_t e = 0; e < count; e++) {
		uint64_t eoff = o->data_off[id] + e * T[t].size;
		for (uint32_t f = 0; f < T[t].nptr; f++) {
			uint8_t *base = o->arena + eoff; /* newobj may move the arena */
			struct pfield *pf = &T[t].ptrs[f];
			uint64_t p; memcpy(&p, base + pf->off, 8);
			if (o->nedge == o->edgecap) { o->edgecap = o->edgecap ? o->edgecap * 2 : 1 << 16; o->edge = realloc(o->edge, o->edgecap * 8); }
			if (!p) { o->edge[o->nedge++] = -1; continue; }
			int64_t hit = GRANULE_INDEX ? gget(o, p) : hget(p);
			if (hit < 0) {
				uint64_t n = 1;
				if (pf->count_off >= 0) memcpy(&n, base + pf->count_off, 8);
				hit = newobj(o, p, pf->target, n);
			}
			o->edge[o->nedge++] = hit << 20;
		}
	}
}

/* level mode: read pending objects [from, to) in batched iovecs */
static void read_level(struct out *o, uint64_t from, uint64_t to) {
	struct iovec l[1024], r[1024]; int k = 0;
	for (uint64_t i = from; i < to; i++) {
		uint32_t id = q[i];
		l[k].iov_base = o->arena + o->data_off[id]; l[k].iov_len = o->size[id];
		r[k].iov_base = (void *)o->addr[id]; r[k].iov_len = o->size[id]; k++;
		if (k == 1024 || i + 1 == to) { process_vm_readv(PID, l, k, r, k, 0); o->syscalls++; k = 0; }
	}
}

static struct out *SORT_O;
static int by_addr(const void *a, const void *b) {
	uint64_t x = SORT_O->addr[*(const uint32_t *)a], y = SORT_O->addr[*(const uint32_t *)b];
	return x < y ? -1 : x > y;
}
static int SORTED;
int walk(int pid, int mode, struct rtype *types, uint64_t root, int32_t root_type, struct out *o) {
	PID = pid; MODE = mode & 1; GRANULE_INDEX = (mode >> 1) & 1; SORTED = mode >> 2; T = types;
	if (!GRANULE_INDEX) { hcap = 1 << 23; hkeys = calloc(hcap, 8); hvals = malloc(hcap * 4); }
	ccap = 1 << 16; ckeys = calloc(ccap, 8); cvals = malloc(ccap * sizeof *cvals); cidx = malloc(ccap * sizeof *cidx);
	qh = qt = 0;
	newobj(o, root, root_type, 1);
	while (qh < qt) {
		uint64_t end = qt;
		if (SORTED) { SORT_O = o; qsort(q + qh, end - qh, 4, by_addr); }
		if (MODE == 1) read_level(o, qh, end);
		for (; qh < end; qh++) edges(o, q[qh]);
	}
	return 0;
}

/* The restore's writes as today's engine sends them: every object its own iovec,
 * 1,024 per process_vm_writev.  Writes each captured object's bytes back where they
 * were read (the target is stopped and the bytes are its own); returns the seconds. */
double write_back(int pid, struct out *o) {
	struct iovec l[1024], r[1024];
	int k = 0;
	double t0 = now();
	for (uint64_t i = 0; i < o->n; i++) {
		l[k].iov_base = o->arena + o->data_off[i]; l[k].iov_len = o->size[i];
		r[k].iov_base = (void *)o->addr[i]; r[k].iov_len = o->size[i];
		if (++k == 1024 || i + 1 == o->n) { process_vm_writev(pid, l, k, r, k, 0); k = 0; }
	}
	return now() - t0;
}
