// SPDX-License-Identifier: GPL-2.0
/*
 * fleece(8): a small wrapper around libdevmapper.
 *
 * Operations that make the kernel send a uevent (resume, remove, and create,
 * which resumes) carry a udev cookie with the caller's DM_UDEV_* flags and
 * wait for udev to finish processing them, as lvm2 and dmsetup do.  When
 * udev is not running libdevmapper creates the /dev/mapper nodes itself.
 * Within a batch (dmw_udev_batch_begin()) they share one cookie and are
 * waited for once, at its end, as lvm2 waits once for a tree of devices.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <libdevmapper.h>

#include "dm.h"
#include "util.h"

static int dm_quiet_level;

void dmw_quiet(int delta)
{
	dm_quiet_level += delta;
}

/* libdevmapper's messages: errors and warnings, more with -vv. */
static void dmw_log(int level, const char *file, int line, int dm_errno_or_class,
		    const char *f, ...)
{
	int lvl = level & 7;	/* _LOG_ERR 3 ... _LOG_DEBUG 7 */
	char buf[2048];
	va_list ap;
	int n;

	(void)file;
	(void)line;
	(void)dm_errno_or_class;
	if (lvl > 4 + (verbose > 1 ? verbose - 1 : 0))
		return;
	if (lvl <= 4 && dm_quiet_level > 0 && verbose < 2)
		return;
	n = snprintf(buf, sizeof(buf), "%s: ", prog);
	if (n < 0 || (size_t)n >= sizeof(buf))
		n = 0;
	va_start(ap, f);
	vsnprintf(buf + n, sizeof(buf) - n, f, ap);
	va_end(ap);
	msg_line(buf);
}

int dmw_init(void)
{
	dm_log_with_errno_init(dmw_log);
	return 0;
}

void dmw_exit(void)
{
	dm_lib_release();
}

bool dmw_is_dm_major(unsigned int major)
{
	return dm_is_dm_major(major);
}

void dmw_table_add(struct dmw_table *t, uint64_t start, uint64_t len,
		   const char *type, const char *params)
{
	struct dmw_target *n = realloc(t->t, (t->n + 1) * sizeof(*t->t));

	if (!n) {
		msg_error("out of memory");
		exit(EX_FLEECE_FAIL);
	}
	t->t = n;
	n[t->n].start = start;
	n[t->n].len = len;
	n[t->n].type = xstrdup(type ? type : "");
	n[t->n].params = xstrdup(params ? params : "");
	t->n++;
}

void dmw_table_free(struct dmw_table *t)
{
	unsigned int i;

	for (i = 0; i < t->n; i++) {
		free(t->t[i].type);
		free(t->t[i].params);
	}
	free(t->t);
	t->t = NULL;
	t->n = 0;
}

uint64_t dmw_table_len(const struct dmw_table *t)
{
	uint64_t len = 0;
	unsigned int i;

	for (i = 0; i < t->n; i++)
		if (t->t[i].start + t->t[i].len > len)
			len = t->t[i].start + t->t[i].len;
	return len;
}

bool dmw_tables_equal(const struct dmw_table *a, const struct dmw_table *b)
{
	unsigned int i;

	if (a->n != b->n)
		return false;
	for (i = 0; i < a->n; i++)
		if (a->t[i].start != b->t[i].start || a->t[i].len != b->t[i].len ||
		    strcmp(a->t[i].type, b->t[i].type) || strcmp(a->t[i].params, b->t[i].params))
			return false;
	return true;
}

/*
 * Why libdevmapper could not start a task: it opens /dev/mapper/control
 * then, and keeps the reason to itself.  Opening the node again tells it:
 * EACCES (not root), ENOENT or ENODEV (no device-mapper in this kernel or
 * this container), anything else.
 */
static int control_errno(void)
{
	int fd = open("/dev/mapper/control", O_RDWR | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	close(fd);
	return -EIO;
}

/*
 * A task for @type on @name, or NULL with *err set.  The test-only fault
 * point "dm-<what>" (util.c: fault_point) makes it fail as if the kernel
 * had answered with that errno.
 */
static struct dm_task *task_new(int type, const char *name, const char *what,
				int *err)
{
	struct dm_task *dmt;

	*err = fault_point(what);
	if (*err)
		return NULL;
	dmw_quiet(1);	/* its "open failed" messages: ours say more */
	dmt = dm_task_create(type);
	dmw_quiet(-1);
	if (!dmt) {
		*err = control_errno();
		return NULL;
	}
	if (name && !dm_task_set_name(dmt, name)) {
		dm_task_destroy(dmt);
		*err = -EINVAL;
		return NULL;
	}
	return dmt;
}

const char *dmw_strerror(int err)
{
	switch (-err) {
	case EACCES:
	case EPERM:
		return "permission denied: fleece must be run as root";
	case ENOENT:
	case ENODEV:
		return "device-mapper is not available (no /dev/mapper/control; is the dm-mod module loaded?)";
	case ENXIO:
		return "no such device";
	default:
		return strerror(-err);
	}
}

static int task_errno(struct dm_task *dmt)
{
	int e = dm_task_get_errno(dmt);

	return e ? -e : -EIO;
}

static void fill_info(struct dm_task *dmt, const struct dm_info *di,
		      struct dmw_info *info)
{
	const char *s;

	memset(info, 0, sizeof(*info));
	info->exists = di->exists;
	if (!di->exists)
		return;
	info->suspended = di->suspended;
	info->live_table = di->live_table;
	info->inactive_table = di->inactive_table;
	info->read_only = di->read_only;
	info->open_count = di->open_count;
	info->target_count = di->target_count;
	info->major = di->major;
	info->minor = di->minor;
	s = dm_task_get_name(dmt);
	snprintf(info->name, sizeof(info->name), "%s", s ? s : "");
	s = dm_task_get_uuid(dmt);
	snprintf(info->uuid, sizeof(info->uuid), "%s", s ? s : "");
}

/*
 * Only the kernel's "no such device" (ENXIO, which libdevmapper turns into
 * a successful info with exists == 0) means absent: any other failure is
 * an error the caller must not take for "absent".
 */
static int info_task(struct dm_task *dmt, struct dmw_info *info)
{
	struct dm_info di;
	int r = 0;

	memset(info, 0, sizeof(*info));
	dmw_quiet(1);
	if (!dm_task_run(dmt)) {
		if (dm_task_get_errno(dmt) != ENXIO)
			r = dm_task_get_errno(dmt) ? task_errno(dmt) : control_errno();
	} else if (!dm_task_get_info(dmt, &di)) {
		r = -EIO;
	} else {
		fill_info(dmt, &di, info);
	}
	dmw_quiet(-1);
	dm_task_destroy(dmt);
	return r;
}

int dmw_info(const char *name, struct dmw_info *info)
{
	struct dm_task *dmt;
	int r;

	memset(info, 0, sizeof(*info));
	dmt = task_new(DM_DEVICE_INFO, name, "dm-info", &r);
	if (!dmt)
		return r;
	return info_task(dmt, info);
}

int dmw_info_devno(dev_t dev, struct dmw_info *info)
{
	struct dm_task *dmt;
	int r;

	memset(info, 0, sizeof(*info));
	dmt = task_new(DM_DEVICE_INFO, NULL, "dm-info", &r);
	if (!dmt)
		return r;
	if (!dm_task_set_major(dmt, major(dev)) || !dm_task_set_minor(dmt, minor(dev))) {
		dm_task_destroy(dmt);
		return -EINVAL;
	}
	return info_task(dmt, info);
}

int dmw_info_uuid(const char *uuid, struct dmw_info *info)
{
	struct dm_task *dmt;
	int r;

	memset(info, 0, sizeof(*info));
	dmt = task_new(DM_DEVICE_INFO, NULL, "dm-info", &r);
	if (!dmt)
		return r;
	if (!dm_task_set_uuid(dmt, uuid)) {
		dm_task_destroy(dmt);
		return -EINVAL;
	}
	return info_task(dmt, info);
}

static int get_targets(int type, const char *name, bool inactive,
		       struct dmw_table *out)
{
	struct dm_task *dmt;
	uint64_t start, len;
	char *ttype, *params;
	struct dm_info di;
	void *next = NULL;
	int r = 0;

	memset(out, 0, sizeof(*out));
	dmt = task_new(type, name, type == DM_DEVICE_TABLE ? "dm-table" : "dm-status", &r);
	if (!dmt)
		return r;
	if (inactive && !dm_task_query_inactive_table(dmt)) {
		dm_task_destroy(dmt);
		return -EINVAL;
	}
	/* A table may hold keys (crypt): keep them out of freed memory. */
	dm_task_secure_data(dmt);
	dmw_quiet(1);
	if (!dm_task_run(dmt))
		r = dm_task_get_errno(dmt) ? task_errno(dmt) : control_errno();
	dmw_quiet(-1);
	if (r)
		goto out;
	if (!dm_task_get_info(dmt, &di) || !di.exists) {
		r = -ENXIO;
		goto out;
	}
	do {
		next = dm_get_next_target(dmt, next, &start, &len, &ttype, &params);
		if (ttype)
			dmw_table_add(out, start, len, ttype, params);
	} while (next);
out:
	dm_task_destroy(dmt);
	return r;
}

int dmw_get_table(const char *name, bool inactive, struct dmw_table *out)
{
	return get_targets(DM_DEVICE_TABLE, name, inactive, out);
}

int dmw_get_status(const char *name, struct dmw_table *out)
{
	return get_targets(DM_DEVICE_STATUS, name, false, out);
}

static int add_targets(struct dm_task *dmt, const struct dmw_table *t)
{
	unsigned int i;

	for (i = 0; i < t->n; i++)
		if (!dm_task_add_target(dmt, t->t[i].start, t->t[i].len,
					t->t[i].type, t->t[i].params))
			return -ENOMEM;
	return 0;
}

/*
 * The batch: its depth (begin and end nest), its cookie, and whether a task
 * ran in it.  Between begin and end nothing may need what udev does for the
 * batch's tasks (the /dev/mapper nodes, udev's rules): the ioctls, which
 * name devices, are fine.
 */
static unsigned int batch_depth;
static uint32_t batch_cookie;
static bool batch_ran;

void dmw_udev_batch_begin(void)
{
	if (!batch_depth++) {
		batch_cookie = 0;
		batch_ran = false;
	}
}

void dmw_udev_batch_end(void)
{
	if (!batch_depth || --batch_depth)
		return;
	/* Also without udev: libdevmapper then makes the nodes here. */
	if (batch_ran)
		(void)dm_udev_wait(batch_cookie);
	batch_cookie = 0;
	batch_ran = false;
}

/*
 * Set a udev cookie on @dmt: the batch's, or a new one in *@own (to be
 * waited for by the caller, udev_done()).
 */
static int udev_cookie(struct dm_task *dmt, uint32_t *own, uint16_t udev_flags)
{
	if (!dm_task_set_cookie(dmt, batch_depth ? &batch_cookie : own, udev_flags)) {
		msg_error("cannot set up udev synchronisation");
		return -EIO;
	}
	if (batch_depth)
		batch_ran = true;
	return 0;
}

/* Wait for udev on a cookie of udev_cookie(): now, or at the batch's end. */
static void udev_done(uint32_t own)
{
	if (!batch_depth)
		(void)dm_udev_wait(own);
}

/* Run a task that makes a uevent, with a udev cookie, and wait for udev. */
static int run_with_cookie(struct dm_task *dmt, uint16_t udev_flags)
{
	uint32_t cookie = 0;
	int r;

	r = udev_cookie(dmt, &cookie, udev_flags);
	if (r)
		return r;
	if (!dm_task_run(dmt))
		r = task_errno(dmt);
	udev_done(cookie);
	return r;
}

int dmw_create(const char *name, const char *uuid, const struct dmw_table *t,
	       bool read_only, uint16_t udev_flags)
{
	struct dm_task *dmt;
	int r;

	dmt = task_new(DM_DEVICE_CREATE, name, "dm-create", &r);
	if (!dmt)
		return r;
	dm_task_secure_data(dmt);
	if (read_only && !dm_task_set_ro(dmt)) {
		dm_task_destroy(dmt);
		return -EINVAL;
	}
	if ((uuid && !dm_task_set_uuid(dmt, uuid)) || add_targets(dmt, t)) {
		dm_task_destroy(dmt);
		return -EINVAL;
	}
	r = run_with_cookie(dmt, udev_flags);
	dm_task_destroy(dmt);
	return r;
}

int dmw_load(const char *name, const struct dmw_table *t, bool read_only)
{
	struct dm_task *dmt;
	int r = 0;

	dmt = task_new(DM_DEVICE_RELOAD, name, "dm-load", &r);
	if (!dmt)
		return r;
	dm_task_secure_data(dmt);
	if (read_only && !dm_task_set_ro(dmt)) {
		dm_task_destroy(dmt);
		return -EINVAL;
	}
	if (add_targets(dmt, t)) {
		dm_task_destroy(dmt);
		return -EINVAL;
	}
	if (!dm_task_run(dmt))
		r = task_errno(dmt);
	dm_task_destroy(dmt);
	return r;
}

static int simple_task(int type, const char *name, bool lockfs)
{
	struct dm_task *dmt;
	int r = 0;

	dmt = task_new(type, name, type == DM_DEVICE_SUSPEND ? "dm-suspend" : "dm-clear", &r);
	if (!dmt)
		return r;
	if (type == DM_DEVICE_SUSPEND && !lockfs)
		dm_task_skip_lockfs(dmt);
	if (!dm_task_run(dmt))
		r = task_errno(dmt);
	dm_task_destroy(dmt);
	return r;
}

int dmw_clear(const char *name)
{
	return simple_task(DM_DEVICE_CLEAR, name, false);
}

int dmw_suspend(const char *name, bool lockfs)
{
	return simple_task(DM_DEVICE_SUSPEND, name, lockfs);
}

int dmw_resume(const char *name, uint16_t udev_flags)
{
	struct dm_task *dmt;
	int r;

	dmt = task_new(DM_DEVICE_RESUME, name, "dm-resume", &r);
	if (!dmt)
		return r;
	r = run_with_cookie(dmt, udev_flags);
	dm_task_destroy(dmt);
	return r;
}

int dmw_resume_many(char *const names[], unsigned int n, uint16_t udev_flags,
		    unsigned int *done, double *resumed_at)
{
	uint32_t cookie = 0;
	struct dm_task *dmt;
	unsigned int i;
	int r = 0;

	*done = 0;
	for (i = 0; i < n && !r; i++) {
		dmt = task_new(DM_DEVICE_RESUME, names[i], "dm-resume", &r);
		if (!dmt)
			break;
		r = udev_cookie(dmt, &cookie, udev_flags);
		if (!r && !dm_task_run(dmt))
			r = task_errno(dmt);
		else if (!r)
			(*done)++;
		dm_task_destroy(dmt);
	}
	*resumed_at = now_mono();	/* writers run again from here */
	if (cookie)	/* 0 within a batch: the batch's end waits */
		udev_done(cookie);
	return r;
}

int dmw_remove(const char *name, bool retry)
{
	struct dm_task *dmt;
	int r;

	dmt = task_new(DM_DEVICE_REMOVE, name, "dm-remove", &r);
	if (!dmt)
		return r;
	/* udev's blkid may still hold a device that was just changed. */
	if (retry)
		dm_task_retry_remove(dmt);
	r = run_with_cookie(dmt, 0);
	dm_task_destroy(dmt);
	return r;
}

int dmw_message(const char *name, const char *msg, char **response)
{
	struct dm_task *dmt;
	const char *resp;
	int r = 0;

	if (response)
		*response = NULL;
	dmt = task_new(DM_DEVICE_TARGET_MSG, name, "dm-message", &r);
	if (!dmt)
		return r;
	if (!dm_task_set_sector(dmt, 0) || !dm_task_set_message(dmt, msg)) {
		dm_task_destroy(dmt);
		return -EINVAL;
	}
	dmw_quiet(1);
	if (!dm_task_run(dmt))
		r = dm_task_get_errno(dmt) ? task_errno(dmt) : control_errno();
	dmw_quiet(-1);
	if (!r && response) {
		resp = dm_task_get_message_response(dmt);
		if (resp && *resp)
			*response = xstrdup(resp);
	}
	dm_task_destroy(dmt);
	return r;
}

int dmw_list(char ***names, unsigned int *n)
{
	struct dm_task *dmt;
	struct dm_names *dn;
	unsigned int next = 0;
	char **v = NULL;
	int r = 0;

	*names = NULL;
	*n = 0;
	dmt = task_new(DM_DEVICE_LIST, NULL, "dm-list", &r);
	if (!dmt)
		return r;
	dmw_quiet(1);
	if (!dm_task_run(dmt))
		r = dm_task_get_errno(dmt) ? task_errno(dmt) : control_errno();
	dmw_quiet(-1);
	if (r)
		goto out;
	dn = dm_task_get_names(dmt);
	if (!dn || !dn->dev)
		goto out;
	do {
		dn = (struct dm_names *)((char *)dn + next);
		v = realloc(v, (*n + 1) * sizeof(*v));
		if (!v) {
			msg_error("out of memory");
			exit(EX_FLEECE_FAIL);
		}
		v[(*n)++] = xstrdup(dn->name);
		next = dn->next;
	} while (next);
	*names = v;
out:
	dm_task_destroy(dmt);
	return r;
}

int dmw_target_present(const char *type)
{
	struct dm_task *dmt;
	struct dm_versions *v, *last;
	int r;

	dmt = task_new(DM_DEVICE_LIST_VERSIONS, NULL, "dm-versions", &r);
	if (!dmt)
		return r;
	r = -ENOENT;
	if (!dm_task_run(dmt)) {
		r = dm_task_get_errno(dmt) ? task_errno(dmt) : control_errno();
		goto out;
	}
	v = dm_task_get_versions(dmt);
	if (!v)
		goto out;
	do {
		last = v;
		if (!strcmp(v->name, type)) {
			r = 0;
			break;
		}
		v = (struct dm_versions *)((char *)v + v->next);
	} while (last != v);
out:
	dm_task_destroy(dmt);
	return r;
}
