/* The compiled restore: convert captured heap objects to the new version's layout by
 * byte recipes, allocate-then-relocate, and write them into the stopped process.
 *
 * One context per heap (HeapColumns).  Python compiles a recipe per (old type, new
 * type) pair (place.py) and hands it over with ek_place_recipe; the closure walk asks
 * Python, through `resolve`, which recipe a newly reached object takes (the first time
 * a (pointer class, old type, kind) is met), and through `moved` where an interior
 * pointer lands in the new layout.  Nothing here writes to the process before
 * ek_place_write.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>

enum { KIND_TYPED = 0, KIND_STRING = 1, KIND_BUFFER = 2 };
enum { OP_COPY = 0, OP_INT = 1, OP_ENUM = 2, OP_PTR = 3, OP_F32 = 4 };
enum { PTR_FUNCTION = 1, PTR_UNTYPED = 2 };
enum { RECIPE_STRING = 0, RECIPE_BUFFER = 1, MAX_RECIPES = 1 << 16 };

/* Why a build stopped (ek_place_error_object names the object): the Python path then
 * runs and says it in words. */
enum {
    ERR_RESOLVE = -2, ERR_CONFLICT = -3, ERR_RANGE = -4, ERR_ENUM = -5,
    ERR_SHAPE = -6, ERR_MOVED = -7, ERR_UNTYPED = -8, ERR_READ = -9, ERR_WRITE = -10,
    ERR_MEMORY = -11, /* not -1: that is find()'s "no object there" */
};

/* One byte operation over one element: see place.py's Op for the fields. */
typedef struct {
    int32_t op, src, dst, arg;
    int64_t extra;
} ek_op;

typedef struct {
    ek_op *ops;
    int32_t nops;
    uint32_t old_size, new_size;
    int64_t *table; /* OP_ENUM: (old value, new value or INT64_MIN: no such name) pairs */
    int32_t ntable;
} recipe_t;

typedef int (*resolve_fn)(int32_t cls, int64_t old_tid, int32_t kind);
typedef int64_t (*moved_fn)(int32_t recipe, int64_t old_tid, uint64_t offset);

typedef struct { uint64_t pos, target; int64_t offset; } reloc_t;
typedef struct { uint64_t pos, value; int64_t cls; } external_t;

typedef struct {
    uint64_t n;
    const uint64_t *addr, *count, *start;
    const int64_t *type_id;
    const uint8_t *kind, *data;
    /* Finding a pointer's target: a granule index (per MiB region met, one uint32 per
     * 16 bytes naming 1 + the object last laid over them), and, made only when two
     * objects share a granule, the objects sorted by address. */
    uint64_t *region_key; /* 1 + address >> 20, 0 for a free slot */
    uint32_t **region_block;
    uint64_t region_size;
    uint64_t *sorted_addr;
    uint32_t *sorted_index;
    int32_t *recipe;    /* per object: its recipe, -1 while not reached */
    uint64_t *new_addr; /* per object: its address in the new process, 0 before */
    recipe_t recipes[MAX_RECIPES];
    resolve_fn resolve;
    moved_fn moved;
    uint64_t *cache; /* (cls, tid, kind) -> recipe: open addressing, key 0 is empty */
    int32_t *cache_value;
    uint64_t cache_size, cache_used;
    /* the last build */
    uint32_t *reached;
    uint64_t nreached, reached_cap;
    uint64_t *offset, *size; /* per reached object: in `out`, and its new size */
    uint64_t sizes_cap;
    uint8_t *out;
    uint64_t out_len, out_cap;
    reloc_t *relocs;
    uint64_t nrelocs, relocs_cap;
    external_t *externals;
    uint64_t nexternals, externals_cap;
    int64_t error_object;
    double write_stats[4]; /* the last write: spans, seconds reading, overlaying, writing */
} ctx_t;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* What the last ek_place_write did: spans, and seconds reading, overlaying, writing. */
void ek_place_write_stats(const ctx_t *c, double *out) { memcpy(out, c->write_stats, sizeof c->write_stats); }

static int grow(void **array, uint64_t *cap, uint64_t need, size_t item) {
    if (need <= *cap)
        return 0;
    uint64_t cap2 = *cap ? *cap : 1024;
    while (cap2 < need)
        cap2 *= 2;
    void *grown = realloc(*array, cap2 * item);
    if (grown == NULL)
        return ERR_MEMORY;
    *array = grown;
    *cap = cap2;
    return 0;
}

/* LSD radix sort of (key, index) pairs by key, 11 bits a pass over the bits that vary
 * (keys above their minimum: a heap's addresses differ in their low 28 bits or so). */
static int sort_pairs(uint64_t *keys, uint32_t *index, uint64_t n) {
    uint64_t low = UINT64_MAX, top = 0;
    for (uint64_t i = 0; i < n; i++)
        low = keys[i] < low ? keys[i] : low;
    for (uint64_t i = 0; i < n; i++)
        top |= keys[i] - low;
    int sorted = 1;
    for (uint64_t i = 1; i < n && sorted; i++)
        sorted = keys[i - 1] <= keys[i];
    if (sorted)
        return 0;
    uint64_t *keys2 = malloc(n * sizeof *keys2);
    uint32_t *index2 = malloc(n * sizeof *index2);
    if (keys2 == NULL || index2 == NULL) {
        free(keys2);
        free(index2);
        return ERR_MEMORY;
    }
    for (int shift = 0; shift < 64 && (top >> shift); shift += 11) {
        uint64_t counts[2049] = {0};
        for (uint64_t i = 0; i < n; i++)
            counts[(((keys[i] - low) >> shift) & 2047) + 1]++;
        for (int d = 0; d < 2048; d++)
            counts[d + 1] += counts[d];
        for (uint64_t i = 0; i < n; i++) {
            uint64_t at = counts[((keys[i] - low) >> shift) & 2047]++;
            keys2[at] = keys[i];
            index2[at] = index[i];
        }
        memcpy(keys, keys2, n * sizeof *keys);
        memcpy(index, index2, n * sizeof *index);
    }
    free(keys2);
    free(index2);
    return 0;
}

static uint64_t extent(const ctx_t *c, uint64_t i) {
    uint64_t bytes = c->start[i + 1] - c->start[i] + (c->kind[i] == KIND_STRING);
    return bytes ? bytes : 1; /* an empty buffer is still pointed to */
}

static uint64_t region_mix(uint64_t key) { return (key * 0x9e3779b97f4a7c15ULL) >> 20; }

/* The granule block of the MiB region `region`; made when `make`, else NULL if none. */
static uint32_t *region(ctx_t *c, uint64_t region, int make) {
    uint64_t key = region + 1, mask = c->region_size - 1;
    for (uint64_t at = region_mix(key) & mask;; at = (at + 1) & mask) {
        if (c->region_key[at] == key)
            return c->region_block[at];
        if (c->region_key[at] == 0) {
            if (!make)
                return NULL;
            c->region_block[at] = calloc(1 << 16, sizeof(uint32_t));
            if (c->region_block[at] != NULL)
                c->region_key[at] = key;
            return c->region_block[at];
        }
    }
}

static int granules(ctx_t *c) {
    uint64_t regions = 0; /* at most: the regions' count is known once they are made */
    for (uint64_t i = 0; i < c->n; i++)
        regions += ((c->addr[i] + extent(c, i) - 1) >> 20) - (c->addr[i] >> 20) + 1;
    c->region_size = 16;
    while (c->region_size < 2 * regions)
        c->region_size *= 2;
    c->region_key = calloc(c->region_size, sizeof *c->region_key);
    c->region_block = calloc(c->region_size, sizeof *c->region_block);
    if (c->region_key == NULL || c->region_block == NULL)
        return ERR_MEMORY;
    for (uint64_t i = 0; i < c->n; i++) {
        uint64_t first = c->addr[i] >> 4, last = (c->addr[i] + extent(c, i) - 1) >> 4;
        for (uint64_t g = first; g <= last; g++) {
            uint32_t *block = region(c, g >> 16, 1);
            if (block == NULL)
                return ERR_MEMORY;
            block[g & 0xffff] = (uint32_t)(i + 1);
        }
    }
    return 0;
}

static int64_t find_sorted(ctx_t *c, uint64_t addr) {
    if (c->sorted_addr == NULL) {
        c->sorted_addr = malloc((c->n + 1) * sizeof *c->sorted_addr);
        c->sorted_index = malloc((c->n + 1) * sizeof *c->sorted_index);
        if (c->sorted_addr == NULL || c->sorted_index == NULL)
            return ERR_MEMORY;
        for (uint64_t i = 0; i < c->n; i++) {
            c->sorted_addr[i] = c->addr[i];
            c->sorted_index[i] = (uint32_t)i;
        }
        if (sort_pairs(c->sorted_addr, c->sorted_index, c->n) != 0)
            return ERR_MEMORY;
    }
    uint64_t lo = 0, hi = c->n;
    while (lo < hi) {
        uint64_t mid = (lo + hi) / 2;
        if (c->sorted_addr[mid] <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return -1;
    uint32_t i = c->sorted_index[lo - 1];
    return addr - c->addr[i] < extent(c, i) ? (int64_t)i : -1;
}

/* The object whose bytes hold `addr` (a string's NUL included), -1 if none, or
 * ERR_MEMORY. */
static int64_t find(ctx_t *c, uint64_t addr) {
    const uint32_t *block = region(c, addr >> 20, 0);
    uint32_t named = block ? block[(addr >> 4) & 0xffff] : 0;
    if (named == 0)
        return -1;
    uint64_t i = named - 1;
    if (addr >= c->addr[i] && addr - c->addr[i] < extent(c, i))
        return (int64_t)i;
    return find_sorted(c, addr); /* the granule is shared with another object */
}

void ek_place_close(ctx_t *c) {
    if (c == NULL)
        return;
    for (int i = 0; i < MAX_RECIPES; i++) {
        free(c->recipes[i].ops);
        free(c->recipes[i].table);
    }
    for (uint64_t i = 0; i < c->region_size; i++)
        free(c->region_block[i]);
    free(c->region_key);
    free(c->region_block);
    free(c->sorted_addr);
    free(c->sorted_index);
    free(c->recipe);
    free(c->new_addr);
    free(c->cache);
    free(c->cache_value);
    free(c->reached);
    free(c->offset);
    free(c->size);
    free(c->out);
    free(c->relocs);
    free(c->externals);
    free(c);
}

ctx_t *ek_place_open(uint64_t n, const uint64_t *addr, const int64_t *type_id,
                     const uint64_t *count, const uint8_t *kind, const uint64_t *start,
                     const uint8_t *data, resolve_fn resolve, moved_fn moved) {
    ctx_t *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->n = n, c->addr = addr, c->type_id = type_id, c->count = count, c->kind = kind;
    c->start = start, c->data = data, c->resolve = resolve, c->moved = moved;
    c->recipe = malloc((n + 1) * sizeof *c->recipe);
    c->new_addr = calloc(n + 1, sizeof *c->new_addr);
    c->cache_size = 1024;
    c->cache = calloc(c->cache_size, sizeof *c->cache);
    c->cache_value = calloc(c->cache_size, sizeof *c->cache_value);
    if (!c->recipe || !c->new_addr || !c->cache || !c->cache_value || granules(c) != 0) {
        ek_place_close(c);
        return NULL;
    }
    for (uint64_t i = 0; i < n; i++)
        c->recipe[i] = -1;
    return c;
}

int ek_place_recipe(ctx_t *c, int32_t id, const ek_op *ops, int32_t nops, uint32_t old_size,
                    uint32_t new_size, const int64_t *table, int32_t ntable) {
    if (id < 0 || id >= MAX_RECIPES || nops < 0 || ntable < 0)
        return ERR_SHAPE;
    recipe_t *r = &c->recipes[id];
    free(r->ops);
    free(r->table);
    r->ops = malloc((nops + 1) * sizeof *ops);
    r->table = malloc((2 * ntable + 1) * sizeof *table);
    if (r->ops == NULL || r->table == NULL)
        return ERR_MEMORY;
    memcpy(r->ops, ops, nops * sizeof *ops);
    memcpy(r->table, table, 2 * ntable * sizeof *table);
    r->nops = nops, r->ntable = ntable, r->old_size = old_size, r->new_size = new_size;
    return 0;
}

static uint64_t mix(uint64_t key) {
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    return key ^ (key >> 33);
}

static int cache_put(ctx_t *c, uint64_t key, int32_t value);

static int cache_grow(ctx_t *c) {
    uint64_t *old = c->cache, old_size = c->cache_size;
    int32_t *old_value = c->cache_value;
    c->cache_size *= 2;
    c->cache = calloc(c->cache_size, sizeof *c->cache);
    c->cache_value = calloc(c->cache_size, sizeof *c->cache_value);
    c->cache_used = 0;
    if (c->cache == NULL || c->cache_value == NULL)
        return ERR_MEMORY;
    for (uint64_t i = 0; i < old_size; i++)
        if (old[i] && cache_put(c, old[i], old_value[i]) != 0)
            return ERR_MEMORY;
    free(old);
    free(old_value);
    return 0;
}

static int cache_put(ctx_t *c, uint64_t key, int32_t value) {
    if (2 * (c->cache_used + 1) > c->cache_size && cache_grow(c) != 0)
        return ERR_MEMORY;
    uint64_t at = mix(key) & (c->cache_size - 1);
    while (c->cache[at] && c->cache[at] != key)
        at = (at + 1) & (c->cache_size - 1);
    c->cache_used += !c->cache[at];
    c->cache[at] = key;
    c->cache_value[at] = value;
    return 0;
}

/* The recipe of an object of `tid` and `kind` reached through pointer class `cls`. */
static int32_t recipe_for(ctx_t *c, int32_t cls, int64_t tid, uint8_t kind) {
    uint64_t key = (((uint64_t)(uint32_t)cls << 34) ^ ((uint64_t)tid << 2) ^ kind) | (1ULL << 63);
    uint64_t at = mix(key) & (c->cache_size - 1);
    while (c->cache[at]) {
        if (c->cache[at] == key)
            return c->cache_value[at];
        at = (at + 1) & (c->cache_size - 1);
    }
    int32_t found = c->resolve(cls, tid, kind);
    if (found < 0 || found >= MAX_RECIPES)
        return ERR_RESOLVE;
    return cache_put(c, key, found) == 0 ? found : ERR_MEMORY;
}

static int reach(ctx_t *c, uint32_t object, int32_t recipe) {
    if (c->recipe[object] >= 0)
        return c->recipe[object] == recipe ? 0 : ERR_CONFLICT;
    if (grow((void **)&c->reached, &c->reached_cap, c->nreached + 1, sizeof *c->reached))
        return ERR_MEMORY;
    c->recipe[object] = recipe;
    c->reached[c->nreached++] = object;
    return 0;
}

static int convert_int(const ek_op *op, const recipe_t *r, const uint8_t *src, uint8_t *dst) {
    int src_size = op->arg & 0xff, src_signed = (op->arg >> 8) & 1;
    int dst_size = (op->arg >> 16) & 0xff, dst_signed = (op->arg >> 24) & 1;
    uint64_t raw = 0;
    memcpy(&raw, src + op->src, src_size);
    __int128 value = raw;
    if (src_signed && src_size < 8 && (raw >> (8 * src_size - 1)) & 1)
        value = (int64_t)(raw | (~0ULL << (8 * src_size)));
    else if (src_signed)
        value = (int64_t)raw;
    if (op->op == OP_ENUM) { /* extra: the enum's first pair in the table, and how many */
        int64_t first = op->extra >> 32, last = first + (op->extra & 0xffffffff);
        for (int64_t i = first; i < last && i < r->ntable; i++) {
            if (r->table[2 * i] == (int64_t)value) {
                if (r->table[2 * i + 1] == INT64_MIN)
                    return ERR_ENUM;
                value = r->table[2 * i + 1];
                break;
            }
        }
    }
    int bits = 8 * dst_size;
    __int128 low = dst_signed ? -((__int128)1 << (bits - 1)) : 0;
    __int128 high = dst_signed ? ((__int128)1 << (bits - 1)) - 1 : ((__int128)1 << bits) - 1;
    if (value < low || value > high)
        return ERR_RANGE;
    uint64_t out = (uint64_t)value;
    memcpy(dst + op->dst, &out, dst_size);
    return 0;
}

static int convert_pointer(ctx_t *c, const ek_op *op, const uint8_t *src, uint64_t pos) {
    uint64_t value;
    memcpy(&value, src + op->src, 8);
    if (value == 0)
        return 0;
    int64_t target = op->extra & PTR_FUNCTION ? -1 : find(c, value);
    if (target == ERR_MEMORY)
        return ERR_MEMORY;
    if (target < 0) {
        if (op->extra & PTR_UNTYPED)
            return ERR_UNTYPED;
        if (grow((void **)&c->externals, &c->externals_cap, c->nexternals + 1,
                 sizeof *c->externals))
            return ERR_MEMORY;
        c->externals[c->nexternals++] = (external_t){pos, value, op->arg};
        return 0;
    }
    if (op->extra & PTR_UNTYPED)
        return ERR_UNTYPED; /* the reference capture's answer depends on its walk order */
    int32_t recipe = recipe_for(c, op->arg, c->type_id[target], c->kind[target]);
    if (recipe < 0)
        return recipe;
    int failed = reach(c, (uint32_t)target, recipe);
    if (failed)
        return failed;
    int64_t offset = (int64_t)(value - c->addr[target]);
    if (offset && c->kind[target] == KIND_TYPED) {
        offset = c->moved(recipe, c->type_id[target], (uint64_t)offset);
        if (offset < 0)
            return ERR_MOVED;
    }
    if (grow((void **)&c->relocs, &c->relocs_cap, c->nrelocs + 1, sizeof *c->relocs))
        return ERR_MEMORY;
    c->relocs[c->nrelocs++] = (reloc_t){pos, (uint64_t)target, offset};
    return 0;
}

static int convert(ctx_t *c, uint32_t object, uint64_t at) {
    const recipe_t *r = &c->recipes[c->recipe[object]];
    const uint8_t *old = c->data + c->start[object];
    uint64_t length = c->start[object + 1] - c->start[object];
    uint8_t *out = c->out + at;
    if (c->kind[object] != KIND_TYPED) {
        memcpy(out, old, length);
        return 0;
    }
    if (length != (uint64_t)r->old_size * c->count[object])
        return ERR_SHAPE;
    for (uint64_t e = 0; e < c->count[object]; e++) {
        const uint8_t *src = old + e * r->old_size;
        uint8_t *dst = out + e * r->new_size;
        for (int32_t k = 0; k < r->nops; k++) {
            const ek_op *op = &r->ops[k];
            int failed = 0;
            if (op->op == OP_COPY) {
                memcpy(dst + op->dst, src + op->src, op->arg);
            } else if (op->op == OP_INT || op->op == OP_ENUM) {
                failed = convert_int(op, r, src, dst);
            } else if (op->op == OP_F32) {
                float f;
                memcpy(&f, src + op->src, 4);
                f = (float)(double)f; /* as Python's unpack/pack does (it quiets a NaN) */
                memcpy(dst + op->dst, &f, 4);
            } else {
                failed = convert_pointer(c, op, src, (uint64_t)(dst - c->out) + op->dst);
            }
            if (failed)
                return failed;
        }
    }
    return 0;
}

static uint64_t new_size(const ctx_t *c, uint32_t object) {
    uint64_t length = c->start[object + 1] - c->start[object];
    uint64_t size = c->kind[object] == KIND_TYPED
                        ? (uint64_t)c->recipes[c->recipe[object]].new_size * c->count[object]
                        : length + (c->kind[object] == KIND_STRING);
    return size ? size : 1;
}

/* Reach every object from the seeds (skipping those placed before) and build their new
 * bytes in `out`, with a relocation per heap pointer and an external per other pointer.
 * Returns how many objects were reached, or an ERR_ (ek_place_error_object says which). */
int64_t ek_place_build(ctx_t *c, const uint32_t *seeds, const int32_t *recipes, uint64_t nseeds) {
    c->nreached = c->out_len = c->nrelocs = c->nexternals = 0;
    c->error_object = -1;
    /* Room for every object at once (the new bytes about as many as the old): growing
     * by doubling would copy hundreds of MB. */
    uint64_t offset_cap = c->sizes_cap;
    int failed = grow((void **)&c->reached, &c->reached_cap, c->n + 1, sizeof *c->reached) ||
                 grow((void **)&c->offset, &offset_cap, c->n + 1, sizeof *c->offset) ||
                 grow((void **)&c->size, &c->sizes_cap, c->n + 1, sizeof *c->size) ||
                 grow((void **)&c->out, &c->out_cap, c->start[c->n] + c->start[c->n] / 8 + 1, 1)
                     ? ERR_MEMORY
                     : 0;
    for (uint64_t i = 0; i < nseeds && !failed; i++)
        if (!c->new_addr[seeds[i]])
            failed = reach(c, seeds[i], recipes[i]);
    for (uint64_t i = 0; i < c->nreached && !failed; i++) {
        uint32_t object = c->reached[i];
        uint64_t size = new_size(c, object);
        if (grow((void **)&c->out, &c->out_cap, c->out_len + size, 1)) {
            failed = ERR_MEMORY;
            break;
        }
        memset(c->out + c->out_len, 0, size);
        c->offset[i] = c->out_len;
        c->size[i] = size;
        c->out_len += size;
        failed = convert(c, object, c->offset[i]);
        if (failed)
            c->error_object = object;
    }
    if (failed) { /* forget this build: the reference path runs instead */
        for (uint64_t i = 0; i < c->nreached; i++)
            c->recipe[c->reached[i]] = -1;
        c->nreached = 0;
        return failed;
    }
    return (int64_t)c->nreached;
}

int64_t ek_place_error_object(const ctx_t *c) { return c->error_object; }
int32_t ek_place_recipe_of(const ctx_t *c, uint64_t i) { return i < c->n ? c->recipe[i] : -1; }
const uint64_t *ek_place_sizes(const ctx_t *c) { return c->size; }
uint64_t ek_place_out_length(const ctx_t *c) { return c->out_len; }
const uint8_t *ek_place_out(const ctx_t *c) { return c->out; }

/* The pointers outside the heap: (position in out, old value, pointer class) each. */
const external_t *ek_place_externals(const ctx_t *c, uint64_t *n) {
    *n = c->nexternals;
    return c->externals;
}

/* Set external pointer `i` to its new value (mapped in Python). */
void ek_place_set_external(ctx_t *c, uint64_t i, uint64_t value) {
    memcpy(c->out + c->externals[i].pos, &value, 8);
}

/* Take the new addresses of the reached objects (in reached order) and relocate. */
void ek_place_assign(ctx_t *c, const uint64_t *addrs) {
    for (uint64_t i = 0; i < c->nreached; i++)
        c->new_addr[c->reached[i]] = addrs[i];
    for (uint64_t i = 0; i < c->nrelocs; i++) {
        const reloc_t *r = &c->relocs[i];
        uint64_t value = c->new_addr[r->target] + (uint64_t)r->offset;
        memcpy(c->out + r->pos, &value, 8);
    }
}

/* The new address of object `i`, 0 when it was not placed. */
uint64_t ek_place_address(const ctx_t *c, uint64_t i) { return i < c->n ? c->new_addr[i] : 0; }

static int64_t transfer(pid_t pid, struct iovec *local, struct iovec *remote, uint64_t n,
                        int writing) {
    uint64_t done = 0;
    for (uint64_t first = 0; first < n; first += 1024) {
        unsigned long batch = n - first < 1024 ? n - first : 1024;
        size_t want = 0;
        for (unsigned long k = 0; k < batch; k++)
            want += remote[first + k].iov_len;
        struct iovec one = {(uint8_t *)local->iov_base + done, want};
        ssize_t got = writing ? process_vm_writev(pid, &one, 1, remote + first, batch, 0)
                              : process_vm_readv(pid, &one, 1, remote + first, batch, 0);
        if (got != (ssize_t)want)
            return writing ? ERR_WRITE : ERR_READ;
        done += want;
    }
    return (int64_t)done;
}

/* Write the reached objects at their new addresses into process `pid` (stopped).
 * max_gap 0: one iovec per object.  Otherwise objects closer than max_gap bytes (less
 * than a page, so no unmapped page lies between) join one span, read from the process,
 * overlaid and written back whole.  Returns the bytes sent, or ERR_READ / ERR_WRITE. */
int64_t ek_place_write(ctx_t *c, int32_t pid, uint64_t max_gap) {
    memset(c->write_stats, 0, sizeof c->write_stats);
    uint64_t n = c->nreached;
    uint64_t *keys = malloc((n + 1) * sizeof *keys);
    uint32_t *order = malloc((n + 1) * sizeof *order);
    struct iovec *remote = malloc((n + 1) * sizeof *remote);
    uint8_t *image = NULL;
    uint64_t mapped = 0;
    int64_t result = ERR_MEMORY;
    if (keys == NULL || order == NULL || remote == NULL)
        goto done;
    for (uint64_t i = 0; i < n; i++) {
        keys[i] = c->new_addr[c->reached[i]];
        order[i] = (uint32_t)i;
    }
    if (sort_pairs(keys, order, n) != 0)
        goto done;
    uint64_t spans = 0, image_len = 0;
    for (uint64_t k = 0; k < n; k++) {
        uint64_t begin = keys[k], end = begin + c->size[order[k]];
        if (max_gap && spans) {
            struct iovec *last = &remote[spans - 1];
            uint64_t last_end = (uint64_t)last->iov_base + last->iov_len;
            if (begin >= last_end && begin - last_end < max_gap) {
                image_len += end - last_end;
                last->iov_len = end - (uint64_t)last->iov_base;
                continue;
            }
        }
        remote[spans++] = (struct iovec){(void *)begin, end - begin};
        image_len += end - begin;
    }
    struct iovec local;
    if (!max_gap) {
        local = (struct iovec){c->out, c->out_len};
        /* out holds the objects in reached order: the iovecs must follow it */
        for (uint64_t i = 0; i < n; i++)
            remote[i] = (struct iovec){(void *)c->new_addr[c->reached[i]], c->size[i]};
        result = transfer(pid, &local, remote, n, 1);
        goto done;
    }
    /* Populated at once: faulting its pages in one by one while the kernel copies into
     * them costs more than the copy. */
    image = mmap(NULL, image_len + 1, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (image == MAP_FAILED) {
        image = NULL;
        goto done;
    }
    mapped = image_len + 1;
    local = (struct iovec){image, image_len};
    double clock = now();
    c->write_stats[0] = (double)spans;
    result = transfer(pid, &local, remote, spans, 0);
    c->write_stats[1] = now() - clock;
    if (result < 0)
        goto done;
    uint64_t span = 0, span_at = 0;
    for (uint64_t k = 0; k < n; k++) {
        uint64_t begin = keys[k];
        while (begin >= (uint64_t)remote[span].iov_base + remote[span].iov_len)
            span_at += remote[span++].iov_len;
        memcpy(image + span_at + (begin - (uint64_t)remote[span].iov_base),
               c->out + c->offset[order[k]], c->size[order[k]]);
    }
    c->write_stats[2] = now() - clock - c->write_stats[1];
    result = transfer(pid, &local, remote, spans, 1);
    c->write_stats[3] = now() - clock - c->write_stats[1] - c->write_stats[2];
done:
    free(keys);
    free(order);
    free(remote);
    if (image != NULL)
        munmap(image, mapped);
    return result;
}
