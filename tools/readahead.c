// SPDX-License-Identifier: GPL-2.0
/*
 * Read-ahead for the reader: a thread reads the next block of the view
 * while the caller writes, syncs and discards the one before, so that the
 * view is read without a pause between blocks.  Two buffers: the thread is
 * at most one block ahead.  With a digest to compute (--sha256), a second
 * thread hashes each block once it is read, while the caller writes it:
 * a slot is read into again only when both are done with it, and the
 * digest costs the reader no time unless hashing is its slowest stage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

#include "readahead.h"
#include "sha256.h"

#define RA_SLOTS 2

struct readahead {
	pthread_t thread;
	pthread_t hasher;
	struct sha256 *hash;	/* NULL: no hasher thread */
	bool hasher_joined;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int fd;
	uint64_t size;
	size_t block;
	unsigned char *buf[RA_SLOTS];
	/* Under @lock: */
	uint64_t filled;	/* blocks read into their slot */
	uint64_t consumed;	/* blocks the caller is done with */
	uint64_t hashed;	/* blocks the hasher is done with */
	int error;		/* errno of the read that failed, after @filled */
	uint64_t error_off;
	bool stop;
};

/* Blocks done with by all (under @lock): their slots may be read into again. */
static uint64_t readahead_released(const struct readahead *ra)
{
	if (ra->hash && ra->hashed < ra->consumed)
		return ra->hashed;
	return ra->consumed;
}

static void *readahead_thread(void *arg)
{
	struct readahead *ra = arg;
	uint64_t k;

	for (k = 0; k * ra->block < ra->size; k++) {
		uint64_t off = k * ra->block;
		size_t n = ra->size - off < ra->block ? (size_t)(ra->size - off) : ra->block;
		unsigned char *buf = ra->buf[k % RA_SLOTS];
		size_t got = 0;
		int error = 0;

		pthread_mutex_lock(&ra->lock);
		while (!ra->stop && k >= readahead_released(ra) + RA_SLOTS)
			pthread_cond_wait(&ra->cond, &ra->lock);
		if (ra->stop) {
			pthread_mutex_unlock(&ra->lock);
			break;
		}
		pthread_mutex_unlock(&ra->lock);

		while (got < n) {
			ssize_t r = pread(ra->fd, buf + got, n - got, (off_t)(off + got));

			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0) {
				error = r ? errno : EIO;
				break;
			}
			got += r;
		}

		pthread_mutex_lock(&ra->lock);
		if (error) {
			ra->error = error;
			ra->error_off = off + got;
		} else {
			ra->filled = k + 1;
		}
		pthread_cond_broadcast(&ra->cond);
		pthread_mutex_unlock(&ra->lock);
		if (error)
			break;
	}
	return NULL;
}

/*
 * The hasher: each block into the digest, in order, once it is read; it
 * ends after the last block, at a read error, or when stopped.
 */
static void *readahead_hasher(void *arg)
{
	struct readahead *ra = arg;
	uint64_t k;

	for (k = 0; k * ra->block < ra->size; k++) {
		uint64_t off = k * ra->block;
		size_t n = ra->size - off < ra->block ? (size_t)(ra->size - off) : ra->block;

		pthread_mutex_lock(&ra->lock);
		while (!ra->stop && !ra->error && ra->filled <= k)
			pthread_cond_wait(&ra->cond, &ra->lock);
		if (ra->stop || ra->filled <= k) {
			pthread_mutex_unlock(&ra->lock);
			break;
		}
		pthread_mutex_unlock(&ra->lock);

		sha256_update(ra->hash, ra->buf[k % RA_SLOTS], n);

		pthread_mutex_lock(&ra->lock);
		ra->hashed = k + 1;
		pthread_cond_broadcast(&ra->cond);
		pthread_mutex_unlock(&ra->lock);
	}
	return NULL;
}

static void readahead_free(struct readahead *ra)
{
	int i;

	for (i = 0; i < RA_SLOTS; i++)
		free(ra->buf[i]);
	pthread_mutex_destroy(&ra->lock);
	pthread_cond_destroy(&ra->cond);
	free(ra);
}

struct readahead *readahead_start(int fd, uint64_t size, size_t block, struct sha256 *hash)
{
	struct readahead *ra = calloc(1, sizeof(*ra));
	sigset_t all, old;
	int i, r;

	if (!ra)
		return NULL;
	ra->fd = fd;
	ra->size = size;
	ra->block = block;
	pthread_mutex_init(&ra->lock, NULL);
	pthread_cond_init(&ra->cond, NULL);
	for (i = 0; i < RA_SLOTS; i++) {
		if (posix_memalign((void **)&ra->buf[i], 4096, block)) {
			readahead_free(ra);
			errno = ENOMEM;
			return NULL;
		}
	}

	/* Signals are for the caller's thread, which checks for a stop. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	/* Set before the threads start: the reader waits for the hasher too. */
	ra->hash = hash;
	r = pthread_create(&ra->thread, NULL, readahead_thread, ra);
	if (!r && hash) {
		r = pthread_create(&ra->hasher, NULL, readahead_hasher, ra);
		if (r) {
			ra->hasher_joined = true;
			readahead_stop(ra);
			pthread_sigmask(SIG_SETMASK, &old, NULL);
			errno = r;
			return NULL;
		}
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r) {
		readahead_free(ra);
		errno = r;
		return NULL;
	}
	return ra;
}

const unsigned char *readahead_next(struct readahead *ra, uint64_t off,
				    uint64_t *error_off)
{
	uint64_t k = off / ra->block;
	const unsigned char *buf = NULL;

	pthread_mutex_lock(&ra->lock);
	while (ra->filled <= k && !ra->error)
		pthread_cond_wait(&ra->cond, &ra->lock);
	if (ra->filled > k) {
		buf = ra->buf[k % RA_SLOTS];
	} else {
		errno = ra->error;
		*error_off = ra->error_off;
	}
	pthread_mutex_unlock(&ra->lock);
	return buf;
}

void readahead_done(struct readahead *ra, uint64_t off)
{
	pthread_mutex_lock(&ra->lock);
	ra->consumed = off / ra->block + 1;
	pthread_cond_broadcast(&ra->cond);
	pthread_mutex_unlock(&ra->lock);
}

int readahead_hash_wait(struct readahead *ra)
{
	uint64_t blocks = (ra->size + ra->block - 1) / ra->block;

	if (!ra->hash)
		return 0;
	if (!ra->hasher_joined) {
		pthread_join(ra->hasher, NULL);
		ra->hasher_joined = true;
	}
	return ra->hashed == blocks ? 0 : -EIO;
}

void readahead_stop(struct readahead *ra)
{
	if (!ra)
		return;
	pthread_mutex_lock(&ra->lock);
	ra->stop = true;
	pthread_cond_broadcast(&ra->cond);
	pthread_mutex_unlock(&ra->lock);
	pthread_join(ra->thread, NULL);
	if (ra->hash && !ra->hasher_joined)
		pthread_join(ra->hasher, NULL);
	readahead_free(ra);
}
