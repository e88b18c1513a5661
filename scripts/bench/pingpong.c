/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * pingpong: the bare reference for the vfio-user benchmark.
 *
 *   pingpong server PATH
 *       Listen on PATH (a unix stream socket) and serve clients one after
 *       another until SIGTERM/SIGINT.  Per connection: plain blocking recv()
 *       into a buffer, and for every whole message in it one blocking send()
 *       of a reply of the size a vfio-user server would send:
 *         REGION_READ  (command 9)  -> 32 + count bytes (36 for a 4-byte read)
 *         REGION_WRITE (command 10) -> 32 bytes
 *         anything else             -> the message echoed back
 *       and nothing for a message with NO_REPLY (0x10).  The reply is a fixed
 *       buffer with only msg_id/command/msg_size patched in: no device, no
 *       validation, no event loop.  This is the floor any server can reach.
 *
 *   pingpong client PATH [--op read|write] [--iterations N] [--warmup N]
 *       A bare client: send 32 bytes (read) or 36 (write), recv until the
 *       36 or 32 reply bytes are in, N times; prints p50/p90 and ops/s.
 *       scripts/bench.py times the reference with vfu_bench_client --bare
 *       instead, so that both servers face the very same client; this one is
 *       kept to check that the vfu client adds nothing measurable.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define HDR_SIZE 16
#define NO_REPLY 0x10u

static volatile sig_atomic_t stopping;
static uint8_t buf[1 << 20];

static void on_signal(int sig)
{
	(void)sig;
	stopping = 1;
}

static int send_all(int fd, const uint8_t *p, size_t len)
{
	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static void serve_one(int fd)
{
	uint8_t reply[64] = { 0 };
	size_t have = 0;

	reply[8] = 1; /* flags: reply */
	for (;;) {
		ssize_t n = recv(fd, buf + have, sizeof(buf) - have, 0);
		size_t pos = 0;

		if (n < 0 && errno == EINTR && !stopping)
			continue;
		if (n <= 0)
			return;
		have += (size_t)n;
		while (have - pos >= HDR_SIZE) {
			const uint8_t *m = buf + pos;
			uint16_t command;
			uint32_t size, flags, count, rsize;

			memcpy(&command, m + 2, 2);
			memcpy(&size, m + 4, 4);
			memcpy(&flags, m + 8, 4);
			if (size < HDR_SIZE || size > sizeof(buf))
				return;
			if (have - pos < size)
				break;
			if (!(flags & NO_REPLY)) {
				const uint8_t *out = reply;

				if (command == 9 || command == 10) {
					memcpy(&count, m + HDR_SIZE + 12, 4);
					rsize = command == 9 ? 32 + count : 32;
					if (rsize > sizeof(reply))
						return;
					memcpy(reply, m, 4); /* msg_id, command */
					memcpy(reply + 4, &rsize, 4);
					memcpy(reply + HDR_SIZE, m + HDR_SIZE, 16); /* access header */
				} else {
					uint8_t *echo = (uint8_t *)m;

					echo[8] = 1;
					rsize = size;
					out = echo;
				}
				if (send_all(fd, out, rsize) < 0)
					return;
			}
			pos += size;
		}
		memmove(buf, buf + pos, have - pos);
		have -= pos;
	}
}

static int run_server(const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	struct sigaction sa = { .sa_handler = on_signal }; /* no SA_RESTART: accept() returns EINTR */
	int lfd;

	if (strlen(path) >= sizeof(addr.sun_path)) {
		fprintf(stderr, "pingpong: socket path too long\n");
		return 1;
	}
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	strcpy(addr.sun_path, path);
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(lfd, 4) < 0) {
		perror("pingpong: listen");
		return 1;
	}
	fprintf(stderr, "pingpong: serving on %s\n", path);
	while (!stopping) {
		int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EINTR)
				continue;
			perror("pingpong: accept");
			break;
		}
		serve_one(fd);
		close(fd);
	}
	close(lfd);
	unlink(path);
	return 0;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static int run_client(const char *path, int argc, char **argv)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	unsigned long iterations = 20000, warmup = 1000;
	int write_op = 0, fd;
	uint8_t req[36] = { 0 }, rep[64];
	size_t qsize, rsize;
	uint64_t *lat, start, total;

	for (int i = 0; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--op"))
			write_op = !strcmp(argv[i + 1], "write");
		else if (!strcmp(argv[i], "--iterations"))
			iterations = strtoul(argv[i + 1], NULL, 0);
		else if (!strcmp(argv[i], "--warmup"))
			warmup = strtoul(argv[i + 1], NULL, 0);
	}
	if (!iterations || strlen(path) >= sizeof(addr.sun_path))
		return 1;
	qsize = write_op ? 36 : 32;
	rsize = write_op ? 32 : 36;
	req[2] = write_op ? 10 : 9;
	req[4] = (uint8_t)qsize;
	req[HDR_SIZE + 8] = 0;	/* region 0 */
	req[HDR_SIZE + 12] = 4; /* count */
	strcpy(addr.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		perror("pingpong: connect");
		return 2;
	}
	lat = malloc(iterations * sizeof(*lat));
	if (!lat)
		return 2;
	start = 0;
	for (unsigned long i = 0; i < warmup + iterations; i++) {
		uint64_t t0;
		size_t got = 0;

		if (i == warmup)
			start = now_ns();
		t0 = now_ns();
		if (send_all(fd, req, qsize) < 0) {
			perror("pingpong: send");
			return 2;
		}
		while (got < rsize) {
			ssize_t n = recv(fd, rep + got, sizeof(rep) - got, 0);

			if (n <= 0) {
				if (n < 0 && errno == EINTR)
					continue;
				fprintf(stderr, "pingpong: recv failed or EOF\n");
				return 2;
			}
			got += (size_t)n;
		}
		if (i >= warmup)
			lat[i - warmup] = now_ns() - t0;
	}
	total = now_ns() - start;
	close(fd);
	qsort(lat, iterations, sizeof(*lat), cmp_u64);
	printf("%s: %lu ops, p50 %.2f us, p90 %.2f us, %.0f ops/s\n", write_op ? "write" : "read", iterations,
	       lat[iterations / 2] / 1e3, lat[iterations * 9 / 10] / 1e3, iterations / (total / 1e9));
	free(lat);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 3 && !strcmp(argv[1], "server"))
		return run_server(argv[2]);
	if (argc >= 3 && !strcmp(argv[1], "client"))
		return run_client(argv[2], argc - 3, argv + 3);
	fputs("usage: pingpong server PATH\n"
	      "       pingpong client PATH [--op read|write] [--iterations N] [--warmup N]\n",
	      stderr);
	return 1;
}
