// SPDX-License-Identifier: GPL-2.0
/*
 * fleece backup: start, read the view to the output while the device keeps
 * working, stop.  Whatever happens (an error, SIGINT, SIGTERM, a closed
 * pipe) the fleece is stopped, no device is left behind, FILE.partial is
 * removed and the exit status is not 0.  A SIGKILL leaves things for
 * "fleece stop NAME", which also removes FILE.partial.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "fleece.h"
#include "opts.h"
#include "output.h"
#include "util.h"

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
static int backup_guard(const char *name, const struct start_opts *so,
			struct output_guard *g)
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
	if (so->nr_fleece_devs && !stat(so->fleece_devs[0], &sb) && S_ISBLK(sb.st_mode))
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
	       "\n"
	       "Back up the device-mapper device NAME as it is now, while it keeps working:\n"
	       "start a fleece, read the frozen view to FILE (written as FILE.partial and\n"
	       "renamed when complete; all-zero chunks become holes) or to standard output,\n"
	       "releasing each chunk once it is written, then stop.  On any error or signal\n"
	       "everything is undone and the exit status is not 0.\n"
	       "\n"
	       "Fleece options (as for 'fleece start'):\n"
	       "  -d, --fleece-dev DEV      fleece device, at least as large as NAME\n"
	       "  -D, --fleece-dir DIR      or a sparse file DIR/NAME.fleece on a loop device\n"
	       HELP_START_POLICY
	       "\n"
	       "Reader options:\n"
	       HELP_READER
	       HELP_COMMON);
}

struct backup_args {
	struct start_opts so;
	struct reader_opts ro;
};

static int backup_opt(int c, const char *arg, void *ctx)
{
	struct backup_args *a = ctx;
	int r = start_parse_opt(&a->so, c, arg);

	return r == 1 ? reader_parse_opt(&a->ro, c, arg) : r;
}

/* The arguments that parse_opts() leaves to check: 0 or -EFLEECE_USAGE. */
static int backup_args_check(int argc, char **argv, const struct start_opts *so,
			     const char *output)
{
	if (optind >= argc)
		return usage_err("no device given");
	if (optind + 1 < argc)
		return usage_err("one device at a time: '%s' is one too many (use 'fleece start' for a consistent point of several)",
				 argv[optind + 1]);
	if (!output)
		return usage_err("no output given: -o FILE, or -o - for standard output");
	if (so->nr_fleece_devs > 1)
		return usage_err("one device, one --fleece-dev");
	if (!so->nr_fleece_devs && !so->fleece_dir)
		return usage_err("give the fleece space: --fleece-dev DEV or --fleece-dir DIR");
	return output_check(output);
}

static void backup_summary(const char *name, const struct reader_opts *ro,
			   const struct reader_result *res, const struct sampler *smp,
			   const struct output *out)
{
	char a[32], b[32], c2[32], d[32], e[32];
	const uint64_t *f = smp->last.st.f;

	if (ro->sha256)
		output_print_sha256(out, res->sha256);
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

/*
 * start, read, stop: 0, or -errno with a message.  Whatever fails, the
 * fleece is stopped and an incomplete FILE.partial removed (output_finish).
 */
static int backup_run(const char *name, struct backup_args *a, const char *output)
{
	struct start_opts *so = &a->so;
	struct reader_opts *ro = &a->ro;
	struct output_guard guard = { .n = 0 };
	struct reader_result res;
	struct fleece_names fn;
	struct sampler smp;
	struct output out;
	struct dmw_info vi;
	char view[PATH_MAX], *partial_abs, *names[1];
	int r, r2;

	memset(&res, 0, sizeof(res));
	memset(&smp, 0, sizeof(smp));
	r = fleece_names(name, &fn);
	if (r)
		return -EFLEECE_REFUSED;
	/*
	 * The lock and the state first, the output after: a second backup of
	 * NAME (a timer firing twice) must not touch the first one's output.
	 */
	r = fleece_lock(name);
	if (r)
		return r == -EBUSY ? -EFLEECE_REFUSED : r;
	r = backup_guard(name, so, &guard);
	if (r)
		return r;
	/* "fleece stop" removes FILE.partial after a SIGKILL: record it. */
	partial_abs = partial_path(output);
	signals_install();
	r = output_open(output, &guard, &out);
	if (r) {
		free(partial_abs);
		return r;
	}
	so->partial = out.partial ? partial_abs : NULL;
	names[0] = (char *)name;
	r = fleece_start(so, names, 1);
	free(partial_abs);
	so->partial = NULL;
	if (r)
		return output_finish(&out, r);
	if (dmw_info_uuid(fn.view_uuid, &vi) || !vi.exists ||
	    devno_path(makedev(vi.major, vi.minor), view, sizeof(view))) {
		msg_error("%s: the view vanished", name);
		r = -ENXIO;
	} else if (fleece_signal) {
		r = -EINTR;
	} else {
		smp.name = name;
		ro->view = view;
		ro->label = name;
		ro->tick = sample;
		ro->tick_arg = &smp;
		r = reader_run(ro, out.fd, out.is_file, &res);
		sample(&smp);
	}
	if (r == -EINTR)
		msg_error("%s: interrupted by signal %d: stopping", name, (int)fleece_signal);
	r = output_finish(&out, r);
	r2 = fleece_stop(name, r ? 0 : STOP_KEEP_PARTIAL);
	if (!r)
		r = r2;
	if (!r)
		backup_summary(name, ro, &res, &smp, &out);
	return r;
}

int cmd_backup(int argc, char **argv)
{
	static const struct option opts[] = { LONGOPTS_START, LONGOPTS_READER, LONGOPTS_COMMON };
	struct backup_args a = { .ro = { .discard = true, .interval = 10 } };
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
	r = backup_args_check(argc, argv, &a.so, a.ro.output);
	if (!r)
		r = resolve_dm_name(argv[optind], name, sizeof(name));
	if (!r)
		r = backup_run(name, &a, a.ro.output);
	start_opts_free(&a.so);
	return exit_code(r);
}
