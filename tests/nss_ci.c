/*
 * libnss_ci: a tiny, case-insensitive NSS passwd module for the tests.
 *
 * Serves passwd entries from the passwd(5)-format file named by $NSS_CI_PASSWD
 * and matches user names the way SSSD or winbind with case-insensitive names
 * do: getpwnam("ALICE") finds the line "alice:..." and always answers with
 * the file's (canonical) spelling in pw_name.
 *
 * It is meant to be loaded by nss_wrapper (NSS_WRAPPER_MODULE_SO_PATH, with
 * NSS_WRAPPER_MODULE_FN_PREFIX=ci), which asks it after its own files
 * backend; tests/nsswrap.py builds it and sets the environment.
 *
 * Only passwd is served: nss_wrapper looks up the group functions too, but
 * treats missing ones as "not found" (groups come from NSS_WRAPPER_GROUP).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <nss.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>

#define NSS_CI_ENV "NSS_CI_PASSWD"

/* Returns the file opened for reading, or NULL with *status and *errnop set. */
static FILE *open_db(enum nss_status *status, int *errnop)
{
	const char *path = getenv(NSS_CI_ENV);
	FILE *f;

	if (path == NULL || path[0] == '\0') {
		*status = NSS_STATUS_UNAVAIL;
		*errnop = ENOENT;
		return NULL;
	}
	f = fopen(path, "re");
	if (f == NULL) {
		*status = NSS_STATUS_UNAVAIL;
		*errnop = errno;
	}
	return f;
}

/*
 * Reads the next entry of `f` into the caller's buffer (glibc's parser skips
 * lines that do not parse). NOTFOUND at the end of the file; TRYAGAIN with
 * ERANGE when the caller's buffer is too small: fgetpwent_r has then put the
 * stream back before the entry, and the caller retries with a larger buffer.
 */
static enum nss_status next_entry(FILE *f, struct passwd *pw, char *buf, size_t buflen, int *errnop)
{
	struct passwd *got = NULL;
	int rc = fgetpwent_r(f, pw, buf, buflen, &got);

	if (rc == 0 && got != NULL) {
		return NSS_STATUS_SUCCESS;
	}
	if (rc == ERANGE) {
		*errnop = ERANGE;
		return NSS_STATUS_TRYAGAIN;
	}
	if (rc == ENOENT || rc == 0) {
		*errnop = ENOENT;
		return NSS_STATUS_NOTFOUND;
	}
	*errnop = rc;
	return NSS_STATUS_UNAVAIL;
}

enum nss_status _nss_ci_getpwnam_r(const char *name, struct passwd *pw, char *buf, size_t buflen,
				   int *errnop)
{
	enum nss_status status;
	FILE *f = open_db(&status, errnop);

	if (f == NULL) {
		return status;
	}
	while ((status = next_entry(f, pw, buf, buflen, errnop)) == NSS_STATUS_SUCCESS) {
		if (strcasecmp(pw->pw_name, name) == 0) {
			break;
		}
	}
	fclose(f);
	return status;
}

enum nss_status _nss_ci_getpwuid_r(uid_t uid, struct passwd *pw, char *buf, size_t buflen,
				   int *errnop)
{
	enum nss_status status;
	FILE *f = open_db(&status, errnop);

	if (f == NULL) {
		return status;
	}
	while ((status = next_entry(f, pw, buf, buflen, errnop)) == NSS_STATUS_SUCCESS) {
		if (pw->pw_uid == uid) {
			break;
		}
	}
	fclose(f);
	return status;
}

/* Enumeration (getpwent): one shared position, as in glibc's own modules. */
static pthread_mutex_t ent_lock = PTHREAD_MUTEX_INITIALIZER;
static FILE *ent_file;

enum nss_status _nss_ci_setpwent(int stayopen)
{
	enum nss_status status = NSS_STATUS_SUCCESS;
	int err;

	(void)stayopen;
	pthread_mutex_lock(&ent_lock);
	if (ent_file != NULL) {
		rewind(ent_file);
	} else {
		ent_file = open_db(&status, &err);
	}
	pthread_mutex_unlock(&ent_lock);
	return status;
}

enum nss_status _nss_ci_endpwent(void)
{
	pthread_mutex_lock(&ent_lock);
	if (ent_file != NULL) {
		fclose(ent_file);
		ent_file = NULL;
	}
	pthread_mutex_unlock(&ent_lock);
	return NSS_STATUS_SUCCESS;
}

enum nss_status _nss_ci_getpwent_r(struct passwd *pw, char *buf, size_t buflen, int *errnop)
{
	enum nss_status status;

	pthread_mutex_lock(&ent_lock);
	if (ent_file == NULL) {
		ent_file = open_db(&status, errnop);
	}
	if (ent_file != NULL) {
		status = next_entry(ent_file, pw, buf, buflen, errnop);
	}
	pthread_mutex_unlock(&ent_lock);
	return status;
}
