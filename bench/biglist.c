/*
 * biglist -- one singly linked list on the heap, for the scaling benchmark.
 *
 * A TCP server on 127.0.0.1, port from argv[1], serving one client at a time.
 * It prints "listening on <port>" once it listens.  Every line gets one reply:
 *
 *   FILL <n>   ->  OK <length>    (prepends n nodes, each with a strdup'd name)
 *   CHECK      ->  LIST <length> <checksum> v<version>
 *
 * Compiled twice from this file: -DLIST_VERSION=1 and -DLIST_VERSION=2.  Version
 * 2 adds a field in the middle of the node, so every node is converted.
 *
 * Marks: head and length (globals, tagged), listen_fd (local of main, tagged);
 * update point accept_loop at the head of the accept loop.  A client is served
 * until it closes, so the benchmark closes its connection before it updates.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ekiden.h"

#ifndef LIST_VERSION
#define LIST_VERSION 1
#endif

struct node {
	char *name; /* "item-<id>", strdup'd */
#if LIST_VERSION >= 2
	unsigned long hits; /* new in v2 */
#endif
	long id;
	struct node *next;
};

struct node *head;
unsigned long length;

static void fill(long n)
{
	char name[32];
	for (long i = 0; i < n; i++) {
		struct node *node = malloc(sizeof *node);
		if (!node)
			abort();
		snprintf(name, sizeof name, "item-%lu", length);
		node->name = strdup(name);
		if (!node->name)
			abort();
#if LIST_VERSION >= 2
		node->hits = 0;
#endif
		node->id = (long)length++;
		node->next = head;
		head = node;
	}
}

/* The length and a checksum over ids and names, walking the whole list. */
static void check(unsigned long *count, unsigned long *sum)
{
	*count = *sum = 0;
	for (struct node *n = head; n; n = n->next) {
		char want[32];
		snprintf(want, sizeof want, "item-%ld", n->id);
		if (strcmp(want, n->name) != 0)
			return;
		*count += 1;
		*sum += (unsigned long)n->id * 31u + strlen(n->name);
	}
}

static void reply(int fd, const char *text)
{
	size_t len = strlen(text);
	while (len > 0) {
		ssize_t n = write(fd, text, len);
		if (n <= 0 && errno != EINTR)
			return;
		if (n > 0) {
			text += n;
			len -= (size_t)n;
		}
	}
}

static void serve(int fd)
{
	char line[256];
	size_t used = 0;
	for (;;) {
		ssize_t n = read(fd, line + used, sizeof line - 1 - used);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		used += (size_t)n;
		line[used] = '\0';
		char *end;
		while ((end = strchr(line, '\n')) != NULL) {
			char out[128];
			*end = '\0';
			if (strncmp(line, "FILL ", 5) == 0) {
				fill(atol(line + 5));
				snprintf(out, sizeof out, "OK %lu\n", length);
			} else if (strcmp(line, "CHECK") == 0) {
				unsigned long count, sum;
				check(&count, &sum);
				snprintf(out, sizeof out, "LIST %lu %lu v%d\n", count, sum,
					 LIST_VERSION);
			} else {
				snprintf(out, sizeof out, "ERR\n");
			}
			reply(fd, out);
			used -= (size_t)(end + 1 - line);
			memmove(line, end + 1, used + 1);
		}
		if (used == sizeof line - 1)
			return;
	}
}

int main(int argc, char **argv)
{
	int listen_fd;
	if (EKIDEN_TAG(head))
		head = NULL;
	if (EKIDEN_TAG(length))
		length = 0;
	if (EKIDEN_TAG(listen_fd)) {
		struct sockaddr_in addr = { .sin_family = AF_INET };
		int one = 1;
		addr.sin_port = htons((unsigned short)atoi(argc > 1 ? argv[1] : "0"));
		addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		listen_fd = socket(AF_INET, SOCK_STREAM, 0);
		setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&addr, sizeof addr) < 0 ||
		    listen(listen_fd, 16) < 0) {
			perror("listen");
			return 1;
		}
		printf("listening on %d\n", ntohs(addr.sin_port));
		fflush(stdout);
	}
	for (;;) {
		EKIDEN_UPDATE_POINT(accept_loop);
		int fd = accept(listen_fd, NULL, NULL);
		if (fd < 0)
			continue;
		serve(fd);
		close(fd);
	}
}
