// SPDX-License-Identifier: GPL-2.0
/*
 * fleece start: take one consistent point in time for every device named.
 *
 * For each NAME, in this order:
 *   1. (--fleece-dir) create DIR/NAME.fleece, sparse, and a loop device on it;
 *   2. create NAME-fleece-origin with NAME's current table, unless that table
 *      is one linear target over all of NAME: then the fleece target goes
 *      straight onto that device, at its offset, and writers pay no extra
 *      dm layer (the state file keeps the linear table for "stop");
 *   3. load NAME's inactive table: fleece NAME-fleece-origin <fleece dev>,
 *      or fleece <linear dev> <fleece dev> ... origin_offset <offset>.
 * Then suspend every NAME (flushing and freezing file systems), resume them
 * all (each resume swaps in the fleece table: the point in time), and create
 * each view NAME-fleece-view.
 *
 * A tracked NAME (one fleece-track target over all of it, "fleece track")
 * always gets a hidden origin, with its fleece-track table (the kernel
 * shares the tracker between the two tables); in the suspend window its
 * hidden origin is suspended as well and the tracker told "checkpoint",
 * so that the point in time also ends the tracker's epoch; the hidden
 * origin is resumed before NAME.  With start_opts.incremental the fleece
 * table gets "track_store <store>": the chunks the tracker saw unchanged
 * are released at the point in time.  Writers only wait during the suspend/resume.
 * Any failure undoes everything through fleece_stop().
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <blkid/blkid.h>
#include <libdevmapper.h>

#include "fleece.h"
#include "loop.h"
#include "opts.h"
#include "track.h"
#include "util.h"

/*
 * Targets whose table can be loaded twice at once without harm.  Not
 * log-writes: a second instance logs from the start of the log device again
 * and the first one writes its end mark over it.  crypt only with the key
 * in the table: a key in the kernel keyring (":<size>:logon:<desc>", LUKS2's
 * default) is unlinked by cryptsetup once the device is active, so a second
 * table cannot be loaded (see crypt_key_ok()).
 */
static const char *const safe_targets[] = {
	"linear", "striped", "zero", "error", "crypt", "thin", "delay",
	"flakey", "dust", "verity",
};
#define SAFE_TARGETS_TEXT "linear, striped, thin, crypt (a key in the table), zero, error, delay, flakey, dust, verity"

/* crypt's parameters: "<cipher> <key> <iv_offset> <dev> <offset> ..." */
static bool crypt_key_ok(const char *params)
{
	const char *key = strchr(params, ' ');

	return key && key[1] != ':';
}

struct plan {
	struct fleece_names fn;
	struct dmw_info info;
	struct dmw_table table;		/* NAME's live table */
	struct dmw_table fleece;	/* the fleece table loaded (inactive) */
	uint64_t sectors;
	dev_t dev;
	const char *fleece_arg;
	char fleece_path[PATH_MAX];
	dev_t fleece_dev;
	char fleece_file[PATH_MAX];
	int loop_fd;
	bool dio;
	dev_t origin_dev;
	uint64_t origin_offset;
	bool direct;			/* no hidden origin: see above */
	bool tracked;			/* a fleece-track table: see above */
	struct track_params tp;		/* ... its parameters */
	char vg[128];			/* an LV's VG, its lvm2 lock held */
};

int start_opts_init(struct start_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->chunk_bytes = FLEECE_DEFAULT_CHUNK;
	o->cbw_timeout_ms = FLEECE_DEFAULT_TIMEOUT_MS;
	return 0;
}

void start_opts_free(struct start_opts *o)
{
	unsigned int i;

	for (i = 0; i < o->nr_fleece_devs; i++)
		free(o->fleece_devs[i]);
	free(o->fleece_devs);
	o->fleece_devs = NULL;
	o->nr_fleece_devs = 0;
}

/*
 * Options shared by start and backup: 'c' chunk size, 'F' fail origin
 * writes, 't' CBW timeout, 'd' fleece devices, 'D' fleece directory.
 * Returns 0 when handled, 1 when @opt is not one of them, or a usage error.
 */
int start_parse_opt(struct start_opts *o, int opt, const char *arg)
{
	double secs;
	char *copy, *tok, *save = NULL;

	switch (opt) {
	case 'c':
		return parse_chunk_size(arg, &o->chunk_bytes);
	case 'F':
		o->fail_origin_writes = true;
		return 0;
	case 'f':
		o->force = true;
		return 0;
	case 't':
		if (parse_seconds(arg, &secs))
			return usage_error("--cbw-timeout '%s': not a number of seconds (0: no limit)", arg);
		if (secs > 4294967.0)
			return usage_error("--cbw-timeout '%s': too long", arg);
		o->cbw_timeout_ms = (unsigned int)(secs * 1000 + 0.5);
		if (secs > 0 && !o->cbw_timeout_ms)
			o->cbw_timeout_ms = 1;
		return 0;
	case 'd':
		if (o->fleece_dir)
			return usage_error("--fleece-dev and --fleece-dir cannot be used together");
		copy = xstrdup(arg);
		for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
			o->fleece_devs = realloc(o->fleece_devs,
						 (o->nr_fleece_devs + 1) * sizeof(char *));
			if (!o->fleece_devs) {
				free(copy);
				return usage_error("out of memory");
			}
			o->fleece_devs[o->nr_fleece_devs++] = xstrdup(tok);
		}
		free(copy);
		if (!o->nr_fleece_devs)
			return usage_error("--fleece-dev: no device given");
		return 0;
	case 'D':
		if (o->nr_fleece_devs)
			return usage_error("--fleece-dev and --fleece-dir cannot be used together");
		if (!*arg)
			return usage_error("--fleece-dir: no directory given");
		o->fleece_dir = arg;
		return 0;
	default:
		return 1;
	}
}

static bool target_is_safe(const char *type)
{
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(safe_targets); i++)
		if (!strcmp(type, safe_targets[i]))
			return true;
	return false;
}

/* Does NAME's table name device @dev ("M:m" among the parameters)? */
static bool table_uses(const struct dmw_table *t, dev_t dev)
{
	unsigned int i;

	for (i = 0; i < t->n; i++) {
		char *copy = xstrdup(t->t[i].params), *tok, *save = NULL;
		bool hit = false;

		for (tok = strtok_r(copy, " ", &save); tok && !hit; tok = strtok_r(NULL, " ", &save)) {
			dev_t d;

			hit = !parse_devno(tok, &d) && d == dev;
		}
		free(copy);
		if (hit)
			return true;
	}
	return false;
}

/* One linear target over all of NAME: its device and offset. */
static bool table_is_whole_linear(const struct dmw_table *t, dev_t *dev,
				  uint64_t *offset)
{
	return t->n == 1 && !t->t[0].start && !strcmp(t->t[0].type, "linear") &&
	       !parse_linear_params(t->t[0].params, dev, offset);
}

/*
 * lvm2's locks of the VGs of the LVs among the NAMEs, taken in the order
 * lvm2 takes several (by VG name), before their tables are read: no
 * lvextend or pvmove reloads them until start is done.  0, or -errno with
 * a message (and none of them held).
 */
static int lock_vgs(struct plan *plans, unsigned int n)
{
	unsigned int *order = xcalloc(n, sizeof(*order)), i, j;
	char (*vg)[128] = xcalloc(n, sizeof(*vg));
	struct dmw_info info;
	int r = 0;

	for (i = 0; i < n && !r; i++) {
		r = dmw_info(plans[i].fn.name, &info);
		if (r) {
			msg_error("%s: cannot query device-mapper: %s", plans[i].fn.name,
				  dmw_strerror(r));
			break;
		}
		if (info.exists)
			r = lvm_lv_vg(plans[i].fn.name, info.uuid, vg[i], sizeof(vg[i]));
		for (j = i; j > 0 && strcmp(vg[order[j - 1]], vg[i]) > 0; j--)
			order[j] = order[j - 1];
		order[j] = i;
	}
	for (i = 0; i < n && !r; i++)
		if (vg[order[i]][0])
			r = lvm_vg_lock(plans[order[i]].fn.name, vg[order[i]], false);
	for (j = 0; j < i && !r; j++)	/* each unlocked at the end of start */
		snprintf(plans[order[j]].vg, sizeof(plans[0].vg), "%s", vg[order[j]]);
	if (r)	/* the ones taken */
		for (j = 0; j + 1 < i; j++)
			lvm_vg_unlock(vg[order[j]]);
	free(order);
	free(vg);
	return r;
}

/*
 * Everything about NAME that can be checked without changing anything: 0,
 * or -errno with a message (-EFLEECE_REFUSED: NAME is not fit).
 */
static int check_name(struct plan *p, const struct start_opts *o)
{
	struct dmw_info other;
	unsigned int i, lbs;
	const char *name = p->fn.name;
	int r;

	r = dmw_info(name, &p->info);
	if (r) {
		msg_error("%s: cannot query device-mapper: %s", name, dmw_strerror(r));
		return r;
	}
	if (!p->info.exists) {
		msg_error("%s: no such device-mapper device", name);
		return -EFLEECE_REFUSED;
	}
	p->dev = makedev(p->info.major, p->info.minor);
	if (!strncmp(p->info.uuid, FLEECE_UUID_PREFIX, strlen(FLEECE_UUID_PREFIX))) {
		msg_error("%s: this device was created by fleece (DM UUID %s): fleece the original device instead",
			  name, p->info.uuid);
		return -EFLEECE_REFUSED;
	}
	r = dmw_get_table(name, false, &p->table);
	if (r) {
		msg_error("%s: cannot read its table: %s", name, dmw_strerror(r));
		return r;
	}
	for (i = 0; i < p->table.n; i++) {
		if (!strcmp(p->table.t[i].type, FLEECE_TARGET_NAME) ||
		    !strcmp(p->table.t[i].type, FLEECE_VIEW_TARGET_NAME)) {
			msg_error("%s: already fleeced (its table is a '%s' target): run 'fleece stop %s' first",
				  name, p->table.t[i].type, name);
			return -EFLEECE_REFUSED;
		}
	}
	r = dmw_info_uuid(p->fn.origin_uuid, &other);
	if (!r && other.exists) {
		msg_error("%s: already fleeced (%s exists): run 'fleece stop %s' first",
			  name, other.name, name);
		return -EFLEECE_REFUSED;
	}
	if (!r)
		r = dmw_info_uuid(p->fn.view_uuid, &other);
	if (!r && other.exists) {
		msg_error("%s: already fleeced (%s exists): run 'fleece stop %s' first",
			  name, other.name, name);
		return -EFLEECE_REFUSED;
	}
	if (!r)
		r = dmw_info(p->fn.origin, &other);
	if (!r && other.exists) {
		msg_error("%s: a device named %s already exists", name, p->fn.origin);
		return -EFLEECE_REFUSED;
	}
	if (!r)
		r = dmw_info(p->fn.view, &other);
	if (!r && other.exists) {
		msg_error("%s: a device named %s already exists", name, p->fn.view);
		return -EFLEECE_REFUSED;
	}
	if (r) {
		msg_error("%s: cannot query device-mapper: %s", name, dmw_strerror(r));
		return r;
	}
	r = state_absent(name);
	if (r)
		return r;
	if (!p->info.live_table || !p->table.n) {
		msg_error("%s: has no active table", name);
		return -EFLEECE_REFUSED;
	}
	if (p->info.suspended) {
		msg_error("%s: is suspended: resume it first", name);
		return -EFLEECE_REFUSED;
	}
	if (p->info.inactive_table) {
		msg_error("%s: has an inactive table loaded (is another tool changing it?)", name);
		return -EFLEECE_REFUSED;
	}
	p->tracked = track_table_parse(&p->table, &p->tp);
	for (i = 0; i < p->table.n && !p->tracked; i++) {
		if (!target_is_safe(p->table.t[i].type)) {
			msg_error("%s: its table has a '%s' target, which fleece cannot duplicate safely (supported: "
				  SAFE_TARGETS_TEXT ")", name, p->table.t[i].type);
			return -EFLEECE_REFUSED;
		}
		if (!strcmp(p->table.t[i].type, "crypt") && !crypt_key_ok(p->table.t[i].params)) {
			msg_error("%s: its crypt target takes its key from the kernel keyring (LUKS2), which cryptsetup empties once the device is active: fleece cannot load that table a second time (open it with cryptsetup open --disable-keyring to fleece it)",
				  name);
			return -EFLEECE_REFUSED;
		}
	}
	p->sectors = dmw_table_len(&p->table);
	p->direct = table_is_whole_linear(&p->table, &p->origin_dev, &p->origin_offset);
	lbs = devno_logical_block_size(p->dev);
	if (o->chunk_bytes % lbs) {
		msg_error("%s: the chunk size (%llu) is not a multiple of its logical block size (%u)",
			  name, (unsigned long long)o->chunk_bytes, lbs);
		return -EFLEECE_REFUSED;
	}
	return 0;
}

/*
 * The first signature libblkid finds on @path (a file system, raid, PV,
 * partition table): 1 with "TYPE" and its UUID filled in, 0 when there is
 * none, -errno when the device cannot be probed.
 */
int probe_signature(const char *path, char *type, size_t tlen, char *uuid,
			   size_t ulen)
{
	const char *v;
	blkid_probe pr;
	int r;

	type[0] = uuid[0] = '\0';
	pr = blkid_new_probe_from_filename(path);
	if (!pr)
		return errno ? -errno : -EIO;
	blkid_probe_enable_superblocks(pr, 1);
	blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_TYPE | BLKID_SUBLKS_UUID);
	blkid_probe_enable_partitions(pr, 1);
	blkid_probe_set_partitions_flags(pr, BLKID_PARTS_MAGIC);
	r = blkid_do_safeprobe(pr);
	if (r == 0) {
		if (!blkid_probe_lookup_value(pr, "TYPE", &v, NULL) ||
		    !blkid_probe_lookup_value(pr, "PTTYPE", &v, NULL))
			snprintf(type, tlen, "%s", v);
		else
			snprintf(type, tlen, "unknown");
		if (!blkid_probe_lookup_value(pr, "UUID", &v, NULL) ||
		    !blkid_probe_lookup_value(pr, "PTUUID", &v, NULL))
			snprintf(uuid, ulen, "%s", v);
		r = 1;
	} else if (r == -2) {
		snprintf(type, tlen, "several signatures");
		r = 1;
	} else if (r == 1) {
		r = 0;
	} else {
		r = -EIO;
	}
	blkid_free_probe(pr);
	return r;
}

/*
 * A --fleece-dev is overwritten and discarded: refuse one that holds a
 * signature, as lvcreate and wipefs do, unless --force.  The copy of
 * NAME's own signature that an earlier fleece of NAME left there (its
 * copy-before-write of the chunk that holds it) is no reason to refuse.
 */
static int check_signature(const struct plan *p, const struct start_opts *o)
{
	char type[64], uuid[128], ntype[64], nuuid[128], npath[PATH_MAX];
	int r;

	r = probe_signature(p->fleece_arg, type, sizeof(type), uuid, sizeof(uuid));
	if (r < 0) {
		errno = -r;
		msg_errno("fleece device %s: cannot look for signatures", p->fleece_arg);
		return -EFLEECE_REFUSED;
	}
	if (!r)
		return 0;
	if (uuid[0] && !devno_path(p->dev, npath, sizeof(npath)) &&
	    probe_signature(npath, ntype, sizeof(ntype), nuuid, sizeof(nuuid)) == 1 &&
	    !strcmp(type, ntype) && !strcmp(uuid, nuuid)) {
		msg_debug("fleece device %s: holds a copy of %s's %s signature (an earlier fleece): using it",
			  p->fleece_arg, p->fn.name, type);
		return 0;
	}
	if (o->force) {
		msg_warn("fleece device %s: holds a %s signature: overwriting it (--force)",
			 p->fleece_arg, type);
		return 0;
	}
	msg_error("fleece device %s: holds a %s signature%s%s: its data would be overwritten and discarded (wipefs -a it, or give --force)",
		  p->fleece_arg, type, uuid[0] ? " UUID " : "", uuid);
	return -EFLEECE_REFUSED;
}

/*
 * A --fleece-dev: a block device, not NAME nor built on any NAME, not
 * created by fleece, not in use, large enough, with no signature (unless
 * --force).  0, or -errno with a message (-EFLEECE_REFUSED: not fit).
 */
static int check_fleece_dev(struct plan *p, struct plan *all, unsigned int n,
			    const struct start_opts *o)
{
	const char *arg = p->fleece_arg;
	uint64_t bytes;
	struct dmw_info info;
	struct stat st;
	unsigned int i;
	int fd;

	if (stat(arg, &st)) {
		msg_errno("fleece device %s", arg);
		return -EFLEECE_REFUSED;
	}
	if (!S_ISBLK(st.st_mode)) {
		msg_error("fleece device %s: not a block device (use --fleece-dir for a file)", arg);
		return -EFLEECE_REFUSED;
	}
	p->fleece_dev = st.st_rdev;
	snprintf(p->fleece_path, sizeof(p->fleece_path), "%s", arg);
	for (i = 0; i < n; i++) {
		char why[PATH_MAX + 128];
		int r = devno_depends(p->fleece_dev, all[i].dev, why, sizeof(why));

		if (r == 1 || table_uses(&all[i].table, p->fleece_dev)) {
			msg_error("fleece device %s: it is %s itself, or part of it%s%s%s: the fleece device must be a separate device",
				  arg, all[i].fn.name, r == 1 && why[0] ? " (" : "",
				  r == 1 ? why : "", r == 1 && why[0] ? ")" : "");
			return -EFLEECE_REFUSED;
		}
		if (r < 0 && !o->force) {
			msg_error("fleece device %s: cannot tell whether it is built on %s: %s (give --force if it is not)",
				  arg, all[i].fn.name, why);
			return -EFLEECE_REFUSED;
		}
		if (r < 0)
			msg_warn("fleece device %s: cannot tell whether it is built on %s (%s): using it (--force)",
				 arg, all[i].fn.name, why);
		if (&all[i] != p && all[i].fleece_dev == p->fleece_dev && all[i].fleece_arg) {
			msg_error("fleece device %s: given for both %s and %s", arg,
				  all[i].fn.name, p->fn.name);
			return -EFLEECE_REFUSED;
		}
	}
	if (dmw_is_dm_major(major(p->fleece_dev))) {
		int r = dmw_info_devno(p->fleece_dev, &info);

		if (r) {
			msg_error("fleece device %s: cannot query device-mapper: %s", arg,
				  dmw_strerror(r));
			return r;
		}
		if (info.exists &&
		    !strncmp(info.uuid, FLEECE_UUID_PREFIX, strlen(FLEECE_UUID_PREFIX))) {
			msg_error("fleece device %s: a device created by fleece cannot be a fleece device",
				  arg);
			return -EFLEECE_REFUSED;
		}
	}
	fd = open(arg, O_RDONLY | O_EXCL | O_CLOEXEC);
	if (fd < 0) {
		if (errno == EBUSY)
			msg_error("fleece device %s: in use (mounted, or held by another device or program)", arg);
		else
			msg_errno("fleece device %s", arg);
		return -EFLEECE_REFUSED;
	}
	if (blkdev_size(fd, &bytes)) {
		msg_errno("fleece device %s: cannot get its size", arg);
		close(fd);
		return -EFLEECE_REFUSED;
	}
	close(fd);
	if (devno_has_holders(p->fleece_dev)) {
		msg_error("fleece device %s: in use (another device is built on it)", arg);
		return -EFLEECE_REFUSED;
	}
	if (bytes < p->sectors * 512) {
		char a[32], b[32];

		msg_error("fleece device %s is too small: %s, and %s needs %s (its own size)",
			  arg, fmt_size(bytes, a, sizeof(a)), p->fn.name,
			  fmt_size(p->sectors * 512, b, sizeof(b)));
		return -EFLEECE_REFUSED;
	}
	if (o->chunk_bytes % devno_logical_block_size(p->fleece_dev)) {
		msg_error("fleece device %s: the chunk size is not a multiple of its logical block size (%u)",
			  arg, devno_logical_block_size(p->fleece_dev));
		return -EFLEECE_REFUSED;
	}
	return check_signature(p, o);
}

/*
 * A --fleece-dir: a writable directory not on NAME, where DIR/NAME.fleece
 * does not exist yet.  0, or -EFLEECE_REFUSED with a message.
 */
static int check_fleece_dir(struct plan *p, const struct start_opts *o)
{
	char why[PATH_MAX + 128];
	struct stat st;
	char *real;
	int r;

	real = realpath(o->fleece_dir, NULL);
	if (!real || stat(real, &st)) {
		msg_errno("--fleece-dir %s", o->fleece_dir);
		free(real);
		return -EFLEECE_REFUSED;
	}
	if (!S_ISDIR(st.st_mode)) {
		msg_error("--fleece-dir %s: not a directory", o->fleece_dir);
		free(real);
		return -EFLEECE_REFUSED;
	}
	if (access(real, W_OK)) {
		msg_errno("--fleece-dir %s: not writable", o->fleece_dir);
		free(real);
		return -EFLEECE_REFUSED;
	}
	/* btrfs, overlayfs, a loop device's backing file: followed to their devices. */
	r = path_depends(real, p->dev, why, sizeof(why));
	if (r == 1) {
		msg_error("--fleece-dir %s: it is on %s itself (%s): copies of its data cannot be kept on it",
			  o->fleece_dir, p->fn.name, why);
		free(real);
		return -EFLEECE_REFUSED;
	}
	if (r < 0 && !o->force) {
		msg_error("--fleece-dir %s: cannot tell whether it is on %s: %s (give --force if it is not)",
			  o->fleece_dir, p->fn.name, why);
		free(real);
		return -EFLEECE_REFUSED;
	}
	if (r < 0)
		msg_warn("--fleece-dir %s: cannot tell whether it is on %s (%s): using it (--force)",
			 o->fleece_dir, p->fn.name, why);
	snprintf(p->fleece_file, sizeof(p->fleece_file), "%s/%s%s",
		 strcmp(real, "/") ? real : "", p->fn.name, FLEECE_FILE_SUFFIX);
	free(real);
	if (!lstat(p->fleece_file, &st)) {
		msg_error("fleece file %s already exists (left over? run 'fleece stop %s', or remove it)",
			  p->fleece_file, p->fn.name);
		return -EFLEECE_REFUSED;
	}
	return 0;
}

/*
 * Create the sparse fleece file and its loop device: 0, or -errno with a
 * message.  What was made is recorded in @p (fleece_file, loop_fd) for the
 * rollback (fleece_stop()) to undo.
 */
static int make_fleece_file(struct plan *p)
{
	unsigned int bs;
	struct stat st;
	int fd, r;

	r = fault_point("fleece-file");
	fd = r ? -1 : open(p->fleece_file, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		if (!r)
			r = -errno;
		errno = -r;
		msg_errno("cannot create the fleece file %s", p->fleece_file);
		return r;
	}
	if (ftruncate(fd, (off_t)(p->sectors * 512)) || fstat(fd, &st)) {
		r = -errno;
		msg_errno("cannot size the fleece file %s", p->fleece_file);
		close(fd);
		return r;
	}
	close(fd);
	bs = major(st.st_dev) ? devno_logical_block_size(st.st_dev) : 512;
	r = fault_point("loop-attach");	/* test: the file is left for the rollback */
	if (r) {
		errno = -r;
		msg_errno("cannot attach a loop device to %s", p->fleece_file);
		return r;
	}
	p->loop_fd = loop_attach(p->fleece_file, bs, p->fleece_path,
				 sizeof(p->fleece_path), &p->fleece_dev, &p->dio);
	if (p->loop_fd < 0) {
		r = p->loop_fd;
		p->loop_fd = -1;
		return r;
	}
	if (!p->dio)
		msg_warn("%s: the file system of %s cannot do direct I/O: the loop device uses the page cache",
			 p->fn.name, p->fleece_file);
	return 0;
}

static void fleece_table(const struct plan *p, const struct start_opts *o,
			 struct dmw_table *t)
{
	char params[256], feat[128] = "";
	unsigned int nfeat = 0;

	if (o->fail_origin_writes)
		nfeat += 1;
	if (o->cbw_timeout_ms)
		nfeat += 2;
	if (p->origin_offset)
		nfeat += 2;
	if (p->tracked && o->incremental)
		nfeat += 2;
	if (nfeat) {
		int k = snprintf(feat, sizeof(feat), " %u", nfeat);

		if (o->fail_origin_writes)
			k += snprintf(feat + k, sizeof(feat) - k, " %s",
				      FLEECE_FEATURE_FAIL_ORIGIN_WRITES);
		if (o->cbw_timeout_ms)
			k += snprintf(feat + k, sizeof(feat) - k, " %s %u",
				      FLEECE_FEATURE_CBW_TIMEOUT_MS, o->cbw_timeout_ms);
		if (p->origin_offset)
			k += snprintf(feat + k, sizeof(feat) - k, " %s %llu",
				      FLEECE_FEATURE_ORIGIN_OFFSET,
				      (unsigned long long)p->origin_offset);
		if (p->tracked && o->incremental)
			snprintf(feat + k, sizeof(feat) - k, " %s %u:%u", FLEECE_FEATURE_TRACK_STORE,
				 major(p->tp.store_dev), minor(p->tp.store_dev));
	}
	snprintf(params, sizeof(params), "%u:%u %u:%u %llu%s",
		 major(p->origin_dev), minor(p->origin_dev),
		 major(p->fleece_dev), minor(p->fleece_dev),
		 (unsigned long long)(o->chunk_bytes / 512), feat);
	memset(t, 0, sizeof(*t));
	dmw_table_add(t, 0, p->sectors, FLEECE_TARGET_NAME, params);
}

static void view_table(const struct plan *p, struct dmw_table *t)
{
	char params[64];

	snprintf(params, sizeof(params), "%u:%u %u:%u",
		 major(p->origin_dev), minor(p->origin_dev),
		 major(p->fleece_dev), minor(p->fleece_dev));
	memset(t, 0, sizeof(*t));
	dmw_table_add(t, 0, p->sectors, FLEECE_VIEW_TARGET_NAME, params);
}

/**
 * tables_unchanged() - with NAME suspended, check both of its tables again
 * @name: the device
 * @live: the live table read before the swap was planned
 * @loaded: the table this command loaded (the inactive one)
 * @refusal: what the command then does not do, for the message
 *
 * An lvextend or the end of a pvmove between the first read and the
 * suspend would otherwise have the resume swap in a table built from the
 * old extents; another tool may also have loaded its own inactive table.
 *
 * Return: 0; -ESTALE when a table differs; or the query's -errno.  Each
 * failure is said.
 */
int tables_unchanged(const char *name, const struct dmw_table *live,
		     const struct dmw_table *loaded, const char *refusal)
{
	struct dmw_table t;
	int r;

	r = fault_point("table-check");
	if (!r)
		r = dmw_get_table(name, false, &t);
	if (r) {
		msg_error("%s: cannot read its table again: %s", name, dmw_strerror(r));
		return r;
	}
	if (!dmw_tables_equal(&t, live)) {
		dmw_table_free(&t);
		msg_error("%s: its table changed since fleece read it (lvextend, pvmove or another tool): %s",
			  name, refusal);
		return -ESTALE;
	}
	dmw_table_free(&t);
	r = dmw_get_table(name, true, &t);
	if (r) {
		msg_error("%s: cannot read its inactive table: %s", name, dmw_strerror(r));
		return r;
	}
	if (!dmw_tables_equal(&t, loaded)) {
		dmw_table_free(&t);
		msg_error("%s: another tool replaced the table fleece loaded: %s", name, refusal);
		return -ESTALE;
	}
	dmw_table_free(&t);
	return 0;
}

int fleece_suspend(const char *name)
{
	int r;

	dmw_quiet(1);
	r = dmw_suspend(name, true);
	dmw_quiet(-1);
	if (r == -EBUSY) {
		/* A file system frozen already (fsfreeze) cannot be frozen again: it is consistent as it is. */
		msg_debug("%s: its file system is frozen already: suspending without freezing it",
			  name);
		r = dmw_suspend(name, false);
	}
	if (r)
		msg_error("%s: cannot suspend: %s", name, dmw_strerror(r));
	return r;
}

/*
 * Phase 6, the point in time: suspend every NAME (flushing and freezing file
 * systems), check that no NAME's tables changed since they were read, and
 * resume them all: each resume swaps in the fleece table.  On any failure
 * the fleece tables are cleared and every NAME suspended is resumed as it
 * was.  As lvm2 does, memory is locked and messages are held back while a
 * NAME is suspended: a page fault or a write to stderr served by a
 * suspended device (the LV that holds / or the log) would never complete.
 */
static int swap_in(struct plan *plans, unsigned int n, double *frozen)
{
	/* The hidden origins of tracked NAMEs first, then the NAMEs. */
	char **names = xcalloc(2 * n, sizeof(char *)), **nm;
	unsigned int i, suspended = 0, nt = 0, tsusp = 0, done;
	sigset_t oldmask;
	bool locked;
	double t0;
	int r, r2;

	r = fault_point("before-suspend");	/* test: STOP, change a table */
	if (r) {
		free(names);
		return r;
	}
	locked = !mlockall(MCL_CURRENT | MCL_FUTURE);
	if (!locked)
		msg_warn("cannot lock the memory of fleece (%s): a device holding its files must not be fleeced",
			 strerror(errno));
	for (i = 0; i < n; i++)
		if (plans[i].tracked)
			names[nt++] = plans[i].fn.origin;
	nm = names + nt;
	for (i = 0; i < n; i++)
		nm[i] = plans[i].fn.name;
	signals_block(&oldmask);
	msg_hold(true);
	t0 = now_mono();
	for (i = 0; i < n && !r; i++) {
		r = fault_point("suspend");
		if (!r)
			r = fleece_suspend(nm[i]);
		if (!r)
			suspended++;
	}
	for (i = 0; i < suspended && !r; i++)
		r = tables_unchanged(plans[i].fn.name, &plans[i].table, &plans[i].fleece,
					     "not fleecing it");
	/* The tracker's checkpoint, once every table holding its store is suspended. */
	for (i = 0; i < nt && !r; i++) {
		r = dmw_suspend(names[i], false);
		if (r) {
			msg_error("%s: cannot suspend: %s", names[i], dmw_strerror(r));
			break;
		}
		tsusp++;
		r = fault_point("track-checkpoint");
		if (!r)
			r = dmw_message(names[i], FLEECE_TRACK_MSG_CHECKPOINT, NULL);
		if (r)
			msg_error("%s: the tracker refused the checkpoint: %s", names[i],
				  dmw_strerror(r));
	}
	if (r) {
		/* Back as they were: nothing swapped in. */
		for (i = 0; i < suspended; i++) {
			r2 = dmw_clear(nm[i]);
			if (r2)
				msg_error("%s: cannot clear the fleece table: %s", nm[i],
					  dmw_strerror(r2));
		}
		r2 = dmw_resume_many(names, tsusp, 0, &done, frozen);
		if (r2)
			msg_error("%s: cannot resume: %s", names[done], dmw_strerror(r2));
		r2 = dmw_resume_many(nm, suspended, 0, &done, frozen);
		if (r2)
			msg_error("%s: cannot resume: %s", nm[done], dmw_strerror(r2));
	} else {
		r = fault_point("resume");
		if (!r)
			r = dmw_resume_many(names, nt + n, 0, &done, frozen);
		else
			done = 0;
		if (r)
			msg_error("%s: cannot resume with the fleece table: %s", names[done],
				  dmw_strerror(r));
	}
	*frozen -= t0;
	msg_hold(false);
	signals_restore(&oldmask);
	if (locked)
		munlockall();
	free(names);
	return r;
}

/*
 * Phase 1, resolve: the arguments, each NAME resolved to its dm name, and
 * fleece's lock of each NAME taken (held until the process ends).  Changes
 * nothing.  0, or -errno with a message (-EFLEECE_USAGE, -EFLEECE_REFUSED:
 * no such device, or another fleece command holds a NAME).
 */
static int start_resolve(const struct start_opts *o, char **names, unsigned int n,
			 struct plan *plans)
{
	unsigned int i, j;
	char name[128];
	int r;

	if (o->nr_fleece_devs && o->nr_fleece_devs != n)
		return usage_err("%u device(s) to fleece but %u --fleece-dev given: give one per device",
				 n, o->nr_fleece_devs);
	if (!o->nr_fleece_devs && !o->fleece_dir)
		return usage_err("give the fleece space: --fleece-dev DEV[,DEV...] or --fleece-dir DIR");
	for (i = 0; i < n; i++) {
		r = resolve_dm_name(names[i], name, sizeof(name));
		if (r)
			return r;
		if (fleece_names(name, &plans[i].fn))
			return -EFLEECE_REFUSED;
		for (j = 0; j < i; j++)
			if (!strcmp(plans[j].fn.name, name))
				return usage_err("%s given twice", name);
		r = fleece_lock(name);
		if (r)
			return r == -EBUSY ? -EFLEECE_REFUSED : r;
		plans[i].fleece_arg = o->nr_fleece_devs ? o->fleece_devs[i] : NULL;
	}
	return 0;
}

/*
 * Phase 2, check: the module, lvm2's VG locks (held until start_release()),
 * then every check of the NAMEs and of their fleece space, before anything
 * is changed.  Fills in each plan: NAME's table, size, the fleece device or
 * file to use.  0, or -errno with a message (-EFLEECE_REFUSED: not fit).
 */
static int start_check(const struct start_opts *o, struct plan *plans, unsigned int n)
{
	unsigned int i, j;
	int r;

	if (fleece_need_module())
		return -EFLEECE_REFUSED;
	r = lock_vgs(plans, n);
	for (i = 0; i < n && !r; i++)
		r = check_name(&plans[i], o);
	if (r)
		return r;
	for (i = 0; i < n; i++)
		for (j = 0; j < n; j++)
			if (i != j && devno_depends_on(plans[i].dev, plans[j].dev)) {
				msg_error("%s is built on %s: fleece them one at a time",
					  plans[i].fn.name, plans[j].fn.name);
				return -EFLEECE_REFUSED;
			}
	for (i = 0; i < n && !r; i++)
		r = plans[i].fleece_arg ? check_fleece_dev(&plans[i], plans, n, o) :
					  check_fleece_dir(&plans[i], o);
	if (r)
		return r;
	for (i = 0; i < n; i++)
		for (j = 0; j < i; j++)
			if (plans[i].fleece_file[0] &&
			    !strcmp(plans[i].fleece_file, plans[j].fleece_file))
				return usage_err("%s and %s would share the fleece file %s",
						 plans[j].fn.name, plans[i].fn.name,
						 plans[i].fleece_file);
	return 0;
}

/*
 * Phase 3, record: a state file per NAME ("starting", the fleece file to
 * come, the linear table the fleece target replaces, the backup's
 * FILE.partial), before anything else: "fleece stop" must find whatever
 * follows, also after a crash.  On failure the state files written are
 * removed again: nothing is left.  0, or -errno with a message.
 */
static int start_record(const struct start_opts *o, struct plan *plans, unsigned int n)
{
	struct fleece_state st;
	unsigned int i, j;
	int r;

	for (i = 0; i < n; i++) {
		memset(&st, 0, sizeof(st));
		snprintf(st.phase, sizeof(st.phase), "starting");
		snprintf(st.fleece_file, sizeof(st.fleece_file), "%s", plans[i].fleece_file);
		if (plans[i].direct) {
			st.linear_dev = plans[i].origin_dev;
			st.linear_offset = plans[i].origin_offset;
		}
		if (plans[i].tracked)
			st.track_store = plans[i].tp.store_dev;
		if (o->partials && o->partials[i])
			snprintf(st.partial, sizeof(st.partial), "%s", o->partials[i]);
		r = state_write(plans[i].fn.name, &st);
		if (r) {
			for (j = 0; j < i; j++)
				state_remove(plans[j].fn.name);
			return r;
		}
	}
	return 0;
}

/* Read-modify-write of NAME's state file. */
static int state_update(const struct plan *p, const char *phase, dev_t loop)
{
	struct fleece_state st;
	int r;

	r = state_read(p->fn.name, &st);
	if (r) {
		errno = -r;
		msg_errno("%s: cannot read its state file in %s", p->fn.name, state_dir());
		return r;
	}
	if (phase)
		snprintf(st.phase, sizeof(st.phase), "%s", phase);
	if (loop)
		st.loop_dev = loop;
	st.fleece_dev = p->fleece_dev;
	return state_write(p->fn.name, &st);
}

/*
 * Phase 4, fleece space: for --fleece-dir, each sparse fleece file and its
 * loop device, recorded in the state file.  0, or -errno with a message;
 * what was made is for the rollback to undo.
 */
static int start_space(struct plan *plans, unsigned int n)
{
	unsigned int i;
	int r;

	for (i = 0; i < n; i++) {
		if (!plans[i].fleece_file[0])
			continue;
		r = make_fleece_file(&plans[i]);
		if (!r)
			r = state_update(&plans[i], NULL, plans[i].fleece_dev);
		if (r)
			return r;
	}
	return 0;
}

/*
 * Phase 5, tables: each hidden origin NAME-fleece-origin (unless the
 * fleece target takes a linear table's place), and each NAME's fleece
 * table, loaded inactive: nothing any writer sees changes yet.  0, or
 * -errno with a message; what was made is for the rollback to undo.
 */
static int start_tables(const struct start_opts *o, struct plan *plans, unsigned int n)
{
	struct dmw_info oi;
	unsigned int i;
	int r, kmsg;

	for (i = 0; i < n; i++) {
		struct plan *p = &plans[i];

		if (!p->direct) {
			struct dmw_table ot = { 0 };
			unsigned int k;

			for (k = 0; k < p->table.n; k++)
				dmw_table_add(&ot, p->table.t[k].start, p->table.t[k].len,
					      p->table.t[k].type, p->table.t[k].params);
			track_table_no_format(&ot);
			kmsg = kmsg_mark();
			r = dmw_create(p->fn.origin, p->fn.origin_uuid, &ot,
				       p->info.read_only, FLEECE_UDEV_FLAGS);
			dmw_table_free(&ot);
			if (r) {
				msg_error("%s: cannot create %s: %s", p->fn.name, p->fn.origin,
					  dmw_strerror(r));
				kmsg_report(kmsg, "fleece");
				return r;
			}
			if (kmsg >= 0)
				close(kmsg);
			r = dmw_info(p->fn.origin, &oi);
			if (r || !oi.exists) {
				msg_error("%s: %s vanished", p->fn.name, p->fn.origin);
				return r ? r : -ENXIO;
			}
			p->origin_dev = makedev(oi.major, oi.minor);
		}
		fleece_table(p, o, &p->fleece);
		msg_debug("%s: loading %s", p->fn.name, p->fleece.t[0].params);
		kmsg = kmsg_mark();
		/* A read-only NAME stays read-only: the resume takes the table's mode. */
		r = dmw_load(p->fn.name, &p->fleece, p->info.read_only);
		if (r) {
			msg_error("%s: the kernel refused the fleece table: %s", p->fn.name,
				  dmw_strerror(r));
			kmsg_report(kmsg, "fleece");
			return r;
		}
		if (kmsg >= 0)
			close(kmsg);
		/* The loaded table holds the loop device now. */
		if (p->loop_fd >= 0) {
			close(p->loop_fd);
			p->loop_fd = -1;
		}
	}
	return 0;
}

/*
 * Phase 7, views: each NAME-fleece-view, writable (the reader's discards
 * release chunks), and the state "running".  0, or -errno with a message;
 * the rollback undoes everything, views included.
 */
static int start_views(struct plan *plans, unsigned int n)
{
	struct dmw_table t;
	unsigned int i;
	int r, kmsg;

	for (i = 0; i < n; i++) {
		struct plan *p = &plans[i];

		view_table(p, &t);
		kmsg = kmsg_mark();
		r = dmw_create(p->fn.view, p->fn.view_uuid, &t, false, FLEECE_UDEV_FLAGS);
		dmw_table_free(&t);
		if (r) {
			msg_error("%s: cannot create the view %s: %s", p->fn.name, p->fn.view,
				  dmw_strerror(r));
			kmsg_report(kmsg, "fleece");
			return r;
		}
		if (kmsg >= 0)
			close(kmsg);
		r = state_update(p, "running", 0);
		if (r)
			return r;
	}
	return 0;
}

static void start_report(const struct start_opts *o, const struct plan *plans,
			 unsigned int n, double frozen)
{
	unsigned int i;
	char sz[32];

	for (i = 0; i < n; i++) {
		const struct plan *p = &plans[i];

		if (p->fleece_file[0])
			msg_info("%s: view /dev/mapper/%s, fleece %s (%s%s), chunk %s",
				 p->fn.name, p->fn.view, p->fleece_path, p->fleece_file,
				 p->dio ? ", direct I/O" : "",
				 fmt_size(o->chunk_bytes, sz, sizeof(sz)));
		else
			msg_info("%s: view /dev/mapper/%s, fleece %s, chunk %s",
				 p->fn.name, p->fn.view, p->fleece_path,
				 fmt_size(o->chunk_bytes, sz, sizeof(sz)));
	}
	if (n > 1)
		msg_info("one point in time for %u devices (suspended for %.0f ms)", n, frozen * 1000);
}

/*
 * The rollback of phases 3 to 7: fleece_stop() of each NAME, which works
 * from what it finds (the state files, the devices), keeping FILE.partial
 * (the caller's to remove).
 */
static void rollback(struct plan *plans, unsigned int n)
{
	unsigned int i;

	msg_error("undoing the start");
	for (i = 0; i < n; i++) {
		if (plans[i].loop_fd >= 0) {
			close(plans[i].loop_fd);
			plans[i].loop_fd = -1;
		}
	}
	for (i = 0; i < n; i++)
		fleece_stop(plans[i].fn.name, STOP_KEEP_PARTIAL);
}

/* What the phases hold: loop fds, tables, lvm2's VG locks. */
static void start_release(struct plan *plans, unsigned int n)
{
	unsigned int i;

	for (i = 0; i < n; i++) {
		if (plans[i].loop_fd >= 0)
			close(plans[i].loop_fd);
		dmw_table_free(&plans[i].table);
		dmw_table_free(&plans[i].fleece);
		lvm_vg_unlock(plans[i].vg);
	}
	free(plans);
}

int fleece_start(struct start_opts *o, char **names, unsigned int n)
{
	struct plan *plans = xcalloc(n, sizeof(*plans));
	double frozen = 0;
	unsigned int i;
	int r;

	for (i = 0; i < n; i++)
		plans[i].loop_fd = -1;
	r = start_resolve(o, names, n, plans);
	if (!r)
		r = start_check(o, plans, n);
	if (!r)
		r = start_record(o, plans, n);
	if (r)
		goto out;	/* nothing was changed */
	r = start_space(plans, n);
	/* One wait for udev, after the views: the phases use no /dev/mapper node. */
	dmw_udev_batch_begin();
	if (!r)
		r = start_tables(o, plans, n);
	if (!r)
		r = swap_in(plans, n, &frozen);	/* phase 6, the point in time */
	if (!r)
		r = start_views(plans, n);
	dmw_udev_batch_end();
	if (r) {
		rollback(plans, n);
		goto out;
	}
	msg_debug("devices suspended for %.3f s", frozen);
	start_report(o, plans, n, frozen);
out:
	start_release(plans, n);
	return r;
}

static void start_help(void)
{
	printf("Usage: fleece start [OPTIONS] (--fleece-dev DEV[,DEV...] | --fleece-dir DIR) NAME...\n"
	       "\n"
	       "Take one consistent point in time of every device-mapper device NAME (an LVM\n"
	       "logical volume, /dev/mapper/NAME or any dm device) and expose it, frozen, as\n"
	       "/dev/mapper/NAME-fleece-view while NAME keeps working.  Old data that NAME's\n"
	       "writers overwrite is first copied to the fleece device.\n"
	       "\n"
	       "Options:\n"
	       "  -d, --fleece-dev DEV[,DEV...]\n"
	       "                            fleece devices, one per NAME, in order; each at\n"
	       "                            least as large as its NAME, unused\n"
	       "  -D, --fleece-dir DIR      create sparse files DIR/NAME.fleece on loop\n"
	       "                            devices instead (removed by 'fleece stop')\n"
	       HELP_START_POLICY
	       HELP_COMMON
	       "\n"
	       "Stop with 'fleece stop NAME...'.  See fleece(8).\n");
}

int start_cmd_opt(int c, const char *arg, void *ctx)
{
	return c == 'q' ? 0 : start_parse_opt(ctx, c, arg);
}

int cmd_start(int argc, char **argv)
{
	static const struct option opts[] = { LONGOPTS_START, LONGOPTS_COMMON };
	struct start_opts o;
	int r;

	prog = "fleece start";
	start_opts_init(&o);
	r = parse_opts(argc, argv, SHORTOPTS_START SHORTOPTS_COMMON, opts, start_help,
		       start_cmd_opt, &o);
	if (r >= 0) {
		start_opts_free(&o);
		return r;
	}
	if (optind >= argc) {
		start_opts_free(&o);
		return usage_error("no device given");
	}
	signals_install();
	r = fleece_start(&o, argv + optind, argc - optind);
	if (!r && fleece_signal) {
		/* Interrupted while starting: undo it all. */
		int i;

		msg_error("interrupted by signal %d: stopping", (int)fleece_signal);
		for (i = optind; i < argc; i++) {
			char name[128];

			if (!resolve_dm_name(argv[i], name, sizeof(name)))
				fleece_stop(name, 0);
		}
		r = -EINTR;
	}
	start_opts_free(&o);
	return exit_code(r);
}
