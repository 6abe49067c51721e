/* The compiled capture: walk a stopped process's heap from the roots the Python
 * decoder found, by type recipes (walk.py compiles them), into columns.
 *
 * Memory is read in 64 KiB chunks on demand (one process_vm_readv each) and kept;
 * a granule index (per chunk, one uint32 per 16 bytes naming the object covering
 * them) finds the object a pointer lands in, at its start or inside it, in O(1).
 *
 * The walk produces exactly the reference capture's graph (state/capture.py) or
 * declines with a reason: every shape where the reference would merge objects,
 * read a partial object or depend on the order it meets pointers in is declined,
 * and the caller then runs the reference walk.  It only ever reads the target. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>

#define CHUNK_SHIFT 16
#define CHUNK ((uint64_t)1 << CHUNK_SHIFT)
#define PAGE 4096u
#define GRANULE_SHIFT 4

enum { EK_FOLLOW = 0, EK_STRING = 1, EK_NOFOLLOW = 2, EK_UNTYPED = 3, EK_OPAQUE = 4 };
enum { EK_LEN_ONE = 0, EK_LEN_CONST = 1, EK_LEN_FIELD = 2 };
enum { EK_OK = 0, EK_DECLINED = 1, EK_LIMIT = 2, EK_NOMEM = 3 };

/* One pointer slot of a recipe: `repeat` pointers `stride` bytes apart from `off`. */
struct ek_walk_slot {
	uint64_t off, stride, repeat;
	int32_t kind;   /* EK_FOLLOW, EK_STRING, EK_NOFOLLOW (a function), EK_UNTYPED, EK_OPAQUE */
	int32_t target; /* the pointee's recipe; a C string's code (< 0) for EK_STRING */
	int32_t len_kind;
	int32_t len_size;   /* EK_LEN_FIELD: the length field's size, 1/2/4/8 */
	int64_t len_delta;  /* EK_LEN_FIELD: its offset minus the pointer's */
	int64_t len_signed; /* EK_LEN_FIELD: whether it is signed */
	uint64_t len_const; /* EK_LEN_CONST: the count */
};

struct ek_walk_recipe {
	uint64_t size; /* of one element */
	uint64_t nslots;
	const struct ek_walk_slot *slots;
};

/* A root: a pointer the decoder found in a variable.  recipe < 0: a C string. */
struct ek_walk_root {
	uint64_t addr;
	int64_t recipe;
	uint64_t count;
};

struct chunk {
	uint64_t base;
	uint8_t *buf;
	uint32_t *granules; /* object index + 1 covering each 16 bytes, 0 for none */
	uint16_t valid;     /* one bit per readable page */
};

struct vec {
	void *p;
	uint64_t n, cap;
};

struct ek_walk {
	pid_t pid;
	const struct ek_walk_recipe *recipes;
	const uint64_t *ranges; /* heap [start, end) pairs, sorted */
	uint64_t nranges, max_objects, max_bytes, max_string, bytes;
	struct chunk *chunks; /* open addressing by base */
	struct chunk *last;   /* the chunk found last: walks are mostly local */
	uint64_t nchunks, chunk_cap, syscalls;
	/* per object */
	struct vec addr, recipe, count, extent;
	/* per heap pointer slot */
	struct vec slot_obj, slot_off, target_obj, target_off;
	/* per root: object index and offset */
	struct vec root_obj, root_off;
	/* distinct pointer values not followed into the heap */
	uint64_t *outside;
	uint64_t noutside, outside_cap;
	int status;
	char reason[256];
};

static inline uint64_t mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	return x;
}

static void decline(struct ek_walk *w, int status, const char *fmt, uint64_t a, uint64_t b)
{
	if (w->status != EK_OK)
		return;
	w->status = status;
	snprintf(w->reason, sizeof w->reason, fmt, (unsigned long long)a, (unsigned long long)b);
}

static int push(struct ek_walk *w, struct vec *v, size_t width, const void *item)
{
	if (v->n == v->cap) {
		uint64_t cap = v->cap ? v->cap * 2 : 4096;
		void *p = realloc(v->p, cap * width);
		if (!p) {
			decline(w, EK_NOMEM, "out of memory", 0, 0);
			return -1;
		}
		v->p = p;
		v->cap = cap;
	}
	memcpy((char *)v->p + v->n++ * width, item, width);
	return 0;
}

#define AT(v, type, i) (((type *)(v).p)[i])

/* -- the chunk cache ------------------------------------------------------------- */

static struct chunk *chunk_slot(struct ek_walk *w, uint64_t base)
{
	if (w->last && w->last->base == base && w->last->buf)
		return w->last;
	uint64_t mask = w->chunk_cap - 1, i = mix(base) & mask;
	while (w->chunks[i].buf && w->chunks[i].base != base)
		i = (i + 1) & mask;
	if (w->chunks[i].buf)
		w->last = &w->chunks[i];
	return &w->chunks[i];
}

static int grow_chunks(struct ek_walk *w)
{
	uint64_t old_cap = w->chunk_cap;
	struct chunk *old = w->chunks;
	w->chunk_cap = old_cap ? old_cap * 2 : 1024;
	w->chunks = calloc(w->chunk_cap, sizeof *w->chunks);
	w->last = NULL;
	if (!w->chunks) {
		w->chunks = old;
		w->chunk_cap = old_cap;
		decline(w, EK_NOMEM, "out of memory", 0, 0);
		return -1;
	}
	for (uint64_t i = 0; i < old_cap; i++)
		if (old[i].buf)
			*chunk_slot(w, old[i].base) = old[i];
	free(old);
	return 0;
}

/* The chunk holding `base` (CHUNK-aligned), read on first use; NULL when out of memory. */
static struct chunk *chunk_at(struct ek_walk *w, uint64_t base)
{
	struct chunk *c = chunk_slot(w, base);
	if (c->buf)
		return c;
	if ((w->nchunks + 1) * 2 > w->chunk_cap) {
		if (grow_chunks(w))
			return NULL;
		c = chunk_slot(w, base);
	}
	uint8_t *buf = malloc(CHUNK);
	if (!buf) {
		decline(w, EK_NOMEM, "out of memory", 0, 0);
		return NULL;
	}
	struct iovec local = {buf, CHUNK}, remote = {(void *)base, CHUNK};
	ssize_t got = process_vm_readv(w->pid, &local, 1, &remote, 1, 0);
	w->syscalls++;
	uint16_t valid = 0xffff;
	if (got != (ssize_t)CHUNK) { /* a partly mapped chunk: page by page */
		valid = 0;
		for (uint64_t page = 0; page < CHUNK / PAGE; page++) {
			struct iovec l = {buf + page * PAGE, PAGE}, r = {(void *)(base + page * PAGE), PAGE};
			w->syscalls++;
			if (process_vm_readv(w->pid, &l, 1, &r, 1, 0) == (ssize_t)PAGE)
				valid |= (uint16_t)(1u << page);
		}
	}
	c->base = base;
	c->buf = buf;
	c->granules = NULL;
	c->valid = valid;
	w->nchunks++;
	return c;
}

static int readable(const struct chunk *c, uint64_t from, uint64_t to)
{
	for (uint64_t page = from / PAGE; page <= (to - 1) / PAGE; page++)
		if (!(c->valid & (1u << page)))
			return 0;
	return 1;
}

/* Whether [addr, addr + len) can be read; reads the chunks it spans. */
static int span_readable(struct ek_walk *w, uint64_t addr, uint64_t len)
{
	while (len) {
		uint64_t base = addr & ~(CHUNK - 1), in = addr - base;
		uint64_t n = CHUNK - in < len ? CHUNK - in : len;
		struct chunk *c = chunk_at(w, base);
		if (!c)
			return 0;
		if (!readable(c, in, in + n)) {
			decline(w, EK_DECLINED, "the object at %#llx cannot be read", addr, 0);
			return 0;
		}
		addr += n;
		len -= n;
	}
	return 1;
}

static void copy_out(struct ek_walk *w, uint8_t *dst, uint64_t addr, uint64_t len)
{
	while (len) {
		uint64_t base = addr & ~(CHUNK - 1), in = addr - base;
		uint64_t n = CHUNK - in < len ? CHUNK - in : len;
		memcpy(dst, chunk_slot(w, base)->buf + in, n);
		dst += n;
		addr += n;
		len -= n;
	}
}

/* The length of the C string at addr, at most `limit`; -1 (declined) if unreadable
 * before its NUL, limit + 1 when longer. */
static int64_t string_length(struct ek_walk *w, uint64_t addr, uint64_t limit)
{
	uint64_t n = 0;
	while (n <= limit) {
		uint64_t base = addr & ~(CHUNK - 1), in = addr - base;
		struct chunk *c = chunk_at(w, base);
		if (!c)
			return -1;
		uint64_t end = in;
		while (end < CHUNK && (c->valid & (1u << (end / PAGE))))
			end = (end / PAGE + 1) * PAGE;
		uint8_t *nul = end > in ? memchr(c->buf + in, 0, end - in) : NULL;
		if (nul)
			return (int64_t)(n + (uint64_t)(nul - (c->buf + in)));
		if (end < CHUNK) {
			decline(w, EK_DECLINED, "the string at %#llx runs into unreadable memory", addr, 0);
			return -1;
		}
		n += CHUNK - in;
		addr += CHUNK - in;
	}
	return (int64_t)limit + 1;
}

/* -- the granule index ----------------------------------------------------------- */

static uint32_t *granule(struct ek_walk *w, uint64_t addr, int create)
{
	uint64_t base = addr & ~(CHUNK - 1);
	struct chunk *c = create ? chunk_at(w, base) : chunk_slot(w, base);
	if (!c || !c->buf)
		return NULL;
	if (!c->granules) {
		if (!create)
			return NULL;
		c->granules = calloc(CHUNK >> GRANULE_SHIFT, sizeof *c->granules);
		if (!c->granules) {
			decline(w, EK_NOMEM, "out of memory", 0, 0);
			return NULL;
		}
	}
	return &c->granules[(addr - base) >> GRANULE_SHIFT];
}

/* The object covering addr (its index), or -1. */
static int64_t object_at(struct ek_walk *w, uint64_t addr)
{
	uint32_t *g = granule(w, addr, 0);
	if (!g || !*g)
		return -1;
	uint64_t id = *g - 1, start = AT(w->addr, uint64_t, id);
	return addr >= start && addr < start + AT(w->extent, uint64_t, id) ? (int64_t)id : -1;
}

static int in_heap(const struct ek_walk *w, uint64_t addr)
{
	uint64_t lo = 0, hi = w->nranges;
	while (lo < hi) {
		uint64_t mid = (lo + hi) / 2;
		if (addr < w->ranges[2 * mid])
			hi = mid;
		else if (addr >= w->ranges[2 * mid + 1])
			lo = mid + 1;
		else
			return 1;
	}
	return 0;
}

/* -- objects --------------------------------------------------------------------- */

/* A new object at addr; its index, or -1 when declined. */
static int64_t new_object(struct ek_walk *w, uint64_t addr, int64_t recipe, uint64_t count,
			  uint64_t extent)
{
	if (w->addr.n >= w->max_objects) {
		decline(w, EK_LIMIT, "more than %llu heap objects", w->max_objects, 0);
		return -1;
	}
	w->bytes += extent;
	if (extent > w->max_bytes || w->bytes > w->max_bytes) {
		decline(w, EK_LIMIT, "more than %llu bytes", w->max_bytes, 0);
		return -1;
	}
	if (!span_readable(w, addr, extent))
		return -1;
	uint64_t id = w->addr.n;
	for (uint64_t g = addr >> GRANULE_SHIFT; g <= (addr + extent - 1) >> GRANULE_SHIFT; g++) {
		uint32_t *slot = granule(w, g << GRANULE_SHIFT, 1);
		if (!slot)
			return -1;
		if (*slot) {
			decline(w, EK_DECLINED,
				"the object at %#llx overlaps, encloses or adjoins within 16 bytes "
				"the object at %#llx",
				addr, AT(w->addr, uint64_t, *slot - 1));
			return -1;
		}
		*slot = (uint32_t)id + 1;
	}
	if (push(w, &w->addr, 8, &addr) || push(w, &w->recipe, 8, &recipe) ||
	    push(w, &w->count, 8, &count) || push(w, &w->extent, 8, &extent))
		return -1;
	return (int64_t)id;
}

static void note_outside(struct ek_walk *w, uint64_t value)
{
	if ((w->noutside + 1) * 2 > w->outside_cap) {
		uint64_t old_cap = w->outside_cap, *old = w->outside;
		w->outside_cap = old_cap ? old_cap * 2 : 1024;
		w->outside = calloc(w->outside_cap, 8);
		if (!w->outside) {
			w->outside = old;
			w->outside_cap = old_cap;
			decline(w, EK_NOMEM, "out of memory", 0, 0);
			return;
		}
		for (uint64_t i = 0; i < old_cap; i++)
			if (old[i]) {
				uint64_t j = mix(old[i]) & (w->outside_cap - 1);
				while (w->outside[j])
					j = (j + 1) & (w->outside_cap - 1);
				w->outside[j] = old[i];
			}
		free(old);
	}
	uint64_t j = mix(value) & (w->outside_cap - 1);
	while (w->outside[j] && w->outside[j] != value)
		j = (j + 1) & (w->outside_cap - 1);
	if (!w->outside[j]) {
		w->outside[j] = value;
		w->noutside++;
	}
}

/* Resolve a heap pointer `p` wanting `recipe` x `count` (recipe -1: a C string): the
 * object and offset it lands at, created if new.  0, or -1 when declined. */
static int resolve(struct ek_walk *w, uint64_t p, int64_t recipe, uint64_t count, uint64_t *obj,
		   uint64_t *off)
{
	uint64_t wanted = 0;
	if (recipe >= 0) {
		uint64_t size = w->recipes[recipe].size;
		if (count == 0) {
			decline(w, EK_DECLINED, "an array of length 0 at %#llx", p, 0);
			return -1;
		}
		if (size && count > w->max_bytes / size) {
			decline(w, EK_LIMIT, "more than %llu bytes", w->max_bytes, 0);
			return -1;
		}
		wanted = size * count;
		if (!wanted) {
			decline(w, EK_DECLINED, "an object of size 0 at %#llx", p, 0);
			return -1;
		}
	}
	int64_t hit = object_at(w, p);
	if (hit >= 0) {
		uint64_t start = AT(w->addr, uint64_t, hit), extent = AT(w->extent, uint64_t, hit);
		*obj = (uint64_t)hit;
		*off = p - start;
		if (recipe >= 0 && *off + wanted > extent) {
			/* The reference would make a larger object (or overlapping ones). */
			decline(w, EK_DECLINED, "a pointer to %#llx wants more than the object at %#llx",
				p, start);
			return -1;
		}
		if (recipe < 0 && AT(w->recipe, int64_t, hit) >= 0) {
			/* A char * into a typed object: its text must end inside it. */
			int64_t len = string_length(w, p, extent - *off);
			if (len < 0)
				return -1;
			if ((uint64_t)len >= extent - *off) {
				decline(w, EK_DECLINED, "the string at %#llx runs past the object at %#llx",
					p, start);
				return -1;
			}
		}
		return 0;
	}
	if (recipe < 0) {
		int64_t len = string_length(w, p, w->max_string);
		if (len < 0)
			return -1;
		if ((uint64_t)len > w->max_string) {
			decline(w, EK_DECLINED, "the string at %#llx is longer than %llu bytes", p,
				w->max_string);
			return -1;
		}
		count = (uint64_t)len;
		wanted = (uint64_t)len + 1;
	}
	int64_t id = new_object(w, p, recipe, count, wanted);
	if (id < 0)
		return -1;
	*obj = (uint64_t)id;
	*off = 0;
	return 0;
}

static uint64_t read_length(const uint8_t *at, int size, int is_signed)
{
	int64_t value = 0;
	switch (size) {
	case 1: value = is_signed ? (int64_t)(int8_t)at[0] : (int64_t)at[0]; break;
	case 2: { uint16_t v; memcpy(&v, at, 2); value = is_signed ? (int16_t)v : (int64_t)v; break; }
	case 4: { uint32_t v; memcpy(&v, at, 4); value = is_signed ? (int32_t)v : (int64_t)v; break; }
	default: { uint64_t v; memcpy(&v, at, 8); value = (int64_t)v; if (!is_signed && v >> 63) return UINT64_MAX; }
	}
	return value < 0 ? 0 : (uint64_t)value;
}

/* Follow the pointer slots of object `id`, whose bytes are `bytes`. */
static int follow(struct ek_walk *w, uint64_t id, const uint8_t *bytes)
{
	int64_t r = AT(w->recipe, int64_t, id);
	const struct ek_walk_recipe *recipe = &w->recipes[r];
	uint64_t count = AT(w->count, uint64_t, id);
	uint64_t first_row = w->slot_obj.n;
	int sorted = 1;
	uint64_t last_off = 0;
	for (uint64_t e = 0; e < count; e++) {
		for (uint64_t s = 0; s < recipe->nslots; s++) {
			const struct ek_walk_slot *slot = &recipe->slots[s];
			for (uint64_t k = 0; k < slot->repeat; k++) {
				uint64_t at = e * recipe->size + slot->off + k * slot->stride;
				uint64_t p;
				memcpy(&p, bytes + at, 8);
				if (!p)
					continue;
				int heap = in_heap(w, p);
				if (slot->kind == EK_OPAQUE && heap)
					continue; /* carried as a number: nothing to learn about it */
				if (slot->kind == EK_NOFOLLOW || slot->kind == EK_OPAQUE || !heap) {
					note_outside(w, p);
					continue;
				}
				if (slot->kind == EK_UNTYPED) {
					decline(w, EK_DECLINED, "an untyped pointer into the heap at %#llx", p, 0);
					return -1;
				}
				uint64_t n = 1;
				if (slot->len_kind == EK_LEN_CONST)
					n = slot->len_const;
				else if (slot->len_kind == EK_LEN_FIELD)
					n = read_length(bytes + (int64_t)at + slot->len_delta, slot->len_size,
							(int)slot->len_signed);
				uint64_t obj, off;
				if (resolve(w, p, slot->target, n, &obj, &off))
					return -1;
				uint32_t row[4] = {(uint32_t)id, (uint32_t)at, (uint32_t)obj, (uint32_t)off};
				if (push(w, &w->slot_obj, 4, &row[0]) || push(w, &w->slot_off, 4, &row[1]) ||
				    push(w, &w->target_obj, 4, &row[2]) || push(w, &w->target_off, 4, &row[3]))
					return -1;
				if (w->slot_obj.n > first_row + 1 && at < last_off)
					sorted = 0;
				last_off = at;
			}
		}
	}
	if (!sorted) { /* insertion sort of this object's rows by offset: they are few */
		for (uint64_t i = first_row + 1; i < w->slot_obj.n; i++) {
			uint32_t so = AT(w->slot_off, uint32_t, i), to = AT(w->target_obj, uint32_t, i),
				 tf = AT(w->target_off, uint32_t, i);
			uint64_t j = i;
			for (; j > first_row && AT(w->slot_off, uint32_t, j - 1) > so; j--) {
				AT(w->slot_off, uint32_t, j) = AT(w->slot_off, uint32_t, j - 1);
				AT(w->target_obj, uint32_t, j) = AT(w->target_obj, uint32_t, j - 1);
				AT(w->target_off, uint32_t, j) = AT(w->target_off, uint32_t, j - 1);
			}
			AT(w->slot_off, uint32_t, j) = so;
			AT(w->target_obj, uint32_t, j) = to;
			AT(w->target_off, uint32_t, j) = tf;
		}
	}
	return 0;
}

/* -- the public interface ---------------------------------------------------------- */

/* Walk from the roots; the result (ek_walk_status says whether it is whole) is freed
 * with ek_walk_free. */
struct ek_walk *ek_walk_run(int pid, const struct ek_walk_recipe *recipes, const uint64_t *ranges,
			    uint64_t nranges, const struct ek_walk_root *roots, uint64_t nroots,
			    uint64_t max_objects, uint64_t max_bytes, uint64_t max_string)
{
	struct ek_walk *w = calloc(1, sizeof *w);
	if (!w)
		return NULL;
	w->pid = pid;
	w->recipes = recipes;
	w->ranges = ranges;
	w->nranges = nranges;
	w->max_objects = max_objects < UINT32_MAX - 1 ? max_objects : UINT32_MAX - 1;
	w->max_bytes = max_bytes;
	w->max_string = max_string;
	if (grow_chunks(w))
		return w;
	for (uint64_t i = 0; i < nroots && w->status == EK_OK; i++) {
		uint64_t obj = 0, off = 0;
		resolve(w, roots[i].addr, roots[i].recipe, roots[i].count, &obj, &off);
		push(w, &w->root_obj, 8, &obj);
		push(w, &w->root_off, 8, &off);
	}
	uint8_t *scratch = NULL;
	uint64_t scratch_len = 0;
	/* Objects are followed in the order they were made: a breadth-first walk. */
	for (uint64_t id = 0; id < w->addr.n && w->status == EK_OK; id++) {
		if (AT(w->recipe, int64_t, id) < 0 || !w->recipes[AT(w->recipe, int64_t, id)].nslots)
			continue;
		uint64_t extent = AT(w->extent, uint64_t, id);
		if (extent > scratch_len) {
			free(scratch);
			scratch_len = extent;
			scratch = malloc(extent);
			if (!scratch) {
				scratch_len = 0;
				decline(w, EK_NOMEM, "out of memory", 0, 0);
				break;
			}
		}
		copy_out(w, scratch, AT(w->addr, uint64_t, id), extent);
		follow(w, id, scratch);
	}
	free(scratch);
	return w;
}

int ek_walk_status(const struct ek_walk *w) { return w ? w->status : EK_NOMEM; }

const char *ek_walk_reason(const struct ek_walk *w) { return w ? w->reason : "out of memory"; }

uint64_t ek_walk_objects(const struct ek_walk *w) { return w->addr.n; }

uint64_t ek_walk_slots(const struct ek_walk *w) { return w->slot_obj.n; }

uint64_t ek_walk_outside(const struct ek_walk *w) { return w->noutside; }

uint64_t ek_walk_syscalls(const struct ek_walk *w) { return w->syscalls; }

/* The object columns: addr, type id (the recipe's or the string code's, from the two
 * tables), count, kind (0 typed, 1 string) and `start` (n + 1 offsets into the data). */
void ek_walk_object_columns(const struct ek_walk *w, const int64_t *recipe_type,
			    const int64_t *string_type, uint64_t *addr, int64_t *type_id,
			    uint64_t *count, uint8_t *kind, uint64_t *start)
{
	uint64_t n = w->addr.n, at = 0;
	memcpy(addr, w->addr.p, n * 8);
	memcpy(count, w->count.p, n * 8);
	for (uint64_t i = 0; i < n; i++) {
		int64_t r = AT(w->recipe, int64_t, i);
		type_id[i] = r >= 0 ? recipe_type[r] : string_type[-1 - r];
		kind[i] = r < 0;
		start[i] = at;
		at += AT(w->extent, uint64_t, i) - (r < 0); /* a string's text without its NUL */
	}
	start[n] = at;
}

/* Every object's bytes, one after the other (start[n] bytes). */
void ek_walk_data(struct ek_walk *w, uint8_t *data)
{
	for (uint64_t i = 0; i < w->addr.n; i++) {
		uint64_t len = AT(w->extent, uint64_t, i) - (AT(w->recipe, int64_t, i) < 0);
		copy_out(w, data, AT(w->addr, uint64_t, i), len);
		data += len;
	}
}

void ek_walk_slot_columns(const struct ek_walk *w, uint32_t *slot_obj, uint32_t *slot_off,
			  uint32_t *target_obj, uint32_t *target_off)
{
	uint64_t n = w->slot_obj.n;
	memcpy(slot_obj, w->slot_obj.p, n * 4);
	memcpy(slot_off, w->slot_off.p, n * 4);
	memcpy(target_obj, w->target_obj.p, n * 4);
	memcpy(target_off, w->target_off.p, n * 4);
}

void ek_walk_roots(const struct ek_walk *w, uint64_t *obj, uint64_t *off)
{
	memcpy(obj, w->root_obj.p, w->root_obj.n * 8);
	memcpy(off, w->root_off.p, w->root_off.n * 8);
}

void ek_walk_outside_values(const struct ek_walk *w, uint64_t *values)
{
	for (uint64_t i = 0; i < w->outside_cap; i++)
		if (w->outside[i])
			*values++ = w->outside[i];
}

void ek_walk_free(struct ek_walk *w)
{
	if (!w)
		return;
	for (uint64_t i = 0; i < w->chunk_cap; i++) {
		free(w->chunks[i].buf);
		free(w->chunks[i].granules);
	}
	free(w->chunks);
	struct vec *vecs[] = {&w->addr,	    &w->recipe,	    &w->count,	    &w->extent,
			      &w->slot_obj, &w->slot_off,   &w->target_obj, &w->target_off,
			      &w->root_obj, &w->root_off};
	for (size_t i = 0; i < sizeof vecs / sizeof *vecs; i++)
		free(vecs[i]->p);
	free(w->outside);
	free(w);
}
