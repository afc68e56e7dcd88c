// SPDX-License-Identifier: GPL-2.0
/*
 * dm-fleece: the "fleece" target, on the origin side.
 *
 *   <start> <len> fleece <origin_dev> <fleece_dev> <chunk_sectors>
 *                        [<#feature_args> <feature_arg>...]
 *
 * Features: fail_origin_writes, cbw_timeout_ms <ms>, origin_offset <sectors>
 * (where the target's region starts on the origin device; 0 by default),
 * track_store <store_dev> (at the point in time, release the chunks that
 * the fleece-track tracker of that store saw unchanged).
 *
 * Reads pass straight to the origin.  Writes to a pending chunk first copy
 * the chunk to the fleece device at the same offset (copy-before-write);
 * writes to any other chunk pass without a lock.
 */

#include <linux/module.h>

#include "dm-fleece.h"

struct fleece_origin {
	struct fleece_target_link link;
	struct dm_dev *origin;
	struct dm_dev *fleece;
	struct fleece_ctx *ctx;
	sector_t origin_offset;
	unsigned int chunk_sectors;
	bool fail_origin_writes;
	unsigned int cbw_timeout_ms;
	const char *track_store_path;	/* in the table line, until opened */
	struct dm_dev *track_store;	/* or NULL */
	bool live;	/* resumed, not suspended since */
};

/*
 * Numbers are parsed with kstrtou*(), not dm_read_arg(): sscanf() would
 * silently wrap a value such as 4294967796 to 500.
 */
static int fleece_parse_features(struct dm_arg_set *as, struct fleece_origin *fo,
				 struct dm_target *ti)
{
	unsigned int argc, ms;
	const char *name;
	u64 sectors;

	if (!as->argc)
		return 0;
	if (kstrtouint(dm_shift_arg(as), 10, &argc) || argc > 7 || argc > as->argc) {
		ti->error = "Invalid number of feature arguments";
		return -EINVAL;
	}

	while (argc) {
		name = dm_shift_arg(as);
		argc--;
		if (!strcasecmp(name, FLEECE_FEATURE_FAIL_ORIGIN_WRITES)) {
			fo->fail_origin_writes = true;
		} else if (!strcasecmp(name, FLEECE_FEATURE_CBW_TIMEOUT_MS)) {
			if (!argc) {
				ti->error = "Feature cbw_timeout_ms needs a value";
				return -EINVAL;
			}
			if (kstrtouint(dm_shift_arg(as), 10, &ms)) {
				ti->error = "Invalid cbw_timeout_ms: not a number of milliseconds";
				return -EINVAL;
			}
			argc--;
			fo->cbw_timeout_ms = ms;
		} else if (!strcasecmp(name, FLEECE_FEATURE_ORIGIN_OFFSET)) {
			if (!argc) {
				ti->error = "Feature origin_offset needs a value";
				return -EINVAL;
			}
			if (kstrtou64(dm_shift_arg(as), 10, &sectors)) {
				ti->error = "Invalid origin_offset: not a number of sectors";
				return -EINVAL;
			}
			argc--;
			fo->origin_offset = sectors;
		} else if (!strcasecmp(name, FLEECE_FEATURE_TRACK_STORE)) {
			if (!argc) {
				ti->error = "Feature track_store needs a device";
				return -EINVAL;
			}
			fo->track_store_path = dm_shift_arg(as);
			argc--;
		} else {
			ti->error = "Unknown feature argument";
			return -EINVAL;
		}
	}
	return 0;
}

static int fleece_parse_chunk_sectors(const char *arg, unsigned int *chunk,
				      struct dm_target *ti)
{
	int r = kstrtouint(arg, 10, chunk);

	if (r == -ERANGE) {
		ti->error = "Invalid chunk size: larger than 32768 sectors";
		return -EINVAL;
	}
	if (r) {
		ti->error = "Invalid chunk size: not a number of sectors";
		return -EINVAL;
	}
	if (!is_power_of_2(*chunk)) {
		ti->error = "Invalid chunk size: not a power of two";
		return -EINVAL;
	}
	if (*chunk < FLEECE_MIN_CHUNK_SECTORS) {
		ti->error = "Invalid chunk size: smaller than 8 sectors";
		return -EINVAL;
	}
	if (*chunk > FLEECE_MAX_CHUNK_SECTORS) {
		ti->error = "Invalid chunk size: larger than 32768 sectors";
		return -EINVAL;
	}
	return 0;
}

/*
 * Both devices must hold the region (the origin from origin_offset on) and
 * have blocks that divide a chunk and, on the origin, the offset.
 */
static int fleece_check_devices(struct fleece_origin *fo, struct dm_target *ti)
{
	unsigned int bytes = fo->chunk_sectors << SECTOR_SHIFT;
	sector_t origin_sectors = bdev_nr_sectors(fo->origin->bdev);
	unsigned int origin_lbs = bdev_logical_block_size(fo->origin->bdev);

	if (fo->origin->bdev == fo->fleece->bdev) {
		ti->error = "Origin and fleece devices must differ";
		return -EINVAL;
	}
	if (fo->origin_offset >= origin_sectors) {
		ti->error = "Origin offset is beyond the end of the origin device";
		return -EINVAL;
	}
	if (origin_sectors - fo->origin_offset < ti->len) {
		ti->error = fo->origin_offset ?
			"Origin device is smaller than origin_offset plus the target" :
			"Origin device is smaller than the target";
		return -EINVAL;
	}
	if (fo->origin_offset & ((origin_lbs >> SECTOR_SHIFT) - 1)) {
		ti->error = "Origin offset is not a multiple of the origin's logical block size";
		return -EINVAL;
	}
	if (bdev_nr_sectors(fo->fleece->bdev) < ti->len) {
		ti->error = "Fleece device is smaller than the target";
		return -EINVAL;
	}
	if (bytes % origin_lbs) {
		ti->error = "Chunk size is not a multiple of the origin's logical block size";
		return -EINVAL;
	}
	if (bytes % bdev_logical_block_size(fo->fleece->bdev)) {
		ti->error = "Chunk size is not a multiple of the fleece's logical block size";
		return -EINVAL;
	}
	/* The last chunk's copy is as long as what is left of the region. */
	if (ti->len & ((bdev_logical_block_size(fo->fleece->bdev) >> SECTOR_SHIFT) - 1)) {
		ti->error = "Target length is not a multiple of the fleece's logical block size";
		return -EINVAL;
	}
	return 0;
}

static int fleece_origin_ctr(struct dm_target *ti, unsigned int argc, char **argv)
{
	struct dm_arg_set as = { .argc = argc, .argv = argv };
	struct fleece_origin *fo;
	struct fleece_ctx *ctx;
	int r;

	if (argc < 3) {
		ti->error = "Not enough arguments: <origin_dev> <fleece_dev> <chunk_sectors>";
		return -EINVAL;
	}

	fo = kzalloc(sizeof(*fo), GFP_KERNEL);
	if (!fo) {
		ti->error = "Cannot allocate fleece target";
		return -ENOMEM;
	}
	fo->link.ti = ti;

	r = fleece_parse_chunk_sectors(argv[2], &fo->chunk_sectors, ti);
	if (r)
		goto bad;
	dm_consume_args(&as, 3);
	r = fleece_parse_features(&as, fo, ti);
	if (r)
		goto bad;
	if (as.argc) {
		ti->error = "Too many arguments";
		r = -EINVAL;
		goto bad;
	}

	r = dm_get_device(ti, argv[0], dm_table_get_mode(ti->table), &fo->origin);
	if (r) {
		ti->error = "Cannot open origin device";
		goto bad;
	}
	r = dm_get_device(ti, argv[1], dm_table_get_mode(ti->table), &fo->fleece);
	if (r) {
		ti->error = "Cannot open fleece device";
		goto bad_fleece;
	}
	if (fo->track_store_path) {
		/* Held open, so that its number stays the tracker's. */
		r = dm_get_device(ti, fo->track_store_path,
				  dm_table_get_mode(ti->table), &fo->track_store);
		if (r) {
			ti->error = "Cannot open track_store device";
			goto bad_ctx;
		}
		if (fo->track_store->bdev == fo->origin->bdev ||
		    fo->track_store->bdev == fo->fleece->bdev) {
			ti->error = "track_store must differ from the origin and fleece devices";
			r = -EINVAL;
			goto bad_ctx;
		}
	}
	r = fleece_check_devices(fo, ti);
	if (r)
		goto bad_ctx;

	ctx = fleece_ctx_bind(&fo->link, fo->origin, fo->fleece,
			      fo->origin_offset, fo->chunk_sectors);
	if (IS_ERR(ctx)) {
		r = PTR_ERR(ctx);
		goto bad_ctx;
	}
	fo->ctx = ctx;

	/*
	 * No max_io_len: dm core would then cut every bio at chunk
	 * boundaries, which costs the fast path as much as a stripe split.
	 * fleece_origin_trim() cuts only where a pending chunk starts or ends.
	 */
	ti->num_flush_bios = 1;
	ti->num_discard_bios = 1;
	ti->num_write_zeroes_bios = 1;
	ti->num_secure_erase_bios = 1;
	ti->per_io_data_size = sizeof(struct fleece_bio);
	ti->accounts_remapped_io = true;
	ti->private = fo;
	return 0;

bad_ctx:
	if (fo->track_store)
		dm_put_device(ti, fo->track_store);
	dm_put_device(ti, fo->fleece);
bad_fleece:
	dm_put_device(ti, fo->origin);
bad:
	kfree(fo);
	return r;
}

static void fleece_origin_dtr(struct dm_target *ti)
{
	struct fleece_origin *fo = ti->private;

	if (fo->live)
		fleece_ctx_origin_suspend(fo->ctx);
	fleece_ctx_unbind(fo->ctx, &fo->link, true);
	if (fo->track_store)
		dm_put_device(ti, fo->track_store);
	dm_put_device(ti, fo->fleece);
	dm_put_device(ti, fo->origin);
	kfree(fo);
}

/* Are chunks @first to @last all done (copied or released)? */
static bool fleece_chunks_done(struct fleece_ctx *ctx, unsigned long first,
			       unsigned long last)
{
	unsigned long chunk;

	for (chunk = first; chunk <= last; chunk++)
		if (!fleece_chunk_done(ctx, chunk))
			return false;
	return true;
}

/* Discard origin sectors @start to @end (target offsets) alongside @bio. */
static void fleece_origin_discard_run(struct fleece_origin *fo,
				      struct bio *bio, sector_t start,
				      sector_t end)
{
	struct bio *run;

	/* A discard may be dropped: never wait for memory in .map. */
	run = bio_alloc(fo->origin->bdev, 0, bio->bi_opf, GFP_NOWAIT);
	if (!run)
		return;
	run->bi_iter.bi_sector = fo->origin_offset + start;
	run->bi_iter.bi_size = (end - start) << SECTOR_SHIFT;
	bio_chain(run, bio);
	submit_bio_noacct(run);
}

/*
 * A discard that reaches a pending chunk must not go down there: the frozen
 * data would be lost.  It goes down over its runs of done chunks only,
 * each but the last as a bio of its own chained to @bio, the last as @bio
 * trimmed to it (dm core sends discards as duplicate bios, which may not
 * be cut); over pending chunks it is dropped, as a discard may be, and
 * costs no copy.
 *
 * Return: a DM_MAPIO_* value; REMAPPED with @bio trimmed to the last run.
 */
static int fleece_origin_discard(struct dm_target *ti, struct bio *bio,
				 unsigned long first, unsigned long last)
{
	struct fleece_origin *fo = ti->private;
	struct fleece_ctx *ctx = fo->ctx;
	sector_t off = dm_target_offset(ti, bio->bi_iter.bi_sector);
	sector_t end = off + bio_sectors(bio);
	sector_t run_start = 0, run_end = 0, s;
	unsigned long chunk = first;

	while (chunk <= last) {
		if (!fleece_chunk_done(ctx, chunk)) {
			chunk++;
			continue;
		}
		s = max(off, fleece_chunk_start(ctx, chunk));
		while (chunk <= last && fleece_chunk_done(ctx, chunk))
			chunk++;
		if (run_end)
			fleece_origin_discard_run(fo, bio, run_start, run_end);
		run_start = s;
		run_end = min(end, fleece_chunk_start(ctx, chunk));
	}
	if (!run_end) {
		bio_endio(bio);
		return DM_MAPIO_SUBMITTED;
	}
	bio->bi_iter.bi_sector = ti->begin + run_start;
	bio->bi_iter.bi_size = (run_end - run_start) << SECTOR_SHIFT;
	return DM_MAPIO_REMAPPED;
}

/**
 * fleece_origin_map_bio() - map an origin bio, first time or again
 * @ti: the fleece target
 * @bio: a read; a write over done chunks only, or within one chunk; or a
 *	discard, write-zeroes or secure erase over any chunks
 *
 * Return: a DM_MAPIO_* value.
 */
int fleece_origin_map_bio(struct dm_target *ti, struct bio *bio)
{
	struct fleece_origin *fo = ti->private;
	struct fleece_ctx *ctx = fo->ctx;
	unsigned long chunk, last;
	int r;

	if (bio_op(bio) == REQ_OP_READ || !bio_sectors(bio))
		goto remap;

	chunk = fleece_chunk_of(ctx, ti, bio);
	if (bio_op(bio) == REQ_OP_WRITE) {
		/* Over done chunks only, or within one: fleece_origin_trim() */
		if (likely(fleece_chunk_done(ctx, chunk)) ||
		    fleece_ctx_invalid(ctx))
			goto remap;
		/* Pending chunk: the old data must be kept for the view. */
		r = fleece_origin_write(ctx, bio, chunk);
		if (r != DM_MAPIO_REMAPPED)
			return r;
		goto remap;	/* the chunk became done, or the view invalid */
	}

	/* Discards, write-zeroes, secure erases: whole, over all chunks. */
	last = fleece_last_chunk_of(ctx, ti, bio);
	if (fleece_ctx_invalid(ctx) || fleece_chunks_done(ctx, chunk, last))
		goto remap;
	switch (bio_op(bio)) {
	case REQ_OP_DISCARD:
		r = fleece_origin_discard(ti, bio, chunk, last);
		break;
	case REQ_OP_WRITE_ZEROES:
	case REQ_OP_SECURE_ERASE:
		r = fleece_origin_extent(ctx, bio, chunk, last);
		break;
	default:
		return DM_MAPIO_KILL;	/* zone operations: not supported */
	}
	if (r != DM_MAPIO_REMAPPED)
		return r;

remap:
	bio_set_dev(bio, fo->origin->bdev);
	bio->bi_iter.bi_sector = fo->origin_offset +
		dm_target_offset(ti, bio->bi_iter.bi_sector);
	return DM_MAPIO_REMAPPED;
}

/**
 * fleece_origin_trim() - cut a write where copy-before-write starts to matter
 * @ctx: the shared context
 * @ti: the fleece target
 * @bio: a write with data
 *
 * Done chunks (copied or released) never become pending again, and neither
 * does an invalid context, so a bio over done chunks only goes down whole:
 * the fast path pays no split.  A bio that starts in a pending chunk is cut
 * at that chunk's end, so the copy-before-write engine sees bios within one
 * chunk only; one that reaches a pending chunk later is cut where that chunk
 * starts.  dm core maps the rest as a new bio.
 */
static void fleece_origin_trim(struct fleece_ctx *ctx, struct dm_target *ti,
			       struct bio *bio)
{
	unsigned long chunk = fleece_chunk_of(ctx, ti, bio);
	unsigned long last = fleece_last_chunk_of(ctx, ti, bio);

	if (chunk == last || fleece_ctx_invalid(ctx))
		return;
	if (fleece_chunk_done(ctx, chunk)) {
		while (chunk < last && fleece_chunk_done(ctx, chunk + 1))
			chunk++;
		if (chunk == last)
			return;
	}
	fleece_bio_cut(ctx, bio, chunk);
}

static int fleece_origin_map(struct dm_target *ti, struct bio *bio)
{
	struct fleece_origin *fo = ti->private;
	struct fleece_bio *fb = fleece_bio(bio);

	fb->ti = ti;
	fb->is_view = false;
	fb->on_origin = false;
	/*
	 * Reads need no chunk state: they go down whole.  Discards,
	 * write-zeroes and secure erases are never cut: see fleece_bio_cut().
	 */
	if (bio_op(bio) == REQ_OP_WRITE && bio_sectors(bio))
		fleece_origin_trim(fo->ctx, ti, bio);
	return fleece_origin_map_bio(ti, bio);
}

static void fleece_origin_postsuspend(struct dm_target *ti)
{
	struct fleece_origin *fo = ti->private;

	if (fo->live) {
		fo->live = false;
		fleece_ctx_origin_suspend(fo->ctx);
	}
}

static void fleece_origin_resume(struct dm_target *ti)
{
	struct fleece_origin *fo = ti->private;
	struct fleece_ctx *ctx = fo->ctx;

	/* The table that resumes last sets the policy. */
	WRITE_ONCE(ctx->fail_origin_writes, fo->fail_origin_writes);
	WRITE_ONCE(ctx->cbw_timeout_ms, fo->cbw_timeout_ms);
	if (!fo->live) {
		fo->live = true;
		fleece_ctx_origin_resume(ctx, fo->track_store ?
					 fo->track_store->bdev : NULL);
	}
}

static void fleece_origin_status(struct dm_target *ti, status_type_t type,
				 unsigned int status_flags, char *result,
				 unsigned int maxlen)
{
	struct fleece_origin *fo = ti->private;
	struct fleece_ctx *ctx = fo->ctx;
	unsigned int sz = 0, nr_features;
	u64 copied, released, done;
	unsigned int in_flight;
	unsigned long flags;

	switch (type) {
	case STATUSTYPE_INFO:
		copied = atomic64_read(&ctx->nr_copied);
		released = atomic64_read(&ctx->nr_released);
		/*
		 * A release between the two reads counts a chunk in both:
		 * pending is a snapshot that must not wrap below zero.
		 */
		done = min_t(u64, copied + released, ctx->nr_chunks);
		spin_lock_irqsave(&ctx->lock, flags);
		in_flight = ctx->nr_copies;
		spin_unlock_irqrestore(&ctx->lock, flags);
		DMEMIT("%u %lu %llu %llu %llu %llu %llu %s %u %lu",
		       ctx->chunk_sectors, ctx->nr_chunks,
		       (unsigned long long)(ctx->nr_chunks - done),
		       (unsigned long long)copied, (unsigned long long)released,
		       (unsigned long long)atomic64_read(&ctx->cbw_count),
		       (unsigned long long)atomic64_read(&ctx->cbw_errors),
		       fleece_ctx_invalid(ctx) ? FLEECE_STATE_INVALID :
						 FLEECE_STATE_ACTIVE, in_flight,
		       READ_ONCE(ctx->nr_track_released));
		break;
	case STATUSTYPE_TABLE:
		DMEMIT("%s %s %u", fo->origin->name, fo->fleece->name,
		       fo->chunk_sectors);
		nr_features = (fo->fail_origin_writes ? 1 : 0) +
			      (fo->cbw_timeout_ms ? 2 : 0) +
			      (fo->origin_offset ? 2 : 0) +
			      (fo->track_store ? 2 : 0);
		if (nr_features)
			DMEMIT(" %u", nr_features);
		if (fo->fail_origin_writes)
			DMEMIT(" " FLEECE_FEATURE_FAIL_ORIGIN_WRITES);
		if (fo->cbw_timeout_ms)
			DMEMIT(" " FLEECE_FEATURE_CBW_TIMEOUT_MS " %u",
			       fo->cbw_timeout_ms);
		if (fo->origin_offset)
			DMEMIT(" " FLEECE_FEATURE_ORIGIN_OFFSET " %llu",
			       (unsigned long long)fo->origin_offset);
		if (fo->track_store)
			DMEMIT(" " FLEECE_FEATURE_TRACK_STORE " %s",
			       fo->track_store->name);
		break;
	case STATUSTYPE_IMA:
		/* What dm-ima measures at each load and resume: the setup. */
		DMEMIT_TARGET_NAME_VERSION(ti->type);
		DMEMIT(",origin_name=%s,fleece_name=%s,chunk_sectors=%u",
		       fo->origin->name, fo->fleece->name, fo->chunk_sectors);
		DMEMIT(",origin_offset=%llu,fail_origin_writes=%c",
		       (unsigned long long)fo->origin_offset,
		       fo->fail_origin_writes ? 'y' : 'n');
		DMEMIT(",cbw_timeout_ms=%u", fo->cbw_timeout_ms);
		DMEMIT(",track_store=%s;", fo->track_store ?
		       fo->track_store->name : "none");
		break;
	default:
		result[0] = '\0';
		break;
	}
}

static int fleece_origin_iterate_devices(struct dm_target *ti,
					 iterate_devices_callout_fn fn,
					 void *data)
{
	struct fleece_origin *fo = ti->private;

	return fn(ti, fo->origin, fo->origin_offset, ti->len, data);
}

static struct target_type fleece_origin_target = {
	.name = FLEECE_TARGET_NAME,
	.version = {1, 5, 0},
	.module = THIS_MODULE,
	.ctr = fleece_origin_ctr,
	.dtr = fleece_origin_dtr,
	.map = fleece_origin_map,
	.postsuspend = fleece_origin_postsuspend,
	.resume = fleece_origin_resume,
	.status = fleece_origin_status,
	.iterate_devices = fleece_origin_iterate_devices,
};

int fleece_origin_register(void)
{
	return dm_register_target(&fleece_origin_target);
}

void fleece_origin_unregister(void)
{
	dm_unregister_target(&fleece_origin_target);
}
