// SPDX-License-Identifier: GPL-2.0
/*
 * fleece status: state, chunk counts, fleece space in use, percent backed up.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "fleece.h"
#include "loop.h"
#include "opts.h"
#include "util.h"

static int report_failed(const char *name, const char *what, int err)
{
	msg_error("%s: cannot query %s: %s", name, what, dmw_strerror(err));
	return err;
}

/*
 * What there is of a fleece of NAME.  A failed query is an error (-errno,
 * with a message), never "none": status must not call a device it could
 * not look at unfleeced.
 */
int fleece_report(const char *name, struct fleece_report *r)
{
	struct dmw_info vi, oi, ni;
	struct fleece_state st;
	struct dmw_table t;
	bool ours = false;
	uint64_t v;
	int err;

	memset(r, 0, sizeof(*r));
	r->state = "none";
	if (fleece_names(name, &r->fn))
		return -EINVAL;
	err = state_read(name, &st);
	if (err) {
		errno = -err;
		msg_errno("%s: cannot read its state file in %s", name, state_dir());
		return err;
	}
	err = dmw_info_uuid(r->fn.view_uuid, &vi);
	if (err)
		return report_failed(name, "its view", err);
	err = dmw_info_uuid(r->fn.origin_uuid, &oi);
	if (err)
		return report_failed(name, "its hidden origin", err);
	err = dmw_info(name, &ni);
	if (err)
		return report_failed(name, "the device", err);
	if (ni.exists && ni.live_table) {
		err = dmw_get_table(name, false, &t);
		if (err)
			return report_failed(name, "its table", err);
		ours = table_is_fleece(&t, &r->params) &&
		       fleece_table_ours(&r->params,
					 oi.exists ? makedev(oi.major, oi.minor) : 0, &st);
		r->size_bytes = dmw_table_len(&t) * 512;
		dmw_table_free(&t);
	}
	if (st.fleece_file[0])
		snprintf(r->fleece_file, sizeof(r->fleece_file), "%s", st.fleece_file);
	if (st.track_store)
		devno_display(st.track_store, r->track_store, sizeof(r->track_store));
	if (ours) {
		struct dmw_table s;

		err = dmw_get_status(name, &s);
		if (err)
			return report_failed(name, "its status", err);
		if (s.n == 1 && !parse_fleece_status(s.t[0].params, &r->st))
			r->have_status = true;
		dmw_table_free(&s);
		devno_display(r->params.origin, r->origin_path, sizeof(r->origin_path));
		devno_display(r->params.fleece, r->fleece_path, sizeof(r->fleece_path));
		if (r->fleece_file[0]) {
			struct stat fs;
			char sys[PATH_MAX];

			if (!stat(r->fleece_file, &fs)) {
				r->fleece_used = (uint64_t)fs.st_blocks * 512;
				r->fleece_used_exact = true;
			}
			snprintf(sys, sizeof(sys), "/sys/dev/block/%u:%u/loop/dio",
				 major(r->params.fleece), minor(r->params.fleece));
			r->loop_dio = !read_u64_file(sys, &v) && v == 1;
		}
		if (!r->fleece_used_exact && r->have_status)
			r->fleece_used = r->st.f[FLEECE_ST_CHUNKS_COPIED] *
					 r->params.chunk_sectors * 512;
	}
	if (vi.exists) {
		struct dmw_table s;

		snprintf(r->view_path, sizeof(r->view_path), "/dev/mapper/%s", vi.name);
		err = dmw_get_status(vi.name, &s);
		if (err)
			return report_failed(name, "the status of its view", err);
		if (s.n == 1) {
			unsigned long long a, b, c;

			if (sscanf(s.t[0].params, "%llu %llu %llu", &a, &b, &c) == 3) {
				r->view_reads_origin = a;
				r->view_reads_fleece = b;
				r->view_reads_refused = c;
			}
		}
		dmw_table_free(&s);
	}
	if (ours && vi.exists && r->have_status)
		r->state = r->st.invalid ? FLEECE_STATE_INVALID : FLEECE_STATE_ACTIVE;
	else if (ours || vi.exists || oi.exists || st.present)
		r->state = "incomplete";
	return 0;
}

static double percent_done(const struct fleece_report *r)
{
	uint64_t total = r->st.f[FLEECE_ST_CHUNKS_TOTAL];

	return total ? 100.0 * r->st.f[FLEECE_ST_CHUNKS_RELEASED] / total : 0;
}

static void print_human(const struct fleece_report *r)
{
	char a[32], b[32];

	printf("%s: %s\n", r->fn.name, r->state);
	if (!strcmp(r->state, "none"))
		return;
	if (!strcmp(r->state, "incomplete"))
		printf("  an interrupted start or stop: run 'fleece stop %s'\n", r->fn.name);
	if (r->view_path[0])
		printf("  view:       %s\n", r->view_path);
	if (r->have_status) {
		const uint64_t *f = r->st.f;

		printf("  size:       %s in %llu chunks of %s\n",
		       fmt_size(r->size_bytes, a, sizeof(a)),
		       (unsigned long long)f[FLEECE_ST_CHUNKS_TOTAL],
		       fmt_size((uint64_t)f[FLEECE_ST_CHUNK_SECTORS] * 512, b, sizeof(b)));
		printf("  chunks:     %llu pending, %llu copied, %llu released (%.1f%% backed up)\n",
		       (unsigned long long)f[FLEECE_ST_CHUNKS_PENDING],
		       (unsigned long long)f[FLEECE_ST_CHUNKS_COPIED],
		       (unsigned long long)f[FLEECE_ST_CHUNKS_RELEASED], percent_done(r));
		printf("  copies:     %llu copy-before-write, %llu in flight, %llu failed\n",
		       (unsigned long long)f[FLEECE_ST_CBW_COUNT],
		       (unsigned long long)f[FLEECE_ST_COPIES_IN_FLIGHT],
		       (unsigned long long)f[FLEECE_ST_CBW_ERRORS]);
		if (r->params.origin_offset)
			printf("  origin:     %s from sector %llu (in place of the linear table)\n",
			       r->origin_path, (unsigned long long)r->params.origin_offset);
		else
			printf("  origin:     %s\n", r->origin_path);
		printf("  fleece:     %s%s%s%s%s, %s%s in use\n", r->fleece_path,
		       r->fleece_file[0] ? " (" : "", r->fleece_file,
		       r->fleece_file[0] && r->loop_dio ? ", direct I/O" : "",
		       r->fleece_file[0] ? ")" : "",
		       r->fleece_used_exact ? "" : "about ",
		       fmt_size(r->fleece_used, a, sizeof(a)));
		if (r->params.cbw_timeout_ms)
			snprintf(b, sizeof(b), "%.3g s", r->params.cbw_timeout_ms / 1000.0);
		else
			snprintf(b, sizeof(b), "none");
		printf("  policy:     %s; copy timeout %s\n",
		       r->params.fail_origin_writes ? "fail the origin write on a failed copy" :
						      "invalidate the view on a failed copy",
		       b);
	} else if (r->fleece_file[0]) {
		printf("  fleece file: %s\n", r->fleece_file);
	}
	if (r->track_store[0])
		printf("  tracked:    store %s (the tracker is on the hidden origin: 'fleece track status %s')\n",
		       r->track_store, r->fn.name);
	if (r->view_path[0])
		printf("  view reads: %llu from the origin, %llu from the fleece, %llu refused\n",
		       (unsigned long long)r->view_reads_origin,
		       (unsigned long long)r->view_reads_fleece,
		       (unsigned long long)r->view_reads_refused);
}

static void print_json(struct sbuf *sb, const struct fleece_report *r)
{
	const uint64_t *f = r->st.f;

	sb_printf(sb, "{\"name\":");
	sb_json_str(sb, r->fn.name);
	sb_printf(sb, ",\"state\":");
	sb_json_str(sb, r->state);
	sb_printf(sb, ",\"view\":");
	if (r->view_path[0])
		sb_json_str(sb, r->view_path);
	else
		sb_printf(sb, "null");
	if (r->have_status) {
		sb_printf(sb, ",\"size_bytes\":%llu,\"chunk_bytes\":%llu",
			  (unsigned long long)r->size_bytes,
			  (unsigned long long)f[FLEECE_ST_CHUNK_SECTORS] * 512);
		sb_printf(sb, ",\"chunks_total\":%llu,\"chunks_pending\":%llu,\"chunks_copied\":%llu,\"chunks_released\":%llu",
			  (unsigned long long)f[FLEECE_ST_CHUNKS_TOTAL],
			  (unsigned long long)f[FLEECE_ST_CHUNKS_PENDING],
			  (unsigned long long)f[FLEECE_ST_CHUNKS_COPIED],
			  (unsigned long long)f[FLEECE_ST_CHUNKS_RELEASED]);
		sb_printf(sb, ",\"cbw_count\":%llu,\"cbw_in_flight\":%llu,\"cbw_errors\":%llu,\"percent_done\":%.2f",
			  (unsigned long long)f[FLEECE_ST_CBW_COUNT],
			  (unsigned long long)f[FLEECE_ST_COPIES_IN_FLIGHT],
			  (unsigned long long)f[FLEECE_ST_CBW_ERRORS], percent_done(r));
		sb_printf(sb, ",\"origin_device\":");
		sb_json_str(sb, r->origin_path);
		sb_printf(sb, ",\"origin_offset_sectors\":%llu",
			  (unsigned long long)r->params.origin_offset);
		sb_printf(sb, ",\"fleece_device\":");
		sb_json_str(sb, r->fleece_path);
		sb_printf(sb, ",\"fleece_bytes_used\":%llu,\"fleece_bytes_used_exact\":%s",
			  (unsigned long long)r->fleece_used,
			  r->fleece_used_exact ? "true" : "false");
		sb_printf(sb, ",\"fail_origin_writes\":%s,\"cbw_timeout_ms\":%u",
			  r->params.fail_origin_writes ? "true" : "false",
			  r->params.cbw_timeout_ms);
	}
	sb_printf(sb, ",\"track_store\":");
	if (r->track_store[0])
		sb_json_str(sb, r->track_store);
	else
		sb_printf(sb, "null");
	sb_printf(sb, ",\"fleece_file\":");
	if (r->fleece_file[0])
		sb_json_str(sb, r->fleece_file);
	else
		sb_printf(sb, "null");
	if (r->view_path[0])
		sb_printf(sb, ",\"view_reads_origin\":%llu,\"view_reads_fleece\":%llu,\"view_reads_refused\":%llu",
			  (unsigned long long)r->view_reads_origin,
			  (unsigned long long)r->view_reads_fleece,
			  (unsigned long long)r->view_reads_refused);
	sb_printf(sb, "}");
}

static void status_help(void)
{
	printf("Usage: fleece status [-q] [-v] [--json] [NAME...]\n"
	       "\n"
	       "Show each fleeced device (all of them without NAME): its state (active,\n"
	       "invalid, incomplete or none), chunk counts, copies made, fleece space in use\n"
	       "and how much of the image has been backed up (released).\n"
	       "\n"
	       "Options:\n"
	       "  -j, --json                one JSON object: {\"devices\": [...]}\n"
	       "  -q, --quiet               no messages but errors (the report is printed)\n"
	       "  -v, --verbose             more messages\n"
	       "  -h, --help                this help\n"
	       "\n"
	       "Exit status (the same with --json):\n"
	       "  0  every device shown is active (also when none is shown: no NAME given\n"
	       "     and nothing fleeced)\n"
	       "  1  a device is incomplete (an interrupted start or stop); or device-mapper\n"
	       "     cannot be queried (e.g. not run as root): then nothing on standard output\n"
	       "  4  a device's view is invalid\n"
	       "  5  a NAME given is not fleeced\n"
	       "The first that applies, in the order 4, 1, 5.\n");
}

/*
 * The exit status for one device's state: 0 active, 4 invalid, 1
 * incomplete (broken: "fleece stop NAME" must clean up), 5 not fleeced.
 * A failed query is 1 too, but prints nothing: a script that gets 1 with
 * a report on standard output has an incomplete fleece.
 */
static int state_exit_code(const char *state)
{
	if (!strcmp(state, FLEECE_STATE_ACTIVE))
		return EX_FLEECE_OK;
	if (!strcmp(state, FLEECE_STATE_INVALID))
		return EX_FLEECE_INVALID;
	if (!strcmp(state, "none"))
		return EX_FLEECE_NONE;
	return EX_FLEECE_FAIL;
}

/* Of several devices' codes the worst wins: invalid, then incomplete, then none. */
static int exit_rank(int code)
{
	switch (code) {
	case EX_FLEECE_INVALID:
		return 3;
	case EX_FLEECE_FAIL:
		return 2;
	case EX_FLEECE_NONE:
		return 1;
	default:
		return 0;
	}
}

static int status_opt(int c, const char *arg, void *ctx)
{
	(void)arg;
	if (c == 'q')
		return 0;	/* common to every command: no messages but errors */
	if (c != 'j')
		return 1;
	*(bool *)ctx = true;
	return 0;
}

int cmd_status(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct sbuf sb = { 0 };
	char **names = NULL;
	unsigned int n = 0, i;
	struct fleece_report *reps;
	bool json = false;
	int code, err = 0, ret = EX_FLEECE_OK;

	prog = "fleece status";
	code = parse_opts(argc, argv, "jqvh", opts, status_help, status_opt, &json);
	if (code >= 0)
		return code;
	code = fleece_dirs_check();
	if (code)
		return exit_code(code);
	if (optind < argc) {
		n = argc - optind;
		names = xcalloc(n, sizeof(char *));
		for (i = 0; i < n; i++) {
			const char *a = argv[optind + i];
			char name[128];
			struct fleece_names fn;

			if (arg_dm_name(a, name, sizeof(name))) {
				err = -EIO;
				n = i;
				goto out;
			}
			names[i] = xstrdup(name);
			if (fleece_names(names[i], &fn)) {
				n = i + 1;
				ret = usage_error("%s: not a device name", a);
				goto out;
			}
		}
	} else {
		err = fleece_find_all(&names, &n);
		if (err)
			goto out;
	}
	/* Every report first: nothing is printed unless all could be made. */
	reps = xcalloc(n ? n : 1, sizeof(*reps));
	for (i = 0; i < n && !err; i++)
		err = fleece_report(names[i], &reps[i]);
	if (err) {
		free(reps);
		goto out;
	}
	if (json)
		sb_printf(&sb, "{\"devices\":[");
	else if (!n)
		printf("no fleece found\n");
	for (i = 0; i < n; i++) {
		struct fleece_report *r = &reps[i];

		if (json) {
			if (i)
				sb_printf(&sb, ",");
			print_json(&sb, r);
		} else {
			print_human(r);
		}
		code = state_exit_code(r->state);
		if (exit_rank(code) > exit_rank(ret))
			ret = code;
	}
	free(reps);
	if (json) {
		sb_printf(&sb, "]}\n");
		fputs(sb.s, stdout);
		sb_free(&sb);
	}
out:
	for (i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return err ? exit_code(err) : ret;
}
