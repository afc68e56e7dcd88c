// SPDX-License-Identifier: GPL-2.0
/*
 * fleece(8): lvm2's lock of a volume group, held while fleece reads, swaps
 * or restores the table of one of its LVs.
 *
 * lvm2 (local VGs, file locking) takes a VG's lock for writing before it
 * changes the VG's metadata and reloads its LVs (lvextend, pvmove, lvconvert
 * ...): flock(LOCK_EX) on $locking_dir/V_<vg> (default /run/lock/lvm).
 * With prioritise_write_locks (the default) a writer first takes
 * V_<vg>:aux, so that a stream of readers cannot starve it, and drops it
 * once it holds V_<vg>.  A lock file is unlinked by whoever drops the last
 * lock, so a lock is only held once the file locked is still the one of
 * that name.  fleece takes the lock the same way, so an lvextend or the
 * end of a pvmove waits until the fleece table is in place (or NAME's own
 * table is back), and fleece waits for an lvm2 command that holds it.
 * The lock directory is lvm.conf's global/locking_dir, as lvm2 reads it
 * (lvmconfig, which honours LVM_SYSTEM_DIR and lvmlocal.conf).  Under
 * lvmlockd (global/use_lvmlockd=1) lvm2 takes its locks from lvmlockd,
 * which fleece cannot: an LV is then refused.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fleece.h"
#include "util.h"

#define LVM_LOCK_DIR	"/run/lock/lvm"	/* lvm2's default locking_dir */

/* lvm2's settings that fleece needs, read once. */
static struct {
	bool read;
	int err;			/* 0, or -errno of the read */
	char locking_dir[PATH_MAX];
	bool use_lvmlockd;
} lvm_conf;

static struct {
	char vg[128];
	int fd;
	unsigned int refs;
} vg_locks[16];

/* The VG of an LV's dm name "vg-lv" ('-' in either doubled), or -EINVAL. */
static int lv_dm_vg(const char *name, char *vg, size_t len)
{
	size_t o = 0;
	const char *p;

	for (p = name; *p; p++) {
		if (*p == '-') {
			if (p[1] != '-')
				break;
			p++;
		}
		if (o + 1 >= len)
			return -ENAMETOOLONG;
		vg[o++] = *p;
	}
	vg[o] = '\0';
	return *p == '-' && o ? 0 : -EINVAL;
}

static bool same_file(int fd, const char *path)
{
	struct stat a, b;

	return !stat(path, &a) && !fstat(fd, &b) && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

/* flock @path as lvm2 does: retried until the file locked is the one named. */
static int flock_path(const char *path, int op, int *fdp)
{
	int fd;

	for (;;) {
		fd = open(path, O_CREAT | O_APPEND | O_RDWR | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (fd < 0)
			return -errno;
		if (flock(fd, op)) {
			int r = errno == EWOULDBLOCK ? -EBUSY : -errno;

			close(fd);
			return r;
		}
		if (same_file(fd, path)) {
			*fdp = fd;
			return 0;
		}
		close(fd);	/* unlinked by its last holder meanwhile: again */
	}
}

/* Drop a lock; remove the file when no one else holds or waits on it. */
static void unflock_path(const char *path, int fd)
{
	flock(fd, LOCK_UN);
	if (!flock(fd, LOCK_EX | LOCK_NB) && same_file(fd, path))
		unlink(path);
	close(fd);
}

/* The write lock, writer first (V_<vg>:aux) as lvm2's prioritise_write_locks. */
static int lock_vg_file(const char *path, int op, int *fdp)
{
	char *aux = xasprintf("%s:aux", path);
	int afd, r;

	r = flock_path(aux, LOCK_EX | (op & LOCK_NB), &afd);
	if (!r) {
		r = flock_path(path, op, fdp);
		unflock_path(aux, afd);
	}
	free(aux);
	return r;
}

int lvm_lv_vg(const char *name, const char *uuid, char *vg, size_t len)
{
	vg[0] = '\0';
	if (strncmp(uuid, "LVM-", 4))
		return 0;		/* not an LV */
	if (lv_dm_vg(name, vg, len)) {
		msg_error("%s: an LV (DM UUID %s) whose dm name does not tell its VG", name, uuid);
		return -EFLEECE_REFUSED;
	}
	return 0;
}

/* The value of KEY in lvmconfig's output ('KEY=value' lines), quotes removed. */
static bool conf_value(const char *out, const char *key, char *val, size_t len)
{
	size_t k = strlen(key);
	const char *p, *e;

	for (p = out; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
		p += strspn(p, " \t");
		if (strncmp(p, key, k) || p[k] != '=')
			continue;
		p += k + 1;
		e = p + strcspn(p, "\n");
		if (*p == '"' && e > p + 1 && e[-1] == '"') {
			p++;
			e--;
		}
		snprintf(val, len, "%.*s", (int)(e - p), p);
		return true;
	}
	return false;
}

/*
 * lvm2's global/locking_dir and global/use_lvmlockd, from lvmconfig (its
 * defaults when lvm2 is not installed): 0, or -errno with a message.
 */
static int lvm_conf_read(void)
{
	static const char *const paths[] = {
		"/sbin/lvmconfig", "/usr/sbin/lvmconfig", "/sbin/lvm", "/usr/sbin/lvm", NULL
	};
	const char *argv[8];
	const char *path;
	char out[PATH_MAX + 128], val[32];
	unsigned int i = 0;
	int r;

	if (lvm_conf.read)
		return lvm_conf.err;
	lvm_conf.read = true;
	snprintf(lvm_conf.locking_dir, sizeof(lvm_conf.locking_dir), "%s", LVM_LOCK_DIR);
	path = find_program(paths);
	if (!path) {
		msg_debug("no lvmconfig: lvm2's default locking_dir %s", LVM_LOCK_DIR);
		return 0;
	}
	argv[i++] = path;
	if (!strstr(path, "lvmconfig"))
		argv[i++] = "config";	/* lvm config */
	argv[i++] = "--typeconfig";
	argv[i++] = "full";
	argv[i++] = "global/locking_dir";
	argv[i++] = "global/use_lvmlockd";
	argv[i] = NULL;
	r = run_program(path, argv, true, "LVM_SYSTEM_DIR", out, sizeof(out));
	if (r || !conf_value(out, "locking_dir", lvm_conf.locking_dir,
			     sizeof(lvm_conf.locking_dir)) ||
	    lvm_conf.locking_dir[0] != '/') {
		msg_error("cannot read lvm2's global/locking_dir (%s %s): refusing to work on an LV without lvm2's lock",
			  path, r ? "failed" : "gave no absolute path");
		lvm_conf.err = -EFLEECE_REFUSED;
		return lvm_conf.err;
	}
	lvm_conf.use_lvmlockd = conf_value(out, "use_lvmlockd", val, sizeof(val)) &&
				strcmp(val, "0");
	msg_debug("lvm2: locking_dir %s, use_lvmlockd %d", lvm_conf.locking_dir,
		  lvm_conf.use_lvmlockd);
	return 0;
}

int lvm_vg_lock(const char *name, const char *vg, bool force)
{
	unsigned int i, slot = ARRAY_SIZE(vg_locks);
	char *path;
	int fd, r;

	for (i = 0; i < ARRAY_SIZE(vg_locks); i++) {
		if (vg_locks[i].refs && !strcmp(vg_locks[i].vg, vg)) {
			vg_locks[i].refs++;
			return 0;
		}
		if (!vg_locks[i].refs && slot == ARRAY_SIZE(vg_locks))
			slot = i;
	}
	if (slot == ARRAY_SIZE(vg_locks)) {
		msg_error("%s: more than %zu volume groups at once", name, ARRAY_SIZE(vg_locks));
		return -ENOMEM;
	}
	r = lvm_conf_read();
	if (r)
		return r;
	if (lvm_conf.use_lvmlockd && force) {
		msg_warn("%s: lvm2 uses lvmlockd (global/use_lvmlockd=1), whose lock of volume group %s fleece cannot take: going on without lvm2's lock (--force)",
			 name, vg);
		return 0;	/* nothing held: lvm_vg_unlock() finds nothing */
	}
	if (lvm_conf.use_lvmlockd) {
		msg_error("%s: lvm2 uses lvmlockd (global/use_lvmlockd=1), whose lock of volume group %s fleece cannot take: refusing",
			  name, vg);
		return -EFLEECE_REFUSED;
	}
	if (mkdir(lvm_conf.locking_dir, 0700) && errno != EEXIST) {
		r = -errno;
		msg_errno("%s: cannot create lvm2's lock directory %s", name,
			  lvm_conf.locking_dir);
		return r;
	}
	path = xasprintf("%s/V_%s", lvm_conf.locking_dir, vg);
	r = fault_point("lvm-lock");
	if (!r)
		r = lock_vg_file(path, LOCK_EX | LOCK_NB, &fd);
	if (r == -EBUSY) {
		msg_info("%s: waiting for lvm2's lock of volume group %s (%s)", name, vg, path);
		r = lock_vg_file(path, LOCK_EX, &fd);
	}
	if (r) {
		errno = -r;
		if (r == -EINTR)
			msg_error("%s: interrupted while waiting for lvm2's lock %s", name, path);
		else
			msg_errno("%s: cannot take lvm2's lock %s", name, path);
		free(path);
		return r;
	}
	msg_debug("%s: holding lvm2's lock %s", name, path);
	free(path);
	snprintf(vg_locks[slot].vg, sizeof(vg_locks[slot].vg), "%s", vg);
	vg_locks[slot].fd = fd;
	vg_locks[slot].refs = 1;
	return 0;
}

void lvm_vg_unlock(const char *vg)
{
	unsigned int i;
	char *path;

	if (!vg || !vg[0])
		return;
	for (i = 0; i < ARRAY_SIZE(vg_locks); i++) {
		if (!vg_locks[i].refs || strcmp(vg_locks[i].vg, vg))
			continue;
		if (--vg_locks[i].refs)
			return;
		path = xasprintf("%s/V_%s", lvm_conf.locking_dir, vg);
		unflock_path(path, vg_locks[i].fd);
		msg_debug("released lvm2's lock %s", path);
		free(path);
		return;
	}
}
