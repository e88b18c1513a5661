/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * vfu_bench_client: a minimal vfio-user client that times REGION_READ /
 * REGION_WRITE round trips against a server on a unix stream socket.
 *
 *   vfu_bench_client --socket PATH [--op read|write|posted] [--iterations N]
 *                    [--warmup N] [--region R] [--offset O] [--batch B]
 *                    [--bare] [--latencies FILE] [--json]
 *
 * It connects, negotiates VERSION (skipped with --bare, for the bare
 * ping-pong reference server), runs --warmup untimed operations, then
 * --iterations timed ones, and prints a summary (text, or one JSON object
 * with --json).  --latencies FILE writes one latency in ns per line.
 *
 * Operations (all 4-byte accesses):
 *   read    REGION_READ: 32-byte request, 36-byte reply
 *   write   REGION_WRITE: 36-byte request, 32-byte reply
 *   posted  batches of B REGION_WRITEs with NO_REPLY, then one REGION_READ
 *           that must observe them; one sample per batch is the batch time
 *           divided by B (amortised time per posted write)
 *
 * Both directions use one send() per message; a reply is collected with
 * recv() into a buffer until its msg_size is complete (normally one call).
 * Exit status: 0 ok, 1 usage, 2 protocol or I/O error, 3 the server closed
 * the connection before VERSION completed (a busy server: retry).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define HDR_SIZE 16
#define CMD_VERSION 1
#define CMD_REGION_READ 9
#define CMD_REGION_WRITE 10
#define FLAG_REPLY 0x1u
#define FLAG_TYPE_MASK 0xfu
#define FLAG_NO_REPLY 0x10u
#define FLAG_ERROR 0x20u
#define ACCESS_SIZE 4u

struct hdr {
	uint16_t msg_id;
	uint16_t command;
	uint32_t msg_size;
	uint32_t flags;
	uint32_t error;
} __attribute__((packed));

struct access {
	uint64_t offset;
	uint32_t region;
	uint32_t count;
} __attribute__((packed));

struct read_req {
	struct hdr h;
	struct access a;
} __attribute__((packed));

struct write_req {
	struct hdr h;
	struct access a;
	uint32_t data;
} __attribute__((packed));

static uint8_t rbuf[65536];
static uint16_t next_id;
static int version_phase;

static void die(int status, const char *what)
{
	if (errno)
		fprintf(stderr, "vfu_bench_client: %s: %s\n", what, strerror(errno));
	else
		fprintf(stderr, "vfu_bench_client: %s\n", what);
	exit(status);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void send_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			die(2, "send");
		}
		p += n;
		len -= (size_t)n;
	}
}

/* Receive one whole message into rbuf; returns its header. */
static const struct hdr *recv_msg(int fd)
{
	size_t have = 0, want = HDR_SIZE;

	while (have < want) {
		ssize_t n = recv(fd, rbuf + have, sizeof(rbuf) - have, 0);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			die(2, "recv");
		}
		if (n == 0) {
			errno = 0;
			die(version_phase ? 3 : 2, "server closed the connection");
		}
		have += (size_t)n;
		if (want == HDR_SIZE && have >= HDR_SIZE) {
			const struct hdr *h = (const struct hdr *)rbuf;

			if (h->msg_size < HDR_SIZE || h->msg_size > sizeof(rbuf)) {
				errno = 0;
				die(2, "reply with an impossible msg_size");
			}
			want = h->msg_size;
		}
	}
	if (have != want) {
		errno = 0;
		die(2, "more bytes than one reply arrived");
	}
	return (const struct hdr *)rbuf;
}

static void check_reply(const struct hdr *h, uint16_t id, uint16_t command, uint32_t size)
{
	char msg[160];

	if (h->msg_id == id && h->command == command && (h->flags & FLAG_TYPE_MASK) == FLAG_REPLY &&
	    !(h->flags & FLAG_ERROR) && h->msg_size == size)
		return;
	snprintf(msg, sizeof(msg),
		 "bad reply: id %u (want %u) command %u (want %u) size %u (want %u) flags %#x error %u",
		 h->msg_id, id, h->command, command, h->msg_size, size, h->flags, h->error);
	errno = 0;
	die(2, msg);
}

static void negotiate(int fd)
{
	static const char json[] = "{\"capabilities\":{\"max_msg_fds\":8,\"max_data_xfer_size\":1048576}}";
	uint8_t buf[HDR_SIZE + 4 + sizeof(json)];
	struct hdr h = { next_id, CMD_VERSION, (uint32_t)sizeof(buf), 0, 0 };
	uint16_t ver[2] = { 0, 0 };
	const struct hdr *r;

	memcpy(buf, &h, HDR_SIZE);
	memcpy(buf + HDR_SIZE, ver, 4);
	memcpy(buf + HDR_SIZE + 4, json, sizeof(json)); /* with its NUL */
	version_phase = 1;
	send_all(fd, buf, sizeof(buf));
	r = recv_msg(fd);
	version_phase = 0;
	if (r->msg_id != next_id || r->command != CMD_VERSION || (r->flags & FLAG_TYPE_MASK) != FLAG_REPLY ||
	    (r->flags & FLAG_ERROR) || r->msg_size < HDR_SIZE + 4) {
		errno = 0;
		die(2, "VERSION was refused");
	}
	next_id++;
}

static uint32_t do_read(int fd, uint32_t region, uint64_t offset)
{
	struct read_req q = { { next_id, CMD_REGION_READ, sizeof(q), 0, 0 }, { offset, region, ACCESS_SIZE } };
	const struct hdr *r;
	uint32_t value;

	send_all(fd, &q, sizeof(q));
	r = recv_msg(fd);
	check_reply(r, next_id, CMD_REGION_READ, HDR_SIZE + sizeof(struct access) + ACCESS_SIZE);
	next_id++;
	memcpy(&value, rbuf + HDR_SIZE + sizeof(struct access), 4);
	return value;
}

static void do_write(int fd, uint32_t region, uint64_t offset, uint32_t value, int posted)
{
	struct write_req q = { { next_id, CMD_REGION_WRITE, sizeof(q), posted ? FLAG_NO_REPLY : 0, 0 },
			       { offset, region, ACCESS_SIZE },
			       value };

	send_all(fd, &q, sizeof(q));
	if (!posted)
		check_reply(recv_msg(fd), next_id, CMD_REGION_WRITE, HDR_SIZE + sizeof(struct access));
	next_id++;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static uint64_t pct(const uint64_t *sorted, size_t n, unsigned p)
{
	size_t i = (n * p) / 100;

	return sorted[i < n ? i : n - 1];
}

static void usage(void)
{
	fputs("usage: vfu_bench_client --socket PATH [--op read|write|posted] [--iterations N] [--warmup N]\n"
	      "                        [--region R] [--offset O] [--batch B] [--bare] [--latencies FILE] [--json]\n",
	      stderr);
	exit(1);
}

int main(int argc, char **argv)
{
	const char *path = NULL, *op = "read", *lat_path = NULL;
	unsigned long iterations = 20000, warmup = 1000, batch = 32;
	uint32_t region = 0, first_value = 0;
	uint64_t offset = 0, start, end, total;
	int bare = 0, json = 0, mode, fd;
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	uint64_t *lat;
	size_t samples;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "--bare")) {
			bare = 1;
			continue;
		}
		if (!strcmp(a, "--json")) {
			json = 1;
			continue;
		}
		if (!v)
			usage();
		i++;
		if (!strcmp(a, "--socket"))
			path = v;
		else if (!strcmp(a, "--op"))
			op = v;
		else if (!strcmp(a, "--iterations"))
			iterations = strtoul(v, NULL, 0);
		else if (!strcmp(a, "--warmup"))
			warmup = strtoul(v, NULL, 0);
		else if (!strcmp(a, "--region"))
			region = (uint32_t)strtoul(v, NULL, 0);
		else if (!strcmp(a, "--offset"))
			offset = strtoull(v, NULL, 0);
		else if (!strcmp(a, "--batch"))
			batch = strtoul(v, NULL, 0);
		else if (!strcmp(a, "--latencies"))
			lat_path = v;
		else
			usage();
	}
	if (!path || !iterations || !batch || strlen(path) >= sizeof(addr.sun_path))
		usage();
	if (!strcmp(op, "read"))
		mode = 0;
	else if (!strcmp(op, "write"))
		mode = 1;
	else if (!strcmp(op, "posted"))
		mode = 2;
	else
		usage();

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die(2, "socket");
	strcpy(addr.sun_path, path);
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		die(2, "connect");
	if (!bare)
		negotiate(fd);

	/* Posted: one sample per batch, so N writes give N / B samples. */
	samples = mode == 2 ? (iterations + batch - 1) / batch : iterations;
	lat = malloc(samples * sizeof(*lat));
	if (!lat)
		die(2, "malloc");

	for (unsigned long i = 0; i < warmup; i++) {
		if (mode == 0) {
			uint32_t v = do_read(fd, region, offset);

			if (i == 0)
				first_value = v;
		} else {
			do_write(fd, region, offset, (uint32_t)i, mode == 2);
			if (mode == 2 && (i + 1) % batch == 0)
				(void)do_read(fd, region, offset);
		}
	}
	if (mode == 2 && warmup % batch)
		(void)do_read(fd, region, offset);
	if (mode == 0 && !warmup)
		first_value = do_read(fd, region, offset);

	start = now_ns();
	if (mode == 0) {
		for (size_t i = 0; i < samples; i++) {
			uint64_t t0 = now_ns();

			(void)do_read(fd, region, offset);
			lat[i] = now_ns() - t0;
		}
	} else if (mode == 1) {
		for (size_t i = 0; i < samples; i++) {
			uint64_t t0 = now_ns();

			do_write(fd, region, offset, (uint32_t)i, 0);
			lat[i] = now_ns() - t0;
		}
	} else {
		unsigned long left = iterations;

		for (size_t i = 0; i < samples; i++) {
			unsigned long n = left < batch ? left : batch;
			uint64_t t0 = now_ns();

			for (unsigned long k = 0; k < n; k++)
				do_write(fd, region, offset, (uint32_t)k, 1);
			(void)do_read(fd, region, offset); /* ordered after the posted writes */
			lat[i] = (now_ns() - t0) / n;
			left -= n;
		}
	}
	end = now_ns();
	total = end - start;
	close(fd);

	if (lat_path) {
		FILE *f = fopen(lat_path, "w");

		if (!f)
			die(2, "open latencies file");
		for (size_t i = 0; i < samples; i++)
			fprintf(f, "%llu\n", (unsigned long long)lat[i]);
		if (fclose(f))
			die(2, "write latencies file");
	}

	qsort(lat, samples, sizeof(*lat), cmp_u64);
	{
		double sum = 0, ops_s = (double)iterations / ((double)total / 1e9);

		for (size_t i = 0; i < samples; i++)
			sum += (double)lat[i];
		if (json)
			printf("{\"op\":\"%s\",\"iterations\":%lu,\"warmup\":%lu,\"batch\":%lu,\"samples\":%zu,"
			       "\"p50_ns\":%llu,\"p90_ns\":%llu,\"p99_ns\":%llu,\"min_ns\":%llu,\"max_ns\":%llu,"
			       "\"mean_ns\":%.1f,\"total_ns\":%llu,\"ops_per_s\":%.1f,\"first_value\":%u}\n",
			       op, iterations, warmup, mode == 2 ? batch : 1, samples,
			       (unsigned long long)pct(lat, samples, 50), (unsigned long long)pct(lat, samples, 90),
			       (unsigned long long)pct(lat, samples, 99), (unsigned long long)lat[0],
			       (unsigned long long)lat[samples - 1], sum / (double)samples, (unsigned long long)total,
			       ops_s, first_value);
		else
			printf("%s: %lu ops, p50 %.2f us, p90 %.2f us, p99 %.2f us, min %.2f us, %.0f ops/s\n", op,
			       iterations, pct(lat, samples, 50) / 1e3, pct(lat, samples, 90) / 1e3,
			       pct(lat, samples, 99) / 1e3, lat[0] / 1e3, ops_s);
	}
	free(lat);
	return 0;
}
