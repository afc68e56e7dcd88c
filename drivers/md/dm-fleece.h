/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dm-fleece: copy-before-write onto a local fleece device, with a frozen view.
 *
 * Internal declarations shared by the module's files:
 *   dm-fleece-ctx.c     chunk state, the shared context and its registry
 *   dm-fleece-cbw.c     the copy-before-write engine and deferred bios
 *   dm-fleece-origin.c  the "fleece" target (origin side)
 *   dm-fleece-view.c    the "fleece-view" target (the frozen image)
 */
#ifndef DM_FLEECE_H
#define DM_FLEECE_H

#include <linux/bio.h>
#include <linux/device-mapper.h>
#include <linux/kref.h>
#include <linux/mempool.h>
#include <linux/ratelimit.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "dm-fleece-interface.h"	/* names shared with the tools */

#define DM_MSG_PREFIX "fleece"

#define FLEECE_HASH_BITS 8	/* in-flight chunk descriptors: 256 buckets */

/*
 * Chunk states, two bits per chunk:
 *
 *   done  released
 *    0      0       pending: the frozen data is only on the origin
 *    1      0       copied:  the frozen data is in the fleece device
 *    1      1       released by the view: nothing left to protect
 *
 * The origin's hot path tests @done alone, without a lock.  Bits are only
 * ever set, under the chunk's bucket lock, with release ordering; lockless
 * readers test them with acquire ordering.
 */
struct fleece_chunk_state {
	unsigned long *done;
	unsigned long *released;
};

/* Links a target to its context, so dm events reach every table. */
struct fleece_target_link {
	struct list_head node;
	struct dm_target *ti;
};

struct fleece_bucket {
	spinlock_t lock;		/* protects @regions */
	struct hlist_head regions;
};

/**
 * struct fleece_ctx - state shared by every target of one (origin, fleece) pair
 *
 * Created by the first "fleece" table for a pair, found by later tables
 * (reloads hand the state over) and by views through the registry.  Views
 * and origin targets each hold a reference.  Once no origin target is left,
 * the context is invalidated, and leaves the registry when its last copy
 * has ended: a later "fleece" table for the same pair then starts a new
 * point in time (before that it is refused).
 */
struct fleece_ctx {
	struct kref kref;
	struct list_head registry_node;	/* while in the registry */
	struct list_head targets;	/* fleece_target_links, registry lock */
	dev_t origin_dev;
	dev_t fleece_dev;
	struct block_device *origin_bdev;
	struct block_device *fleece_bdev;

	sector_t origin_offset;		/* where the region starts on the origin */
	sector_t region_sectors;
	unsigned int chunk_sectors;
	unsigned int chunk_shift;
	unsigned long nr_chunks;
	struct fleece_chunk_state state;

	atomic64_t nr_copied;		/* copied and not yet released */
	atomic64_t nr_released;
	atomic64_t cbw_count;		/* copies started */
	atomic64_t cbw_errors;
	/* Per pair, so that one failing fleece device cannot mute another's. */
	struct ratelimit_state error_rs;

	/*
	 * Policy of the origin table that resumed last.  Each copy takes its
	 * own copy of it when it is asked for (struct fleece_region): a reload
	 * never changes the rules of a copy under way.
	 */
	bool fail_origin_writes;
	unsigned int cbw_timeout_ms;

	/*
	 * Set once, never cleared: smp_store_release() in
	 * fleece_ctx_set_invalid(), smp_load_acquire() in fleece_ctx_invalid().
	 * The copy engine sets it under a bucket lock, before a chunk that an
	 * origin write has reached can be taken from the origin by the view.
	 */
	bool invalid;
	bool announced;			/* fleece_ctx_invalidate() ran; @lock */
	bool started;			/* the point in time has been taken */
	/*
	 * Chunks released at the point in time by a track_store (also in
	 * @nr_released): set once under the registry lock, before @started.
	 */
	unsigned long nr_track_released;
	bool dying;			/* no origin target left; registry lock */
	unsigned int nr_origins;	/* bound origin targets, registry lock */

	/*
	 * @lock protects @nr_live, @held, @deferred, the copy counters and
	 * slots, @slot_waiters and @origin_readers.  Lock order: a bucket
	 * lock, then @lock.
	 */
	spinlock_t lock;
	unsigned int nr_live;		/* resumed origin targets */
	struct bio_list held;		/* view reads waiting for a live origin */
	struct bio_list deferred;	/* bios the worker maps again */
	unsigned int nr_copies;		/* copies asked for and not ended */
	unsigned int nr_abandoned;	/* of those, abandoned by their timeout */
	unsigned int copy_slots;	/* free slots: bound the copies' memory */
	struct list_head slot_waiters;	/* regions whose copy waits for a slot */
	struct list_head origin_readers; /* fleece_bios of view reads on it */
	atomic_t origin_reads;		/* view reads in flight on the origin */
	wait_queue_head_t wait;

	struct workqueue_struct *wq;	/* copy steps, timeouts, the worker */
	struct workqueue_struct *start_wq; /* copy starts, which allocate */
	struct work_struct worker;
	struct work_struct event_work;

	struct dm_io_client *io_client;
	mempool_t buf_pool;		/* chunk buffers of copies */
	spinlock_t buf_lock;		/* protects the three below */
	struct list_head buf_cache;	/* free chunk buffers kept for reuse */
	unsigned int buf_cached;
	unsigned int buf_cache_max;
	mempool_t region_pool;
	struct fleece_bucket buckets[];
};

/*
 * Every bio of both targets carries this (per_io_data_size), so that the
 * worker can map deferred bios again and the view knows what it reads.
 *
 * A view read of pending chunks that goes to the origin is on
 * ctx->origin_readers, under ctx->lock, with the chunks it reads: origin
 * writes to those chunks wait until it ends.
 */
struct fleece_bio {
	struct dm_target *ti;
	bool is_view;
	bool on_origin;			/* on ctx->origin_readers */
	bool blocking;			/* something waits for it to end */
	bool released_copied;		/* view discard: released copied data */
	struct list_head reading;
	unsigned long first, last;	/* the chunks it reads */
};

static inline struct fleece_bio *fleece_bio(struct bio *bio)
{
	return dm_per_bio_data(bio, sizeof(struct fleece_bio));
}

/* dm-fleece-ctx.c */
struct fleece_ctx *fleece_ctx_bind(struct fleece_target_link *link,
				   struct dm_dev *origin, struct dm_dev *fleece,
				   sector_t origin_offset,
				   unsigned int chunk_sectors);
struct fleece_ctx *fleece_ctx_find_live(struct fleece_target_link *link,
					struct dm_dev *origin,
					struct dm_dev *fleece);
void fleece_ctx_unbind(struct fleece_ctx *ctx, struct fleece_target_link *link,
		       bool is_origin);
void fleece_ctx_origin_resume(struct fleece_ctx *ctx,
			      struct block_device *track_store);
void fleece_ctx_origin_suspend(struct fleece_ctx *ctx);
__printf(3, 4)
void fleece_ctx_error(struct fleece_ctx *ctx, bool limit, const char *fmt, ...);
void fleece_ctx_invalidate(struct fleece_ctx *ctx, const char *why);
void fleece_ctx_defer(struct fleece_ctx *ctx, struct bio *bio);
void fleece_ctx_defer_list(struct fleece_ctx *ctx, struct bio_list *bios);

static inline bool fleece_ctx_invalid(struct fleece_ctx *ctx)
{
	/* Pairs with smp_store_release() in fleece_ctx_set_invalid(). */
	return smp_load_acquire(&ctx->invalid);
}

/*
 * The view can no longer be trusted: from here on origin writes pass and
 * view reads fail.  Any context, any lock; fleece_ctx_invalidate() must
 * follow, outside the locks, to let waiting bios go and to tell userspace.
 */
static inline void fleece_ctx_set_invalid(struct fleece_ctx *ctx)
{
	/* Pairs with smp_load_acquire() in fleece_ctx_invalid(). */
	smp_store_release(&ctx->invalid, true);
}

static inline unsigned long fleece_chunk_of(struct fleece_ctx *ctx,
					    struct dm_target *ti,
					    struct bio *bio)
{
	return dm_target_offset(ti, bio->bi_iter.bi_sector) >> ctx->chunk_shift;
}

/* The chunk of @bio's last sector. */
static inline unsigned long fleece_last_chunk_of(struct fleece_ctx *ctx,
						 struct dm_target *ti,
						 struct bio *bio)
{
	sector_t end = dm_target_offset(ti, bio_end_sector(bio));

	return (end - 1) >> ctx->chunk_shift;
}

static inline sector_t fleece_chunk_start(struct fleece_ctx *ctx,
					  unsigned long chunk)
{
	return (sector_t)chunk << ctx->chunk_shift;
}

/* Length of @chunk: the last one is short when the region is not aligned. */
static inline sector_t fleece_chunk_len(struct fleece_ctx *ctx,
					unsigned long chunk)
{
	sector_t start = fleece_chunk_start(ctx, chunk);

	return min_t(sector_t, ctx->chunk_sectors, ctx->region_sectors - start);
}

static inline bool fleece_chunk_done(struct fleece_ctx *ctx,
				     unsigned long chunk)
{
	return test_bit_acquire(chunk, ctx->state.done);
}

static inline bool fleece_chunk_released(struct fleece_ctx *ctx,
					 unsigned long chunk)
{
	return test_bit_acquire(chunk, ctx->state.released);
}

void fleece_chunk_set_copied(struct fleece_ctx *ctx, unsigned long chunk);
bool fleece_chunk_set_released(struct fleece_ctx *ctx, unsigned long chunk);

/**
 * fleece_bio_cut() - end @bio with chunk @last
 * @ctx: the context
 * @bio: a read or a write of the context's targets, in its first mapping:
 *	dm core maps the rest as a new bio.  Bios that wait are cut to one
 *	chunk first, so a bio mapped again is never cut.  Discards,
 *	write-zeroes and secure erases are never cut: dm core sends them as
 *	duplicate bios, which dm_accept_partial_bio() must not be used on.
 * @last: the chunk to end with
 */
static inline void fleece_bio_cut(struct fleece_ctx *ctx, struct bio *bio,
				  unsigned long last)
{
	struct dm_target *ti = fleece_bio(bio)->ti;
	sector_t off = dm_target_offset(ti, bio->bi_iter.bi_sector);
	sector_t end = fleece_chunk_start(ctx, last + 1);

	WARN_ON_ONCE(bio_op(bio) != REQ_OP_READ && bio_op(bio) != REQ_OP_WRITE);
	if (off + bio_sectors(bio) > end)
		dm_accept_partial_bio(bio, end - off);
}

/* dm-fleece-cbw.c */
int fleece_origin_write(struct fleece_ctx *ctx, struct bio *bio,
			unsigned long chunk);
int fleece_origin_extent(struct fleece_ctx *ctx, struct bio *bio,
			 unsigned long first, unsigned long last);
int fleece_view_read_pending(struct fleece_ctx *ctx, struct bio *bio,
			     unsigned long first, unsigned long last);
int fleece_view_release(struct fleece_ctx *ctx, struct bio *bio,
			unsigned long first, unsigned long last,
			unsigned long *released, bool *was_copied);
void fleece_view_read_done(struct fleece_ctx *ctx, struct bio *bio);
void fleece_worker(struct work_struct *work);
void fleece_cbw_release_all(struct fleece_ctx *ctx);
unsigned long fleece_cbw_release_unused(struct fleece_ctx *ctx,
					unsigned long first, unsigned long last);
bool fleece_cbw_quiet(struct fleece_ctx *ctx);
int fleece_cbw_module_init(void);
void fleece_cbw_module_exit(void);
int fleece_cbw_init(struct fleece_ctx *ctx);
void fleece_cbw_exit(struct fleece_ctx *ctx);

/* dm-fleece-origin.c, dm-fleece-view.c */
int fleece_origin_map_bio(struct dm_target *ti, struct bio *bio);
int fleece_view_map_bio(struct dm_target *ti, struct bio *bio);
int fleece_origin_register(void);
void fleece_origin_unregister(void);
int fleece_view_register(void);
void fleece_view_unregister(void);

#endif /* DM_FLEECE_H */
