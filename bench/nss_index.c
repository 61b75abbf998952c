/*
 * libnss_benchidx: a passwd NSS module with an index, for bench/run.py.
 *
 * Serves the passwd(5)-format file named by $NSS_BENCH_PASSWD, read once (on
 * the first call) and kept sorted by name and by uid, so that a lookup is a
 * binary search: a few microseconds whatever the number of users, as a fleet's
 * caching name service answers (sssd's memory cache, nscd). It is loaded by
 * nss_wrapper (NSS_WRAPPER_MODULE_SO_PATH, NSS_WRAPPER_MODULE_FN_PREFIX=benchidx),
 * which asks it after its own files backend (NSS_WRAPPER_PASSWD, a copy of
 * /etc/passwd: the machine's own users). The benchmark's other setting puts
 * every user in NSS_WRAPPER_PASSWD instead, which nss_wrapper scans linearly.
 *
 * Only passwd is served; nss_wrapper treats missing group functions as "not
 * found" (groups come from NSS_WRAPPER_GROUP). Lines that do not parse are
 * skipped. Not part of the daemon or the tests.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <nss.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

static struct passwd *entries;
static struct passwd **by_name, **by_uid;
static size_t n_entries;
static int load_error; /* errno of a failed load: every call is then UNAVAIL */
static pthread_once_t once = PTHREAD_ONCE_INIT;

/* Splits "name:passwd:uid:gid:gecos:dir:shell" in place; 0 if it does not parse. */
static int parse(char *line, struct passwd *pw)
{
	char *field[7];
	char *end;
	int i;

	line[strcspn(line, "\n")] = '\0';
	for (i = 0; i < 7; i++) {
		field[i] = line;
		line = strchr(line, ':');
		if (line == NULL)
			break;
		*line++ = '\0';
	}
	if (i != 6 || field[0][0] == '\0')
		return 0;
	pw->pw_name = field[0];
	pw->pw_passwd = field[1];
	pw->pw_uid = (uid_t)strtoul(field[2], &end, 10);
	if (*end != '\0' || field[2][0] == '\0')
		return 0;
	pw->pw_gid = (gid_t)strtoul(field[3], &end, 10);
	if (*end != '\0' || field[3][0] == '\0')
		return 0;
	pw->pw_gecos = field[4];
	pw->pw_dir = field[5];
	pw->pw_shell = field[6];
	return 1;
}

static int cmp_name(const void *a, const void *b)
{
	return strcmp((*(struct passwd *const *)a)->pw_name, (*(struct passwd *const *)b)->pw_name);
}

static int cmp_uid(const void *a, const void *b)
{
	uid_t x = (*(struct passwd *const *)a)->pw_uid, y = (*(struct passwd *const *)b)->pw_uid;

	return (x > y) - (x < y);
}

static void load(void)
{
	const char *path = getenv("NSS_BENCH_PASSWD");
	size_t cap = 0, linecap = 0;
	char *line = NULL;
	FILE *f;

	if (path == NULL || path[0] == '\0') {
		load_error = ENOENT;
		return;
	}
	f = fopen(path, "re");
	if (f == NULL) {
		load_error = errno;
		return;
	}
	while (getline(&line, &linecap, f) > 0) {
		if (n_entries == cap) {
			struct passwd *grown;

			cap = cap ? 2 * cap : 1024;
			grown = realloc(entries, cap * sizeof(*entries));
			if (grown == NULL)
				goto nomem;
			entries = grown;
		}
		/* each entry keeps its own copy of its line: the strings point into it */
		char *copy = strdup(line);

		if (copy == NULL)
			goto nomem;
		if (parse(copy, &entries[n_entries]))
			n_entries++;
		else
			free(copy);
	}
	free(line);
	fclose(f);
	by_name = malloc((n_entries + 1) * sizeof(*by_name));
	by_uid = malloc((n_entries + 1) * sizeof(*by_uid));
	if (by_name == NULL || by_uid == NULL) {
		load_error = ENOMEM;
		return;
	}
	for (size_t i = 0; i < n_entries; i++)
		by_name[i] = by_uid[i] = &entries[i];
	qsort(by_name, n_entries, sizeof(*by_name), cmp_name);
	qsort(by_uid, n_entries, sizeof(*by_uid), cmp_uid);
	return;
nomem:
	free(line);
	fclose(f);
	load_error = ENOMEM;
}

static enum nss_status ready(int *errnop)
{
	pthread_once(&once, load);
	if (load_error != 0) {
		*errnop = load_error;
		return NSS_STATUS_UNAVAIL;
	}
	return NSS_STATUS_SUCCESS;
}

/* Copies `src` into the caller's buffer; TRYAGAIN with ERANGE when it is too small. */
static enum nss_status copy_out(const struct passwd *src, struct passwd *dst, char *buf,
				size_t buflen, int *errnop)
{
	const char *from[5] = {src->pw_name, src->pw_passwd, src->pw_gecos, src->pw_dir,
			       src->pw_shell};
	char **to[5] = {&dst->pw_name, &dst->pw_passwd, &dst->pw_gecos, &dst->pw_dir,
			&dst->pw_shell};
	size_t need = 0;

	for (int i = 0; i < 5; i++)
		need += strlen(from[i]) + 1;
	if (need > buflen) {
		*errnop = ERANGE;
		return NSS_STATUS_TRYAGAIN;
	}
	for (int i = 0; i < 5; i++) {
		size_t len = strlen(from[i]) + 1;

		memcpy(buf, from[i], len);
		*to[i] = buf;
		buf += len;
	}
	dst->pw_uid = src->pw_uid;
	dst->pw_gid = src->pw_gid;
	return NSS_STATUS_SUCCESS;
}

enum nss_status _nss_benchidx_getpwnam_r(const char *name, struct passwd *pw, char *buf,
					 size_t buflen, int *errnop)
{
	struct passwd key = {.pw_name = (char *)name}, *keyp = &key, **found;
	enum nss_status status = ready(errnop);

	if (status != NSS_STATUS_SUCCESS)
		return status;
	found = bsearch(&keyp, by_name, n_entries, sizeof(*by_name), cmp_name);
	if (found == NULL) {
		*errnop = ENOENT;
		return NSS_STATUS_NOTFOUND;
	}
	return copy_out(*found, pw, buf, buflen, errnop);
}

enum nss_status _nss_benchidx_getpwuid_r(uid_t uid, struct passwd *pw, char *buf, size_t buflen,
					 int *errnop)
{
	struct passwd key = {.pw_uid = uid}, *keyp = &key, **found;
	enum nss_status status = ready(errnop);

	if (status != NSS_STATUS_SUCCESS)
		return status;
	found = bsearch(&keyp, by_uid, n_entries, sizeof(*by_uid), cmp_uid);
	if (found == NULL) {
		*errnop = ENOENT;
		return NSS_STATUS_NOTFOUND;
	}
	return copy_out(*found, pw, buf, buflen, errnop);
}

/* Enumeration (getpwent): one shared position, as in glibc's own modules. */
static pthread_mutex_t ent_lock = PTHREAD_MUTEX_INITIALIZER;
static size_t ent_pos;

enum nss_status _nss_benchidx_setpwent(int stayopen)
{
	(void)stayopen;
	pthread_mutex_lock(&ent_lock);
	ent_pos = 0;
	pthread_mutex_unlock(&ent_lock);
	return NSS_STATUS_SUCCESS;
}

enum nss_status _nss_benchidx_endpwent(void)
{
	return _nss_benchidx_setpwent(0);
}

enum nss_status _nss_benchidx_getpwent_r(struct passwd *pw, char *buf, size_t buflen,
					 int *errnop)
{
	enum nss_status status = ready(errnop);

	if (status != NSS_STATUS_SUCCESS)
		return status;
	pthread_mutex_lock(&ent_lock);
	if (ent_pos >= n_entries) {
		*errnop = ENOENT;
		status = NSS_STATUS_NOTFOUND;
	} else {
		status = copy_out(&entries[ent_pos], pw, buf, buflen, errnop);
		if (status == NSS_STATUS_SUCCESS)
			ent_pos++;
	}
	pthread_mutex_unlock(&ent_lock);
	return status;
}
