/*
 * greeter v2: greets louder, and says which version answers.  Everything
 * else is greeter_v1.c's: the same update points and tags, so an update from
 * v1 carries `greeted`, the listening socket and the client being served.
 *
 * New here: EKIDEN_FROM(client_loop) is true when the run this one replaces
 * was updated inside the client loop; v2 then goes straight back to that
 * client (its fd is the tagged client_fd) before accepting new ones.
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
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		name[n] = '\0';
		name[strcspn(name, "\r\n")] = '\0';
		greeted++;
		int len = snprintf(out, sizeof(out), "HELLO %s! (greeting %lu, from v2)\n", name,
				   greeted);
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
	if (EKIDEN_FROM(client_loop)) { /* v1 was serving client_fd: carry on */
		serve(client_fd);
		close(client_fd);
	}
	for (;;) {
		EKIDEN_UPDATE_POINT(accept_loop);
		client_fd = accept(listen_fd, NULL, NULL);
		if (client_fd < 0)
			continue;
		serve(client_fd);
		close(client_fd);
	}
}
