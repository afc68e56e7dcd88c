// SPDX-License-Identifier: GPL-2.0
/*
 * The reader, shared by "fleece backup" and "fleece read": reads a
 * fleece-view with O_DIRECT in large chunk-aligned blocks, one block ahead
 * (readahead.c), writes the image (holes for all-zero chunks in a regular
 * file, a plain stream otherwise), and discards each block on the view once
 * it is safely written, which releases its chunks: no more copy-before-write
 * for them, and their fleece space is freed.
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
#include "opts.h"
#include "output.h"
#include "readahead.h"
#include "sha256.h"
#include "util.h"

#define DEFAULT_BLOCK	(4ULL << 20)
#define MAX_BLOCK	(256ULL << 20)

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

static bool stop_requested(struct reader_result *res)
{
	if (fleece_signal) {
		res->interrupted = true;
		return true;
	}
	return false;
}

int reader_run(const struct reader_opts *o, int out_fd, bool out_is_file,
	       struct reader_result *res)
{
	uint64_t size, chunk = 0, block, off = 0;
	struct progress prog_state = { 0 };
	struct readahead *ra = NULL;
	unsigned char digest[32];
	bool discard = o->discard, out_sync;
	struct sha256 sha;
	struct stat st;
	int fd, ret = EX_FLEECE_FAIL;

	memset(res, 0, sizeof(*res));
	/*
	 * A released chunk is gone from the view: whatever holds the image
	 * (a file, also behind standard output, or a block device) is synced
	 * before each release.  A pipe cannot be: its reader gets data that is
	 * released already (fleece(8)).
	 */
	out_sync = out_is_file ||
		   (!fstat(out_fd, &st) && (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode)));
	/*
	 * O_EXCL: one reader per view.  Two would each release chunks the
	 * other has not read yet, and both fail.
	 */
	fd = open(o->view, (discard ? O_RDWR : O_RDONLY) | O_DIRECT | O_EXCL | O_CLOEXEC);
	if (fd < 0 && discard && (errno == EROFS || errno == EACCES)) {
		msg_warn("%s: the view is read-only: reading it without releasing chunks", o->label);
		discard = false;
		fd = open(o->view, O_RDONLY | O_DIRECT | O_EXCL | O_CLOEXEC);
	}
	if (fd < 0 && errno == EBUSY) {
		msg_error("%s: the view %s is in use (another reader has it open)", o->label,
			  o->view);
		return EX_FLEECE_REFUSED;
	}
	if (fd < 0) {
		msg_errno("cannot open the view %s", o->view);
		return EX_FLEECE_FAIL;
	}
	if (fstat(fd, &st) || !S_ISBLK(st.st_mode) || blkdev_size(fd, &size)) {
		msg_error("%s: not a block device", o->view);
		goto out;
	}
	if (view_chunk_bytes(st.st_rdev, &chunk))
		chunk = 4096;
	block = o->block_bytes ? o->block_bytes : DEFAULT_BLOCK;
	if (block < chunk)
		block = chunk;
	block -= block % chunk;
	ra = readahead_start(fd, size, block);
	if (!ra) {
		msg_errno("cannot start reading with two %llu-byte buffers",
			  (unsigned long long)block);
		goto out;
	}
	res->size = size;
	sha256_init(&sha);
	prog_state.o = o;
	prog_state.size = size;
	prog_state.mode = o->progress;
	if (prog_state.mode == PROGRESS_AUTO)
		prog_state.mode = isatty(2) ? PROGRESS_BAR : PROGRESS_LINES;
	prog_state.t0 = prog_state.last = prog_state.last_tick = now_mono();
	msg_debug("reading %s: %llu bytes, chunk %llu, block %llu", o->view,
		  (unsigned long long)size, (unsigned long long)chunk,
		  (unsigned long long)block);

	while (off < size) {
		size_t n = (size - off) < block ? (size_t)(size - off) : (size_t)block;
		const unsigned char *buf;
		uint64_t error_off;
		size_t i;

		if (stop_requested(res))
			goto out;
		buf = readahead_next(ra, off, &error_off);
		if (!buf) {
			if (view_is_invalid(st.st_rdev)) {
				res->view_invalid = true;
				msg_error("%s: the view became invalid at %llu bytes (a copy-before-write failed or timed out): the image is incomplete",
					  o->label, (unsigned long long)error_off);
				ret = EX_FLEECE_INVALID;
			} else {
				msg_errno("%s: read error at %llu bytes", o->label,
					  (unsigned long long)error_off);
			}
			goto out;
		}
		res->bytes_read += n;
		if (o->sha256)
			sha256_update(&sha, buf, n);

		if (out_is_file) {
			for (i = 0; i < n; i += chunk) {
				size_t len = n - i < chunk ? n - i : chunk;

				if (all_zero(buf + i, len)) {
					res->zero_bytes += len;
					continue;
				}
				if (!pwrite_all(out_fd, buf + i, len, (off_t)(off + i))) {
					if (errno == EINTR && stop_requested(res))
						goto out;
					msg_errno("%s: cannot write the output", o->label);
					goto out;
				}
				res->bytes_written += len;
			}
			if (discard && fdatasync(out_fd)) {
				msg_errno("%s: cannot sync the output", o->label);
				goto out;
			}
		} else {
			if (!write_all(out_fd, buf, n)) {
				if (errno == EINTR && stop_requested(res))
					goto out;
				if (errno == EPIPE)
					msg_error("%s: the output was closed (broken pipe)", o->label);
				else
					msg_errno("%s: cannot write the output", o->label);
				goto out;
			}
			res->bytes_written += n;
			if (discard && out_sync && fdatasync(out_fd)) {
				msg_errno("%s: cannot sync the output", o->label);
				goto out;
			}
		}

		if (discard) {
			uint64_t range[2] = { off, n };

			if (ioctl(fd, BLKDISCARD, range)) {
				msg_errno("%s: cannot discard the chunks just saved (their copies stay in the fleece)",
					  o->label);
				discard = false;
			}
		}
		readahead_done(ra, off);
		off += n;
		progress_show(&prog_state, off, false);

		if (o->rate) {
			double ahead = (double)off / o->rate - (now_mono() - prog_state.t0);

			while (ahead > 0 && !stop_requested(res)) {
				sleep_secs(ahead > 0.2 ? 0.2 : ahead);
				ahead = (double)off / o->rate - (now_mono() - prog_state.t0);
			}
		}
	}
	if (out_is_file) {
		if (ftruncate(out_fd, (off_t)size) || fsync(out_fd)) {
			msg_errno("%s: cannot finish the output", o->label);
			goto out;
		}
	} else if (out_sync && fsync(out_fd)) {
		msg_errno("%s: cannot finish the output", o->label);
		goto out;
	}
	if (o->sha256) {
		sha256_final(&sha, digest);
		sha256_hex(digest, res->sha256);
	}
	res->seconds = now_mono() - prog_state.t0;
	progress_show(&prog_state, off, true);
	ret = EX_FLEECE_OK;
out:
	if (ret && prog_state.drawn)
		fputc('\n', stderr);
	if (ret && res->interrupted)
		ret = EX_FLEECE_SIGNAL + fleece_signal;
	res->seconds = now_mono() - prog_state.t0;
	readahead_stop(ra);
	close(fd);
	return ret;
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
	const char *output, *arg;
	char view[PATH_MAX], name[128];
	struct output_guard guard = { .n = 0 };
	struct dmw_table t;
	int r;

	prog = "fleece read";
	r = parse_opts(argc, argv, SHORTOPTS_READER "N" SHORTOPTS_COMMON, opts, read_help,
		       read_opt, &o);
	if (r >= 0)
		return r;
	output = o.output;
	if (optind >= argc)
		return usage_error("no view given");
	if (optind + 1 < argc)
		return usage_error("one view at a time: '%s' is one too many", argv[optind + 1]);
	if (!output)
		return usage_error("no output given: -o FILE, or -o - for standard output");
	arg = argv[optind];

	/* A fleece-view, nothing else: the reader discards what it reads. */
	r = resolve_dm_name(arg, name, sizeof(name));
	if (r)
		return exit_code(r);
	r = dmw_get_table(name, false, &t);
	if (r) {
		msg_error("%s: cannot read its table: %s", arg, dmw_strerror(r));
		return EX_FLEECE_FAIL;
	}
	if (t.n != 1 || strcmp(t.t[0].type, FLEECE_VIEW_TARGET_NAME)) {
		dmw_table_free(&t);
		msg_error("%s: not a fleece view (its table is not one '%s' target)", arg,
			  FLEECE_VIEW_TARGET_NAME);
		return EX_FLEECE_REFUSED;
	}
	{
		struct dmw_info info;
		dev_t od = 0, fd = 0;

		/* The output is neither the view nor its origin or fleece device. */
		{
			char *copy = xstrdup(t.t[0].params), *save = NULL, *tok;

			tok = strtok_r(copy, " ", &save);
			if (tok)
				parse_devno(tok, &od);
			tok = strtok_r(NULL, " ", &save);
			if (tok)
				parse_devno(tok, &fd);
			free(copy);
		}
		dmw_table_free(&t);
		r = dmw_info(name, &info);
		if (r || !info.exists) {
			msg_error("%s: cannot query device-mapper: %s", arg,
				  r ? dmw_strerror(r) : "no such device");
			return EX_FLEECE_FAIL;
		}
		if (devno_path(makedev(info.major, info.minor), view, sizeof(view))) {
			msg_error("%s: no device node", arg);
			return EX_FLEECE_FAIL;
		}
		output_guard_add(&guard, makedev(info.major, info.minor), "the view");
		output_guard_add(&guard, od, "the view's origin");
		output_guard_add(&guard, fd, "the view's fleece device");
	}
	o.view = view;
	o.label = name;
	r = output_open(output, &guard, &out);
	if (r)
		return r;
	signals_install();
	r = reader_run(&o, out.fd, out.is_file, &res);
	r = output_finish(&out, r);
	if (!r && o.sha256)
		output_print_sha256(&out, res.sha256);
	if (!r) {
		char a[32], b[32];

		/* Seconds to 1/100: benchmarks compare this with dd's time. */
		msg_info("%s: read complete: %s in %.2f s (%s/s)", name,
			 fmt_size(res.size, a, sizeof(a)), res.seconds,
			 fmt_size(res.seconds > 0 ? (uint64_t)(res.size / res.seconds) :
				  res.size, b, sizeof(b)));
	}
	return r;
}
