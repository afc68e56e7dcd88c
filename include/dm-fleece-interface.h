/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dm-fleece: names shared by the kernel module and the userspace tools.
 *
 * Status lines are space separated; later fields may only be appended, so
 * parsers must accept extra trailing fields.
 */
#ifndef DM_FLEECE_INTERFACE_H
#define DM_FLEECE_INTERFACE_H

#define FLEECE_TARGET_NAME	"fleece"
#define FLEECE_VIEW_TARGET_NAME	"fleece-view"

#define FLEECE_MIN_CHUNK_SECTORS	8
#define FLEECE_MAX_CHUNK_SECTORS	32768

/* Feature arguments of the fleece target. */
#define FLEECE_FEATURE_FAIL_ORIGIN_WRITES	"fail_origin_writes"
#define FLEECE_FEATURE_CBW_TIMEOUT_MS		"cbw_timeout_ms"
#define FLEECE_FEATURE_ORIGIN_OFFSET		"origin_offset"
/*
 * "track_store <store_dev>" (target version 1.5): at the point in time,
 * release the chunks that the fleece-track tracker of that store saw
 * unchanged.
 */
#define FLEECE_FEATURE_TRACK_STORE		"track_store"

/* Fields of the fleece target's status line, in order. */
enum fleece_status_field {
	FLEECE_ST_CHUNK_SECTORS,
	FLEECE_ST_CHUNKS_TOTAL,
	FLEECE_ST_CHUNKS_PENDING,
	FLEECE_ST_CHUNKS_COPIED,
	FLEECE_ST_CHUNKS_RELEASED,
	FLEECE_ST_CBW_COUNT,
	FLEECE_ST_CBW_ERRORS,
	FLEECE_ST_STATE,
	FLEECE_ST_COPIES_IN_FLIGHT,	/* target version 1.1 on */
	FLEECE_ST_TRACK_RELEASED,	/* target version 1.5 on */
	FLEECE_ST_NR_FIELDS
};

/* Fields of the fleece-view target's status line, in order. */
enum fleece_view_status_field {
	FLEECE_VIEW_ST_READS_ORIGIN,
	FLEECE_VIEW_ST_READS_FLEECE,
	FLEECE_VIEW_ST_READS_REFUSED,
	FLEECE_VIEW_ST_CHUNKS_RELEASED,
	FLEECE_VIEW_ST_STATE,
	FLEECE_VIEW_ST_NR_FIELDS
};

#define FLEECE_STATE_ACTIVE	"active"
#define FLEECE_STATE_INVALID	"invalid"

/*
 * The "fleece-track" target: persistent changed-chunk tracking on a store
 * device (Documentation/admin-guide/device-mapper/dm-fleece.rst, "Change
 * tracking").  The store's format is described there and in
 * drivers/md/dm-fleece-track.h; all numbers are little endian.
 */
#define FLEECE_TRACK_TARGET_NAME	"fleece-track"
#define FLEECE_TRACK_FEATURE_FORMAT	"format"
#define FLEECE_TRACK_MSG_CHECKPOINT	"checkpoint"
#define FLEECE_TRACK_MSG_BACKUP_DONE	"backup_done"
#define FLEECE_TRACK_MSG_MERGE		"merge"
/*
 * "prev_extents <first_chunk>" (target version 1.1): the previous set from
 * that chunk on, as space-separated "<first>+<count>" ranges, then
 * "next=<chunk>" (ask again from there) or "end".
 */
#define FLEECE_TRACK_MSG_PREV_EXTENTS	"prev_extents"
#define FLEECE_TRACK_EXTENTS_NEXT	"next="
#define FLEECE_TRACK_EXTENTS_END	"end"
#define FLEECE_TRACK_DEVICE_ID_MAX	63	/* bytes, without the NUL */

#define FLEECE_TRACK_BLOCK_SIZE		4096	/* every store block */
#define FLEECE_TRACK_SB_MAGIC		0x4b544c46u	/* "FLTK" */
#define FLEECE_TRACK_BITMAP_MAGIC	0x42544c46u	/* "FLTB" */
#define FLEECE_TRACK_VERSION		1
#define FLEECE_TRACK_BITMAP_HDR		32	/* bytes before the bits */
#define FLEECE_TRACK_BITS_PER_BLOCK	((FLEECE_TRACK_BLOCK_SIZE - FLEECE_TRACK_BITMAP_HDR) * 8)
#define FLEECE_TRACK_BITMAP_START	2	/* block: after superblocks A, B */

/* Superblock flags. */
#define FLEECE_TRACK_SB_CLEAN		0x1u	/* closed cleanly */
#define FLEECE_TRACK_SB_CUR_LOST	0x2u	/* current set: every chunk */
#define FLEECE_TRACK_SB_PREV_LOST	0x4u	/* previous set: every chunk */

/* State of the previous epoch's set (superblock, status). */
enum fleece_track_prev_state {
	FLEECE_TRACK_PREV_NONE,		/* no checkpoint yet */
	FLEECE_TRACK_PREV_READY,	/* readable, its backup not ended */
	FLEECE_TRACK_PREV_DONE,		/* backup_done: dropped */
	FLEECE_TRACK_PREV_MERGED,	/* merge: added to the current set */
};

/* Fields of the fleece-track target's status line, in order. */
enum fleece_track_status_field {
	FLEECE_TRACK_ST_CHUNK_SECTORS,
	FLEECE_TRACK_ST_CHUNKS_TOTAL,
	FLEECE_TRACK_ST_EPOCH,
	FLEECE_TRACK_ST_CHANGED,	/* current epoch */
	FLEECE_TRACK_ST_CHANGED_PREV,	/* previous epoch */
	FLEECE_TRACK_ST_GENERATION,
	FLEECE_TRACK_ST_STORE_STATE,	/* clean | dirty, on the store now */
	FLEECE_TRACK_ST_HISTORY,	/* valid | lost | failed */
	FLEECE_TRACK_ST_PREV,		/* none | ready | done | merged | lost */
	FLEECE_TRACK_ST_CONSERVATIVE,	/* blocks read as "all changed" */
	FLEECE_TRACK_ST_STORE_ERRORS,
	FLEECE_TRACK_ST_COMMITS,
	FLEECE_TRACK_ST_OPENED,		/* clean | unclean: the store as found */
	FLEECE_TRACK_ST_NR_FIELDS
};

/* Words of the fleece-track status line. */
#define FLEECE_TRACK_CLEAN		"clean"		/* store state, opened */
#define FLEECE_TRACK_DIRTY		"dirty"		/* store state */
#define FLEECE_TRACK_UNCLEAN		"unclean"	/* opened */
#define FLEECE_TRACK_HISTORY_VALID	"valid"
#define FLEECE_TRACK_HISTORY_LOST	"lost"
#define FLEECE_TRACK_HISTORY_FAILED	"failed"
#define FLEECE_TRACK_PREV_NAME_NONE	"none"		/* enum fleece_track_prev_state */
#define FLEECE_TRACK_PREV_NAME_READY	"ready"
#define FLEECE_TRACK_PREV_NAME_DONE	"done"
#define FLEECE_TRACK_PREV_NAME_MERGED	"merged"
#define FLEECE_TRACK_PREV_NAME_LOST	"lost"		/* ready, but every chunk */

#endif /* DM_FLEECE_INTERFACE_H */
