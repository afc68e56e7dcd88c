/* SPDX-License-Identifier: GPL-2.0 */
/*
 * fleece(8): the image's destination: a file written as FILE.partial and
 * renamed when complete, a block device, or standard output.
 */
#ifndef FLEECE_OUTPUT_H
#define FLEECE_OUTPUT_H

#include <stdbool.h>

struct output {
	const char *name;	/* as given: FILE or "-" */
	char *partial;		/* FILE.partial, or NULL */
	int fd;
	bool is_file;		/* a regular file: holes for zero chunks */
};

/* Check and open the output; an exit code (0: opened). */
int output_check(const char *name);
int output_open(const char *name, struct output *out);
/* Given the reader's exit code: rename or remove FILE.partial, close. */
int output_finish(struct output *out, int ret);
void output_print_sha256(const struct output *out, const char *hex);

#endif
