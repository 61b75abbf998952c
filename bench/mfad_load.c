/*
 * mfad_load - daemon capacity: C concurrent clients speaking the PAM protocol to mfad.
 *
 *   mfad_load -S PAM_SOCKET[,PAM_SOCKET...] -f USERS -c CLIENTS[,CLIENTS...] [-o FIRST]
 *             [-u NUSERS] [-n MAX] [-d SECONDS] [-x]
 *
 * With several sockets (daemons on one shared store, as hosts of a fleet),
 * client i always uses socket i mod N, so the clients are spread evenly and
 * one latency distribution covers them all.
 *
 * Each client is one connection at a time doing what pam_mfa.so does:
 * connect, START, answer each PROMPT with the user's TOTP code computed on
 * arrival (or with -x a code wrong for the whole window), read to RESULT,
 * close; then the next user. One thread, epoll, non-blocking sockets, so the
 * client costs a few microseconds per login and mfad is what is measured.
 *
 * Users are taken round-robin from lines FIRST..FIRST+NUSERS of USERS, and a
 * user is never sent twice in one 30 s time step: when the next user has
 * already logged in during the current step, no new login starts; once the
 * ones in flight finish, the client sleeps to the next step. That pause is
 * reported and left out of the throughput. The run ends after MAX logins or
 * SECONDS of active time, whichever comes first.
 *
 * Several client counts run one after the other in one process, so the
 * once-per-step bookkeeping carries over from one level to the next. Latency
 * is from the first connect() to RESULT. Prints one JSON line per level, as
 * soon as that level ends (the caller samples the daemon between levels).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "totp.h"

#define CONN_TIMEOUT_NS (30LL * 1000000000LL)
#define RBUF 4096

enum { IDLE, RETRY, BUSY };

struct conn {
	int state;
	int fd;
	const struct sockaddr_un *addr;
	long user;
	long long started, retry_at;
	size_t rlen;
	unsigned char rbuf[RBUF];
};

#define MAX_SOCKETS 16

static struct sockaddr_un addrs[MAX_SOCKETS];
static int n_socks;
static struct bench_user *users;
static uint64_t *last_step;
static int wrong;
static long outcomes[256], errors_eof, errors_proto, errors_timeout, errors_connect, retries;
static long n_use, next_user, first;

static int send_frame(int fd, char type, const char *payload, size_t len)
{
	unsigned char buf[1100];
	uint32_t n = (uint32_t)len + 1;

	if (len > sizeof(buf) - 5)
		return -1;
	buf[0] = (unsigned char)(n >> 24);
	buf[1] = (unsigned char)(n >> 16);
	buf[2] = (unsigned char)(n >> 8);
	buf[3] = (unsigned char)n;
	buf[4] = (unsigned char)type;
	memcpy(buf + 5, payload, len);
	return send(fd, buf, len + 5, MSG_NOSIGNAL) == (ssize_t)(len + 5) ? 0 : -1;
}

/* Returns 1 when the connection is done (RESULT, error), 0 to keep reading. */
static int on_readable(struct conn *c, long long *result_ns)
{
	ssize_t r = recv(c->fd, c->rbuf + c->rlen, RBUF - c->rlen, 0);

	if (r < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;
	if (r <= 0) {
		errors_eof++;
		return 1;
	}
	c->rlen += (size_t)r;
	for (;;) {
		uint32_t n;
		unsigned char type;

		if (c->rlen < 4)
			return 0;
		n = ((uint32_t)c->rbuf[0] << 24) | ((uint32_t)c->rbuf[1] << 16) |
		    ((uint32_t)c->rbuf[2] << 8) | c->rbuf[3];
		if (n < 1 || n > RBUF - 4) {
			errors_proto++;
			return 1;
		}
		if (c->rlen < 4 + n)
			return 0;
		type = c->rbuf[4];
		if (type == 'P' || type == 'p') {
			char code[7];

			totp_code(&users[c->user], wrong, code);
			if (send_frame(c->fd, 'A', code, 6) < 0) {
				errors_eof++;
				return 1;
			}
		} else if (type == 'R') {
			if (n != 2) {
				errors_proto++;
				return 1;
			}
			outcomes[c->rbuf[5]]++;
			*result_ns = mono_ns();
			return 1;
		} else if (type != 'E' && type != 'I') {
			errors_proto++;
			return 1;
		}
		memmove(c->rbuf, c->rbuf + 4 + n, c->rlen - 4 - n);
		c->rlen -= 4 + n;
	}
}

/* Connect and send START; 0 = in flight, 1 = try again shortly (backlog full), -1 = error. */
static int start_login(int ep, struct conn *c)
{
	char start[512];
	int len;
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};

	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return -1;
	if (connect(c->fd, (const struct sockaddr *)c->addr, sizeof(*c->addr)) < 0) {
		int e = errno;

		close(c->fd);
		c->fd = -1;
		return e == EAGAIN ? 1 : -1;
	}
	len = snprintf(start, sizeof(start), "v=1%cuser=%s%cservice=bench%crhost=10.0.0.1%c"
		       "ruser=%ctty=ssh%c", 0, users[c->user].name, 0, 0, 0, 0, 0);
	if (send_frame(c->fd, 'S', start, (size_t)len) < 0 ||
	    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
		close(c->fd);
		c->fd = -1;
		return -1;
	}
	c->rlen = 0;
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: mfad_load -S SOCKET[,SOCKET...] -f USERS -c CLIENTS[,CLIENTS...] "
			"[-o FIRST] [-u NUSERS] [-n MAX] [-d SECONDS] [-x]\n");
	exit(2);
}

static double cpu_seconds(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
	       (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* Sleep to the start of the next time step; returns the nanoseconds slept. */
static long long sleep_to_next_step(void)
{
	struct timespec real, ts;
	long long ns = (long long)((current_step() + 1) * TOTP_PERIOD) * 1000000000LL;

	clock_gettime(CLOCK_REALTIME, &real);
	ns -= (long long)real.tv_sec * 1000000000LL + real.tv_nsec;
	if (ns <= 0)
		return 0;
	ts.tv_sec = ns / 1000000000LL;
	ts.tv_nsec = ns % 1000000000LL;
	nanosleep(&ts, NULL);
	return ns;
}

static void close_conn(int ep, struct conn *c)
{
	epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->fd = -1;
	c->state = IDLE;
}

/* A client waiting to retry its connect already holds a user whose clock is running. */
static int any_retrying(const struct conn *conns, long clients)
{
	for (long i = 0; i < clients; i++)
		if (conns[i].state == RETRY)
			return 1;
	return 0;
}

static int run_level(int ep, long clients, long max, double seconds, long long *lat)
{
	long done = 0, inflight = 0, n_lat = 0;
	long long t_begin, paused = 0;
	double cpu0 = cpu_seconds();
	struct conn *conns = calloc((size_t)clients, sizeof(*conns));
	struct epoll_event events[512];
	int stopping = 0;

	if (conns == NULL)
		return -1;
	memset(outcomes, 0, sizeof(outcomes));
	errors_eof = errors_proto = errors_timeout = errors_connect = retries = 0;
	for (long i = 0; i < clients; i++) {
		conns[i].fd = -1;
		conns[i].addr = &addrs[i % n_socks];
	}

	t_begin = mono_ns();
	for (;;) {
		long long now = mono_ns();
		uint64_t step = current_step();
		int timeout_ms = 100, n;

		if (!stopping && (done + inflight >= max ||
				  (double)(now - t_begin - paused) / 1e9 >= seconds))
			stopping = 1;
		/* Give idle clients their next user, unless that user already logged in this step. */
		for (long i = 0; i < clients && !stopping; i++) {
			struct conn *c = &conns[i];
			int rc;

			if (c->state == BUSY || (c->state == RETRY && c->retry_at > now))
				continue;
			if (c->state == IDLE) {
				long slot = next_user % n_use;

				if (done + inflight >= max || last_step[slot] == step + 1)
					break;
				last_step[slot] = step + 1; /* +1 so that 0 means never */
				c->user = first + slot;
				c->started = now;
				next_user++;
			}
			rc = start_login(ep, c);
			if (rc == 0) {
				c->state = BUSY;
				inflight++;
			} else if (rc == 1) {
				c->state = RETRY;
				c->retry_at = now + 1000000;
				retries++;
				timeout_ms = 1;
			} else {
				c->state = IDLE;
				errors_connect++;
				done++;
			}
		}
		if (stopping && inflight == 0)
			break;
		if (!stopping && inflight == 0 && !any_retrying(conns, clients) &&
		    last_step[next_user % n_use] == current_step() + 1) {
			/* every user has logged in this step and no login is under way: wait for
			 * the next step, off the clock */
			paused += sleep_to_next_step();
			continue;
		}
		n = epoll_wait(ep, events, 512, timeout_ms);
		now = mono_ns();
		for (int k = 0; k < n; k++) {
			struct conn *c = events[k].data.ptr;
			long long result_ns = 0;

			if (!on_readable(c, &result_ns))
				continue;
			if (result_ns != 0 && n_lat < max)
				lat[n_lat++] = result_ns - c->started;
			close_conn(ep, c);
			inflight--;
			done++;
		}
		for (long i = 0; i < clients; i++) {
			struct conn *c = &conns[i];

			if (c->state == BUSY && now - c->started > CONN_TIMEOUT_NS) {
				close_conn(ep, c);
				inflight--;
				done++;
				errors_timeout++;
			}
		}
	}

	long ok = wrong ? outcomes['F'] + outcomes['M'] : outcomes['S'];
	double active_s = (double)(mono_ns() - t_begin - paused) / 1e9;

	printf("{\"clients\":%ld,\"wrong\":%s,\"users\":%ld,\"logins\":%ld,\"ok\":%ld,"
	       "\"outcomes\":{\"S\":%ld,\"F\":%ld,\"M\":%ld,\"K\":%ld,\"U\":%ld},"
	       "\"errors\":{\"eof\":%ld,\"protocol\":%ld,\"timeout\":%ld,\"connect\":%ld},"
	       "\"connect_retries\":%ld,\"active_s\":%.3f,\"paused_s\":%.3f,\"ok_per_s\":%.1f,"
	       "\"client_cpu_s\":%.3f,",
	       clients, wrong ? "true" : "false", n_use, done, ok, outcomes['S'], outcomes['F'],
	       outcomes['M'], outcomes['K'], outcomes['U'], errors_eof, errors_proto,
	       errors_timeout, errors_connect, retries, active_s, (double)paused / 1e9,
	       (double)ok / active_s, cpu_seconds() - cpu0);
	print_latency(stdout, lat, n_lat);
	printf("}\n");
	fflush(stdout);
	free(conns);
	return 0;
}

int main(int argc, char **argv)
{
	const char *path = NULL;
	char *sockets = NULL, *levels = NULL, *save = NULL;
	long max = 100000, n_users;
	double seconds = 10;
	long long *lat;
	int opt, ep;

	while ((opt = getopt(argc, argv, "S:f:c:o:u:n:d:x")) != -1) {
		switch (opt) {
		case 'S': sockets = optarg; break;
		case 'f': path = optarg; break;
		case 'c': levels = optarg; break;
		case 'o': first = atol(optarg); break;
		case 'u': n_use = atol(optarg); break;
		case 'n': max = atol(optarg); break;
		case 'd': seconds = atof(optarg); break;
		case 'x': wrong = 1; break;
		default: usage();
		}
	}
	if (sockets == NULL || path == NULL || levels == NULL || max < 1 || first < 0)
		usage();
	for (char *tok = strtok_r(sockets, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
		if (n_socks == MAX_SOCKETS || strlen(tok) >= sizeof(addrs[0].sun_path))
			usage();
		addrs[n_socks].sun_family = AF_UNIX;
		strcpy(addrs[n_socks++].sun_path, tok);
	}
	if (n_socks == 0)
		usage();
	n_users = load_users(path, &users);
	if (n_users < 0)
		return 1;
	if (n_use <= 0 || first + n_use > n_users)
		n_use = n_users - first;
	last_step = calloc((size_t)(n_use > 0 ? n_use : 1), sizeof(*last_step));
	lat = calloc((size_t)max, sizeof(*lat));
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (last_step == NULL || lat == NULL || ep < 0)
		return 1;
	for (char *tok = strtok_r(levels, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
		long clients = atol(tok);

		if (clients < 1 || clients > n_use) {
			fprintf(stderr, "%ld clients need at least as many users (have %ld)\n",
				clients, n_use);
			return 1;
		}
		if (run_level(ep, clients, max, seconds, lat) < 0)
			return 1;
	}
	return 0;
}
