// SPDX-License-Identifier: GPL-2.0
/*
 * The reader, shared by "fleece backup" and "fleece read": reads a
 * fleece-view with O_DIRECT in large chunk-aligned blocks, one block ahead
 * (readahead.c; an incremental's scattered ranges, several at a time),
 * writes the image (holes for all-zero chunks in a regular
 * file, a plain stream otherwise), and discards what it wrote on the view
 * once it is safely written, which releases its chunks: no more
 * copy-before-write for them, and their fleece space is freed.  Releases go
 * in batches (up to BATCH_BYTES or BATCH_SECS of blocks): one sync of the
 * output, then one discard per range, rather than a sync per block.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <linux/fs.h>

#include "fleece.h"
#include "incremental.h"
#include "opts.h"
#include "output.h"
#include "readahead.h"
#include "remap.h"
#include "sha256.h"
#include "util.h"

#define DEFAULT_BLOCK	(4ULL << 20)
#define MAX_BLOCK	(256ULL << 20)

/*
 * A batch of saved blocks is released (the output synced once, then the
 * view discarded) once it holds BATCH_BYTES, is BATCH_SECS old, or has
 * BATCH_RANGES separate ranges (an incremental's scattered extents).
 * Release lags the read by at most that much; the fleece holds a batch's
 * copies meanwhile.  A batch whose gaps the kernel released already is
 * one span, one discard (reader_run_extents()).
 */
#define BATCH_BYTES	(64ULL << 20)
#define BATCH_SECS	1.0
#define BATCH_RANGES	64

/*
 * An incremental's scattered ranges are read EXT_THREADS blocks at a time,
 * in blocks of at most EXT_BLOCK_MAX bytes (2 * EXT_THREADS buffers): a
 * 64 KiB chunk read alone waits for the device's latency, which its
 * transfer does not hide.  With 2 ms of read latency (dm-delay) a 10%
 * incremental of 2 GiB read in 6.2 s against 28 s one at a time; with
 * none, as fast within the noise (tests/results/2026-12-02-incremental-
 * reader-8-reads-at-a-time.txt).  Those runs woke all eight threads per
 * block (one condition variable); since each wakes only whom it concerns,
 * a 10% incremental of 2 GiB took 13.7 s against 19.9 s (medians; about 7
 * context switches per chunk against 20: tests/results/2026-12-02-
 * readahead-two-conditions-perf-6634515.txt).
 */
#define EXT_THREADS	8
#define EXT_BLOCK_MAX	(1ULL << 20)

int view_chunk_bytes(dev_t view, uint64_t *bytes)
{
	char path[PATH_MAX];

	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/queue/discard_granularity",
		 major(view), minor(view));
	if (read_u64_file(path, bytes) || !*bytes)
		return -ENOENT;
	return 0;
}

/* Options shared by read and backup; 1 when @opt is not one of them. */
int reader_parse_opt(struct reader_opts *o, int opt, const char *arg)
{
	uint64_t v;
	double secs;

	switch (opt) {
	case 'o':
		o->output = arg;
		return 0;
	case 'q':	/* quiet: no progress either */
		o->progress = PROGRESS_NONE;
		return 0;
	case 's':
		o->sha256 = true;
		return 0;
	case 'j':
		o->json = true;
		return 0;
	case 'r':
		if (parse_size(arg, &v) || !v)
			return usage_error("--rate '%s': not a size per second (e.g. 50M)", arg);
		o->rate = v;
		return 0;
	case 'b':
		if (parse_size(arg, &v) || v < 4096 || v > MAX_BLOCK || (v & 4095))
			return usage_error("--block-size '%s': a multiple of 4K up to 256M", arg);
		o->block_bytes = v;
		return 0;
	case 'p':
		if (!strcmp(arg, "auto"))
			o->progress = PROGRESS_AUTO;
		else if (!strcmp(arg, "bar"))
			o->progress = PROGRESS_BAR;
		else if (!strcmp(arg, "lines") || !strcmp(arg, "plain"))
			o->progress = PROGRESS_LINES;
		else if (!strcmp(arg, "none"))
			o->progress = PROGRESS_NONE;
		else
			return usage_error("--progress '%s': one of auto, bar, lines, none", arg);
		return 0;
	case 'i':
		if (parse_seconds(arg, &secs) || secs < 0.1)
			return usage_error("--interval '%s': seconds, at least 0.1", arg);
		o->interval = secs;
		return 0;
	case 'N':
		o->discard = false;
		return 0;
	default:
		return 1;
	}
}

struct progress {
	const struct reader_opts *o;
	enum progress_mode mode;
	double t0, last, last_tick;
	uint64_t size;
	bool drawn;
};

static void progress_show(struct progress *p, uint64_t done, bool final)
{
	double now = now_mono(), el = now - p->t0, rate, eta;
	char a[32], b[32], c[32], d[32];
	double period = p->mode == PROGRESS_BAR ? 0.25 : p->o->interval;

	if (p->o->tick && (final || now - p->last_tick >= 1.0)) {
		p->last_tick = now;
		p->o->tick(p->o->tick_arg);
	}
	if (!final && (now - p->last < period || done >= p->size))
		return;
	p->last = now;
	if (p->mode == PROGRESS_NONE)
		return;
	rate = el > 0 ? done / el : 0;
	eta = rate > 0 ? (p->size - done) / rate : -1;
	fmt_size(done, a, sizeof(a));
	fmt_size(p->size, b, sizeof(b));
	fmt_size((uint64_t)rate, c, sizeof(c));
	if (final)
		fmt_duration(el, d, sizeof(d));
	else
		fmt_duration(eta, d, sizeof(d));
	if (p->mode == PROGRESS_BAR) {
		char bar[31];
		int fill = p->size ? (int)(30.0 * done / p->size) : 30, i;

		for (i = 0; i < 30; i++)
			bar[i] = i < fill ? '#' : '.';
		bar[30] = '\0';
		fprintf(stderr, "\r%s [%s] %3d%% %s / %s  %s/s  %s %s \033[K",
			p->o->label, bar, p->size ? (int)(100.0 * done / p->size) : 100,
			a, b, c, final ? "in" : "ETA", d);
		if (final)
			fputc('\n', stderr);
		p->drawn = true;
	} else {
		fprintf(stderr, "%s: %s: %s of %s (%d%%), %s/s, %s %s\n", prog,
			p->o->label, a, b, p->size ? (int)(100.0 * done / p->size) : 100,
			c, final ? "done in" : "ETA", d);
	}
	fflush(stderr);
}

static bool all_zero(const unsigned char *p, size_t len)
{
	const uint64_t *w = (const uint64_t *)p;
	size_t i;

	for (i = 0; i < len / 8; i++)
		if (w[i])
			return false;
	for (i = len & ~(size_t)7; i < len; i++)
		if (p[i])
			return false;
	return true;
}

/* Is the view invalid (a copy failed), rather than some other I/O error? */
static bool view_is_invalid(dev_t view)
{
	struct dmw_info info;
	struct dmw_table s;
	bool invalid = false;

	if (dmw_info_devno(view, &info) || !info.exists)
		return false;
	if (!dmw_get_status(info.name, &s) && s.n == 1)
		invalid = strstr(s.t[0].params, FLEECE_STATE_INVALID) != NULL;
	dmw_table_free(&s);
	return invalid;
}

/* A signal asked us to stop: -EINTR (exit 128 + signal), noted in @res. */
static int stop_requested(struct reader_result *res)
{
	if (!fleece_signal)
		return 0;
	res->interrupted = true;
	return -EINTR;
}

/* One run of the reader: what the phases below share. */
struct reader {
	const struct reader_opts *o;
	struct reader_result *res;
	int fd;				/* the view, O_DIRECT, O_EXCL */
	dev_t dev;
	uint64_t size, chunk, block, off;
	uint64_t done;			/* bytes read and written so far */
	bool discard;			/* releasing what is written */
	int out_fd;
	bool out_is_file;		/* holes for zero chunks */
	bool punch;			/* the file has data there: punch them */
	bool unshare;			/* shared with the previous image: punch first */
	struct remap *remap;		/* or remapped in from a scratch file */
	bool out_sync;			/* synced before each release */
	bool kick;			/* writeback started per block */
	bool span;			/* a batch is released as one span */
	struct {			/* written, not yet released: in order */
		uint64_t off, len;
	} pend[BATCH_RANGES];
	unsigned int n_pend;
	uint64_t pend_bytes;
	double pend_t0;			/* when the batch's first block was saved */
	struct readahead *ra;
	struct sha256 sha;		/* --sha256: fed by the readahead's hasher */
	bool hashing;
	struct progress prog;
};

/*
 * Open: the view, exclusively (O_EXCL: one reader per view; two would each
 * release chunks the other has not read yet, and both fail), its size and
 * chunk.  0, or -errno with a message (-EFLEECE_REFUSED: the view is in
 * use); on failure nothing is left open.
 */
static int reader_open(struct reader *rd)
{
	const struct reader_opts *o = rd->o;
	struct stat st;
	int r;

	/*
	 * A released chunk is gone from the view: whatever holds the image
	 * (a file, also behind standard output, or a block device) is synced
	 * before each release (reader_release_batch()).  A pipe cannot be: its reader gets data that is
	 * released already (fleece(8)).
	 */
	rd->out_sync = rd->out_is_file ||
		       (!fstat(rd->out_fd, &st) && (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode)));
	rd->fd = open(o->view, (rd->discard ? O_RDWR : O_RDONLY) | O_DIRECT | O_EXCL | O_CLOEXEC);
	if (rd->fd < 0 && rd->discard && (errno == EROFS || errno == EACCES)) {
		msg_warn("%s: the view is read-only: reading it without releasing chunks", o->label);
		rd->discard = false;
		rd->fd = open(o->view, O_RDONLY | O_DIRECT | O_EXCL | O_CLOEXEC);
	}
	if (rd->fd < 0 && errno == EBUSY) {
		msg_error("%s: the view %s is in use (another reader has it open)", o->label,
			  o->view);
		return -EFLEECE_REFUSED;
	}
	if (rd->fd < 0) {
		r = -errno;
		msg_errno("cannot open the view %s", o->view);
		return r;
	}
	if (fstat(rd->fd, &st) || !S_ISBLK(st.st_mode) || blkdev_size(rd->fd, &rd->size)) {
		msg_error("%s: not a block device", o->view);
		r = -ENOTBLK;
		goto fail;
	}
	rd->dev = st.st_rdev;
	if (view_chunk_bytes(rd->dev, &rd->chunk))
		rd->chunk = 4096;
	rd->block = o->block_bytes ? o->block_bytes : DEFAULT_BLOCK;
	if (rd->block < rd->chunk)
		rd->block = rd->chunk;
	rd->block -= rd->block % rd->chunk;
	rd->res->size = rd->size;
	rd->prog.o = o;
	rd->prog.size = rd->size;
	rd->prog.mode = o->progress;
	if (rd->prog.mode == PROGRESS_AUTO)
		rd->prog.mode = isatty(2) ? PROGRESS_BAR : PROGRESS_LINES;
	rd->prog.t0 = rd->prog.last = rd->prog.last_tick = now_mono();
	msg_debug("reading %s: %llu bytes, chunk %llu, block %llu", o->view,
		  (unsigned long long)rd->size, (unsigned long long)rd->chunk,
		  (unsigned long long)rd->block);
	return 0;
fail:
	close(rd->fd);
	rd->fd = -1;
	return r;
}

/*
 * The block at rd->off, read ahead: 0 with *buf, or -errno with a message:
 * -EFLEECE_INVALID when the view became invalid (a copy failed), which
 * leaves the image incomplete.
 */
static int reader_get(struct reader *rd, const unsigned char **buf)
{
	uint64_t error_off = rd->off;
	int r = fault_point("read");

	*buf = r ? NULL : readahead_next(rd->ra, &error_off);
	if (*buf)
		return 0;
	if (!r)
		r = errno ? -errno : -EIO;
	if (view_is_invalid(rd->dev)) {
		rd->res->view_invalid = true;
		msg_error("%s: the view became invalid at %llu bytes (a copy-before-write failed or timed out): the image is incomplete",
			  rd->o->label, (unsigned long long)error_off);
		return -EFLEECE_INVALID;
	}
	errno = -r;
	msg_errno("%s: read error at %llu bytes", rd->o->label, (unsigned long long)error_off);
	return r;
}

/* A failed write of the output: -EINTR when a signal broke it, else -errno. */
static int reader_write_failed(struct reader *rd)
{
	int r = -errno;

	if (r == -EINTR && stop_requested(rd->res))
		return -EINTR;
	if (r == -EPIPE)
		msg_error("%s: the output was closed (broken pipe)", rd->o->label);
	else
		msg_errno("%s: cannot write the output", rd->o->label);
	return r;
}

/*
 * Punch @len bytes at @off out of the output file (a hole, the size kept):
 * 1 when punched, 0 when its file system cannot punch (EOPNOTSUPP), or
 * -errno with a message.
 */
static int reader_punch(struct reader *rd, uint64_t off, uint64_t len)
{
	if (!fallocate(rd->out_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
		       (off_t)len))
		return 1;
	if (errno != EOPNOTSUPP)
		return reader_write_failed(rd);
	return 0;
}

/*
 * Before @len bytes at @off of a file that shares its extents with the
 * previous image are written: punch them, so that the write allocates
 * fresh space (placed together with the batch's other blocks when it is
 * synced) instead of copying a shared extent on write, block by block:
 * on xfs under TCG 2621 scattered 64 KiB chunks took 2.4-2.6 s so
 * against 3.1-10.1 s (tests/results/2026-12-02-incremental-clone-writes-
 * punch-a0fbd56.txt).  Zero chunks are then left as they are: holes.  A
 * file system that cannot punch (EOPNOTSUPP) is written in place from then
 * on.  0, or -errno with a message.
 */
static int reader_unshare(struct reader *rd, uint64_t off, size_t len)
{
	int r;

	if (!rd->unshare)
		return 0;
	r = reader_punch(rd, off, len);
	if (!r)
		rd->unshare = false;
	return r < 0 ? r : 0;
}

/*
 * Write @n bytes of @buf, the block at rd->off, to the output (all-zero
 * chunks of a file left as holes).  Not synced: reader_saved() batches the
 * block for a release after a sync.
 */
static int reader_put(struct reader *rd, const unsigned char *buf, size_t n)
{
	struct reader_result *res = rd->res;
	size_t i;
	int r;

	if (!rd->out_is_file) {
		if (!write_all(rd->out_fd, buf, n))
			return reader_write_failed(rd);
		res->bytes_written += n;
	} else {
		for (i = 0; i < n; i += rd->chunk) {
			size_t len = n - i < rd->chunk ? n - i : rd->chunk;

			if (all_zero(buf + i, len)) {
				res->zero_bytes += len;
				if (!rd->punch || rd->unshare)
					continue;
				r = reader_punch(rd, rd->off + i, len);
				if (r < 0)
					return r;
				if (r)
					continue;
				/* No holes here: write the zeros. */
			}
			if (rd->remap) {
				r = remap_add(rd->remap, buf + i, len, rd->off + i);
				if (r) {
					errno = -r;
					return reader_write_failed(rd);
				}
			} else if (!pwrite_all(rd->out_fd, buf + i, len, (off_t)(rd->off + i))) {
				return reader_write_failed(rd);
			}
			res->bytes_written += len;
		}
	}
	return 0;
}

/*
 * Release @len bytes at @off of the view (BLKDISCARD): no more copies for
 * their chunks, and their fleece space is freed; @credit of them count as
 * released here (a span's gaps were counted before).  Only what is
 * durable in the output, or unchanged since the previous image, comes
 * here.  A failure is not the image's: the chunks stay in the fleece,
 * releasing stops, and a warning says so (not an error: --json's "error"
 * is the one that failed the run); 0.  But a view that became invalid
 * fails every read to come: -EFLEECE_INVALID, with a message.
 */
static int reader_discard(struct reader *rd, uint64_t off, uint64_t len, uint64_t credit)
{
	uint64_t range[2] = { off, len };
	int r;

	if (!rd->discard)
		return 0;
	r = fault_point("discard");
	if (!r && ioctl(rd->fd, BLKDISCARD, range))
		r = -errno;
	if (r) {
		if (view_is_invalid(rd->dev)) {
			rd->res->view_invalid = true;
			msg_error("%s: the view became invalid before %llu bytes (a copy-before-write failed or timed out): the image is incomplete",
				  rd->o->label, (unsigned long long)(off + len));
			return -EFLEECE_INVALID;
		}
		msg_warn("%s: cannot discard the chunks just saved (their copies stay in the fleece): %s",
			 rd->o->label, strerror(-r));
		rd->discard = false;
		return 0;
	}
	rd->res->released_bytes += credit;
	return 0;
}

/*
 * The image's bytes at @off, @len of them (0: to the end), are synced:
 * drop their pages from the page cache.  A backup writes each byte once
 * and does not read it back; left cached, an image as large as the device
 * pushes out what the host's programs use, and whoever frees those pages
 * later pays for them (the rename that replaces the image at the next
 * incremental: about 3 s for 16 GiB under TCG).  A stream is dropped
 * whole: its offsets are not the view's.  A hint: a failure changes
 * nothing.
 */
static void reader_drop_cache(struct reader *rd, uint64_t off, uint64_t len)
{
	if (rd->out_is_file)
		posix_fadvise(rd->out_fd, (off_t)off, (off_t)len, POSIX_FADV_DONTNEED);
	else if (rd->out_sync)
		posix_fadvise(rd->out_fd, 0, 0, POSIX_FADV_DONTNEED);
}

/*
 * The chunks waiting in rd->remap into the output (remap.h), before a sync
 * of the output makes them durable.  0, or -errno with a message.
 */
static int reader_remap_flush(struct reader *rd)
{
	int r;

	if (!rd->remap)
		return 0;
	r = remap_flush(rd->remap);
	if (r) {
		errno = -r;
		return reader_write_failed(rd);
	}
	return 0;
}

/*
 * Release the batch of saved ranges: the output synced (fdatasync) unless
 * @synced says it just was, then each range discarded on the view.
 *
 * The invariant, enforced here: a chunk is released only after its bytes
 * in the output are durable (a sync of the output returned 0 after they
 * were written).  A pipe cannot be synced: there, after they were written
 * (fleece(8)).  A failed sync releases nothing.  A batch not released when
 * the read stops (an error, a signal) stays in the fleece.  0, or -errno
 * with a message.
 */
static int reader_release_batch(struct reader *rd, bool synced)
{
	unsigned int i;
	int r = 0;

	if (!rd->n_pend)
		return 0;
	if (rd->discard && rd->out_sync && !synced) {
		r = reader_remap_flush(rd);
		if (r)
			return r;
		if (fdatasync(rd->out_fd)) {
			int r = -errno;

			msg_errno("%s: cannot sync the output", rd->o->label);
			return r;
		}
		rd->res->syncs++;
	}
	for (i = 0; !r && i < rd->n_pend; i++) {
		/* @synced: reader_finish() has just dropped all of it. */
		if (rd->out_sync && !synced)
			reader_drop_cache(rd, rd->pend[i].off, rd->pend[i].len);
		r = reader_discard(rd, rd->pend[i].off, rd->pend[i].len,
				   rd->span ? rd->pend_bytes : rd->pend[i].len);
	}
	rd->n_pend = 0;
	rd->pend_bytes = 0;
	return r;
}

/*
 * @n bytes at @off of the view are written to the output: start their
 * writeback if rd->kick (so that the batch's sync has little left to wait
 * for) and add them to the batch, which is released when full or old.  0,
 * or -errno with a message.
 */
static int reader_saved(struct reader *rd, uint64_t off, size_t n)
{
	unsigned int k = rd->n_pend;
	int r;

	if (!rd->discard)
		return 0;
	/* A hint: errors, if any, come from the sync. */
	if (rd->out_sync && rd->kick)
		sync_file_range(rd->out_fd, rd->out_is_file ? (off64_t)off : 0,
				rd->out_is_file ? (off64_t)n : 0, SYNC_FILE_RANGE_WRITE);
	if (k && (rd->pend[k - 1].off + rd->pend[k - 1].len == off || rd->span)) {
		rd->pend[k - 1].len = off + n - rd->pend[k - 1].off;
	} else {
		if (k == BATCH_RANGES) {
			r = reader_release_batch(rd, false);
			if (r)
				return r;
		}
		if (!rd->n_pend)
			rd->pend_t0 = now_mono();
		rd->pend[rd->n_pend].off = off;
		rd->pend[rd->n_pend].len = n;
		rd->n_pend++;
	}
	rd->pend_bytes += n;
	if (rd->pend_bytes >= BATCH_BYTES || now_mono() - rd->pend_t0 >= BATCH_SECS)
		return reader_release_batch(rd, false);
	return 0;
}

/* Hold back to --rate; -EINTR when a signal comes meanwhile. */
static int reader_throttle(struct reader *rd)
{
	double ahead;

	if (!rd->o->rate)
		return 0;
	ahead = (double)rd->done / rd->o->rate - (now_mono() - rd->prog.t0);
	while (ahead > 0) {
		if (stop_requested(rd->res))
			return -EINTR;
		sleep_secs(ahead > 0.2 ? 0.2 : ahead);
		ahead = (double)rd->done / rd->o->rate - (now_mono() - rd->prog.t0);
	}
	return 0;
}

/*
 * One block, @n bytes at rd->off, the next the readahead hands over: read,
 * written (punched first when shared with the previous image), batched for
 * release, with progress and the rate limit.  0, or -errno with a message
 * (-EFLEECE_INVALID, -EINTR after a signal).
 */
static int reader_block(struct reader *rd, size_t n)
{
	const unsigned char *buf;
	int r = stop_requested(rd->res);

	if (!r)
		r = reader_get(rd, &buf);
	if (r)
		return r;
	rd->res->bytes_read += n;
	r = reader_unshare(rd, rd->off, n);
	if (!r)
		r = reader_put(rd, buf, n);
	if (!r)
		r = reader_saved(rd, rd->off, n);
	if (r)
		return r;
	readahead_done(rd->ra);
	rd->done += n;
	progress_show(&rd->prog, rd->done, false);
	return reader_throttle(rd);
}

/*
 * The loop: each block in turn until the end of the view.  0, or -errno
 * with a message (-EFLEECE_INVALID, -EINTR after a signal); what was
 * written stays for the caller to remove.
 */
static int reader_loop(struct reader *rd)
{
	size_t n;
	int r = 0;

	while (!r && rd->off < rd->size) {
		n = rd->size - rd->off < rd->block ? (size_t)(rd->size - rd->off) :
						     (size_t)rd->block;
		r = reader_block(rd, n);
		rd->off += n;
	}
	return r;
}

/*
 * Finish: a file gets its full size (a trailing hole) and is synced, a
 * block device or a file behind standard output synced, and the last batch
 * released after that sync; the digest and the last progress line.  0, or
 * -errno with a message.
 */
static int reader_finish(struct reader *rd)
{
	int r = reader_remap_flush(rd);

	if (r)
		return r;
	if ((rd->out_is_file && ftruncate(rd->out_fd, (off_t)rd->size)) ||
	    ((rd->out_is_file || rd->out_sync) && fsync(rd->out_fd))) {
		int r = -errno;

		msg_errno("%s: cannot finish the output", rd->o->label);
		return r;
	}
	if (rd->out_is_file || rd->out_sync) {
		rd->res->syncs++;
		/* All of it: without releases (a read-only view) no batch dropped any. */
		reader_drop_cache(rd, 0, 0);
	}
	r = reader_release_batch(rd, rd->out_is_file || rd->out_sync);
	if (r)
		return r;
	if (rd->hashing) {
		r = readahead_hash_wait(rd->ra);
		if (!r)
			r = sha256_final(&rd->sha, rd->res->sha256);
		if (r) {
			msg_error("%s: cannot compute the SHA-256: %s", rd->o->label, strerror(-r));
			return r;
		}
	}
	rd->res->seconds = now_mono() - rd->prog.t0;
	progress_show(&rd->prog, rd->done, true);
	return 0;
}

/*
 * The end of a run, whole device or extents: @r is its loop's result.
 * Finished when the loop succeeded; on a failure the progress line is
 * closed and an interrupt reported as -EINTR.  The time is taken either way.
 */
static int reader_end(struct reader *rd, int r)
{
	if (!r)
		r = reader_finish(rd);
	if (r && rd->prog.drawn)
		fputc('\n', stderr);
	if (r && rd->res->interrupted)
		r = -EINTR;
	rd->res->seconds = now_mono() - rd->prog.t0;
	return r;
}

/*
 * The blocks of @ext, each range cut in pieces of at most EXT_BLOCK_MAX
 * bytes: *@blocks (malloc'ed) and *@n_blocks; 0, or -errno with a message
 * (a range not chunk-aligned within the view: -EINVAL).
 */
static int reader_extent_blocks(struct reader *rd, const struct reader_extent *ext,
				unsigned int n_ext, struct readahead_range **blocks,
				uint64_t *n_blocks)
{
	uint64_t block = rd->block < EXT_BLOCK_MAX ? rd->block : EXT_BLOCK_MAX;
	uint64_t n = 0, k = 0, off;
	unsigned int i;

	for (i = 0; i < n_ext; i++) {
		if (ext[i].off + ext[i].len > rd->size || ext[i].off % rd->chunk) {
			msg_error("%s: range %llu+%llu is not chunk-aligned within the view",
				  rd->o->label, (unsigned long long)ext[i].off,
				  (unsigned long long)ext[i].len);
			return -EINVAL;
		}
		n += (ext[i].len + block - 1) / block;
	}
	*blocks = malloc((n ? n : 1) * sizeof(**blocks));
	if (!*blocks) {
		msg_error("out of memory");
		return -ENOMEM;
	}
	for (i = 0; i < n_ext; i++) {
		for (off = ext[i].off; off < ext[i].off + ext[i].len; off += block, k++) {
			uint64_t end = ext[i].off + ext[i].len;

			(*blocks)[k].off = off;
			(*blocks)[k].len = end - off < block ? (size_t)(end - off) : (size_t)block;
		}
	}
	*n_blocks = n;
	return 0;
}

/*
 * What is not to be read is unchanged since the previous image: release it
 * first (the kernel did already when it applied the tracker's set at the
 * point in time; if it did not, this stops its copies now).  No sync is
 * owed: those bytes are in FILE, the previous image, durable.  When the
 * kernel released all of them (rd->span), one discard per gap would only
 * cost time.
 */
static int reader_release_gaps(struct reader *rd, const struct reader_extent *ext,
			       unsigned int n_ext)
{
	unsigned int i;
	int r = 0;

	for (i = 0, rd->off = 0; !r && i <= n_ext; i++) {
		uint64_t next = i < n_ext ? ext[i].off : rd->size;

		if (next > rd->off) {
			if (rd->span)
				rd->res->released_bytes += next - rd->off;
			else
				r = reader_discard(rd, rd->off, next - rd->off, next - rd->off);
		}
		if (i < n_ext)
			rd->off = ext[i].off + ext[i].len;
	}
	return r;
}

/*
 * reader_loop() over the ranges @ext only (reader_run_extents()), sorted
 * and apart: their blocks are read EXT_THREADS at a time and written in
 * order.
 */
static int reader_extents_loop(struct reader *rd, const struct reader_extent *ext,
			       unsigned int n_ext)
{
	struct readahead_range *blocks;
	uint64_t n, k;
	int r;

	r = reader_extent_blocks(rd, ext, n_ext, &blocks, &n);
	if (r)
		return r;
	r = reader_release_gaps(rd, ext, n_ext);
	if (!r && n) {
		rd->ra = readahead_start_ranges(rd->fd, blocks, n, EXT_THREADS);
		if (!rd->ra) {
			r = -errno;
			msg_errno("cannot start reading with %d threads", EXT_THREADS);
		}
	}
	for (k = 0; !r && k < n; k++) {
		rd->off = blocks[k].off;
		r = reader_block(rd, blocks[k].len);
	}
	readahead_stop(rd->ra);
	rd->ra = NULL;
	free(blocks);
	return r;
}

int reader_run_extents(const struct reader_opts *o, int out_fd, int scratch_fd,
		       const struct reader_extent *ext, unsigned int n,
		       unsigned int flags, struct reader_result *res)
{
	/*
	 * Scattered blocks into a clone of the previous image: writeback
	 * started per block costs a copy-on-write allocation and completion
	 * each; the batch's sync writes them together.  When the kernel
	 * released every chunk outside @ext (READ_EXT_OUTSIDE_RELEASED), a batch is
	 * released with one discard over its span, the gaps included.
	 */
	struct reader rd = {
		.o = o, .res = res, .fd = -1, .discard = o->discard,
		.out_fd = out_fd, .out_is_file = true, .punch = true,
		.span = flags & READ_EXT_OUTSIDE_RELEASED,
		.unshare = flags & READ_EXT_SHARED,
	};
	uint64_t total = 0;
	unsigned int i;
	int r;

	memset(res, 0, sizeof(*res));
	if (rd.unshare && scratch_fd >= 0) {
		r = remap_open(&rd.remap, out_fd, scratch_fd);
		if (r) {
			msg_error("out of memory");
			return r;
		}
		rd.unshare = false;	/* a clone replaces the shared blocks */
	}
	r = reader_open(&rd);
	if (!r) {
		for (i = 0; i < n; i++)
			total += ext[i].len;
		rd.prog.size = total;
		r = reader_end(&rd, reader_extents_loop(&rd, ext, n));
		close(rd.fd);
	}
	if (rd.remap) {
		remap_counts(rd.remap, &res->cloned_bytes, &res->clone_refused_bytes);
		remap_close(rd.remap);
	}
	return r;
}

int reader_run(const struct reader_opts *o, int out_fd, bool out_is_file,
	       struct reader_result *res)
{
	struct reader rd = {
		.o = o, .res = res, .fd = -1, .discard = o->discard,
		.out_fd = out_fd, .out_is_file = out_is_file, .kick = true,
	};
	int r;

	memset(res, 0, sizeof(*res));
	r = reader_open(&rd);
	if (r)
		return r;
	if (o->sha256) {
		r = sha256_init(&rd.sha);
		if (r) {
			msg_error("%s: cannot start the SHA-256: %s", o->label, strerror(-r));
			close(rd.fd);
			return r;
		}
		rd.hashing = true;
	}
	rd.ra = readahead_start(rd.fd, rd.size, rd.block, rd.hashing ? &rd.sha : NULL);
	if (!rd.ra) {
		r = -errno;
		msg_errno("cannot start reading with two %llu-byte buffers",
			  (unsigned long long)rd.block);
		sha256_free(&rd.sha);
		close(rd.fd);
		return r;
	}
	r = reader_end(&rd, reader_loop(&rd));
	readahead_stop(rd.ra);
	sha256_free(&rd.sha);
	close(rd.fd);
	return r;
}

static void read_help(void)
{
	printf("Usage: fleece read [OPTIONS] VIEW -o FILE|-\n"
	       "\n"
	       "Read a fleece view (a fleece-view device, e.g. /dev/mapper/NAME-fleece-view,\n"
	       "set up by 'fleece start' or by hand) to FILE or to standard output, and\n"
	       "discard each block on the view once it is written, which releases it.\n"
	       "FILE is written as FILE.partial and renamed when complete.\n"
	       "\n"
	       "Options:\n"
	       HELP_READER
	       "  -N, --no-discard          do not discard: the view keeps every chunk\n"
	       HELP_COMMON);
}

static int read_opt(int c, const char *arg, void *ctx)
{
	return reader_parse_opt(ctx, c, arg);
}

/*
 * The view @arg, a fleece-view and nothing else (the reader discards what
 * it reads): its device node in @view, its dm name in @name, and the
 * devices the output must not be (the view, its origin and fleece device)
 * in @guard.  0, or -errno with a message.
 */
static int read_resolve(const char *arg, char *view, size_t vlen, char *name, size_t nlen,
			struct output_guard *guard)
{
	struct dmw_info info;
	struct dmw_table t;
	dev_t od = 0, fd = 0;
	char *copy, *save = NULL, *tok;
	int r;

	r = resolve_dm_name(arg, name, nlen);
	if (r)
		return r;
	r = dmw_get_table(name, false, &t);
	if (r) {
		msg_error("%s: cannot read its table: %s", arg, dmw_strerror(r));
		return r;
	}
	if (t.n != 1 || strcmp(t.t[0].type, FLEECE_VIEW_TARGET_NAME)) {
		dmw_table_free(&t);
		msg_error("%s: not a fleece view (its table is not one '%s' target)", arg,
			  FLEECE_VIEW_TARGET_NAME);
		return -EFLEECE_REFUSED;
	}
	copy = xstrdup(t.t[0].params);
	tok = strtok_r(copy, " ", &save);
	if (tok)
		parse_devno(tok, &od);
	tok = strtok_r(NULL, " ", &save);
	if (tok)
		parse_devno(tok, &fd);
	free(copy);
	dmw_table_free(&t);
	r = dmw_info(name, &info);
	if (r || !info.exists) {
		msg_error("%s: cannot query device-mapper: %s", arg,
			  r ? dmw_strerror(r) : "no such device");
		return r ? r : -ENXIO;
	}
	if (devno_path(makedev(info.major, info.minor), view, vlen)) {
		msg_error("%s: no device node", arg);
		return -ENOENT;
	}
	output_guard_add(guard, makedev(info.major, info.minor), "the view");
	output_guard_add(guard, od, "the view's origin");
	output_guard_add(guard, fd, "the view's fleece device");
	return 0;
}

int cmd_read(int argc, char **argv)
{
	static const struct option opts[] = {
		LONGOPTS_READER,
		{ "no-discard", no_argument, NULL, 'N' },
		LONGOPTS_COMMON
	};
	struct reader_opts o = { .discard = true, .interval = 10 };
	struct reader_result res;
	struct output out;
	char view[PATH_MAX], name[128];
	struct output_guard guard = { .n = 0 };
	bool ran = false;
	int r;

	prog = "fleece read";
	r = parse_opts(argc, argv, SHORTOPTS_READER "N" SHORTOPTS_COMMON, opts, read_help,
		       read_opt, &o);
	if (r >= 0)
		return r;
	if (optind >= argc)
		return usage_error("no view given");
	if (optind + 1 < argc)
		return usage_error("one view at a time: '%s' is one too many", argv[optind + 1]);
	if (!o.output)
		return usage_error("no output given: -o FILE, or -o - for standard output");
	if (o.json && !strcmp(o.output, "-"))
		return usage_error("--json with -o -: standard output carries the image");

	msg_error_reset();
	snprintf(name, sizeof(name), "%s", argv[optind]);
	r = read_resolve(argv[optind], view, sizeof(view), name, sizeof(name), &guard);
	if (r)
		goto out;
	o.view = view;
	o.label = name;
	r = output_open(o.output, &guard, &out);
	if (r)
		goto out;
	signals_install();
	r = reader_run(&o, out.fd, out.is_file, &res);
	ran = true;
	if (r == -EINTR)
		msg_error("%s: interrupted by signal %d", name, (int)fleece_signal);
	r = output_finish(&out, r);
	if (!r && o.sha256 && !o.json)
		output_print_sha256(&out, res.sha256);
	if (!r) {
		char a[32], b[32];

		/* Seconds to 1/100: benchmarks compare this with dd's time. */
		msg_info("%s: read complete: %s in %.2f s (%s/s)", name,
			 fmt_size(res.size, a, sizeof(a)), res.seconds,
			 fmt_size(res.seconds > 0 ? (uint64_t)(res.size / res.seconds) :
				  res.size, b, sizeof(b)));
	}
out:
	if (o.json) {
		struct result_json j = {
			.name = name, .output = o.output, .err = r,
			.error = msg_error_first(), .res = ran ? &res : NULL,
			.sha256 = o.sha256,
		};
		struct sbuf sb = { 0 };

		output_json_device(&sb, &j);
		output_json_print("read", r, &sb);
		sb_free(&sb);
	}
	return exit_code(r);
}
