/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Read-ahead of a device in blocks, by a thread at most one block ahead,
 * and optionally their digest, by another thread.
 */
#ifndef FLEECE_READAHEAD_H
#define FLEECE_READAHEAD_H

#include <stdint.h>
#include <stddef.h>

struct readahead;
struct sha256;

/*
 * Start reading @size bytes of @fd (opened O_DIRECT) in blocks of @block
 * bytes (a multiple of 4096).  With @hash (initialised), each block read
 * is also added to it, in order, by a second thread, off the caller's
 * path.  NULL with errno set when it cannot start.
 */
struct readahead *readahead_start(int fd, uint64_t size, size_t block, struct sha256 *hash);

/*
 * Wait for the block at @off (a multiple of the block size; blocks are
 * taken in order) and return its buffer, valid until readahead_done() for
 * it.  NULL when its read failed: errno says why and @error_off where.
 */
const unsigned char *readahead_next(struct readahead *ra, uint64_t off,
				    uint64_t *error_off);

/* The caller is done with the block at @off: its buffer may be reused. */
void readahead_done(struct readahead *ra, uint64_t off);

/*
 * After the caller took every block: wait until all are in @hash (given
 * to readahead_start()).  0, or -EIO when the hasher did not get them all.
 */
int readahead_hash_wait(struct readahead *ra);

/* Stop the threads (after their current block) and free everything. */
void readahead_stop(struct readahead *ra);

#endif
