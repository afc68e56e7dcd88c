/* SPDX-License-Identifier: GPL-2.0 */
/*
 * fleece(8): change tracking ("fleece track", the fleece-track target).
 *
 * A tracked NAME runs one fleece-track target over all of it, in place of
 * its linear table; while NAME is fleeced, that table is on its hidden
 * origin NAME-fleece-origin (the tracker is shared, see dm-fleece.rst).
 * Each tracked NAME is recorded in $FLEECE_TRACK_DIR/NAME.conf (default
 * /etc/fleece/track) so that "fleece track attach" can put the tracker
 * back at boot.
 */
#ifndef FLEECE_TRACK_H
#define FLEECE_TRACK_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "dm.h"

#define FLEECE_TRACK_DIR	"/etc/fleece/track"

enum track_history {
	TRACK_HISTORY_VALID,		/* the sets can be trusted */
	TRACK_HISTORY_LOST,		/* a store failure: every chunk changed */
	TRACK_HISTORY_FAILED,		/* ... and the store could not say so */
};

struct track_info {
	bool tracked;			/* false: nothing else is filled in */
	char table_dev[128];		/* NAME, or NAME-fleece-origin */
	char store_path[PATH_MAX];	/* /dev/mapper/X or /dev/<kernel name> */
	dev_t store_dev;
	dev_t data_dev;
	uint64_t data_offset;		/* sectors */
	uint64_t sectors;		/* tracked length */
	char device_id[64];
	unsigned int chunk_sectors;
	uint64_t nr_chunks;
	uint64_t epoch, generation;
	uint64_t changed, changed_prev;	/* chunks, current / previous set */
	enum track_history history;
	char history_str[16];		/* valid, lost, failed */
	char prev_state[16];		/* none, ready, done, merged, lost */
	bool dirty;			/* the store is marked dirty now */
	bool opened_unclean;		/* found not cleanly closed */
	uint64_t conservative, store_errors, commits;
	char store_uuid[33];		/* 32 hex digits; "" on a kernel without it */
	uint64_t checkpoint_time;	/* seconds since 1970, 0: none (superblock) */
};

/*
 * Is NAME tracked, and how: 0 with @ti filled in (ti->tracked false when
 * NAME's table, or its hidden origin's, is no fleece-track target),
 * -ENXIO when there is no device NAME, or another -errno of a failed
 * query (with a message): never "not tracked" then.
 */
int track_query(const char *name, struct track_info *ti);

/* A fleece-track table line's parameters. */
struct track_params {
	dev_t data_dev;
	uint64_t data_offset;
	dev_t store_dev;
	unsigned int chunk_sectors;
	char device_id[64];
	bool format;			/* "1 format" */
};
int track_parse_params(const char *params, struct track_params *tp);
/* One fleece-track target over all of the table: its parameters. */
bool track_table_parse(const struct dmw_table *t, struct track_params *tp);
/*
 * The same table without "1 format", for a copy of it (a hidden origin,
 * the table "fleece stop" puts back): a store wiped meanwhile must never
 * be formatted silently by a reload.
 */
void track_table_no_format(struct dmw_table *t);

/* The store's size for @nr_chunks: (2 + 2 * ceil(chunks / 32512)) blocks. */
uint64_t track_store_bytes(uint64_t nr_chunks);

int cmd_track(int argc, char **argv);

#endif
