// SPDX-License-Identifier: GPL-2.0
/*
 * fleece(8): the image's destination.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <linux/fs.h>

#include "fleece.h"
#include "output.h"
#include "util.h"

int output_check(const char *name)
{
	struct stat st;
	char *copy, *dir;
	int r = 0;

	if (!strcmp(name, "-")) {
		if (stdout_closed)
			return usage_err("-o -: standard output is closed");
		if (isatty(1))
			return usage_err("-o -: standard output is a terminal: redirect it, or give a file");
		return 0;
	}
	if (!*name)
		return usage_err("-o: empty file name");
	if (!stat(name, &st)) {
		if (S_ISDIR(st.st_mode))
			return usage_err("-o %s: a directory", name);
		if (S_ISBLK(st.st_mode) || S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode) ||
		    S_ISREG(st.st_mode))
			return 0;
		return usage_err("-o %s: not a file, block device or pipe", name);
	}
	copy = xstrdup(name);
	dir = dirname(copy);
	if (!strcmp(dir, "/dev") || !strncmp(dir, "/dev/", 5)) {
		/* e.g. the view's /dev/mapper/NAME-fleece-view, before it exists */
		r = usage_err("-o %s: no such device (an image is never created in /dev)", name);
	} else if (access(dir, W_OK)) {
		msg_errno("-o %s: cannot write in %s", name, dir);
		r = -EFLEECE_USAGE;
	}
	free(copy);
	return r;
}

void output_guard_add(struct output_guard *g, dev_t dev, const char *what)
{
	if (dev && g->n < ARRAY_SIZE(g->dev)) {
		g->dev[g->n] = dev;
		g->what[g->n++] = what;
	}
}

/*
 * A block device @dev as the output: not one of @g's devices, not built on
 * one (a partition of NAME), not under one (NAME's own disk).
 */
static int guard_blkdev(const char *name, dev_t dev, const struct output_guard *g)
{
	unsigned int i;

	for (i = 0; g && i < g->n; i++) {
		if (dev == g->dev[i] || devno_depends_on(dev, g->dev[i])) {
			msg_error("-o %s: it is %s, or built on it: refusing to write the image there",
				  name, g->what[i]);
			return -EFLEECE_REFUSED;
		}
		if (devno_depends_on(g->dev[i], dev)) {
			msg_error("-o %s: %s is built on it: refusing to write the image there",
				  name, g->what[i]);
			return -EFLEECE_REFUSED;
		}
	}
	return 0;
}

/*
 * A file in directory @dir: not on a file system on one of @g's devices,
 * followed as the fleece space is (deps.c: btrfs and overlayfs too).  What
 * cannot be told (NFS, FUSE...) is let through: the guard stops mistakes,
 * it does not vouch for every file system.
 */
static int guard_dir(const char *name, const char *dir, const struct output_guard *g)
{
	char why[256];
	struct stat st;
	unsigned int i;

	if (stat(dir, &st)) {
		int r = -errno;

		msg_errno("-o %s: %s", name, dir);
		return r;
	}
	for (i = 0; g && i < g->n; i++) {
		int r = path_depends(dir, g->dev[i], why, sizeof(why));

		if (r == 1) {
			msg_error("-o %s: the file would be on %s itself%s%s%s: refusing", name,
				  g->what[i], why[0] ? " (" : "", why, why[0] ? ")" : "");
			return -EFLEECE_REFUSED;
		}
		if (r < 0)
			msg_debug("-o %s: cannot tell whether %s is on %s: %s", name, dir,
				  g->what[i], why);
	}
	return 0;
}

static int open_blkdev(const char *name, const struct output_guard *g, struct output *out)
{
	struct stat st;
	int r;

	/* O_EXCL: EBUSY when mounted, or held by dm, md, a swap... */
	out->fd = open(name, O_WRONLY | O_EXCL | O_CLOEXEC);
	if (out->fd < 0) {
		if (errno == EBUSY) {
			msg_error("-o %s: in use (mounted, or held by another device or program)",
				  name);
			return -EFLEECE_REFUSED;
		}
		r = -errno;
		msg_errno("cannot open %s", name);
		return r;
	}
	if (fstat(out->fd, &st) || !S_ISBLK(st.st_mode)) {
		msg_error("-o %s: changed while it was opened", name);
		r = -ESTALE;
	} else {
		r = guard_blkdev(name, st.st_rdev, g);
	}
	if (r) {
		close(out->fd);
		out->fd = -1;
	}
	return r;
}

/* FILE.partial, new, 0600, never through a symlink: out->fd, or -errno. */
static int open_partial(const char *name, int flags, struct output *out)
{
	struct stat st;
	int r;

	/*
	 * New, never through a symlink, never someone else's: an image holds
	 * every secret of the disk, so 0600 whatever the umask.
	 */
	out->partial = xasprintf("%s.partial", name);
	out->fd = open(out->partial, flags | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (out->fd < 0) {
		r = errno == EEXIST ? -EFLEECE_REFUSED : -errno;
		if (errno == EEXIST)
			msg_error("%s exists: another backup to %s is running, or one was interrupted (its 'fleece stop' removes it): not touching it",
				  out->partial, name);
		else
			msg_errno("cannot create %s", out->partial);
		free(out->partial);
		out->partial = NULL;
		return r;
	}
	if (fstat(out->fd, &st) || !S_ISREG(st.st_mode)) {
		msg_error("%s: not a regular file", out->partial);
		close(out->fd);
		out->fd = -1;
		free(out->partial);
		out->partial = NULL;
		return -EINVAL;
	}
	out->is_file = true;
	return 0;
}

/* Copy the data of @src to @dst (holes stay holes): 0 or -errno. */
static int copy_data(int src, int dst, off_t size)
{
	off_t data = 0, hole;

	for (;;) {
		data = lseek(src, data, SEEK_DATA);
		if (data < 0)
			return errno == ENXIO ? 0 : -errno;
		hole = lseek(src, data, SEEK_HOLE);
		if (hole < 0)
			return -errno;
		while (data < hole) {
			off_t in = data, o = data;
			ssize_t n;

			if (fleece_signal)
				return -EINTR;
			n = copy_file_range(src, &in, dst, &o, (size_t)(hole - data), 0);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				return n ? -errno : -EIO;
			data += n;
		}
		if (hole >= size)
			return 0;
		data = hole;
	}
}

int output_open_clone(const char *name, const struct output_guard *g, dev_t dev, ino_t ino,
		      struct output *out)
{
	struct stat st;
	char *copy, sz[32];
	int src, r;

	memset(out, 0, sizeof(*out));
	out->name = name;
	out->fd = -1;
	copy = xstrdup(name);
	r = guard_dir(name, dirname(copy), g);
	free(copy);
	if (r)
		return r;
	src = open(name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (src < 0) {
		r = -errno;
		msg_errno("cannot open the previous image %s", name);
		return r;
	}
	if (fstat(src, &st) || !S_ISREG(st.st_mode) || st.st_dev != dev || st.st_ino != ino) {
		msg_error("%s: changed since it was checked", name);
		close(src);
		return -ESTALE;
	}
	r = open_partial(name, O_RDWR, out);
	if (r) {
		close(src);
		return r;
	}
	r = fault_point("ficlone");
	if (!r && ioctl(out->fd, FICLONE, src))
		r = -errno;
	if (r) {
		msg_info("%s: no reflink here (%s): copying it to %s first (%s)", name,
			 strerror(-r), out->partial, fmt_size(st.st_size, sz, sizeof(sz)));
		out->copied = true;
		r = copy_data(src, out->fd, st.st_size);
		if (!r && ftruncate(out->fd, st.st_size))
			r = -errno;
		if (r && r != -EINTR)
			msg_error("cannot copy %s to %s: %s", name, out->partial, strerror(-r));
	}
	close(src);
	if (r)
		return output_finish(out, r);
	return 0;
}

int output_scratch(const struct output *out)
{
	char *copy;
	int fd;

	if (!out->partial)
		return -1;
	copy = xstrdup(out->partial);
	fd = open(dirname(copy), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0)
		msg_debug("%s: no scratch file beside it (%s): the changed chunks are written in place",
			  out->partial, strerror(errno));
	free(copy);
	return fd;
}

int output_restart(struct output *out)
{
	if (ftruncate(out->fd, 0)) {
		int r = -errno;

		msg_errno("cannot empty %s", out->partial);
		return r;
	}
	return 0;
}

int output_open(const char *name, const struct output_guard *g, struct output *out)
{
	char *copy;
	struct stat st;
	int r;

	memset(out, 0, sizeof(*out));
	out->name = name;
	out->fd = -1;
	r = output_check(name);
	if (r)
		return r;
	if (!strcmp(name, "-")) {
		if (!fstat(1, &st) && S_ISBLK(st.st_mode) && guard_blkdev(name, st.st_rdev, g))
			return -EFLEECE_REFUSED;
		out->fd = 1;
		return 0;
	}
	if (!stat(name, &st) && S_ISBLK(st.st_mode))
		return open_blkdev(name, g, out);
	if (!stat(name, &st) && !S_ISREG(st.st_mode)) {
		/* A character device or a pipe: written in place, as a stream. */
		out->fd = open(name, O_WRONLY | O_CLOEXEC);
		if (out->fd < 0) {
			r = -errno;
			msg_errno("cannot open %s", name);
			return r;
		}
		return 0;
	}
	copy = xstrdup(name);
	r = guard_dir(name, dirname(copy), g);
	free(copy);
	if (r)
		return r;
	return open_partial(name, O_WRONLY, out);
}

int output_finish(struct output *out, int err)
{
	struct stat st;
	bool written = false;

	if (out->partial && out->fd >= 0 && !fstat(out->fd, &st))
		written = st.st_size > 0;
	if (out->fd > 2 && close(out->fd) && !err) {
		err = -errno;
		msg_errno("cannot close %s", out->name);
	}
	out->fd = -1;
	if (!out->partial)
		return err;
	if (!err) {
		if (rename(out->partial, out->name)) {
			err = -errno;
			msg_errno("cannot rename %s to %s", out->partial, out->name);
		} else {
			char *copy = xstrdup(out->name);

			fsync_dir(dirname(copy));
			free(copy);
		}
	}
	/*
	 * An unfinished image is removed, never kept: it looks like a disk
	 * image but is not one (and holds the disk's secrets).  Said once
	 * something was written, so that no one looks for it.
	 */
	if (err) {
		if (unlink(out->partial) && errno != ENOENT)
			msg_errno("cannot remove the incomplete image %s", out->partial);
		else if (written)
			msg_error("removed the incomplete image %s", out->partial);
	}
	free(out->partial);
	out->partial = NULL;
	return err;
}

void output_print_sha256(const struct output *out, const char *hex)
{
	/* With the image on standard output, the digest goes to stderr. */
	FILE *f = strcmp(out->name, "-") ? stdout : stderr;

	fprintf(f, "%s  %s\n", hex, out->name);
	fflush(f);
}

const char *result_word(int err)
{
	switch (-err) {
	case 0:
		return "ok";
	case EFLEECE_INVALID:
		return "invalid";
	case EFLEECE_REFUSED:
		return "refused";
	case EFLEECE_USAGE:
		return "usage";
	case EINTR:
		if (fleece_signal)
			return "interrupted";
		return "failed";
	default:
		return "failed";
	}
}

static void json_str_or_null(struct sbuf *sb, const char *s)
{
	if (s)
		sb_json_str(sb, s);
	else
		sb_printf(sb, "null");
}

void output_json_device(struct sbuf *sb, const struct result_json *j)
{
	const struct reader_result *res = j->res;
	const char *error = j->error;
	char sig[64];

	if (j->err == -EINTR && fleece_signal && !error) {
		snprintf(sig, sizeof(sig), "interrupted by signal %d", (int)fleece_signal);
		error = sig;
	} else if (j->err && !error) {
		error = strerror(-j->err);
	}
	sb_printf(sb, "{\"name\":");
	sb_json_str(sb, j->name);
	sb_printf(sb, ",\"output\":");
	json_str_or_null(sb, j->output);
	sb_printf(sb, ",\"result\":");
	sb_json_str(sb, result_word(j->err));
	sb_printf(sb, ",\"exit_code\":%d,\"error\":", exit_code(j->err));
	json_str_or_null(sb, j->err ? error : NULL);
	if (j->kind) {
		sb_printf(sb, ",\"kind\":");
		sb_json_str(sb, j->kind);
		sb_printf(sb, ",\"fallback_reason\":");
		json_str_or_null(sb, j->fallback);
	}
	if (res) {
		sb_printf(sb, ",\"size_bytes\":%llu,\"bytes_read\":%llu,\"bytes_written\":%llu,\"zero_bytes\":%llu,\"released_bytes\":%llu,\"output_syncs\":%u,\"seconds\":%.3f",
			  (unsigned long long)res->size, (unsigned long long)res->bytes_read,
			  (unsigned long long)res->bytes_written,
			  (unsigned long long)res->zero_bytes,
			  (unsigned long long)res->released_bytes, res->syncs, res->seconds);
	} else {
		sb_printf(sb, ",\"size_bytes\":null,\"bytes_read\":0,\"bytes_written\":0,\"zero_bytes\":0,\"released_bytes\":0,\"output_syncs\":0,\"seconds\":null");
	}
	sb_printf(sb, ",\"sha256\":");
	json_str_or_null(sb, !j->err && j->sha256 && res ? res->sha256 : NULL);
	if (j->have_fleece)
		sb_printf(sb, ",\"cbw_count\":%llu,\"fleece_peak_bytes\":%llu,\"fleece_peak_exact\":%s",
			  (unsigned long long)j->cbw_count, (unsigned long long)j->fleece_peak,
			  j->fleece_peak_exact ? "true" : "false");
	else
		sb_printf(sb, ",\"cbw_count\":null,\"fleece_peak_bytes\":null,\"fleece_peak_exact\":null");
	sb_printf(sb, "}");
}

void output_json_print(const char *command, int err, const struct sbuf *devices)
{
	struct sbuf sb = { 0 };

	sb_printf(&sb, "{\"command\":");
	sb_json_str(&sb, command);
	sb_printf(&sb, ",\"result\":");
	sb_json_str(&sb, result_word(err));
	sb_printf(&sb, ",\"exit_code\":%d,\"devices\":[%s]}\n", exit_code(err),
		  devices->s ? devices->s : "");
	fputs(sb.s, stdout);
	fflush(stdout);
	sb_free(&sb);
}
