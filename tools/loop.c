// SPDX-License-Identifier: GPL-2.0
/*
 * fleece(8): loop devices over sparse fleece files (--fleece-dir).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <linux/fs.h>
#include <linux/loop.h>

#include "loop.h"
#include "util.h"

#ifndef LOOP_CONFIGURE
#define LOOP_CONFIGURE 0x4C0A
struct loop_config {
	__u32 fd;
	__u32 block_size;
	struct loop_info64 info;
	__u64 __reserved[8];
};
#endif

static int loop_configure(int lfd, int ffd, const char *file,
			  unsigned int block_size, unsigned int flags)
{
	struct loop_config cfg;
	struct loop_info64 info;

	memset(&cfg, 0, sizeof(cfg));
	cfg.fd = ffd;
	cfg.block_size = block_size;
	cfg.info.lo_flags = flags;
	snprintf((char *)cfg.info.lo_file_name, LO_NAME_SIZE, "%s", file);
	if (!ioctl(lfd, LOOP_CONFIGURE, &cfg))
		return 0;
	if (errno != ENOTTY && errno != EINVAL)
		return -errno;

	/* Kernels before 5.8: the old way, in steps. */
	if (ioctl(lfd, LOOP_SET_FD, ffd))
		return -errno;
	memset(&info, 0, sizeof(info));
	info.lo_flags = flags & LO_FLAGS_AUTOCLEAR;
	snprintf((char *)info.lo_file_name, LO_NAME_SIZE, "%s", file);
	if (ioctl(lfd, LOOP_SET_STATUS64, &info)) {
		int e = -errno;

		ioctl(lfd, LOOP_CLR_FD, 0);
		return e;
	}
	if (block_size > 512)
		(void)ioctl(lfd, LOOP_SET_BLOCK_SIZE, (unsigned long)block_size);
	if (flags & LO_FLAGS_DIRECT_IO)
		(void)ioctl(lfd, LOOP_SET_DIRECT_IO, 1UL);
	return 0;
}

/*
 * Read, write and discard the loop device's last block with O_DIRECT: the
 * copies of the fleece target must not meet a loop device that fails.
 */
static bool loop_dio_works(const char *path, unsigned int block_size)
{
	unsigned int bs = block_size > 4096 ? block_size : 4096;
	uint64_t size, range[2];
	bool ok = false;
	void *buf;
	int fd;

	fd = open(path, O_RDWR | O_DIRECT | O_CLOEXEC);
	if (fd < 0)
		return false;
	if (posix_memalign(&buf, bs, bs)) {
		close(fd);
		return false;
	}
	memset(buf, 0, bs);
	if (!blkdev_size(fd, &size) && size >= bs) {
		off_t off = (off_t)(size - bs);

		ok = pread(fd, buf, bs, off) == (ssize_t)bs &&
		     pwrite(fd, buf, bs, off) == (ssize_t)bs &&
		     !fdatasync(fd);
		range[0] = (uint64_t)off;
		range[1] = bs;
		(void)ioctl(fd, BLKDISCARD, range);	/* the file stays sparse */
	}
	free(buf);
	close(fd);
	return ok;
}

int loop_attach(const char *file, unsigned int block_size, char *path, size_t len,
		dev_t *dev, bool *dio)
{
	unsigned int flags = LO_FLAGS_DIRECT_IO | LO_FLAGS_AUTOCLEAR;
	int ctl, ffd, lfd = -1, attempt, r = -EBUSY;
	char sys[PATH_MAX];
	struct stat st;
	uint64_t v;

	ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
	if (ctl < 0 && errno == ENOENT) {
		run_modprobe("loop", true);
		ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
	}
	if (ctl < 0) {
		r = -errno;
		msg_errno("cannot open /dev/loop-control (is the loop module available?)");
		return r;
	}
	ffd = open(file, O_RDWR | O_CLOEXEC);
	if (ffd < 0) {
		r = -errno;
		msg_errno("cannot open %s", file);
		close(ctl);
		return r;
	}
	for (attempt = 0; attempt < 16; attempt++) {
		int n = ioctl(ctl, LOOP_CTL_GET_FREE);

		if (n < 0) {
			r = -errno;
			msg_errno("cannot get a free loop device");
			break;
		}
		snprintf(path, len, "/dev/loop%d", n);
		lfd = open(path, O_RDWR | O_CLOEXEC);
		if (lfd < 0) {
			r = -errno;
			usleep(10000);	/* the node may not be there yet */
			continue;
		}
		r = loop_configure(lfd, ffd, file, block_size, flags);
		if (r == -EINVAL && (flags & LO_FLAGS_DIRECT_IO)) {
			/* Some kernels refuse direct I/O the file system cannot do. */
			flags &= ~LO_FLAGS_DIRECT_IO;
			r = loop_configure(lfd, ffd, file, block_size, flags);
		}
		if (!r)
			break;
		close(lfd);
		lfd = -1;
		if (r != -EBUSY)	/* -EBUSY: someone else took it first */
			break;
	}
	close(ffd);
	close(ctl);
	if (lfd < 0) {
		errno = -r;
		msg_errno("cannot attach %s to a loop device", file);
		return r;
	}
	if (fstat(lfd, &st) < 0) {
		r = -errno;
		close(lfd);
		return r;
	}
	*dev = st.st_rdev;
	snprintf(sys, sizeof(sys), "/sys/dev/block/%u:%u/loop/dio",
		 major(st.st_rdev), minor(st.st_rdev));
	*dio = !read_u64_file(sys, &v) && v == 1;
	if (*dio && !loop_dio_works(path, block_size)) {
		/* Seen with tmpfs: the loop device claims direct I/O, and fails. */
		msg_debug("%s: direct I/O on %s fails: using the page cache", path, file);
		if (ioctl(lfd, LOOP_SET_DIRECT_IO, 0UL))
			msg_warn("%s: cannot turn direct I/O off", path);
		*dio = !read_u64_file(sys, &v) && v == 1;
	}
	return lfd;
}

int loop_backing_file(dev_t dev, char *buf, size_t len)
{
	char sys[PATH_MAX];
	int r;

	snprintf(sys, sizeof(sys), "/sys/dev/block/%u:%u/loop/backing_file",
		 major(dev), minor(dev));
	r = read_text_file(sys, buf, len);
	return r == -ENOENT ? -ENXIO : r;
}

static bool same_file(const char *backing, const char *file)
{
	size_t n = strlen(file);

	/* A deleted file shows as "<path> (deleted)". */
	return !strncmp(backing, file, n) &&
	       (!backing[n] || !strcmp(backing + n, " (deleted)"));
}

int loop_detach_file(dev_t dev, const char *file)
{
	char backing[PATH_MAX], path[PATH_MAX];
	int fd, i;

	if (loop_backing_file(dev, backing, sizeof(backing)))
		return 0;	/* already gone */
	if (!same_file(backing, file))
		return 0;	/* reused for something else */
	if (devno_path(dev, path, sizeof(path)))
		return -ENODEV;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	/* Busy: the kernel marks it auto-clear and detaches it on last close. */
	if (ioctl(fd, LOOP_CLR_FD, 0) && errno != ENXIO && errno != EBUSY) {
		int e = -errno;

		close(fd);
		return e;
	}
	close(fd);
	for (i = 0; i < 200; i++) {
		if (loop_backing_file(dev, backing, sizeof(backing)) ||
		    !same_file(backing, file))
			return 0;
		usleep(50000);
	}
	return -EBUSY;
}

bool loop_find_file(const char *file, dev_t *dev)
{
	char sys[PATH_MAX], backing[PATH_MAX], devstr[32];
	struct dirent *de;
	bool found = false;
	DIR *d;

	d = opendir("/sys/block");
	if (!d)
		return false;
	while (!found && (de = readdir(d))) {
		unsigned int ma, mi;

		if (strncmp(de->d_name, "loop", 4))
			continue;
		snprintf(sys, sizeof(sys), "/sys/block/%s/loop/backing_file", de->d_name);
		if (read_text_file(sys, backing, sizeof(backing)) || !same_file(backing, file))
			continue;
		snprintf(sys, sizeof(sys), "/sys/block/%s/dev", de->d_name);
		if (read_text_file(sys, devstr, sizeof(devstr)) ||
		    sscanf(devstr, "%u:%u", &ma, &mi) != 2)
			continue;
		*dev = makedev(ma, mi);
		found = true;
	}
	closedir(d);
	return found;
}
