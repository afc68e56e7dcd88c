// SPDX-License-Identifier: GPL-2.0
/*
 * fleece track: persistent change tracking of a device (the fleece-track
 * target, dm-fleece.rst "Change tracking").
 *
 *   fleece track start NAME... --store PATH...  swap each NAME's linear table
 *                                             for a fleece-track table on its
 *                                             own store, new history
 *   fleece track stop NAME...                 swap the linear table back
 *   fleece track status [NAME...] [--json]    the tracker's state
 *   fleece track attach [NAME...|--all]       re-attach recorded trackers
 *                                             (boot), never formatting
 *
 * Only a device whose table is one linear target over all of it is
 * tracked: fleece-track maps 1:1 onto one device at one offset, so it takes
 * the linear target's place (no hidden device).  The table swap follows
 * "fleece start": lvm2's VG lock of an LV held, the new table loaded
 * inactive, NAME suspended with memory locked and messages held, its live
 * table read again and compared, resume; any failure clears the new table
 * and resumes NAME as it was.  "track start" of several NAMEs does so for
 * all of them in one suspend window, all or none (track_swap_many()).
 *
 * Each tracked NAME is recorded in $FLEECE_TRACK_DIR/NAME.conf (default
 * /etc/fleece/track), written before the swap and removed by "track stop":
 * what "track attach" needs to put the same tracker back after a reboot.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "fleece.h"
#include "opts.h"
#include "track.h"
#include "util.h"

#define TRACK_DEFAULT_CHUNK	(64 * 1024)
#define TRACK_REC_SUFFIX	".conf"

uint64_t track_store_bytes(uint64_t nr_chunks)
{
	uint64_t blocks = (nr_chunks + FLEECE_TRACK_BITS_PER_BLOCK - 1) /
			  FLEECE_TRACK_BITS_PER_BLOCK;

	return (2 + 2 * blocks) * FLEECE_TRACK_BLOCK_SIZE;
}

/* --- table lines ---------------------------------------------------------- */

/* "<data_dev> <data_offset> <store_dev> <chunk_sectors> <device_id> [1 format]" */
int track_parse_params(const char *s, struct track_params *tp)
{
	unsigned int dma, dmi, sma, smi, nfeat = 0;
	unsigned long long off;
	char id[128], feat[32] = "";
	int n;

	memset(tp, 0, sizeof(*tp));
	n = sscanf(s, "%u:%u %llu %u:%u %u %127s %u %31s", &dma, &dmi, &off, &sma, &smi,
		   &tp->chunk_sectors, id, &nfeat, feat);
	if (n < 7 || strlen(id) > FLEECE_TRACK_DEVICE_ID_MAX)
		return -EINVAL;
	tp->data_dev = makedev(dma, dmi);
	tp->data_offset = off;
	tp->store_dev = makedev(sma, smi);
	snprintf(tp->device_id, sizeof(tp->device_id), "%s", id);
	tp->format = n == 9 && nfeat == 1 && !strcmp(feat, FLEECE_TRACK_FEATURE_FORMAT);
	return 0;
}

bool track_table_parse(const struct dmw_table *t, struct track_params *tp)
{
	return t->n == 1 && !t->t[0].start &&
	       !strcmp(t->t[0].type, FLEECE_TRACK_TARGET_NAME) &&
	       !track_parse_params(t->t[0].params, tp);
}

static void track_table(struct dmw_table *t, uint64_t sectors, const struct track_params *tp)
{
	char params[256];

	snprintf(params, sizeof(params), "%u:%u %llu %u:%u %u %s%s",
		 major(tp->data_dev), minor(tp->data_dev),
		 (unsigned long long)tp->data_offset,
		 major(tp->store_dev), minor(tp->store_dev), tp->chunk_sectors,
		 tp->device_id, tp->format ? " 1 " FLEECE_TRACK_FEATURE_FORMAT : "");
	memset(t, 0, sizeof(*t));
	dmw_table_add(t, 0, sectors, FLEECE_TRACK_TARGET_NAME, params);
}

void track_table_no_format(struct dmw_table *t)
{
	struct track_params tp;
	uint64_t len;

	if (!track_table_parse(t, &tp) || !tp.format)
		return;
	len = t->t[0].len;
	tp.format = false;
	dmw_table_free(t);
	track_table(t, len, &tp);
}

/*
 * The device_id of NAME: its DM UUID, which the kernel takes up to 63
 * characters long.  An LV's ("LVM-" + VG UUID + LV UUID, 68) becomes
 * "LVM-LV-" + its LV UUID; another long one is cut and ends in a hash of
 * it.  A device without a DM UUID goes by its name.
 */
static void track_device_id(const struct dmw_info *info, char *id, size_t len)
{
	const char *u = info->uuid;
	size_t n = strlen(u);
	uint64_t h = 14695981039346656037ULL;
	size_t i;

	if (!n) {
		snprintf(id, len, "dm-name:%.*s", FLEECE_TRACK_DEVICE_ID_MAX - 8, info->name);
		return;
	}
	if (n <= FLEECE_TRACK_DEVICE_ID_MAX) {
		snprintf(id, len, "%s", u);
		return;
	}
	if (!strncmp(u, "LVM-", 4) && n == 68) {
		snprintf(id, len, "LVM-LV-%s", u + 36);
		return;
	}
	for (i = 0; i < n; i++)
		h = (h ^ (unsigned char)u[i]) * 1099511628211ULL;
	snprintf(id, len, "%.46s~%016llx", u, (unsigned long long)h);
}

/* --- the store's superblock ----------------------------------------------- */

struct track_sb {
	bool valid;
	uint32_t flags, chunk_sectors, prev_state;
	uint64_t seq, generation, epoch, nr_chunks, data_sectors;
	uint64_t checkpoint_time, format_time;
	char uuid[33];
	char device_id[65];
};

static uint32_t crc32c(const uint8_t *p, size_t n)
{
	static uint32_t table[256];
	uint32_t c = 0xffffffff;
	unsigned int i, k;

	if (!table[1]) {
		for (i = 0; i < 256; i++) {
			c = i;
			for (k = 0; k < 8; k++)
				c = c & 1 ? (c >> 1) ^ 0x82f63b78 : c >> 1;
			table[i] = c;
		}
		c = 0xffffffff;
	}
	while (n--)
		c = table[(c ^ *p++) & 0xff] ^ (c >> 8);
	return c ^ 0xffffffff;
}

static uint32_t le32(const uint8_t *p)
{
	return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
	return le32(p) | (uint64_t)le32(p + 4) << 32;
}

static void hex(const uint8_t *p, size_t n, char *out)
{
	size_t i;

	for (i = 0; i < n; i++)
		sprintf(out + 2 * i, "%02x", p[i]);
}

/*
 * The first 8 KiB of the store, read with O_DIRECT (the page cache may
 * hold an older store): *@blank when all zero, else the current valid
 * superblock slot in @sb (sb->valid false: none).  0, or -errno.
 */
static int store_read_sb(const char *path, struct track_sb *sb, bool *blank)
{
	uint8_t *buf;
	unsigned int slot;
	ssize_t n;
	size_t i;
	int fd, r = 0;

	memset(sb, 0, sizeof(*sb));
	*blank = false;
	fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (posix_memalign((void **)&buf, 4096, 2 * FLEECE_TRACK_BLOCK_SIZE)) {
		close(fd);
		return -ENOMEM;
	}
	n = pread(fd, buf, 2 * FLEECE_TRACK_BLOCK_SIZE, 0);
	if (n != 2 * FLEECE_TRACK_BLOCK_SIZE) {
		r = n < 0 ? -errno : -EIO;
		goto out;
	}
	*blank = true;
	for (i = 0; i < 2 * FLEECE_TRACK_BLOCK_SIZE && *blank; i++)
		*blank = !buf[i];
	for (slot = 0; slot < 2; slot++) {
		const uint8_t *b = buf + slot * FLEECE_TRACK_BLOCK_SIZE;
		uint64_t seq = le64(b + 16);

		if (le32(b + 4) != FLEECE_TRACK_SB_MAGIC || le32(b + 8) != FLEECE_TRACK_VERSION ||
		    le32(b) != crc32c(b + 4, FLEECE_TRACK_BLOCK_SIZE - 4) || (seq & 1) != slot)
			continue;
		if (sb->valid && sb->seq > seq)
			continue;
		sb->valid = true;
		sb->flags = le32(b + 12);
		sb->seq = seq;
		sb->generation = le64(b + 24);
		sb->epoch = le64(b + 32);
		sb->nr_chunks = le64(b + 40);
		sb->data_sectors = le64(b + 48);
		sb->chunk_sectors = le32(b + 56);
		sb->prev_state = le32(b + 60);
		sb->checkpoint_time = le64(b + 72);
		sb->format_time = le64(b + 80);
		hex(b + 88, 16, sb->uuid);
		memcpy(sb->device_id, b + 104, 64);
		sb->device_id[64] = '\0';
	}
out:
	free(buf);
	close(fd);
	return r;
}

/*
 * The store's first @len bytes (a multiple of 4096), read into @buf
 * (4096-aligned) with O_DIRECT: 0, or -errno with a message.
 */
static int store_region_read(const char *path, void *buf, size_t len)
{
	ssize_t n;
	int fd, r = 0;

	fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		msg_errno("store %s", path);
		return r;
	}
	n = pread(fd, buf, len, 0);
	if (n < 0 || (size_t)n != len) {
		r = n < 0 ? -errno : -EIO;
		errno = -r;
		msg_errno("store %s: cannot read its first %zu bytes", path, len);
	}
	close(fd);
	return r;
}

/*
 * Write @buf (4096-aligned) over the store's first @len bytes, durably;
 * @buf NULL: zero its first 8 KiB (its superblocks).  0, or -errno with a
 * message.
 */
static int store_region_write(const char *path, const void *buf, size_t len)
{
	void *zero = NULL;
	int fd, r = 0;

	fd = open(path, O_WRONLY | O_DIRECT | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		msg_errno("store %s", path);
		return r;
	}
	if (!buf) {
		len = 2 * FLEECE_TRACK_BLOCK_SIZE;
		if (posix_memalign(&zero, 4096, len)) {
			close(fd);
			return -ENOMEM;
		}
		memset(zero, 0, len);
		buf = zero;
	}
	if (!pwrite_all(fd, buf, len, 0) || fsync(fd)) {
		r = -errno;
		msg_errno("store %s: cannot write its first %zu bytes", path, len);
	}
	free(zero);
	close(fd);
	return r;
}

/* --- records ------------------------------------------------------------- */

struct track_rec {
	char name[128];
	char uuid[130];			/* NAME's DM UUID when it was recorded */
	char device_id[64];
	char store[PATH_MAX];		/* a stable path of the store */
	dev_t store_dev;		/* when recorded (informational) */
	unsigned int chunk_sectors;
	uint64_t sectors;
	dev_t data_dev;			/* when recorded (informational) */
	uint64_t data_offset;
	char store_uuid[33];
};

static const char *track_dir(void)
{
	const char *d = getenv("FLEECE_TRACK_DIR");

	return d && *d ? d : FLEECE_TRACK_DIR;
}

static char *rec_path(const char *name)
{
	return xasprintf("%s/%s" TRACK_REC_SUFFIX, track_dir(), name);
}

static void rec_key(const char *key, const char *v, void *ctx)
{
	struct track_rec *rec = ctx;

	if (!strcmp(key, "uuid"))
		snprintf(rec->uuid, sizeof(rec->uuid), "%s", v);
	else if (!strcmp(key, "device_id"))
		snprintf(rec->device_id, sizeof(rec->device_id), "%s", v);
	else if (!strcmp(key, "store"))
		snprintf(rec->store, sizeof(rec->store), "%s", v);
	else if (!strcmp(key, "store_dev"))
		parse_devno(v, &rec->store_dev);
	else if (!strcmp(key, "chunk_sectors"))
		rec->chunk_sectors = strtoul(v, NULL, 10);
	else if (!strcmp(key, "sectors"))
		rec->sectors = strtoull(v, NULL, 10);
	else if (!strcmp(key, "data"))
		parse_linear_params(v, &rec->data_dev, &rec->data_offset);
	else if (!strcmp(key, "store_uuid"))
		snprintf(rec->store_uuid, sizeof(rec->store_uuid), "%s", v);
}

/* NAME's record: 0, -ENOENT (none, silently), or -errno with a message. */
static int rec_read(const char *name, struct track_rec *rec)
{
	char *path = rec_path(name);
	FILE *f;
	int r;

	memset(rec, 0, sizeof(*rec));
	f = fopen(path, "re");
	if (!f) {
		r = -errno;
		if (r != -ENOENT)
			msg_errno("%s: cannot read its tracking record %s", name, path);
		free(path);
		return r;
	}
	free(path);
	snprintf(rec->name, sizeof(rec->name), "%s", name);
	kv_read(f, rec_key, rec);
	fclose(f);
	if (!rec->store[0] || !rec->chunk_sectors || !rec->sectors || !rec->device_id[0]) {
		msg_error("%s: its tracking record in %s is incomplete", name, track_dir());
		return -EINVAL;
	}
	return 0;
}

static int rec_write(const struct track_rec *rec)
{
	char *path = rec_path(rec->name), *tmp = xasprintf("%s~tmp", path), *dir;
	FILE *f;
	int r = 0;

	dir = xstrdup(track_dir());
	if (mkdir(dir, 0755) && errno != EEXIST) {
		/* /etc/fleece first */
		char *up = strrchr(dir, '/');

		if (up && up != dir) {
			*up = '\0';
			if (mkdir(dir, 0755) && errno != EEXIST)
				r = -errno;
			*up = '/';
		}
		if (!r && mkdir(dir, 0755) && errno != EEXIST)
			r = -errno;
		if (r) {
			errno = -r;
			msg_errno("cannot create the tracking directory %s", dir);
			goto out;
		}
	}
	f = create_tmp_file(tmp, 0644, &r);
	if (!f)
		goto out;
	fprintf(f, "# fleece(8): change tracking of %s, re-attached by 'fleece track attach';\n"
		"# removed by 'fleece track stop %s'\n", rec->name, rec->name);
	fprintf(f, "uuid=%s\n", rec->uuid);
	fprintf(f, "device_id=%s\n", rec->device_id);
	fprintf(f, "store=%s\n", rec->store);
	fprintf(f, "store_dev=%u:%u\n", major(rec->store_dev), minor(rec->store_dev));
	fprintf(f, "chunk_sectors=%u\n", rec->chunk_sectors);
	fprintf(f, "sectors=%llu\n", (unsigned long long)rec->sectors);
	fprintf(f, "data=%u:%u %llu\n", major(rec->data_dev), minor(rec->data_dev),
		(unsigned long long)rec->data_offset);
	if (rec->store_uuid[0])
		fprintf(f, "store_uuid=%s\n", rec->store_uuid);
	if (fflush(f) || fsync(fileno(f))) {
		r = -errno;
		fclose(f);
		msg_errno("cannot write %s", tmp);
		goto out;
	}
	fclose(f);
	if (rename(tmp, path)) {
		r = -errno;
		msg_errno("cannot write %s", path);
		goto out;
	}
	fsync_dir(track_dir());
out:
	free(dir);
	free(tmp);
	free(path);
	return r;
}

static int rec_remove(const char *name)
{
	char *path = rec_path(name);
	int r = 0;

	if (unlink(path) && errno != ENOENT) {
		r = -errno;
		msg_errno("cannot remove %s", path);
	} else {
		fsync_dir(track_dir());
	}
	free(path);
	return r;
}

/* Every NAME with a record: 0, or -errno with a message. */
static int rec_list(char ***names, unsigned int *n)
{
	size_t sl = strlen(TRACK_REC_SUFFIX), len;
	struct dirent *de;
	char **v = NULL;
	DIR *d;
	int r = 0;

	*names = NULL;
	*n = 0;
	d = opendir(track_dir());
	if (!d) {
		if (errno == ENOENT)
			return 0;
		r = -errno;
		msg_errno("cannot list %s", track_dir());
		return r;
	}
	while ((de = readdir(d))) {
		len = strlen(de->d_name);
		if (len <= sl || strcmp(de->d_name + len - sl, TRACK_REC_SUFFIX))
			continue;
		v = realloc(v, (*n + 1) * sizeof(*v));
		if (!v) {
			msg_error("out of memory");
			exit(EX_FLEECE_FAIL);
		}
		v[(*n)++] = xasprintf("%.*s", (int)(len - sl), de->d_name);
	}
	closedir(d);
	*names = v;
	return 0;
}

/*
 * A path of the store that names the same device after a reboot: a dm
 * device's /dev/mapper/NAME (an LV's VG-LV), else a /dev/disk/by-id link
 * to it, else @given as it is (a loop device, say, with a warning).
 */
static void store_stable_path(dev_t dev, const char *given, char *out, size_t len)
{
	static const char *const dirs[] = { "/dev/disk/by-id", "/dev/disk/by-partuuid",
					    "/dev/disk/by-path" };
	struct dmw_info info;
	struct dirent *de;
	struct stat st;
	unsigned int i;
	DIR *d;

	if (dmw_is_dm_major(major(dev)) && !dmw_info_devno(dev, &info) && info.exists) {
		snprintf(out, len, "/dev/mapper/%s", info.name);
		return;
	}
	for (i = 0; i < ARRAY_SIZE(dirs); i++) {
		d = opendir(dirs[i]);
		if (!d)
			continue;
		while ((de = readdir(d))) {
			char *p;

			if (de->d_name[0] == '.')
				continue;
			p = xasprintf("%s/%s", dirs[i], de->d_name);
			if (!stat(p, &st) && S_ISBLK(st.st_mode) && st.st_rdev == dev) {
				snprintf(out, len, "%s", p);
				free(p);
				closedir(d);
				return;
			}
			free(p);
		}
		closedir(d);
	}
	snprintf(out, len, "%s", given);
	msg_warn("store %s: no stable name found (/dev/mapper, /dev/disk/by-id): 'fleece track attach' will look for it there after a reboot",
		 given);
}

/* --- query ---------------------------------------------------------------- */

static int parse_track_status(const char *s, struct track_info *ti)
{
	char *copy = xstrdup(s), *save = NULL, *tok;
	unsigned int i = 0;

	for (tok = strtok_r(copy, " ", &save); tok; tok = strtok_r(NULL, " ", &save), i++) {
		switch (i) {
		case FLEECE_TRACK_ST_CHUNK_SECTORS:
			ti->chunk_sectors = strtoul(tok, NULL, 10);
			break;
		case FLEECE_TRACK_ST_CHUNKS_TOTAL:
			ti->nr_chunks = strtoull(tok, NULL, 10);
			break;
		case FLEECE_TRACK_ST_EPOCH:
			ti->epoch = strtoull(tok, NULL, 10);
			break;
		case FLEECE_TRACK_ST_CHANGED:
			ti->changed = strtoull(tok, NULL, 10);
			break;
		case FLEECE_TRACK_ST_CHANGED_PREV:
			ti->changed_prev = strtoull(tok, NULL, 10);
			break;
		case FLEECE_TRACK_ST_GENERATION:
			ti->generation = strtoull(tok, NULL, 10);
			break;
		case FLEECE_TRACK_ST_STORE_STATE:
			ti->dirty = !strcmp(tok, FLEECE_TRACK_DIRTY);
			break;
		case FLEECE_TRACK_ST_HISTORY:
			snprintf(ti->history_str, sizeof(ti->history_str), "%s", tok);
			ti->history = !strcmp(tok, FLEECE_TRACK_HISTORY_VALID) ?
					      TRACK_HISTORY_VALID :
				      !strcmp(tok, FLEECE_TRACK_HISTORY_LOST) ?
					      TRACK_HISTORY_LOST : TRACK_HISTORY_FAILED;
			break;
		case FLEECE_TRACK_ST_PREV:
			snprintf(ti->prev_state, sizeof(ti->prev_state), "%s", tok);
			break;
		case FLEECE_TRACK_ST_CONSERVATIVE:
			ti->conservative = strtoull(tok, NULL, 10);
			break;
		case FLEECE_TRACK_ST_STORE_ERRORS:
			ti->store_errors = strtoull(tok, NULL, 10);
			break;
		case FLEECE_TRACK_ST_COMMITS:
			ti->commits = strtoull(tok, NULL, 10);
			break;
		case FLEECE_TRACK_ST_OPENED:
			ti->opened_unclean = !strcmp(tok, FLEECE_TRACK_UNCLEAN);
			break;
		case FLEECE_TRACK_ST_NR_FIELDS:	/* K4: the store's UUID */
			if (strlen(tok) == 32)
				snprintf(ti->store_uuid, sizeof(ti->store_uuid), "%s", tok);
			break;
		}
	}
	free(copy);
	return i >= FLEECE_TRACK_ST_NR_FIELDS ? 0 : -EINVAL;
}

/*
 * The fleece-track table of NAME, or of its hidden origin while NAME is
 * fleeced: 1 with @tp, @dev (where it is) and @sectors filled in, 0 when
 * there is none, -errno with a message when a query failed (-ENXIO: no
 * device NAME, silently).
 */
static int find_track_table(const char *name, struct track_params *tp, char *dev,
			    size_t len, uint64_t *sectors)
{
	struct fleece_names fn;
	struct dmw_info info;
	struct dmw_table t;
	int r, i;

	r = dmw_info(name, &info);
	if (r) {
		msg_error("%s: cannot query device-mapper: %s", name, dmw_strerror(r));
		return r;
	}
	if (!info.exists)
		return -ENXIO;
	if (fleece_names(name, &fn))
		return -EINVAL;
	for (i = 0; i < 2; i++) {
		const char *d = i ? fn.origin : name;

		if (i) {
			r = dmw_info_uuid(fn.origin_uuid, &info);
			if (r) {
				msg_error("%s: cannot query device-mapper: %s", name,
					  dmw_strerror(r));
				return r;
			}
			if (!info.exists)
				return 0;
			d = info.name;
		} else if (!info.live_table) {
			continue;
		}
		r = dmw_get_table(d, false, &t);
		if (r == -ENXIO && i)
			return 0;
		if (r) {
			msg_error("%s: cannot read the table of %s: %s", name, d, dmw_strerror(r));
			return r;
		}
		if (track_table_parse(&t, tp)) {
			*sectors = dmw_table_len(&t);
			dmw_table_free(&t);
			snprintf(dev, len, "%s", d);
			return 1;
		}
		dmw_table_free(&t);
	}
	return 0;
}

int track_query(const char *name, struct track_info *ti)
{
	struct track_params tp;
	struct dmw_table st;
	struct track_sb sb;
	bool blank;
	int r;

	memset(ti, 0, sizeof(*ti));
	memset(&tp, 0, sizeof(tp));
	r = find_track_table(name, &tp, ti->table_dev, sizeof(ti->table_dev), &ti->sectors);
	if (r <= 0)
		return r;
	ti->store_dev = tp.store_dev;
	ti->data_dev = tp.data_dev;
	ti->data_offset = tp.data_offset;
	snprintf(ti->device_id, sizeof(ti->device_id), "%s", tp.device_id);
	devno_display(tp.store_dev, ti->store_path, sizeof(ti->store_path));
	r = dmw_get_status(ti->table_dev, &st);
	if (!r && (st.n != 1 || strcmp(st.t[0].type, FLEECE_TRACK_TARGET_NAME)))
		r = -ESTALE;	/* its table changed in between */
	if (!r)
		r = parse_track_status(st.t[0].params, ti);
	if (r) {
		msg_error("%s: cannot read the tracker's status from %s: %s", name,
			  ti->table_dev, r == -EINVAL ? "unexpected format" : dmw_strerror(r));
		dmw_table_free(&st);
		return r == -ENXIO ? -ESTALE : r;
	}
	dmw_table_free(&st);
	ti->tracked = true;
	/* The last checkpoint's time is on the store only. */
	r = store_read_sb(ti->store_path, &sb, &blank);
	if (!r && sb.valid) {
		ti->checkpoint_time = sb.checkpoint_time;
		if (!ti->store_uuid[0])
			snprintf(ti->store_uuid, sizeof(ti->store_uuid), "%s", sb.uuid);
	} else {
		msg_debug("%s: cannot read the superblock of %s: %s", name, ti->store_path,
			  r ? strerror(-r) : "none valid");
	}
	return 0;
}

/* --- the table swap -------------------------------------------------------- */

/* One NAME's table swap: @old its live table, @new the one put in its place. */
struct track_swap {
	const char *name;
	const struct dmw_table *old;
	const struct dmw_table *new;
	bool read_only;
	bool loaded;		/* @new is NAME's inactive table */
	bool suspended;
	bool live;		/* @new is NAME's live table (resumed) */
};

/* NAME as it was: the inactive table cleared, resumed.  0, or -errno. */
static int swap_clear(struct track_swap *sw)
{
	int r = 0, r2;

	if (sw->loaded) {
		r = dmw_clear(sw->name);
		if (r)
			msg_error("%s: cannot clear the table loaded: %s", sw->name,
				  dmw_strerror(r));
		else
			sw->loaded = false;
	}
	if (sw->suspended) {
		r2 = dmw_resume(sw->name, 0);
		if (r2)
			msg_error("%s: cannot resume: %s", sw->name, dmw_strerror(r2));
		else
			sw->suspended = false;
		r = r ? r : r2;
	}
	return r;
}

/*
 * A NAME resumed with @new while another one failed: @old put back in
 * its place (loaded, NAME suspended without freezing, resumed).
 */
static int swap_back(struct track_swap *sw)
{
	int r;

	r = dmw_load(sw->name, sw->old, sw->read_only);
	if (!r) {
		r = dmw_suspend(sw->name, false);
		if (r)
			dmw_clear(sw->name);
	}
	if (!r) {
		r = dmw_resume(sw->name, 0);
		if (r) {	/* suspended with @new live: resume it so */
			dmw_clear(sw->name);
			dmw_resume(sw->name, 0);
		}
	}
	if (r)
		msg_error("%s: cannot put its table back: %s", sw->name, dmw_strerror(r));
	else
		sw->live = false;
	return r;
}

/*
 * Put each sw[i].new in place of NAME's live table sw[i].old, all NAMEs in
 * one suspend window, as "fleece start" does: load every new table
 * inactive, suspend every NAME (memory locked, messages held: see
 * start.c), check that each live table is still the old one and each
 * inactive one the new one, resume them all.  On any failure every NAME
 * is put back as it was: the tables loaded cleared, the NAMEs suspended
 * resumed, a NAME already resumed with its new table given its old one
 * back.  0, or -errno with a message (and the kernel's reason for a
 * refused table); sw[i].live tells a NAME that could not be put back.
 */
static int track_swap_many(struct track_swap *sw, unsigned int n)
{
	unsigned int i, done = 0;
	double resumed_at;
	sigset_t oldmask;
	char **names;
	bool locked;
	int r = 0, kmsg;

	for (i = 0; i < n && !r; i++) {
		kmsg = kmsg_mark();
		r = dmw_load(sw[i].name, sw[i].new, sw[i].read_only);
		if (r) {
			msg_error("%s: the kernel refused the table '%s': %s", sw[i].name,
				  sw[i].new->t[0].params, dmw_strerror(r));
			kmsg_report(kmsg, "fleece");
		} else {
			sw[i].loaded = true;
			if (kmsg >= 0)
				close(kmsg);
		}
	}
	if (r) {
		for (i = 0; i < n; i++)
			swap_clear(&sw[i]);
		return r;
	}
	names = xcalloc(n, sizeof(*names));
	for (i = 0; i < n; i++)
		names[i] = (char *)sw[i].name;
	locked = !mlockall(MCL_CURRENT | MCL_FUTURE);
	if (!locked)
		msg_warn("cannot lock the memory of fleece (%s): a device holding its files must not be tracked",
			 strerror(errno));
	signals_block(&oldmask);
	msg_hold(true);
	for (i = 0; i < n && !r; i++) {
		r = fault_point("track-suspend");
		if (!r)
			r = fleece_suspend(sw[i].name);
		if (!r)
			sw[i].suspended = true;
	}
	for (i = 0; i < n && !r; i++)
		r = tables_unchanged(sw[i].name, sw[i].old, sw[i].new, "not changing it");
	if (!r) {
		r = fault_point("resume");
		if (!r)
			r = dmw_resume_many(names, n, 0, &done, &resumed_at);
		for (i = 0; i < done; i++) {
			sw[i].loaded = false;
			sw[i].suspended = false;
			sw[i].live = true;
		}
		if (r)
			msg_error("%s: cannot resume with the new table: %s", names[done],
				  dmw_strerror(r));
	}
	if (r) {
		/* Back as they were: the old tables are still live, only not resumed. */
		for (i = 0; i < n; i++)
			swap_clear(&sw[i]);
		for (i = 0; i < n; i++)
			if (sw[i].live)
				swap_back(&sw[i]);
	}
	msg_hold(false);
	signals_restore(&oldmask);
	if (locked)
		munlockall();
	free(names);
	return r;
}

/* One NAME's table swap (track stop, track attach). */
static int track_swap(const char *name, const struct dmw_table *old,
		      const struct dmw_table *new, bool read_only)
{
	struct track_swap sw = {
		.name = name, .old = old, .new = new, .read_only = read_only,
	};

	return track_swap_many(&sw, 1);
}

/* --- NAME -------------------------------------------------------------- */

struct track_ctx {
	struct fleece_names fn;
	struct dmw_info info;
	struct dmw_table table;		/* NAME's live table */
	uint64_t sectors;
	dev_t dev;
	char vg[128];			/* an LV's VG, its lvm2 lock held */
	bool tracked;			/* its table is fleece-track */
	struct track_params tp;		/* ... then its parameters */
	bool linear;			/* one linear target over all of it */
	dev_t data_dev;			/* ... then its device and offset */
	uint64_t data_offset;
};

static void ctx_release(struct track_ctx *c)
{
	dmw_table_free(&c->table);
	lvm_vg_unlock(c->vg);
	c->vg[0] = '\0';
}

/*
 * Resolve NAME, take fleece's lock of it and lvm2's lock of an LV's VG,
 * read its table.  0, or -errno with a message (-EFLEECE_REFUSED: no such
 * device, or not a device fleece can track).
 */
static int ctx_open(struct track_ctx *c, const char *arg)
{
	char name[128];
	int r;

	memset(c, 0, sizeof(*c));
	r = resolve_dm_name(arg, name, sizeof(name));
	if (r)
		return r;
	if (fleece_names(name, &c->fn))
		return -EFLEECE_REFUSED;
	r = fleece_lock(name);
	if (r)
		return r == -EBUSY ? -EFLEECE_REFUSED : r;
	r = dmw_info(name, &c->info);
	if (!r && c->info.exists)
		r = lvm_lv_vg(name, c->info.uuid, c->vg, sizeof(c->vg));
	if (!r && c->vg[0]) {
		r = lvm_vg_lock(name, c->vg, false);
		if (r) {	/* with its message (an interrupted wait, say) */
			c->vg[0] = '\0';
			return r;
		}
	}
	if (!r)	/* again, under the locks */
		r = dmw_info(name, &c->info);
	if (r) {
		if (r != -EFLEECE_REFUSED)
			msg_error("%s: cannot query device-mapper: %s", name, dmw_strerror(r));
		return r;
	}
	if (!c->info.exists) {
		msg_error("%s: no such device-mapper device", name);
		return -EFLEECE_REFUSED;
	}
	c->dev = makedev(c->info.major, c->info.minor);
	if (!strncmp(c->info.uuid, FLEECE_UUID_PREFIX, strlen(FLEECE_UUID_PREFIX))) {
		msg_error("%s: this device was created by fleece (DM UUID %s)", name, c->info.uuid);
		return -EFLEECE_REFUSED;
	}
	if (!c->info.live_table) {
		msg_error("%s: has no active table", name);
		return -EFLEECE_REFUSED;
	}
	r = dmw_get_table(name, false, &c->table);
	if (r) {
		msg_error("%s: cannot read its table: %s", name, dmw_strerror(r));
		return r;
	}
	c->sectors = dmw_table_len(&c->table);
	c->tracked = track_table_parse(&c->table, &c->tp);
	c->linear = c->table.n == 1 && !c->table.t[0].start &&
		    !strcmp(c->table.t[0].type, "linear") &&
		    !parse_linear_params(c->table.t[0].params, &c->data_dev, &c->data_offset);
	return 0;
}

/*
 * A state file of NAME while no fleece device of it exists is what a crash
 * in a fleece session leaves (devices do not survive a reboot).  At boot
 * "track attach" runs before fleece-recover.service (which needs the file
 * systems that attach must precede) cleans such files up: the tracker goes
 * on, or writes before the cleanup would pass unseen; "fleece stop NAME"
 * still removes the files, whatever NAME's table is by then.
 */
static int check_crash_leftover(const char *name)
{
	bool present;
	int r;

	r = state_present(name, &present);
	if (r)
		return r;
	if (present)
		msg_warn("%s: a fleece session left by a crash (%s/%s): attaching its tracker first; 'fleece stop %s' (fleece-recover.service at boot) removes what is left",
			 name, state_dir(), name, name);
	return 0;
}

/*
 * NAME must not be fleeced, nor suspended or half-changed by another tool:
 * 0, or -EFLEECE_REFUSED (or a failed query's -errno) with a message.
 * @leftover_ok: a crash's state file of NAME is not in the way (attach).
 */
static int check_not_busy(const struct track_ctx *c, bool leftover_ok)
{
	const char *name = c->fn.name;
	struct fleece_params fp;
	struct dmw_info o;
	int r;

	if (table_is_fleece(&c->table, &fp) ||
	    (c->table.n && !strcmp(c->table.t[0].type, FLEECE_VIEW_TARGET_NAME))) {
		msg_error("%s: is fleeced (its table is a '%s' target): run 'fleece stop %s' first",
			  name, c->table.t[0].type, name);
		return -EFLEECE_REFUSED;
	}
	r = dmw_info_uuid(c->fn.origin_uuid, &o);
	if (!r && !o.exists)
		r = dmw_info_uuid(c->fn.view_uuid, &o);
	if (r) {
		msg_error("%s: cannot query device-mapper: %s", name, dmw_strerror(r));
		return r;
	}
	if (o.exists) {
		msg_error("%s: is fleeced (%s exists): run 'fleece stop %s' first", name, o.name,
			  name);
		return -EFLEECE_REFUSED;
	}
	r = leftover_ok ? check_crash_leftover(name) : state_absent(name);
	if (r)
		return r;
	if (c->info.suspended) {
		msg_error("%s: is suspended: resume it first", name);
		return -EFLEECE_REFUSED;
	}
	if (c->info.inactive_table) {
		msg_error("%s: has an inactive table loaded (is another tool changing it?)", name);
		return -EFLEECE_REFUSED;
	}
	return 0;
}

static int check_linear(const struct track_ctx *c)
{
	if (c->linear)
		return 0;
	msg_error("%s: its table is %u target(s) ('%s' first): only a device whose table is one linear target over all of it can be tracked (fleece-track maps it 1:1 onto one device)",
		  c->fn.name, c->table.n, c->table.n ? c->table.t[0].type : "none");
	return -EFLEECE_REFUSED;
}

/*
 * The store @arg for NAME: a block device that is not NAME, not built on it
 * and not beneath it, not made by fleece, not in use, large enough for
 * @chunk_sectors.  Its device number in *@dev.  0, or -errno with a
 * message (-EFLEECE_REFUSED: not fit).  @recorded: NAME's recorded store,
 * formatted once (attach), so one too small now was made smaller since.
 */
static int check_store(const struct track_ctx *c, const char *arg, unsigned int chunk_sectors,
		       bool recorded, dev_t *dev)
{
	const char *name = c->fn.name;
	char why[PATH_MAX + 128], a[32], b[32];
	uint64_t bytes, need, chunks;
	struct dmw_info info;
	struct stat st;
	int fd, r;

	if (stat(arg, &st)) {
		msg_errno("store %s", arg);
		return -EFLEECE_REFUSED;
	}
	if (!S_ISBLK(st.st_mode)) {
		msg_error("store %s: not a block device (a file needs a loop device: losetup)", arg);
		return -EFLEECE_REFUSED;
	}
	*dev = st.st_rdev;
	r = devno_depends(*dev, c->dev, why, sizeof(why));
	if (r == 1 || *dev == c->data_dev) {
		msg_error("store %s: it is %s itself, or on it%s%s%s: the store must be a separate device",
			  arg, name, r == 1 && why[0] ? " (" : "", r == 1 ? why : "",
			  r == 1 && why[0] ? ")" : "");
		return -EFLEECE_REFUSED;
	}
	if (r < 0) {
		msg_error("store %s: cannot tell whether it is built on %s: %s", arg, name, why);
		return -EFLEECE_REFUSED;
	}
	if (devno_depends(c->dev, *dev, why, sizeof(why)) == 1) {
		msg_error("store %s: %s is built on it: the store must be a separate device", arg,
			  name);
		return -EFLEECE_REFUSED;
	}
	if (dmw_is_dm_major(major(*dev))) {
		r = dmw_info_devno(*dev, &info);
		if (r) {
			msg_error("store %s: cannot query device-mapper: %s", arg, dmw_strerror(r));
			return r;
		}
		if (info.exists && !strncmp(info.uuid, FLEECE_UUID_PREFIX, strlen(FLEECE_UUID_PREFIX))) {
			msg_error("store %s: a device created by fleece cannot be a store", arg);
			return -EFLEECE_REFUSED;
		}
	}
	fd = open(arg, O_RDONLY | O_EXCL | O_CLOEXEC);
	if (fd < 0) {
		if (errno == EBUSY)
			msg_error("store %s: in use (mounted, the store of another tracker, or held by another device or program)",
				  arg);
		else
			msg_errno("store %s", arg);
		return -EFLEECE_REFUSED;
	}
	r = blkdev_size(fd, &bytes);
	close(fd);
	if (r) {
		msg_errno("store %s: cannot get its size", arg);
		return -EFLEECE_REFUSED;
	}
	if (devno_has_holders(*dev)) {
		msg_error("store %s: in use (another device is built on it)", arg);
		return -EFLEECE_REFUSED;
	}
	chunks = (c->sectors + chunk_sectors - 1) / chunk_sectors;
	need = track_store_bytes(chunks);
	if (bytes < need && recorded) {
		msg_error("%s: its store %s is too small: %s, and tracking %s (%llu chunks of %s) needs %llu bytes: truncated since it was formatted? (not attached)",
			  name, arg, fmt_size(bytes, a, sizeof(a)), name, (unsigned long long)chunks,
			  fmt_size(chunk_sectors * 512ULL, b, sizeof(b)), (unsigned long long)need);
		return -EFLEECE_REFUSED;
	}
	if (bytes < need) {
		msg_error("store %s is too small: %s, and tracking %s (%llu chunks of %s) needs %llu bytes",
			  arg, fmt_size(bytes, a, sizeof(a)), name, (unsigned long long)chunks,
			  fmt_size(chunk_sectors * 512ULL, b, sizeof(b)), (unsigned long long)need);
		return -EFLEECE_REFUSED;
	}
	return 0;
}

/* --- track start ---------------------------------------------------------- */

struct track_opts {
	const char **stores;		/* --store, one per NAME */
	unsigned int nr_stores;
	uint64_t chunk_bytes;
	bool force;
	bool json;
	bool all;
};

/*
 * What the store holds: blank (formatted by the kernel), an earlier
 * history of NAME or a signature (refused without --force, then its
 * superblocks zeroed: a new history), another device's history (always
 * refused).  0 with *@wipe, or -errno with a message.
 */
static int check_store_content(const struct track_ctx *c, const struct track_opts *o,
			       const char *arg, const char *device_id, bool *wipe)
{
	const char *name = c->fn.name;
	char type[64], uuid[128];
	struct track_sb sb;
	bool blank;
	int r;

	*wipe = false;
	r = store_read_sb(arg, &sb, &blank);
	if (r) {
		errno = -r;
		msg_errno("store %s: cannot read it", arg);
		return -EFLEECE_REFUSED;
	}
	if (blank)
		return 0;
	if (sb.valid && strcmp(sb.device_id, device_id)) {
		msg_error("store %s: holds the change tracking of another device (device_id %s, not %s's %s): zero its first 8 KiB by hand if that history is no longer needed",
			  arg, sb.device_id, name, device_id);
		return -EFLEECE_REFUSED;
	}
	if (sb.valid) {
		if (!o->force) {
			msg_error("store %s: holds an earlier tracking history of %s (epoch %llu): writes since it was detached are unknown; give --force to start a new history on it",
				  arg, name, (unsigned long long)sb.epoch);
			return -EFLEECE_REFUSED;
		}
		msg_warn("store %s: starting a new history over the earlier one of %s (--force)",
			 arg, name);
		*wipe = true;
		return 0;
	}
	r = probe_signature(arg, type, sizeof(type), uuid, sizeof(uuid));
	if (r < 0) {
		errno = -r;
		msg_errno("store %s: cannot look for signatures", arg);
		return -EFLEECE_REFUSED;
	}
	if (!o->force) {
		if (r)
			msg_error("store %s: holds a %s signature%s%s: its data would be overwritten (wipefs -a it, or give --force)",
				  arg, type, uuid[0] ? " UUID " : "", uuid);
		else
			msg_error("store %s: is not blank (its first 8 KiB are not zero) and holds no fleece-track superblock: its data would be overwritten (give --force)",
				  arg);
		return -EFLEECE_REFUSED;
	}
	if (r)
		msg_warn("store %s: holds a %s signature: overwriting it (--force)", arg, type);
	else
		msg_warn("store %s: holds data: overwriting it (--force)", arg);
	*wipe = true;
	return 0;
}

static void rec_fill(struct track_rec *rec, const struct track_ctx *c,
		     const struct track_params *tp, const char *store_arg)
{
	memset(rec, 0, sizeof(*rec));
	snprintf(rec->name, sizeof(rec->name), "%s", c->fn.name);
	snprintf(rec->uuid, sizeof(rec->uuid), "%s", c->info.uuid);
	snprintf(rec->device_id, sizeof(rec->device_id), "%s", tp->device_id);
	store_stable_path(tp->store_dev, store_arg, rec->store, sizeof(rec->store));
	rec->store_dev = tp->store_dev;
	rec->chunk_sectors = tp->chunk_sectors;
	rec->sectors = c->sectors;
	rec->data_dev = tp->data_dev;
	rec->data_offset = tp->data_offset;
}

/* One NAME of a track start. */
struct start_item {
	struct track_ctx c;
	const char *store;
	struct track_params tp;
	struct track_rec rec;
	struct dmw_table nt;
	bool wipe;			/* the store's first 8 KiB zeroed first */
	bool recorded;			/* @rec written */
	struct track_rec old_rec;	/* NAME's record before (--force) */
	bool had_rec;
	void *head;			/* what a format writes of the store, */
	size_t head_len;		/* ... as it was */
};

/*
 * NAME and its store @store, as far as they can be checked alone without
 * changing anything (then start_check_all(), then what the store holds):
 * 0, or -errno with a message.
 */
static int start_check_one(struct start_item *it, const char *arg, const char *store,
			   const struct track_opts *o)
{
	struct track_ctx *c = &it->c;
	int r;

	it->store = store;
	r = ctx_open(c, arg);
	if (r)
		return r;
	if (c->tracked) {
		char sp[PATH_MAX];

		devno_display(c->tp.store_dev, sp, sizeof(sp));
		msg_error("%s: already tracked (store %s): see 'fleece track status %s'", c->fn.name,
			  sp, c->fn.name);
		return -EFLEECE_REFUSED;
	}
	r = check_not_busy(c, false);
	if (!r)
		r = check_linear(c);
	if (r)
		return r;
	r = rec_read(c->fn.name, &it->old_rec);
	it->had_rec = !r;
	if (!r && !o->force) {
		msg_error("%s: has a tracking record (%s/%s%s) but is not tracked: run 'fleece track attach %s' to go on with that history, or give --force to start a new one",
			  c->fn.name, track_dir(), c->fn.name, TRACK_REC_SUFFIX, c->fn.name);
		return -EFLEECE_REFUSED;
	}
	if (r && r != -ENOENT)
		return r;
	if (o->chunk_bytes % devno_logical_block_size(c->dev)) {
		msg_error("%s: the chunk size (%llu) is not a multiple of its logical block size (%u)",
			  c->fn.name, (unsigned long long)o->chunk_bytes,
			  devno_logical_block_size(c->dev));
		return -EFLEECE_REFUSED;
	}
	it->tp.chunk_sectors = o->chunk_bytes / 512;
	it->tp.data_dev = c->data_dev;
	it->tp.data_offset = c->data_offset;
	track_device_id(&c->info, it->tp.device_id, sizeof(it->tp.device_id));
	return check_store(c, store, it->tp.chunk_sectors, false, &it->tp.store_dev);
}

/*
 * The NAMEs among themselves: each a device of its own, each with a store
 * of its own that is none of the NAMEs nor built on one (a store of one
 * NAME on another would be written through that NAME's tracker).
 */
static int start_check_all(struct start_item *it, unsigned int n)
{
	char why[PATH_MAX + 128];
	unsigned int i, j;

	for (i = 0; i < n; i++) {
		for (j = 0; j < n; j++) {
			if (j < i && !strcmp(it[i].c.fn.name, it[j].c.fn.name)) {
				msg_error("%s: given twice", it[i].c.fn.name);
				return -EFLEECE_REFUSED;
			}
			if (j < i && it[i].tp.store_dev == it[j].tp.store_dev) {
				msg_error("store %s: given for %s and for %s: each NAME needs a store of its own",
					  it[i].store, it[j].c.fn.name, it[i].c.fn.name);
				return -EFLEECE_REFUSED;
			}
			if (j != i && devno_depends(it[i].tp.store_dev, it[j].c.dev, why,
						    sizeof(why)) != 0) {
				msg_error("store %s (of %s): it is %s, or on it, or cannot be told apart from it: the store must be a separate device",
					  it[i].store, it[i].c.fn.name, it[j].c.fn.name);
				return -EFLEECE_REFUSED;
			}
		}
	}
	return 0;
}

/*
 * A failed start undone: the record of each NAME removed (or the one it had
 * before, with --force, put back) and what the kernel's format at the
 * table load wrote of its store (superblocks, bitmaps) put back as it was,
 * so an earlier history that --force was to replace is whole again, unless
 * NAME could not be given its linear table back: then it stays tracked,
 * with its new record.
 */
static void start_undo(struct start_item *it, const struct track_swap *sw, unsigned int n,
		       bool stores_written)
{
	unsigned int i;

	for (i = 0; i < n; i++) {
		const char *name = it[i].c.fn.name;

		if (sw[i].live) {
			msg_error("%s: still tracked: its linear table could not be put back ('fleece track stop %s')",
				  name, name);
			continue;
		}
		if (it[i].recorded && !(it[i].had_rec ? rec_write(&it[i].old_rec) :
					rec_remove(name)))
			it[i].recorded = false;
		if (stores_written && it[i].head &&
		    store_region_write(it[i].store, it[i].head, it[i].head_len))
			msg_error("%s: not tracked, but its store %s holds what the failed start wrote",
				  name, it[i].store);
		else
			msg_error("%s: not tracked; nothing was changed", name);
	}
}

/*
 * The order in which the NAMEs are opened (ctx_open() takes lvm2's lock of
 * an LV's VG and may wait for it): by VG name, as lvm2 takes several
 * (start.c: lock_vgs()), so that no lvm2 command holding one of them waits
 * for another that start holds; NAMEs that are no LV first, as given.  0,
 * or -errno with a message (a NAME that cannot be resolved).
 */
static int start_order(char **names, unsigned int n, unsigned int *order)
{
	char (*vg)[128] = xcalloc(n, sizeof(*vg)), name[128];
	struct dmw_info info;
	unsigned int i, j;
	int r = 0;

	for (i = 0; i < n && !r; i++) {
		r = resolve_dm_name(names[i], name, sizeof(name));
		if (r)
			break;
		r = dmw_info(name, &info);
		if (r) {
			msg_error("%s: cannot query device-mapper: %s", name, dmw_strerror(r));
			break;
		}
		if (info.exists) {
			r = lvm_lv_vg(name, info.uuid, vg[i], sizeof(vg[i]));
			if (r)
				break;
		}
		for (j = i; j > 0 && strcmp(vg[order[j - 1]], vg[i]) > 0; j--)
			order[j] = order[j - 1];
		order[j] = i;
	}
	free(vg);
	return r;
}

/*
 * A signal came (SIGINT, SIGTERM, SIGHUP: signals_install()): -EINTR with
 * a message, else 0.  track start looks before it changes anything and
 * last before the swap, so that an interrupted start changes nothing.
 */
static int start_interrupted(void)
{
	if (!fleece_signal)
		return 0;
	msg_error("interrupted by signal %d", (int)fleece_signal);
	return -EINTR;
}

/*
 * track start NAME... --store DEV...: the k-th store for the k-th NAME.
 * Every NAME and store is checked before anything changes; then the
 * records are written, the stores to take over zeroed, and the trackers
 * put in place in one suspend window (track_swap_many()): all of them, or
 * none.
 */
static int track_start(char **names, unsigned int n, const struct track_opts *o)
{
	struct start_item *it = xcalloc(n, sizeof(*it));
	struct track_swap *sw = xcalloc(n, sizeof(*sw));
	unsigned int *order = xcalloc(n, sizeof(*order));
	bool stores_written = false;
	struct track_info ti;
	unsigned int i;
	char sz[32];
	int r;

	r = start_order(names, n, order);
	for (i = 0; i < n && !r; i++)
		r = start_check_one(&it[order[i]], names[order[i]], o->stores[order[i]], o);
	if (!r)
		r = start_check_all(it, n);
	for (i = 0; i < n && !r; i++)
		r = check_store_content(&it[i].c, o, it[i].store, it[i].tp.device_id,
					&it[i].wipe);
	for (i = 0; i < n && !r; i++) {
		/* Superblocks and bitmaps: what the kernel's format writes. */
		it[i].head_len = track_store_bytes((it[i].c.sectors + it[i].tp.chunk_sectors - 1) /
						   it[i].tp.chunk_sectors);
		if (posix_memalign(&it[i].head, 4096, it[i].head_len)) {
			it[i].head = NULL;
			r = -ENOMEM;
			msg_error("out of memory");
			break;
		}
		r = store_region_read(it[i].store, it[i].head, it[i].head_len);
		if (r)
			r = -EFLEECE_REFUSED;
	}
	if (!r)
		r = fault_point("track-start");	/* test: STOP, then a signal */
	if (!r)
		r = start_interrupted();
	if (r)
		goto out;	/* nothing was changed */
	/* The records first: attach and stop find them. */
	for (i = 0; i < n && !r; i++) {
		rec_fill(&it[i].rec, &it[i].c, &it[i].tp, it[i].store);
		r = rec_write(&it[i].rec);
		it[i].recorded = !r;
	}
	stores_written = !r;
	for (i = 0; i < n && !r; i++)
		if (it[i].wipe)
			r = store_region_write(it[i].store, NULL, 0);
	for (i = 0; i < n && !r; i++) {
		it[i].tp.format = true;	/* the store is blank: a new history */
		track_table(&it[i].nt, it[i].c.sectors, &it[i].tp);
		msg_debug("%s: loading %s", it[i].c.fn.name, it[i].nt.t[0].params);
		sw[i].name = it[i].c.fn.name;
		sw[i].old = &it[i].c.table;
		sw[i].new = &it[i].nt;
		sw[i].read_only = it[i].c.info.read_only;
	}
	if (!r)
		r = start_interrupted();
	if (!r)
		r = track_swap_many(sw, n);
	if (r) {
		if (n > 1 || it[0].recorded)
			msg_error("undoing the track start");
		start_undo(it, sw, n, stores_written);
		goto out;
	}
	for (i = 0; i < n; i++) {
		struct start_item *x = &it[i];

		if (!track_query(x->c.fn.name, &ti) && ti.tracked && ti.store_uuid[0]) {
			snprintf(x->rec.store_uuid, sizeof(x->rec.store_uuid), "%s", ti.store_uuid);
			rec_write(&x->rec);
		}
		msg_info("%s: tracked: store %s formatted (a new history), chunk %s, %llu chunks; record %s/%s%s",
			 x->c.fn.name, x->store, fmt_size(o->chunk_bytes, sz, sizeof(sz)),
			 (unsigned long long)((x->c.sectors + x->tp.chunk_sectors - 1) /
					      x->tp.chunk_sectors),
			 track_dir(), x->c.fn.name, TRACK_REC_SUFFIX);
	}
out:
	for (i = 0; i < n; i++) {
		dmw_table_free(&it[i].nt);
		ctx_release(&it[i].c);
		free(it[i].head);
	}
	free(order);
	free(sw);
	free(it);
	return r;
}

/* --- track stop ------------------------------------------------------------ */

static int track_stop_one(const char *name)
{
	struct track_ctx c;
	struct track_rec rec;
	struct dmw_table nt = { 0 };
	struct dmw_info info;
	char params[64];
	int r;

	memset(&c, 0, sizeof(c));
	r = dmw_info(name, &info);
	if (r) {
		msg_error("%s: cannot query device-mapper: %s", name, dmw_strerror(r));
		return r;
	}
	if (!info.exists) {
		r = rec_read(name, &rec);
		if (r == -ENOENT) {
			msg_error("%s: no such device-mapper device", name);
			return -EFLEECE_REFUSED;
		}
		if (!r)	/* the device is gone: forget its record */
			r = rec_remove(name);
		if (!r)
			msg_info("%s: no such device: its tracking record removed", name);
		return r;
	}
	r = ctx_open(&c, name);
	if (r)
		goto out;
	r = check_not_busy(&c, false);
	if (r)
		goto out;
	if (!c.tracked) {
		r = rec_read(c.fn.name, &rec);
		if (!r) {
			r = rec_remove(c.fn.name);
			if (!r)
				msg_info("%s: not tracked (not attached): its tracking record removed",
					 c.fn.name);
			goto out;
		}
		if (r == -ENOENT) {
			msg_error("%s: not tracked", c.fn.name);
			r = -EFLEECE_REFUSED;
		}
		goto out;
	}
	snprintf(params, sizeof(params), "%u:%u %llu", major(c.tp.data_dev), minor(c.tp.data_dev),
		 (unsigned long long)c.tp.data_offset);
	dmw_table_add(&nt, 0, c.sectors, "linear", params);
	r = track_swap(c.fn.name, &c.table, &nt, c.info.read_only);
	if (r) {
		msg_error("%s: still tracked; nothing was changed", c.fn.name);
		goto out;
	}
	r = rec_remove(c.fn.name);
	if (!r)
		msg_info("%s: no longer tracked (linear table %s back)", c.fn.name, params);
out:
	dmw_table_free(&nt);
	ctx_release(&c);
	return r;
}

/* --- track attach ----------------------------------------------------------- */

static int track_attach_one(const char *name)
{
	struct track_ctx c;
	struct track_params tp = { 0 };
	struct track_info ti;
	struct track_rec rec;
	struct dmw_table nt = { 0 };
	struct track_sb sb;
	struct stat st;
	char a[32], b[32];
	bool blank;
	int r;

	memset(&c, 0, sizeof(c));
	r = rec_read(name, &rec);
	if (r == -ENOENT) {
		msg_error("%s: no tracking record in %s (see 'fleece track start')", name,
			  track_dir());
		r = -EFLEECE_REFUSED;
	}
	if (r)
		goto out;
	r = ctx_open(&c, name);
	if (r)
		goto out;
	if (stat(rec.store, &st)) {
		msg_errno("%s: its store %s (not there yet?)", name, rec.store);
		r = -EFLEECE_REFUSED;
		goto out;
	}
	if (c.tracked) {
		if (c.tp.store_dev == st.st_rdev && !strcmp(c.tp.device_id, rec.device_id)) {
			msg_info("%s: already attached (store %s)", name, rec.store);
			r = 0;
		} else {
			msg_error("%s: tracked with another store than its record's %s", name,
				  rec.store);
			r = -EFLEECE_REFUSED;
		}
		goto out;
	}
	r = check_not_busy(&c, true);
	if (!r)
		r = check_linear(&c);
	if (r)
		goto out;
	if (strcmp(c.info.uuid, rec.uuid)) {
		msg_error("%s: its DM UUID is '%s', its record's '%s': another device by that name? (not attached)",
			  name, c.info.uuid, rec.uuid);
		r = -EFLEECE_REFUSED;
		goto out;
	}
	if (c.sectors != rec.sectors) {
		msg_error("%s: its size changed (%s when tracking started, %s now): the history does not cover it; run 'fleece track stop %s' and start a new history",
			  name, fmt_size(rec.sectors * 512, a, sizeof(a)),
			  fmt_size(c.sectors * 512, b, sizeof(b)), name);
		r = -EFLEECE_REFUSED;
		goto out;
	}
	r = check_store(&c, rec.store, rec.chunk_sectors, true, &tp.store_dev);
	if (r)
		goto out;
	r = store_read_sb(rec.store, &sb, &blank);
	if (r) {
		errno = -r;
		msg_errno("%s: cannot read its store %s", name, rec.store);
		r = -EFLEECE_REFUSED;
		goto out;
	}
	if (blank || !sb.valid) {
		msg_error("%s: its store %s %s: the history is lost; run 'fleece track stop %s' and start a new history (not formatting it here)",
			  name, rec.store, blank ? "is blank (wiped?)" : "holds no valid fleece-track superblock",
			  name);
		r = -EFLEECE_REFUSED;
		goto out;
	}
	if (strcmp(sb.device_id, rec.device_id)) {
		msg_error("%s: its store %s holds the tracking of another device (device_id %s, not %s)",
			  name, rec.store, sb.device_id, rec.device_id);
		r = -EFLEECE_REFUSED;
		goto out;
	}
	if (rec.store_uuid[0] && strcmp(sb.uuid, rec.store_uuid)) {
		msg_error("%s: its store %s was formatted again since tracking started (store UUID %s, recorded %s): the history is not the one recorded",
			  name, rec.store, sb.uuid, rec.store_uuid);
		r = -EFLEECE_REFUSED;
		goto out;
	}
	if (sb.chunk_sectors != rec.chunk_sectors || sb.data_sectors != c.sectors) {
		msg_error("%s: its store %s was formatted for another chunk size or size (%u sectors, %llu sectors)",
			  name, rec.store, sb.chunk_sectors, (unsigned long long)sb.data_sectors);
		r = -EFLEECE_REFUSED;
		goto out;
	}
	tp.data_dev = c.data_dev;
	tp.data_offset = c.data_offset;
	tp.chunk_sectors = rec.chunk_sectors;
	snprintf(tp.device_id, sizeof(tp.device_id), "%s", rec.device_id);
	tp.format = false;	/* never a new history here */
	track_table(&nt, c.sectors, &tp);
	msg_debug("%s: loading %s", name, nt.t[0].params);
	r = track_swap(name, &c.table, &nt, c.info.read_only);
	if (r) {
		msg_error("%s: not attached; nothing was changed", name);
		goto out;
	}
	if (rec.data_dev != tp.data_dev || rec.data_offset != tp.data_offset ||
	    rec.store_dev != tp.store_dev) {
		msg_debug("%s: its devices' numbers changed since recorded: record updated", name);
		rec.data_dev = tp.data_dev;
		rec.data_offset = tp.data_offset;
		rec.store_dev = tp.store_dev;
		rec_write(&rec);
	}
	r = track_query(name, &ti);
	if (r)
		goto out;
	msg_info("%s: attached: store %s, epoch %llu, generation %llu, %llu chunks changed since the last checkpoint",
		 name, rec.store, (unsigned long long)ti.epoch, (unsigned long long)ti.generation,
		 (unsigned long long)ti.changed);
	if (ti.opened_unclean)
		msg_warn("%s: its store was not closed cleanly (a crash, or a shutdown that did not remove %s): its marks hold every write the tracker passed",
			 name, name);
	if (ti.history != TRACK_HISTORY_VALID)
		msg_warn("%s: its history is %s: the next incremental backup will be a full one",
			 name, ti.history_str);
out:
	dmw_table_free(&nt);
	ctx_release(&c);
	return r;
}

/* --- track status --------------------------------------------------------- */

static void status_text(const char *name, const struct track_info *ti, bool recorded)
{
	char sz[32], when[64] = "never";
	time_t t = (time_t)ti->checkpoint_time;
	struct tm tm;

	if (!ti->tracked) {
		printf("%s: recorded, not attached (run 'fleece track attach %s')\n", name, name);
		return;
	}
	if (t && gmtime_r(&t, &tm))
		strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", &tm);
	printf("%s: tracked%s\n", name, strcmp(ti->table_dev, name) ? " (fleeced: on its hidden origin)" : "");
	printf("  store:       %s (%s, uuid %s)\n", ti->store_path, ti->dirty ? "dirty" : "clean",
	       ti->store_uuid[0] ? ti->store_uuid : "unknown");
	printf("  chunk:       %s, %llu chunks\n",
	       fmt_size(ti->chunk_sectors * 512ULL, sz, sizeof(sz)),
	       (unsigned long long)ti->nr_chunks);
	printf("  changed:     %llu chunks since the last checkpoint\n",
	       (unsigned long long)ti->changed);
	printf("  previous:    %s, %llu chunks\n", ti->prev_state, (unsigned long long)ti->changed_prev);
	printf("  epoch:       %llu, generation %llu, history %s\n", (unsigned long long)ti->epoch,
	       (unsigned long long)ti->generation, ti->history_str);
	printf("  checkpoint:  %s\n", when);
	if (ti->opened_unclean)
		printf("  opened:      unclean (the store was not closed cleanly)\n");
	if (ti->conservative || ti->store_errors)
		printf("  errors:      %llu store errors, %llu bitmap blocks read as all changed\n",
		       (unsigned long long)ti->store_errors, (unsigned long long)ti->conservative);
	if (!recorded)
		printf("  record:      none (not re-attached at boot)\n");
}

static void status_json(struct sbuf *sb, const char *name, const struct track_info *ti,
			bool recorded)
{
	char data[PATH_MAX] = "";

	sb_printf(sb, "{\"name\":");
	sb_json_str(sb, name);
	sb_printf(sb, ",\"tracked\":%s,\"recorded\":%s", ti->tracked ? "true" : "false",
		  recorded ? "true" : "false");
	if (ti->tracked) {
		devno_display(ti->data_dev, data, sizeof(data));
		sb_printf(sb, ",\"store\":");
		sb_json_str(sb, ti->store_path);
		sb_printf(sb, ",\"table_device\":");
		sb_json_str(sb, ti->table_dev);
		sb_printf(sb, ",\"data_device\":");
		sb_json_str(sb, data);
		sb_printf(sb, ",\"data_offset_sectors\":%llu,\"device_id\":",
			  (unsigned long long)ti->data_offset);
		sb_json_str(sb, ti->device_id);
		sb_printf(sb, ",\"chunk_bytes\":%llu,\"chunks_total\":%llu,\"changed\":%llu,\"changed_prev\":%llu,\"epoch\":%llu,\"generation\":%llu",
			  ti->chunk_sectors * 512ULL, (unsigned long long)ti->nr_chunks,
			  (unsigned long long)ti->changed, (unsigned long long)ti->changed_prev,
			  (unsigned long long)ti->epoch, (unsigned long long)ti->generation);
		sb_printf(sb, ",\"store_state\":\"%s\",\"history\":", ti->dirty ? "dirty" : "clean");
		sb_json_str(sb, ti->history_str);
		sb_printf(sb, ",\"prev_state\":");
		sb_json_str(sb, ti->prev_state);
		sb_printf(sb, ",\"opened\":\"%s\",\"conservative\":%llu,\"store_errors\":%llu,\"commits\":%llu,\"store_uuid\":",
			  ti->opened_unclean ? "unclean" : "clean",
			  (unsigned long long)ti->conservative,
			  (unsigned long long)ti->store_errors, (unsigned long long)ti->commits);
		sb_json_str(sb, ti->store_uuid);
		sb_printf(sb, ",\"checkpoint_time\":%llu", (unsigned long long)ti->checkpoint_time);
	}
	sb_printf(sb, "}");
}

/*
 * One NAME for status: 0 (shown), -EFLEECE_REFUSED (no such device or not
 * tracked, with a message), or a failed query's -errno.
 */
static int status_one(const char *name, bool json, struct sbuf *sb, bool *first)
{
	struct track_info ti;
	struct track_rec rec;
	bool recorded;
	int r;

	r = track_query(name, &ti);
	if (r == -ENXIO) {
		msg_error("%s: no such device-mapper device", name);
		return -EFLEECE_REFUSED;
	}
	if (r)
		return r;
	r = rec_read(name, &rec);
	if (r && r != -ENOENT)
		return r;
	recorded = !r;
	if (!ti.tracked && !recorded) {
		msg_error("%s: not tracked", name);
		return -EFLEECE_REFUSED;
	}
	if (json) {
		if (!*first)
			sb_printf(sb, ",");
		status_json(sb, name, &ti, recorded);
	} else {
		status_text(name, &ti, recorded);
	}
	*first = false;
	return 0;
}

/* Every NAME tracked or recorded, in dm's order then the records'. */
static int status_all_names(char ***out, unsigned int *nout)
{
	char **names = NULL, **recs = NULL;
	unsigned int n = 0, nr = 0, i, j;
	struct dmw_info info;
	struct track_info ti;
	int r;

	*out = xcalloc(1, sizeof(char *));
	*nout = 0;
	r = dmw_list(&names, &n);
	if (r) {
		msg_error("cannot list the device-mapper devices: %s", dmw_strerror(r));
		return r;
	}
	r = rec_list(&recs, &nr);
	for (i = 0; i < n + nr && !r; i++) {
		const char *cand = i < n ? names[i] : recs[i - n];

		if (i < n) {
			r = dmw_info(cand, &info);
			if (r) {
				msg_error("%s: cannot query device-mapper: %s", cand, dmw_strerror(r));
				break;
			}
			if (!info.exists ||
			    !strncmp(info.uuid, FLEECE_UUID_PREFIX, strlen(FLEECE_UUID_PREFIX)))
				continue;
			r = track_query(cand, &ti);
			if (r == -ENXIO) {	/* removed meanwhile */
				r = 0;
				continue;
			}
			if (r)	/* an error, never "not tracked" */
				break;
			if (!ti.tracked)
				continue;
		}
		for (j = 0; j < *nout; j++)
			if (!strcmp((*out)[j], cand))
				break;
		if (j < *nout)
			continue;
		*out = realloc(*out, (*nout + 1) * sizeof(char *));
		if (!*out) {
			msg_error("out of memory");
			exit(EX_FLEECE_FAIL);
		}
		(*out)[(*nout)++] = xstrdup(cand);
	}
	for (i = 0; i < n; i++)
		free(names[i]);
	for (i = 0; i < nr; i++)
		free(recs[i]);
	free(names);
	free(recs);
	return r;
}

/* --- the command ---------------------------------------------------------- */

static void track_help(void)
{
	printf("Usage: fleece track start --store DEV... [--chunk-size SIZE] [--force] NAME...\n"
	       "       fleece track stop NAME...\n"
	       "       fleece track status [--json] [NAME...]\n"
	       "       fleece track attach [--all | NAME...]\n"
	       "\n"
	       "Persistent change tracking of device-mapper devices whose table is one linear\n"
	       "target (an LV of one segment, a dmsetup linear device): the fleece-track\n"
	       "target takes the linear target's place and records on a small store device\n"
	       "which chunks were written since the last backup's point in time, for\n"
	       "incremental backups ('fleece backup --incremental').\n"
	       "\n"
	       "  start    put the trackers in place, formatting the stores (a new history),\n"
	       "           all NAMEs in one suspend window, all or none; record them in\n"
	       "           $FLEECE_TRACK_DIR (default " FLEECE_TRACK_DIR ")\n"
	       "  stop     put the linear table back, forget the record\n"
	       "  status   the trackers: changed chunks, epoch, generation, store state\n"
	       "  attach   put recorded trackers back (at boot), never formatting a store\n"
	       "\n"
	       "Options:\n"
	       "  -s, --store DEV           the store (start), once per NAME in NAME's order: a\n"
	       "                            block device of at least\n"
	       "                            (2 + 2 * ceil(chunks / 32512)) * 4 KiB\n"
	       "  -c, --chunk-size SIZE     tracking unit, a power of two from 4K to 16M\n"
	       "                            (default 64K)\n"
	       "  -f, --force               start: use a store that holds a signature or an\n"
	       "                            earlier history of NAME (a new history), or\n"
	       "                            replace a record not attached\n"
	       "  -j, --json                status: JSON\n"
	       "  -a, --all                 attach: every recorded device\n"
	       HELP_COMMON
	       "\n"
	       "Writes made while the tracker is not attached are not seen: see fleece(8).\n");
}

static int track_opt(int c, const char *arg, void *ctx)
{
	struct track_opts *o = ctx;

	switch (c) {
	case 's':
		o->stores = realloc(o->stores, (o->nr_stores + 1) * sizeof(*o->stores));
		if (!o->stores) {
			msg_error("out of memory");
			exit(EX_FLEECE_FAIL);
		}
		o->stores[o->nr_stores++] = arg;
		return 0;
	case 'c':
		return parse_chunk_size(arg, &o->chunk_bytes);
	case 'f':
		o->force = true;
		return 0;
	case 'j':
		o->json = true;
		return 0;
	case 'a':
		o->all = true;
		return 0;
	case 'q':
		return 0;
	}
	return 1;
}

/* The exit code of running @fn on each name: the worst of them. */
static int each(char **names, unsigned int n, int (*fn)(const char *, const struct track_opts *),
		const struct track_opts *o)
{
	unsigned int i, j;
	int ret = EX_FLEECE_OK, e;

	for (i = 0; i < n; i++)
		for (j = 0; j < i; j++)
			if (!strcmp(names[i], names[j]))
				return usage_error("%s given twice", names[i]);
	for (i = 0; i < n; i++) {
		e = exit_code(fn(names[i], o));
		if (e > ret)
			ret = e;
	}
	return ret;
}

static int do_stop(const char *name, const struct track_opts *o)
{
	char dm[128];
	int r;

	(void)o;
	r = arg_dm_name(name, dm, sizeof(dm));
	return r ? r : track_stop_one(dm);
}

static int do_attach(const char *name, const struct track_opts *o)
{
	char dm[128];
	int r;

	(void)o;
	r = arg_dm_name(name, dm, sizeof(dm));
	return r ? r : track_attach_one(dm);
}

static int cmd_track_status(const struct track_opts *o, char **names, unsigned int n)
{
	struct sbuf sb = { 0 };
	char **all = NULL, dm[128];
	unsigned int nall = 0, i;
	bool first = true;
	int ret = EX_FLEECE_OK, r = 0, e;

	if (!n) {
		r = status_all_names(&all, &nall);
		if (r) {
			ret = exit_code(r);
			goto out;
		}
		names = all;
		n = nall;
	}
	for (i = 0; i < n; i++) {
		r = arg_dm_name(names[i], dm, sizeof(dm));
		if (!r)
			r = status_one(dm, o->json, &sb, &first);
		e = exit_code(r);
		if (e > ret)
			ret = e;
	}
	/* A failed query: no JSON at all, as "fleece status". */
	if (o->json && ret != EX_FLEECE_FAIL)
		printf("{\"devices\":[%s]}\n", sb.s ? sb.s : "");
	else if (first && !nall && !n)
		printf("no tracked devices\n");
out:
	for (i = 0; i < nall; i++)
		free(all[i]);
	free(all);
	sb_free(&sb);
	return ret;
}

int cmd_track(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "store", required_argument, NULL, 's' },
		{ "chunk-size", required_argument, NULL, 'c' },
		{ "force", no_argument, NULL, 'f' },
		{ "json", no_argument, NULL, 'j' },
		{ "all", no_argument, NULL, 'a' },
		LONGOPTS_COMMON
	};
	struct track_opts o = { .chunk_bytes = TRACK_DEFAULT_CHUNK };
	const char *sub;
	char **names = NULL;
	unsigned int n = 0;
	int r;

	if (argc < 2) {
		track_help();
		return EX_FLEECE_USAGE;
	}
	sub = argv[1];
	if (!strcmp(sub, "--help") || !strcmp(sub, "-h")) {
		track_help();
		return EX_FLEECE_OK;
	}
	if (strcmp(sub, "start") && strcmp(sub, "stop") && strcmp(sub, "status") &&
	    strcmp(sub, "attach"))
		return usage_error("unknown track command '%s' (start, stop, status, attach)", sub);
	prog = xasprintf("fleece track %s", sub);
	argv[1] = (char *)prog;
	r = parse_opts(argc - 1, argv + 1, "s:c:fja" SHORTOPTS_COMMON, opts, track_help,
		       track_opt, &o);
	if (r >= 0)
		return r;
	names = argv + 1 + optind;
	n = argc - 1 - optind;
	if (o.nr_stores && strcmp(sub, "start"))
		return usage_error("--store is for 'track start'");
	if (o.json && strcmp(sub, "status"))
		return usage_error("--json is for 'track status'");
	if (o.all && strcmp(sub, "attach"))
		return usage_error("--all is for 'track attach'");
	/* Records decide which store a device is attached to: root's alone. */
	if (private_dir_check(track_dir(), "FLEECE_TRACK_DIR"))
		return EX_FLEECE_REFUSED;
	if (!strcmp(sub, "status"))
		return cmd_track_status(&o, names, n);
	if (fleece_need_module())
		return EX_FLEECE_REFUSED;
	signals_install();
	if (!strcmp(sub, "start")) {
		unsigned int i, j;

		if (!o.nr_stores)
			return usage_error("give the store: --store DEV");
		if (!n)
			return usage_error("no device given");
		if (o.nr_stores != n)
			return usage_error("give one --store per NAME, in the same order (%u NAME%s, %u store%s)",
					   n, n == 1 ? "" : "s", o.nr_stores,
					   o.nr_stores == 1 ? "" : "s");
		for (i = 0; i < n; i++)
			for (j = 0; j < i; j++)
				if (!strcmp(names[i], names[j]))
					return usage_error("%s given twice", names[i]);
		r = exit_code(track_start(names, n, &o));
		free(o.stores);
		return r;
	}
	if (!strcmp(sub, "stop")) {
		if (!n)
			return usage_error("no device given");
		return each(names, n, do_stop, &o);
	}
	/* attach */
	if (o.all && n)
		return usage_error("--all and device names cannot be used together");
	if (!o.all && !n)
		return usage_error("no device given (or --all)");
	if (o.all) {
		r = rec_list(&names, &n);
		if (r)
			return exit_code(r);
		if (!n)
			msg_info("no tracking records in %s", track_dir());
		r = each(names, n, do_attach, &o);
		while (n)
			free(names[--n]);
		free(names);
		return r;
	}
	return each(names, n, do_attach, &o);
}
