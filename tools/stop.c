// SPDX-License-Identifier: GPL-2.0
/*
 * fleece stop: put every device back as it was before "fleece start".
 *
 * It works from what it finds, so it also finishes a start or a stop that
 * was interrupted (a killed process, a crash) and does nothing when there is
 * nothing left:
 *   1. remove the view NAME-fleece-view;
 *   2. if NAME runs the fleece table "start" loaded: load NAME's original
 *      table (the hidden origin's, or the linear one the state file keeps;
 *      a tracked NAME's fleece-track table, which shares the tracker)
 *      into NAME, suspend, resume; if NAME only has such a fleece table
 *      loaded (inactive), clear it, and resume NAME if a start left it
 *      suspended;
 *   3. remove NAME-fleece-origin;
 *   4. detach the loop device and remove the fleece file, the state file,
 *      and an unfinished backup's output.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "fleece.h"
#include "loop.h"
#include "opts.h"
#include "track.h"
#include "util.h"

/* What stop finds of a fleece of NAME, all of it read before anything is changed. */
struct stop_ctx {
	struct fleece_names fn;
	struct fleece_state st;
	struct dmw_info vi, oi, ni;	/* view, hidden origin, NAME */
	dev_t origin_dev;		/* the hidden origin, 0: none */
	bool live_ours;			/* NAME runs the fleece table start loaded */
	bool inactive_ours;		/* ... or has it loaded, inactive */
	struct dmw_table orig;		/* NAME's original table, when live_ours */
	bool did;
	char vg[128];			/* an LV's VG, its lvm2 lock held */
	unsigned int flags;		/* STOP_* */
	bool st_unreadable;		/* --force went on without it */
};

static int query_failed(const char *name, const char *what, int r)
{
	msg_error("%s: cannot query %s: %s: nothing was changed", name, what, dmw_strerror(r));
	return r;
}

/*
 * NAME's original table: the hidden origin's, or the linear one over
 * @sectors that the state file keeps.
 */
static int original_table(struct stop_ctx *c, uint64_t sectors)
{
	char params[64];
	int r;

	memset(&c->orig, 0, sizeof(c->orig));
	if (!c->oi.exists) {
		snprintf(params, sizeof(params), "%u:%u %llu", major(c->st.linear_dev),
			 minor(c->st.linear_dev), (unsigned long long)c->st.linear_offset);
		dmw_table_add(&c->orig, 0, sectors, "linear", params);
		return 0;
	}
	r = dmw_get_table(c->oi.name, false, &c->orig);
	if (!r && !c->orig.n)
		r = -ENODATA;
	/* A tracked NAME: its fleece-track table goes back, sharing the tracker. */
	if (!r)
		track_table_no_format(&c->orig);
	if (r) {
		dmw_table_free(&c->orig);
		msg_error("%s: cannot read the original table from %s: %s: nothing was changed",
			  c->fn.name, c->oi.name, r == -ENODATA ? "it has none" : dmw_strerror(r));
	}
	return r;
}

/*
 * --force, NAME's live fleece table not recognised as fleece's own (its
 * state file lost or unreadable): NAME's table before the start was a
 * linear table over the fleece target's origin, at its origin_offset.
 * That is taken as NAME's original table only when nothing contradicts
 * it: no hidden origin, no state file recording another table, an origin
 * that is no device fleece made for another NAME, a view (if any) on the
 * same origin and fleece device.  0, or -EFLEECE_REFUSED with a message
 * naming what is missing.
 */
static int rebuild_linear(struct stop_ctx *c, const struct fleece_params *fp)
{
	const char *name = c->fn.name;
	char path[PATH_MAX], params[64];
	struct dmw_table vt;
	struct dmw_info info;
	int r;

	snprintf(params, sizeof(params), "%u:%u %llu", major(fp->origin), minor(fp->origin),
		 (unsigned long long)fp->origin_offset);
	if (c->oi.exists) {
		msg_error("%s: its hidden origin %s exists, but the live fleece table is on %s: cannot tell its original table: leaving it alone",
			  name, c->oi.name, params);
		return -EFLEECE_REFUSED;
	}
	if (c->st.present) {
		char rec[64] = "none";

		if (c->st.linear_dev)
			snprintf(rec, sizeof(rec), "%u:%u %llu", major(c->st.linear_dev),
				 minor(c->st.linear_dev), (unsigned long long)c->st.linear_offset);
		msg_error("%s: the state file records the linear table %s, and the live fleece table is on %s: cannot tell which was its table; remove %s/%s if the state file is wrong",
			  name, rec, params, state_dir(), name);
		return -EFLEECE_REFUSED;
	}
	if (dmw_is_dm_major(major(fp->origin))) {
		r = dmw_info_devno(fp->origin, &info);
		if (r)
			return query_failed(name, "the fleece table's origin", r);
		if (info.exists && !strncmp(info.uuid, FLEECE_UUID_PREFIX, strlen(FLEECE_UUID_PREFIX))) {
			msg_error("%s: the live fleece table's origin is %s, which fleece created for another device: cannot tell its original table: leaving it alone",
				  name, info.name);
			return -EFLEECE_REFUSED;
		}
	}
	if (c->vi.exists) {
		unsigned int om, on, fm, fn;
		bool same;

		r = dmw_get_table(c->vi.name, false, &vt);
		if (r)
			return query_failed(name, "its view's table", r);
		/* "<origin> <fleece>" */
		same = vt.n == 1 && !strcmp(vt.t[0].type, FLEECE_VIEW_TARGET_NAME) &&
		       sscanf(vt.t[0].params, "%u:%u %u:%u", &om, &on, &fm, &fn) == 4 &&
		       makedev(om, on) == fp->origin && makedev(fm, fn) == fp->fleece;
		dmw_table_free(&vt);
		if (!same) {
			msg_error("%s: its view %s is not on the live fleece table's origin %u:%u and fleece device: cannot tell its original table: leaving it alone",
				  name, c->vi.name, major(fp->origin), minor(fp->origin));
			return -EFLEECE_REFUSED;
		}
	}
	c->st.linear_dev = fp->origin;
	c->st.linear_offset = fp->origin_offset;
	msg_warn("%s: no readable state file: rebuilt its linear table (%s) from the live fleece table (--force)",
		 name, params);
	if (major(fp->fleece) == 7 && !loop_backing_file(fp->fleece, path, sizeof(path)))
		msg_warn("%s: its fleece device is a loop device on %s: if that is a fleece file (--fleece-dir), remove it once 'fleece stop' is done",
			 name, path);
	return 0;
}

/* 1. Read everything; refuse a fleece table fleece(8) did not make. */
static int stop_survey(struct stop_ctx *c)
{
	const char *name = c->fn.name;
	struct fleece_params fp;
	struct dmw_table t;
	int r;

	r = state_read(name, &c->st);
	if (r && !(c->flags & STOP_FORCE)) {
		errno = -r;
		msg_errno("%s: cannot read its state file in %s: nothing was changed", name,
			  state_dir());
		return r;
	}
	if (r) {
		msg_warn("%s: cannot read its state file in %s (%s): going on without it (--force)",
			 name, state_dir(), strerror(-r));
		memset(&c->st, 0, sizeof(c->st));
		c->st_unreadable = true;
	}
	c->did = c->st.present || c->st_unreadable;
	r = dmw_info_uuid(c->fn.view_uuid, &c->vi);
	if (r)
		return query_failed(name, "its view", r);
	r = dmw_info_uuid(c->fn.origin_uuid, &c->oi);
	if (r)
		return query_failed(name, "its hidden origin", r);
	if (c->oi.exists) {
		c->origin_dev = makedev(c->oi.major, c->oi.minor);
		c->did = true;
	}
	r = dmw_info(name, &c->ni);
	if (r)
		return query_failed(name, "the device", r);
	if (!c->ni.exists)
		return 0;
	/* An LV: no lvm2 command reloads it until its table is back; then look again. */
	r = lvm_lv_vg(name, c->ni.uuid, c->vg, sizeof(c->vg));
	if (!r && c->vg[0])
		r = lvm_vg_lock(name, c->vg, c->flags & STOP_FORCE);
	if (r) {
		c->vg[0] = '\0';
		return r;
	}
	if (c->vg[0]) {
		r = dmw_info(name, &c->ni);
		if (r)
			return query_failed(name, "the device", r);
		if (!c->ni.exists)
			return 0;
	}
	if (c->ni.live_table) {
		r = dmw_get_table(name, false, &t);
		if (r)
			return query_failed(name, "its table", r);
		if (table_is_fleece(&t, &fp)) {
			uint64_t sectors = dmw_table_len(&t);

			dmw_table_free(&t);
			if (!fleece_table_ours(&fp, c->origin_dev, &c->st)) {
				if (c->flags & STOP_FORCE)
					r = rebuild_linear(c, &fp);
				else
					r = -EFLEECE_REFUSED;
				if (r == -EFLEECE_REFUSED && !(c->flags & STOP_FORCE))
					msg_error("%s: runs a fleece table on %u:%u that fleece(8) did not make (or whose state file is lost: see --force): leaving it alone",
						  name, major(fp.origin), minor(fp.origin));
				if (r)
					return r;
			}
			c->live_ours = true;
			return original_table(c, sectors);
		}
		dmw_table_free(&t);
	}
	if (c->ni.inactive_table) {
		r = dmw_get_table(name, true, &t);
		if (r)
			return query_failed(name, "its inactive table", r);
		/* Clearing an inactive table changes nothing a writer sees. */
		c->inactive_ours = table_is_fleece(&t, &fp) &&
				   (fleece_table_ours(&fp, c->origin_dev, &c->st) ||
				    (c->flags & STOP_FORCE));
		dmw_table_free(&t);
	}
	return 0;
}

/* 2. The view. */
static int stop_view(struct stop_ctx *c)
{
	int r;

	if (!c->vi.exists)
		return 0;
	r = dmw_remove(c->vi.name, true);
	if (r) {
		if (r == -EBUSY)
			msg_error("%s: cannot remove the view %s: it is in use (a reader still has it open)",
				  c->fn.name, c->vi.name);
		else
			msg_error("%s: cannot remove the view %s: %s", c->fn.name, c->vi.name,
				  dmw_strerror(r));
		return r;
	}
	msg_debug("%s: removed %s", c->fn.name, c->vi.name);
	c->did = true;
	return 0;
}

/* 3a. Load NAME's original table in place of the fleece table. */
static int restore_table(struct stop_ctx *c)
{
	const char *name = c->fn.name;
	sigset_t oldmask;
	bool locked;
	int r;

	r = dmw_load(name, &c->orig, c->ni.read_only);
	if (r) {
		msg_error("%s: cannot load its original table: %s", name, dmw_strerror(r));
		return r;
	}
	/* Memory locked, messages held while NAME is suspended: see start.c. */
	locked = !mlockall(MCL_CURRENT | MCL_FUTURE);
	signals_block(&oldmask);
	msg_hold(true);
	dmw_quiet(1);
	r = dmw_suspend(name, true);
	dmw_quiet(-1);
	if (r == -EBUSY)	/* its file system is frozen already */
		r = dmw_suspend(name, false);
	if (r) {
		msg_error("%s: cannot suspend: %s", name, dmw_strerror(r));
		dmw_clear(name);
	} else {
		r = dmw_resume(name, 0);
		if (r)
			msg_error("%s: cannot resume with its original table: %s", name,
				  dmw_strerror(r));
	}
	msg_hold(false);
	signals_restore(&oldmask);
	if (locked)
		munlockall();
	if (r)
		return r;
	msg_debug("%s: original table back", name);
	return 0;
}

/* 3. NAME itself. */
static int stop_name(struct stop_ctx *c)
{
	const char *name = c->fn.name;
	int r;

	if (!c->ni.exists)
		return 0;
	if (c->live_ours)
		return restore_table(c);
	if (c->inactive_ours) {
		r = dmw_clear(name);
		if (r) {
			msg_error("%s: cannot clear its inactive fleece table: %s", name,
				  dmw_strerror(r));
			return r;
		}
		c->did = true;
	}
	if (c->ni.suspended && (c->origin_dev || c->st.present)) {
		/* A start was interrupted while NAME was suspended. */
		r = dmw_resume(name, 0);
		if (r) {
			msg_error("%s: cannot resume: %s", name, dmw_strerror(r));
			return r;
		}
		msg_info("%s: resumed (it was left suspended)", name);
	}
	return 0;
}

/* 4. The hidden origin. */
static int stop_origin(struct stop_ctx *c)
{
	int r;

	if (!c->origin_dev)
		return 0;
	r = dmw_remove(c->oi.name, true);
	if (r) {
		msg_error("%s: cannot remove %s: %s", c->fn.name, c->oi.name, dmw_strerror(r));
		return r;
	}
	msg_debug("%s: removed %s", c->fn.name, c->oi.name);
	return 0;
}

/* 5. The loop device, the fleece file, an unfinished backup, the state. */
static int stop_files(struct stop_ctx *c, bool keep_partial)
{
	const char *name = c->fn.name;
	struct fleece_state *st = &c->st;
	int r;

	if (st->fleece_file[0]) {
		dev_t loop = st->loop_dev;

		if (!loop)
			loop_find_file(st->fleece_file, &loop);
		if (loop) {
			r = loop_detach_file(loop, st->fleece_file);
			if (r) {
				errno = -r;
				msg_errno("%s: cannot detach the loop device %u:%u of %s",
					  name, major(loop), minor(loop), st->fleece_file);
				return r;
			}
		}
		if (unlink(st->fleece_file) && errno != ENOENT) {
			r = -errno;
			msg_errno("%s: cannot remove the fleece file %s", name, st->fleece_file);
			return r;
		}
	}
	if (st->partial[0] && !keep_partial) {
		if (unlink(st->partial) && errno != ENOENT)
			msg_errno("%s: cannot remove the unfinished backup %s", name, st->partial);
		else
			msg_debug("%s: removed the unfinished backup %s", name, st->partial);
	}
	if (st->present || c->st_unreadable)
		return state_remove(name);
	return 0;
}

int fleece_stop(const char *name, unsigned int flags)
{
	struct stop_ctx c;
	int r;

	memset(&c, 0, sizeof(c));
	c.flags = flags;
	r = fleece_names(name, &c.fn);
	if (r)
		return r;
	r = fleece_lock(name);
	if (r)
		return r == -EBUSY ? -EFLEECE_REFUSED : r;
	r = stop_survey(&c);
	/* One wait for udev, after the devices: these steps use no /dev/mapper node. */
	dmw_udev_batch_begin();
	if (!r)
		r = stop_view(&c);
	if (!r)
		r = stop_name(&c);
	if (!r)
		r = stop_origin(&c);
	dmw_udev_batch_end();
	if (!r)
		r = stop_files(&c, flags & STOP_KEEP_PARTIAL);
	dmw_table_free(&c.orig);
	lvm_vg_unlock(c.vg);
	if (r)
		return r;
	if (c.did)
		msg_info("%s: stopped", name);
	else
		msg_info("%s: not fleeced, nothing to do", name);
	return 0;
}

static void stop_help(void)
{
	printf("Usage: fleece stop [OPTIONS] NAME...\n"
	       "       fleece stop --all\n"
	       "\n"
	       "Remove the view of each NAME, put NAME's original table back, remove the\n"
	       "hidden origin (if start made one) and the fleece file 'fleece start'\n"
	       "created.  Safe to repeat;\n"
	       "finishes a start or stop that was interrupted.\n"
	       "\n"
	       "Options:\n"
	       "  -a, --all                 stop every fleece found (devices and state files)\n"
	       "  -f, --force               when NAME's state file is lost or unreadable,\n"
	       "                            rebuild its linear table from its live fleece\n"
	       "                            table (refused when that is ambiguous)\n"
	       HELP_COMMON);
}

struct stop_args {
	bool all;
	unsigned int flags;
};

static int stop_opt(int c, const char *arg, void *ctx)
{
	struct stop_args *a = ctx;

	(void)arg;
	if (c == 'a')
		a->all = true;
	else if (c == 'f')
		a->flags |= STOP_FORCE;
	return c == 'a' || c == 'f' || c == 'q' ? 0 : 1;
}

/* The names given, or every fleece found (--all): 0 or -errno. */
static int stop_names(const struct stop_args *a, int argc, char **argv, char ***names,
		      unsigned int *n)
{
	char name[128];
	int i, r;

	if (a->all) {
		r = fleece_find_all(names, n);
		if (!r && !*n)
			msg_info("no fleece found");
		return r;
	}
	*names = xcalloc(argc - optind, sizeof(char *));
	*n = 0;
	for (i = optind; i < argc; i++) {
		struct fleece_names fn;

		r = arg_dm_name(argv[i], name, sizeof(name));
		if (!r && fleece_names(name, &fn))
			r = usage_err("%s: not a device name", argv[i]);
		if (r)
			return r;
		(*names)[(*n)++] = xstrdup(name);
	}
	return 0;
}

int cmd_stop(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "all", no_argument, NULL, 'a' },
		{ "force", no_argument, NULL, 'f' },
		LONGOPTS_COMMON
	};
	struct stop_args a = { .all = false };
	char **names = NULL;
	unsigned int n = 0, i;
	int r, ret = EX_FLEECE_OK;

	prog = "fleece stop";
	r = parse_opts(argc, argv, "af" SHORTOPTS_COMMON, opts, stop_help, stop_opt, &a);
	if (r >= 0)
		return r;
	if (a.all && optind < argc)
		return usage_error("--all and device names cannot be used together");
	if (!a.all && optind >= argc)
		return usage_error("no device given (or --all)");
	r = stop_names(&a, argc, argv, &names, &n);
	if (!r)
		signals_install();
	/* Each NAME in turn; the exit status is the worst of them. */
	for (i = 0; i < n; i++) {
		if (!r) {
			int e = exit_code(fleece_stop(names[i], a.flags));

			if (e > ret)
				ret = e;
		}
		free(names[i]);
	}
	free(names);
	return r ? exit_code(r) : ret;
}
