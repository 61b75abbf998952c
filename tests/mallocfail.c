/*
 * mallocfail.so - an LD_PRELOAD library that makes pam_mfa.so's own malloc() fail.
 *
 * The module allocates in two places: its frame buffer, before it connects, and a copy of
 * each PROMPT, INFO or ERROR text. Running out there must be PAM_BUF_ERR, not a conversation
 * error and not "unreachable", and no allocator can be made to fail on cue for one caller
 * only. This library interposes malloc(); a call made by code inside pam_mfa.so (the caller's
 * return address, resolved with dladdr, as tests/freecheck.c does for free) returns NULL once
 * MALLOCFAIL_AFTER of them have succeeded. Every other caller (libpam, the application, the
 * loader) gets glibc's malloc, called as __libc_malloc: dlsym may itself allocate.
 *
 *   MALLOCFAIL_AFTER   how many of the module's malloc() calls succeed; unset: all of them
 *   MALLOCFAIL_REPORT  file that gets, at exit, "module malloc: N succeeded, M failed", so a
 *                      test can tell the failure it wanted from a hook that never ran
 *
 * Only this library reads these variables; pam_mfa.so takes no environment.
 * Used by tests/test_pam_module_oom.py, which builds it with cc -shared -fPIC.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MODULE "pam_mfa.so"

extern void *__libc_malloc(size_t size);

static int busy;		/* in our own code: dladdr, getenv, strtoul must not recurse */
static unsigned long succeeded; /* the module's malloc() calls let through */
static unsigned long failed;	/* and those made to fail */

static int from_module(const void *caller)
{
	const char *base;
	Dl_info info;

	if (dladdr(caller, &info) == 0 || info.dli_fname == NULL)
		return 0;
	base = strrchr(info.dli_fname, '/');
	base = base != NULL ? base + 1 : info.dli_fname;
	return strcmp(base, MODULE) == 0;
}

void *malloc(size_t size)
{
	const char *after;
	int fail = 0;

	if (!busy) {
		busy = 1;
		if (from_module(__builtin_return_address(0))) {
			after = getenv("MALLOCFAIL_AFTER");
			fail = after != NULL && succeeded >= strtoul(after, NULL, 10);
			if (fail)
				failed++;
			else
				succeeded++;
		}
		busy = 0;
	}
	return fail ? NULL : __libc_malloc(size);
}

__attribute__((destructor)) static void report(void)
{
	const char *path = getenv("MALLOCFAIL_REPORT");
	char line[96];
	int fd, n;

	if (path == NULL)
		return;
	busy = 1;
	n = snprintf(line, sizeof(line), "module malloc: %lu succeeded, %lu failed\n", succeeded,
		     failed);
	/* A report that cannot be written must not pass for a clean one: crash instead. */
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0 || n <= 0 || write(fd, line, (size_t)n) != n)
		abort();
	close(fd);
}
