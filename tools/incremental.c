// SPDX-License-Identifier: GPL-2.0
/*
 * fleece(8): incremental backups of a tracked device.  See incremental.h
 * for the image's record, fleece(8) for the rules.
 *
 * The one invariant: an incremental backup starts from an image whose
 * record proves it is the point in time of the tracker's last checkpoint
 * but at most one (whose set was merged back or is still ready, which the
 * next checkpoint merges), under the same store and generation.  Then
 * every chunk that differs between the image and the new point in time is
 * in the tracker's previous set after this backup's checkpoint, and
 * reading that set from the view makes the image exact.  Anything else
 * (no record, another store or generation, another epoch or size, a lost
 * history) is a full backup, with the reason said.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <libdevmapper.h>

#include "fleece.h"
#include "incremental.h"
#include "track.h"
#include "util.h"

/* --- the tracker ------------------------------------------------------- */

int track_read(const char *name, struct track_st *ts)
{
	struct track_info ti;
	int r;

	memset(ts, 0, sizeof(*ts));
	r = track_query(name, &ti);
	if (r)
		return r;
	if (!ti.tracked)
		return -ENOENT;
	snprintf(ts->dev, sizeof(ts->dev), "%s", ti.table_dev);
	ts->data = ti.data_dev;
	ts->store = ti.store_dev;
	ts->len_bytes = ti.sectors << 9;
	ts->chunk_sectors = ti.chunk_sectors;
	ts->nr_chunks = ti.nr_chunks;
	ts->epoch = ti.epoch;
	ts->changed = ti.changed;
	ts->changed_prev = ti.changed_prev;
	ts->generation = ti.generation;
	snprintf(ts->history, sizeof(ts->history), "%s", ti.history_str);
	snprintf(ts->prev, sizeof(ts->prev), "%s", ti.prev_state);
	snprintf(ts->store_uuid, sizeof(ts->store_uuid), "%s", ti.store_uuid);
	return 0;
}

int track_message(const char *name, const char *msg, char *resp, size_t len)
{
	struct dm_task *dmt;
	const char *s;
	int r = fault_point("track-message");

	if (r)
		goto out;
	dmt = dm_task_create(DM_DEVICE_TARGET_MSG);
	if (!dmt)
		return -ENOMEM;
	if (!dm_task_set_name(dmt, name) || !dm_task_set_sector(dmt, 0) ||
	    !dm_task_set_message(dmt, msg)) {
		dm_task_destroy(dmt);
		return -ENOMEM;
	}
	dmw_quiet(1);
	if (!dm_task_run(dmt)) {
		r = dm_task_get_errno(dmt);
		r = r > 0 ? -r : -EIO;
	} else if (resp && len) {
		s = dm_task_get_message_response(dmt);
		snprintf(resp, len, "%s", s ? s : "");
	}
	dmw_quiet(-1);
	dm_task_destroy(dmt);
out:
	if (r)
		msg_error("%s: message '%s' failed: %s", name, msg, strerror(-r));
	return r;
}

/* --- the record -------------------------------------------------------- */

static char *record_path(const char *output, const char *more)
{
	return xasprintf("%s%s%s", output, INCR_RECORD_SUFFIX, more);
}

/* The value after "key": in a flat JSON object we wrote; NULL if absent. */
static const char *json_find(const char *js, const char *key)
{
	char pat[64];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\":", key);
	p = strstr(js, pat);
	if (!p)
		return NULL;
	p += strlen(pat);
	while (*p == ' ')
		p++;
	return p;
}

static int json_u64(const char *js, const char *key, uint64_t *v)
{
	const char *p = json_find(js, key);
	char *end;

	if (!p || *p < '0' || *p > '9')
		return -EINVAL;
	errno = 0;
	*v = strtoull(p, &end, 10);
	return errno || (*end != ',' && *end != '\n' && *end != '}' && *end != ' ') ?
	       -EINVAL : 0;
}

static int json_i64(const char *js, const char *key, int64_t *v)
{
	const char *p = json_find(js, key);
	char *end;

	if (!p)
		return -EINVAL;
	errno = 0;
	*v = strtoll(p, &end, 10);
	return errno || end == p ? -EINVAL : 0;
}

static int json_str(const char *js, const char *key, char *buf, size_t len)
{
	const char *p = json_find(js, key);
	size_t n = 0;

	if (!p || *p++ != '"')
		return -EINVAL;
	for (; *p && *p != '"'; p++) {
		char c = *p;

		if (c == '\\') {
			p++;
			if (*p == 'u') {
				unsigned int u;

				if (sscanf(p + 1, "%4x", &u) != 1)
					return -EINVAL;
				c = (char)u;
				p += 4;
			} else if (*p) {
				c = *p;
			} else {
				return -EINVAL;
			}
		}
		if (n + 1 >= len)
			return -EINVAL;
		buf[n++] = c;
	}
	if (*p != '"')
		return -EINVAL;
	buf[n] = '\0';
	return 0;
}

/* FILE.fleece.json: 0, -ENOENT when there is none, -EINVAL when it is not ours. */
static int record_read(const char *output, struct incr_record *rec)
{
	char *path = record_path(output, ""), js[4096];
	ssize_t n;
	uint64_t version;
	int fd, r = 0;

	memset(rec, 0, sizeof(*rec));
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	free(path);
	if (fd < 0)
		return errno == ENOENT ? -ENOENT : -EINVAL;
	n = read(fd, js, sizeof(js) - 1);
	close(fd);
	if (n <= 0 || n == sizeof(js) - 1)
		return -EINVAL;
	js[n] = '\0';
	if (json_u64(js, "version", &version) || version != INCR_RECORD_VERSION ||
	    json_str(js, "name", rec->name, sizeof(rec->name)) ||
	    json_str(js, "dm_uuid", rec->dm_uuid, sizeof(rec->dm_uuid)) ||
	    json_str(js, "store_uuid", rec->store_uuid, sizeof(rec->store_uuid)) ||
	    json_u64(js, "size_bytes", &rec->size_bytes) ||
	    json_u64(js, "chunk_bytes", &rec->chunk_bytes) ||
	    json_u64(js, "generation", &rec->generation) ||
	    json_u64(js, "epoch", &rec->epoch) ||
	    json_u64(js, "image_dev", &rec->image_dev) ||
	    json_u64(js, "image_ino", &rec->image_ino) ||
	    json_u64(js, "image_size", &rec->image_size) ||
	    json_i64(js, "image_mtime_sec", &rec->image_mtime_sec) ||
	    json_i64(js, "image_mtime_nsec", &rec->image_mtime_nsec))
		r = -EINVAL;
	return r;
}

/* Does the file @st match the record (the very file it was written for)? */
static bool record_matches(const struct incr_record *rec, const struct stat *st)
{
	return S_ISREG(st->st_mode) && rec->image_dev == (uint64_t)st->st_dev &&
	       rec->image_ino == (uint64_t)st->st_ino &&
	       rec->image_size == (uint64_t)st->st_size &&
	       rec->image_mtime_sec == (int64_t)st->st_mtim.tv_sec &&
	       rec->image_mtime_nsec == (int64_t)st->st_mtim.tv_nsec;
}

void incr_record_fill(struct incr_record *rec, const struct incr_plan *p,
		      const char *name, const struct track_st *after, int fd)
{
	struct stat st;

	memset(rec, 0, sizeof(*rec));
	snprintf(rec->name, sizeof(rec->name), "%s", name);
	memcpy(rec->dm_uuid, p->dm_uuid, sizeof(rec->dm_uuid));
	memcpy(rec->store_uuid, after->store_uuid, sizeof(rec->store_uuid));
	rec->size_bytes = p->size_bytes;
	rec->chunk_bytes = after->chunk_sectors << 9;
	rec->generation = after->generation;
	rec->epoch = after->epoch;
	if (!fstat(fd, &st)) {
		rec->image_dev = st.st_dev;
		rec->image_ino = st.st_ino;
		rec->image_size = st.st_size;
		rec->image_mtime_sec = st.st_mtim.tv_sec;
		rec->image_mtime_nsec = st.st_mtim.tv_nsec;
	}
}

/* Write @sb to @path + ".partial", synced: 0 or -errno with a message. */
static int write_partial(const char *path, const struct sbuf *sb)
{
	char *tmp = xasprintf("%s.partial", path);
	int fd, r = 0;

	unlink(tmp);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0 || !write_all(fd, sb->s, sb->len) || fsync(fd)) {
		r = -errno;
		msg_errno("cannot write %s", tmp);
		if (fd >= 0)
			unlink(tmp);
	}
	if (fd >= 0 && close(fd) && !r) {
		r = -errno;
		msg_errno("cannot write %s", tmp);
		unlink(tmp);
	}
	free(tmp);
	return r;
}

/* Rename @path.partial to @path and sync the directory, or remove it. */
static int commit_partial(const char *path, int err)
{
	char *tmp = xasprintf("%s.partial", path), *copy;
	int r = err;

	if (!err && rename(tmp, path)) {
		r = -errno;
		msg_errno("cannot rename %s to %s", tmp, path);
	}
	if (r) {
		unlink(tmp);
	} else {
		copy = xstrdup(path);
		fsync_dir(dirname(copy));
		free(copy);
	}
	free(tmp);
	return r;
}

int incr_record_prepare(const char *output, const struct incr_record *rec)
{
	struct sbuf sb = { 0 };
	char *path = record_path(output, "");
	int r;

	sb_printf(&sb, "{\n  \"version\": %d,\n  \"name\": ", INCR_RECORD_VERSION);
	sb_json_str(&sb, rec->name);
	sb_printf(&sb, ",\n  \"dm_uuid\": ");
	sb_json_str(&sb, rec->dm_uuid);
	sb_printf(&sb, ",\n  \"store_uuid\": ");
	sb_json_str(&sb, rec->store_uuid);
	sb_printf(&sb, ",\n  \"generation\": %" PRIu64 ",\n  \"epoch\": %" PRIu64
		  ",\n  \"chunk_bytes\": %" PRIu64 ",\n  \"size_bytes\": %" PRIu64
		  ",\n  \"image_dev\": %" PRIu64 ",\n  \"image_ino\": %" PRIu64
		  ",\n  \"image_size\": %" PRIu64 ",\n  \"image_mtime_sec\": %" PRId64
		  ",\n  \"image_mtime_nsec\": %" PRId64 ",\n  \"time\": %lld\n}\n",
		  rec->generation, rec->epoch, rec->chunk_bytes, rec->size_bytes,
		  rec->image_dev, rec->image_ino, rec->image_size, rec->image_mtime_sec,
		  rec->image_mtime_nsec, (long long)time(NULL));
	r = write_partial(path, &sb);
	sb_free(&sb);
	free(path);
	return r;
}

int incr_record_commit(const char *output, int err)
{
	char *path = record_path(output, "");
	int r = commit_partial(path, err);

	free(path);
	return r;
}

int incr_record_advance(const char *output, const struct incr_record *prev, uint64_t epoch)
{
	struct incr_record now, rec = *prev;
	struct stat st;
	int r;

	if (lstat(output, &st) || !record_matches(prev, &st) || record_read(output, &now) ||
	    !record_matches(&now, &st) || now.epoch != prev->epoch ||
	    now.generation != prev->generation || strcmp(now.store_uuid, prev->store_uuid) ||
	    strcmp(now.dm_uuid, prev->dm_uuid))
		return -ESTALE;
	rec.epoch = epoch;
	r = incr_record_prepare(output, &rec);
	return incr_record_commit(output, r);
}

void incr_record_remove(const char *output)
{
	char *path = record_path(output, ""), *copy;

	if (!unlink(path)) {
		copy = xstrdup(path);
		fsync_dir(dirname(copy));
		free(copy);
	} else if (errno != ENOENT) {
		msg_errno("cannot remove the stale record %s", path);
	}
	free(path);
}

/* --- the plan ---------------------------------------------------------- */

#define WHY(p, ...) snprintf((p)->reason, sizeof((p)->reason), __VA_ARGS__)

/* Can the image FILE (its record in p->prev) be brought up to date? */
static bool plan_check_image(const char *name, const char *output, struct incr_plan *p)
{
	const struct track_st *ts = &p->before;
	const struct incr_record *rec = &p->prev;
	struct stat st;
	int r;

	if (lstat(output, &st)) {
		WHY(p, "no previous image");
		return false;
	}
	if (S_ISLNK(st.st_mode)) {
		/* Replaced by the new image, never followed: as a full backup does. */
		WHY(p, "the image is a symbolic link");
		return false;
	}
	r = record_read(output, &p->prev);
	if (r == -ENOENT) {
		WHY(p, "no history recorded with the image (no %s%s)", output,
		    INCR_RECORD_SUFFIX);
		return false;
	}
	if (r) {
		WHY(p, "unreadable record %s%s", output, INCR_RECORD_SUFFIX);
		return false;
	}
	if (!record_matches(rec, &st)) {
		WHY(p, "the image is not the file its record describes (replaced or modified)");
		return false;
	}
	/* Without a DM UUID, the name is all that tells the device. */
	if (strcmp(rec->dm_uuid, p->dm_uuid) || (!p->dm_uuid[0] && strcmp(rec->name, name))) {
		WHY(p, "the image is of another device (DM UUID '%s', now '%s')", rec->dm_uuid,
		    p->dm_uuid);
		return false;
	}
	/* Before the store: a new size needs a new store, the size says more. */
	if (rec->size_bytes != p->size_bytes || rec->image_size != p->size_bytes ||
	    ts->len_bytes != p->size_bytes) {
		WHY(p, "size changed (%" PRIu64 " bytes, the image's %" PRIu64 ")",
		    p->size_bytes, rec->size_bytes);
		return false;
	}
	if (!ts->store_uuid[0]) {
		WHY(p, "the tracker does not report its store UUID (kernel too old)");
		return false;
	}
	if (strcmp(rec->store_uuid, ts->store_uuid)) {
		WHY(p, "store reformatted (store UUID %s, the image's %s)", ts->store_uuid,
		    rec->store_uuid);
		return false;
	}
	if (rec->generation != ts->generation) {
		WHY(p, "generation changed: history lost (generation %" PRIu64
		    ", the image's %" PRIu64 ")", ts->generation, rec->generation);
		return false;
	}
	if (strcmp(ts->history, FLEECE_TRACK_HISTORY_VALID)) {
		WHY(p, "tracker reported unclean history (%s)", ts->history);
		return false;
	}
	if (rec->chunk_bytes != ts->chunk_sectors << 9) {
		WHY(p, "chunk size changed");
		return false;
	}
	/*
	 * The epoch after the image's checkpoint, or one more after a backup
	 * that failed (merged) or was killed (ready: the next checkpoint
	 * merges it).  A set marked done was dropped by some other backup.
	 */
	if (ts->epoch == rec->epoch)
		return true;
	if (ts->epoch == rec->epoch + 1 &&
	    (!strcmp(ts->prev, FLEECE_TRACK_PREV_NAME_MERGED) ||
	     !strcmp(ts->prev, FLEECE_TRACK_PREV_NAME_READY)))
		return true;
	WHY(p, "epoch mismatch (tracker at epoch %" PRIu64 ", previous set %s; the image at %" PRIu64
	    ")", ts->epoch, ts->prev, rec->epoch);
	return false;
}

int incr_plan(const char *name, const char *output, bool want, struct incr_plan *p)
{
	struct dmw_info info;
	struct stat st;
	int r;

	memset(p, 0, sizeof(*p));
	r = dmw_info(name, &info);
	if (r || !info.exists) {
		msg_error("%s: cannot query device-mapper: %s", name,
			  r ? dmw_strerror(r) : "no such device");
		return r ? r : -ENXIO;
	}
	snprintf(p->dm_uuid, sizeof(p->dm_uuid), "%s", info.uuid);
	r = track_read(name, &p->before);
	if (r && r != -ENOENT)
		return r;
	p->tracked = !r;
	p->size_bytes = p->before.len_bytes;
	p->record = strcmp(output, "-") && (stat(output, &st) || S_ISREG(st.st_mode));
	if (!want)
		return 0;
	if (!p->tracked)
		WHY(p, "not tracked (%s's table is not %s; see 'fleece track start')", name,
		    FLEECE_TRACK_TARGET_NAME);
	else if (!p->record)
		WHY(p, "the output is not a regular file");
	else
		p->incremental = plan_check_image(name, output, p);
	return 0;
}

int incr_check_after(const struct incr_plan *p, const char *name, struct track_st *after)
{
	struct incr_plan *q = (struct incr_plan *)p;
	int r = track_read(name, after);

	if (r == -ENOENT) {
		WHY(q, "%s is not tracked after the point in time", name);
		return -ESTALE;
	}
	if (r) {
		WHY(q, "cannot read the tracker after the point in time");
		return -ESTALE;
	}
	if (strcmp(after->store_uuid, p->before.store_uuid) ||
	    after->generation != p->before.generation) {
		WHY(q, "generation changed: history lost at the point in time");
		return -ESTALE;
	}
	if (after->epoch != p->before.epoch + 1) {
		WHY(q, "epoch mismatch at the point in time (%" PRIu64 ", expected %" PRIu64 ")",
		    after->epoch, p->before.epoch + 1);
		return -ESTALE;
	}
	if (strcmp(after->history, FLEECE_TRACK_HISTORY_VALID) ||
	    strcmp(after->prev, FLEECE_TRACK_PREV_NAME_READY)) {
		WHY(q, "tracker reported unclean history at the point in time (%s, previous set %s)",
		    after->history, after->prev);
		return -ESTALE;
	}
	return 0;
}

/* --- the previous set -------------------------------------------------- */

static void extent_add(struct reader_extent **ext, unsigned int *n, unsigned int *cap,
		       uint64_t off, uint64_t end)
{
	if (*n && (*ext)[*n - 1].off + (*ext)[*n - 1].len >= off) {
		struct reader_extent *last = &(*ext)[*n - 1];

		if (end > last->off + last->len)
			last->len = end - last->off;
		return;
	}
	if (*n == *cap) {
		*cap = *cap ? *cap * 2 : 64;
		*ext = realloc(*ext, *cap * sizeof(**ext));
		if (!*ext) {
			msg_error("out of memory");
			exit(EX_FLEECE_FAIL);
		}
	}
	(*ext)[*n].off = off;
	(*ext)[(*n)++].len = end - off;
}

int incr_prev_extents(const struct track_st *ts, uint64_t unit,
		      struct reader_extent **ext, unsigned int *n)
{
	const char *dmname = ts->dev;
	uint64_t tc = ts->chunk_sectors << 9, next = 0, last_first = 0, size = ts->len_bytes;
	unsigned int cap = 0;
	char msg[64], *resp = xmalloc(1 << 16), *tok, *save;
	bool end = false;
	int r = 0;

	*ext = NULL;
	*n = 0;
	while (!end) {
		snprintf(msg, sizeof(msg), FLEECE_TRACK_MSG_PREV_EXTENTS " %" PRIu64, next);
		r = track_message(dmname, msg, resp, 1 << 16);
		if (r)
			break;
		r = -EPROTO;
		for (tok = strtok_r(resp, " \n", &save); tok; tok = strtok_r(NULL, " \n", &save)) {
			unsigned long long first, count;
			uint64_t a, b;
			char c;

			if (!strcmp(tok, FLEECE_TRACK_EXTENTS_END)) {
				end = true;
				r = 0;
				break;
			}
			if (sscanf(tok, FLEECE_TRACK_EXTENTS_NEXT "%llu%c", &first, &c) == 1) {
				/* Forward only: a "next" that does not advance would loop. */
				if (first <= next) {
					r = -EPROTO;
					break;
				}
				next = first;
				r = 0;
				break;
			}
			if (sscanf(tok, "%llu+%llu%c", &first, &count, &c) != 2 || !count ||
			    first < last_first || first + count > ts->nr_chunks) {
				r = -EPROTO;
				break;
			}
			last_first = first;
			a = first * tc;
			b = (first + count) * tc;
			a -= a % unit;
			b = (b + unit - 1) / unit * unit;
			if (b > size)
				b = size;
			if (a < b)
				extent_add(ext, n, &cap, a, b);
		}
		if (r == -EPROTO) {
			msg_error("%s: cannot parse the tracker's answer to '%s'", dmname, msg);
			break;
		}
	}
	free(resp);
	if (r) {
		free(*ext);
		*ext = NULL;
		*n = 0;
	}
	return r;
}

/* --- the changed map --------------------------------------------------- */

int incr_write_map(const char *map, uint64_t chunk_bytes, uint64_t size_bytes,
		   const struct reader_extent *ext, unsigned int n, bool incremental,
		   const char *reason)
{
	struct sbuf sb = { 0 };
	uint64_t total = 0;
	unsigned int i;
	int r;

	sb_printf(&sb, "{\"chunk_bytes\": %" PRIu64 ", \"size_bytes\": %" PRIu64
		  ", \"incremental\": %s", chunk_bytes, size_bytes,
		  incremental ? "true" : "false");
	if (!incremental) {
		sb_printf(&sb, ", \"reason\": ");
		sb_json_str(&sb, reason);
	}
	sb_printf(&sb, ", \"extents\": [");
	if (!incremental) {
		sb_printf(&sb, "[0, %" PRIu64 "]", size_bytes);
		total = size_bytes;
	}
	for (i = 0; incremental && i < n; i++) {
		sb_printf(&sb, "%s[%" PRIu64 ", %" PRIu64 "]", i ? ", " : "", ext[i].off,
			  ext[i].len);
		total += ext[i].len;
	}
	sb_printf(&sb, "], \"read_bytes\": %" PRIu64 "}\n", total);
	r = write_partial(map, &sb);
	sb_free(&sb);
	return commit_partial(map, r);
}
