/*
 * shapes -- heap shapes for test_capture_engines: the compiled capture must equal
 * the reference on each.  A one-client line server (fixtures/lines.h); every
 * request answers "ok".  With -DWITH_UNION a heap struct holds an unhinted union
 * with a pointer member, which no recipe expresses; with -DLONG_STRING a heap string
 * is longer than the capture reads (MAX_STRING), which the compiled walk declines.
 */
#include "../../../fixtures/lines.h"
#include "ekiden.h"

#define NEXTRA 3

enum colour { RED, GREEN = 5 };

union number { int i; float f; };

#ifdef WITH_UNION
union either { long n; char *s; };
#endif

struct inner {
	char *s;
	int k;
};

struct item {
	char *name;
	struct item *next;
	int n;
	long *vals;
	short *extra;
	char tag[8];
	void (*fn)(int);
	const char *label;
	struct item *peer[2];
	struct inner in[3];
	enum colour colour;
	union number num;
	double weight;
	unsigned flags : 3;
	void *nothing;
	unsigned char *bytes;
#ifdef WITH_UNION
	union either e;
#endif
};
EKIDEN_HINT_ARRAY(struct item, vals, n);
EKIDEN_HINT_ARRAY(struct item, extra, NEXTRA);

struct item *items;
size_t nitems;
EKIDEN_HINT_VAR_ARRAY(items, nitems);
struct item *mid;
char *inside;
const char *literal;

static void handler(int sig) { (void)sig; }

static char *text(const char *prefix, int i)
{
	char *s = malloc(32);
	snprintf(s, 32, "%s-%d", prefix, i);
	return s;
}

int main(int argc, char **argv)
{
	char line[256];
	int listen_fd;
	int client_fd;

	if (argc != 2)
		return 2;
	if (EKIDEN_TAG(nitems))
		nitems = 4;
	if (EKIDEN_TAG(items)) {
		char *shared = text("shared", 0);
		items = calloc(nitems, sizeof(*items));
		for (size_t i = 0; i < nitems; i++) {
			struct item *it = &items[i];
			it->name = i % 2 ? shared : text("name", (int)i);
			it->next = &items[(i + 1) % nitems]; /* a cycle */
			it->n = (int)i + 1;
			it->vals = calloc((size_t)it->n, sizeof(long));
			for (int v = 0; v < it->n; v++)
				it->vals[v] = 100 * (long)i + v;
			it->extra = i == 2 ? NULL : calloc(NEXTRA, sizeof(short));
			memcpy(it->tag, "t0", 3);
			it->tag[1] = (char)('0' + i);
			it->fn = handler;
			it->label = i == 0 ? "a literal" : shared + 2; /* into a string */
			it->peer[0] = &items[0];
			it->peer[1] = i ? malloc(sizeof(struct item)) : NULL;
			if (it->peer[1])
				memset(it->peer[1], 0, sizeof(struct item));
			for (int k = 0; k < 3; k++) {
				it->in[k].s = k == 1 ? NULL : text("in", k);
				it->in[k].k = k;
			}
			it->colour = i % 2 ? GREEN : RED;
			it->num.f = 1.5f * (float)i;
			it->weight = 0.25 * (double)i;
			it->flags = (unsigned)i;
			it->nothing = NULL;
			it->bytes = (unsigned char *)text("bytes", (int)i);
#ifdef WITH_UNION
			it->e.n = 7;
#endif
		}
	}
#ifdef LONG_STRING
	items[3].name = malloc(3 << 20);
	memset(items[3].name, 'a', (3 << 20) - 1);
	items[3].name[(3 << 20) - 1] = 0;
#endif
	if (EKIDEN_TAG(mid))
		mid = &items[1];
	if (EKIDEN_TAG(inside))
		inside = items[2].tag + 1; /* a string inside a struct */
	if (EKIDEN_TAG(literal))
		literal = "read-only";
	if (EKIDEN_TAG(listen_fd))
		listen_fd = open_listener(argv[1]);
	if (EKIDEN_TAG(client_fd))
		client_fd = -1;
	for (;;) {
		EKIDEN_UPDATE_POINT(serve_loop);
		if (next_request(listen_fd, &client_fd, line, sizeof(line)))
			answer(client_fd, "ok");
	}
}
