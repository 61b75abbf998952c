/*
 * pamdriver - a minimal PAM application, the one the tests drive libpam with
 * (tests/pamtest.py runs it under pam_wrapper). In C so that it can run
 * pam_mfa.so under valgrind, the sanitizers and other preloaded hooks, where a
 * Python interpreter would drown the report in its own noise (Linux-PAM's
 * module tests use small C drivers for the same reason).
 *
 *   pamdriver [-r RHOST] [-u RUSER] [-t TTY] [-s] [-d DELAY_MS] SERVICE USER [ANSWER...]
 *
 * Sets the PAM_RHOST, PAM_RUSER and PAM_TTY items given, calls pam_authenticate
 * (with PAM_SILENT for -s), and answers the module's prompts with ANSWER... in
 * order, waiting DELAY_MS before each answer (a prompt with no answer left fails
 * the conversation, as a user closing the terminal would). Then prints one JSON
 * object to stdout: {"code": N, "messages": [[style, text], ...]}, style one of
 * prompt_off, prompt_on, info, error.
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <security/pam_appl.h>

#define MAX_MESSAGES 256

struct script {
	char **answers;
	int n_answers;
	int next;
	long delay_ms;
	int n_messages;
	const char *style[MAX_MESSAGES];
	char *text[MAX_MESSAGES];
};

static const char *style_name(int style)
{
	switch (style) {
	case PAM_PROMPT_ECHO_OFF:
		return "prompt_off";
	case PAM_PROMPT_ECHO_ON:
		return "prompt_on";
	case PAM_TEXT_INFO:
		return "info";
	case PAM_ERROR_MSG:
		return "error";
	default:
		return "unknown";
	}
}

static int converse(int n, const struct pam_message **msg, struct pam_response **resp, void *data)
{
	struct script *s = data;
	struct pam_response *r = calloc((size_t)n, sizeof(*r));
	struct timespec delay;

	if (r == NULL)
		return PAM_BUF_ERR;
	for (int i = 0; i < n; i++) {
		int style = msg[i]->msg_style;

		if (s->n_messages < MAX_MESSAGES) {
			s->style[s->n_messages] = style_name(style);
			s->text[s->n_messages++] = strdup(msg[i]->msg != NULL ? msg[i]->msg : "");
		}
		if (style != PAM_PROMPT_ECHO_OFF && style != PAM_PROMPT_ECHO_ON)
			continue;
		if (s->next >= s->n_answers) {
			for (int j = 0; j < i; j++)
				free(r[j].resp);
			free(r);
			return PAM_CONV_ERR;
		}
		delay.tv_sec = s->delay_ms / 1000;
		delay.tv_nsec = (s->delay_ms % 1000) * 1000000;
		nanosleep(&delay, NULL);
		r[i].resp = strdup(s->answers[s->next++]);
	}
	*resp = r;
	return PAM_SUCCESS;
}

static void print_json_string(const char *p)
{
	putchar('"');
	for (; *p != '\0'; p++) {
		unsigned char c = (unsigned char)*p;

		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

int main(int argc, char **argv)
{
	struct script s = {0};
	struct pam_conv conv = {converse, &s};
	const char *rhost = NULL, *ruser = NULL, *tty = NULL;
	pam_handle_t *pamh = NULL;
	int opt, flags = 0, rc;

	while ((opt = getopt(argc, argv, "r:u:t:sd:")) != -1) {
		switch (opt) {
		case 'r':
			rhost = optarg;
			break;
		case 'u':
			ruser = optarg;
			break;
		case 't':
			tty = optarg;
			break;
		case 's':
			flags |= PAM_SILENT;
			break;
		case 'd':
			s.delay_ms = strtol(optarg, NULL, 10);
			break;
		default:
			return 2;
		}
	}
	if (argc - optind < 2) {
		fprintf(stderr, "usage: pamdriver [-r RHOST] [-u RUSER] [-t TTY] [-s] [-d MS] "
				"SERVICE USER [ANSWER...]\n");
		return 2;
	}
	s.answers = argv + optind + 2;
	s.n_answers = argc - optind - 2;
	rc = pam_start(argv[optind], argv[optind + 1], &conv, &pamh);
	if (rc == PAM_SUCCESS && rhost != NULL)
		rc = pam_set_item(pamh, PAM_RHOST, rhost);
	if (rc == PAM_SUCCESS && ruser != NULL)
		rc = pam_set_item(pamh, PAM_RUSER, ruser);
	if (rc == PAM_SUCCESS && tty != NULL)
		rc = pam_set_item(pamh, PAM_TTY, tty);
	if (rc == PAM_SUCCESS)
		rc = pam_authenticate(pamh, flags);
	if (pamh != NULL)
		pam_end(pamh, rc);

	printf("{\"code\": %d, \"messages\": [", rc);
	for (int i = 0; i < s.n_messages; i++) {
		printf(i ? ", [" : "[");
		print_json_string(s.style[i]);
		printf(", ");
		print_json_string(s.text[i] != NULL ? s.text[i] : "");
		printf("]");
		free(s.text[i]);
	}
	printf("]}\n");
	return 0;
}
