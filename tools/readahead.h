/* SPDX-License-Identifier: GPL-2.0 */
/* Read-ahead of a device in blocks, by a thread at most one block ahead. */
#ifndef FLEECE_READAHEAD_H
#define FLEECE_READAHEAD_H

#include <stdint.h>
#include <stddef.h>

struct readahead;

/*
 * Start reading @size bytes of @fd (opened O_DIRECT) in blocks of @block
 * bytes (a multiple of 4096).  NULL with errno set when it cannot start.
 */
struct readahead *readahead_start(int fd, uint64_t size, size_t block);

/*
 * Wait for the block at @off (a multiple of the block size; blocks are
 * taken in order) and return its buffer, valid until readahead_done() for
 * it.  NULL when its read failed: errno says why and @error_off where.
 */
const unsigned char *readahead_next(struct readahead *ra, uint64_t off,
				    uint64_t *error_off);

/* The caller is done with the block at @off: its buffer may be reused. */
void readahead_done(struct readahead *ra, uint64_t off);

/* Stop the thread (after its current read) and free everything. */
void readahead_stop(struct readahead *ra);

#endif
