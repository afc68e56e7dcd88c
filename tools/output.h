/* SPDX-License-Identifier: GPL-2.0 */
/*
 * fleece(8): the image's destination: a file written as FILE.partial and
 * renamed when complete, a block device, or standard output.
 */
#ifndef FLEECE_OUTPUT_H
#define FLEECE_OUTPUT_H

#include <stdbool.h>
#include <stdint.h>

#include <sys/types.h>

struct output {
	const char *name;	/* as given: FILE or "-" */
	char *partial;		/* FILE.partial we created, or NULL */
	int fd;
	bool is_file;		/* a regular file: holes for zero chunks */
	bool copied;		/* FILE.partial is a copy of FILE, not a reflink */
};

/* Devices the output must be neither on nor be (NAME, its fleece device...). */
struct output_guard {
	dev_t dev[4];
	const char *what[4];
	unsigned int n;
};
void output_guard_add(struct output_guard *g, dev_t dev, const char *what);

/* Check the output's name: 0, or -errno (-EFLEECE_USAGE) with a message. */
int output_check(const char *name);
/*
 * Open the output: 0, or -errno with a message (-EFLEECE_REFUSED: refused,
 * nothing was touched).  FILE.partial is created new
 * (O_EXCL|O_NOFOLLOW, mode 0600): an existing one, or a symlink there, is
 * refused and left alone.  A block device is opened O_EXCL (not mounted,
 * not held).  The output may neither be nor sit on a device of @g.
 */
int output_open(const char *name, const struct output_guard *g, struct output *out);
/*
 * For an incremental backup: FILE.partial created as output_open() does
 * (O_RDWR), holding a copy of FILE, which must still be the regular file
 * @dev/@ino: a reflink clone (FICLONE) where the file system shares
 * extents, else a copy of its data (said in a message; out->copied).  0,
 * or -errno with a message (-ESTALE: FILE changed); FILE is never written.
 */
int output_open_clone(const char *name, const struct output_guard *g, dev_t dev, ino_t ino,
		      struct output *out);
/*
 * An unnamed file (O_TMPFILE) in FILE.partial's directory, for the chunks
 * an incremental clones into it (remap.h): its fd, or -1 where there is
 * none (said with -v).
 */
int output_scratch(const struct output *out);
/* Empty FILE.partial again (an incremental that became a full read). */
int output_restart(struct output *out);
/*
 * Close the output; given the outcome @err (0 or -errno): rename a complete
 * FILE.partial to FILE (and fsync the directory), or remove an incomplete
 * one, saying so when anything had been written to it.  Returns @err, or
 * the -errno of a failed close or rename.
 */
int output_finish(struct output *out, int err);
void output_print_sha256(const struct output *out, const char *hex);

/*
 * --json of backup and read: one object on standard output at the end,
 * {"command": ..., "result": ..., "exit_code": N, "devices": [...]}, one
 * member of "devices" per image, as "fleece status --json" lists devices.
 */
struct sbuf;
struct reader_result;
struct result_json {
	const char *name;		/* NAME, or the view's dm name */
	const char *output;		/* FILE, DIR/NAME.img, a device, or NULL */
	int err;			/* the outcome: 0 or -errno */
	const char *error;		/* its first error message, or NULL */
	const struct reader_result *res;	/* NULL: nothing was read */
	bool sha256;			/* res->sha256 holds the digest */
	const char *kind;		/* "full" or "incremental"; NULL for read */
	const char *fallback;		/* why --incremental became full, or NULL */
	bool have_fleece;		/* the fleece counters below are known */
	uint64_t cbw_count, fleece_peak;
	bool fleece_peak_exact;
};
/* "ok", "invalid", "interrupted", "refused", "usage" or "failed", for an outcome. */
const char *result_word(int err);
void output_json_device(struct sbuf *sb, const struct result_json *j);
/* The whole object, @devices (members, comma-separated) in it, on stdout. */
void output_json_print(const char *command, int err, const struct sbuf *devices);

#endif
