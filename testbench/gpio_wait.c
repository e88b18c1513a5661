// SPDX-License-Identifier: BSD-3-Clause
/*
 * gpio-wait VALUE_FILE TIMEOUT_MS: wait for an edge on a sysfs GPIO (guest helper).
 *
 * The stock sysfs GPIO interface reports an edge (the `edge` attribute chosen
 * by the caller) as POLLPRI|POLLERR on the `value` file; busybox has no poll(),
 * so this is the smallest program that waits the way the ABI says. It opens the
 * file, reads it once (which arms the notification: an edge after this read and
 * before ppoll() is still reported), prints "armed value=V", waits, and prints
 * "edge value=V" (exit 0) or "timeout value=V" (exit 1); "error ..." exit 2.
 *
 * Freestanding on purpose (no libc: the provisioned cross gcc has none): raw
 * Linux syscalls for aarch64 and x86-64, built with -nostdlib -static.
 */
typedef unsigned long u64;
typedef long s64;

#if defined(__aarch64__)
#define NR_openat 56
#define NR_close 57
#define NR_lseek 62
#define NR_read 63
#define NR_write 64
#define NR_exit 93
#define NR_ppoll 73
static s64 sys6(s64 n, s64 a, s64 b, s64 c, s64 d, s64 e)
{
	register s64 x8 __asm__("x8") = n;
	register s64 x0 __asm__("x0") = a;
	register s64 x1 __asm__("x1") = b;
	register s64 x2 __asm__("x2") = c;
	register s64 x3 __asm__("x3") = d;
	register s64 x4 __asm__("x4") = e;
	__asm__ volatile("svc #0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4) : "memory");
	return x0;
}
#elif defined(__x86_64__)
#define NR_openat 257
#define NR_close 3
#define NR_lseek 8
#define NR_read 0
#define NR_write 1
#define NR_exit 60
#define NR_ppoll 271
static s64 sys6(s64 n, s64 a, s64 b, s64 c, s64 d, s64 e)
{
	s64 ret;
	register s64 r10 __asm__("r10") = d;
	register s64 r8 __asm__("r8") = e;
	__asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
			 : "rcx", "r11", "memory");
	return ret;
}
#else
#error "gpio-wait: aarch64 or x86-64 only"
#endif

#define AT_FDCWD -100
#define POLLPRI 0x002
#define POLLERR 0x008

struct pollfd { int fd; short events, revents; };
struct timespec { s64 sec, nsec; };

static u64 len(const char *s) { u64 n = 0; while (s[n]) n++; return n; }
static void say(const char *s) { sys6(NR_write, 1, (s64)s, (s64)len(s), 0, 0); }
static __attribute__((noreturn)) void quit(int rc)
{
	for (;;)
		sys6(NR_exit, rc, 0, 0, 0, 0);
}

static long number(const char *s)
{
	long v = 0;
	while (*s >= '0' && *s <= '9')
		v = v * 10 + (*s++ - '0');
	return v;
}

/* Reads the value from the start of the file: "0" or "1" (and arms the notification). */
static char value(int fd)
{
	char buf[8];
	s64 n;

	sys6(NR_lseek, fd, 0, 0, 0, 0);
	n = sys6(NR_read, fd, (s64)buf, sizeof(buf), 0, 0);
	return n > 0 ? buf[0] : '?';
}

static void report(const char *what, char v)
{
	char tail[4] = { v, '\n', 0, 0 };

	say(what);
	say(" value=");
	say(tail);
}

static int run(int argc, char **argv)
{
	struct pollfd p;
	struct timespec ts;
	long ms;
	s64 fd, r;

	if (argc != 3) {
		say("error usage: gpio-wait VALUE_FILE TIMEOUT_MS\n");
		return 2;
	}
	fd = sys6(NR_openat, AT_FDCWD, (s64)argv[1], 0 /* O_RDONLY */, 0, 0);
	if (fd < 0) {
		say("error cannot open the value file\n");
		return 2;
	}
	ms = number(argv[2]);
	report("armed", value(fd));
	p.fd = (int)fd;
	p.events = POLLPRI | POLLERR;
	p.revents = 0;
	ts.sec = ms / 1000;
	ts.nsec = (ms % 1000) * 1000000;
	r = sys6(NR_ppoll, (s64)&p, 1, (s64)&ts, 0, 8);
	if (r < 0) {
		say("error ppoll failed\n");
		return 2;
	}
	if (r == 0) {
		report("timeout", value(fd));
		return 1;
	}
	report("edge", value(fd));
	sys6(NR_close, fd, 0, 0, 0, 0);
	return 0;
}

/* The kernel enters here with sp -> argc, argv[0..]. */
__attribute__((used)) void vfu_start(s64 *sp)
{
	quit(run((int)sp[0], (char **)(sp + 1)));
}

#if defined(__aarch64__)
__asm__(".global _start\n_start:\n\tmov x0, sp\n\tbl vfu_start\n");
#else
__asm__(".global _start\n_start:\n\tmov %rsp, %rdi\n\tand $-16, %rsp\n\tcall vfu_start\n");
#endif
