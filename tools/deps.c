// SPDX-License-Identifier: GPL-2.0
/*
 * fleece(8): which block devices hold a device or a file system.
 *
 * The fleece space must not be on NAME: every copy-before-write would
 * write to NAME again.  A block device is followed through its slaves
 * (device-mapper, md), to its disk (a partition) and, for a loop device,
 * to the file system of its backing file.  A file system is followed to
 * its device when st_dev names one; when st_dev is anonymous (major 0) the
 * mount is looked up in /proc/self/mountinfo (by mount id): btrfs to the
 * devices /sys/fs/btrfs/<fsid>/devices lists, overlayfs to its upper,
 * work and lower directories, tmpfs and ramfs to nothing.  Anything else,
 * or anything that cannot be resolved (a deleted backing file, a layer
 * directory that is gone, sysfs unreadable), is "cannot tell": callers
 * refuse unless forced.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <linux/btrfs.h>
#include <linux/loop.h>

#include "util.h"

#define DEPS_MAX_DEPTH 16

struct deps {
	dev_t base;
	char *why;
	size_t len;
	bool found;		/* @why says how it depends */
};

static int dep_dev(struct deps *d, dev_t dev, unsigned int depth);
static int dep_path(struct deps *d, const char *path, unsigned int depth);

/*
 * Say why: the innermost reason, and the way it depends (r == 1) rather
 * than a branch that could not be followed before it was found.
 */
static int because(struct deps *d, int r, const char *fmt, ...) ATTR_PRINTF(3, 4);
static int because(struct deps *d, int r, const char *fmt, ...)
{
	va_list ap;

	if (d->why && d->len && !d->found && (r == 1 || !d->why[0])) {
		d->found = r == 1;
		va_start(ap, fmt);
		vsnprintf(d->why, d->len, fmt, ap);
		va_end(ap);
	}
	return r;
}

static int sys_devno(const char *path, dev_t *dev)
{
	char buf[32];
	unsigned int ma, mi;
	int r;

	r = read_text_file(path, buf, sizeof(buf));
	if (r)
		return r;
	if (sscanf(buf, "%u:%u", &ma, &mi) != 2)
		return -EINVAL;
	*dev = makedev(ma, mi);
	return 0;
}

/*
 * Every device a sysfs directory lists (a device's slaves/, a btrfs
 * file system's devices/: links to the devices' sysfs directories):
 * 1 when one is on the base, else the first error, else 0; *@n counts them.
 */
static int dep_listed(struct deps *d, const char *dir, unsigned int depth, unsigned int *n)
{
	char sys[PATH_MAX + 300];
	struct dirent *de;
	int r, err = 0;
	DIR *dd;

	*n = 0;
	dd = opendir(dir);
	if (!dd)
		return -errno;
	while ((de = readdir(dd))) {
		dev_t dev;

		if (de->d_name[0] == '.')
			continue;
		snprintf(sys, sizeof(sys), "%s/%s/dev", dir, de->d_name);
		r = sys_devno(sys, &dev);
		if (r)
			r = because(d, r, "cannot read %s", sys);
		else
			r = dep_dev(d, dev, depth + 1);
		(*n)++;
		if (r == 1) {
			closedir(dd);
			return 1;
		}
		if (r < 0 && !err)
			err = r;
	}
	closedir(dd);
	return err;
}

/* A loop device: the device, or the file system, of its backing file. */
static int dep_loop(struct deps *d, dev_t dev, unsigned int depth)
{
	char node[PATH_MAX], sys[PATH_MAX], file[PATH_MAX];
	struct loop_info64 li;
	struct stat st;
	dev_t fsdev;
	int fd, r;

	r = devno_path(dev, node, sizeof(node));
	if (r)
		return because(d, r, "loop device %u:%u: no device node", major(dev), minor(dev));
	fd = open(node, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return because(d, -errno, "loop device %s: cannot open it: %s", node,
			       strerror(errno));
	r = ioctl(fd, LOOP_GET_STATUS64, &li);
	r = r < 0 ? -errno : 0;
	close(fd);
	if (r == -ENXIO)
		return 0;	/* no backing file (any more) */
	if (r)
		return because(d, r, "loop device %s: cannot read its status: %s", node,
			       strerror(-r));
	fsdev = (dev_t)li.lo_device;
	snprintf(sys, sizeof(sys), "/sys/dev/block/%u:%u/loop/backing_file", major(dev),
		 minor(dev));
	if (read_text_file(sys, file, sizeof(file)))
		snprintf(file, sizeof(file), "(unknown)");
	if (major(fsdev)) {
		r = dep_dev(d, fsdev, depth + 1);
	} else {
		/* An anonymous st_dev: the file's path leads to its mount. */
		if (stat(file, &st) || st.st_dev != fsdev || st.st_ino != li.lo_inode)
			return because(d, -ENOENT,
				       "loop device %s: its backing file %s cannot be found by its name (deleted, renamed or in another mount namespace)",
				       node, file);
		r = dep_path(d, file, depth + 1);
	}
	if (r == 1)
		because(d, 1, "loop device %s has its backing file %s there", node, file);
	return r;
}

static int dep_dev(struct deps *d, dev_t dev, unsigned int depth)
{
	char path[PATH_MAX], sys[PATH_MAX + 300];
	struct stat st;
	unsigned int n;
	dev_t parent;
	int r;

	if (dev == d->base)
		return 1;
	if (depth > DEPS_MAX_DEPTH)
		return because(d, -ELOOP, "devices stacked more than %d deep", DEPS_MAX_DEPTH);
	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u", major(dev), minor(dev));
	if (stat(path, &st))
		return because(d, -errno, "block device %u:%u: not in /sys/dev/block",
			       major(dev), minor(dev));
	/* A partition is built on its disk. */
	snprintf(sys, sizeof(sys), "%s/partition", path);
	if (!access(sys, F_OK)) {
		snprintf(sys, sizeof(sys), "%s/../dev", path);
		r = sys_devno(sys, &parent);
		if (r)
			return because(d, r, "partition %u:%u: cannot find its disk",
				       major(dev), minor(dev));
		return dep_dev(d, parent, depth + 1);
	}
	snprintf(sys, sizeof(sys), "%s/loop", path);
	if (!access(sys, F_OK)) {
		r = dep_loop(d, dev, depth);
		if (r)
			return r;
	}
	snprintf(sys, sizeof(sys), "%s/slaves", path);
	r = dep_listed(d, sys, depth, &n);
	if (r == -ENOENT && !n)
		return 0;	/* no slaves/: a disk */
	if (r < 0 && !n)
		return because(d, r, "cannot read %s: %s", sys, strerror(-r));
	return r;
}

/* Undo the octal escapes of /proc/self/mountinfo (\040 for ' ', ...), in place. */
static void unescape(char *s)
{
	char *o = s;

	while (*s) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' &&
		    s[3] >= '0' && s[3] <= '7') {
			*o++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
			s += 4;
		} else {
			*o++ = *s++;
		}
	}
	*o = '\0';
}

struct mnt {
	char *line;			/* the fields below point into it */
	char *fstype, *source, *super;
};

/* The mountinfo line of mount @id, or (id 0) of the first mount of @dev. */
static int find_mount(int id, dev_t dev, struct mnt *m)
{
	char *line = NULL;
	size_t cap = 0;
	FILE *f;
	int r = -ENOENT;

	memset(m, 0, sizeof(*m));
	f = fopen("/proc/self/mountinfo", "re");
	if (!f)
		return -errno;
	while (getline(&line, &cap, f) > 0) {
		unsigned int mid, pid, ma, mi;
		char *sep, *save = NULL;

		line[strcspn(line, "\n")] = '\0';
		if (sscanf(line, "%u %u %u:%u", &mid, &pid, &ma, &mi) != 4)
			continue;
		if (id ? (int)mid != id : makedev(ma, mi) != dev)
			continue;
		sep = strstr(line, " - ");
		if (!sep)
			break;
		m->fstype = strtok_r(sep + 3, " ", &save);
		m->source = strtok_r(NULL, " ", &save);
		m->super = strtok_r(NULL, " ", &save);
		if (!m->fstype || !m->source || !m->super)
			break;
		unescape(m->source);
		m->line = line;
		line = NULL;
		r = 0;
		break;
	}
	free(line);
	fclose(f);
	return r;
}

/* btrfs: every device of the file system, as /sys/fs/btrfs/<fsid>/devices lists them. */
static int dep_btrfs(struct deps *d, const char *path, unsigned int depth)
{
	struct btrfs_ioctl_fs_info_args fi;
	const unsigned char *u = fi.fsid;
	char dir[PATH_MAX];
	unsigned int n;
	int fd, r;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return because(d, -errno, "%s (btrfs): cannot open it: %s", path, strerror(errno));
	memset(&fi, 0, sizeof(fi));
	r = ioctl(fd, BTRFS_IOC_FS_INFO, &fi);
	r = r < 0 ? -errno : 0;
	close(fd);
	if (r)
		return because(d, r, "%s (btrfs): cannot read its fsid: %s", path, strerror(-r));
	snprintf(dir, sizeof(dir),
		 "/sys/fs/btrfs/%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x/devices",
		 u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11],
		 u[12], u[13], u[14], u[15]);
	r = dep_listed(d, dir, depth, &n);
	if (r == -ENOENT && !n)
		return because(d, r, "%s (btrfs): cannot list its devices in %s", path, dir);
	if (!r && !n)
		r = because(d, -ENOENT, "%s (btrfs): %s lists no device", path, dir);
	if (r == 1)	/* the base itself is one of them: no inner reason was given */
		because(d, 1, "%s: a btrfs file system with one of its devices on it", path);
	return r;
}

/*
 * overlayfs: its upper and work directories, from the super options
 * ("lowerdir=/c:/d,upperdir=/a,workdir=/b"; ',' ' ' '\' escaped in octal).
 * What is written goes there: a new fleece file, and a file a loop device
 * opened for writing (copied up at open).  The lower layers are only read.
 */
static int dep_overlay(struct deps *d, const char *path, char *super, unsigned int depth)
{
	static const char *const keys[] = { "upperdir=", "workdir=" };
	char *opt, *save = NULL;
	int r, err = 0, n = 0;
	unsigned int k;

	for (opt = strtok_r(super, ",", &save); opt; opt = strtok_r(NULL, ",", &save)) {
		char *v = NULL;

		for (k = 0; k < ARRAY_SIZE(keys) && !v; k++)
			if (!strncmp(opt, keys[k], strlen(keys[k])))
				v = opt + strlen(keys[k]);
		if (!v)
			continue;
		unescape(v);
		if (v[0] != '/')
			r = because(d, -EINVAL, "%s (overlay): its %.*s '%s' is not an absolute path",
				    path, (int)(v - opt - 1), opt, v);
		else
			r = dep_path(d, v, depth + 1);
		n++;
		if (r == 1)
			return 1;
		if (r < 0 && !err)
			err = r;
	}
	if (!n && !err)
		err = because(d, -EROFS, "%s (overlay): no upper directory in its mount options",
			      path);
	return err;
}

static int dep_path(struct deps *d, const char *path, unsigned int depth)
{
	struct statx stx;
	struct mnt m;
	dev_t dev;
	int r, id;

	if (depth > DEPS_MAX_DEPTH)
		return because(d, -ELOOP, "file systems stacked more than %d deep", DEPS_MAX_DEPTH);
	if (statx(AT_FDCWD, path, 0, STATX_BASIC_STATS | STATX_MNT_ID, &stx))
		return because(d, -errno, "%s: %s", path, strerror(errno));
	dev = makedev(stx.stx_dev_major, stx.stx_dev_minor);
	if (major(dev)) {
		r = dep_dev(d, dev, depth + 1);
		if (r == 1 && depth)
			because(d, 1, "%s is on it", path);
		return r;
	}
	id = (stx.stx_mask & STATX_MNT_ID) ? (int)stx.stx_mnt_id : 0;
	r = find_mount(id, dev, &m);
	if (r)
		return because(d, r, "%s: its mount is not in /proc/self/mountinfo", path);
	if (!strcmp(m.fstype, "btrfs")) {
		r = dep_btrfs(d, path, depth);
	} else if (!strcmp(m.fstype, "overlay")) {
		r = dep_overlay(d, path, m.super, depth);
	} else if (!strcmp(m.fstype, "tmpfs") || !strcmp(m.fstype, "ramfs")) {
		r = 0;		/* memory (and swap) */
	} else {
		r = because(d, -EOPNOTSUPP,
			    "%s: on a %s file system (source %s), whose devices fleece cannot find",
			    path, m.fstype, m.source);
	}
	if (r == 1 && depth)
		because(d, 1, "%s is on it (%s)", path, m.fstype);
	free(m.line);
	return r;
}

int devno_depends(dev_t dev, dev_t base, char *why, size_t len)
{
	struct deps d = { .base = base, .why = why, .len = len };

	if (why && len)
		why[0] = '\0';
	return dep_dev(&d, dev, 0);
}

int path_depends(const char *path, dev_t base, char *why, size_t len)
{
	struct deps d = { .base = base, .why = why, .len = len };

	if (why && len)
		why[0] = '\0';
	return dep_path(&d, path, 0);
}
