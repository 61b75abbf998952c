/*
 * totp.h - RFC 6238 codes (SHA1, 6 digits, 30 s) and a users file, for the bench drivers.
 *
 * The drivers compute each code at the moment a prompt arrives, as a user
 * reading a phone would, so a run that crosses a time step stays correct.
 *
 * Users file: one user a line, "NAME BASE32SECRET", as bench/run.py writes it.
 */
#ifndef BENCH_TOTP_H
#define BENCH_TOTP_H

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#define TOTP_PERIOD 30
#define MAX_SECRET 64

struct bench_user {
	char name[64];
	unsigned char key[MAX_SECRET];
	unsigned int key_len;
};

static inline int base32_decode(const char *in, unsigned char *out, unsigned int cap)
{
	unsigned int buffer = 0, bits = 0, n = 0;

	for (; *in != '\0'; in++) {
		int c = toupper((unsigned char)*in), v;

		if (c >= 'A' && c <= 'Z')
			v = c - 'A';
		else if (c >= '2' && c <= '7')
			v = c - '2' + 26;
		else if (c == '=' || c == ' ' || c == '\n')
			continue;
		else
			return -1;
		buffer = (buffer << 5) | (unsigned int)v;
		bits += 5;
		if (bits >= 8) {
			if (n >= cap)
				return -1;
			out[n++] = (unsigned char)(buffer >> (bits - 8));
			bits -= 8;
		}
	}
	return (int)n;
}

static inline unsigned int hotp(const struct bench_user *u, uint64_t counter)
{
	unsigned char msg[8], md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0, off, bin;

	for (int i = 7; i >= 0; i--) {
		msg[i] = (unsigned char)(counter & 0xff);
		counter >>= 8;
	}
	HMAC(EVP_sha1(), u->key, (int)u->key_len, msg, sizeof(msg), md, &md_len);
	off = md[md_len - 1] & 0x0f;
	bin = ((unsigned int)(md[off] & 0x7f) << 24) | ((unsigned int)md[off + 1] << 16) |
	      ((unsigned int)md[off + 2] << 8) | md[off + 3];
	return bin % 1000000;
}

static inline uint64_t current_step(void)
{
	return (uint64_t)time(NULL) / TOTP_PERIOD;
}

/* The code for now, or (wrong != 0) a code valid for none of the steps now-1..now+1. */
static inline void totp_code(const struct bench_user *u, int wrong, char out[7])
{
	uint64_t step = current_step();
	unsigned int code = hotp(u, step);

	if (wrong) {
		unsigned int near[3] = {hotp(u, step - 1), code, hotp(u, step + 1)};

		for (;;) {
			code = (code + 1) % 1000000;
			if (code != near[0] && code != near[1] && code != near[2])
				break;
		}
	}
	snprintf(out, 7, "%06u", code);
}

/* Read the users file; returns the count, or -1 with a message on stderr. */
static inline long load_users(const char *path, struct bench_user **users)
{
	FILE *f = fopen(path, "r");
	char line[512], name[64], secret[256];
	long n = 0, cap = 1024;
	struct bench_user *u;

	if (f == NULL) {
		perror(path);
		return -1;
	}
	u = calloc((size_t)cap, sizeof(*u));
	while (u != NULL && fgets(line, sizeof(line), f) != NULL) {
		int len;

		if (sscanf(line, "%63s %255s", name, secret) != 2)
			continue;
		if (n == cap) {
			struct bench_user *bigger = realloc(u, (size_t)(cap *= 2) * sizeof(*u));

			if (bigger == NULL) {
				free(u);
				u = NULL;
				break;
			}
			u = bigger;
		}
		len = base32_decode(secret, u[n].key, MAX_SECRET);
		if (len <= 0) {
			fprintf(stderr, "%s: bad base32 secret for %s\n", path, name);
			fclose(f);
			free(u);
			return -1;
		}
		u[n].key_len = (unsigned int)len;
		snprintf(u[n].name, sizeof(u[n].name), "%s", name);
		n++;
	}
	fclose(f);
	if (u == NULL) {
		fprintf(stderr, "out of memory reading %s\n", path);
		return -1;
	}
	*users = u;
	return n;
}

/* Latency summary as a JSON fragment: "mean_us":..,"p50_us":..,"p99_us":..,"max_us":.. */
static int cmp_ll(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;

	return (x > y) - (x < y);
}

static inline void print_latency(FILE *out, long long *ns, long n)
{
	double sum = 0;

	if (n == 0) {
		fprintf(out, "\"mean_us\":null,\"p50_us\":null,\"p90_us\":null,\"p99_us\":null,"
			     "\"max_us\":null");
		return;
	}
	qsort(ns, (size_t)n, sizeof(*ns), cmp_ll);
	for (long i = 0; i < n; i++)
		sum += (double)ns[i];
	/* nearest-rank percentiles */
#define PCT(p) ((double)ns[(long)((p) * (double)(n - 1) + 0.5)] / 1e3)
	fprintf(out, "\"mean_us\":%.1f,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f",
		sum / (double)n / 1e3, PCT(0.50), PCT(0.90), PCT(0.99), (double)ns[n - 1] / 1e3);
#undef PCT
}

static inline long long mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

#endif
