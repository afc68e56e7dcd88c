// SPDX-License-Identifier: GPL-2.0
/*
 * dm-fleece: the "fleece-view" target, the frozen image.
 *
 *   <start> <len> fleece-view <origin_dev> <fleece_dev>
 *
 * Reads of a copied chunk come from the fleece device, of a pending chunk
 * from the origin (kept out of the way of origin writes to that chunk), of
 * a released chunk nowhere: they fail.  A read over a run of copied chunks,
 * or of pending ones, goes down whole.  A discard that covers a whole chunk
 * releases it, ending copy-before-write for it and freeing its fleece range.
 * The view cannot be written.
 */

#include <linux/module.h>

#include "dm-fleece.h"
#include "dm-fleece-compat.h"

struct fleece_view {
	struct fleece_target_link link;
	struct dm_dev *origin;
	struct dm_dev *fleece;
	struct fleece_ctx *ctx;
	atomic64_t reads_origin;
	atomic64_t reads_fleece;
	atomic64_t reads_refused;
	atomic64_t chunks_released;
};

static int fleece_view_ctr(struct dm_target *ti, unsigned int argc, char **argv)
{
	struct fleece_view *fv;
	struct fleece_ctx *ctx;
	int r;

	if (argc != 2) {
		ti->error = "Expected 2 arguments: <origin_dev> <fleece_dev>";
		return -EINVAL;
	}

	fv = kzalloc(sizeof(*fv), GFP_KERNEL);
	if (!fv) {
		ti->error = "Cannot allocate fleece-view target";
		return -ENOMEM;
	}
	fv->link.ti = ti;

	r = dm_get_device(ti, argv[0], dm_table_get_mode(ti->table), &fv->origin);
	if (r) {
		ti->error = "Cannot open origin device";
		goto bad;
	}
	r = dm_get_device(ti, argv[1], dm_table_get_mode(ti->table), &fv->fleece);
	if (r) {
		ti->error = "Cannot open fleece device";
		goto bad_fleece;
	}

	ctx = fleece_ctx_find_live(&fv->link, fv->origin, fv->fleece);
	if (IS_ERR(ctx)) {
		r = PTR_ERR(ctx);
		goto bad_ctx;
	}
	fv->ctx = ctx;

	/*
	 * No max_io_len: dm core would then also cap every bio at the
	 * queue's max_sectors (127 KiB on a ram disk), cutting a 1 MiB chunk
	 * read in nine.  Bios are cut where the chunk state asks for it.
	 */
	ti->num_flush_bios = 0;
	ti->num_discard_bios = 1;
	ti->discards_supported = true;	/* whatever the fleece device does */
	ti->num_write_zeroes_bios = 1;	/* so that they fail with EIO */
	ti->per_io_data_size = sizeof(struct fleece_bio);
	ti->accounts_remapped_io = true;
	ti->private = fv;
	return 0;

bad_ctx:
	dm_put_device(ti, fv->fleece);
bad_fleece:
	dm_put_device(ti, fv->origin);
bad:
	kfree(fv);
	return r;
}

static void fleece_view_dtr(struct dm_target *ti)
{
	struct fleece_view *fv = ti->private;

	fleece_ctx_unbind(fv->ctx, &fv->link, false);
	dm_put_device(ti, fv->fleece);
	dm_put_device(ti, fv->origin);
	kfree(fv);
}

/* @base: where the fleece region starts on @dev. */
static int fleece_view_remap(struct dm_target *ti, struct bio *bio,
			     struct dm_dev *dev, sector_t base)
{
	bio_set_dev(bio, dev->bdev);
	bio->bi_iter.bi_sector = base +
		dm_target_offset(ti, bio->bi_iter.bi_sector);
	return DM_MAPIO_REMAPPED;
}

/*
 * The end of the run from @chunk, up to @last, of chunks that are all
 * copied (@done) or all pending.  Pending chunks are never released.
 */
static unsigned long fleece_view_run_end(struct fleece_ctx *ctx,
					 unsigned long chunk,
					 unsigned long last, bool done)
{
	while (chunk < last && fleece_chunk_done(ctx, chunk + 1) == done &&
	       !fleece_chunk_released(ctx, chunk + 1))
		chunk++;
	return chunk;
}

/*
 * A read goes down whole over a run of copied chunks (to the fleece device)
 * or of pending ones (to the origin, cut shorter if one of them is being
 * copied meanwhile); dm core maps the rest of it as a new bio.  A read that
 * waits is cut to one chunk first, so a read mapped again is never cut.
 */
static int fleece_view_read(struct dm_target *ti, struct bio *bio)
{
	struct fleece_view *fv = ti->private;
	struct fleece_ctx *ctx = fv->ctx;
	unsigned long chunk = fleece_chunk_of(ctx, ti, bio);
	unsigned long last = fleece_last_chunk_of(ctx, ti, bio);
	int r;

	if (fleece_ctx_invalid(ctx) || fleece_chunk_released(ctx, chunk))
		goto refuse;
	if (likely(fleece_chunk_done(ctx, chunk))) {
		/* Done chunks never become pending again. */
		fleece_bio_cut(ctx, bio,
			       fleece_view_run_end(ctx, chunk, last, true));
		goto from_fleece;
	}

	last = fleece_view_run_end(ctx, chunk, last, false);
	fleece_bio_cut(ctx, bio, last);
	r = fleece_view_read_pending(ctx, bio, chunk, last);
	if (r == DM_MAPIO_KILL)
		goto refuse;
	if (r != DM_MAPIO_REMAPPED)
		return r;
	if (!fleece_bio(bio)->on_origin)
		goto from_fleece;
	atomic64_inc(&fv->reads_origin);
	return fleece_view_remap(ti, bio, fv->origin, ctx->origin_offset);

from_fleece:
	atomic64_inc(&fv->reads_fleece);
	return fleece_view_remap(ti, bio, fv->fleece, 0);
refuse:
	atomic64_inc(&fv->reads_refused);
	return DM_MAPIO_KILL;
}

/*
 * A discard releases the chunks it covers whole and passes down to the
 * fleece device over those chunks only: a chunk it covers in part is left
 * alone, copied data and all.  dm core sends discards as duplicate bios,
 * which may not be cut (dm_accept_partial_bio()): the bio is trimmed to
 * the whole chunks instead, as dm-stripe and dm-clone trim theirs, and
 * waits whole on a busy chunk, then is mapped again from its first chunk.
 */
static int fleece_view_discard(struct dm_target *ti, struct bio *bio)
{
	struct fleece_view *fv = ti->private;
	struct fleece_ctx *ctx = fv->ctx;
	struct fleece_bio *fb = fleece_bio(bio);
	sector_t off = dm_target_offset(ti, bio->bi_iter.bi_sector);
	sector_t end = off + bio_sectors(bio);
	unsigned long first = fleece_chunk_of(ctx, ti, bio);
	unsigned long last = fleece_last_chunk_of(ctx, ti, bio);
	sector_t start;
	unsigned long released;
	bool was_copied;
	int r;

	if (off != fleece_chunk_start(ctx, first))
		first++;
	if (end < fleece_chunk_start(ctx, last) + fleece_chunk_len(ctx, last)) {
		if (!last)
			goto ignore;
		last--;
	}
	if (first > last)
		goto ignore;

	r = fleece_view_release(ctx, bio, first, last, &released, &was_copied);
	/* Counted now: chunks released before a wait are not seen again. */
	atomic64_add(released, &fv->chunks_released);
	/* Released before a wait, or now: their fleece range may hold data. */
	fb->released_copied |= was_copied;
	if (r != DM_MAPIO_REMAPPED)
		return r;
	/* Pending chunks released with it have nothing there: no harm. */
	if (fb->released_copied && bdev_max_discard_sectors(fv->fleece->bdev)) {
		start = fleece_chunk_start(ctx, first);
		bio_set_dev(bio, fv->fleece->bdev);
		bio->bi_iter.bi_sector = start;
		bio->bi_iter.bi_size = (fleece_chunk_start(ctx, last) +
					fleece_chunk_len(ctx, last) - start)
				       << SECTOR_SHIFT;
		return DM_MAPIO_REMAPPED;
	}
ignore:
	bio_endio(bio);
	return DM_MAPIO_SUBMITTED;
}

/**
 * fleece_view_map_bio() - map a view bio, first time or again
 * @ti: the fleece-view target
 * @bio: a read or a discard; of one chunk if mapped again
 *
 * Return: a DM_MAPIO_* value.
 */
int fleece_view_map_bio(struct dm_target *ti, struct bio *bio)
{
	switch (bio_op(bio)) {
	case REQ_OP_READ:
		return fleece_view_read(ti, bio);
	case REQ_OP_DISCARD:
		return fleece_view_discard(ti, bio);
	default:
		return DM_MAPIO_KILL;	/* the view is read-only */
	}
}

static int fleece_view_map(struct dm_target *ti, struct bio *bio)
{
	struct fleece_bio *fb = fleece_bio(bio);

	fb->ti = ti;
	fb->is_view = true;
	fb->on_origin = false;
	fb->released_copied = false;
	if (!bio_sectors(bio)) {
		bio_endio(bio);	/* nothing to flush: the view is read-only */
		return DM_MAPIO_SUBMITTED;
	}
	/* Reads are cut as they are mapped, where needed; discards never. */
	return fleece_view_map_bio(ti, bio);
}

/*
 * A read that was on its way while the view became invalid may have seen
 * data written after the point in time: it fails too.
 */
static int fleece_view_end_io(struct dm_target *ti, struct bio *bio,
			      blk_status_t *error)
{
	struct fleece_view *fv = ti->private;
	struct fleece_bio *fb = fleece_bio(bio);

	if (fb->on_origin)
		fleece_view_read_done(fv->ctx, bio);
	if (bio_op(bio) == REQ_OP_READ && !*error &&
	    fleece_ctx_invalid(fv->ctx)) {
		atomic64_inc(&fv->reads_refused);
		*error = BLK_STS_IOERR;
	}
	return DM_ENDIO_DONE;
}

static void fleece_view_status(struct dm_target *ti, status_type_t type,
			       unsigned int status_flags, char *result,
			       unsigned int maxlen)
{
	struct fleece_view *fv = ti->private;
	unsigned int sz = 0;

	switch (type) {
	case STATUSTYPE_INFO:
		DMEMIT("%llu %llu %llu %llu %s",
		       (unsigned long long)atomic64_read(&fv->reads_origin),
		       (unsigned long long)atomic64_read(&fv->reads_fleece),
		       (unsigned long long)atomic64_read(&fv->reads_refused),
		       (unsigned long long)atomic64_read(&fv->chunks_released),
		       fleece_ctx_invalid(fv->ctx) ? FLEECE_STATE_INVALID :
						     FLEECE_STATE_ACTIVE);
		break;
	case STATUSTYPE_TABLE:
		DMEMIT("%s %s", fv->origin->name, fv->fleece->name);
		break;
	case STATUSTYPE_IMA:
		DMEMIT_TARGET_NAME_VERSION(ti->type);
		DMEMIT(",origin_name=%s,fleece_name=%s;", fv->origin->name,
		       fv->fleece->name);
		break;
	default:
		result[0] = '\0';
		break;
	}
}

static int fleece_view_iterate_devices(struct dm_target *ti,
				       iterate_devices_callout_fn fn,
				       void *data)
{
	struct fleece_view *fv = ti->private;
	int r;

	r = fn(ti, fv->origin, fv->ctx->origin_offset, ti->len, data);
	if (!r)
		r = fn(ti, fv->fleece, 0, ti->len, data);
	return r;
}

static void fleece_view_io_hints(struct dm_target *ti,
				 struct queue_limits *limits)
{
	struct fleece_view *fv = ti->private;
	unsigned int chunk = fv->ctx->chunk_sectors;

	/* Discards release whole chunks: say so. */
	limits->discard_granularity = chunk << SECTOR_SHIFT;
	fleece_set_max_discard(limits, round_down(UINT_MAX >> SECTOR_SHIFT,
						  chunk));
}

static struct target_type fleece_view_target = {
	.name = FLEECE_VIEW_TARGET_NAME,
	.version = {1, 1, 0},
	.module = THIS_MODULE,
	.ctr = fleece_view_ctr,
	.dtr = fleece_view_dtr,
	.map = fleece_view_map,
	.end_io = fleece_view_end_io,
	.status = fleece_view_status,
	.iterate_devices = fleece_view_iterate_devices,
	.io_hints = fleece_view_io_hints,
};

int fleece_view_register(void)
{
	return dm_register_target(&fleece_view_target);
}

void fleece_view_unregister(void)
{
	dm_unregister_target(&fleece_view_target);
}
