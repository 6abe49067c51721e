/*
 * greeter v1: a TCP server that greets one client at a time, line by line,
 * and counts every greeting.  It shows the marks of probes/ekiden.h:
 *
 *   EKIDEN_UPDATE_POINT  loop heads where an update may happen (the accept
 *                        loop and the client loop);
 *   EKIDEN_TAG           state carried to the next version: the counter
 *                        `greeted` and main's locals listen_fd and client_fd;
 *   EKIDEN_FROM          (in v2) go back to the client the old run served.
 *
 * Build: cc $(ekiden-trace cflags) -g -O2 greeter_v1.c -o greeter_v1
 * Run:   ./greeter_v1 PORT          (0: any free port; it prints the port)
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ekiden.h"

static unsigned long greeted; /* greetings sent, by every version */

static int listen_on(int port)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(port),
				    .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(addr);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0 || bind(fd, (struct sockaddr *)&addr, len) < 0 || listen(fd, 8) < 0 ||
	    getsockname(fd, (struct sockaddr *)&addr, &len) < 0) {
		perror("greeter");
		exit(1);
	}
	printf("listening on %d\n", ntohs(addr.sin_port));
	fflush(stdout);
	return fd;
}

/* Greet each line (a name) the client sends, until it leaves. */
static void serve(int fd)
{
	char name[128], out[256];

	for (;;) {
		EKIDEN_UPDATE_POINT(client_loop);
		ssize_t n = read(fd, name, sizeof(name) - 1);
		if (n < 0 && errno == EINTR) /* ekiden-trace nudges a blocked read */
			continue;
		if (n <= 0)
			return;
		name[n] = '\0';
		name[strcspn(name, "\r\n")] = '\0';
		greeted++;
		int len = snprintf(out, sizeof(out), "hello %s (greeting %lu)\n", name, greeted);
		send(fd, out, len, MSG_NOSIGNAL);
	}
}

int main(int argc, char **argv)
{
	int listen_fd, client_fd;

	if (EKIDEN_TAG(greeted))
		greeted = 0;
	if (EKIDEN_TAG(listen_fd))
		listen_fd = listen_on(argc > 1 ? atoi(argv[1]) : 0);
	(void)EKIDEN_TAG(client_fd);
	for (;;) {
		EKIDEN_UPDATE_POINT(accept_loop);
		client_fd = accept(listen_fd, NULL, NULL);
		if (client_fd < 0) /* EINTR included */
			continue;
		serve(client_fd);
		close(client_fd);
	}
}
