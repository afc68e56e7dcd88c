// SPDX-License-Identifier: GPL-2.0
/*
 * dm-fleece: the store of the "fleece-track" target, its on-disk format.
 *
 * The layout is described in dm-fleece-track.h and in dm-fleece.rst.  All
 * writes here come from one thread at a time (the store's lock, or the
 * constructor before the store is shared).
 *
 * Copyright (C) 2026 The dm-fleece authors
 */

#include <linux/crc32c.h>
#include <linux/random.h>
#include <linux/slab.h>
#include <linux/timekeeping.h>
#include <linux/vmalloc.h>

#include "dm-fleece-compat.h"
#include "dm-fleece-track.h"

#define DM_MSG_PREFIX "fleece-track"

#define FT_LOAD_BLOCKS	64	/* blocks read or formatted per I/O */

/* The standard CRC-32C (Castagnoli) of a block's bytes 4..4095. */
static u32 ft_csum(const void *block)
{
	return ~crc32c(~0u, block + 4, FLEECE_TRACK_BLOCK_SIZE - 4);
}

static sector_t ft_area_sector(struct ft_store *ft, unsigned int area,
			       unsigned int block)
{
	return ((sector_t)FLEECE_TRACK_BITMAP_START +
		(sector_t)area * ft->nr_blocks + block) * FT_BLOCK_SECTORS;
}

sector_t ft_store_min_sectors(unsigned long nr_chunks)
{
	sector_t blocks = DIV_ROUND_UP(nr_chunks, FT_BITS);

	return (FLEECE_TRACK_BITMAP_START + 2 * blocks) * FT_BLOCK_SECTORS;
}

struct ft_io_wait {
	atomic_t count;
	int error;
	struct completion done;
};

static void ft_io_end(unsigned long error, void *context)
{
	struct ft_io_wait *w = context;

	if (error)
		WRITE_ONCE(w->error, -EIO);
	if (atomic_dec_and_test(&w->count))
		complete(&w->done);
}

/* Synchronous I/O of @sectors at @sector of the store, from @buf. */
static int ft_io(struct ft_store *ft, blk_opf_t opf, sector_t sector,
		 void *buf, sector_t sectors)
{
	struct dm_io_region where = {
		.bdev = ft->store_bdev,
		.sector = sector,
		.count = sectors,
	};
	struct dm_io_request req = {
		.bi_opf = opf,
		.client = ft->io_client,
	};

	if (is_vmalloc_addr(buf)) {
		req.mem.type = DM_IO_VMA;
		req.mem.ptr.vma = buf;
	} else {
		req.mem.type = DM_IO_KMEM;
		req.mem.ptr.addr = buf;
	}
	return fleece_dm_io(&req, 1, &where);
}

static void ft_encode_sb(struct ft_store *ft, void *buf, u64 seq)
{
	struct ft_disk_sb *sb = buf;

	memset(buf, 0, FLEECE_TRACK_BLOCK_SIZE);
	sb->magic = cpu_to_le32(FLEECE_TRACK_SB_MAGIC);
	sb->version = cpu_to_le32(FLEECE_TRACK_VERSION);
	sb->flags = cpu_to_le32(ft->flags);
	sb->seq = cpu_to_le64(seq);
	sb->generation = cpu_to_le64(ft->generation);
	sb->epoch = cpu_to_le64(ft->epoch);
	sb->nr_chunks = cpu_to_le64(ft->nr_chunks);
	sb->data_sectors = cpu_to_le64(ft->data_sectors);
	sb->chunk_sectors = cpu_to_le32(ft->chunk_sectors);
	sb->prev_state = cpu_to_le32(ft->prev_state);
	sb->bitmap_blocks = cpu_to_le64(ft->nr_blocks);
	sb->checkpoint_time = cpu_to_le64(ft->checkpoint_time);
	sb->format_time = cpu_to_le64(ft->format_time);
	memcpy(sb->store_uuid, ft->store_uuid, sizeof(sb->store_uuid));
	strscpy(sb->device_id, ft->device_id, sizeof(sb->device_id));
	sb->csum = cpu_to_le32(ft_csum(buf));
}

/**
 * ft_write_sb() - make the in-memory superblock fields durable
 * @ft: the store
 *
 * Writes the next slot (seq + 1) with a preflush, so that every bitmap
 * block written before is durable first, and FUA.  On failure @seq is kept:
 * the slot of the last good superblock is never written, so the store
 * still holds it.  While the history is FT_FAILED the superblock carries the
 * loss (ft_record_lost()): once it is durable, the history is FT_LOST.
 *
 * Return: 0 or a negative error.
 */
int ft_write_sb(struct ft_store *ft)
{
	u64 seq = ft->seq + 1;
	int r;

	ft_encode_sb(ft, ft->sb_buf, seq);
	r = ft_io(ft, REQ_OP_WRITE | REQ_SYNC | REQ_PREFLUSH | REQ_FUA,
		  (seq & 1) * FT_BLOCK_SECTORS, ft->sb_buf, FT_BLOCK_SECTORS);
	if (r)
		return r;
	ft->seq = seq;
	if (ft->history == FT_FAILED) {
		WRITE_ONCE(ft->history, FT_LOST);
		DMERR("%pg: %s: history lost (store failed): generation %llu, next backup full",
		      ft->store_bdev, ft->device_id, ft->generation);
	}
	return 0;
}

static void ft_bitmap_header(struct ft_store *ft, void *buf, unsigned int area,
			     unsigned int block, u64 epoch)
{
	struct ft_disk_bitmap *h = buf;

	memset(buf, 0, FLEECE_TRACK_BITMAP_HDR);
	h->magic = cpu_to_le32(FLEECE_TRACK_BITMAP_MAGIC);
	h->epoch = cpu_to_le64(epoch);
	h->area = cpu_to_le32(area);
	h->index = cpu_to_le32(block);
	memcpy(h->store_uuid, ft->store_uuid, sizeof(h->store_uuid));
}

/**
 * ft_block_init() - a current-epoch image of bitmap block @block in @buf
 * @ft: the store
 * @buf: a FLEECE_TRACK_BLOCK_SIZE buffer
 * @block: the block's index in the current area
 *
 * The bits are those of @ft->cur: durable marks only.  The caller adds new
 * ones, then ft_write_blocks() writes the block.
 */
void ft_block_init(struct ft_store *ft, void *buf, unsigned int block)
{
	ft_bitmap_header(ft, buf, ft->epoch & 1, block, ft->epoch);
	memcpy(ft_buf_bits(buf), ft_block_bits(ft->cur, block), FT_BITS / 8);
}

/**
 * ft_write_blocks() - write @ft->blk_buf[0..@n) and make them durable
 * @ft: the store, locked
 * @n: how many; @ft->blk_index[] names each one's block in the current area
 *
 * The blocks are written in parallel, each with FUA and no flush of the
 * store: when this returns 0 every bit in them is durable.  Nothing else
 * needs to be: every earlier store write that the blocks' meaning rests on
 * (the superblock of this epoch, marked dirty; earlier commits of the
 * epoch) completed durable before these were issued, and each block stands
 * alone (its own checksum; torn, it reads as all changed).  On failure no
 * buffer is taken as the store's image any more (@ft->blk_cached).
 *
 * Return: 0 or -EIO.
 */
int ft_write_blocks(struct ft_store *ft, unsigned int n)
{
	unsigned int area = ft->epoch & 1;
	struct ft_io_wait w;
	unsigned int i;
	int r;

	atomic_set(&w.count, 1);
	w.error = 0;
	init_completion(&w.done);
	for (i = 0; i < n; i++) {
		void *buf = ft->blk_buf[i];
		struct dm_io_region where = {
			.bdev = ft->store_bdev,
			.sector = ft_area_sector(ft, area, ft->blk_index[i]),
			.count = FT_BLOCK_SECTORS,
		};
		struct dm_io_request req = {
			.bi_opf = REQ_OP_WRITE | REQ_SYNC | REQ_FUA,
			.mem.type = DM_IO_KMEM,
			.mem.ptr.addr = buf,
			.notify.fn = ft_io_end,
			.notify.context = &w,
			.client = ft->io_client,
		};

		((struct ft_disk_bitmap *)buf)->csum = cpu_to_le32(ft_csum(buf));
		atomic_inc(&w.count);
		r = fleece_dm_io(&req, 1, &where);
		if (r) {
			atomic_dec(&w.count);
			w.error = r;
			break;
		}
	}
	if (!atomic_dec_and_test(&w.count))
		wait_for_completion_io(&w.done);
	if (READ_ONCE(w.error)) {
		ft->blk_cached = 0;
		return -EIO;
	}
	return 0;
}

/* An empty bitmap block of @epoch, written with FUA. */
int ft_write_empty_block(struct ft_store *ft, unsigned int area,
			 unsigned int block, u64 epoch)
{
	void *buf = ft->blk_buf[0];

	ft->blk_cached &= ~1u;
	memset(buf, 0, FLEECE_TRACK_BLOCK_SIZE);
	ft_bitmap_header(ft, buf, area, block, epoch);
	((struct ft_disk_bitmap *)buf)->csum = cpu_to_le32(ft_csum(buf));
	return ft_io(ft, REQ_OP_WRITE | REQ_SYNC | REQ_FUA,
		     ft_area_sector(ft, area, block), buf, FT_BLOCK_SECTORS);
}

static bool ft_all_zero(const void *buf)
{
	return !memchr_inv(buf, 0, FLEECE_TRACK_BLOCK_SIZE);
}

/* A new store: empty areas (epoch 0 tags), then the superblock. */
static int ft_format(struct ft_store *ft, void *buf, char **error)
{
	unsigned int area, b, i, n;
	int r;

	get_random_bytes(ft->store_uuid, sizeof(ft->store_uuid));
	ft->generation = 1;
	ft->epoch = 1;
	ft->seq = 0;
	ft->flags = FLEECE_TRACK_SB_CLEAN;
	ft->prev_state = FLEECE_TRACK_PREV_NONE;
	ft->format_time = ktime_get_real_seconds();
	ft->checkpoint_time = 0;

	for (area = 0; area < 2; area++) {
		for (b = 0; b < ft->nr_blocks; b += n) {
			n = min_t(unsigned int, FT_LOAD_BLOCKS, ft->nr_blocks - b);
			memset(buf, 0, (size_t)n * FLEECE_TRACK_BLOCK_SIZE);
			for (i = 0; i < n; i++) {
				void *blk = buf + (size_t)i * FLEECE_TRACK_BLOCK_SIZE;

				ft_bitmap_header(ft, blk, area, b + i, 0);
				((struct ft_disk_bitmap *)blk)->csum =
					cpu_to_le32(ft_csum(blk));
			}
			r = ft_io(ft, REQ_OP_WRITE, ft_area_sector(ft, area, b),
				  buf, (sector_t)n * FT_BLOCK_SECTORS);
			if (r)
				goto bad;
		}
	}
	r = blkdev_issue_flush(ft->store_bdev);
	if (!r)
		r = ft_write_sb(ft);
	if (!r) {
		DMINFO("%pg: formatted for %s: %lu chunks of %u sectors",
		       ft->store_bdev, ft->device_id, ft->nr_chunks,
		       ft->chunk_sectors);
		return 0;
	}
bad:
	*error = "Cannot format the store: write failed";
	return r;
}

/* Which superblock slot is current: 0, 1, or -1 (with *@error set). */
static int ft_pick_sb(void *buf, bool *blank, char **error)
{
	struct ft_disk_sb *sb[2] = { buf, buf + FLEECE_TRACK_BLOCK_SIZE };
	bool valid[2];
	int i;

	*blank = false;
	for (i = 0; i < 2; i++) {
		valid[i] = le32_to_cpu(sb[i]->magic) == FLEECE_TRACK_SB_MAGIC &&
			le32_to_cpu(sb[i]->csum) == ft_csum(sb[i]) &&
			(le64_to_cpu(sb[i]->seq) & 1) == i;
		if (valid[i] && le32_to_cpu(sb[i]->version) != FLEECE_TRACK_VERSION) {
			*error = "Store has an unsupported format version";
			return -1;
		}
	}
	if (valid[0] && valid[1])
		return le64_to_cpu(sb[1]->seq) > le64_to_cpu(sb[0]->seq);
	if (valid[0] || valid[1])
		return valid[1];
	if (ft_all_zero(sb[0]) && ft_all_zero(sb[1])) {
		*blank = true;
		*error = "Store is blank (not formatted); the feature \"format\" formats it";
	} else {
		*error = "Store is corrupted: no valid superblock";
	}
	return -1;
}

static int ft_check_sb(struct ft_store *ft, struct ft_disk_sb *sb, char **error)
{
	char id[sizeof(sb->device_id) + 1];

	memcpy(id, sb->device_id, sizeof(sb->device_id));
	id[sizeof(sb->device_id)] = 0;
	if (strcmp(id, ft->device_id)) {
		*error = "Store belongs to another device (its device_id differs)";
		return -EINVAL;
	}
	if (le32_to_cpu(sb->chunk_sectors) != ft->chunk_sectors) {
		*error = "Store was formatted with another chunk size";
		return -EINVAL;
	}
	if (le64_to_cpu(sb->data_sectors) != ft->data_sectors) {
		*error = "Store was formatted for another device size";
		return -EINVAL;
	}
	if (le64_to_cpu(sb->nr_chunks) != ft->nr_chunks ||
	    le64_to_cpu(sb->bitmap_blocks) != ft->nr_blocks ||
	    !le64_to_cpu(sb->epoch) ||
	    le32_to_cpu(sb->prev_state) > FLEECE_TRACK_PREV_MERGED) {
		*error = "Store is corrupted: inconsistent superblock";
		return -EINVAL;
	}
	ft->seq = le64_to_cpu(sb->seq);
	ft->generation = le64_to_cpu(sb->generation);
	ft->epoch = le64_to_cpu(sb->epoch);
	ft->flags = le32_to_cpu(sb->flags);
	ft->prev_state = le32_to_cpu(sb->prev_state);
	ft->checkpoint_time = le64_to_cpu(sb->checkpoint_time);
	ft->format_time = le64_to_cpu(sb->format_time);
	memcpy(ft->store_uuid, sb->store_uuid, sizeof(ft->store_uuid));
	return 0;
}

/* Every chunk of @block set in @map: what a block that fails its checks means. */
static void ft_set_block(struct ft_store *ft, unsigned long *map,
			 unsigned int block)
{
	unsigned long c = (unsigned long)block * FT_BITS;
	unsigned long end = min_t(unsigned long, c + FT_BITS, ft->nr_chunks);

	for (; c < end; c++)
		__set_bit_le(c, map);
}

/* Read one bitmap area into @map: blocks of @epoch count, others are empty. */
static int ft_load_area(struct ft_store *ft, void *buf, unsigned int area,
			u64 epoch, unsigned long *map)
{
	unsigned int b, i, n;
	int r;

	for (b = 0; b < ft->nr_blocks; b += n) {
		n = min_t(unsigned int, FT_LOAD_BLOCKS, ft->nr_blocks - b);
		r = ft_io(ft, REQ_OP_READ, ft_area_sector(ft, area, b), buf,
			  (sector_t)n * FT_BLOCK_SECTORS);
		if (r)
			return r;
		for (i = 0; i < n; i++) {
			void *blk = buf + (size_t)i * FLEECE_TRACK_BLOCK_SIZE;
			struct ft_disk_bitmap *h = blk;
			u64 tag = le64_to_cpu(h->epoch);

			if (le32_to_cpu(h->csum) != ft_csum(blk) ||
			    le32_to_cpu(h->magic) != FLEECE_TRACK_BITMAP_MAGIC ||
			    le32_to_cpu(h->area) != area ||
			    le32_to_cpu(h->index) != b + i ||
			    memcmp(h->store_uuid, ft->store_uuid, sizeof(h->store_uuid)) ||
			    tag > ft->epoch) {
				/* Torn or corrupted: conservatively all changed. */
				__set_bit(b + i, ft->bad[area]);
				ft->nr_conservative++;
				ft_set_block(ft, map, b + i);
				continue;
			}
			if (tag == epoch)
				memcpy(ft_block_bits(map, b + i), ft_buf_bits(blk),
				       FT_BITS / 8);
		}
	}
	return 0;
}

/**
 * ft_store_load() - read the store into memory, or format a blank one
 * @ft: the store; its geometry, device_id, store_bdev and io_client set
 * @format: a blank store (both superblock blocks all zeros) may be formatted
 * @error: set to the reason on failure
 *
 * A store with any content is never formatted: only a blank one, and only
 * when asked.  Bitmap blocks that fail their checks are read as "every chunk
 * changed" and counted in @ft->nr_conservative.
 *
 * Return: 0 or a negative error.
 */
int ft_store_load(struct ft_store *ft, bool format, char **error)
{
	unsigned int cur_area;
	void *buf;
	bool blank;
	int slot, r;

	buf = vmalloc(FT_LOAD_BLOCKS * FLEECE_TRACK_BLOCK_SIZE);
	if (!buf) {
		*error = "Cannot allocate the store's read buffer";
		return -ENOMEM;
	}
	r = ft_io(ft, REQ_OP_READ, 0, buf, 2 * FT_BLOCK_SECTORS);
	if (r) {
		*error = "Cannot read the store's superblocks";
		goto out;
	}
	slot = ft_pick_sb(buf, &blank, error);
	if (slot < 0) {
		r = -EINVAL;
		if (blank && format)
			r = ft_format(ft, buf, error);
		ft->opened_clean = true;
		goto out;
	}
	r = ft_check_sb(ft, buf + slot * FLEECE_TRACK_BLOCK_SIZE, error);
	if (r)
		goto out;
	ft->opened_clean = ft->flags & FLEECE_TRACK_SB_CLEAN;
	cur_area = ft->epoch & 1;

	r = ft_load_area(ft, buf, cur_area, ft->epoch, ft->cur);
	if (!r && ft->prev_state != FLEECE_TRACK_PREV_DONE)
		r = ft_load_area(ft, buf, !cur_area, ft->epoch - 1, ft->prev);
	if (r) {
		*error = "Cannot read the store's bitmaps";
		goto out;
	}
	if (ft->flags & FLEECE_TRACK_SB_CUR_LOST)
		ft->history = FT_LOST;
	ft->nr_cur = bitmap_weight(ft->cur, ft->nr_blocks * FT_BITS);
	ft->nr_prev = bitmap_weight(ft->prev, ft->nr_blocks * FT_BITS);
	if (!ft->opened_clean)
		DMWARN("%pg: store of %s was not closed cleanly (crash?)",
		       ft->store_bdev, ft->device_id);
	if (ft->nr_conservative)
		DMWARN("%pg: %u bitmap blocks failed their checks: read as all changed",
		       ft->store_bdev, ft->nr_conservative);
out:
	vfree(buf);
	return r;
}
