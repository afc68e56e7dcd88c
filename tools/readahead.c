// SPDX-License-Identifier: GPL-2.0
/*
 * Read-ahead for the reader: threads read the next blocks of the view while
 * the caller writes, syncs and discards the one before, so that the view is
 * read without a pause between blocks.
 *
 * A whole device is read by one thread, one block ahead (two buffers): its
 * blocks are large and sequential, and one read at a time keeps the device
 * busy.  Scattered ranges (an incremental's changed chunks, 64 KiB each,
 * say) are read by several threads at once (readahead_start_ranges()):
 * one small read at a time would leave the reader waiting for the device's
 * latency on every chunk.  The blocks still come to the caller in order.
 *
 * With a digest to compute (--sha256), a second thread hashes each block
 * once it is read, while the caller writes it: a slot is read into again
 * only when both are done with it, and the digest costs the reader no time
 * unless hashing is its slowest stage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "readahead.h"
#include "sha256.h"

#define RA_MAX_THREADS 16

struct readahead {
	pthread_t thread[RA_MAX_THREADS];
	unsigned int n_threads;		/* started */
	pthread_t hasher;
	struct sha256 *hash;	/* NULL: no hasher thread */
	bool hasher_joined;
	pthread_mutex_t lock;
	/*
	 * Two conditions, so that an event wakes only whom it concerns (every
	 * wakeup is a context switch: with eight readers on one CPU, one
	 * condition for all woke eight threads per block): @slot_free, a
	 * reader waiting for a slot, signalled once per slot freed; @ready,
	 * the caller and the hasher waiting for a block, broadcast when a
	 * block becomes ready.  Both are broadcast at an error or a stop.
	 */
	pthread_cond_t slot_free;
	pthread_cond_t ready;
	int fd;
	/* The blocks: @ranges[0..@n), or else @size bytes in @block pieces. */
	struct readahead_range *ranges;
	uint64_t n;
	uint64_t size;
	size_t block;
	unsigned int n_slots;
	unsigned char **buf;	/* block k is read into buf[k % n_slots] */
	/*
	 * Under @lock.  Blocks are taken by the threads in order, but end in
	 * any order: done[k % n_slots] == k + 1 once block k is read, and
	 * @filled counts the blocks read from the first without a gap.
	 */
	uint64_t *done;
	uint64_t taken;		/* blocks a thread has started to read */
	uint64_t filled;	/* blocks 0..filled-1 are read */
	uint64_t consumed;	/* blocks the caller is done with */
	uint64_t hashed;	/* blocks the hasher is done with */
	bool error;		/* block @error_k failed, with @error_errno */
	uint64_t error_k;
	int error_errno;
	uint64_t error_off;
	bool stop;
};

/* Block @k: where it starts and how long it is. */
static void readahead_block(const struct readahead *ra, uint64_t k, uint64_t *off, size_t *len)
{
	if (ra->ranges) {
		*off = ra->ranges[k].off;
		*len = ra->ranges[k].len;
		return;
	}
	*off = k * ra->block;
	*len = ra->size - *off < ra->block ? (size_t)(ra->size - *off) : ra->block;
}

/* Blocks done with by all (under @lock): their slots may be read into again. */
static uint64_t readahead_released(const struct readahead *ra)
{
	if (ra->hash && ra->hashed < ra->consumed)
		return ra->hashed;
	return ra->consumed;
}

/* Block @k is there for the caller or the hasher, or never will be (under @lock). */
static bool readahead_ready(const struct readahead *ra, uint64_t k)
{
	return ra->filled > k || (ra->error && ra->error_k <= k);
}

/* Read @len bytes at @off into @buf: 0, or the errno that stopped it, with *got. */
static int readahead_pread(int fd, unsigned char *buf, size_t len, uint64_t off, size_t *got)
{
	*got = 0;
	while (*got < len) {
		ssize_t r = pread(fd, buf + *got, len - *got, (off_t)(off + *got));

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r ? errno : EIO;
		*got += r;
	}
	return 0;
}

/*
 * A reader thread: takes the next block not yet taken, once its slot is
 * free, and reads it.  After a failed read no block is taken: those before
 * it were all taken already, and end.
 */
static void *readahead_thread(void *arg)
{
	struct readahead *ra = arg;

	for (;;) {
		uint64_t k, off;
		size_t len, got;
		int error;

		pthread_mutex_lock(&ra->lock);
		while (!ra->stop && !ra->error && ra->taken < ra->n &&
		       ra->taken >= readahead_released(ra) + ra->n_slots)
			pthread_cond_wait(&ra->slot_free, &ra->lock);
		if (ra->stop || ra->error || ra->taken == ra->n) {
			pthread_mutex_unlock(&ra->lock);
			return NULL;
		}
		k = ra->taken++;
		pthread_mutex_unlock(&ra->lock);

		readahead_block(ra, k, &off, &len);
		error = readahead_pread(ra->fd, ra->buf[k % ra->n_slots], len, off, &got);

		pthread_mutex_lock(&ra->lock);
		if (error) {
			if (!ra->error || k < ra->error_k) {
				ra->error = true;
				ra->error_k = k;
				ra->error_errno = error;
				ra->error_off = off + got;
			}
			pthread_cond_broadcast(&ra->slot_free);
			pthread_cond_broadcast(&ra->ready);
		} else {
			uint64_t filled = ra->filled;

			ra->done[k % ra->n_slots] = k + 1;
			while (ra->filled < ra->n &&
			       ra->done[ra->filled % ra->n_slots] == ra->filled + 1)
				ra->filled++;
			/* A block ended ahead of a gap: nobody to wake yet. */
			if (ra->filled != filled)
				pthread_cond_broadcast(&ra->ready);
		}
		pthread_mutex_unlock(&ra->lock);
	}
}

/*
 * The hasher: each block into the digest, in order, once it is read; it
 * ends after the last block, at a read error, or when stopped.
 */
static void *readahead_hasher(void *arg)
{
	struct readahead *ra = arg;
	uint64_t k, off;
	size_t len;

	for (k = 0; k < ra->n; k++) {
		pthread_mutex_lock(&ra->lock);
		while (!ra->stop && !readahead_ready(ra, k))
			pthread_cond_wait(&ra->ready, &ra->lock);
		if (ra->stop || ra->filled <= k) {
			pthread_mutex_unlock(&ra->lock);
			break;
		}
		pthread_mutex_unlock(&ra->lock);

		readahead_block(ra, k, &off, &len);
		sha256_update(ra->hash, ra->buf[k % ra->n_slots], len);

		pthread_mutex_lock(&ra->lock);
		ra->hashed = k + 1;
		/* A slot is free if the caller was done with block k first. */
		if (ra->consumed > k)
			pthread_cond_signal(&ra->slot_free);
		pthread_mutex_unlock(&ra->lock);
	}
	return NULL;
}

static void readahead_free(struct readahead *ra)
{
	unsigned int i;

	for (i = 0; ra->buf && i < ra->n_slots; i++)
		free(ra->buf[i]);
	free(ra->buf);
	free(ra->done);
	free(ra->ranges);
	pthread_mutex_destroy(&ra->lock);
	pthread_cond_destroy(&ra->slot_free);
	pthread_cond_destroy(&ra->ready);
	free(ra);
}

/* Stop and join the threads started, then free everything. */
static void readahead_end(struct readahead *ra)
{
	unsigned int i;

	pthread_mutex_lock(&ra->lock);
	ra->stop = true;
	pthread_cond_broadcast(&ra->slot_free);
	pthread_cond_broadcast(&ra->ready);
	pthread_mutex_unlock(&ra->lock);
	for (i = 0; i < ra->n_threads; i++)
		pthread_join(ra->thread[i], NULL);
	if (ra->hash && !ra->hasher_joined)
		pthread_join(ra->hasher, NULL);
	readahead_free(ra);
}

/*
 * Allocate the slots and start @threads readers (and the hasher, with
 * ra->hash): @ra, or NULL with errno set and @ra freed.
 */
static struct readahead *readahead_launch(struct readahead *ra, unsigned int threads)
{
	sigset_t all, old;
	unsigned int i;
	int r = 0;

	pthread_mutex_init(&ra->lock, NULL);
	pthread_cond_init(&ra->slot_free, NULL);
	pthread_cond_init(&ra->ready, NULL);
	ra->n_slots = 2 * threads;
	ra->buf = calloc(ra->n_slots, sizeof(*ra->buf));
	ra->done = calloc(ra->n_slots, sizeof(*ra->done));
	for (i = 0; ra->buf && ra->done && i < ra->n_slots; i++)
		if (posix_memalign((void **)&ra->buf[i], 4096, ra->block))
			break;
	if (!ra->buf || !ra->done || i < ra->n_slots) {
		readahead_free(ra);
		errno = ENOMEM;
		return NULL;
	}

	/* Signals are for the caller's thread, which checks for a stop. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	for (i = 0; !r && i < threads; i++) {
		r = pthread_create(&ra->thread[i], NULL, readahead_thread, ra);
		if (!r)
			ra->n_threads++;
	}
	if (!r && ra->hash) {
		r = pthread_create(&ra->hasher, NULL, readahead_hasher, ra);
		ra->hasher_joined = r != 0;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r) {
		ra->hasher_joined = true;
		readahead_end(ra);
		errno = r;
		return NULL;
	}
	return ra;
}

struct readahead *readahead_start(int fd, uint64_t size, size_t block, struct sha256 *hash)
{
	struct readahead *ra = calloc(1, sizeof(*ra));

	if (!ra)
		return NULL;
	ra->fd = fd;
	ra->size = size;
	ra->block = block;
	ra->n = (size + block - 1) / block;
	/* Set before the threads start: the readers wait for the hasher too. */
	ra->hash = hash;
	return readahead_launch(ra, 1);
}

struct readahead *readahead_start_ranges(int fd, const struct readahead_range *ranges,
					 uint64_t n, unsigned int threads)
{
	struct readahead *ra = calloc(1, sizeof(*ra));
	uint64_t k;

	if (!ra)
		return NULL;
	if (threads < 1 || threads > RA_MAX_THREADS) {
		free(ra);
		errno = EINVAL;
		return NULL;
	}
	ra->ranges = malloc((n ? n : 1) * sizeof(*ranges));
	if (!ra->ranges) {
		free(ra);
		errno = ENOMEM;
		return NULL;
	}
	if (n)
		memcpy(ra->ranges, ranges, n * sizeof(*ranges));
	ra->fd = fd;
	ra->n = n;
	ra->block = 4096;
	for (k = 0; k < n; k++)
		if (ranges[k].len > ra->block)
			ra->block = ranges[k].len;
	return readahead_launch(ra, threads);
}

const unsigned char *readahead_next(struct readahead *ra, uint64_t *error_off)
{
	uint64_t k;
	const unsigned char *buf = NULL;

	pthread_mutex_lock(&ra->lock);
	k = ra->consumed;
	if (k >= ra->n) {
		pthread_mutex_unlock(&ra->lock);
		errno = EINVAL;
		*error_off = 0;
		return NULL;
	}
	while (!readahead_ready(ra, k))
		pthread_cond_wait(&ra->ready, &ra->lock);
	if (ra->filled > k) {
		buf = ra->buf[k % ra->n_slots];
	} else {
		errno = ra->error_errno;
		*error_off = ra->error_off;
	}
	pthread_mutex_unlock(&ra->lock);
	return buf;
}

void readahead_done(struct readahead *ra)
{
	pthread_mutex_lock(&ra->lock);
	ra->consumed++;
	/* A slot is free unless the hasher still has the block. */
	if (!ra->hash || ra->hashed >= ra->consumed)
		pthread_cond_signal(&ra->slot_free);
	pthread_mutex_unlock(&ra->lock);
}

int readahead_hash_wait(struct readahead *ra)
{
	if (!ra->hash)
		return 0;
	if (!ra->hasher_joined) {
		pthread_join(ra->hasher, NULL);
		ra->hasher_joined = true;
	}
	return ra->hashed == ra->n ? 0 : -EIO;
}

void readahead_stop(struct readahead *ra)
{
	if (ra)
		readahead_end(ra);
}
