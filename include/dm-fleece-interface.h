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

#endif /* DM_FLEECE_INTERFACE_H */
