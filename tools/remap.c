// SPDX-License-Identifier: GPL-2.0-only
/*
 * Remapping an incremental's chunks into the clone of the previous image.
 *
 * Why: a chunk written into a reflink clone needs new space where the old
 * one is shared.  Written in place, each 64 KiB chunk cost xfs a punch or
 * a copy-on-write, and an allocation at writeback: on 6.12 under TCG,
 * 3276 scattered chunks took 2.0-2.9 s, against 1.4-1.6 s appended to a
 * scratch file (one sequential extent) and cloned in one FICLONERANGE each
 * (tests/results/2026-12-03-incremental-remap-experiment.txt).
 *
 * The order that keeps the image's invariant (a chunk is released on the
 * view only after it is durable in the image, read.c): the scratch's data
 * is synced before any of it is cloned, and the caller syncs the image
 * after remap_flush(), before it releases.  The scratch is unnamed: a
 * crash leaves nothing behind, and its blocks live on in the image alone.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/fs.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "remap.h"
#include "util.h"

/* Ranges waiting for a flush: bounds the list, whatever the batches. */
#define REMAP_MAX	4096

struct remap_range {
	uint64_t src, dst, len;
};

struct remap {
	int out_fd, scratch_fd;
	uint64_t scratch_end;		/* the scratch's size: where the next chunk goes */
	struct remap_range v[REMAP_MAX];
	unsigned int n;
	bool no_clone;			/* FICLONERANGE refused here: copy all */
	uint64_t cloned, copied;
};

int remap_open(struct remap **rm, int out_fd, int scratch_fd)
{
	*rm = calloc(1, sizeof(**rm));
	if (!*rm)
		return -ENOMEM;
	(*rm)->out_fd = out_fd;
	(*rm)->scratch_fd = scratch_fd;
	return 0;
}

int remap_add(struct remap *rm, const void *buf, size_t len, uint64_t dst)
{
	struct remap_range *last = rm->n ? &rm->v[rm->n - 1] : NULL;
	int r;

	if (!pwrite_all(rm->scratch_fd, buf, len, (off_t)rm->scratch_end))
		return -errno;
	/*
	 * The scratch is appended to, so the last range ends where this one
	 * starts there: next to it in the image too, one clone for both.
	 */
	if (last && last->dst + last->len == dst) {
		last->len += len;
	} else {
		if (rm->n == REMAP_MAX) {
			r = remap_flush(rm);
			if (r)
				return r;
		}
		rm->v[rm->n++] = (struct remap_range){ rm->scratch_end, dst, len };
	}
	rm->scratch_end += len;
	return 0;
}

/*
 * Copy one range from the scratch (its data synced there), with
 * copy_file_range() as output.c's copy_data() does: 0, or -errno.
 */
static int remap_copy(struct remap *rm, const struct remap_range *x)
{
	off_t in = (off_t)x->src, out = (off_t)x->dst;
	uint64_t done = 0;

	while (done < x->len) {
		ssize_t n = copy_file_range(rm->scratch_fd, &in, rm->out_fd, &out,
					    (size_t)(x->len - done), 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n ? -errno : -EIO;
		done += (uint64_t)n;
	}
	rm->copied += x->len;
	return 0;
}

/* Clone one range in, or copy it where the file system refuses: 0, or -errno. */
static int remap_one(struct remap *rm, const struct remap_range *x)
{
	struct file_clone_range fcr = {
		.src_fd = rm->scratch_fd, .src_offset = x->src,
		.src_length = x->len, .dest_offset = x->dst,
	};
	int r = 0;

	if (!rm->no_clone) {
		r = fault_point("remap");
		if (!r && !ioctl(rm->out_fd, FICLONERANGE, &fcr)) {
			rm->cloned += x->len;
			return 0;
		}
		if (!r)
			r = -errno;
		/* Not for this range (unaligned): copy it.  Not here at all: stop trying. */
		if (r == -EOPNOTSUPP || r == -EXDEV || r == -ENOTTY)
			rm->no_clone = true;
		else if (r != -EINVAL)
			return r;
	}
	return remap_copy(rm, x);
}

int remap_flush(struct remap *rm)
{
	unsigned int i;
	int r = 0;

	if (!rm->n)
		return 0;
	if (fdatasync(rm->scratch_fd))
		return -errno;
	for (i = 0; !r && i < rm->n; i++)
		r = remap_one(rm, &rm->v[i]);
	rm->n = 0;
	return r;
}

void remap_counts(const struct remap *rm, uint64_t *cloned, uint64_t *copied)
{
	*cloned = rm->cloned;
	*copied = rm->copied;
}

void remap_close(struct remap *rm)
{
	free(rm);
}
