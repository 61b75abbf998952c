/*
 * fuzz_relay - libFuzzer harness for pam_mfa.c: frame parsing and conversation relay,
 * built with ASan and UBSan. Needs root and clang's libFuzzer (Debian: libclang-rt-14-dev).
 *
 *   make -C pam_module fuzz                    # builds pam_module/fuzz/fuzz_relay
 *   make -C pam_module fuzz-run FUZZ_TIME=60   # fuzzes 60 s; new inputs and crashes go to
 *                                              # FUZZ_WORK (default /tmp/pam-mfa-fuzz), never
 *                                              # into the repository's fuzz/corpus
 *   pam_module/fuzz/fuzz_relay FILE...         # runs each input once (replays a crash)
 *
 * tests/test_fuzz_module.py runs it briefly in CI, replays the seeds (fuzz/corpus, written by
 * fuzz/make_corpus.py) and every input that once broke the module (fuzz/regressions, one file
 * per find), and checks that it catches bugs planted in a copy of pam_mfa.c.
 *
 * What runs is the shipped code: this file #includes ../pam_mfa.c (so the static functions are
 * the real ones) and calls pam_sm_authenticate on a real libpam handle. A thread of this
 * process plays mfad on a real Unix socket whose file is root's and whose listener is root, so
 * the module's lstat owner check and SO_PEERCRED check pass for real (hence: run as root). The
 * thread reads START, checks it byte for byte, writes the fuzz input's daemon stream, then
 * shuts down its write side (or closes at once, so ANSWER writes can hit a closed socket), and
 * collects every ANSWER frame the module sends.
 *
 * Oracle: before each run the harness parses the same bytes itself, by docs/protocol.md (not by
 * the module's code), and predicts every conversation message (style and text up to the first
 * NUL), every ANSWER, the PAM code, and whether "unreachable" is logged. The conversation
 * function checks each message is NUL-terminated within a frame and is the predicted one; any
 * difference, like any ASan/UBSan report, aborts: libFuzzer saves the input as a crash.
 *
 * Input layout (all parts optional; missing bytes count as zero):
 *   byte 0     flags, the F_* bits below
 *   byte 1     A, the length of the answers section
 *   A bytes    the user's answers, one line per prompt, each ending at a '\n' or at the
 *              section's end. A line that starts with 0x00 answers with a NULL response; one
 *              that starts with 0x01 makes the conversation fail with code (2nd byte % 31) + 1
 *              (PAM_CONV_ERR if absent), handing back the rest of the line as a response when
 *              there is any. A prompt with no line left fails the conversation, like a user
 *              who closed the terminal. With F_TEXT_FAIL, INFO and ERROR text fails with code
 *              (the frame's first payload byte % 31) + 1 (PAM_CONV_ERR if it has none).
 *   the rest   what the daemon sends, verbatim
 *
 * The one seam: syslog is swallowed (__syslog_chk below) after formatting, so a long run does
 * not flood /dev/log, and so the harness can see what the module logged.
 */
#ifndef PAM_MFA_SOURCE
#define PAM_MFA_SOURCE "../pam_mfa.c" /* tests build planted-bug copies through this */
#endif
#include PAM_MFA_SOURCE

#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <security/pam_appl.h>
#include <semaphore.h>
#include <sys/types.h>

#define SERVICE "pam-mfa-fuzz"
#define USER	"alice"
#define RHOST	"192.0.2.7"
#define TTY	"ssh"

#define SPEC_MAX_FRAME 65536 /* docs/protocol.md: 1 <= N <= 65536 */
#define MAX_LINES      256   /* an answers section of at most 255 bytes has at most 256 lines */
#define LONG_ANSWER    65534 /* F_LONG adds 1..3: the answer limit is a frame minus its type */
#define PEER_BUF       (1u << 20)

#define F_CLOSE	    0x01 /* the peer closes at once after the stream, not just its write side */
#define F_SILENT    0x02 /* pam_sm_authenticate gets PAM_SILENT */
#define F_FAIL_OPEN 0x04 /* module argument fail=open */
#define F_DEBUG	    0x08 /* module argument debug */
#define F_TEXT_FAIL 0x10 /* the conversation refuses INFO and ERROR text */
#define F_LONG	    0x60 /* 1..3: the first prompt is answered with LONG_ANSWER + 1..3 bytes */
#define F_BAD_ARGS  0x80 /* an unknown argument and a bad timeout= come first */

#define CHECK(cond, ...)                                                                           \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_relay: " __VA_ARGS__);                               \
			fputc('\n', stderr);                                                       \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* What the conversation does when asked. */
enum act { ACT_ANSWER, ACT_NULL, ACT_FAIL };

struct event {
	int style;
	const unsigned char *text; /* the frame's text up to its first NUL */
	size_t text_len;
	enum act act;
	int fail_code;		     /* ACT_FAIL */
	const unsigned char *answer; /* ACT_ANSWER, and ACT_FAIL's optional response */
	size_t answer_len;
	int sent; /* the module must send this answer in an ANSWER frame */
};

struct plan {
	struct event *ev;
	size_t n_ev, next; /* next: the conversation's position */
	int rv;
	int unreachable; /* the module must log "mfad unreachable" or "broke off" */
};

struct line {
	const unsigned char *p;
	size_t n;
};

#define START_ITEMS                                                                                \
	"v=1\0"                                                                                    \
	"user=" USER "\0"                                                                          \
	"service=" SERVICE "\0"                                                                    \
	"rhost=" RHOST "\0"                                                                        \
	"ruser=\0"                                                                                 \
	"tty=" TTY "\0"
/* sizeof counts each literal's NUL: the final one */
static const char start_payload[] = START_ITEMS "silent=0";
static const char start_payload_silent[] = START_ITEMS "silent=1";
/* what the module says itself when it fails closed on a break */
static const char unavailable[] =
    "Two-factor authentication is unavailable; contact your administrator.";

static pam_handle_t *pamh;
static struct plan current;
static unsigned char long_answer[LONG_ANSWER + 3];
static unsigned logged_unreachable;

static struct {
	char dir[PATH_MAX];
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	int lfd;
	sem_t go, done;
	/* set by the main thread before go */
	const unsigned char *stream;
	size_t n;
	int close_early;
	int silent; /* START must say silent=1 */
	/* set by the peer before done */
	unsigned char got[PEER_BUF];
	size_t got_len;
} peer = {.lfd = -1};

/* ------------------------------------------------------------------ the log seam */

void __syslog_chk(int pri, int flag, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* libpam's pam_vsyslog ends here; formatting still runs, so the sanitizers see the arguments. */
void __syslog_chk(int pri, int flag, const char *fmt, ...)
{
	char line[2048];
	va_list ap;

	(void)pri;
	(void)flag;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (strstr(line, "mfad unreachable on ") != NULL ||
	    strstr(line, "mfad broke off the conversation on ") != NULL)
		logged_unreachable++;
}

/* ------------------------------------------------------------------ the oracle */

/* Well-formed UTF-8 as the Unicode standard's table 3-7 lists it, byte ranges per lead byte. */
static int utf8_ok(const unsigned char *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		unsigned char c = s[i];
		unsigned char lo = 0x80, hi = 0xbf;
		size_t more;

		if (c <= 0x7f) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf)
			more = 1;
		else if (c >= 0xe0 && c <= 0xef)
			more = 2, lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
		else if (c >= 0xf0 && c <= 0xf4)
			more = 3, lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
		else
			return 0;
		if (n - i - 1 < more || s[i + 1] < lo || s[i + 1] > hi)
			return 0;
		for (size_t k = 2; k <= more; k++)
			if (s[i + k] < 0x80 || s[i + k] > 0xbf)
				return 0;
		i += more + 1;
	}
	return 1;
}

static size_t text_len(const unsigned char *s, size_t n)
{
	const unsigned char *nul = memchr(s, 0, n);

	return nul != NULL ? (size_t)(nul - s) : n;
}

/* The user's k-th answer: what the conversation will do at the k-th prompt. */
static void answer_for(struct event *e, size_t k, unsigned flags, const struct line *lines,
		       size_t n_lines)
{
	unsigned extra = (flags & F_LONG) >> 5;
	const struct line *l;

	if (extra != 0) {
		if (k == 0) {
			e->act = ACT_ANSWER;
			e->answer = long_answer;
			e->answer_len = LONG_ANSWER + extra;
			return;
		}
		k--;
	}
	if (k >= n_lines) {
		e->act = ACT_FAIL;
		e->fail_code = PAM_CONV_ERR;
		return;
	}
	l = &lines[k];
	if (l->n > 0 && l->p[0] == 0x00) {
		e->act = ACT_NULL;
	} else if (l->n > 0 && l->p[0] == 0x01) {
		e->act = ACT_FAIL;
		e->fail_code = l->n > 1 ? l->p[1] % 31 + 1 : PAM_CONV_ERR;
		if (l->n > 2) {
			e->answer = l->p + 2;
			e->answer_len = text_len(l->p + 2, l->n - 2);
		}
	} else {
		e->act = ACT_ANSWER;
		e->answer = l->p;
		e->answer_len = text_len(l->p, l->n);
	}
}

/* docs/protocol.md applied to the stream: what the user sees, what mfad hears, the PAM code. */
static void predict(struct plan *pl, const unsigned char *s, size_t n, unsigned flags,
		    const struct line *lines, size_t n_lines)
{
	size_t off = 0, prompts = 0;
	int spoken = 0;

	for (;;) {
		const unsigned char *body;
		struct event *e;
		uint32_t len;

		if (n - off < 4)
			break; /* EOF, maybe mid-header */
		len = (uint32_t)s[off] << 24 | (uint32_t)s[off + 1] << 16 |
		      (uint32_t)s[off + 2] << 8 | s[off + 3];
		if (len < 1 || len > SPEC_MAX_FRAME || n - off - 4 < len)
			break; /* bad length, or EOF mid-frame */
		body = s + off + 4;
		off += 4 + (size_t)len;
		switch (body[0]) {
		case 'P':
		case 'p':
			spoken = 1;
			e = &pl->ev[pl->n_ev++];
			e->style = body[0] == 'P' ? PAM_PROMPT_ECHO_OFF : PAM_PROMPT_ECHO_ON;
			e->text = body + 1;
			e->text_len = text_len(body + 1, len - 1);
			answer_for(e, prompts++, flags, lines, n_lines);
			if (e->act == ACT_FAIL) {
				/* "A PAM conversation error returns PAM_CONV_ERR": the user's
				 * side failed, whatever code it failed with; not a break. */
				pl->rv = PAM_CONV_ERR;
				return;
			}
			/* An answer too long for a frame or not UTF-8 is the module's own
			 * refusal. */
			if (e->act == ACT_ANSWER && (e->answer_len + 1 > SPEC_MAX_FRAME ||
						     !utf8_ok(e->answer, e->answer_len))) {
				pl->rv = PAM_AUTH_ERR;
				return;
			}
			e->sent = 1;
			continue;
		case 'I':
		case 'E':
			spoken = 1;
			if ((flags & F_SILENT) && body[0] == 'I')
				continue; /* PAM_SILENT drops INFO, never ERROR */
			e = &pl->ev[pl->n_ev++];
			e->style = body[0] == 'I' ? PAM_TEXT_INFO : PAM_ERROR_MSG;
			e->text = body + 1;
			e->text_len = text_len(body + 1, len - 1);
			e->act = flags & F_TEXT_FAIL ? ACT_FAIL : ACT_ANSWER;
			if (flags & F_TEXT_FAIL) {
				/* With code (first payload byte % 31) + 1: any code,
				 * PAM_BUF_ERR too, is the application's failure. */
				e->fail_code = len > 1 ? body[1] % 31 + 1 : PAM_CONV_ERR;
				pl->rv = PAM_CONV_ERR;
				return;
			}
			continue;
		case 'R':
			if (len != 2)
				break;
			switch (body[1]) {
			case 'S':
				pl->rv = PAM_SUCCESS;
				return;
			case 'F':
				pl->rv = PAM_AUTH_ERR;
				return;
			case 'M':
				pl->rv = PAM_MAXTRIES;
				return;
			case 'K':
				pl->rv = PAM_IGNORE;
				return;
			case 'U':
				pl->rv = PAM_AUTHINFO_UNAVAIL;
				return;
			}
			break;
		}
		break; /* a bad RESULT or an unknown type */
	}
	/* A break: fail=open may skip the module only while mfad has not yet spoken. */
	pl->unreachable = 1;
	pl->rv = !spoken && (flags & F_FAIL_OPEN) ? PAM_IGNORE : PAM_AUTHINFO_UNAVAIL;
	if (pl->rv == PAM_AUTHINFO_UNAVAIL) {
		/* failing closed, the module tells the user, whatever the conversation answers */
		struct event *e = &pl->ev[pl->n_ev++];

		e->style = PAM_ERROR_MSG;
		e->text = (const unsigned char *)unavailable;
		e->text_len = sizeof(unavailable) - 1;
		e->act = flags & F_TEXT_FAIL ? ACT_FAIL : ACT_ANSWER;
		e->fail_code = PAM_CONV_ERR;
	}
}

/* ------------------------------------------------------------------ the user */

static char *dup_bytes(const unsigned char *p, size_t n)
{
	char *s = malloc(n + 1);

	CHECK(s != NULL, "out of memory");
	memcpy(s, p, n);
	s[n] = '\0';
	return s;
}

static int converse(int num, const struct pam_message **msg, struct pam_response **resp, void *data)
{
	struct plan *pl = data;
	struct event *e;
	const char *text;
	size_t len;

	CHECK(num == 1, "the module asked %d messages at once", num);
	CHECK(msg != NULL && msg[0] != NULL && msg[0]->msg != NULL, "a NULL message");
	text = msg[0]->msg;
	/* ASan checks each byte read here lies inside the message's allocation. */
	len = strnlen(text, SPEC_MAX_FRAME);
	CHECK(len < SPEC_MAX_FRAME, "a message not NUL-terminated within a frame");
	CHECK(pl->next < pl->n_ev, "an unexpected message, style %d: \"%.60s\"", msg[0]->msg_style,
	      text);
	e = &pl->ev[pl->next++];
	CHECK(msg[0]->msg_style == e->style, "message %zu has style %d, the frame says %d",
	      pl->next, msg[0]->msg_style, e->style);
	CHECK(len == e->text_len && memcmp(text, e->text, len) == 0,
	      "message %zu is \"%.60s\" (%zu bytes), the frame says %zu bytes", pl->next, text, len,
	      e->text_len);

	if (e->act == ACT_FAIL) {
		/* libpam hands a failed call's response on; it must be freed */
		if (e->answer != NULL) {
			*resp = calloc(1, sizeof(**resp));
			CHECK(*resp != NULL, "out of memory");
			(*resp)->resp = dup_bytes(e->answer, e->answer_len);
		}
		return e->fail_code;
	}
	*resp = calloc(1, sizeof(**resp));
	CHECK(*resp != NULL, "out of memory");
	if (e->act == ACT_ANSWER &&
	    (e->style == PAM_PROMPT_ECHO_OFF || e->style == PAM_PROMPT_ECHO_ON))
		(*resp)->resp = dup_bytes(e->answer, e->answer_len);
	return PAM_SUCCESS;
}

/* ------------------------------------------------------------------ mfad */

static void read_exact(int fd, unsigned char *p, size_t n)
{
	while (n > 0) {
		ssize_t got = recv(fd, p, n, 0);

		if (got < 0 && errno == EINTR)
			continue;
		CHECK(got > 0, "the module hung up before its START was complete");
		p += got;
		n -= (size_t)got;
	}
}

static void check_start(int fd)
{
	const char *want = peer.silent ? start_payload_silent : start_payload;
	unsigned char head[5], body[sizeof(start_payload)];
	uint32_t len;

	read_exact(fd, head, sizeof(head));
	len = (uint32_t)head[0] << 24 | (uint32_t)head[1] << 16 | (uint32_t)head[2] << 8 | head[3];
	CHECK(head[4] == 'S' && len == sizeof(start_payload) + 1,
	      "first frame: type 0x%02x, length %u; want a START of %zu", head[4], len,
	      sizeof(start_payload) + 1);
	read_exact(fd, body, sizeof(body));
	CHECK(memcmp(body, want, sizeof(body)) == 0, "START payload differs");
}

/* One connection: START, the stream (while reading ANSWERs), then EOF both ways. */
static void serve(int fd)
{
	size_t off = 0;
	int writing = 1;

	check_start(fd);
	CHECK(fcntl(fd, F_SETFL, O_NONBLOCK) == 0, "fcntl: %m");
	for (;;) {
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		ssize_t k;

		if (writing && off == peer.n) {
			if (peer.close_early) {
				/* Take what is there now and hang up; later ANSWERs hit a
				 * closed socket, as when mfad's prompt timeout fires. */
				while ((k = recv(fd, peer.got + peer.got_len,
						 PEER_BUF - peer.got_len, 0)) > 0)
					peer.got_len += (size_t)k;
				return;
			}
			shutdown(fd, SHUT_WR);
			writing = 0;
		}
		if (writing)
			pfd.events |= POLLOUT;
		if (poll(&pfd, 1, -1) < 0) {
			CHECK(errno == EINTR, "poll: %m");
			continue;
		}
		if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
			CHECK(peer.got_len < PEER_BUF, "the module sent more than %u bytes",
			      PEER_BUF);
			k = recv(fd, peer.got + peer.got_len, PEER_BUF - peer.got_len, 0);
			if (k > 0)
				peer.got_len += (size_t)k;
			else if (k == 0 || (errno != EAGAIN && errno != EINTR))
				return; /* the module is done (EOF or ECONNRESET) */
		}
		if (writing && (pfd.revents & POLLOUT)) {
			k = send(fd, peer.stream + off, peer.n - off, MSG_NOSIGNAL);
			if (k > 0)
				off += (size_t)k;
			else if (k < 0 && errno != EAGAIN && errno != EINTR)
				writing = 0; /* the module stopped listening; wait for its EOF */
		}
	}
}

static void *peer_main(void *unused)
{
	(void)unused;
	for (;;) {
		int fd;

		while (sem_wait(&peer.go) < 0)
			CHECK(errno == EINTR, "sem_wait: %m");
		fd = accept4(peer.lfd, NULL, NULL, SOCK_CLOEXEC);
		CHECK(fd >= 0, "accept: %m");
		serve(fd);
		close(fd);
		sem_post(&peer.done);
	}
	return NULL;
}

/* The ANSWER frames the module sent are exactly the predicted answers, in order; with
 * F_CLOSE the peer hung up early, so a prefix (maybe ending mid-frame) is all it can have. */
static void check_answers(const struct plan *pl, int partial)
{
	size_t off = 0;

	for (size_t i = 0; i < pl->n_ev; i++) {
		const struct event *e = &pl->ev[i];
		const unsigned char *want = e->act == ACT_ANSWER ? e->answer : NULL;
		size_t want_len = e->act == ACT_ANSWER ? e->answer_len : 0;
		const unsigned char *h = peer.got + off;
		uint32_t len;

		if (!e->sent)
			continue;
		if (partial && peer.got_len - off < 5 + want_len)
			return;
		CHECK(peer.got_len - off >= 5, "answer %zu never arrived", i);
		len = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
		CHECK(h[4] == 'A' && len == want_len + 1,
		      "answer %zu: type 0x%02x length %u, want an ANSWER of %zu", i, h[4], len,
		      want_len + 1);
		CHECK(peer.got_len - off - 5 >= want_len &&
			  (want_len == 0 || memcmp(h + 5, want, want_len) == 0),
		      "answer %zu differs from what the user typed", i);
		off += 5 + want_len;
	}
	CHECK(partial || off == peer.got_len, "the module sent %zu bytes after its answers",
	      peer.got_len - off);
}

/* ------------------------------------------------------------------ setup */

static void cleanup(void)
{
	if (pamh != NULL)
		pam_end(pamh, PAM_SUCCESS);
	if (peer.lfd >= 0)
		close(peer.lfd);
	unlink(peer.path);
	if (peer.dir[0] != '\0') {
		char service[PATH_MAX];

		snprintf(service, sizeof(service), "%s/%s", peer.dir, SERVICE);
		unlink(service);
		rmdir(peer.dir);
	}
}

int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static struct pam_conv conv = {converse, &current};
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	const char *base = getenv("PAM_MFA_FUZZ_DIR");
	char service[PATH_MAX];
	pthread_t thread;
	FILE *f;

	(void)argc;
	(void)argv;
	if (geteuid() != 0) {
		fprintf(stderr, "fuzz_relay: run as root: the module trusts only a root daemon\n");
		exit(2);
	}
	memset(long_answer, 'x', sizeof(long_answer));
	snprintf(peer.dir, sizeof(peer.dir), "%s/pam-mfa-fuzz-XXXXXX",
		 base != NULL ? base : "/tmp");
	CHECK(mkdtemp(peer.dir) != NULL, "mkdtemp %s: %m", peer.dir);
	atexit(cleanup);
	CHECK((size_t)snprintf(peer.path, sizeof(peer.path), "%s/pam.sock", peer.dir) <
		  sizeof(peer.path),
	      "socket path too long; set PAM_MFA_FUZZ_DIR to a shorter directory");
	memcpy(sa.sun_path, peer.path, sizeof(peer.path));
	peer.lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(peer.lfd >= 0, "socket: %m");
	CHECK(bind(peer.lfd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "bind: %m");
	CHECK(chmod(peer.path, 0600) == 0 && listen(peer.lfd, 4) == 0, "listen: %m");
	CHECK(sem_init(&peer.go, 0, 0) == 0 && sem_init(&peer.done, 0, 0) == 0, "sem_init: %m");
	CHECK(pthread_create(&thread, NULL, peer_main, NULL) == 0, "pthread_create");
	pthread_detach(thread);

	/* A service file of our own, so /etc/pam.d is neither read nor needed. */
	snprintf(service, sizeof(service), "%s/%s", peer.dir, SERVICE);
	CHECK((f = fopen(service, "w")) != NULL, "%s: %m", service);
	fputs("auth required pam_permit.so\n", f);
	fclose(f);
	CHECK(pam_start_confdir(SERVICE, USER, &conv, peer.dir, &pamh) == PAM_SUCCESS,
	      "pam_start_confdir failed");
	CHECK(pam_set_item(pamh, PAM_RHOST, RHOST) == PAM_SUCCESS &&
		  pam_set_item(pamh, PAM_TTY, TTY) == PAM_SUCCESS,
	      "pam_set_item failed");
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	unsigned flags = size > 0 ? data[0] : 0;
	size_t head = size < 2 ? size : 2, alen = size > 1 ? data[1] : 0, start;
	struct line lines[MAX_LINES];
	size_t n_lines = 0;
	char sock_arg[sizeof(peer.path) + 8];
	const char *argv[6];
	int argc = 0, rv;

	if (alen > size - head)
		alen = size - head;
	start = head + alen;
	/* Each line ends at a '\n' or at the section's end: "a\n" is one line, "a\n\n" two. */
	for (size_t i = head, from = head; i <= start; i++) {
		if (i == start || data[i] == '\n') {
			if (i > from || i < start)
				lines[n_lines++] = (struct line){data + from, i - from};
			from = i + 1;
		}
	}

	memset(&current, 0, sizeof(current));
	/* a frame is at least 5 bytes; one more event for the module's own message */
	current.ev = calloc((size - start) / 5 + 2, sizeof(*current.ev));
	CHECK(current.ev != NULL, "out of memory");
	predict(&current, data + start, size - start, flags, lines, n_lines);

	snprintf(sock_arg, sizeof(sock_arg), "socket=%s", peer.path);
	if (flags & F_BAD_ARGS) {
		argv[argc++] = "frobnicate";
		argv[argc++] = "timeout=0";
	}
	argv[argc++] = sock_arg;
	/* The peer never stalls, so no wait is ever due; the longest timeout keeps a SIGSTOP
	 * of the whole process (deadlines pass while stopped) from counting as a break. */
	argv[argc++] = "timeout=3600";
	argv[argc++] = flags & F_FAIL_OPEN ? "fail=open" : "fail=closed";
	if (flags & F_DEBUG)
		argv[argc++] = "debug";

	peer.stream = data + start;
	peer.n = size - start;
	peer.close_early = (flags & F_CLOSE) != 0;
	peer.silent = (flags & F_SILENT) != 0;
	peer.got_len = 0;
	logged_unreachable = 0;
	sem_post(&peer.go);
	rv = pam_sm_authenticate(pamh, flags & F_SILENT ? PAM_SILENT : 0, argc, argv);
	while (sem_wait(&peer.done) < 0)
		CHECK(errno == EINTR, "sem_wait: %m");

	CHECK(rv == current.rv, "the module returned %d (%s), docs/protocol.md says %d (%s)", rv,
	      pam_strerror(pamh, rv), current.rv, pam_strerror(pamh, current.rv));
	CHECK(current.next == current.n_ev, "the user saw %zu of %zu messages", current.next,
	      current.n_ev);
	CHECK((logged_unreachable > 0) == current.unreachable,
	      "a break must be logged, and only a break (logged %u, break %d)", logged_unreachable,
	      current.unreachable);
	check_answers(&current, peer.close_early);
	free(current.ev);
	return 0;
}
