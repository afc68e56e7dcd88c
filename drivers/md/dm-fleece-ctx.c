// SPDX-License-Identifier: GPL-2.0
/*
 * dm-fleece: chunk state, the context shared by the targets of one
 * (origin, fleece) pair, and the registry that finds it.
 */

#include <linux/log2.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "dm-fleece.h"
#include "dm-fleece-track.h"

#define FLEECE_HASH_BUCKETS BIT(FLEECE_HASH_BITS)

/* Contexts that a new origin table or a view can bind to. */
static DEFINE_MUTEX(fleece_registry_lock);
static LIST_HEAD(fleece_registry);

/* --- chunk state ------------------------------------------------------- */

/**
 * fleece_chunk_set_copied() - a pending chunk's frozen data is now in the fleece
 * @ctx: the context
 * @chunk: the chunk, whose bucket lock the caller holds
 *
 * Release ordering: whoever sees the bit may rely on the copy being complete.
 */
void fleece_chunk_set_copied(struct fleece_ctx *ctx, unsigned long chunk)
{
	/* Pairs with test_bit_acquire() in fleece_chunk_done(). */
	smp_mb__before_atomic();
	set_bit(chunk, ctx->state.done);
	atomic64_inc(&ctx->nr_copied);
}

/**
 * fleece_chunk_set_released() - the view no longer needs @chunk
 * @ctx: the context
 * @chunk: the chunk, whose bucket lock the caller holds
 *
 * Return: true if the chunk was copied, i.e. its fleece range holds data.
 */
bool fleece_chunk_set_released(struct fleece_ctx *ctx, unsigned long chunk)
{
	bool was_copied = test_bit(chunk, ctx->state.done);

	if (test_bit(chunk, ctx->state.released))
		return false;
	/* Pairs with test_bit_acquire() in the fleece_chunk_*() tests. */
	smp_mb__before_atomic();
	set_bit(chunk, ctx->state.released);
	set_bit(chunk, ctx->state.done);
	if (was_copied)
		atomic64_dec(&ctx->nr_copied);
	atomic64_inc(&ctx->nr_released);
	return was_copied;
}

static int fleece_chunk_state_alloc(struct fleece_ctx *ctx)
{
	size_t longs = BITS_TO_LONGS(ctx->nr_chunks);

	/* Too large is a table error, reported by the caller: no warning. */
	ctx->state.done = kvcalloc(longs, sizeof(long),
				   GFP_KERNEL | __GFP_NOWARN);
	ctx->state.released = kvcalloc(longs, sizeof(long),
				       GFP_KERNEL | __GFP_NOWARN);
	if (!ctx->state.done || !ctx->state.released) {
		kvfree(ctx->state.done);
		kvfree(ctx->state.released);
		return -ENOMEM;
	}
	return 0;
}

/* --- context ----------------------------------------------------------- */

static void fleece_ctx_raise_event(struct work_struct *work)
{
	struct fleece_ctx *ctx = container_of(work, struct fleece_ctx,
					      event_work);
	struct fleece_target_link *link;

	mutex_lock(&fleece_registry_lock);
	list_for_each_entry(link, &ctx->targets, node)
		dm_table_event(link->ti->table);
	mutex_unlock(&fleece_registry_lock);
}

static struct fleece_ctx *fleece_ctx_create(struct dm_target *ti,
					    struct dm_dev *origin,
					    struct dm_dev *fleece,
					    sector_t origin_offset,
					    unsigned int chunk_sectors)
{
	struct fleece_ctx *ctx;
	unsigned int i;
	int r;

	ctx = kzalloc(struct_size(ctx, buckets, FLEECE_HASH_BUCKETS),
		      GFP_KERNEL);
	if (!ctx) {
		ti->error = "Cannot allocate fleece context";
		return ERR_PTR(-ENOMEM);
	}
	kref_init(&ctx->kref);
	INIT_LIST_HEAD(&ctx->registry_node);
	INIT_LIST_HEAD(&ctx->targets);
	ctx->origin_dev = origin->bdev->bd_dev;
	ctx->fleece_dev = fleece->bdev->bd_dev;
	ctx->origin_bdev = origin->bdev;
	ctx->fleece_bdev = fleece->bdev;
	ctx->origin_offset = origin_offset;
	ctx->region_sectors = ti->len;
	ctx->chunk_sectors = chunk_sectors;
	ctx->chunk_shift = ilog2(chunk_sectors);
	ctx->nr_chunks = DIV_ROUND_UP_SECTOR_T(ti->len, chunk_sectors);
	ratelimit_default_init(&ctx->error_rs);
	spin_lock_init(&ctx->lock);
	bio_list_init(&ctx->held);
	bio_list_init(&ctx->deferred);
	INIT_LIST_HEAD(&ctx->origin_readers);
	init_waitqueue_head(&ctx->wait);
	INIT_WORK(&ctx->event_work, fleece_ctx_raise_event);
	for (i = 0; i < FLEECE_HASH_BUCKETS; i++) {
		spin_lock_init(&ctx->buckets[i].lock);
		INIT_HLIST_HEAD(&ctx->buckets[i].regions);
	}

	if (fleece_chunk_state_alloc(ctx)) {
		DMERR("cannot allocate %zu bytes of chunk state for %lu chunks: use larger chunks",
		      2 * BITS_TO_LONGS(ctx->nr_chunks) * sizeof(long),
		      ctx->nr_chunks);
		ti->error = "Origin too large for memory at this chunk size";
		kfree(ctx);
		return ERR_PTR(-ENOMEM);
	}

	r = fleece_cbw_init(ctx);
	if (r) {
		ti->error = "Cannot allocate copy-before-write resources";
		kvfree(ctx->state.done);
		kvfree(ctx->state.released);
		kfree(ctx);
		return ERR_PTR(r);
	}
	return ctx;
}

static void fleece_ctx_release(struct kref *kref)
{
	struct fleece_ctx *ctx = container_of(kref, struct fleece_ctx, kref);

	fleece_cbw_exit(ctx);
	kvfree(ctx->state.done);
	kvfree(ctx->state.released);
	kfree(ctx);
}

static struct fleece_ctx *fleece_registry_find(dev_t origin, dev_t fleece)
{
	struct fleece_ctx *ctx;

	lockdep_assert_held(&fleece_registry_lock);
	list_for_each_entry(ctx, &fleece_registry, registry_node)
		if (ctx->origin_dev == origin && ctx->fleece_dev == fleece)
			return ctx;
	return NULL;
}

/* Is @dev part of a registered pair, in any role? Names the role. */
static const char *fleece_registry_role(dev_t dev)
{
	struct fleece_ctx *ctx;

	lockdep_assert_held(&fleece_registry_lock);
	list_for_each_entry(ctx, &fleece_registry, registry_node) {
		if (ctx->origin_dev == dev)
			return "origin";
		if (ctx->fleece_dev == dev)
			return "fleece";
	}
	return NULL;
}

/*
 * A live region of the same origin device that overlaps [@start, @start +
 * @len), under another fleece device.  Writes through one table pass the
 * other's copy-before-write: its view would silently serve new data.
 * Dying contexts are left out: their late copies go to their own fleece
 * device and read nothing of a new region.
 */
static struct fleece_ctx *fleece_registry_overlap(dev_t origin, sector_t start,
						  sector_t len)
{
	struct fleece_ctx *ctx;

	lockdep_assert_held(&fleece_registry_lock);
	list_for_each_entry(ctx, &fleece_registry, registry_node)
		if (ctx->origin_dev == origin && !ctx->dying &&
		    start < ctx->origin_offset + ctx->region_sectors &&
		    ctx->origin_offset < start + len)
			return ctx;
	return NULL;
}

/**
 * fleece_ctx_bind() - bind an origin target to the context of its pair
 * @link: the target's link; @link->ti is the target being constructed
 * @origin: the origin device
 * @fleece: the fleece device
 * @origin_offset: where the region starts on the origin device
 * @chunk_sectors: chunk size of the new table
 *
 * A table for a pair that already has a context takes it over (a reload
 * keeps the state); the chunk size, length and origin offset must then be
 * the same: the fleece device holds the region's chunks at their offsets.
 *
 * Return: the context with a reference held, or an ERR_PTR with ti->error set.
 */
struct fleece_ctx *fleece_ctx_bind(struct fleece_target_link *link,
				   struct dm_dev *origin, struct dm_dev *fleece,
				   sector_t origin_offset,
				   unsigned int chunk_sectors)
{
	struct dm_target *ti = link->ti;
	dev_t o = origin->bdev->bd_dev, f = fleece->bdev->bd_dev;
	struct fleece_ctx *ctx;

	mutex_lock(&fleece_registry_lock);
	ctx = fleece_registry_find(o, f);
	if (ctx && ctx->dying) {
		/* A new point in time must not meet the old one's late writes. */
		DMERR("the previous fleece of these devices has %u copies in flight",
		      READ_ONCE(ctx->nr_copies));
		ti->error = "The previous fleece of these devices still has copies in flight";
		ctx = ERR_PTR(-EBUSY);
		goto out;
	}
	if (ctx) {
		if (ctx->chunk_sectors != chunk_sectors) {
			DMERR("chunk size %u differs from the live fleece of these devices (%u)",
			      chunk_sectors, ctx->chunk_sectors);
			ti->error = "Chunk size differs from the live fleece of these devices";
			ctx = ERR_PTR(-EINVAL);
			goto out;
		}
		if (ctx->region_sectors != ti->len) {
			DMERR("length %llu differs from the live fleece's (%llu sectors)",
			      (unsigned long long)ti->len,
			      (unsigned long long)ctx->region_sectors);
			ti->error = "Length differs from the live fleece of these devices";
			ctx = ERR_PTR(-EINVAL);
			goto out;
		}
		if (ctx->origin_offset != origin_offset) {
			DMERR("origin offset %llu differs from the live fleece's (%llu sectors)",
			      (unsigned long long)origin_offset,
			      (unsigned long long)ctx->origin_offset);
			ti->error = "Origin offset differs from the live fleece of these devices";
			ctx = ERR_PTR(-EINVAL);
			goto out;
		}
		kref_get(&ctx->kref);
	} else {
		const char *role = fleece_registry_role(o);

		if (role && !strcmp(role, "fleece")) {
			ti->error = "Origin device is the fleece device of a live fleece";
			ctx = ERR_PTR(-EBUSY);
			goto out;
		}
		role = fleece_registry_role(f);
		if (role) {
			ti->error = role[0] == 'o' ?
				"Fleece device is the origin of a live fleece" :
				"Fleece device is already in use by a live fleece";
			ctx = ERR_PTR(-EBUSY);
			goto out;
		}
		ctx = fleece_registry_overlap(o, origin_offset, ti->len);
		if (ctx) {
			DMERR("origin sectors %llu+%llu overlap the live fleece region %llu+%llu",
			      (unsigned long long)origin_offset,
			      (unsigned long long)ti->len,
			      (unsigned long long)ctx->origin_offset,
			      (unsigned long long)ctx->region_sectors);
			ti->error = "Origin range overlaps the region of a live fleece";
			ctx = ERR_PTR(-EBUSY);
			goto out;
		}
		ctx = fleece_ctx_create(ti, origin, fleece, origin_offset,
					chunk_sectors);
		if (IS_ERR(ctx))
			goto out;
		list_add(&ctx->registry_node, &fleece_registry);
	}
	ctx->nr_origins++;
	list_add(&link->node, &ctx->targets);
out:
	mutex_unlock(&fleece_registry_lock);
	return ctx;
}

/**
 * fleece_ctx_find_live() - bind a view to the live context of its pair
 * @link: the view's link; @link->ti is the view being constructed
 * @origin: the origin device named by the view's table
 * @fleece: the fleece device named by the view's table
 *
 * Return: the context with a reference held, or an ERR_PTR with ti->error set.
 */
struct fleece_ctx *fleece_ctx_find_live(struct fleece_target_link *link,
					struct dm_dev *origin,
					struct dm_dev *fleece)
{
	struct dm_target *ti = link->ti;
	dev_t o = origin->bdev->bd_dev, f = fleece->bdev->bd_dev;
	struct fleece_ctx *ctx;

	mutex_lock(&fleece_registry_lock);
	ctx = fleece_registry_find(o, f);
	if (!ctx) {
		const char *role_o = fleece_registry_role(o);
		const char *role_f = fleece_registry_role(f);

		if (role_o || role_f)
			ti->error = "Devices do not match a live fleece: wrong origin/fleece pair";
		else
			ti->error = "No live fleece target for these origin and fleece devices";
		ctx = ERR_PTR(-ENODEV);
	} else if (ctx->dying) {
		ti->error = "The fleece for these devices is invalid";
		ctx = ERR_PTR(-EIO);
	} else if (!ctx->started) {
		ti->error = "The fleece target for these devices has not been resumed yet";
		ctx = ERR_PTR(-EAGAIN);
	} else if (fleece_ctx_invalid(ctx)) {
		ti->error = "The fleece for these devices is invalid";
		ctx = ERR_PTR(-EIO);
	} else if (ti->len > ctx->region_sectors) {
		ti->error = "View is longer than the fleece region";
		ctx = ERR_PTR(-EINVAL);
	} else {
		kref_get(&ctx->kref);
		list_add(&link->node, &ctx->targets);
	}
	mutex_unlock(&fleece_registry_lock);
	return ctx;
}

/**
 * fleece_ctx_unbind() - a target lets go of its context
 * @ctx: the context
 * @link: the target's link
 * @is_origin: whether the target is a "fleece" (origin) target
 *
 * When the last origin target goes, nothing protects the origin any more:
 * the context is invalidated.  That is only worth a kernel message when
 * views are still there to notice; with none left it is the normal end of
 * fleecing.  The devices must stay open until the copies still in flight
 * end: after a suspend these can only be copies abandoned by their
 * timeout, which end when the fleece device completes or fails their I/O.
 * This waits for them (uninterruptibly: a destructor cannot fail), and
 * meanwhile the context stays in the registry, dying, so that no new
 * fleece of the same devices starts while they may still write.
 */
void fleece_ctx_unbind(struct fleece_ctx *ctx, struct fleece_target_link *link,
		       bool is_origin)
{
	bool orphaned = false, views_left = false;

	mutex_lock(&fleece_registry_lock);
	list_del(&link->node);
	if (is_origin && !--ctx->nr_origins) {
		ctx->dying = true;
		orphaned = true;
		/* No origin target is left: the remaining links are views. */
		views_left = !list_empty(&ctx->targets);
	}
	mutex_unlock(&fleece_registry_lock);

	if (orphaned) {
		fleece_ctx_invalidate(ctx, views_left ?
				      "the origin is no longer protected by a fleece target" :
				      NULL);
		spin_lock_irq(&ctx->lock);
		wait_event_lock_irq(ctx->wait, !ctx->nr_copies, ctx->lock);
		spin_unlock_irq(&ctx->lock);
		mutex_lock(&fleece_registry_lock);
		list_del_init(&ctx->registry_node);
		mutex_unlock(&fleece_registry_lock);
	}
	kref_put(&ctx->kref, fleece_ctx_release);
}

static void fleece_ctx_release_run(void *arg, unsigned long first,
				   unsigned long last)
{
	struct fleece_ctx *ctx = arg;

	ctx->nr_track_released += fleece_cbw_release_unused(ctx, first, last);
}

/*
 * track_store at the point in time: release every chunk that the tracker
 * of @store saw no write to (fleece_track_unchanged()), or nothing, and
 * say why.
 */
static void fleece_ctx_track_release(struct fleece_ctx *ctx,
				     struct block_device *store)
{
	const char *why = "";
	int r;

	lockdep_assert_held(&fleece_registry_lock);
	r = fleece_track_unchanged(store->bd_dev, ctx->region_sectors,
				   ctx->chunk_sectors, fleece_ctx_release_run,
				   ctx, &why);
	if (r) {
		DMWARN("origin %u:%u fleece %u:%u: track_store %pg: nothing released: %s",
		       MAJOR(ctx->origin_dev), MINOR(ctx->origin_dev),
		       MAJOR(ctx->fleece_dev), MINOR(ctx->fleece_dev), store,
		       why);
		return;
	}
	DMINFO("origin %u:%u fleece %u:%u: track_store %pg: %lu of %lu chunks unchanged, released",
	       MAJOR(ctx->origin_dev), MINOR(ctx->origin_dev),
	       MAJOR(ctx->fleece_dev), MINOR(ctx->fleece_dev), store,
	       ctx->nr_track_released, ctx->nr_chunks);
}

/**
 * fleece_ctx_origin_resume() - an origin target resumed
 * @ctx: the context
 * @track_store: the resuming table's track_store, or NULL
 *
 * The first resume of any origin table of the pair is the point in time:
 * then, before any write can pass and before a view can bind, chunks the
 * tracker of @track_store saw unchanged are released (once per point in
 * time: a later resume or reload does not do it again).  View reads that
 * waited for a live origin go on.
 */
void fleece_ctx_origin_resume(struct fleece_ctx *ctx,
			      struct block_device *track_store)
{
	unsigned long flags;

	mutex_lock(&fleece_registry_lock);
	if (!ctx->started && track_store)
		fleece_ctx_track_release(ctx, track_store);
	ctx->started = true;
	mutex_unlock(&fleece_registry_lock);

	spin_lock_irqsave(&ctx->lock, flags);
	ctx->nr_live++;
	bio_list_merge(&ctx->deferred, &ctx->held);
	bio_list_init(&ctx->held);
	spin_unlock_irqrestore(&ctx->lock, flags);
	queue_work(ctx->wq, &ctx->worker);
}

/**
 * fleece_ctx_origin_suspend() - an origin target was suspended
 * @ctx: the context
 *
 * The table may now be swapped for one that does not protect the origin.
 * From here until an origin target resumes, view reads of pending chunks
 * wait; those already reading the origin are waited for.  So are copies,
 * so that the target does no I/O of its own once suspended (dm core has
 * already waited for the origin bios, which includes every write held
 * for a copy); not copies abandoned by their timeout, for which no wait
 * would have a bound.  The wait is bounded by cbw_timeout_ms (none with
 * 0, the admin guide says so).
 */
void fleece_ctx_origin_suspend(struct fleece_ctx *ctx)
{
	unsigned long flags;

	spin_lock_irqsave(&ctx->lock, flags);
	ctx->nr_live--;
	spin_unlock_irqrestore(&ctx->lock, flags);
	wait_event(ctx->wait, !atomic_read(&ctx->origin_reads));
	wait_event(ctx->wait, fleece_cbw_quiet(ctx));
}

/**
 * fleece_ctx_error() - log an error about one (origin, fleece) pair
 * @ctx: the context; the message starts with both devices' numbers
 * @limit: rate-limit the message, per pair so that one failing fleece
 *	device cannot mute the messages of another
 * @fmt: printf format of the rest
 */
void fleece_ctx_error(struct fleece_ctx *ctx, bool limit, const char *fmt, ...)
{
	struct va_format vaf;
	va_list args;

	if (limit && !__ratelimit(&ctx->error_rs))
		return;
	va_start(args, fmt);
	vaf.fmt = fmt;
	vaf.va = &args;
	DMERR("origin %u:%u fleece %u:%u: %pV",
	      MAJOR(ctx->origin_dev), MINOR(ctx->origin_dev),
	      MAJOR(ctx->fleece_dev), MINOR(ctx->fleece_dev), &vaf);
	va_end(args);
}

/**
 * fleece_ctx_invalidate() - the view can no longer be trusted
 * @ctx: the context
 * @why: for the kernel log; NULL for none
 *
 * From now on origin writes go through without copy-before-write and every
 * view read fails.  Bios waiting for a copy or for a live origin go on (or
 * fail) at once, copies still waiting for a slot end.  Raises a dm event on
 * every table of the pair.  Runs once, whoever marked the context invalid
 * first (fleece_ctx_set_invalid()).  Process context, no locks held.
 */
void fleece_ctx_invalidate(struct fleece_ctx *ctx, const char *why)
{
	unsigned long flags;

	fleece_ctx_set_invalid(ctx);
	spin_lock_irqsave(&ctx->lock, flags);
	if (ctx->announced) {
		spin_unlock_irqrestore(&ctx->lock, flags);
		return;
	}
	ctx->announced = true;
	bio_list_merge(&ctx->deferred, &ctx->held);
	bio_list_init(&ctx->held);
	spin_unlock_irqrestore(&ctx->lock, flags);
	fleece_cbw_release_all(ctx);

	if (ctx->started && why)
		fleece_ctx_error(ctx, false, "view invalidated: %s", why);
	queue_work(ctx->wq, &ctx->event_work);
	queue_work(ctx->wq, &ctx->worker);
}

/* Hand @bios to the worker, which maps them again. */
void fleece_ctx_defer_list(struct fleece_ctx *ctx, struct bio_list *bios)
{
	unsigned long flags;

	if (bio_list_empty(bios))
		return;
	spin_lock_irqsave(&ctx->lock, flags);
	bio_list_merge(&ctx->deferred, bios);
	bio_list_init(bios);
	queue_work(ctx->wq, &ctx->worker);
	spin_unlock_irqrestore(&ctx->lock, flags);
}

/* Hand @bio to the worker, which maps it again. */
void fleece_ctx_defer(struct fleece_ctx *ctx, struct bio *bio)
{
	unsigned long flags;

	spin_lock_irqsave(&ctx->lock, flags);
	bio_list_add(&ctx->deferred, bio);
	/* Under the lock: once the worker has run, @ctx may be gone. */
	queue_work(ctx->wq, &ctx->worker);
	spin_unlock_irqrestore(&ctx->lock, flags);
}
