/* SPDX-License-Identifier: GPL-2.0 */
/*
 * fleece(8): incremental backups of a tracked device (fleece backup
 * --incremental).
 *
 * An image FILE carries the history it was taken under in the sidecar
 * FILE.fleece.json: the tracker's store UUID, generation and epoch after
 * the backup's checkpoint, the chunk size, NAME's size and DM UUID, and
 * the identity of the image file itself (device, inode, size, mtime), so
 * that a sidecar next to some other file is never taken for its record.
 * The image is renamed into place first, its record second: a crash in
 * between leaves a record that does not match the image, which makes the
 * next backup a full one, never a wrong one.
 */
#ifndef FLEECE_INCREMENTAL_H
#define FLEECE_INCREMENTAL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "fleece.h"

/* A byte range of the view. */
struct reader_extent {
	uint64_t off, len;
};

/*
 * Read only the ranges @ext (in order, chunk-aligned) of the view to the
 * regular file @out_fd, at the same offsets, releasing each once it is
 * written; all-zero chunks become holes (punched: the file holds the
 * previous image).  What lies outside @ext is released first, unless
 * @flags has READ_EXT_OUTSIDE_RELEASED: the kernel released all of it at
 * the point in time (counted in res->released_bytes either way).  With
 * READ_EXT_SHARED (the file is a reflink clone of the previous image),
 * the changed chunks go through @scratch_fd, an empty file on the same
 * file system, and are cloned in (remap.h; res->cloned_bytes); with no
 * scratch (-1), each block is punched before it is written: the new data
 * then goes to fresh space, allocated together at the sync, instead of a
 * copy-on-write of a shared extent per block.  res->bytes_read counts
 * what was read.  0, or -errno with a message, as reader_run() (read.c).
 */
#define READ_EXT_OUTSIDE_RELEASED	0x1
#define READ_EXT_SHARED			0x2

int reader_run_extents(const struct reader_opts *o, int out_fd, int scratch_fd,
		       const struct reader_extent *ext, unsigned int n,
		       unsigned int flags, struct reader_result *res);

#define INCR_RECORD_SUFFIX	".fleece.json"
#define INCR_RECORD_VERSION	1

/* A tracker, as track_query() (track.h) reports it. */
struct track_st {
	char dev[128];		/* the device holding its table: NAME or NAME-fleece-origin */
	dev_t data, store;
	uint64_t len_bytes;
	uint64_t chunk_sectors, nr_chunks, epoch, changed, changed_prev, generation;
	char history[16];	/* valid, lost, failed */
	char prev[16];		/* none, ready, done, merged, lost */
	char store_uuid[33];	/* "" when neither the kernel nor the store tells */
};

/*
 * The tracker of dm device @name (on NAME, or on its hidden origin while
 * NAME is fleeced): 0, -ENOENT when NAME is not tracked, else -errno with
 * a message.
 */
int track_read(const char *name, struct track_st *ts);

/* What FILE.fleece.json records. */
struct incr_record {
	char name[128];
	char dm_uuid[130];
	char store_uuid[33];
	uint64_t size_bytes, chunk_bytes, generation, epoch;
	uint64_t image_dev, image_ino, image_size;
	int64_t image_mtime_sec, image_mtime_nsec;
};

/* The decision, taken before the point in time. */
struct incr_plan {
	bool tracked;		/* NAME's table is fleece-track: record history */
	bool incremental;	/* start from the previous image */
	bool record;		/* FILE gets a record (a regular file) */
	char reason[512];	/* why not incremental */
	struct track_st before;	/* the tracker before the backup */
	struct incr_record prev;	/* the previous image's record */
	char dm_uuid[130];
	uint64_t size_bytes;
};

/*
 * Decide how to back up @name to @output: 0 with @p filled (p->reason
 * says why a --incremental (@want) backup is a full one), or -errno with
 * a message when the devices cannot be queried.
 */
int incr_plan(const char *name, const char *output, bool want, struct incr_plan *p);

/*
 * After the point in time: the tracker of @name (now on its hidden
 * origin) must be the one planned, one checkpoint later, with its
 * previous set ready.  0 with @after filled, or -ESTALE with the reason in
 * p->reason (the incremental becomes a full read).
 */
int incr_check_after(const struct incr_plan *p, const char *name, struct track_st *after);

/*
 * The previous set of the tracker @ts, read with "prev_extents" from the
 * device holding it, as byte ranges rounded out to @unit (the fleece
 * chunk) and merged, within the device: 0 with *ext (malloc'ed) and *n,
 * or -errno with a message.
 */
int incr_prev_extents(const struct track_st *ts, uint64_t unit,
		      struct reader_extent **ext, unsigned int *n);

/* Send @msg to the tracker's device @name: 0 or -errno (with a message). */
int track_message(const char *name, const char *msg, char *resp, size_t len);

/* The record of the image @fd (about to become @output), from @after. */
void incr_record_fill(struct incr_record *rec, const struct incr_plan *p,
		      const char *name, const struct track_st *after, int fd);
/*
 * Write @rec as @output.fleece.json.partial, synced: 0 or -errno (with a
 * message).  incr_record_commit() renames it into place after the image
 * (when @err is 0) or removes it.
 */
int incr_record_prepare(const char *output, const struct incr_record *rec);
int incr_record_commit(const char *output, int err);
/*
 * After an incremental from @output failed and the tracker merged its set
 * back: the tracker's current set, at @epoch, covers every change since
 * @output's point in time again.  When @output and its record are still
 * @prev, the record moves to @epoch (atomically).  0, or -errno with a
 * message; -ESTALE (no message) when @output or its record changed.
 */
int incr_record_advance(const char *output, const struct incr_record *prev, uint64_t epoch);
/* Remove a record that no longer describes @output (an untracked full backup). */
void incr_record_remove(const char *output);

/*
 * Write the changed map @map (JSON, atomically): what the backup read
 * because it changed.  0 or -errno with a message.
 */
int incr_write_map(const char *map, uint64_t chunk_bytes, uint64_t size_bytes,
		   const struct reader_extent *ext, unsigned int n, bool incremental,
		   const char *reason);

#endif
