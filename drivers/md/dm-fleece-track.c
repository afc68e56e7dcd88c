// SPDX-License-Identifier: GPL-2.0
/*
 * dm-fleece: the "fleece-track" target, persistent changed-chunk tracking.
 *
 *   <start> <len> fleece-track <data_dev> <data_offset> <store_dev>
 *                              <chunk_sectors> <device_id>
 *                              [<#feature_args> format]
 *
 * Maps 1:1 onto <data_dev> from <data_offset> on, like linear, and records
 * on <store_dev> which chunks were written since the last checkpoint.
 *
 * A write to chunks that are all marked passes at once: one lock-free bitmap
 * test.  Any other write is deferred, never sleeping in map(): the worker
 * marks the chunks of all the writes deferred so far in the store's bitmap
 * blocks, writes those blocks with FUA, and only then issues the writes
 * (ft_commit()).  A mark is therefore durable before the write it covers
 * reaches the data device, so the store covers every write a crash can
 * leave behind, not only the acknowledged ones.
 *
 * Copyright (C) 2026 The dm-fleece authors
 */

#include <linux/ctype.h>
#include <linux/module.h>
#include <linux/sched/mm.h>
#include <uapi/linux/sched/types.h>
#include <linux/slab.h>
#include <linux/timekeeping.h>
#include <linux/vmalloc.h>

#include "dm-fleece-compat.h"
#include "dm-fleece-track.h"

#define DM_MSG_PREFIX "fleece-track"

struct ft_target {
	struct list_head node;		/* on the registry's list of targets */
	struct dm_target *ti;
	struct dm_dev *data;
	struct dm_dev *store;
	struct ft_store *ft;
	bool format;
	bool live;			/* counted in ft->nr_live; ft->lock */
};

/*
 * Stores in use and the targets on them.  Tables with the same arguments
 * share a store, on one mapped device or several.
 */
static LIST_HEAD(ft_registry);
static LIST_HEAD(ft_targets);
static DEFINE_MUTEX(ft_registry_lock);

static inline void ft_chunks(struct ft_store *ft, struct bio *bio,
			     unsigned long *first, unsigned long *last)
{
	sector_t off = bio->bi_iter.bi_sector - ft->data_offset;

	*first = off >> ft->chunk_shift;
	*last = (off + bio_sectors(bio) - 1) >> ft->chunk_shift;
}

/* Lock-free: the bits of @first..@last are all set in @map. */
static inline bool ft_all_marked(unsigned long *map, unsigned long first,
				 unsigned long last)
{
	if (likely(first == last))
		return test_bit_le(first, map);
	return find_next_zero_bit_le(map, last + 1, first) > last;
}

/* --- the worker: batched, durable marks -------------------------------- */

/*
 * Add the bits of buffers 0..@n, now durable, to @ft->cur: from here on
 * map() lets writes to those chunks pass.  Only the words that the commit
 * marked are looked at; the buffers stay the store's image of their blocks.
 */
static void ft_publish(struct ft_store *ft, unsigned int n)
{
	unsigned int i, k;

	for (i = 0; i < n; i++) {
		unsigned long *bits = ft_buf_bits(ft->blk_buf[i]);
		unsigned long *map = ft_block_bits(ft->cur, ft->blk_index[i]);

		for (k = ft->blk_lo[i]; k <= ft->blk_hi[i]; k++) {
			unsigned long w = bits[k] & ~map[k];

			if (w) {
				ft->nr_cur += hweight_long(w);
				WRITE_ONCE(map[k], map[k] | w);
			}
		}
		ft->blk_cached |= 1u << i;
	}
}

/**
 * ft_record_lost() - make "history lost" durable after a failed commit
 * @ft: the store, locked
 *
 * Bumps the generation (once per loss), marks both sets lost and writes the
 * superblock.  Until a superblock with the loss is durable the history is
 * FT_FAILED: writes that need new marks fail.  Once one is (here, or at any
 * later superblock write: each later commit and each suspend tries again),
 * ft_write_sb() makes it FT_LOST: writes pass without marks.
 */
static void ft_record_lost(struct ft_store *ft)
{
	if (ft->history == FT_VALID) {
		ft->generation++;
		ft->flags |= FLEECE_TRACK_SB_CUR_LOST | FLEECE_TRACK_SB_PREV_LOST;
		WRITE_ONCE(ft->history, FT_FAILED);
	}
	if (ft_write_sb(ft)) {
		atomic64_inc(&ft->store_errors);
		DMERR_LIMIT("%pg: store failed and cannot record the loss: new marks fail",
			    ft->store_bdev);
	}
}

/*
 * A store write failed.  Only a failed bitmap commit loses history (marks
 * of writes that must now either pass unmarked or fail); a superblock write
 * that fails leaves the other slot, and the state before it, intact.
 */
static void ft_store_error(struct ft_store *ft, const char *what, int r)
{
	atomic64_inc(&ft->store_errors);
	DMERR_LIMIT("%pg: %s failed: %d", ft->store_bdev, what, r);
}

/* Set bits @first..@last of a little-endian bitmap. */
static void ft_set_bits_le(void *map, unsigned long first, unsigned long last)
{
	unsigned long c = first;

	for (; c <= last && c % 8; c++)
		__set_bit_le(c, map);
	if (last - c + 1 >= 8 && c <= last) {
		memset(map + c / 8, 0xff, (last - c + 1) / 8);
		c += (last - c + 1) / 8 * 8;
	}
	for (; c <= last; c++)
		__set_bit_le(c, map);
}

/* Mark bits @first..@last (within its block) in buffer @i of the batch. */
static void ft_buf_mark(struct ft_store *ft, unsigned int i,
			unsigned long first, unsigned long last)
{
	ft_set_bits_le(ft_buf_bits(ft->blk_buf[i]), first, last);
	ft->blk_lo[i] = min_t(unsigned int, ft->blk_lo[i], first / BITS_PER_LONG);
	ft->blk_hi[i] = max_t(unsigned int, ft->blk_hi[i], last / BITS_PER_LONG);
}

static void ft_buf_swap(struct ft_store *ft, unsigned int i, unsigned int j)
{
	u32 ci = (ft->blk_cached >> i) & 1, cj = (ft->blk_cached >> j) & 1;

	swap(ft->blk_buf[i], ft->blk_buf[j]);
	swap(ft->blk_index[i], ft->blk_index[j]);
	ft->blk_cached &= ~((1u << i | 1u << j));
	ft->blk_cached |= cj << i | ci << j;
}

/*
 * Buffer of bitmap block @b in this batch (buffers 0..*@n), or a new one;
 * -1 when full.  A new one is the buffer that already holds the block's
 * durable image if there is one (moved to place *@n), else the block's
 * image is built from @ft->cur.
 */
static int ft_batch_block(struct ft_store *ft, unsigned int *n, unsigned int b)
{
	unsigned int i;

	for (i = 0; i < *n; i++)
		if (ft->blk_index[i] == b)
			return i;
	if (*n == FT_COMMIT_BLOCKS)
		return -1;
	for (i = *n; i < FT_COMMIT_BLOCKS; i++)
		if ((ft->blk_cached & 1u << i) && ft->blk_index[i] == b)
			break;
	if (i < FT_COMMIT_BLOCKS) {
		ft_buf_swap(ft, *n, i);
	} else {
		ft->blk_cached &= ~(1u << *n);
		ft->blk_index[*n] = b;
		ft_block_init(ft, ft->blk_buf[*n], b);
	}
	ft->blk_lo[*n] = FT_BITS / BITS_PER_LONG - 1;
	ft->blk_hi[*n] = 0;
	return (*n)++;
}

/* Write (FUA) and publish buffers 0..@n; a failure loses the history. */
static int ft_commit_blocks(struct ft_store *ft, unsigned int n)
{
	int r = ft_write_blocks(ft, n);

	if (r) {
		ft_store_error(ft, "bitmap commit", r);
		if (ft->history != FT_LOST)
			ft_record_lost(ft);
		return r;
	}
	ft_publish(ft, n);
	atomic64_inc(&ft->commits);
	return 0;
}

/*
 * Marks for chunks @first..@last, which span bitmap blocks (a large discard,
 * say), in as many commits as it takes.  Each commit's marks are published
 * once durable: marks ahead of their write are harmless.
 */
static void ft_commit_span(struct ft_store *ft, unsigned long first,
			   unsigned long last)
{
	unsigned long c = first;

	while (c <= last) {
		unsigned int n = 0;

		while (c <= last && n < FT_COMMIT_BLOCKS) {
			unsigned int b = c / FT_BITS;
			unsigned long base = (unsigned long)b * FT_BITS;
			unsigned long end = min(last, base + FT_BITS - 1);
			int i = ft_batch_block(ft, &n, b);

			ft_buf_mark(ft, i, c - base, end - base);
			c = end + 1;
		}
		if (ft_commit_blocks(ft, n))
			return;
	}
}

/*
 * One commit: marks for as many bios of @in as fit in FT_COMMIT_BLOCKS
 * bitmap blocks, written and flushed; then those bios are issued (or failed,
 * if the store failed and the loss could not be recorded).  The rest stay
 * on @in.
 */
static void ft_commit(struct ft_store *ft, struct bio_list *in)
{
	struct bio_list batch = BIO_EMPTY_LIST;
	unsigned long first, last;
	struct blk_plug plug;
	unsigned int n = 0;
	struct bio *bio;
	int i;

	if (ft->history == FT_FAILED)
		ft_record_lost(ft);	/* the store may be back */

	while ((bio = bio_list_peek(in))) {
		ft_chunks(ft, bio, &first, &last);
		if (ft->history == FT_VALID && !ft_all_marked(ft->cur, first, last)) {
			unsigned int b = first / FT_BITS;

			if (last / FT_BITS != b) {
				/* Across bitmap blocks: alone, in commits of its own. */
				if (n)
					break;
				bio_list_pop(in);
				bio_list_add(&batch, bio);
				ft_commit_span(ft, first, last);
				break;
			}
			i = ft_batch_block(ft, &n, b);
			if (i < 0)
				break;
			ft_buf_mark(ft, i, first - (unsigned long)b * FT_BITS,
				    last - (unsigned long)b * FT_BITS);
		}
		bio_list_pop(in);
		bio_list_add(&batch, bio);
	}

	if (n)
		ft_commit_blocks(ft, n);

	/*
	 * The crash invariant is enforced here: no write of @batch is issued
	 * to the data device (not only not acknowledged: not issued, since a
	 * crash after its data landed but before its mark was durable would
	 * lose the change) before the marks of every chunk it touches are
	 * durable, FUA-written by ft_commit_blocks() and published in @cur,
	 * or the store durably says that the history is lost (FT_LOST).
	 * While the loss cannot be recorded (FT_FAILED), such writes fail.
	 */
	blk_start_plug(&plug);
	while ((bio = bio_list_pop(&batch))) {
		if (ft->history == FT_FAILED) {
			ft_chunks(ft, bio, &first, &last);
			if (!ft_all_marked(ft->cur, first, last)) {
				bio_io_error(bio);
				continue;
			}
		}
		submit_bio_noacct(bio);
	}
	blk_finish_plug(&plug);
}

/*
 * Group commit, as dm-clone's worker commits its metadata once for all the
 * bios deferred meanwhile: each pass takes every write deferred so far, one
 * commit marks them all, then they are issued; writes deferred while a
 * commit is in flight wait for the next pass, and go in its single commit.
 */
static void ft_worker(struct kthread_work *work)
{
	struct ft_store *ft = container_of(work, struct ft_store, worker);
	struct bio_list bios = BIO_EMPTY_LIST;
	unsigned int noio = memalloc_noio_save();

	mutex_lock(&ft->lock);
	for (;;) {
		spin_lock_irq(&ft->bio_lock);
		bio_list_merge(&bios, &ft->deferred);
		bio_list_init(&ft->deferred);
		spin_unlock_irq(&ft->bio_lock);
		if (bio_list_empty(&bios))
			break;
		ft_commit(ft, &bios);
	}
	mutex_unlock(&ft->lock);
	memalloc_noio_restore(noio);
}

/**
 * ft_worker_create() - the store's worker thread
 * @ft: the store
 *
 * A thread of its own (a kthread worker: always there, so it serves
 * writes under memory pressure as WQ_MEM_RECLAIM would), of policy
 * SCHED_BATCH at nice 0: the same share of the CPU as a normal thread, but
 * its wake-up does not preempt the running task.  The writer that defers a
 * first write goes on submitting until it waits (or its time slice ends,
 * or another CPU is idle and takes the worker), so one commit gathers
 * what it submitted meanwhile, instead of one commit per wake-up: on one
 * CPU a normal worker preempted the writer at each first write and a
 * commit gathered about two writes.
 *
 * Return: 0 or a negative error.
 */
static int ft_worker_create(struct ft_store *ft)
{
	struct sched_attr attr = {
		.size = sizeof(attr),
		.sched_policy = SCHED_BATCH,
	};
	struct kthread_worker *w;

	kthread_init_work(&ft->worker, ft_worker);
	w = kthread_create_worker(0, "dm-" FLEECE_TRACK_TARGET_NAME);
	if (IS_ERR(w))
		return PTR_ERR(w);
	ft->kworker = w;
	return sched_setattr_nocheck(w->task, &attr);
}

/* --- map ----------------------------------------------------------------- */

static int ft_map(struct dm_target *ti, struct bio *bio)
{
	struct ft_target *t = ti->private;
	struct ft_store *ft = t->ft;
	sector_t off = dm_target_offset(ti, bio->bi_iter.bi_sector);
	unsigned long first, last;
	unsigned long flags;
	bool wake;

	bio_set_dev(bio, t->data->bdev);
	bio->bi_iter.bi_sector = ft->data_offset + off;
	if (!bio_sectors(bio) || !op_is_write(bio_op(bio)))
		return DM_MAPIO_REMAPPED;

	/*
	 * The invariant (struct ft_store): a write passes only if its marks
	 * are durable, or the store durably says the history is lost.
	 */
	first = off >> ft->chunk_shift;
	last = (off + bio_sectors(bio) - 1) >> ft->chunk_shift;
	if (likely(ft_all_marked(ft->cur, first, last)) ||
	    READ_ONCE(ft->history) == FT_LOST)
		return DM_MAPIO_REMAPPED;

	/*
	 * Marks needed.  The bio is deferred whole, never cut: dm core may
	 * send discards and write-zeroes as duplicate bios, which
	 * dm_accept_partial_bio() does not take.
	 */
	spin_lock_irqsave(&ft->bio_lock, flags);
	wake = bio_list_empty(&ft->deferred);
	bio_list_add(&ft->deferred, bio);
	spin_unlock_irqrestore(&ft->bio_lock, flags);
	/*
	 * Whoever makes @deferred non-empty queues the worker (after this
	 * add, so the run it starts or repeats sees the bio); the worker
	 * takes the whole list at once, so a bio added to a non-empty list
	 * goes with the one that queued it.
	 */
	if (wake)
		kthread_queue_work(ft->kworker, &ft->worker);
	return DM_MAPIO_SUBMITTED;
}

/* --- checkpoint, merge, backup_done ------------------------------------- */

/*
 * @ft->cur |= @ft->prev, durably: the bitmap blocks of the current area that
 * gain bits are written and flushed before the bits are published.
 */
static int ft_merge_prev(struct ft_store *ft)
{
	unsigned int b = 0, n, k;
	int r;

	while (b < ft->nr_blocks) {
		ft->blk_cached = 0;
		for (n = 0; b < ft->nr_blocks && n < FT_COMMIT_BLOCKS; b++) {
			unsigned long *p = ft_block_bits(ft->prev, b);
			unsigned long *bits;

			if (bitmap_subset(p, ft_block_bits(ft->cur, b), FT_BITS))
				continue;
			ft->blk_index[n] = b;
			ft->blk_lo[n] = 0;
			ft->blk_hi[n] = FT_BITS / BITS_PER_LONG - 1;
			ft_block_init(ft, ft->blk_buf[n], b);
			bits = ft_buf_bits(ft->blk_buf[n]);
			for (k = 0; k < FT_BITS / BITS_PER_LONG; k++)
				bits[k] |= p[k];
			n++;
		}
		if (!n)
			break;
		r = ft_write_blocks(ft, n);
		if (r)
			return r;
		ft_publish(ft, n);
		atomic64_inc(&ft->commits);
	}
	return 0;
}

/**
 * ft_checkpoint() - start a new epoch; the current set becomes the previous
 * @ft: the store, its device suspended: no write is in flight
 *
 * Only the superblock is written (the new current area's blocks carry an
 * older epoch and read as empty), so the switch is atomic.  A previous set
 * whose backup was neither done nor merged is merged first: a checkpoint
 * never drops changes that no backup has confirmed.  A new epoch after a
 * loss starts a valid history again.
 *
 * Return: 0 or a negative error; on error the epoch is unchanged (a merge
 * that failed half-way may have added marks: never fewer).
 */
static int ft_checkpoint(struct ft_store *ft)
{
	u64 epoch = ft->epoch, ckpt = ft->checkpoint_time;
	u32 flags = ft->flags;
	enum fleece_track_prev_state prev_state = ft->prev_state;
	unsigned int area, b;
	unsigned long *map;
	bool cur_lost;
	int r;

	if (ft->history == FT_FAILED)
		return -EIO;
	cur_lost = ft->flags & FLEECE_TRACK_SB_CUR_LOST || ft->history != FT_VALID;
	if (ft->prev_state == FLEECE_TRACK_PREV_READY) {
		if (ft->flags & FLEECE_TRACK_SB_PREV_LOST) {
			cur_lost = true;
		} else {
			r = ft_merge_prev(ft);
			if (r) {
				ft_store_error(ft, "merge at checkpoint", r);
				return r;
			}
		}
	}

	/* The current set becomes the previous one, lost or not. */
	ft->epoch++;
	ft->flags &= ~(FLEECE_TRACK_SB_CUR_LOST | FLEECE_TRACK_SB_PREV_LOST);
	if (cur_lost)
		ft->flags |= FLEECE_TRACK_SB_PREV_LOST;
	ft->prev_state = FLEECE_TRACK_PREV_READY;
	ft->checkpoint_time = ktime_get_real_seconds();
	r = ft_write_sb(ft);
	if (r) {
		ft->epoch = epoch;
		ft->flags = flags;
		ft->prev_state = prev_state;
		ft->checkpoint_time = ckpt;
		ft_store_error(ft, "checkpoint", r);
		return r;
	}

	ft->blk_cached = 0;	/* images of the old epoch's blocks */
	map = ft->prev;
	ft->prev = ft->cur;
	memset(map, 0, (size_t)ft->nr_blocks * (FT_BITS / 8));
	ft->cur = map;
	ft->nr_prev = ft->nr_cur;
	ft->nr_cur = 0;
	WRITE_ONCE(ft->history, FT_VALID);

	/*
	 * Blocks of the new current area that failed their checks at load
	 * would read as all changed again after a restart: rewrite them
	 * empty.  A failure here only keeps them conservative.
	 */
	area = ft->epoch & 1;
	for_each_set_bit(b, ft->bad[area], ft->nr_blocks)
		if (!ft_write_empty_block(ft, area, b, ft->epoch))
			__clear_bit(b, ft->bad[area]);
	DMINFO("%pg: %s: checkpoint: epoch %llu, %lu chunks changed in epoch %llu",
	       ft->store_bdev, ft->device_id, ft->epoch, ft->nr_prev, epoch);
	return 0;
}

static int ft_merge(struct ft_store *ft)
{
	u32 flags = ft->flags;
	int r;

	if (ft->prev_state != FLEECE_TRACK_PREV_READY)
		return -EINVAL;
	if (ft->history == FT_FAILED)
		return -EIO;
	if (ft->flags & FLEECE_TRACK_SB_PREV_LOST) {
		ft->flags |= FLEECE_TRACK_SB_CUR_LOST;
	} else {
		r = ft_merge_prev(ft);
		if (r) {
			ft_store_error(ft, "merge", r);
			return r;
		}
	}
	ft->prev_state = FLEECE_TRACK_PREV_MERGED;
	r = ft_write_sb(ft);
	if (r) {
		/* The merged bits are durable; only the state is not. */
		ft->flags = flags;
		ft->prev_state = FLEECE_TRACK_PREV_READY;
		ft_store_error(ft, "merge", r);
		return r;
	}
	if (ft->flags & FLEECE_TRACK_SB_CUR_LOST)
		WRITE_ONCE(ft->history, FT_LOST);
	return 0;
}

static int ft_backup_done(struct ft_store *ft)
{
	int r;

	if (ft->prev_state != FLEECE_TRACK_PREV_READY)
		return -EINVAL;
	ft->prev_state = FLEECE_TRACK_PREV_DONE;
	r = ft_write_sb(ft);
	if (r) {
		ft->prev_state = FLEECE_TRACK_PREV_READY;
		ft_store_error(ft, "backup_done", r);
		return r;
	}
	memset(ft->prev, 0, (size_t)ft->nr_blocks * (FT_BITS / 8));
	ft->nr_prev = 0;
	return 0;
}

static const char *ft_prev_name(struct ft_store *ft)
{
	switch (READ_ONCE(ft->prev_state)) {
	case FLEECE_TRACK_PREV_READY:
		return READ_ONCE(ft->flags) & FLEECE_TRACK_SB_PREV_LOST ?
			FLEECE_TRACK_PREV_NAME_LOST : FLEECE_TRACK_PREV_NAME_READY;
	case FLEECE_TRACK_PREV_DONE:
		return FLEECE_TRACK_PREV_NAME_DONE;
	case FLEECE_TRACK_PREV_MERGED:
		return FLEECE_TRACK_PREV_NAME_MERGED;
	default:
		return FLEECE_TRACK_PREV_NAME_NONE;
	}
}

/* Room "next=<chunk>" (chunk < 2^31), its NUL and one byte more need. */
#define FT_EXTENTS_TAIL	(sizeof(FLEECE_TRACK_EXTENTS_NEXT "2147483647") + 1)

/**
 * ft_prev_extents() - message "prev_extents <first_chunk>"
 * @ft: the store, locked
 * @arg: the first chunk to report, decimal
 * @result: the message's result buffer
 * @maxlen: its size
 *
 * The previous set from @arg on, as space-separated "<first>+<count>"
 * ranges of chunks, as many whole ranges as fit, then "next=<chunk>" (the
 * first chunk of the set not reported: ask again from there) or "end".
 * dm core reads a result that fills its buffer as an overflow: one byte
 * always stays free.
 *
 * Return: 1 (the result holds the answer), -EINVAL for a bad argument,
 * -ENODATA unless the previous set is ready and not lost, -ENOSPC if not
 * even the last token fits.
 */
static int ft_prev_extents(struct ft_store *ft, const char *arg, char *result,
			   unsigned int maxlen)
{
	unsigned long n = ft->nr_chunks, c, e;
	unsigned int sz = 0;
	int len;

	lockdep_assert_held(&ft->lock);
	if (kstrtoul(arg, 10, &c)) {
		DMWARN("%s: %s: invalid chunk number", ft->device_id,
		       FLEECE_TRACK_MSG_PREV_EXTENTS);
		return -EINVAL;
	}
	if (ft->prev_state != FLEECE_TRACK_PREV_READY ||
	    (ft->flags & FLEECE_TRACK_SB_PREV_LOST)) {
		DMWARN("%s: %s refused: no previous set ready (it is %s)",
		       ft->device_id, FLEECE_TRACK_MSG_PREV_EXTENTS,
		       ft_prev_name(ft));
		return -ENODATA;
	}
	c = c < n ? find_next_bit_le(ft->prev, n, c) : n;
	while (c < n) {
		e = find_next_zero_bit_le(ft->prev, n, c);
		len = snprintf(NULL, 0, "%lu+%lu ", c, e - c);
		if (sz + len + FT_EXTENTS_TAIL > maxlen)
			break;
		sz += sprintf(result + sz, "%lu+%lu ", c, e - c);
		c = e < n ? find_next_bit_le(ft->prev, n, e) : n;
	}
	len = c < n ? snprintf(NULL, 0, FLEECE_TRACK_EXTENTS_NEXT "%lu", c) :
		strlen(FLEECE_TRACK_EXTENTS_END);
	if (sz + len + 2 > maxlen)
		return -ENOSPC;
	if (c < n)
		sprintf(result + sz, FLEECE_TRACK_EXTENTS_NEXT "%lu", c);
	else
		strcpy(result + sz, FLEECE_TRACK_EXTENTS_END);
	return 1;
}

static int ft_message(struct dm_target *ti, unsigned int argc, char **argv,
		      char *result, unsigned int maxlen)
{
	struct ft_target *t = ti->private;
	struct ft_store *ft = t->ft;
	const char *msg = argc == 1 ? argv[0] : "";
	int r;

	if (argc == 2 && !strcasecmp(argv[0], FLEECE_TRACK_MSG_PREV_EXTENTS)) {
		mutex_lock(&ft->lock);
		r = ft_prev_extents(ft, argv[1], result, maxlen);
		mutex_unlock(&ft->lock);
		return r;
	}
	if (!strcasecmp(msg, FLEECE_TRACK_MSG_CHECKPOINT)) {
		/*
		 * The switch must not fall between writes in flight through
		 * any device holding the store: a preresume counts itself in
		 * @nr_live under the lock, before any write can pass.
		 */
		mutex_lock(&ft->lock);
		r = ft->nr_live ? -EBUSY : ft_checkpoint(ft);
		mutex_unlock(&ft->lock);
		if (r == -EBUSY)
			DMWARN("%s: checkpoint refused: %s", ft->device_id,
			       "a device holding the store is not suspended");
	} else if (!strcasecmp(msg, FLEECE_TRACK_MSG_MERGE)) {
		mutex_lock(&ft->lock);
		r = ft_merge(ft);
		mutex_unlock(&ft->lock);
	} else if (!strcasecmp(msg, FLEECE_TRACK_MSG_BACKUP_DONE)) {
		mutex_lock(&ft->lock);
		r = ft_backup_done(ft);
		mutex_unlock(&ft->lock);
	} else {
		DMWARN("%s: unknown message", ft->device_id);
		return -EINVAL;
	}
	if (r == -EINVAL)
		DMWARN("%s: %s refused: no previous set ready (it is %s)",
		       ft->device_id, msg,
		       ft->prev_state == FLEECE_TRACK_PREV_NONE ?
		       FLEECE_TRACK_PREV_NAME_NONE :
		       ft->prev_state == FLEECE_TRACK_PREV_DONE ?
		       FLEECE_TRACK_PREV_NAME_DONE : FLEECE_TRACK_PREV_NAME_MERGED);
	return r;
}

/* --- status ---------------------------------------------------------------- */

static void ft_status(struct dm_target *ti, status_type_t type,
		      unsigned int status_flags, char *result, unsigned int maxlen)
{
	struct ft_target *t = ti->private;
	struct ft_store *ft = t->ft;
	enum ft_history h = READ_ONCE(ft->history);
	u32 flags = READ_ONCE(ft->flags);
	unsigned long prev = READ_ONCE(ft->nr_prev);
	unsigned int sz = 0;

	switch (type) {
	case STATUSTYPE_INFO:
		if (flags & FLEECE_TRACK_SB_PREV_LOST)
			prev = ft->nr_chunks;
		DMEMIT("%u %lu %llu %lu %lu %llu %s %s %s %u %lld %lld %s %16phN",
		       ft->chunk_sectors, ft->nr_chunks, READ_ONCE(ft->epoch),
		       h == FT_VALID ? READ_ONCE(ft->nr_cur) : ft->nr_chunks,
		       prev, READ_ONCE(ft->generation),
		       flags & FLEECE_TRACK_SB_CLEAN ?
		       FLEECE_TRACK_CLEAN : FLEECE_TRACK_DIRTY,
		       h == FT_VALID ? FLEECE_TRACK_HISTORY_VALID :
		       h == FT_LOST ? FLEECE_TRACK_HISTORY_LOST :
		       FLEECE_TRACK_HISTORY_FAILED,
		       ft_prev_name(ft), READ_ONCE(ft->nr_conservative),
		       atomic64_read(&ft->store_errors),
		       atomic64_read(&ft->commits),
		       ft->opened_clean ? FLEECE_TRACK_CLEAN : FLEECE_TRACK_UNCLEAN,
		       ft->store_uuid);
		break;
	case STATUSTYPE_TABLE:
		DMEMIT("%s %llu %s %u %s", t->data->name,
		       (unsigned long long)ft->data_offset, t->store->name,
		       ft->chunk_sectors, ft->device_id);
		if (t->format)
			DMEMIT(" 1 %s", FLEECE_TRACK_FEATURE_FORMAT);
		break;
	case STATUSTYPE_IMA:
		/* The setup, for dm-ima: what is tracked, where it is kept. */
		DMEMIT_TARGET_NAME_VERSION(ti->type);
		DMEMIT(",data_name=%s,data_offset=%llu,store_name=%s",
		       t->data->name, (unsigned long long)ft->data_offset,
		       t->store->name);
		DMEMIT(",chunk_sectors=%u,device_id=%s;", ft->chunk_sectors,
		       ft->device_id);
		break;
	default:
		result[0] = '\0';
		break;
	}
}

/* --- suspend and resume ------------------------------------------------ */

/**
 * ft_go_idle() - @t is no longer live: the store is clean once none is
 * @t: the target
 *
 * The invariant of struct ft_store: the store is marked clean only while
 * no table holding it is live, so no write can be passing through any
 * device that holds it.
 */
static void ft_go_idle(struct ft_target *t)
{
	struct ft_store *ft = t->ft;
	int r;

	mutex_lock(&ft->lock);
	if (t->live) {
		t->live = false;
		ft->nr_live--;
	}
	if (!ft->nr_live && !(ft->flags & FLEECE_TRACK_SB_CLEAN)) {
		ft->flags |= FLEECE_TRACK_SB_CLEAN;
		r = ft_write_sb(ft);
		if (r) {
			ft->flags &= ~FLEECE_TRACK_SB_CLEAN;
			ft_store_error(ft, "marking the store clean", r);
		}
	}
	mutex_unlock(&ft->lock);
}

static void ft_postsuspend(struct dm_target *ti)
{
	struct ft_target *t = ti->private;

	/* The deferred writes of every device holding the store. */
	kthread_flush_worker(t->ft->kworker);
	ft_go_idle(t);
}

/**
 * ft_preresume() - @t goes live: the store is dirty on disk first
 * @ti: the target
 *
 * The invariant of struct ft_store: the first table holding the store to
 * go live marks it dirty before any write can pass; @t counts itself in
 * @nr_live only then.  A resume that fails after this (another target's
 * preresume) leaves @t counted until its postsuspend or destructor:
 * dirty and no checkpoint meanwhile, which is safe.
 *
 * Return: 0, or the error of the superblock write (the resume fails).
 */
static int ft_preresume(struct dm_target *ti)
{
	struct ft_target *t = ti->private;
	struct ft_store *ft = t->ft;
	int r = 0;

	mutex_lock(&ft->lock);
	ft->store_bdev = t->store->bdev;
	ft->data_bdev = t->data->bdev;
	if (ft->flags & FLEECE_TRACK_SB_CLEAN) {
		ft->flags &= ~FLEECE_TRACK_SB_CLEAN;
		r = ft_write_sb(ft);
		if (r) {
			ft->flags |= FLEECE_TRACK_SB_CLEAN;
			ft_store_error(ft, "marking the store dirty (resume refused)", r);
		}
	}
	if (!r && !t->live) {
		t->live = true;
		ft->nr_live++;
	}
	mutex_unlock(&ft->lock);
	return r;
}

static int ft_iterate_devices(struct dm_target *ti,
			      iterate_devices_callout_fn fn, void *data)
{
	struct ft_target *t = ti->private;

	return fn(ti, t->data, t->ft->data_offset, ti->len, data);
}

/* --- constructor and destructor ---------------------------------------- */

static void ft_store_free(struct ft_store *ft)
{
	unsigned int i;

	if (ft->kworker)
		kthread_destroy_worker(ft->kworker);
	if (ft->io_client)
		dm_io_client_destroy(ft->io_client);
	for (i = 0; i < FT_COMMIT_BLOCKS; i++)
		free_page((unsigned long)ft->blk_buf[i]);
	free_page((unsigned long)ft->sb_buf);
	bitmap_free(ft->bad[0]);
	bitmap_free(ft->bad[1]);
	kvfree(ft->cur);
	kvfree(ft->prev);
	kfree(ft);
}

static struct ft_store *ft_store_create(struct ft_target *t, sector_t offset,
					unsigned int chunk, const char *id)
{
	struct dm_target *ti = t->ti;
	struct ft_store *ft;
	size_t bytes;
	unsigned int i;
	int r = -ENOMEM;

	ft = kzalloc(sizeof(*ft), GFP_KERNEL);
	if (!ft)
		goto nomem;
	ft->store_dev = t->store->bdev->bd_dev;
	ft->data_dev = t->data->bdev->bd_dev;
	ft->store_bdev = t->store->bdev;
	ft->data_bdev = t->data->bdev;
	ft->data_offset = offset;
	ft->data_sectors = ti->len;
	strscpy(ft->device_id, id, sizeof(ft->device_id));
	ft->chunk_sectors = chunk;
	ft->chunk_shift = __ffs(chunk);
	ft->nr_chunks = DIV_ROUND_UP_SECTOR_T(ti->len, chunk);
	ft->nr_blocks = DIV_ROUND_UP(ft->nr_chunks, FT_BITS);
	mutex_init(&ft->lock);
	spin_lock_init(&ft->bio_lock);
	bio_list_init(&ft->deferred);
	atomic64_set(&ft->store_errors, 0);
	atomic64_set(&ft->commits, 0);

	bytes = (size_t)ft->nr_blocks * (FT_BITS / 8);
	ft->cur = kvzalloc(bytes, GFP_KERNEL);
	ft->prev = kvzalloc(bytes, GFP_KERNEL);
	ft->bad[0] = bitmap_zalloc(ft->nr_blocks, GFP_KERNEL);
	ft->bad[1] = bitmap_zalloc(ft->nr_blocks, GFP_KERNEL);
	ft->sb_buf = (void *)__get_free_page(GFP_KERNEL);
	if (!ft->cur || !ft->prev || !ft->bad[0] || !ft->bad[1] || !ft->sb_buf)
		goto nomem;
	for (i = 0; i < FT_COMMIT_BLOCKS; i++) {
		ft->blk_buf[i] = (void *)__get_free_page(GFP_KERNEL);
		if (!ft->blk_buf[i])
			goto nomem;
	}
	ft->io_client = dm_io_client_create();
	if (IS_ERR(ft->io_client)) {
		r = PTR_ERR(ft->io_client);
		ft->io_client = NULL;
		goto nomem;
	}
	r = ft_worker_create(ft);
	if (r) {
		ti->error = "Cannot create the tracking worker thread";
		goto bad;
	}

	r = ft_store_load(ft, t->format, &ti->error);
	if (r)
		goto bad;
	return ft;

nomem:
	ti->error = "Cannot allocate the tracking state";
bad:
	if (ft)
		ft_store_free(ft);
	return ERR_PTR(r);
}

static bool ft_overlap(sector_t a, sector_t alen, sector_t b, sector_t blen)
{
	return a < b + blen && b < a + alen;
}

/**
 * ft_store_get() - the store for a new table, shared or new
 * @t: the target being constructed
 * @offset: its data_offset
 * @chunk: its chunk size
 * @id: its device_id
 *
 * A table that names a store in use with the same arguments shares it,
 * whichever mapped device it is for: a reload, or a second device with the
 * same table (the fleece command moves a tracked device's table to a hidden
 * origin device, and back at stop).  Refused: the store with other
 * arguments, twice in one table, a data range that another store tracks,
 * one tracker's store as another's data device or the reverse.
 *
 * Return: the store, with @t counted in it, or an ERR_PTR with ti->error set.
 */
static struct ft_store *ft_store_get(struct ft_target *t, sector_t offset,
				     unsigned int chunk, const char *id)
{
	struct dm_target *ti = t->ti;
	dev_t sdev = t->store->bdev->bd_dev, ddev = t->data->bdev->bd_dev;
	struct ft_store *ft, *found = NULL;
	struct ft_target *o;

	lockdep_assert_held(&ft_registry_lock);
	list_for_each_entry(ft, &ft_registry, node) {
		if (ft->store_dev == sdev) {
			if (ft->data_dev != ddev || ft->data_offset != offset ||
			    ft->data_sectors != ti->len ||
			    ft->chunk_sectors != chunk ||
			    strcmp(ft->device_id, id)) {
				ti->error = "Store is in use with other arguments";
				return ERR_PTR(-EBUSY);
			}
			found = ft;
			continue;
		}
		if (ft->data_dev == ddev &&
		    ft_overlap(ft->data_offset, ft->data_sectors, offset, ti->len)) {
			ti->error = "Data device is already tracked (with another store)";
			return ERR_PTR(-EBUSY);
		}
		if (ft->data_dev == sdev || ft->store_dev == ddev) {
			ti->error = "Device is another tracker's store or data device";
			return ERR_PTR(-EBUSY);
		}
	}
	if (found) {
		list_for_each_entry(o, &ft_targets, node) {
			if (o->ft == found && o->ti->table == ti->table) {
				ti->error = "Store device is used twice in this table";
				return ERR_PTR(-EBUSY);
			}
		}
		found->nr_targets++;
		return found;
	}
	ft = ft_store_create(t, offset, chunk, id);
	if (IS_ERR(ft))
		return ft;
	ft->nr_targets = 1;
	list_add(&ft->node, &ft_registry);
	return ft;
}

static int ft_parse_chunk(const char *arg, unsigned int *chunk,
			  struct dm_target *ti)
{
	if (kstrtouint(arg, 10, chunk) || !is_power_of_2(*chunk) ||
	    *chunk < FLEECE_MIN_CHUNK_SECTORS || *chunk > FLEECE_MAX_CHUNK_SECTORS) {
		ti->error = "Invalid chunk size: must be a power of two from 8 to 32768 sectors";
		return -EINVAL;
	}
	return 0;
}

static int ft_parse_id(const char *id, struct dm_target *ti)
{
	size_t i, len = strlen(id);

	if (!len || len > FLEECE_TRACK_DEVICE_ID_MAX) {
		ti->error = "Invalid device_id: 1 to 63 characters";
		return -EINVAL;
	}
	for (i = 0; i < len; i++) {
		if (!isgraph(id[i])) {
			ti->error = "Invalid device_id: printable characters only";
			return -EINVAL;
		}
	}
	return 0;
}

static int ft_parse_features(struct dm_arg_set *as, struct ft_target *t,
			     struct dm_target *ti)
{
	unsigned int argc;

	if (!as->argc)
		return 0;
	if (kstrtouint(dm_shift_arg(as), 10, &argc) || argc != as->argc || argc > 1) {
		ti->error = "Invalid number of feature arguments";
		return -EINVAL;
	}
	if (argc && strcasecmp(dm_shift_arg(as), FLEECE_TRACK_FEATURE_FORMAT)) {
		ti->error = "Unknown feature argument";
		return -EINVAL;
	}
	t->format = argc;
	return 0;
}

static int ft_check_devices(struct ft_target *t, sector_t offset,
			    unsigned int chunk)
{
	struct dm_target *ti = t->ti;
	struct block_device *data = t->data->bdev, *store = t->store->bdev;
	unsigned int lbs = bdev_logical_block_size(data) >> SECTOR_SHIFT;
	unsigned long nr_chunks = DIV_ROUND_UP_SECTOR_T(ti->len, chunk);

	if (data == store) {
		ti->error = "Data and store devices must differ";
		return -EINVAL;
	}
	if (offset >= bdev_nr_sectors(data) || bdev_nr_sectors(data) - offset < ti->len) {
		ti->error = "Data device is smaller than data_offset plus the target";
		return -EINVAL;
	}
	if ((offset | chunk) & (lbs - 1)) {
		ti->error = "data_offset or chunk size is not a multiple of the data block size";
		return -EINVAL;
	}
	if (bdev_logical_block_size(store) > FLEECE_TRACK_BLOCK_SIZE) {
		ti->error = "Store device's logical block size is larger than 4096";
		return -EINVAL;
	}
	/* The *_bit_le() helpers take an int. */
	if (nr_chunks > INT_MAX) {
		ti->error = "Too many chunks: use a larger chunk size";
		return -EINVAL;
	}
	if (bdev_nr_sectors(store) < ft_store_min_sectors(nr_chunks)) {
		ti->error = "Store device is too small for this many chunks";
		return -EINVAL;
	}
	return 0;
}

static int ft_ctr(struct dm_target *ti, unsigned int argc, char **argv)
{
	struct dm_arg_set as = { .argc = argc, .argv = argv };
	struct ft_target *t;
	unsigned int chunk;
	u64 offset;
	int r;

	if (argc < 5) {
		ti->error = "Not enough arguments: <data> <offset> <store> <chunk> <device_id>";
		return -EINVAL;
	}
	if (kstrtou64(argv[1], 10, &offset)) {
		ti->error = "Invalid data_offset: not a number of sectors";
		return -EINVAL;
	}
	r = ft_parse_chunk(argv[3], &chunk, ti);
	if (!r)
		r = ft_parse_id(argv[4], ti);
	if (r)
		return r;

	t = kzalloc(sizeof(*t), GFP_KERNEL);
	if (!t) {
		ti->error = "Cannot allocate fleece-track target";
		return -ENOMEM;
	}
	t->ti = ti;
	dm_consume_args(&as, 5);
	r = ft_parse_features(&as, t, ti);
	if (r)
		goto bad;

	r = dm_get_device(ti, argv[0], dm_table_get_mode(ti->table), &t->data);
	if (r) {
		ti->error = "Cannot open data device";
		goto bad;
	}
	r = dm_get_device(ti, argv[2], dm_table_get_mode(ti->table), &t->store);
	if (r) {
		ti->error = "Cannot open store device";
		goto bad_store;
	}
	r = ft_check_devices(t, offset, chunk);
	if (r)
		goto bad_get;

	mutex_lock(&ft_registry_lock);
	t->ft = ft_store_get(t, offset, chunk, argv[4]);
	if (!IS_ERR(t->ft))
		list_add(&t->node, &ft_targets);
	mutex_unlock(&ft_registry_lock);
	if (IS_ERR(t->ft)) {
		r = PTR_ERR(t->ft);
		goto bad_get;
	}

	ti->num_flush_bios = 1;
	ti->num_discard_bios = 1;
	ti->num_write_zeroes_bios = 1;
	ti->num_secure_erase_bios = 1;
	ti->private = t;
	return 0;

bad_get:
	dm_put_device(ti, t->store);
bad_store:
	dm_put_device(ti, t->data);
bad:
	kfree(t);
	return r;
}

static void ft_dtr(struct dm_target *ti)
{
	struct ft_target *t = ti->private;
	struct ft_store *ft = t->ft;
	bool last;

	/* A table whose resume failed after its preresume is still counted. */
	if (t->live)
		ft_go_idle(t);
	mutex_lock(&ft_registry_lock);
	list_del(&t->node);
	last = !--ft->nr_targets;
	if (last)
		list_del(&ft->node);
	mutex_unlock(&ft_registry_lock);

	if (last) {
		/* dm suspends a device before it destroys it: this is clean. */
		kthread_flush_worker(ft->kworker);
		WARN_ON_ONCE(!bio_list_empty(&ft->deferred));
		ft_store_free(ft);
	}
	dm_put_device(ti, t->store);
	dm_put_device(ti, t->data);
	kfree(t);
}

/* --- for the fleece target ------------------------------------------------ */

/* Does a chunk of @ft's in @map overlap sectors @start..@end? */
static bool ft_range_changed(struct ft_store *ft, unsigned long *map,
			     sector_t start, sector_t end)
{
	unsigned long first = start >> ft->chunk_shift;
	unsigned long last = end >> ft->chunk_shift;

	return find_next_bit_le(map, last + 1, first) <= last;
}

/**
 * fleece_track_unchanged() - the chunks of a region that a tracker saw no
 *	write to since its previous set began
 * @store: the tracker's store device
 * @len: the region's length in sectors: must be the tracked target's
 * @chunk_sectors: the caller's chunk size, a power of two; it may differ
 *	from the tracker's
 * @release: called with each run @first..@last of the caller's chunks
 *	that no changed chunk of the tracker overlaps, in order, under the
 *	tracker's locks (mutexes: it may take spinlocks and reschedule, not
 *	wait for I/O)
 * @arg: passed to @release
 * @why: set to the reason when nothing is reported
 *
 * Sector s of the region is sector s of the tracked target.  Changed means
 * marked in the previous set (ready, not lost) or in the current one: the
 * latter is empty when the checkpoint is taken in the same suspend as the
 * caller's point in time, and otherwise holds writes made since, which
 * count as changes too.
 *
 * Return: 0, or -ENOENT (no tracker holds @store), -EINVAL (another
 * length) or -ENODATA (no previous set ready, or history lost) with @why.
 */
int fleece_track_unchanged(dev_t store, sector_t len, unsigned int chunk_sectors,
			   void (*release)(void *arg, unsigned long first,
					   unsigned long last),
			   void *arg, const char **why)
{
	unsigned long f, nr, run = ULONG_MAX;
	struct ft_store *ft, *found = NULL;
	sector_t start, end;
	int r = 0;

	mutex_lock(&ft_registry_lock);
	list_for_each_entry(ft, &ft_registry, node) {
		if (ft->store_dev == store) {
			found = ft;
			break;
		}
	}
	if (!found) {
		*why = "no fleece-track table holds the store";
		r = -ENOENT;
		goto out;
	}
	ft = found;
	mutex_lock(&ft->lock);
	if (ft->data_sectors != len) {
		*why = "the tracked length differs from the fleece region's";
		r = -EINVAL;
	} else if (ft->prev_state == FLEECE_TRACK_PREV_READY &&
		   (ft->flags & FLEECE_TRACK_SB_PREV_LOST)) {
		*why = "the history was lost before the last checkpoint";
		r = -ENODATA;
	} else if (ft->prev_state != FLEECE_TRACK_PREV_READY) {
		*why = ft->prev_state == FLEECE_TRACK_PREV_NONE ?
			"no previous set: no checkpoint yet" :
			"no previous set ready: its backup is done or merged";
		r = -ENODATA;
	} else if (ft->history != FT_VALID ||
		   (ft->flags & FLEECE_TRACK_SB_CUR_LOST)) {
		*why = "the history was lost since the last checkpoint";
		r = -ENODATA;
	}
	if (r) {
		mutex_unlock(&ft->lock);
		goto out;
	}

	nr = DIV_ROUND_UP_SECTOR_T(len, chunk_sectors);
	for (f = 0; f < nr; f++) {
		if (!(f % 4096))
			cond_resched();	/* millions of chunks, under mutexes */
		start = (sector_t)f * chunk_sectors;
		end = min_t(sector_t, start + chunk_sectors, len) - 1;
		if (!ft_range_changed(ft, ft->prev, start, end) &&
		    !ft_range_changed(ft, ft->cur, start, end)) {
			if (run == ULONG_MAX)
				run = f;
			continue;
		}
		if (run != ULONG_MAX)
			release(arg, run, f - 1);
		run = ULONG_MAX;
	}
	if (run != ULONG_MAX)
		release(arg, run, nr - 1);
	mutex_unlock(&ft->lock);
out:
	mutex_unlock(&ft_registry_lock);
	return r;
}

static struct target_type fleece_track_target = {
	.name = FLEECE_TRACK_TARGET_NAME,
	.version = {1, 1, 0},
	.module = THIS_MODULE,
	.ctr = ft_ctr,
	.dtr = ft_dtr,
	.map = ft_map,
	.postsuspend = ft_postsuspend,
	.preresume = ft_preresume,
	.status = ft_status,
	.message = ft_message,
	.iterate_devices = ft_iterate_devices,
};

int fleece_track_register(void)
{
	return dm_register_target(&fleece_track_target);
}

void fleece_track_unregister(void)
{
	dm_unregister_target(&fleece_track_target);
}
