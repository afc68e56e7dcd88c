// SPDX-License-Identifier: GPL-2.0
/*
 * fleece backup: start, read the view to the output while the device keeps
 * working, stop.  Whatever happens (an error, SIGINT, SIGTERM, a closed
 * pipe) the fleece is stopped, no device is left behind, FILE.partial is
 * removed and the exit status is not 0.  A SIGKILL leaves things for
 * "fleece stop NAME", which also removes FILE.partial.
 *
 * With -o DIR/, each NAME given is backed up to DIR/NAME.img, all at one
 * point in time: one start of them all, then each view read in turn and
 * its fleece stopped, one exit status (the worst).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <getopt.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "fleece.h"
#include "incremental.h"
#include "opts.h"
#include "output.h"
#include "sha256.h"
#include "util.h"

/* Options of backup alone (long only). */
enum { OPT_INCREMENTAL = 0x100, OPT_CHANGED_MAP };

struct sampler {
	const char *name;
	uint64_t peak_used;
	bool exact;
	struct fleece_report last;
	bool have_last;
};

static void sample(void *arg)
{
	struct sampler *s = arg;
	struct fleece_report r;

	if (fleece_report(s->name, &r) || !r.have_status)
		return;
	if (r.fleece_used > s->peak_used)
		s->peak_used = r.fleece_used;
	s->exact = r.fleece_used_exact;
	s->last = r;
	s->have_last = true;
}

/*
 * Before the output is opened: NAME is not fleeced already (its state file
 * tells), and the devices the output must not touch: NAME, the fleece
 * device.  0, or -errno with a message.
 */
static int backup_guard(const char *name, const char *fleece_dev, struct output_guard *g)
{
	struct dmw_info info;
	struct stat sb;
	int r;

	r = state_absent(name);
	if (r)
		return r;
	r = dmw_info(name, &info);
	if (r || !info.exists) {
		msg_error("%s: cannot query device-mapper: %s", name,
			  r ? dmw_strerror(r) : "no such device");
		return r ? r : -ENXIO;
	}
	output_guard_add(g, makedev(info.major, info.minor), name);
	if (fleece_dev && !stat(fleece_dev, &sb) && S_ISBLK(sb.st_mode))
		output_guard_add(g, sb.st_rdev, "the fleece device");
	return 0;
}

/* The absolute name of FILE.partial, for the state file; NULL for "-". */
static char *partial_path(const char *output)
{
	char *d, *b, *real, *path = NULL;

	if (!strcmp(output, "-"))
		return NULL;
	d = xstrdup(output);
	b = xstrdup(output);
	real = realpath(dirname(d), NULL);
	if (real)
		path = xasprintf("%s/%s.partial", strcmp(real, "/") ? real : "", basename(b));
	free(real);
	free(d);
	free(b);
	return path;
}

static void backup_help(void)
{
	printf("Usage: fleece backup [OPTIONS] (--fleece-dev DEV | --fleece-dir DIR) NAME -o FILE|-\n"
	       "       fleece backup [OPTIONS] (--fleece-dev DEV,... | --fleece-dir DIR) NAME... -o DIR/\n"
	       "\n"
	       "Back up the device-mapper device NAME as it is now, while it keeps working:\n"
	       "start a fleece, read the frozen view to FILE (written as FILE.partial and\n"
	       "renamed when complete; all-zero chunks become holes) or to standard output,\n"
	       "releasing each chunk once it is written, then stop.  On any error or signal\n"
	       "everything is undone and the exit status is not 0.\n"
	       "With -o DIR/ (a trailing slash), each NAME goes to DIR/NAME.img, all of them\n"
	       "at one point in time; they are read in turn, and the exit status is the\n"
	       "worst of theirs.\n"
	       "\n"
	       "Fleece options (as for 'fleece start'):\n"
	       "  -d, --fleece-dev DEV      fleece device, at least as large as NAME (one\n"
	       "                            per NAME, comma-separated, with several)\n"
	       "  -D, --fleece-dir DIR      or a sparse file DIR/NAME.fleece on a loop device\n"
	       HELP_START_POLICY
	       "\n"
	       "Incremental backups (NAME tracked by 'fleece track start'):\n"
	       "      --incremental         bring FILE, the previous image of NAME, up to date:\n"
	       "                            read only the chunks changed since (a full\n"
	       "                            backup, saying why, when FILE cannot be)\n"
	       "      --changed-map MAP     write what was read, as JSON, to MAP\n"
	       "\n"
	       "Reader options:\n"
	       HELP_READER
	       HELP_COMMON);
}

struct backup_args {
	struct start_opts so;
	struct reader_opts ro;
	bool incremental;
	const char *changed_map;
};

static int backup_opt(int c, const char *arg, void *ctx)
{
	struct backup_args *a = ctx;
	int r;

	if (c == OPT_INCREMENTAL) {
		a->incremental = true;
		return 0;
	}
	if (c == OPT_CHANGED_MAP) {
		a->changed_map = arg;
		return 0;
	}
	r = start_parse_opt(&a->so, c, arg);

	return r == 1 ? reader_parse_opt(&a->ro, c, arg) : r;
}

/* -o DIR/ (a trailing slash): one image per NAME, DIR/NAME.img. */
static bool output_is_dir(const char *output)
{
	size_t len = output ? strlen(output) : 0;

	return len && output[len - 1] == '/';
}

/* -o DIR/: a directory we can write in.  0 or -EFLEECE_USAGE with a message. */
static int output_dir_check(const char *dir)
{
	struct stat st;

	if (stat(dir, &st) || !S_ISDIR(st.st_mode))
		return usage_err("-o %s: not a directory", dir);
	if (access(dir, W_OK | X_OK)) {
		msg_errno("-o %s: cannot write in it", dir);
		return -EFLEECE_USAGE;
	}
	return 0;
}

/* The arguments that parse_opts() leaves to check: 0 or -EFLEECE_USAGE. */
static int backup_args_check(int argc, char **argv, const struct backup_args *a)
{
	const struct start_opts *so = &a->so;
	const char *output = a->ro.output, *map = a->changed_map;
	unsigned int n = argc - optind;
	char *copy;
	int r = 0;

	if (optind >= argc)
		return usage_err("no device given");
	if (n > 1 && !output_is_dir(output))
		return usage_err("one device at a time to a file: '%s' is one too many (-o DIR/ backs up several at one point in time, to DIR/NAME.img each)",
				 argv[optind + 1]);
	if (!output)
		return usage_err("no output given: -o FILE, or -o - for standard output");
	if (a->ro.json && !strcmp(output, "-"))
		return usage_err("--json with -o -: standard output carries the image");
	if (n == 1 && so->nr_fleece_devs > 1)
		return usage_err("one device, one --fleece-dev");
	if (so->nr_fleece_devs && so->nr_fleece_devs != n)
		return usage_err("%u devices, %u --fleece-dev: give one each", n, so->nr_fleece_devs);
	if (!so->nr_fleece_devs && !so->fleece_dir)
		return usage_err("give the fleece space: --fleece-dev DEV or --fleece-dir DIR");
	if (output_is_dir(output)) {
		if (a->incremental || map)
			return usage_err("--incremental and --changed-map: one device at a time, to -o FILE");
		r = output_dir_check(output);
		if (r)
			return r;
	}
	if (map) {
		if (!*map || !strcmp(map, "-") || !strcmp(map, output))
			return usage_err("--changed-map '%s': give a file other than the image", map);
		copy = xstrdup(map);
		if (access(dirname(copy), W_OK)) {
			msg_errno("--changed-map %s: cannot write in its directory", map);
			r = -EFLEECE_USAGE;
		}
		free(copy);
		if (r)
			return r;
	}
	return output_is_dir(output) ? 0 : output_check(output);
}

static void backup_summary(const char *name, const struct reader_opts *ro,
			   const struct reader_result *res, const struct sampler *smp,
			   const struct output *out, bool incremental)
{
	char a[32], b[32], c2[32], d[32], e[32];
	const uint64_t *f = smp->last.st.f;

	if (ro->sha256 && !ro->json)
		output_print_sha256(out, res->sha256);
	if (incremental) {
		msg_info("%s: incremental backup complete: read %s of %s (%.2f%%) in %s, %llu chunks copied before they were read, fleece peak %s%s",
			 name, fmt_size(res->bytes_read, a, sizeof(a)),
			 fmt_size(res->size, b, sizeof(b)),
			 res->size ? 100.0 * (double)res->bytes_read / (double)res->size : 0.0,
			 fmt_duration(res->seconds, c2, sizeof(c2)),
			 smp->have_last ? (unsigned long long)f[FLEECE_ST_CBW_COUNT] : 0ULL,
			 smp->exact ? "" : "about ", fmt_size(smp->peak_used, e, sizeof(e)));
		return;
	}
	msg_info("%s: backup complete: %s in %s (%s/s), %s of zero chunks%s; %llu chunks copied before they were read, fleece peak %s%s",
		 name, fmt_size(res->size, a, sizeof(a)),
		 fmt_duration(res->seconds, b, sizeof(b)),
		 fmt_size(res->seconds > 0 ? (uint64_t)(res->size / res->seconds) : res->size,
			  c2, sizeof(c2)),
		 fmt_size(res->zero_bytes, d, sizeof(d)),
		 out->is_file ? " left as holes" : "",
		 smp->have_last ? (unsigned long long)f[FLEECE_ST_CBW_COUNT] : 0ULL,
		 smp->exact ? "" : "about ",
		 fmt_size(smp->peak_used, e, sizeof(e)));
}

/* What one backup run carries from phase to phase. */
struct backup_run {
	const char *name;
	const char *output;
	const char *fleece_dev;		/* --fleece-dev for NAME, or NULL */
	char *partial_abs;		/* FILE.partial, absolute, for the state file */
	struct backup_args *a;
	struct fleece_names fn;
	struct incr_plan plan;
	struct track_st after;		/* the tracker after the point in time */
	bool have_after;
	struct reader_extent *ext;	/* incremental: what was read */
	unsigned int n_ext;
	bool outside_released;		/* the kernel released what is not in ext */
	struct reader_result res;
	struct sampler smp;
	struct output out;
	struct incr_record rec;
	bool recorded;			/* rec prepared as FILE.fleece.json.partial */
	bool read;			/* the reader ran: res is its result */
	char error[512];		/* --json: the first error message, or "" */
};

/* --json: keep the first error message said so far for this run. */
static void backup_note_error(struct backup_run *b)
{
	const char *e = msg_error_first();

	if (e && !b->error[0])
		snprintf(b->error, sizeof(b->error), "%s", e);
	msg_error_reset();
}

/* --json: this run's member of "devices", outcome @r. */
static void backup_json(struct backup_run *b, int r, struct sbuf *sb)
{
	const struct incr_plan *p = &b->plan;
	struct result_json j = {
		.name = b->name, .output = b->output, .err = r,
		.error = b->error[0] ? b->error : NULL,
		.res = b->read ? &b->res : NULL, .sha256 = b->a->ro.sha256,
		.kind = p->incremental ? "incremental" : "full",
		.fallback = b->a->incremental && !p->incremental && p->reason[0] ? p->reason : NULL,
		.have_fleece = b->smp.have_last,
		.cbw_count = b->smp.last.st.f[FLEECE_ST_CBW_COUNT],
		.fleece_peak = b->smp.peak_used, .fleece_peak_exact = b->smp.exact,
	};

	if (sb->len)
		sb_printf(sb, ",");
	output_json_device(sb, &j);
}

/*
 * The output: FILE.partial new, or for an incremental a clone or copy of
 * FILE (which becomes a full backup when FILE changed meanwhile).  0, or
 * -errno with a message.
 */
static int backup_open(struct backup_run *b, const struct output_guard *g)
{
	struct incr_plan *p = &b->plan;
	int r;

	if (p->incremental) {
		r = output_open_clone(b->output, g, (dev_t)p->prev.image_dev,
				      (ino_t)p->prev.image_ino, &b->out);
		if (r != -ESTALE)
			return r;
		p->incremental = false;
		snprintf(p->reason, sizeof(p->reason), "the image changed while it was checked");
		msg_info("%s: --incremental: a full backup: %s", b->name, p->reason);
	}
	return output_open(b->output, g, &b->out);
}

/*
 * Whether the kernel released, at the point in time, every chunk outside
 * @ext (track_store), so that the reader need not discard them again.
 * The kernel releases only chunks that the tracker saw unchanged, and @ext
 * covers, in whole chunks of the view, every chunk that it saw changed:
 * the released chunks all lie outside @ext, and when they are as many as
 * the chunks outside, they are all of them.  Any doubt (no status, an
 * extent not chunk-aligned, other counts): false, and the reader discards.
 */
static bool outside_released(const char *name, const struct reader_extent *ext,
			     unsigned int n)
{
	uint64_t chunk, inside = 0;
	struct fleece_report r;
	const uint64_t *f;
	unsigned int i;

	if (fleece_report(name, &r) || !r.have_status)
		return false;
	f = r.st.f;
	chunk = f[FLEECE_ST_CHUNK_SECTORS] << 9;
	if (!chunk)
		return false;
	for (i = 0; i < n; i++) {
		if (ext[i].off % chunk)
			return false;
		inside += (ext[i].len + chunk - 1) / chunk;
	}
	return inside + f[FLEECE_ST_TRACK_RELEASED] == f[FLEECE_ST_CHUNKS_TOTAL];
}

/*
 * After the point in time: the tracker's state, and for an incremental
 * the previous set (else it becomes a full read of the view into an
 * emptied FILE.partial).  0, or -errno with a message.
 */
static int backup_prepare_read(struct backup_run *b, const char *view)
{
	struct incr_plan *p = &b->plan;
	struct stat st;
	uint64_t unit;
	int r;

	if (!p->tracked)
		return 0;
	r = incr_check_after(p, b->name, &b->after);
	/* Recorded even when not as planned: read after the point in time, it is safe. */
	b->have_after = b->after.chunk_sectors != 0;
	if (!p->incremental)
		return 0;
	if (!r && (stat(view, &st) || view_chunk_bytes(st.st_rdev, &unit)))
		unit = 4096;
	if (!r)
		r = incr_prev_extents(&b->after, unit, &b->ext, &b->n_ext);
	if (!r) {
		b->outside_released = outside_released(b->name, b->ext, b->n_ext);
		msg_debug("%s: %s", b->name, b->outside_released ?
			  "the kernel released every unchanged chunk at the point in time" :
			  "the unchanged chunks are released by discards");
		return 0;
	}
	if (r != -ESTALE)
		snprintf(p->reason, sizeof(p->reason), "the tracker cannot list its previous set");
	p->incremental = false;
	msg_info("%s: --incremental: a full backup after all: %s", b->name, p->reason);
	return output_restart(&b->out);
}

/* With -v: how the changed chunks went into the clone (remap.h). */
static void backup_say_cloned(const struct backup_run *b)
{
	char c[32], f[32];

	msg_debug("%s: changed chunks cloned in from a scratch file: %s; copied in where the file system refused the clone: %s",
		  b->name, fmt_size(b->res.cloned_bytes, c, sizeof(c)),
		  fmt_size(b->res.clone_refused_bytes, f, sizeof(f)));
}

/* Read the view (all of it, or the previous set): 0, or -errno with a message. */
static int backup_read(struct backup_run *b, const char *view)
{
	struct reader_opts *ro = &b->a->ro;
	int r;

	b->smp.name = b->name;
	ro->view = view;
	ro->label = b->name;
	ro->tick = sample;
	ro->tick_arg = &b->smp;
	r = backup_prepare_read(b, view);
	if (r)
		return r;
	b->read = true;
	if (b->plan.incremental) {
		int scratch = b->out.copied ? -1 : output_scratch(&b->out);

		r = reader_run_extents(ro, b->out.fd, scratch, b->ext, b->n_ext,
				       (b->outside_released ? READ_EXT_OUTSIDE_RELEASED : 0) |
				       (b->out.copied ? 0 : READ_EXT_SHARED),
				       &b->res);
		if (scratch >= 0) {
			close(scratch);
			backup_say_cloned(b);
		}
		if (!r && ro->sha256) {
			r = sha256_fd(b->out.fd, b->res.sha256);
			if (r)
				msg_error("cannot read %s back for its SHA-256: %s",
					  b->out.partial, strerror(-r));
		}
	} else {
		r = reader_run(ro, b->out.fd, b->out.is_file, &b->res);
	}
	sample(&b->smp);
	return r;
}

/*
 * The image's record, written before the image is renamed into place and
 * renamed after it (incremental.h).  0, or -errno with a message.
 */
static int backup_record_prepare(struct backup_run *b)
{
	if (!b->plan.record || !b->plan.tracked || !b->have_after)
		return 0;
	incr_record_fill(&b->rec, &b->plan, b->name, &b->after, b->out.fd);
	b->recorded = !incr_record_prepare(b->output, &b->rec);
	if (!b->recorded)
		msg_warn("%s: no history recorded with %s: the next --incremental will be a full backup",
			 b->name, b->output);
	return 0;
}

static void backup_record_commit(struct backup_run *b, int r)
{
	if (!b->plan.record)
		return;
	if (b->recorded) {
		if (incr_record_commit(b->output, r) && !r)
			msg_warn("%s: the history of %s is not recorded: the next --incremental will be a full backup",
				 b->name, b->output);
	} else if (!r) {
		/* A new image without a history: an old record must not stay. */
		incr_record_remove(b->output);
	}
}

/*
 * Tell the tracker how the backup of its previous set ended, once NAME
 * has its fleece-track table again: backup_done when the image (and its
 * record) is in place, else merge (changes are never dropped).  Only for
 * the set this backup's checkpoint made.
 */
static void backup_track_end(struct backup_run *b, int r)
{
	const char *msg = r ? FLEECE_TRACK_MSG_MERGE : FLEECE_TRACK_MSG_BACKUP_DONE;
	struct track_st ts;

	/* On NAME again, or still on its hidden origin when stop failed. */
	if (!b->plan.tracked || track_read(b->name, &ts))
		return;
	/* "lost": ready, but every chunk (after a store failure); a full backup ends it. */
	if (ts.epoch != b->plan.before.epoch + 1 ||
	    (strcmp(ts.prev, "ready") && strcmp(ts.prev, "lost")) ||
	    strcmp(ts.store_uuid, b->plan.before.store_uuid))
		return;
	if (track_message(ts.dev, msg, NULL, 0)) {
		msg_warn("%s: the tracker was not told '%s': its next checkpoint merges the set",
			 b->name, msg);
		return;
	}
	msg_debug("%s: tracker told '%s'", b->name, msg);
	/*
	 * A failed incremental: the merged set covers every change since
	 * FILE's point in time, at the new epoch.  Recorded, so that a second
	 * failure in a row still leaves the next backup incremental.
	 */
	if (r && b->plan.incremental &&
	    incr_record_advance(b->output, &b->plan.prev, ts.epoch) == 0)
		msg_debug("%s: the record of %s moved to epoch %" PRIu64, b->name, b->output,
			  ts.epoch);
}

static int backup_map(struct backup_run *b)
{
	const struct track_st *ts = b->have_after ? &b->after : &b->plan.before;
	uint64_t chunk = ts->chunk_sectors ? ts->chunk_sectors << 9 : 0;

	if (!b->a->changed_map)
		return 0;
	if (!chunk && b->smp.have_last)
		chunk = (uint64_t)b->smp.last.st.f[FLEECE_ST_CHUNK_SECTORS] << 9;
	return incr_write_map(b->a->changed_map, chunk, b->res.size, b->ext, b->n_ext,
			      b->plan.incremental,
			      b->plan.reason[0] ? b->plan.reason : "full backup requested");
}

/*
 * Before the start: NAME's lock, its checks, the plan, the output opened
 * (FILE.partial).  0, or -errno with a message; on failure nothing is
 * open and nothing was written.
 */
static int backup_prepare(struct backup_run *b)
{
	struct output_guard guard = { .n = 0 };
	const char *name = b->name;
	int r;

	r = fleece_names(name, &b->fn);
	if (r)
		return -EFLEECE_REFUSED;
	/*
	 * The lock and the state first, the output after: a second backup of
	 * NAME (a timer firing twice) must not touch the first one's output.
	 */
	r = fleece_lock(name);
	if (r)
		return r == -EBUSY ? -EFLEECE_REFUSED : r;
	r = backup_guard(name, b->fleece_dev, &guard);
	if (!r)
		r = incr_plan(name, b->output, b->a->incremental, &b->plan);
	if (r)
		return r;
	if (b->a->incremental && !b->plan.incremental)
		msg_info("%s: --incremental: a full backup: %s", name, b->plan.reason);
	/* "fleece stop" removes FILE.partial after a SIGKILL: record it. */
	b->partial_abs = partial_path(b->output);
	signals_install();
	r = backup_open(b, &guard);
	if (r) {
		free(b->partial_abs);
		b->partial_abs = NULL;
	}
	return r;
}

/*
 * After the start: read the view, put the image (and its record) in place
 * or remove FILE.partial, stop NAME's fleece.  0, or -errno with a message.
 */
static int backup_finish(struct backup_run *b)
{
	const char *name = b->name;
	struct dmw_info vi;
	char view[PATH_MAX];
	int r, r2;

	if (dmw_info_uuid(b->fn.view_uuid, &vi) || !vi.exists ||
	    devno_path(makedev(vi.major, vi.minor), view, sizeof(view))) {
		msg_error("%s: the view vanished", name);
		r = -ENXIO;
	} else if (fleece_signal) {
		r = -EINTR;
	} else {
		r = backup_read(b, view);
	}
	if (r == -EINTR)
		msg_error("%s: interrupted by signal %d: stopping", name, (int)fleece_signal);
	if (!r)
		r = backup_record_prepare(b);
	r = output_finish(&b->out, r);
	backup_record_commit(b, r);
	r2 = fleece_stop(name, r ? 0 : STOP_KEEP_PARTIAL);
	if (!r)
		r = r2;
	return r;
}

/* The end, whatever the outcome @r: the tracker told, the map, the summary. */
static int backup_end(struct backup_run *b, int r)
{
	int r2;

	/* A failed start may have taken its checkpoint: merge that set too. */
	backup_track_end(b, r);
	if (!r) {
		r2 = backup_map(b);
		backup_summary(b->name, &b->a->ro, &b->res, &b->smp, &b->out, b->plan.incremental);
		r = r2;
	}
	return r;
}

static void backup_run_free(struct backup_run *b)
{
	free(b->partial_abs);
	free(b->ext);
}

/*
 * start, read, stop: 0, or -errno with a message.  Whatever fails, the
 * fleece is stopped and an incomplete FILE.partial removed (output_finish).
 */
static int backup_run(const char *name, struct backup_args *a, const char *output,
		      struct sbuf *js)
{
	struct start_opts *so = &a->so;
	struct backup_run *b = xcalloc(1, sizeof(*b));
	char *names[1], *partials[1];
	int r;

	b->name = name;
	b->output = output;
	b->fleece_dev = so->nr_fleece_devs ? so->fleece_devs[0] : NULL;
	b->a = a;
	r = backup_prepare(b);
	if (r)
		goto out;
	partials[0] = b->out.partial ? b->partial_abs : NULL;
	so->partials = partials;
	so->incremental = b->plan.incremental;
	names[0] = (char *)name;
	r = fleece_start(so, names, 1);
	so->partials = NULL;
	if (r)
		r = output_finish(&b->out, r);
	else
		r = backup_finish(b);
	r = backup_end(b, r);
out:
	if (js) {
		backup_note_error(b);
		backup_json(b, r, js);
	}
	backup_run_free(b);
	free(b);
	return r;
}

/* Of two outcomes, the one with the higher exit status. */
static int worse(int a, int b)
{
	return exit_code(b) > exit_code(a) ? b : a;
}

/*
 * -o DIR/: every NAME of @args at one point in time, to DIR/NAME.img each:
 * all prepared (locks, checks, outputs), one start of them all, then each
 * view read in turn and its fleece stopped.  A NAME that fails does not
 * stop the others (its image is removed; a signal stops them all).  0, or
 * the -errno of the worst outcome, with messages.
 */
static int backup_several(struct backup_args *a, char **args, unsigned int n,
			  struct sbuf *js)
{
	struct start_opts *so = &a->so;
	struct backup_run *runs = xcalloc(n, sizeof(*runs));
	char **names = xcalloc(n, sizeof(char *)), **partials = xcalloc(n, sizeof(char *));
	int *rc = xcalloc(n, sizeof(int));
	unsigned int i, j, prepared = 0, failed = 0, culprit = n;
	int r = 0;

	msg_error_reset();
	for (i = 0; !r && i < n; i++) {
		names[i] = xmalloc(128);
		r = resolve_dm_name(args[i], names[i], 128);
		for (j = 0; !r && j < i; j++)
			if (!strcmp(names[i], names[j]))
				r = usage_err("%s given twice", names[i]);
		if (r)
			culprit = i;
	}
	for (i = 0; !r && i < n; i++, prepared++) {
		runs[i].name = names[i];
		runs[i].output = xasprintf("%s%s.img", a->ro.output, names[i]);
		runs[i].fleece_dev = so->nr_fleece_devs ? so->fleece_devs[i] : NULL;
		runs[i].a = a;
		r = backup_prepare(&runs[i]);
		partials[i] = runs[i].out.partial ? runs[i].partial_abs : NULL;
		if (r)
			culprit = i;
	}
	if (r) {
		/* Nothing started: the outputs opened so far are removed. */
		for (i = 0; i + 1 < prepared; i++)
			output_finish(&runs[i].out, r);
		if (culprit < n)
			backup_note_error(&runs[culprit]);
		for (i = 0; i < n; i++) {
			rc[i] = r;
			if (i != culprit)
				snprintf(runs[i].error, sizeof(runs[i].error),
					 "not backed up: %s failed before the start", args[culprit]);
		}
		goto out;
	}
	so->partials = partials;
	so->incremental = false;
	r = fleece_start(so, names, n);
	so->partials = NULL;
	if (r) {
		/* The start's messages are every NAME's. */
		for (i = 0; i < n; i++) {
			const char *e = msg_error_first();

			if (e)
				snprintf(runs[i].error, sizeof(runs[i].error), "%s", e);
		}
		msg_error_reset();
		for (i = 0; i < n; i++) {
			rc[i] = backup_end(&runs[i], output_finish(&runs[i].out, r));
			backup_note_error(&runs[i]);
		}
		goto out;
	}
	for (i = 0; i < n; i++) {
		rc[i] = backup_finish(&runs[i]);
		rc[i] = backup_end(&runs[i], rc[i]);
		backup_note_error(&runs[i]);
		if (rc[i])
			failed++;
		r = worse(r, rc[i]);
	}
	if (failed)
		msg_error("%u of %u images at one point in time are not complete (removed): %s", failed, n,
			  a->ro.output);
	else
		msg_info("%u images at one point in time in %s", n, a->ro.output);
out:
	for (i = 0; i < n; i++) {
		if (js) {
			/* Not resolved, not prepared: the NAME as given. */
			if (!runs[i].name)
				runs[i].name = args[i];
			runs[i].a = a;
			backup_json(&runs[i], rc[i], js);
		}
		if (i < prepared)
			free((char *)runs[i].output);
		backup_run_free(&runs[i]);
		free(names[i]);
	}
	free(rc);
	free(runs);
	free(names);
	free(partials);
	return r;
}

int cmd_backup(int argc, char **argv)
{
	static const struct option opts[] = {
		LONGOPTS_START, LONGOPTS_READER,
		{ "incremental", no_argument, NULL, OPT_INCREMENTAL },
		{ "changed-map", required_argument, NULL, OPT_CHANGED_MAP },
		LONGOPTS_COMMON
	};
	struct backup_args a = { .ro = { .discard = true, .interval = 10 } };
	struct sbuf js = { 0 };
	char name[128];
	int r;

	prog = "fleece backup";
	start_opts_init(&a.so);
	r = parse_opts(argc, argv, SHORTOPTS_START SHORTOPTS_READER SHORTOPTS_COMMON, opts,
		       backup_help, backup_opt, &a);
	if (r >= 0) {
		start_opts_free(&a.so);
		return r;
	}
	r = backup_args_check(argc, argv, &a);
	if (r) {
		start_opts_free(&a.so);
		return exit_code(r);
	}
	/* --json: each NAME's member of "devices" in js, printed at the end. */
	if (output_is_dir(a.ro.output)) {
		r = backup_several(&a, argv + optind, argc - optind, a.ro.json ? &js : NULL);
	} else {
		msg_error_reset();
		r = resolve_dm_name(argv[optind], name, sizeof(name));
		if (!r) {
			r = backup_run(name, &a, a.ro.output, a.ro.json ? &js : NULL);
		} else if (a.ro.json) {
			struct backup_run b = { .name = argv[optind], .output = a.ro.output, .a = &a };

			backup_note_error(&b);
			backup_json(&b, r, &js);
		}
	}
	if (a.ro.json)
		output_json_print("backup", r, &js);
	sb_free(&js);
	start_opts_free(&a.so);
	return exit_code(r);
}
