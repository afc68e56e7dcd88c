// SPDX-License-Identifier: GPL-2.0
/*
 * dm-fleece: the copy-before-write engine.
 *
 * A pending chunk with a copy asked for, or with bios waiting, has one
 * in-flight region descriptor, hashed by chunk number.  It records the one
 * copy of the chunk (never two) and the bios that must wait: origin writes
 * until the copy lets them go and no view read is on the origin over the
 * chunk any more, view reads until the copy is done, view discards until
 * the descriptor is gone.  When the descriptor completes, its waiting bios
 * are mapped again against the new chunk state.
 *
 * View reads of pending chunks go to the origin whole, over a run of
 * chunks, and are tracked per bio on the context's list of origin readers
 * rather than per chunk: a backup reads every chunk once, and a descriptor
 * per chunk read would cost more than the read.  Origin writes look at that
 * list only when they would otherwise go on, which is after a copy.
 *
 * The invariant that keeps the view right, enforced in
 * fleece_origin_readable() and in every path that ends or abandons a copy:
 *
 *   A chunk may be read from the origin by the view only while no origin
 *   write to it has passed since the point in time.
 *
 * So a copy's policy is fixed when the copy is asked for (a reload does not
 * change it), a region records when a write passed ahead of its unfinished
 * copy (@writes_passed), and once one has, the copy's failure or timeout
 * marks the view invalid under the bucket lock, before the chunk can look
 * readable from the origin, whatever policy is now in force.
 *
 * Nothing here sleeps in .map: a copy is started by a work item, after it
 * got one of a bounded number of slots (the bound on the copies' memory);
 * until then its region waits on a queue.  Its timeout counts from the
 * first write that asked for it, whether or not it has a slot yet.
 *
 * Chunks that are not pending never reach this file.
 */

#include <linux/dm-io.h>
#include <linux/hash.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>

#include "dm-fleece.h"
#include "dm-fleece-compat.h"

#define FLEECE_MIN_REGIONS	64
#define FLEECE_COPY_BYTES	(64 << 20)	/* bound on copies in flight */
#define FLEECE_MAX_COPIES	256
#define FLEECE_CACHE_BYTES	(8 << 20)	/* idle chunk buffers kept */

/*
 * A copy waits for a slot, then reads the old chunk from the origin into a
 * buffer, then writes it from there to the fleece device.  Under the
 * default policy the origin writes go on as soon as the old data is in
 * memory: a failure of the fleece write then breaks the snapshot, as any
 * CBW failure does.  Under fail_origin_writes they wait until the data is
 * in the fleece.
 */
enum fleece_copy_phase {
	FLEECE_COPY_START,	/* waiting for a slot, or for its start work */
	FLEECE_COPY_READ,
	FLEECE_COPY_WRITE,
};

/* How a copy ended. */
enum fleece_copy_outcome {
	FLEECE_COPY_OK,		/* the old data is in the fleece device */
	FLEECE_COPY_FAILED,	/* an I/O error */
	FLEECE_COPY_TIMED_OUT,	/* its timeout fired before it got a slot */
	FLEECE_COPY_DROPPED,	/* no longer wanted: view invalid, or abandoned */
};

struct fleece_region {
	struct hlist_node node;
	struct fleece_ctx *ctx;
	unsigned long chunk;

	/* Under the bucket lock: */
	struct bio_list writes;		/* origin writes waiting */
	struct bio_list waiters;	/* view reads and discards waiting */
	bool copying;		/* a copy was asked for and has not ended */
	bool in_memory;		/* the old data is in @buf */
	bool copied;		/* the old data is in the fleece device */
	bool writes_passed;	/* an origin write went on before @copied */
	bool abandoned;		/* timed out under way: its bios were let go */
	bool fail_writes;	/* the copy's policy: fail_origin_writes */
	bool has_deadline;
	unsigned long deadline;	/* jiffies: the copy's timeout */

	/* Under ctx->lock: */
	struct list_head slot_wait;	/* on ctx->slot_waiters */
	bool has_slot;

	/* Only the copy's own work items: */
	enum fleece_copy_phase phase;
	unsigned long io_error;	/* of the phase that just ended */
	void *buf;
	struct work_struct step;	/* the copy's next phase */
	struct delayed_work timeout;	/* also: a kick on invalidation */
};

static struct kmem_cache *fleece_region_cache;

static void fleece_copy_step(struct work_struct *work);
static void fleece_copy_expire(struct work_struct *work);

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
	memset(r, 0, sizeof(*r));
	r->ctx = ctx;
	r->chunk = chunk;
	bio_list_init(&r->writes);
	bio_list_init(&r->waiters);
	INIT_LIST_HEAD(&r->slot_wait);
	INIT_WORK(&r->step, fleece_copy_step);
	INIT_DELAYED_WORK(&r->timeout, fleece_copy_expire);
	hlist_add_head(&r->node, &b->regions);
	return r;
}

static void fleece_map_again(struct bio *bio);

/*
 * Let go of waiting bios, in process context: failed origin writes end
 * here, everything else is mapped again at once (not through the worker: a
 * writer waiting for a copy should not also wait for another work item).
 */
static void fleece_dispatch(struct bio_list *bios, bool fail_writes)
{
	struct bio *bio;

	while ((bio = bio_list_pop(bios))) {
		if (fail_writes && !fleece_bio(bio)->is_view)
			bio_io_error(bio);
		else
			fleece_map_again(bio);
	}
}

/* Move every bio waiting on @r to @out.  Called with the bucket lock held. */
static void fleece_region_take_bios(struct fleece_region *r, struct bio_list *out)
{
	bio_list_merge(out, &r->writes);
	bio_list_merge(out, &r->waiters);
	bio_list_init(&r->writes);
	bio_list_init(&r->waiters);
}

/**
 * fleece_origin_read_covers() - is a view read on the origin over @chunk?
 * @ctx: the context
 * @chunk: a chunk whose bucket lock the caller holds
 *
 * Marks the reads found as blocking, so that their end settles the chunk.
 *
 * The list is tested without @ctx->lock first.  That is enough: a view read
 * is on the list before it looks at its chunks, each under the chunk's
 * bucket lock, and cuts itself short of a chunk with a region or a release;
 * callers are about a chunk with a region, or about to release it, both
 * set up under the same bucket lock.
 *
 * Return: true if such a read was found.
 */
static bool fleece_origin_read_covers(struct fleece_ctx *ctx,
				      unsigned long chunk)
{
	struct fleece_bio *fb;
	bool found = false;

	if (list_empty(&ctx->origin_readers))
		return false;
	spin_lock(&ctx->lock);
	list_for_each_entry(fb, &ctx->origin_readers, reading) {
		if (chunk >= fb->first && chunk <= fb->last) {
			fb->blocking = true;
			found = true;
		}
	}
	spin_unlock(&ctx->lock);
	return found;
}

/*
 * Does the copy let origin writes go on?  By the copy's own policy, not the
 * one in force now.  Called with the bucket lock held.
 */
static bool fleece_region_copy_safe(struct fleece_region *r)
{
	return r->copied || (r->in_memory && !r->fail_writes);
}

/* May origin writes to the chunk go on?  Called with the bucket lock held. */
static bool fleece_region_writable(struct fleece_region *r)
{
	return fleece_region_copy_safe(r) &&
	       !fleece_origin_read_covers(r->ctx, r->chunk);
}

/*
 * May a view read take @chunk from the origin?  This is where the invariant
 * is enforced: not once the chunk is done, nor once a write to it has
 * passed, nor while a copy is under way that may yet let one pass.  A copy
 * abandoned by its timeout without a write passing lets none pass: it
 * could only be under fail_origin_writes, which fails them.  The caller
 * has checked that the context is not invalid, under the same bucket lock.
 */
static bool fleece_origin_readable(struct fleece_ctx *ctx,
				   struct fleece_bucket *b, unsigned long chunk)
{
	struct fleece_region *r;

	if (fleece_chunk_done(ctx, chunk))
		return false;
	r = fleece_region_find(b, chunk);
	return !r || (!r->copied && !r->writes_passed &&
		      (!r->copying || r->abandoned));
}

/**
 * fleece_region_settle() - let go of what a region no longer holds back
 * @r: the region, whose bucket lock the caller holds
 * @out: receives the bios that may go on
 *
 * Once neither a copy nor a view read of the origin is under way, the chunk
 * becomes copied if the copy succeeded (only now, so that no origin write
 * passes while a view read is on the origin), and the region leaves the
 * hash.  Writes let go before the copy is done are recorded: from then on
 * the chunk must not be read from the origin.
 *
 * Return: true if the region left the hash; the caller frees it.
 */
static bool fleece_region_settle(struct fleece_region *r, struct bio_list *out)
{
	bool reading = fleece_origin_read_covers(r->ctx, r->chunk);

	if (!reading && fleece_region_copy_safe(r) &&
	    !bio_list_empty(&r->writes)) {
		if (!r->copied)
			r->writes_passed = true;
		bio_list_merge(out, &r->writes);
		bio_list_init(&r->writes);
	}
	if (r->copying || reading)
		return false;

	if (r->copied)
		fleece_chunk_set_copied(r->ctx, r->chunk);
	hlist_del(&r->node);
	fleece_region_take_bios(r, out);
	return true;
}

/* --- slots ------------------------------------------------------------- */

/*
 * A copy holds a slot from its start until its I/O really ends, abandoned
 * or not.  Copies that find none wait on @ctx->slot_waiters, in order; a
 * freed slot goes to the first of them.  Called with @ctx->lock held.
 */
static void fleece_slot_put(struct fleece_ctx *ctx)
{
	struct fleece_region *next;

	lockdep_assert_held(&ctx->lock);
	next = list_first_entry_or_null(&ctx->slot_waiters,
					struct fleece_region, slot_wait);
	if (!next) {
		ctx->copy_slots++;
		return;
	}
	/* A waiting region is freed only by whoever takes it off the list. */
	list_del_init(&next->slot_wait);
	next->has_slot = true;
	queue_work(ctx->start_wq, &next->step);
}

/**
 * fleece_cbw_quiet() - has every copy that is not abandoned ended?
 * @ctx: the context
 *
 * After a suspend the target must do no I/O of its own: postsuspend waits
 * for this.  Copies abandoned by their timeout are not waited for: that
 * wait would have no bound.
 *
 * Return: true if so.
 */
bool fleece_cbw_quiet(struct fleece_ctx *ctx)
{
	bool quiet;

	spin_lock_irq(&ctx->lock);
	quiet = ctx->nr_copies == ctx->nr_abandoned;
	spin_unlock_irq(&ctx->lock);
	return quiet;
}

/* --- the copy ---------------------------------------------------------- */

/**
 * fleece_copy_failed() - a copy failed or timed out with bios waiting on it
 * @r: the region, whose bucket lock the caller holds
 * @out: receives the bios waiting on @r
 *
 * The invariant decides: once a write has passed ahead of the copy, the
 * view is marked invalid here, before the chunk can look readable from the
 * origin, whatever the policy now in force; otherwise the copy's own
 * policy does.  The caller then calls fleece_ctx_invalidate() or fails the
 * writes in @out.
 *
 * Return: true if the waiting writes must fail (fail_origin_writes).
 */
static bool fleece_copy_failed(struct fleece_region *r, struct bio_list *out)
{
	fleece_region_take_bios(r, out);
	if (r->writes_passed || !r->fail_writes) {
		fleece_ctx_set_invalid(r->ctx);
		return false;
	}
	return true;
}

/*
 * Ask for a copy of @r's chunk: take a slot and start it from a work item,
 * or wait for a slot.  Its policy and timeout are taken now.  Called from
 * .map with the bucket lock held: nothing here sleeps.
 */
static void fleece_copy_request(struct fleece_region *r)
{
	struct fleece_ctx *ctx = r->ctx;
	unsigned int timeout_ms = READ_ONCE(ctx->cbw_timeout_ms);
	bool start;

	r->copying = true;
	r->in_memory = false;
	r->copied = false;
	r->abandoned = false;
	r->fail_writes = READ_ONCE(ctx->fail_origin_writes);
	r->phase = FLEECE_COPY_START;
	r->has_deadline = timeout_ms != 0;
	if (timeout_ms) {
		r->deadline = jiffies + msecs_to_jiffies(timeout_ms);
		queue_delayed_work(ctx->wq, &r->timeout,
				   msecs_to_jiffies(timeout_ms));
	}

	spin_lock(&ctx->lock);
	ctx->nr_copies++;
	start = ctx->copy_slots > 0;
	if (start) {
		ctx->copy_slots--;
		r->has_slot = true;
	} else {
		list_add_tail(&r->slot_wait, &ctx->slot_waiters);
	}
	spin_unlock(&ctx->lock);
	atomic64_inc(&ctx->cbw_count);

	if (start)
		queue_work(ctx->start_wq, &r->step);
}

/* dm-io completion, possibly in interrupt context: go on in the workqueue. */
static void fleece_copy_io_end(unsigned long error, void *context)
{
	struct fleece_region *r = context;

	r->io_error = error;
	queue_work(r->ctx->wq, &r->step);
}

/*
 * @base: where the region starts on @bdev (the origin's may not be at 0).
 * A read is synchronous (the caller is the copy's start work, which goes
 * on with the data); a write reports through fleece_copy_io_end().
 *
 * Return: for a read, 0 or -EIO.
 */
static int fleece_copy_io(struct fleece_region *r, blk_opf_t opf,
			  struct block_device *bdev, sector_t base)
{
	struct fleece_ctx *ctx = r->ctx;
	struct dm_io_region where = {
		.bdev = bdev,
		.sector = base + fleece_chunk_start(ctx, r->chunk),
		.count = fleece_chunk_len(ctx, r->chunk),
	};
	struct dm_io_request req = {
		.bi_opf = opf,
		.notify.fn = op_is_write(opf) ? fleece_copy_io_end : NULL,
		.notify.context = r,
		.client = ctx->io_client,
	};

	if (is_vmalloc_addr(r->buf)) {
		req.mem.type = DM_IO_VMA;
		req.mem.ptr.vma = r->buf;
	} else {
		req.mem.type = DM_IO_KMEM;
		req.mem.ptr.addr = r->buf;
	}
	r->phase = op_is_write(opf) ? FLEECE_COPY_WRITE : FLEECE_COPY_READ;
	return fleece_dm_io(&req, 1, &where);
}

/**
 * fleece_copy_end() - a copy is over
 * @r: the region; freed here if it leaves the hash
 * @outcome: how it ended
 * @in_timeout: called from @r's own timeout work, which cannot wait for
 *	itself; the region is then off the slot queue, so no kick can
 *	requeue that work
 *
 * A copy ends when its I/O has ended, or when it never started: dropped,
 * or timed out while it waited for a slot.  A failure that was not already
 * dealt with by the timeout either invalidates the view or fails the
 * waiting writes: the former whenever a write has passed ahead of the
 * copy, whatever the policy now in force.
 *
 * The copy counters drop last: after that, fleece_ctx_unbind() may free
 * the context.
 */
static void fleece_copy_end(struct fleece_region *r,
			    enum fleece_copy_outcome outcome, bool in_timeout)
{
	struct fleece_ctx *ctx = r->ctx;
	struct fleece_bucket *b = fleece_bucket(ctx, r->chunk);
	bool failed = outcome == FLEECE_COPY_FAILED ||
		      outcome == FLEECE_COPY_TIMED_OUT;
	bool report, invalidate = false, fail_writes = false, had_slot, gone;
	enum fleece_copy_phase phase = r->phase;
	unsigned long chunk = r->chunk;
	void *buf = r->buf;
	struct bio_list out;
	unsigned long flags;

	if (!in_timeout)
		cancel_delayed_work_sync(&r->timeout);
	bio_list_init(&out);

	spin_lock_irqsave(&b->lock, flags);
	report = failed && !r->abandoned;
	r->copying = false;
	r->in_memory = false;
	r->buf = NULL;
	if (outcome == FLEECE_COPY_OK) {
		/*
		 * Abandoned under fail_origin_writes, the copy is still
		 * good: no write reached the chunk meanwhile.
		 */
		if (!r->abandoned || r->fail_writes)
			r->copied = true;
	} else if (report) {
		fail_writes = fleece_copy_failed(r, &out);
		invalidate = !fail_writes;
	}
	spin_lock(&ctx->lock);
	had_slot = r->has_slot;
	r->has_slot = false;
	if (r->abandoned)
		ctx->nr_abandoned--;
	spin_unlock(&ctx->lock);
	r->abandoned = false;
	gone = fleece_region_settle(r, &out);
	spin_unlock_irqrestore(&b->lock, flags);

	if (report) {
		atomic64_inc(&ctx->cbw_errors);
		if (outcome == FLEECE_COPY_TIMED_OUT)
			fleece_ctx_error(ctx, true,
					 "copy-before-write of chunk %lu timed out after %u ms waiting for a copy slot",
					 chunk, READ_ONCE(ctx->cbw_timeout_ms));
		else
			fleece_ctx_error(ctx, true,
					 "copy-before-write of chunk %lu failed %s the %s",
					 chunk,
					 phase == FLEECE_COPY_READ ? "reading" : "writing",
					 phase == FLEECE_COPY_READ ? "origin" : "fleece");
	}
	if (invalidate)
		fleece_ctx_invalidate(ctx, outcome == FLEECE_COPY_TIMED_OUT ?
				      "copy-before-write timed out" :
				      "copy-before-write failed");
	fleece_dispatch(&out, fail_writes);

	if (buf)
		mempool_free(buf, &ctx->buf_pool);
	if (gone)
		mempool_free(r, &ctx->region_pool);

	spin_lock_irqsave(&ctx->lock, flags);
	if (had_slot)
		fleece_slot_put(ctx);
	ctx->nr_copies--;
	/* Under the lock: the waiter in fleece_ctx_unbind() may free @ctx. */
	wake_up(&ctx->wait);
	spin_unlock_irqrestore(&ctx->lock, flags);
}

static void fleece_copy_read_done(struct fleece_region *r);

/* The copy has a slot: allocate its buffer and read the old data. */
static void fleece_copy_begin(struct fleece_region *r)
{
	struct fleece_ctx *ctx = r->ctx;
	struct fleece_bucket *b = fleece_bucket(ctx, r->chunk);
	unsigned long flags;
	unsigned int noio;
	bool wanted;

	spin_lock_irqsave(&b->lock, flags);
	wanted = !r->abandoned && !fleece_ctx_invalid(ctx);
	spin_unlock_irqrestore(&b->lock, flags);
	if (!wanted) {
		fleece_copy_end(r, FLEECE_COPY_DROPPED, false);
		return;
	}

	/*
	 * From start_wq, which does nothing else: waiting here for a buffer
	 * that a copy ending on ctx->wq frees cannot hold that copy up.  The
	 * scope lets a large buffer come from vmalloc without I/O.
	 */
	noio = memalloc_noio_save();
	r->buf = mempool_alloc(&ctx->buf_pool, GFP_KERNEL);
	memalloc_noio_restore(noio);
	/*
	 * Read and go on here: each copy lets its writes go as soon as its
	 * own data is in memory, not after every copy queued before it has
	 * been read too (their steps would run after all the starts).
	 */
	if (fleece_copy_io(r, REQ_OP_READ, ctx->origin_bdev, ctx->origin_offset))
		fleece_copy_end(r, FLEECE_COPY_FAILED, false);
	else
		fleece_copy_read_done(r);
}

/*
 * The old data is in memory: let the writes go if the copy's policy
 * allows, then write the buffer to the fleece device.  Once the view is
 * invalid there is nothing left to keep.
 */
static void fleece_copy_read_done(struct fleece_region *r)
{
	struct fleece_ctx *ctx = r->ctx;
	struct fleece_bucket *b = fleece_bucket(ctx, r->chunk);
	struct bio_list out;
	unsigned long flags;
	bool wanted;

	bio_list_init(&out);
	spin_lock_irqsave(&b->lock, flags);
	wanted = !fleece_ctx_invalid(ctx);
	if (wanted) {
		r->in_memory = true;
		fleece_region_settle(r, &out);	/* copying: @r stays */
	}
	spin_unlock_irqrestore(&b->lock, flags);
	if (!wanted) {
		fleece_copy_end(r, FLEECE_COPY_DROPPED, false);
		return;
	}
	fleece_dispatch(&out, false);
	fleece_copy_io(r, REQ_OP_WRITE, ctx->fleece_bdev, 0);
}

/* The copy's next phase, in process context. */
static void fleece_copy_step(struct work_struct *work)
{
	struct fleece_region *r = container_of(work, struct fleece_region, step);

	switch (r->phase) {
	case FLEECE_COPY_START:
		fleece_copy_begin(r);
		break;
	case FLEECE_COPY_READ:		/* synchronous, in the start */
		WARN_ON_ONCE(1);
		break;
	case FLEECE_COPY_WRITE:
		fleece_copy_end(r, r->io_error ? FLEECE_COPY_FAILED :
						 FLEECE_COPY_OK, false);
		break;
	}
}

/*
 * A copy under way took longer than its timeout: it counts as failed.  Its
 * bios go (writes fail under the copy's fail_origin_writes, else the view
 * is invalid and they pass), but the region stays hashed until the copy
 * really ends, so that no second copy of the chunk starts while the first
 * may still write the fleece device.  Called with the bucket lock held,
 * which it drops.
 */
static void fleece_copy_abandon(struct fleece_region *r, unsigned long flags)
	__releases(&fleece_bucket(r->ctx, r->chunk)->lock)
{
	struct fleece_ctx *ctx = r->ctx;
	struct fleece_bucket *b = fleece_bucket(ctx, r->chunk);
	bool fail_writes, invalidate;
	unsigned long chunk = r->chunk;
	struct bio_list out;

	bio_list_init(&out);
	r->abandoned = true;
	spin_lock(&ctx->lock);
	ctx->nr_abandoned++;
	/* Postsuspend waits for copies that are not abandoned. */
	wake_up(&ctx->wait);
	spin_unlock(&ctx->lock);
	fail_writes = fleece_copy_failed(r, &out);
	invalidate = !fail_writes;
	spin_unlock_irqrestore(&b->lock, flags);

	atomic64_inc(&ctx->cbw_errors);
	fleece_ctx_error(ctx, true, "copy-before-write of chunk %lu timed out after %u ms",
			 chunk, READ_ONCE(ctx->cbw_timeout_ms));
	if (invalidate)
		fleece_ctx_invalidate(ctx, "copy-before-write timed out");
	fleece_dispatch(&out, fail_writes);
}

/*
 * The copy's timeout, or a kick from fleece_cbw_release_all() for a copy
 * still waiting for a slot once the view is invalid.  A copy that never
 * got a slot simply ends; one under way is abandoned.
 */
static void fleece_copy_expire(struct work_struct *work)
{
	struct fleece_region *r = container_of(to_delayed_work(work),
					       struct fleece_region, timeout);
	struct fleece_ctx *ctx = r->ctx;
	struct fleece_bucket *b = fleece_bucket(ctx, r->chunk);
	bool timed_out, invalid, queued = false;
	unsigned long flags;

	spin_lock_irqsave(&b->lock, flags);
	if (!r->copying || r->abandoned) {
		spin_unlock_irqrestore(&b->lock, flags);
		return;
	}
	timed_out = r->has_deadline && time_after_eq(jiffies, r->deadline);
	invalid = fleece_ctx_invalid(ctx);

	spin_lock(&ctx->lock);
	if (!list_empty(&r->slot_wait) && (timed_out || invalid)) {
		list_del_init(&r->slot_wait);
		/* A kick may have queued this work again meanwhile. */
		cancel_delayed_work(&r->timeout);
		queued = true;
	}
	spin_unlock(&ctx->lock);

	if (queued) {
		spin_unlock_irqrestore(&b->lock, flags);
		fleece_copy_end(r, invalid ? FLEECE_COPY_DROPPED :
					     FLEECE_COPY_TIMED_OUT, true);
		return;
	}
	if (timed_out) {
		fleece_copy_abandon(r, flags);	/* drops the bucket lock */
		return;
	}
	spin_unlock_irqrestore(&b->lock, flags);
}

/**
 * fleece_cbw_release_all() - the view became invalid: let every bio go
 * @ctx: the context, already marked invalid
 *
 * Writes waiting for a copy pass (nothing is protected any more), view
 * bios fail, both through the worker.  Copies still waiting for a slot end
 * at once, from their timeout work; copies under way end as they do.
 */
void fleece_cbw_release_all(struct fleece_ctx *ctx)
{
	struct fleece_region *r;
	struct fleece_bucket *b;
	struct bio_list out;
	unsigned long flags;
	unsigned int i;

	bio_list_init(&out);
	for (i = 0; i < BIT(FLEECE_HASH_BITS); i++) {
		b = &ctx->buckets[i];
		spin_lock_irqsave(&b->lock, flags);
		hlist_for_each_entry(r, &b->regions, node) {
			fleece_region_take_bios(r, &out);
			spin_lock(&ctx->lock);
			if (!list_empty(&r->slot_wait))
				mod_delayed_work(ctx->wq, &r->timeout, 0);
			spin_unlock(&ctx->lock);
		}
		spin_unlock_irqrestore(&b->lock, flags);
	}
	fleece_ctx_defer_list(ctx, &out);
}

/* --- entry points from the targets -------------------------------------- */

/*
 * An origin write, write-zeroes or secure erase reaches pending @chunk: ask
 * for its copy if it needs one and has none.  With @bio, a write that is
 * not ready waits on the chunk's region; with @pass, a write that is ready
 * is recorded as passed ahead of an unfinished copy.  Called from .map: it
 * may wait for a region descriptor from the mempool (GFP_NOIO), never for
 * a copy.
 *
 * Return: 1 if writes to the chunk may go on now, 0 if they must wait (on
 * the region, with @bio), -EIO if they must fail (a copy abandoned under
 * fail_origin_writes).
 */
static int fleece_origin_chunk(struct fleece_ctx *ctx, unsigned long chunk,
			       struct bio *bio, bool pass,
			       struct fleece_region **spare)
{
	struct fleece_bucket *b = fleece_bucket(ctx, chunk);
	struct fleece_region *r;
	unsigned long flags;
	int ret = 0;

again:
	spin_lock_irqsave(&b->lock, flags);
	if (fleece_chunk_done(ctx, chunk) || fleece_ctx_invalid(ctx)) {
		ret = 1;
		goto out;
	}
	r = fleece_region_find(b, chunk);
	if (r && r->abandoned) {
		/*
		 * The copy is stuck past its timeout.  Unless it passed a
		 * write, which made the view invalid (tested above), it is
		 * under fail_origin_writes: writes fail until it ends.
		 */
		if (WARN_ON_ONCE(!r->fail_writes)) {
			ret = 1;
			goto out;
		}
		atomic64_inc(&ctx->cbw_errors);
		ret = -EIO;
		goto out;
	}
	if (r && fleece_region_writable(r)) {
		if (pass && !r->copied)
			r->writes_passed = true;
		ret = 1;
		goto out;
	}
	if (!r) {
		if (!*spare) {
			spin_unlock_irqrestore(&b->lock, flags);
			*spare = mempool_alloc(&ctx->region_pool, GFP_NOIO);
			goto again;
		}
		r = fleece_region_new(ctx, b, *spare, chunk);
		*spare = NULL;
	}
	if (bio)
		bio_list_add(&r->writes, bio);
	if (!r->copying && !r->copied)
		fleece_copy_request(r);
out:
	spin_unlock_irqrestore(&b->lock, flags);
	return ret;
}

static int fleece_mapio(int ready)
{
	return ready > 0 ? DM_MAPIO_REMAPPED :
	       ready < 0 ? DM_MAPIO_KILL : DM_MAPIO_SUBMITTED;
}

/**
 * fleece_origin_write() - an origin write to a chunk that looked pending
 * @ctx: the context
 * @bio: a write within @chunk
 * @chunk: the chunk
 *
 * Called from .map: it may wait for a region descriptor from the mempool
 * (GFP_NOIO), never for a copy.
 *
 * Return: a DM_MAPIO_* value; SUBMITTED when @bio waits for the copy.
 */
int fleece_origin_write(struct fleece_ctx *ctx, struct bio *bio,
			unsigned long chunk)
{
	struct fleece_region *spare = NULL;
	int ready = fleece_origin_chunk(ctx, chunk, bio, true, &spare);

	if (spare)
		mempool_free(spare, &ctx->region_pool);
	return fleece_mapio(ready);
}

/*
 * @bio goes on over chunks that were all found writable: record, for each
 * copy under way, that a write passed it.  Return: false if one of them is
 * no longer writable (not expected: see fleece_origin_extent()).
 */
static bool fleece_extent_pass(struct fleece_ctx *ctx, unsigned long first,
			       unsigned long last)
{
	struct fleece_region *r;
	struct fleece_bucket *b;
	unsigned long chunk, flags;
	bool ok = true;

	for (chunk = first; ok && chunk <= last; chunk++) {
		if (fleece_chunk_done(ctx, chunk))
			continue;
		b = fleece_bucket(ctx, chunk);
		spin_lock_irqsave(&b->lock, flags);
		if (!fleece_ctx_invalid(ctx) && !fleece_chunk_done(ctx, chunk)) {
			r = fleece_region_find(b, chunk);
			if (r && !r->abandoned && fleece_region_writable(r)) {
				if (!r->copied)
					r->writes_passed = true;
			} else {
				ok = false;
			}
		}
		spin_unlock_irqrestore(&b->lock, flags);
	}
	return ok;
}

/**
 * fleece_origin_extent() - a write-zeroes or secure erase over many chunks
 * @ctx: the context
 * @bio: the bio, never cut (see fleece_bio_cut())
 * @first: its first chunk
 * @last: its last chunk
 *
 * A copy is asked for every pending chunk that has none, so that they all
 * run side by side, each with its own timeout from now.  @bio then waits
 * whole on the first chunk that does not let writes go on, and is mapped
 * again from @first when that one does.  It goes on once every chunk lets
 * it: a chunk found writable stays so (its copy is safe or done, and view
 * reads do not go to the origin over a chunk with a copy under way), so
 * recording the write on each copy cannot find one that is not.
 *
 * Return: a DM_MAPIO_* value; SUBMITTED when @bio waits.
 */
int fleece_origin_extent(struct fleece_ctx *ctx, struct bio *bio,
			 unsigned long first, unsigned long last)
{
	struct fleece_region *spare = NULL;
	unsigned long chunk, blocked;
	int ready;

again:
	blocked = ULONG_MAX;
	for (chunk = first; chunk <= last; chunk++) {
		if (fleece_chunk_done(ctx, chunk))
			continue;
		ready = fleece_origin_chunk(ctx, chunk, NULL, false, &spare);
		if (ready < 0)
			goto out;
		if (!ready && blocked == ULONG_MAX)
			blocked = chunk;
	}
	if (blocked != ULONG_MAX) {
		/* It may have become writable meanwhile: then look again. */
		ready = fleece_origin_chunk(ctx, blocked, bio, false, &spare);
		if (ready > 0)
			goto again;
		goto out;
	}
	ready = 1;
	if (!fleece_extent_pass(ctx, first, last))
		goto again;
out:
	if (spare)
		mempool_free(spare, &ctx->region_pool);
	return fleece_mapio(ready);
}

/**
 * fleece_origin_read_ended() - a view read left chunks @first to @last
 * @ctx: the context
 * @first: the first chunk
 * @last: the last chunk
 *
 * Settles the regions of these chunks, which may have waited for the read.
 * May run in interrupt context: the bios that may go on go to the worker.
 */
static void fleece_origin_read_ended(struct fleece_ctx *ctx,
				     unsigned long first, unsigned long last)
{
	struct fleece_region *r;
	struct fleece_bucket *b;
	struct bio_list out;
	unsigned long chunk, flags;
	struct bio *bio;
	bool gone;

	for (chunk = first; chunk <= last; chunk++) {
		b = fleece_bucket(ctx, chunk);
		bio_list_init(&out);
		spin_lock_irqsave(&b->lock, flags);
		r = fleece_region_find(b, chunk);
		gone = r && fleece_region_settle(r, &out);
		spin_unlock_irqrestore(&b->lock, flags);

		while ((bio = bio_list_pop(&out)))
			fleece_ctx_defer(ctx, bio);
		if (gone)
			mempool_free(r, &ctx->region_pool);
	}
}

/*
 * Look at the chunks after @fb's first, which it read from the origin; cut
 * @bio short of the first that is no longer pending, or has a copy under
 * way: its data may no longer be on the origin.
 */
static void fleece_origin_read_check_run(struct fleece_ctx *ctx,
					 struct bio *bio, struct fleece_bio *fb)
{
	unsigned long chunk, last = fb->last, flags;
	struct fleece_bucket *b;
	bool blocking, ok = true;

	for (chunk = fb->first + 1; ok && chunk <= last; chunk++) {
		b = fleece_bucket(ctx, chunk);
		spin_lock_irqsave(&b->lock, flags);
		ok = fleece_origin_readable(ctx, b, chunk);
		spin_unlock_irqrestore(&b->lock, flags);
	}
	if (ok)
		return;

	chunk -= 2;	/* the last one that was readable */
	fleece_bio_cut(ctx, bio, chunk);
	spin_lock_irqsave(&ctx->lock, flags);
	fb->last = chunk;
	blocking = fb->blocking;
	spin_unlock_irqrestore(&ctx->lock, flags);
	if (blocking)
		fleece_origin_read_ended(ctx, chunk + 1, last);
}

/**
 * fleece_view_read_pending() - a view read of chunks that looked pending
 * @ctx: the context
 * @bio: a read of chunks @first to @last; of one chunk if mapped again
 * @first: the first chunk
 * @last: the last chunk
 *
 * If @first is still pending, with no copy under way, the read goes to the
 * origin, cut short of the first chunk after it that is not so: it is on
 * the list of origin readers until it ends, which keeps origin writes to
 * its chunks waiting.  Otherwise it is cut to @first, which goes to the
 * fleece device if it got copied meanwhile, or waits for a copy under way,
 * or, if no origin target is live (a suspend, perhaps a table swap), for a
 * resume.
 *
 * Return: a DM_MAPIO_* value; REMAPPED to the origin sets @bio's on_origin.
 */
int fleece_view_read_pending(struct fleece_ctx *ctx, struct bio *bio,
			     unsigned long first, unsigned long last)
{
	struct fleece_bucket *b = fleece_bucket(ctx, first);
	struct fleece_bio *fb = fleece_bio(bio);
	struct fleece_region *r;
	int ret = DM_MAPIO_SUBMITTED;
	bool on_origin = false;
	unsigned long flags;

	spin_lock_irqsave(&b->lock, flags);
	if (fleece_ctx_invalid(ctx) || fleece_chunk_released(ctx, first)) {
		ret = DM_MAPIO_KILL;
		goto out;
	}
	if (!fleece_origin_readable(ctx, b, first)) {
		fleece_bio_cut(ctx, bio, first);
		r = fleece_region_find(b, first);	/* if not done, there is one */
		if (fleece_chunk_done(ctx, first) || r->copied)
			ret = DM_MAPIO_REMAPPED;	/* the data is in the fleece */
		else
			bio_list_add(&r->waiters, bio);	/* a copy under way */
		goto out;
	}

	spin_lock(&ctx->lock);
	if (fleece_ctx_invalid(ctx)) {
		ret = DM_MAPIO_KILL;
	} else if (!ctx->nr_live) {
		fleece_bio_cut(ctx, bio, first);
		bio_list_add(&ctx->held, bio);
	} else {
		fb->first = first;
		fb->last = last;
		fb->blocking = false;
		fb->on_origin = true;
		list_add_tail(&fb->reading, &ctx->origin_readers);
		atomic_inc(&ctx->origin_reads);
		on_origin = true;
		ret = DM_MAPIO_REMAPPED;
	}
	spin_unlock(&ctx->lock);
out:
	spin_unlock_irqrestore(&b->lock, flags);
	/* Not @fb->on_origin: a bio that waits may already be mapped again. */
	if (on_origin && first < last)
		fleece_origin_read_check_run(ctx, bio, fb);
	return ret;
}

/**
 * fleece_view_read_done() - a view read of the origin ended
 * @ctx: the context
 * @bio: the read; it leaves the list of origin readers
 *
 * May run in interrupt context.
 */
void fleece_view_read_done(struct fleece_ctx *ctx, struct bio *bio)
{
	struct fleece_bio *fb = fleece_bio(bio);
	unsigned long flags;
	bool blocking;

	spin_lock_irqsave(&ctx->lock, flags);
	list_del(&fb->reading);
	blocking = fb->blocking;
	spin_unlock_irqrestore(&ctx->lock, flags);
	fb->on_origin = false;

	if (blocking)
		fleece_origin_read_ended(ctx, fb->first, fb->last);
	if (atomic_dec_and_test(&ctx->origin_reads))
		wake_up(&ctx->wait);
}

/**
 * fleece_view_release() - a view discard covers chunks @first to @last whole
 * @ctx: the context
 * @bio: the discard, never cut (see fleece_bio_cut())
 * @first: the first chunk
 * @last: the last chunk
 * @released: set to the number of chunks this call released
 * @was_copied: set when one of them had its data in the fleece device
 *
 * A chunk is released only when no copy of it and no view read of it on
 * the origin is under way: once released, origin writes pass it unseen.
 * The chunks are released in order up to the first that is busy, on which
 * @bio waits whole; mapped again, it finds the chunks before released.
 *
 * Return: a DM_MAPIO_* value; SUBMITTED when @bio waits for a busy chunk.
 */
int fleece_view_release(struct fleece_ctx *ctx, struct bio *bio,
			unsigned long first, unsigned long last,
			unsigned long *released, bool *was_copied)
{
	struct fleece_region *r, *spare = NULL;
	unsigned long chunk, flags;
	struct fleece_bucket *b;
	int ret = DM_MAPIO_REMAPPED;
	bool busy;

	*released = 0;
	*was_copied = false;
	for (chunk = first; chunk <= last; chunk++) {
		b = fleece_bucket(ctx, chunk);
again:
		spin_lock_irqsave(&b->lock, flags);
		if (fleece_ctx_invalid(ctx)) {
			spin_unlock_irqrestore(&b->lock, flags);
			ret = DM_MAPIO_KILL;
			break;
		}
		r = fleece_region_find(b, chunk);
		busy = r || (!fleece_chunk_released(ctx, chunk) &&
			     fleece_origin_read_covers(ctx, chunk));
		if (!busy) {
			if (!fleece_chunk_released(ctx, chunk)) {
				(*released)++;
				if (fleece_chunk_set_released(ctx, chunk))
					*was_copied = true;
			}
			spin_unlock_irqrestore(&b->lock, flags);
			continue;
		}
		/* Wait for the chunk, in a region of its own if need be. */
		if (!r) {
			if (!spare) {
				spin_unlock_irqrestore(&b->lock, flags);
				spare = mempool_alloc(&ctx->region_pool, GFP_NOIO);
				goto again;
			}
			r = fleece_region_new(ctx, b, spare, chunk);
			spare = NULL;
		}
		bio_list_add(&r->waiters, bio);
		spin_unlock_irqrestore(&b->lock, flags);
		ret = DM_MAPIO_SUBMITTED;
		break;
	}
	if (spare)
		mempool_free(spare, &ctx->region_pool);
	return ret;
}

/**
 * fleece_cbw_release_unused() - release chunks before the point in time
 * @ctx: the context, not started: no origin target has resumed, so no
 *	write, copy or view read can be under way
 * @first: the first chunk
 * @last: the last chunk
 *
 * As a view discard releases them (fleece_chunk_set_released(), under the
 * bucket lock, counted in @nr_released), with nothing copied yet: no fleece
 * range to discard.  A chunk that is busy after all is left pending.
 * Process context, no spinlock held: it reschedules now and then.
 *
 * Return: the number of chunks released.
 */
unsigned long fleece_cbw_release_unused(struct fleece_ctx *ctx,
					unsigned long first, unsigned long last)
{
	struct fleece_bucket *b;
	unsigned long chunk, flags, n = 0;

	for (chunk = first; chunk <= last; chunk++) {
		if (!(chunk % 4096))
			cond_resched();
		b = fleece_bucket(ctx, chunk);
		spin_lock_irqsave(&b->lock, flags);
		if (!WARN_ON_ONCE(fleece_region_find(b, chunk)) &&
		    !fleece_chunk_done(ctx, chunk)) {
			WARN_ON_ONCE(fleece_chunk_set_released(ctx, chunk));
			n++;
		}
		spin_unlock_irqrestore(&b->lock, flags);
	}
	return n;
}

/* --- the worker -------------------------------------------------------- */

/* Map a bio that waited, and submit it unless it waits again. */
static void fleece_map_again(struct bio *bio)
{
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

	while ((bio = bio_list_pop(&bios)))
		fleece_map_again(bio);
}

/* --- setup ------------------------------------------------------------- */

/*
 * Chunk buffers.  Every copy needs one, and allocating it (vmalloc for large
 * chunks) can cost more than the copy itself, so freed buffers are kept for
 * the next copies, up to FLEECE_CACHE_BYTES; the rest go back to the system.
 * Each free buffer's first bytes link it into the cache.  The mempool above
 * this adds the one buffer in reserve that guarantees progress.
 */
static void *fleece_buf_alloc(gfp_t gfp, void *data)
{
	struct fleece_ctx *ctx = data;
	struct list_head *buf = NULL;
	unsigned long flags;

	spin_lock_irqsave(&ctx->buf_lock, flags);
	if (!list_empty(&ctx->buf_cache)) {
		buf = ctx->buf_cache.next;
		list_del(buf);
		ctx->buf_cached--;
	}
	spin_unlock_irqrestore(&ctx->buf_lock, flags);
	if (buf)
		return buf;
	return kvmalloc(ctx->chunk_sectors << SECTOR_SHIFT, gfp);
}

static void fleece_buf_free(void *buf, void *data)
{
	struct fleece_ctx *ctx = data;
	unsigned long flags;

	spin_lock_irqsave(&ctx->buf_lock, flags);
	if (ctx->buf_cached < ctx->buf_cache_max) {
		list_add(buf, &ctx->buf_cache);
		ctx->buf_cached++;
		buf = NULL;
	}
	spin_unlock_irqrestore(&ctx->buf_lock, flags);
	kvfree(buf);
}

static void fleece_buf_cache_drain(struct fleece_ctx *ctx)
{
	struct list_head *buf, *next;

	list_for_each_safe(buf, next, &ctx->buf_cache)
		kvfree(buf);
	INIT_LIST_HEAD(&ctx->buf_cache);
	ctx->buf_cached = 0;
}

int fleece_cbw_init(struct fleece_ctx *ctx)
{
	unsigned int slots;
	int r;

	slots = clamp_t(unsigned int,
			FLEECE_COPY_BYTES / (ctx->chunk_sectors << SECTOR_SHIFT),
			1, FLEECE_MAX_COPIES);
	ctx->copy_slots = slots;
	INIT_LIST_HEAD(&ctx->slot_waiters);
	INIT_WORK(&ctx->worker, fleece_worker);

	r = mempool_init_slab_pool(&ctx->region_pool, FLEECE_MIN_REGIONS,
				   fleece_region_cache);
	if (r)
		return r;

	spin_lock_init(&ctx->buf_lock);
	INIT_LIST_HEAD(&ctx->buf_cache);
	ctx->buf_cached = 0;
	ctx->buf_cache_max = min_t(unsigned int, slots,
				   FLEECE_CACHE_BYTES / (ctx->chunk_sectors << SECTOR_SHIFT));
	r = mempool_init(&ctx->buf_pool, 1, fleece_buf_alloc, fleece_buf_free, ctx);
	if (r)
		goto bad_buf;

	ctx->wq = alloc_workqueue("kfleeced", WQ_MEM_RECLAIM, 0);
	if (!ctx->wq) {
		r = -ENOMEM;
		goto bad_wq;
	}
	ctx->start_wq = alloc_workqueue("kfleeced_start", WQ_MEM_RECLAIM, 0);
	if (!ctx->start_wq) {
		r = -ENOMEM;
		goto bad_start_wq;
	}

	ctx->io_client = dm_io_client_create();
	if (IS_ERR(ctx->io_client)) {
		r = PTR_ERR(ctx->io_client);
		goto bad_io;
	}
	return 0;

bad_io:
	destroy_workqueue(ctx->start_wq);
bad_start_wq:
	destroy_workqueue(ctx->wq);
bad_wq:
	mempool_exit(&ctx->buf_pool);
	fleece_buf_cache_drain(ctx);
bad_buf:
	mempool_exit(&ctx->region_pool);
	return r;
}

void fleece_cbw_exit(struct fleece_ctx *ctx)
{
	dm_io_client_destroy(ctx->io_client);
	destroy_workqueue(ctx->start_wq);
	destroy_workqueue(ctx->wq);
	mempool_exit(&ctx->buf_pool);
	fleece_buf_cache_drain(ctx);
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
