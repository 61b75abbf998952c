/*
 * pam_mfa.so - relay a PAM authentication to mfad, which decides everything.
 *
 * This module holds no policy and no secrets. It checks that the daemon's
 * socket belongs to root, sends the PAM items in one START frame, then obeys
 * the daemon: PROMPT -> PAM conversation -> ANSWER, INFO/ERROR -> shown to
 * the user, RESULT -> PAM return code (one switch, outcome_to_pam()). Secrets
 * do pass through it (the code typed; the TOTP key and recovery codes that
 * mfad shows at enrolment): every buffer that held one is wiped before free.
 *
 * Run as root (sshd, login, su, sudo: euid 0) it uses socket=, which only root
 * can reach. Run as a user (a screen locker: euid not 0) it uses user_socket=,
 * open to everyone, where mfad checks only the peer's own account (its uid
 * must be PAM_USER's) and offers no enrolment.
 *
 * What the user is told: every ERROR from mfad, even under PAM_SILENT (sudo
 * sets it, and a refused code must not look like a mistyped password); INFO
 * only without PAM_SILENT, which START passes on (silent=1) so that mfad sends
 * nothing the user needs as INFO. Failing closed because mfad cannot be heard,
 * the module says MSG_UNAVAILABLE itself; the reason goes to pam_syslog only.
 *
 * Wire format (normative text: docs/protocol.md, version 1), both directions:
 *
 *   u32 big-endian length N, 1 <= N <= MAX_FRAME
 *   u8  type                 S A P p I E R (table below)
 *   N-1 bytes payload        UTF-8, no terminating NUL on the wire
 *
 *   S START      module -> mfad  "v=1\0user=U\0service=S\0rhost=H\0ruser=R\0tty=T\0silent=0\0"
 *   A ANSWER     module -> mfad  the user's answer, may be empty
 *   P PROMPT_OFF mfad -> module  prompt text, ask with echo off
 *   p PROMPT_ON  mfad -> module  prompt text, ask with echo on
 *   I INFO       mfad -> module  text for the user (PAM_TEXT_INFO)
 *   E ERROR      mfad -> module  text for the user (PAM_ERROR_MSG)
 *   R RESULT     mfad -> module  exactly one outcome byte; always last
 *
 * Anything else from the daemon (unknown type, bad length, bad RESULT, EOF or
 * a timeout before RESULT) means "unreachable": PAM_AUTHINFO_UNAVAIL, or
 * PAM_IGNORE with fail=open, always logged. fail=open covers only a daemon
 * that has not yet sent a valid frame: once the conversation has begun, a
 * user can provoke a break (a back-off longer than timeout=), so it fails
 * closed. The user's side failing is no break and has no fail mode: the PAM
 * conversation failing is PAM_CONV_ERR, an answer mfad could not take
 * PAM_AUTH_ERR, and this module's own allocation failing PAM_BUF_ERR.
 *
 * Module arguments (never environment variables: the user may set those):
 *   socket=PATH          daemon socket when run as root, default /run/mfad/pam.sock
 *   user_socket=PATH     daemon socket when not, default /run/mfad/pam-user.sock
 *   timeout=SECONDS      per-frame read/write timeout, 1..3600, default 10
 *   fail=closed|open     what "unreachable" returns, default closed
 *   debug                log each frame type (never its text) at LOG_DEBUG
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <security/pam_ext.h>
#include <security/pam_modules.h>

#define DEFAULT_SOCKET	  "/run/mfad/pam.sock"
#define DEFAULT_USER_SOCK "/run/mfad/pam-user.sock"
#define MSG_UNAVAILABLE	  "Two-factor authentication is unavailable; contact your administrator."
#define DEFAULT_TIMEOUT	  10 /* seconds, per frame */
#define MAX_TIMEOUT	  3600
#define MAX_FRAME	  65536 /* type byte + payload */
#define MAX_USER	  256
#define MAX_VALUE	  1024
#define CONNECT_RETRY_MS  50

enum frame_type {
	T_START = 'S',
	T_ANSWER = 'A',
	T_PROMPT_OFF = 'P',
	T_PROMPT_ON = 'p',
	T_INFO = 'I',
	T_ERROR = 'E',
	T_RESULT = 'R',
};

struct relay {
	pam_handle_t *pamh;
	const char *socket_path; /* the one in use: root_socket or user_socket */
	const char *root_socket; /* socket=, for a caller with euid 0 */
	const char *user_socket; /* user_socket=, for any other */
	int timeout_ms;
	int fail_open;
	int spoken; /* mfad has sent a valid frame: from here on, fail closed */
	int debug;
	int silent;
	int fd;
	unsigned char *buf; /* one frame body, at most MAX_FRAME bytes */
	size_t len;	    /* bytes of buf in use */
	char why[192];	    /* reason for "unreachable", for the log */
};

/* Record why the daemon counts as unreachable (%m: errno, thread-safe); returns -1. */
__attribute__((format(printf, 2, 3))) static int fail(struct relay *r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(r->why, sizeof(r->why), fmt, ap);
	va_end(ap);
	return -1;
}

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait for fd to become ready before the deadline; EINTR just waits again. */
static int wait_fd(struct relay *r, short events, long long deadline)
{
	struct pollfd pfd = {.fd = r->fd, .events = events};
	long long left;
	int n;

	for (;;) {
		left = deadline - now_ms();
		if (left <= 0)
			return fail(r, "timed out after %d ms waiting for mfad", r->timeout_ms);
		n = poll(&pfd, 1, (int)left);
		if (n > 0)
			return 0;
		if (n < 0 && errno != EINTR)
			return fail(r, "poll: %m");
	}
}

/* Returns 0, or -1 with errno set (EPIPE/ECONNRESET: the daemon has closed). */
static int write_all(struct relay *r, const void *data, size_t n, long long deadline)
{
	const unsigned char *p = data;
	ssize_t w;

	while (n > 0) {
		if (wait_fd(r, POLLOUT, deadline) < 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		w = send(r->fd, p, n, MSG_NOSIGNAL);
		if (w < 0) {
			int err = errno;

			if (err == EINTR || err == EAGAIN)
				continue;
			fail(r, "write to mfad: %m");
			errno = err;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int read_all(struct relay *r, unsigned char *p, size_t n, long long deadline)
{
	ssize_t got;

	while (n > 0) {
		if (wait_fd(r, POLLIN, deadline) < 0)
			return -1;
		got = recv(r->fd, p, n, 0);
		if (got == 0)
			return fail(r, "mfad closed the connection before RESULT");
		if (got < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return fail(r, "read from mfad: %m");
		}
		p += got;
		n -= (size_t)got;
	}
	return 0;
}

static int send_frame(struct relay *r, char type, const void *payload, size_t n)
{
	long long deadline = now_ms() + r->timeout_ms;
	uint32_t len = (uint32_t)(n + 1);
	unsigned char head[5] = {(unsigned char)(len >> 24), (unsigned char)(len >> 16),
				 (unsigned char)(len >> 8), (unsigned char)len,
				 (unsigned char)type};

	if (n + 1 > MAX_FRAME)
		return fail(r, "frame of %zu bytes exceeds the limit", n + 1);
	if (write_all(r, head, sizeof(head), deadline) < 0)
		return -1;
	return write_all(r, payload, n, deadline);
}

/* One frame into r->buf; the length is range-checked before any body byte is read. */
static int read_frame(struct relay *r)
{
	long long deadline = now_ms() + r->timeout_ms;
	unsigned char head[4];
	uint32_t len;

	if (read_all(r, head, sizeof(head), deadline) < 0)
		return -1;
	len = (uint32_t)head[0] << 24 | (uint32_t)head[1] << 16 | (uint32_t)head[2] << 8 | head[3];
	if (len < 1 || len > MAX_FRAME)
		return fail(r, "frame length %u outside 1..%d", len, MAX_FRAME);
	if (read_all(r, r->buf, len, deadline) < 0)
		return -1;
	r->len = len;
	return 0;
}

/* The daemon's text as a NUL-terminated copy: the payload may hold a NUL of its own. */
static char *payload_text(const struct relay *r)
{
	char *s = malloc(r->len); /* payload is len - 1 bytes, plus the terminator */

	if (s != NULL) {
		memcpy(s, r->buf + 1, r->len - 1);
		s[r->len - 1] = '\0';
	}
	return s;
}

/* Daemon text may be a secret (INFO at enrolment): wipe it before the heap reuses it. */
static void wipe_free(void *p, size_t n)
{
	if (p != NULL) {
		explicit_bzero(p, n);
		free(p);
	}
}

/* Strict UTF-8 (no overlongs, surrogates or > U+10FFFF): mfad drops a connection
 * on bad UTF-8, and with fail=open a user must not be able to cause that. */
static int valid_utf8(const unsigned char *s, size_t n)
{
	size_t i = 0, k, extra;
	uint32_t cp;

	while (i < n) {
		if (s[i] < 0x80) {
			i++;
			continue;
		}
		if (s[i] >= 0xc2 && s[i] <= 0xdf)
			extra = 1, cp = s[i] & 0x1fu;
		else if (s[i] >= 0xe0 && s[i] <= 0xef)
			extra = 2, cp = s[i] & 0x0fu;
		else if (s[i] >= 0xf0 && s[i] <= 0xf4)
			extra = 3, cp = s[i] & 0x07u;
		else
			return 0;
		if (n - i <= extra)
			return 0;
		for (k = 1; k <= extra; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return 0;
			cp = cp << 6 | (s[i + k] & 0x3fu);
		}
		if ((extra == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
		    (extra == 3 && (cp < 0x10000 || cp > 0x10ffff)))
			return 0;
		i += extra + 1;
	}
	return 1;
}

/* Appends "key=value\0" to the START payload in r->buf; the caller bounds the total. */
static int add_field(struct relay *r, const char *key, int item, size_t max)
{
	const void *v = NULL;
	const char *val;
	size_t klen = strlen(key), vlen;

	if (pam_get_item(r->pamh, item, &v) != PAM_SUCCESS)
		v = NULL;
	val = v != NULL ? v : "";
	vlen = strlen(val);
	if (vlen > max || !valid_utf8((const unsigned char *)val, vlen)) {
		pam_syslog(r->pamh, LOG_ERR, "PAM item %s is longer than %zu bytes or not UTF-8",
			   key, max);
		return -1;
	}
	memcpy(r->buf + r->len, key, klen);
	r->buf[r->len + klen] = '=';
	memcpy(r->buf + r->len + klen + 1, val, vlen + 1);
	r->len += klen + vlen + 2;
	return 0;
}

static int connect_daemon(struct relay *r)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	long long deadline = now_ms() + r->timeout_ms;
	struct ucred cred;
	socklen_t clen = sizeof(cred);
	struct stat st;

	if (strlen(r->socket_path) >= sizeof(sa.sun_path))
		return fail(r, "socket path %s is too long", r->socket_path);
	memcpy(sa.sun_path, r->socket_path, strlen(r->socket_path) + 1);
	/* Only a socket that root created can speak for root's daemon. */
	if (lstat(r->socket_path, &st) < 0)
		return fail(r, "%s: %m", r->socket_path);
	if (!S_ISSOCK(st.st_mode))
		return fail(r, "%s is not a socket", r->socket_path);
	if (st.st_uid != 0)
		return fail(r, "%s is owned by uid %u, not root", r->socket_path, st.st_uid);
	r->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (r->fd < 0)
		return fail(r, "socket: %m");
	/* Non-blocking, so a daemon that stopped accepting cannot hang the login. */
	while (connect(r->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (errno != EINTR && errno != EAGAIN)
			return fail(r, "connect %s: %m", r->socket_path);
		if (now_ms() >= deadline)
			return fail(r, "mfad did not accept the connection within %d ms",
				    r->timeout_ms);
		poll(NULL, 0, CONNECT_RETRY_MS);
	}
	/* The path could have been swapped after lstat; the peer's uid cannot. */
	if (getsockopt(r->fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) < 0)
		return fail(r, "SO_PEERCRED: %m");
	if (clen != sizeof(cred)) /* a short answer would leave cred.uid unset */
		return fail(r, "SO_PEERCRED returned %u bytes, not %zu", clen, sizeof(cred));
	if (cred.uid != 0)
		return fail(r, "peer on %s runs as uid %u, not root", r->socket_path, cred.uid);
	return 0;
}

/* The one table of docs/protocol.md. -1: not an outcome this version knows. */
static int outcome_to_pam(unsigned char outcome)
{
	switch (outcome) {
	case 'S':
		return PAM_SUCCESS;
	case 'F':
		return PAM_AUTH_ERR;
	case 'M':
		return PAM_MAXTRIES;
	case 'K':
		return PAM_IGNORE; /* never PAM_SUCCESS: a skip must not satisfy "sufficient" */
	case 'U':
		return PAM_AUTHINFO_UNAVAIL;
	default:
		return -1;
	}
}

static void parse_args(struct relay *r, int argc, const char **argv)
{
	char *end;
	long v;

	for (int i = 0; i < argc; i++) {
		if (strncmp(argv[i], "socket=", 7) == 0) {
			r->root_socket = argv[i] + 7;
		} else if (strncmp(argv[i], "user_socket=", 12) == 0) {
			r->user_socket = argv[i] + 12;
		} else if (strncmp(argv[i], "timeout=", 8) == 0) {
			errno = 0;
			v = strtol(argv[i] + 8, &end, 10);
			if (errno != 0 || end == argv[i] + 8 || *end != '\0' || v < 1 ||
			    v > MAX_TIMEOUT)
				pam_syslog(r->pamh, LOG_ERR, "bad %s (1..%d seconds), using %d",
					   argv[i], MAX_TIMEOUT, DEFAULT_TIMEOUT);
			else
				r->timeout_ms = (int)v * 1000;
		} else if (strcmp(argv[i], "fail=closed") == 0) {
			r->fail_open = 0;
		} else if (strcmp(argv[i], "fail=open") == 0) {
			r->fail_open = 1;
		} else if (strcmp(argv[i], "debug") == 0) {
			r->debug = 1;
		} else {
			pam_syslog(r->pamh, LOG_ERR, "unknown option: %s", argv[i]);
		}
	}
}

/* Failing closed, the user hears one fixed sentence (never r->why: that is for the
 * administrator, in the log); under PAM_SILENT too, as it is an error, not information. */
static int fail_closed(struct relay *r)
{
	pam_prompt(r->pamh, PAM_ERROR_MSG, NULL, "%s", MSG_UNAVAILABLE);
	return PAM_AUTHINFO_UNAVAIL;
}

static int unreachable(struct relay *r)
{
	if (r->spoken) {
		pam_syslog(r->pamh, LOG_ERR,
			   "mfad broke off the conversation on %s: %s; failing closed%s",
			   r->socket_path, r->why, r->fail_open ? " despite fail=open" : "");
		return fail_closed(r);
	}
	pam_syslog(r->pamh, LOG_ERR, "mfad unreachable on %s: %s; %s", r->socket_path, r->why,
		   r->fail_open ? "fail=open, ignoring this module" : "failing closed");
	return r->fail_open ? PAM_IGNORE : fail_closed(r);
}

/* Shows the daemon's current frame as INFO (unless PAM_SILENT) or ERROR text. */
static int show_text(struct relay *r, int style)
{
	char *text;
	int rc;

	if (r->silent && style == PAM_TEXT_INFO)
		return PAM_SUCCESS;
	if ((text = payload_text(r)) == NULL)
		return PAM_BUF_ERR;
	rc = pam_prompt(r->pamh, style, NULL, "%s", text);
	wipe_free(text, r->len);
	/* Whatever code the conversation failed with (PAM_BUF_ERR too: its memory, not
	 * ours), it is a conversation error. */
	return rc == PAM_SUCCESS ? PAM_SUCCESS : PAM_CONV_ERR;
}

/* Asks the user the daemon's prompt and sends the answer; the answer is wiped either way. */
static int ask(struct relay *r, int style)
{
	char *text, *answer = NULL;
	size_t n;
	int rc;

	if ((text = payload_text(r)) == NULL)
		return PAM_BUF_ERR;
	rc = pam_prompt(r->pamh, style, &answer, "%s", text);
	wipe_free(text, r->len);
	if (rc != PAM_SUCCESS) {
		/* Whatever code the application's conversation failed with, it is a
		 * conversation error: never taken for mfad's break or the refusal below. */
		rc = PAM_CONV_ERR;
		goto out;
	}
	n = answer != NULL ? strlen(answer) : 0;
	/* Too long or not UTF-8 is refused here: mfad would drop the connection,
	 * which must not turn into PAM_IGNORE under fail=open. */
	if (n + 1 > MAX_FRAME || !valid_utf8((const unsigned char *)answer, n)) {
		pam_syslog(r->pamh, LOG_ERR, "answer is too long or not UTF-8, refusing");
		rc = PAM_AUTH_ERR;
		goto out;
	}
	rc = PAM_SUCCESS;
	/* If mfad closed during the conversation (its prompt timeout), the frames it
	 * sent before closing are still ours to read: the caller keeps reading. */
	if (send_frame(r, T_ANSWER, answer != NULL ? answer : "", n) < 0) {
		if (errno != EPIPE && errno != ECONNRESET)
			rc = unreachable(r);
		else if (r->debug)
			pam_syslog(r->pamh, LOG_DEBUG, "mfad closed during the prompt");
	}
out:
	if (answer != NULL) {
		explicit_bzero(answer, strlen(answer));
		free(answer);
	}
	return rc;
}

/* Allocates r->buf, the one frame buffer, and writes the START payload into it. */
static int build_start(struct relay *r)
{
	if ((r->buf = malloc(MAX_FRAME)) == NULL)
		return PAM_BUF_ERR;
	/* MAX_USER + 4 * MAX_VALUE plus keys fits MAX_FRAME with room to spare. */
	memcpy(r->buf, "v=1", 4);
	r->len = 4;
	if (add_field(r, "user", PAM_USER, MAX_USER) < 0 ||
	    add_field(r, "service", PAM_SERVICE, MAX_VALUE) < 0 ||
	    add_field(r, "rhost", PAM_RHOST, MAX_VALUE) < 0 ||
	    add_field(r, "ruser", PAM_RUSER, MAX_VALUE) < 0 ||
	    add_field(r, "tty", PAM_TTY, MAX_VALUE) < 0)
		return PAM_AUTH_ERR; /* as mfad would answer it: never "unreachable" */
	memcpy(r->buf + r->len, r->silent ? "silent=1" : "silent=0", 9);
	r->len += 9;
	return PAM_SUCCESS;
}

/* Obeys mfad frame by frame until its RESULT or a break; returns the PAM code. */
static int converse_with_mfad(struct relay *r, const char *user)
{
	int rv = PAM_AUTH_ERR;

	for (;;) {
		if (read_frame(r) < 0)
			return unreachable(r);
		if (r->debug)
			pam_syslog(r->pamh, LOG_DEBUG, "frame 0x%02x, %zu bytes", r->buf[0],
				   r->len);
		switch (r->buf[0]) {
		case T_PROMPT_OFF:
		case T_PROMPT_ON:
			r->spoken = 1;
			rv = ask(r, r->buf[0] == T_PROMPT_OFF ? PAM_PROMPT_ECHO_OFF
							      : PAM_PROMPT_ECHO_ON);
			break;
		case T_INFO:
		case T_ERROR:
			r->spoken = 1;
			rv = show_text(r, r->buf[0] == T_INFO ? PAM_TEXT_INFO : PAM_ERROR_MSG);
			break;
		case T_RESULT:
			rv = r->len == 2 ? outcome_to_pam(r->buf[1]) : -1;
			if (rv < 0) {
				if (r->len == 2)
					fail(r, "unknown RESULT outcome 0x%02x", r->buf[1]);
				else
					fail(r, "RESULT payload of %zu bytes, not 1", r->len - 1);
				return unreachable(r);
			}
			if (r->debug)
				pam_syslog(r->pamh, LOG_DEBUG, "mfad says '%c' for %s", r->buf[1],
					   user);
			return rv;
		default:
			fail(r, "unknown frame type 0x%02x", r->buf[0]);
			return unreachable(r);
		}
		/* The user's side failed or memory ran out (not mfad's doing: no fail mode),
		 * or ask() found mfad gone and has logged the break. */
		if (rv != PAM_SUCCESS)
			return rv;
	}
}

static int authenticate(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
	struct relay r = {.pamh = pamh,
			  .root_socket = DEFAULT_SOCKET,
			  .user_socket = DEFAULT_USER_SOCK,
			  .timeout_ms = DEFAULT_TIMEOUT * 1000,
			  .silent = ((unsigned int)flags & PAM_SILENT) != 0,
			  .fd = -1};
	const char *user = NULL;
	int rv = PAM_AUTH_ERR;

	parse_args(&r, argc, argv);
	/* euid, not uid: sudo and su run as root on behalf of a user and use the root
	 * socket; a screen locker cannot reach it and asks about its own user only. */
	r.socket_path = geteuid() == 0 ? r.root_socket : r.user_socket;
	if (pam_get_user(pamh, &user, NULL) != PAM_SUCCESS || user == NULL || *user == '\0') {
		pam_syslog(pamh, LOG_ERR, "no user name");
		goto out;
	}
	rv = build_start(&r);
	if (rv != PAM_SUCCESS)
		goto out;
	if (connect_daemon(&r) < 0 || send_frame(&r, T_START, r.buf, r.len) < 0) {
		rv = unreachable(&r);
		goto out;
	}
	if (r.debug)
		pam_syslog(pamh, LOG_DEBUG, "asked mfad on %s about %s", r.socket_path, user);
	rv = converse_with_mfad(&r, user);
out:
	if (r.fd >= 0)
		close(r.fd);
	wipe_free(r.buf, MAX_FRAME); /* every frame passed through it, secrets too */
	return rv;
}

PAM_EXTERN int pam_sm_authenticate(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
	return authenticate(pamh, flags, argc, argv);
}

PAM_EXTERN int pam_sm_setcred(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
	(void)pamh;
	(void)flags;
	(void)argc;
	(void)argv;
	return PAM_SUCCESS;
}
