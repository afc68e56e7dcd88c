/* SPDX-License-Identifier: GPL-2.0-only */
#ifndef FLEECE_REMAP_H
#define FLEECE_REMAP_H

#include <stddef.h>
#include <stdint.h>

/*
 * An incremental's changed chunks put into a reflink clone of the previous
 * image by remapping (remap.c): each chunk is appended to a scratch file
 * (an unnamed O_TMPFILE beside the clone), and at each flush the scratch is
 * synced and its new blocks are cloned into the image at the chunks'
 * offsets (FICLONERANGE), which replaces the shared blocks there.
 */
struct remap;

/*
 * Write into @out_fd through the scratch file @scratch_fd (both owned by
 * the caller): *@rm, or NULL with -ENOMEM.
 */
int remap_open(struct remap **rm, int out_fd, int scratch_fd);
/*
 * @len bytes of @buf go to @dst of the image: appended to the scratch now,
 * in the image at the next remap_flush() (called here when the list is
 * full).  0, or -errno (no message: the caller names the output).
 */
int remap_add(struct remap *rm, const void *buf, size_t len, uint64_t dst);
/*
 * Everything added so far into the image: the scratch synced, then each
 * range cloned in.  A range the file system will not clone (its length
 * not a whole number of blocks, or no FICLONERANGE: then none are tried
 * again) is copied from the scratch instead.  Not synced: the image's own
 * sync makes the remaps durable.  0, or -errno.
 */
int remap_flush(struct remap *rm);
/* Bytes cloned in, and bytes copied in after a refused clone. */
void remap_counts(const struct remap *rm, uint64_t *cloned, uint64_t *copied);
void remap_close(struct remap *rm);

#endif
