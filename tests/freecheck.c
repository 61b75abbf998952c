/*
 * freecheck.so - an LD_PRELOAD library that finds secrets pam_mfa.so frees unwiped.
 *
 * A freed block keeps its bytes until the heap hands it to the next malloc (libpam's,
 * sshd's) or a core dump shows it: the module must wipe daemon text before free().
 * This library interposes free(); for each block freed by code inside pam_mfa.so
 * (the caller's return address, resolved with dladdr) it searches the whole block
 * (malloc_usable_size) for each marker and appends a line per hit to the report.
 *
 *   FREECHECK_MARKERS  the texts to look for, one per line (never written out)
 *   FREECHECK_REPORT   file to append to: "marker N in M bytes freed at pam_mfa.so+0xOFF"
 *                      per hit, and at exit "checked K blocks", so that a test can tell
 *                      a clean run from a hook that never ran
 *
 * Only this library reads these variables; pam_mfa.so takes no environment.
 * Used by tests/test_pam_module.py, which builds it with cc -shared -fPIC.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MODULE "pam_mfa.so"

static void (*real_free)(void *);
static int busy;	      /* in our own code: dlsym, dladdr, snprintf may free */
static unsigned long checked; /* blocks freed by the module and searched */

static void append(const char *line, int n)
{
	const char *path = getenv("FREECHECK_REPORT");
	int fd;

	if (path == NULL || n <= 0)
		return;
	/* open/write, not stdio: stdio allocates, and this runs inside free(). A report
	 * that cannot be written must not pass for a clean one: crash the run instead. */
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0 || write(fd, line, (size_t)n) != n)
		abort();
	close(fd);
}

static void check(void *p, const void *caller)
{
	const char *markers = getenv("FREECHECK_MARKERS"), *m, *base;
	char line[256];
	unsigned long offset;
	size_t size, len;
	Dl_info info;
	int i;

	if (markers == NULL || dladdr(caller, &info) == 0 || info.dli_fname == NULL)
		return;
	base = strrchr(info.dli_fname, '/');
	base = base != NULL ? base + 1 : info.dli_fname;
	if (strcmp(base, MODULE) != 0)
		return;
	checked++;
	offset = (unsigned long)((uintptr_t)caller - (uintptr_t)info.dli_fbase);
	size = malloc_usable_size(p);
	for (i = 1, m = markers; *m != '\0'; i++) {
		len = strcspn(m, "\n");
		if (len > 0 && memmem(p, size, m, len) != NULL)
			append(line, snprintf(line, sizeof(line),
					      "marker %d in %zu bytes freed at %s+0x%lx\n", i, size,
					      MODULE, offset));
		m += len;
		if (*m == '\n')
			m++;
	}
}

void free(void *p)
{
	if (real_free == NULL) {
		if (busy)
			return; /* dlsym freeing while we look free up: leak that one block */
		busy = 1;
		real_free = (void (*)(void *))dlsym(RTLD_NEXT, "free");
		busy = 0;
	}
	if (p != NULL && !busy) {
		busy = 1;
		check(p, __builtin_return_address(0));
		busy = 0;
	}
	real_free(p);
}

__attribute__((destructor)) static void report_count(void)
{
	char line[64];

	busy = 1;
	append(line, snprintf(line, sizeof(line), "checked %lu blocks\n", checked));
	busy = 0;
}
