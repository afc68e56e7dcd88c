/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Read-ahead of a device: in blocks by a thread at most one block ahead,
 * or scattered ranges by several threads at once; optionally the blocks'
 * digest, by another thread.
 */
#ifndef FLEECE_READAHEAD_H
#define FLEECE_READAHEAD_H

#include <stdint.h>
#include <stddef.h>

struct readahead;
struct sha256;

/* A block of readahead_start_ranges(): @len bytes at @off. */
struct readahead_range {
	uint64_t off;
	size_t len;
};

/*
 * Start reading @size bytes of @fd (opened O_DIRECT) in blocks of @block
 * bytes (a multiple of 4096).  With @hash (initialised), each block read
 * is also added to it, in order, by a second thread, off the caller's
 * path.  NULL with errno set when it cannot start.
 */
struct readahead *readahead_start(int fd, uint64_t size, size_t block, struct sha256 *hash);

/*
 * Start reading the @n blocks @ranges (copied; in the units O_DIRECT
 * needs) of @fd, @threads (1 to 16) reads at a time, into
 * 2 * @threads buffers as large as the largest block.  NULL with errno set
 * when it cannot start.
 */
struct readahead *readahead_start_ranges(int fd, const struct readahead_range *ranges,
					 uint64_t n, unsigned int threads);

/*
 * Wait for the next block (blocks come in order: the first, then the one
 * after the last readahead_done()) and return its buffer, valid until
 * readahead_done().  NULL when its read failed: errno says why and
 * @error_off where.
 */
const unsigned char *readahead_next(struct readahead *ra, uint64_t *error_off);

/* The caller is done with the block readahead_next() returned. */
void readahead_done(struct readahead *ra);

/*
 * After the caller took every block: wait until all are in @hash (given
 * to readahead_start()).  0, or -EIO when the hasher did not get them all.
 */
int readahead_hash_wait(struct readahead *ra);

/* Stop the threads (after their current block) and free everything. */
void readahead_stop(struct readahead *ra);

#endif
