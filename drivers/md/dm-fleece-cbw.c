// SPDX-License-Identifier: GPL-2.0
/*
 * dm-fleece: the copy-before-write engine.
 *
 * A chunk that is pending and busy has one in-flight region descriptor,
 * hashed by chunk number.  It records the one copy of the chunk (never two),
 * the view reads that are reading the chunk from the origin, and the bios
 * that must wait: origin writes until the copy is done and no view read is
 * on the origin any more, view reads until the copy is done, view discards
 * until the descriptor is gone.  When the descriptor completes, its waiting
 * bios go to the worker, which maps them again against the new chunk state.
 *
 * Chunks that are not pending never reach this file.
 */

#include <linux/hash.h>
#include <linux/log2.h>
#include <linux/slab.h>

#include "dm-fleece.h"

#define FLEECE_MIN_REGIONS	64
#define FLEECE_COPY_BYTES	(64 << 20)	/* bound on copies in flight */
#define FLEECE_MAX_COPIES	256

struct fleece_region {
	struct hlist_node node;
	struct fleece_ctx *ctx;
	unsigned long chunk;
	struct bio_list waiters;
	unsigned int readers;	/* view reads on the origin */
	bool copying;		/* the kcopyd job has not ended */
	bool copied;		/* the copy succeeded; marked once no reader is left */
	bool abandoned;		/* timed out: its waiters were dealt with */
	struct delayed_work timeout;
};

static struct kmem_cache *fleece_region_cache;

static void fleece_copy_timeout(struct work_struct *work);

static struct fleece_bucket *fleece_bucket(struct fleece_ctx *ctx,
					   unsigned long chunk)
{
	return &ctx->buckets[hash_long(chunk, FLEECE_HASH_BITS)];
}

static struct fleece_region *fleece_region_find(struct fleece_bucket *b,
						unsigned long chunk)
{
	struct fleece_region *r;

	hlist_for_each_entry(r, &b->regions, node)
		if (r->chunk == chunk)
			return r;
	return NULL;
}

static struct fleece_region *fleece_region_new(struct fleece_ctx *ctx,
					       struct fleece_bucket *b,
					       struct fleece_region *r,
					       unsigned long chunk)
{
	r->ctx = ctx;
	r->chunk = chunk;
	bio_list_init(&r->waiters);
	r->readers = 0;
	r->copying = false;
	r->copied = false;
	r->abandoned = false;
	INIT_DELAYED_WORK(&r->timeout, fleece_copy_timeout);
	hlist_add_head(&r->node, &b->regions);
	return r;
}

/*
 * Let go of the waiting bios: failed origin writes end here, everything
 * else is mapped again by the worker.
 */
static void fleece_dispatch(struct fleece_ctx *ctx, struct bio_list *bios,
			    bool fail_writes)
{
	struct bio *bio;

	while ((bio = bio_list_pop(bios))) {
		if (fail_writes && !fleece_bio(bio)->is_view)
			bio_io_error(bio);
		else
			fleece_ctx_defer(ctx, bio);
	}
}

/*
 * Called with the bucket lock held when a region has no copy and no reader
 * left: the chunk becomes copied if the copy succeeded (only now, so that
 * no origin write passes while a view read is on the origin), the region
 * leaves the hash, and its waiters are moved to @out.
 */
static void fleece_region_unhash(struct fleece_region *r, struct bio_list *out)
{
	if (r->copied)
		fleece_chunk_set_copied(r->ctx, r->chunk);
	hlist_del(&r->node);
	bio_list_merge(out, &r->waiters);
	bio_list_init(&r->waiters);
}

static void fleece_copies_dec(struct fleece_ctx *ctx)
{
	unsigned long flags;

	/* Under the lock: the waiter in fleece_ctx_unbind() may free @ctx. */
	spin_lock_irqsave(&ctx->lock, flags);
	if (!--ctx->nr_copies)
		wake_up(&ctx->wait);
	spin_unlock_irqrestore(&ctx->lock, flags);
}

/* --- the copy ---------------------------------------------------------- */

static void fleece_copy_done(int read_err, unsigned long write_err,
			     void *context)
{
	struct fleece_region *r = context;
	struct fleece_ctx *ctx = r->ctx;
	struct fleece_bucket *b = fleece_bucket(ctx, r->chunk);
	bool ok = !read_err && !write_err, fail_writes = false, gone = false;
	bool invalidate = false;
	struct bio_list waiters;
	unsigned long flags;

	/* After this, the timeout handler is neither running nor pending. */
	cancel_delayed_work_sync(&r->timeout);
	bio_list_init(&waiters);

	spin_lock_irqsave(&b->lock, flags);
	r->copying = false;
	if (ok && (!r->abandoned || ctx->fail_origin_writes)) {
		/*
		 * A copy that ended after its timeout is still good under
		 * fail_origin_writes: no write reached the chunk meanwhile.
		 */
		r->copied = true;
	} else if (!ok && !r->abandoned) {
		atomic64_inc(&ctx->cbw_errors);
		if (ctx->fail_origin_writes)
			fail_writes = true;
		else
			invalidate = true;
		/* Failed writes end, or pass once invalid; reads map again. */
		bio_list_merge(&waiters, &r->waiters);
		bio_list_init(&r->waiters);
	}
	if (!r->readers) {
		fleece_region_unhash(r, &waiters);
		gone = true;
	}
	spin_unlock_irqrestore(&b->lock, flags);

	if (!ok)
		DMERR_LIMIT("copy-before-write of chunk %lu failed (read %d, write %lu)%s",
			    r->chunk, read_err, write_err,
			    r->abandoned ? " after its timeout" : "");
	if (invalidate)
		fleece_ctx_invalidate(ctx, "copy-before-write failed");
	fleece_dispatch(ctx, &waiters, fail_writes);
	if (gone)
		mempool_free(r, &ctx->region_pool);

	up(&ctx->copy_slots);
	fleece_copies_dec(ctx);
}

/*
 * The copy took longer than cbw_timeout_ms: it counts as failed.  The region
 * stays hashed until the copy really ends, so that no second copy of the
 * chunk starts while the first may still write the fleece device.
 */
static void fleece_copy_timeout(struct work_struct *work)
{
	struct fleece_region *r = container_of(to_delayed_work(work),
					       struct fleece_region, timeout);
	struct fleece_ctx *ctx = r->ctx;
	struct fleece_bucket *b = fleece_bucket(ctx, r->chunk);
	struct bio_list waiters;
	unsigned long flags;

	bio_list_init(&waiters);
	spin_lock_irqsave(&b->lock, flags);
	if (!r->copying || r->abandoned) {
		spin_unlock_irqrestore(&b->lock, flags);
		return;
	}
	r->abandoned = true;
	bio_list_merge(&waiters, &r->waiters);
	bio_list_init(&r->waiters);
	spin_unlock_irqrestore(&b->lock, flags);

	atomic64_inc(&ctx->cbw_errors);
	DMERR_LIMIT("copy-before-write of chunk %lu timed out after %u ms",
		    r->chunk, ctx->cbw_timeout_ms);
	if (!ctx->fail_origin_writes)
		fleece_ctx_invalidate(ctx, "copy-before-write timed out");
	fleece_dispatch(ctx, &waiters, ctx->fail_origin_writes);
}

static void fleece_copy_start(struct fleece_region *r)
{
	struct fleece_ctx *ctx = r->ctx;
	unsigned int timeout_ms = READ_ONCE(ctx->cbw_timeout_ms);
	struct dm_io_region from, to;
	unsigned long flags;

	down(&ctx->copy_slots);
	spin_lock_irqsave(&ctx->lock, flags);
	ctx->nr_copies++;
	spin_unlock_irqrestore(&ctx->lock, flags);
	atomic64_inc(&ctx->cbw_count);

	from.bdev = ctx->origin_bdev;
	from.sector = fleece_chunk_start(ctx, r->chunk);
	from.count = fleece_chunk_len(ctx, r->chunk);
	to.bdev = ctx->fleece_bdev;
	to.sector = from.sector;
	to.count = from.count;

	if (timeout_ms)
		queue_delayed_work(ctx->wq, &r->timeout,
				   msecs_to_jiffies(timeout_ms));
	dm_kcopyd_copy(ctx->kcopyd, &from, 1, &to, 0, fleece_copy_done, r);
}

/* --- entry points from the targets -------------------------------------- */

/**
 * fleece_origin_write() - an origin write to a chunk that looked pending
 * @ctx: the context
 * @bio: a write, write-zeroes or secure erase within @chunk
 * @chunk: the chunk
 *
 * Return: a DM_MAPIO_* value; SUBMITTED when @bio waits for the copy.
 */
int fleece_origin_write(struct fleece_ctx *ctx, struct bio *bio,
			unsigned long chunk)
{
	struct fleece_bucket *b = fleece_bucket(ctx, chunk);
	struct fleece_region *r, *spare;
	bool start = false;
	unsigned long flags;

	spare = mempool_alloc(&ctx->region_pool, GFP_NOIO);

	spin_lock_irqsave(&b->lock, flags);
	if (fleece_chunk_done(ctx, chunk) || fleece_ctx_invalid(ctx)) {
		spin_unlock_irqrestore(&b->lock, flags);
		mempool_free(spare, &ctx->region_pool);
		return DM_MAPIO_REMAPPED;
	}
	r = fleece_region_find(b, chunk);
	if (r && r->abandoned) {
		/* Only under fail_origin_writes: the copy is stuck. */
		spin_unlock_irqrestore(&b->lock, flags);
		mempool_free(spare, &ctx->region_pool);
		atomic64_inc(&ctx->cbw_errors);
		return DM_MAPIO_KILL;
	}
	if (!r) {
		r = fleece_region_new(ctx, b, spare, chunk);
		spare = NULL;
	}
	bio_list_add(&r->waiters, bio);
	if (!r->copying && !r->copied) {
		r->copying = true;
		start = true;
	}
	spin_unlock_irqrestore(&b->lock, flags);

	if (spare)
		mempool_free(spare, &ctx->region_pool);
	if (start)
		fleece_copy_start(r);
	return DM_MAPIO_SUBMITTED;
}

/**
 * fleece_view_read_pending() - a view read of a chunk that looked pending
 * @ctx: the context
 * @bio: a read within @chunk
 * @chunk: the chunk
 *
 * The read goes to the origin as a reader of the chunk's region, which keeps
 * origin writes to the chunk waiting until it ends; or to the fleece device
 * if the chunk got copied meanwhile; or waits for a copy under way; or, if
 * no origin target is live (a suspend, perhaps a table swap), for a resume.
 *
 * Return: a DM_MAPIO_* value; REMAPPED to the origin sets @bio's reader_of.
 */
int fleece_view_read_pending(struct fleece_ctx *ctx, struct bio *bio,
			     unsigned long chunk)
{
	struct fleece_bucket *b = fleece_bucket(ctx, chunk);
	struct fleece_region *r, *spare;
	int ret = DM_MAPIO_SUBMITTED;
	unsigned long flags;

	spare = mempool_alloc(&ctx->region_pool, GFP_NOIO);

	spin_lock_irqsave(&b->lock, flags);
	if (fleece_ctx_invalid(ctx) || fleece_chunk_released(ctx, chunk)) {
		ret = DM_MAPIO_KILL;
		goto out;
	}
	if (fleece_chunk_done(ctx, chunk)) {
		ret = DM_MAPIO_REMAPPED;	/* the caller maps it to the fleece */
		goto out;
	}
	r = fleece_region_find(b, chunk);
	if (r && r->copied) {
		ret = DM_MAPIO_REMAPPED;	/* the data is in the fleece */
		goto out;
	}
	if (r && r->copying && !r->abandoned) {
		bio_list_add(&r->waiters, bio);
		goto out;
	}

	spin_lock(&ctx->lock);
	if (ctx->invalid) {
		ret = DM_MAPIO_KILL;
	} else if (!ctx->nr_live) {
		bio_list_add(&ctx->held, bio);
	} else {
		atomic_inc(&ctx->origin_reads);
		if (!r) {
			r = fleece_region_new(ctx, b, spare, chunk);
			spare = NULL;
		}
		r->readers++;
		fleece_bio(bio)->reader_of = r;
		ret = DM_MAPIO_REMAPPED;
	}
	spin_unlock(&ctx->lock);
out:
	spin_unlock_irqrestore(&b->lock, flags);
	if (spare)
		mempool_free(spare, &ctx->region_pool);
	return ret;
}

/**
 * fleece_view_read_done() - a view read of the origin ended
 * @ctx: the context
 * @bio: the read; its reader_of is cleared
 *
 * May run in interrupt context.
 */
void fleece_view_read_done(struct fleece_ctx *ctx, struct bio *bio)
{
	struct fleece_bio *fb = fleece_bio(bio);
	struct fleece_region *r = fb->reader_of;
	struct fleece_bucket *b = fleece_bucket(ctx, r->chunk);
	struct bio_list waiters;
	unsigned long flags;
	bool gone = false;

	fb->reader_of = NULL;
	bio_list_init(&waiters);
	spin_lock_irqsave(&b->lock, flags);
	if (!--r->readers && !r->copying) {
		fleece_region_unhash(r, &waiters);
		gone = true;
	}
	spin_unlock_irqrestore(&b->lock, flags);

	fleece_dispatch(ctx, &waiters, false);
	if (gone)
		mempool_free(r, &ctx->region_pool);
	if (atomic_dec_and_test(&ctx->origin_reads))
		wake_up(&ctx->wait);
}

/**
 * fleece_view_release() - a view discard covers all of @chunk
 * @ctx: the context
 * @bio: the discard
 * @chunk: the chunk
 * @released_now: set when this discard released the chunk
 * @was_copied: set when the chunk's fleece range holds data to discard
 *
 * Return: a DM_MAPIO_* value; SUBMITTED when @bio waits for a busy chunk.
 */
int fleece_view_release(struct fleece_ctx *ctx, struct bio *bio,
			unsigned long chunk, bool *released_now,
			bool *was_copied)
{
	struct fleece_bucket *b = fleece_bucket(ctx, chunk);
	struct fleece_region *r;
	unsigned long flags;
	int ret = DM_MAPIO_REMAPPED;

	*released_now = false;
	*was_copied = false;
	spin_lock_irqsave(&b->lock, flags);
	r = fleece_region_find(b, chunk);
	if (fleece_ctx_invalid(ctx)) {
		ret = DM_MAPIO_KILL;
	} else if (r) {
		bio_list_add(&r->waiters, bio);
		ret = DM_MAPIO_SUBMITTED;
	} else if (!fleece_chunk_released(ctx, chunk)) {
		*released_now = true;
		*was_copied = fleece_chunk_set_released(ctx, chunk);
	}
	spin_unlock_irqrestore(&b->lock, flags);
	return ret;
}

/* --- the worker -------------------------------------------------------- */

/**
 * fleece_worker() - map deferred bios again and submit them
 * @work: the context's worker
 */
void fleece_worker(struct work_struct *work)
{
	struct fleece_ctx *ctx = container_of(work, struct fleece_ctx, worker);
	struct bio_list bios;
	struct bio *bio;
	unsigned long flags;

	spin_lock_irqsave(&ctx->lock, flags);
	bios = ctx->deferred;
	bio_list_init(&ctx->deferred);
	spin_unlock_irqrestore(&ctx->lock, flags);

	while ((bio = bio_list_pop(&bios))) {
		struct fleece_bio *fb = fleece_bio(bio);
		int r;

		if (fb->is_view)
			r = fleece_view_map_bio(fb->ti, bio);
		else
			r = fleece_origin_map_bio(fb->ti, bio);

		switch (r) {
		case DM_MAPIO_REMAPPED:
			dm_submit_bio_remap(bio, NULL);
			break;
		case DM_MAPIO_KILL:
			bio_io_error(bio);
			break;
		default:
			break;	/* waits again, or was completed */
		}
	}
}

/* --- setup ------------------------------------------------------------- */

int fleece_cbw_init(struct fleece_ctx *ctx)
{
	unsigned int slots;
	int r;

	slots = clamp_t(unsigned int,
			FLEECE_COPY_BYTES / (ctx->chunk_sectors << SECTOR_SHIFT),
			1, FLEECE_MAX_COPIES);
	sema_init(&ctx->copy_slots, slots);
	INIT_WORK(&ctx->worker, fleece_worker);

	r = mempool_init_slab_pool(&ctx->region_pool, FLEECE_MIN_REGIONS,
				   fleece_region_cache);
	if (r)
		return r;

	ctx->wq = alloc_workqueue("kfleeced", WQ_MEM_RECLAIM, 0);
	if (!ctx->wq) {
		r = -ENOMEM;
		goto bad_wq;
	}

	ctx->kcopyd = dm_kcopyd_client_create(NULL);
	if (IS_ERR(ctx->kcopyd)) {
		r = PTR_ERR(ctx->kcopyd);
		goto bad_kcopyd;
	}
	return 0;

bad_kcopyd:
	destroy_workqueue(ctx->wq);
bad_wq:
	mempool_exit(&ctx->region_pool);
	return r;
}

void fleece_cbw_exit(struct fleece_ctx *ctx)
{
	dm_kcopyd_client_destroy(ctx->kcopyd);
	destroy_workqueue(ctx->wq);
	mempool_exit(&ctx->region_pool);
}

int fleece_cbw_module_init(void)
{
	fleece_region_cache = kmem_cache_create("dm_fleece_region",
						sizeof(struct fleece_region),
						0, 0, NULL);
	return fleece_region_cache ? 0 : -ENOMEM;
}

void fleece_cbw_module_exit(void)
{
	kmem_cache_destroy(fleece_region_cache);
}
