// SPDX-License-Identifier: GPL-2.0
/*
 * Read-ahead for the reader: a thread reads the next block of the view
 * while the caller writes, syncs and discards the one before, so that the
 * view is read without a pause between blocks.  Two buffers: the thread is
 * at most one block ahead.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

#include "readahead.h"

#define RA_SLOTS 2

struct readahead {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int fd;
	uint64_t size;
	size_t block;
	unsigned char *buf[RA_SLOTS];
	/* Under @lock: */
	uint64_t filled;	/* blocks read into their slot */
	uint64_t consumed;	/* blocks the caller is done with */
	int error;		/* errno of the read that failed, after @filled */
	uint64_t error_off;
	bool stop;
};

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
		while (!ra->stop && k >= ra->consumed + RA_SLOTS)
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

static void readahead_free(struct readahead *ra)
{
	int i;

	for (i = 0; i < RA_SLOTS; i++)
		free(ra->buf[i]);
	pthread_mutex_destroy(&ra->lock);
	pthread_cond_destroy(&ra->cond);
	free(ra);
}

struct readahead *readahead_start(int fd, uint64_t size, size_t block)
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
	r = pthread_create(&ra->thread, NULL, readahead_thread, ra);
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

void readahead_stop(struct readahead *ra)
{
	if (!ra)
		return;
	pthread_mutex_lock(&ra->lock);
	ra->stop = true;
	pthread_cond_broadcast(&ra->cond);
	pthread_mutex_unlock(&ra->lock);
	pthread_join(ra->thread, NULL);
	readahead_free(ra);
}
