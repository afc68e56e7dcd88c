// SPDX-License-Identifier: GPL-2.0
/*
 * fleece(8): the image's destination.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "output.h"
#include "util.h"

int output_check(const char *name)
{
	struct stat st;
	char *copy, *dir;
	int r = 0;

	if (!strcmp(name, "-")) {
		if (isatty(1))
			return usage_error("-o -: standard output is a terminal: redirect it, or give a file");
		return 0;
	}
	if (!*name)
		return usage_error("-o: empty file name");
	if (!stat(name, &st)) {
		if (S_ISDIR(st.st_mode))
			return usage_error("-o %s: a directory", name);
		if (S_ISBLK(st.st_mode) || S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode) ||
		    S_ISREG(st.st_mode))
			return 0;
		return usage_error("-o %s: not a file, block device or pipe", name);
	}
	copy = xstrdup(name);
	dir = dirname(copy);
	if (access(dir, W_OK)) {
		msg_errno("-o %s: cannot write in %s", name, dir);
		r = EX_FLEECE_USAGE;
	}
	free(copy);
	return r;
}

int output_open(const char *name, struct output *out)
{
	struct stat st;
	int r;

	memset(out, 0, sizeof(*out));
	out->name = name;
	out->fd = -1;
	r = output_check(name);
	if (r)
		return r;
	if (!strcmp(name, "-")) {
		out->fd = 1;
		return 0;
	}
	if (!stat(name, &st) && !S_ISREG(st.st_mode)) {
		/* A device or a pipe: written in place, as a stream. */
		out->fd = open(name, O_WRONLY | O_CLOEXEC);
		if (out->fd < 0) {
			msg_errno("cannot open %s", name);
			return EX_FLEECE_FAIL;
		}
		return 0;
	}
	out->partial = xasprintf("%s.partial", name);
	out->fd = open(out->partial, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (out->fd < 0) {
		msg_errno("cannot create %s", out->partial);
		free(out->partial);
		out->partial = NULL;
		return EX_FLEECE_FAIL;
	}
	out->is_file = true;
	return 0;
}

int output_finish(struct output *out, int ret)
{
	if (out->fd > 2 && close(out->fd) && !ret) {
		msg_errno("cannot close %s", out->name);
		ret = EX_FLEECE_FAIL;
	}
	out->fd = -1;
	if (!out->partial)
		return ret;
	if (!ret) {
		if (rename(out->partial, out->name)) {
			msg_errno("cannot rename %s to %s", out->partial, out->name);
			ret = EX_FLEECE_FAIL;
		} else {
			char *copy = xstrdup(out->name);
			int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);

			if (dfd >= 0) {
				fsync(dfd);
				close(dfd);
			}
			free(copy);
		}
	}
	if (ret && unlink(out->partial) && errno != ENOENT)
		msg_errno("cannot remove %s", out->partial);
	free(out->partial);
	out->partial = NULL;
	return ret;
}

void output_print_sha256(const struct output *out, const char *hex)
{
	/* With the image on standard output, the digest goes to stderr. */
	FILE *f = strcmp(out->name, "-") ? stdout : stderr;

	fprintf(f, "%s  %s\n", hex, out->name);
	fflush(f);
}
