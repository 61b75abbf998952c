/*
 * pam_bench - per-authentication cost through the real libpam.
 *
 *   pam_bench -s SERVICE -f USERS [-o FIRST] [-n COUNT] [-w WARMUP] [-x] [-e EXPECT] [-r RAW]
 *             [-C DIR]
 *
 * For each of WARMUP + COUNT users of USERS (from line FIRST on, each user
 * once, so replay protection is exercised rather than bypassed): pam_start ->
 * pam_authenticate -> pam_end, timed as one authentication. Every prompt is
 * answered with the user's TOTP code computed when the prompt arrives, or
 * with -x a code that is wrong for the whole ±1 step window. EXPECT is the
 * PAM return code every authentication should give (default PAM_SUCCESS);
 * others are counted as errors. Prints one JSON object on stdout; with -r,
 * also writes each authentication's nanoseconds to RAW, one a line.
 *
 * Run it under pam_wrapper (LD_PRELOAD=libpam_wrapper.so PAM_WRAPPER=1
 * PAM_WRAPPER_SERVICE_DIR=DIR) so SERVICE is read from DIR, or give -C DIR:
 * libpam's own pam_start_confdir (Linux-PAM 1.4) reads it from there. Many
 * at once need -C: pam_wrapper has 62 runtime directories (/tmp/pam.X) for
 * the whole machine.
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <security/pam_appl.h>

#include "totp.h"

struct conv_data {
	const struct bench_user *user;
	int wrong;
	int prompts;
};

static int converse(int n, const struct pam_message **msg, struct pam_response **resp, void *data)
{
	struct conv_data *d = data;
	struct pam_response *r = calloc((size_t)n, sizeof(*r));
	char code[7];

	if (r == NULL)
		return PAM_BUF_ERR;
	for (int i = 0; i < n; i++) {
		if (msg[i]->msg_style != PAM_PROMPT_ECHO_OFF && msg[i]->msg_style != PAM_PROMPT_ECHO_ON)
			continue;
		totp_code(d->user, d->wrong, code);
		r[i].resp = strdup(code);
		d->prompts++;
	}
	*resp = r;
	return PAM_SUCCESS;
}

static void usage(void)
{
	fprintf(stderr, "usage: pam_bench -s SERVICE -f USERS [-o FIRST] [-n COUNT] [-w WARMUP] "
			"[-x] [-e EXPECT] [-r RAW] [-C DIR]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *service = NULL, *path = NULL, *raw = NULL, *confdir = NULL;
	long first = 0, count = 1000, warmup = 20, expect = PAM_SUCCESS, n_users, errors = 0;
	long codes[64] = {0}, prompts = 0;
	int wrong = 0, opt;
	struct bench_user *users;
	long long *lat, t_start, t0, t1;

	while ((opt = getopt(argc, argv, "s:f:o:n:w:xe:r:C:")) != -1) {
		switch (opt) {
		case 's': service = optarg; break;
		case 'f': path = optarg; break;
		case 'o': first = atol(optarg); break;
		case 'n': count = atol(optarg); break;
		case 'w': warmup = atol(optarg); break;
		case 'x': wrong = 1; break;
		case 'e': expect = atol(optarg); break;
		case 'r': raw = optarg; break;
		case 'C': confdir = optarg; break;
		default: usage();
		}
	}
	if (service == NULL || path == NULL || count < 1 || warmup < 0 || first < 0)
		usage();
	n_users = load_users(path, &users);
	if (n_users < 0)
		return 1;
	if (first + warmup + count > n_users) {
		fprintf(stderr, "need %ld users from line %ld, %s has %ld\n", warmup + count, first,
			path, n_users);
		return 1;
	}
	lat = calloc((size_t)count, sizeof(*lat));
	if (lat == NULL)
		return 1;

	t_start = 0;
	for (long i = 0; i < warmup + count; i++) {
		struct conv_data d = {.user = &users[first + i], .wrong = wrong};
		struct pam_conv conv = {.conv = converse, .appdata_ptr = &d};
		pam_handle_t *pamh = NULL;
		int rc;

		if (i == warmup)
			t_start = mono_ns();
		t0 = mono_ns();
		if (confdir != NULL)
			rc = pam_start_confdir(service, d.user->name, &conv, confdir, &pamh);
		else
			rc = pam_start(service, d.user->name, &conv, &pamh);
		if (rc == PAM_SUCCESS) {
			rc = pam_authenticate(pamh, 0);
			pam_end(pamh, rc);
		}
		t1 = mono_ns();
		if (i < warmup)
			continue;
		lat[i - warmup] = t1 - t0;
		codes[rc >= 0 && rc < 64 ? rc : 63]++;
		prompts += d.prompts;
		if (rc != expect)
			errors++;
	}
	t1 = mono_ns();
	if (raw != NULL) {
		FILE *f = fopen(raw, "w");

		if (f == NULL) {
			perror(raw);
			return 1;
		}
		for (long i = 0; i < count; i++)
			fprintf(f, "%lld\n", lat[i]);
		fclose(f);
	}

	printf("{\"service\":\"%s\",\"wrong\":%s,\"count\":%ld,\"errors\":%ld,\"prompts\":%ld,"
	       "\"codes\":{",
	       service, wrong ? "true" : "false", count, errors, prompts);
	for (int c = 0, sep = 0; c < 64; c++)
		if (codes[c] != 0)
			printf("%s\"%s\":%ld", sep++ ? "," : "", pam_strerror(NULL, c), codes[c]);
	printf("},\"elapsed_s\":%.3f,\"auths_per_s\":%.1f,", (double)(t1 - t_start) / 1e9,
	       (double)count / ((double)(t1 - t_start) / 1e9));
	print_latency(stdout, lat, count);
	printf("}\n");
	free(lat);
	free(users);
	return 0;
}
