/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dm-fleece: the "fleece-track" target, persistent changed-chunk tracking.
 *
 *   dm-fleece-track.c       the target: map, deferred marks, messages, status
 *   dm-fleece-track-meta.c  the store: its on-disk format, load, commits
 *
 * The store (all blocks 4 KiB, all numbers little endian):
 *
 *   block 0, 1              superblock slots A and B; the valid one with
 *                           the higher @seq is current; write n goes to
 *                           slot n & 1, so a torn write leaves the other
 *   blocks 2 ..             bitmap area 0, then bitmap area 1, each
 *                           @bitmap_blocks blocks
 *
 * Epoch e marks chunks in area e & 1.  A bitmap block counts for epoch e
 * only if its header's @epoch is e: a checkpoint (epoch e -> e + 1) writes
 * nothing but the superblock, and the blocks of the new current area, tagged
 * e - 1, then read as empty.  The previous epoch's set stays in the other
 * area until the next checkpoint.  A bitmap block whose checksum (or magic,
 * index, area, store UUID) is wrong reads as "every chunk in it changed":
 * bits are only ever set within an epoch, so this is never less than what
 * the block held.
 */
#ifndef DM_FLEECE_TRACK_H
#define DM_FLEECE_TRACK_H

#include <linux/bio.h>
#include <linux/device-mapper.h>
#include <linux/kthread.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/types.h>

#include "dm-fleece-interface.h"

#define FT_BLOCK_SECTORS	(FLEECE_TRACK_BLOCK_SIZE >> SECTOR_SHIFT)
#define FT_BITS			FLEECE_TRACK_BITS_PER_BLOCK
#define FT_COMMIT_BLOCKS	32	/* bitmap blocks one commit writes at most */

/* Superblock, at the start of blocks 0 and 1; the rest of the block is 0. */
struct ft_disk_sb {
	__le32 csum;		/* CRC-32C of bytes 4..4095 of the block */
	__le32 magic;		/* FLEECE_TRACK_SB_MAGIC */
	__le32 version;		/* FLEECE_TRACK_VERSION */
	__le32 flags;		/* FLEECE_TRACK_SB_* */
	__le64 seq;		/* superblock writes; this one is in slot seq & 1 */
	__le64 generation;	/* changes whenever history is lost */
	__le64 epoch;		/* current epoch, from 1 */
	__le64 nr_chunks;
	__le64 data_sectors;	/* the target's length */
	__le32 chunk_sectors;
	__le32 prev_state;	/* enum fleece_track_prev_state */
	__le64 bitmap_blocks;	/* per area */
	__le64 checkpoint_time;	/* seconds since 1970 of the last checkpoint */
	__le64 format_time;
	u8 store_uuid[16];	/* random, at format */
	char device_id[64];	/* the table's device_id, NUL padded */
} __packed;

/* Header of a bitmap block; FT_BITS bits follow, chunk i at bit i % 8 of byte i / 8. */
struct ft_disk_bitmap {
	__le32 csum;		/* CRC-32C of bytes 4..4095 of the block */
	__le32 magic;		/* FLEECE_TRACK_BITMAP_MAGIC */
	__le64 epoch;		/* the epoch whose marks the block holds */
	__le32 area;
	__le32 index;		/* within the area */
	u8 store_uuid[8];	/* the first 8 bytes of the superblock's */
} __packed;

enum ft_history {
	FT_VALID,	/* marks are kept */
	FT_LOST,	/* the store says so: writes pass without marks */
	FT_FAILED,	/* the store failed and cannot say so: new marks fail */
};

/**
 * struct ft_store - one store and its tracked region, shared by every table
 *	that names it with the same arguments: a reload of one mapped device,
 *	or a table of another one (the fleece command's hidden origin)
 *
 * @cur is the current epoch's bitmap, @prev the previous one's, chunk i at
 * bit i of a little-endian bitmap (so block b's bits are bytes
 * [b * FT_BITS / 8, (b + 1) * FT_BITS / 8), as on the store).
 *
 * Invariant: a bit is set in @cur only once it is durable on the store (or
 * @history is not FT_VALID); a write is issued to the data device only when
 * every chunk it touches has its bit set in @cur, or the store durably says
 * that the history is lost.  Only the worker and the messages set bits,
 * under @lock; map() tests them without a lock.
 *
 * Invariant (ft_go_live(), ft_go_idle()): the store is marked dirty on
 * disk before any table holding it is live (resumed), and marked clean
 * only while none is (@nr_live == 0).  A checkpoint needs @nr_live == 0.
 */
struct ft_store {
	struct list_head node;		/* in the registry */
	unsigned int nr_targets;	/* registry lock */
	dev_t store_dev;
	dev_t data_dev;
	sector_t data_offset;
	sector_t data_sectors;
	char device_id[FLEECE_TRACK_DEVICE_ID_MAX + 1];
	struct block_device *store_bdev;
	struct block_device *data_bdev;

	unsigned int chunk_sectors;
	unsigned int chunk_shift;
	unsigned long nr_chunks;
	unsigned int nr_blocks;		/* bitmap blocks per area */
	unsigned long *cur;
	unsigned long *prev;
	unsigned long *bad[2];		/* per area: blocks that failed checks */

	/* @lock: every store write and the fields below, up to @sb_buf */
	struct mutex lock;
	u64 seq;
	u64 generation;
	u64 epoch;
	u32 flags;			/* FLEECE_TRACK_SB_*, as on the store */
	enum fleece_track_prev_state prev_state;
	u64 checkpoint_time;
	u64 format_time;
	u8 store_uuid[16];
	enum ft_history history;	/* also read by map(): READ_ONCE */
	unsigned long nr_cur;		/* bits set in @cur */
	unsigned long nr_prev;
	unsigned int nr_conservative;	/* blocks read as all changed */
	bool opened_clean;
	unsigned int nr_live;		/* live tables: preresume to postsuspend */
	void *sb_buf;
	void *blk_buf[FT_COMMIT_BLOCKS];
	unsigned int blk_index[FT_COMMIT_BLOCKS];
	/* words [blk_lo, blk_hi] of a buffer's bits hold this commit's marks */
	unsigned int blk_lo[FT_COMMIT_BLOCKS];
	unsigned int blk_hi[FT_COMMIT_BLOCKS];
	/*
	 * Bit i: blk_buf[i] is the image of block blk_index[i] of the current
	 * epoch as durable on the store (its bits those of @cur): the next
	 * commit to that block adds its marks to it, without copying @cur.
	 * Cleared for a buffer taken for another use, for all at a failed
	 * write, a merge and a new epoch.
	 */
	u32 blk_cached;

	atomic64_t store_errors;
	atomic64_t commits;

	spinlock_t bio_lock;		/* protects @deferred */
	struct bio_list deferred;	/* writes waiting for marks */
	struct kthread_worker *kworker;	/* SCHED_BATCH: ft_worker_create() */
	struct kthread_work worker;
	struct dm_io_client *io_client;
};

/* dm-fleece-track-meta.c */
int ft_store_load(struct ft_store *ft, bool format, char **error);
int ft_write_sb(struct ft_store *ft);
void ft_block_init(struct ft_store *ft, void *buf, unsigned int block);
int ft_write_blocks(struct ft_store *ft, unsigned int n);
int ft_write_empty_block(struct ft_store *ft, unsigned int area,
			 unsigned int block, u64 epoch);
sector_t ft_store_min_sectors(unsigned long nr_chunks);

/* dm-fleece-track.c */
int fleece_track_register(void);
void fleece_track_unregister(void);
/* For the fleece target's track_store (dm-fleece-ctx.c). */
int fleece_track_unchanged(dev_t store, sector_t len, unsigned int chunk_sectors,
			   void (*release)(void *arg, unsigned long first,
					   unsigned long last),
			   void *arg, const char **why);

static inline unsigned long *ft_block_bits(unsigned long *map,
					   unsigned int block)
{
	return map + (size_t)block * (FT_BITS / BITS_PER_LONG);
}

static inline unsigned long *ft_buf_bits(void *buf)
{
	return buf + FLEECE_TRACK_BITMAP_HDR;
}

#endif /* DM_FLEECE_TRACK_H */
