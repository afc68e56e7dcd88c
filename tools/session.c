// SPDX-License-Identifier: GPL-2.0
/*
 * fleece(8): names, state files, table and status parsing, signals.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "fleece.h"
#include "util.h"

/* Characters allowed in NAME: they end up in udev symlinks and file names. */
static bool name_char_ok(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9') || strchr("+_.:@-", c);
}

int fleece_names(const char *name, struct fleece_names *fn)
{
	size_t n = strlen(name), i;

	memset(fn, 0, sizeof(*fn));
	if (!n)
		return -EINVAL;
	for (i = 0; i < n; i++)
		if (!name_char_ok(name[i])) {
			msg_error("%s: device names with '%c' are not supported (use letters, digits and + _ . : @ -)",
				  name, name[i]);
			return -EINVAL;
		}
	if (n + strlen(FLEECE_ORIGIN_SUFFIX) >= sizeof(fn->origin) ||
	    n + strlen(FLEECE_UUID_ORIGIN) >= sizeof(fn->origin_uuid) - 1) {
		msg_error("%s: name too long: fleece needs to add '%s' to it (at most %zu characters)",
			  name, FLEECE_ORIGIN_SUFFIX,
			  sizeof(fn->origin) - 1 - strlen(FLEECE_ORIGIN_SUFFIX));
		return -ENAMETOOLONG;
	}
	snprintf(fn->name, sizeof(fn->name), "%s", name);
	snprintf(fn->origin, sizeof(fn->origin), "%s%s", name, FLEECE_ORIGIN_SUFFIX);
	snprintf(fn->view, sizeof(fn->view), "%s%s", name, FLEECE_VIEW_SUFFIX);
	snprintf(fn->origin_uuid, sizeof(fn->origin_uuid), "%s%s", FLEECE_UUID_ORIGIN, name);
	snprintf(fn->view_uuid, sizeof(fn->view_uuid), "%s%s", FLEECE_UUID_VIEW, name);
	return 0;
}

/*
 * The answer of a device-mapper query @r for @arg: its dm name into @name
 * (1), no such device (0), or the failed query's -errno (with a message).
 */
static int dm_found(int r, const char *arg, const struct dmw_info *info, char *name,
		    size_t len)
{
	if (r) {
		msg_error("%s: cannot query device-mapper: %s", arg, dmw_strerror(r));
		return r;
	}
	if (!info->exists)
		return 0;
	snprintf(name, len, "%s", info->name);
	return 1;
}

int resolve_dm_name(const char *arg, char *name, size_t len)
{
	struct dmw_info info;
	char path[PATH_MAX];
	struct stat st;
	int r;

	if (!strchr(arg, '/')) {
		r = dm_found(dmw_info(arg, &info), arg, &info, name, len);
		if (r)
			return r < 0 ? r : 0;
		/* "sda" or "ram0": say what it is rather than "no such device". */
		snprintf(path, sizeof(path), "/dev/%s", arg);
		if (stat(path, &st) || !S_ISBLK(st.st_mode)) {
			msg_error("%s: no such device-mapper device", arg);
			return -EFLEECE_REFUSED;
		}
		arg = path;
	}
	if (stat(arg, &st)) {
		const char *slash = strchr(arg, '/');

		/* VG/LV */
		if (arg[0] != '/' && slash && !strchr(slash + 1, '/') &&
		    strlen(arg) < sizeof(path) - 5) {
			char *p = xasprintf("/dev/%s", arg);

			if (!stat(p, &st))
				arg = strcpy(path, p);
			free(p);
		}
	}
	if (arg != path && stat(arg, &st)) {
		msg_errno("%s", arg);
		return -EFLEECE_REFUSED;
	}
	if (!S_ISBLK(st.st_mode)) {
		msg_error("%s: not a block device", arg);
		return -EFLEECE_REFUSED;
	}
	if (!dmw_is_dm_major(major(st.st_rdev))) {
		msg_error("%s: not a device-mapper device: fleece works on LVM logical volumes and other dm devices",
			  arg);
		return -EFLEECE_REFUSED;
	}
	r = dm_found(dmw_info_devno(st.st_rdev, &info), arg, &info, name, len);
	if (r)
		return r < 0 ? r : 0;
	msg_error("%s: no such device-mapper device", arg);
	return -EFLEECE_REFUSED;
}

/* lvm2's dm name of VG/LV: each '-' doubled, joined by '-'. */
static void lvm_dm_name(const char *vg, size_t vglen, const char *lv, char *name,
			size_t len)
{
	size_t k = 0, i;

	for (i = 0; i < vglen && k + 2 < len; i++) {
		if (vg[i] == '-')
			name[k++] = '-';
		name[k++] = vg[i];
	}
	if (k + 1 < len)
		name[k++] = '-';
	for (i = 0; lv[i] && k + 2 < len; i++) {
		if (lv[i] == '-')
			name[k++] = '-';
		name[k++] = lv[i];
	}
	name[k] = '\0';
}

/*
 * For stop and status: NAME, /dev/mapper/NAME, /dev/VG/LV, VG/LV or
 * /dev/dm-N, without a message when the device is gone already (its fleece
 * may still have a state file): then /dev/mapper/NAME gives NAME, /dev/VG/LV
 * and VG/LV lvm2's dm name VG-LV, anything else the last part of the path.
 * A failed device-mapper query is an error (-errno, with a message), never
 * "gone".
 */
int arg_dm_name(const char *arg, char *name, size_t len)
{
	struct dmw_info info;
	struct stat st;
	const char *base, *vg;
	int r;

	if (strchr(arg, '/') && !stat(arg, &st) && S_ISBLK(st.st_mode) &&
	    dmw_is_dm_major(major(st.st_rdev))) {
		r = dm_found(dmw_info_devno(st.st_rdev, &info), arg, &info, name, len);
		if (r)
			return r < 0 ? r : 0;
	}
	base = strrchr(arg, '/');
	if (!base) {
		snprintf(name, len, "%s", arg);
		return 0;
	}
	/* VG/LV or /dev/VG/LV, not /dev/mapper/NAME */
	vg = arg;
	if (!strncmp(vg, "/dev/", 5))
		vg += 5;
	if (vg < base && !memchr(vg, '/', base - vg) && strncmp(vg, "mapper/", 7) &&
	    (vg == arg + 5 || arg[0] != '/')) {
		lvm_dm_name(vg, base - vg, base + 1, name, len);
		return 0;
	}
	snprintf(name, len, "%s", base + 1);
	return 0;
}

/* /dev/mapper/NAME for a dm device, /dev/<kernel name> otherwise. */
int devno_display(dev_t dev, char *buf, size_t len)
{
	struct dmw_info info;

	if (dmw_is_dm_major(major(dev)) && !dmw_info_devno(dev, &info) && info.exists) {
		snprintf(buf, len, "/dev/mapper/%s", info.name);
		return 0;
	}
	return devno_path(dev, buf, len);
}

/* --- state files --------------------------------------------------------- */

const char *state_dir(void)
{
	const char *d = getenv("FLEECE_STATE_DIR");

	return d && *d ? d : FLEECE_STATE_DIR;
}

static char *state_path(const char *name)
{
	return xasprintf("%s/%s", state_dir(), name);
}

/*
 * The temporary file of NAME's state: '~' cannot be in a NAME (see
 * name_char_ok), so it collides with no other NAME's state file.
 */
#define STATE_TMP_SUFFIX "~tmp"

static void state_key(const char *key, const char *v, void *ctx)
{
	struct fleece_state *st = ctx;

	if (!strcmp(key, "phase"))
		snprintf(st->phase, sizeof(st->phase), "%s", v);
	else if (!strcmp(key, "fleece_file"))
		snprintf(st->fleece_file, sizeof(st->fleece_file), "%s", v);
	else if (!strcmp(key, "partial"))
		snprintf(st->partial, sizeof(st->partial), "%s", v);
	else if (!strcmp(key, "loop_dev"))
		parse_devno(v, &st->loop_dev);
	else if (!strcmp(key, "fleece_dev"))
		parse_devno(v, &st->fleece_dev);
	else if (!strcmp(key, "linear"))
		parse_linear_params(v, &st->linear_dev, &st->linear_offset);
	else if (!strcmp(key, "track_store"))
		parse_devno(v, &st->track_store);
	else if (!strcmp(key, "pid"))
		st->pid = strtol(v, NULL, 10);
}

int state_read(const char *name, struct fleece_state *st)
{
	char *path = state_path(name);
	FILE *f;

	memset(st, 0, sizeof(*st));
	f = fopen(path, "re");
	free(path);
	if (!f)
		return errno == ENOENT ? 0 : -errno;
	st->present = true;
	kv_read(f, state_key, st);
	fclose(f);
	return 0;
}

int state_write(const char *name, const struct fleece_state *st)
{
	char *path = state_path(name), *tmp = xasprintf("%s" STATE_TMP_SUFFIX, path);
	FILE *f;
	int r = 0;

	if (mkdir(state_dir(), 0700) && errno != EEXIST) {
		r = -errno;
		msg_errno("cannot create the state directory %s", state_dir());
		goto out;
	}
	r = fault_point("state-write");	/* test: a start failing at each record */
	if (r) {
		errno = -r;
		msg_errno("cannot write %s", tmp);
		goto out;
	}
	f = create_tmp_file(tmp, 0600, &r);
	if (!f)
		goto out;
	fprintf(f, "# fleece(8) state of %s: removed by 'fleece stop %s'\n", name, name);
	fprintf(f, "phase=%s\n", st->phase);
	if (st->fleece_file[0])
		fprintf(f, "fleece_file=%s\n", st->fleece_file);
	if (st->partial[0])
		fprintf(f, "partial=%s\n", st->partial);
	if (st->loop_dev)
		fprintf(f, "loop_dev=%u:%u\n", major(st->loop_dev), minor(st->loop_dev));
	if (st->fleece_dev)
		fprintf(f, "fleece_dev=%u:%u\n", major(st->fleece_dev), minor(st->fleece_dev));
	if (st->linear_dev)
		fprintf(f, "linear=%u:%u %llu\n", major(st->linear_dev), minor(st->linear_dev),
			(unsigned long long)st->linear_offset);
	if (st->track_store)
		fprintf(f, "track_store=%u:%u\n", major(st->track_store), minor(st->track_store));
	fprintf(f, "pid=%ld\n", (long)getpid());
	if (fflush(f) || fsync(fileno(f))) {
		r = -errno;
		fclose(f);
		msg_errno("cannot write %s", tmp);
		goto out;
	}
	fclose(f);
	if (rename(tmp, path)) {
		r = -errno;
		msg_errno("cannot write %s", path);
		goto out;
	}
	r = fsync_dir(state_dir());
	if (r) {
		errno = -r;
		msg_errno("cannot sync the state directory %s", state_dir());
	}
out:
	free(tmp);
	free(path);
	return r;
}

int state_present(const char *name, bool *present)
{
	struct fleece_state st;
	int r;

	r = state_read(name, &st);
	if (r) {
		errno = -r;
		msg_errno("%s: cannot read its state file in %s", name, state_dir());
		return r;
	}
	*present = st.present;
	return 0;
}

int state_absent(const char *name)
{
	bool present;
	int r;

	r = state_present(name, &present);
	if (r)
		return r;
	if (present) {
		msg_error("%s: already fleeced, or an earlier fleece was not cleaned up (%s/%s): run 'fleece stop %s' first",
			  name, state_dir(), name, name);
		return -EFLEECE_REFUSED;
	}
	return 0;
}

int state_remove(const char *name)
{
	char *path = state_path(name);
	int r = 0;

	if (unlink(path) && errno != ENOENT) {
		r = -errno;
		msg_errno("cannot remove %s", path);
	} else {
		fsync_dir(state_dir());
	}
	free(path);
	return r;
}

int state_list(char ***names, unsigned int *n)
{
	struct dirent *de;
	char **v = NULL, **nv;
	unsigned int i;
	size_t len;
	DIR *d;
	int r = 0;

	*names = NULL;
	*n = 0;
	d = opendir(state_dir());
	if (!d)
		return errno == ENOENT ? 0 : -errno;
	for (;;) {
		errno = 0;
		de = readdir(d);
		if (!de) {
			r = -errno;
			break;
		}
		len = strlen(de->d_name);
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") ||
		    (len > strlen(STATE_TMP_SUFFIX) &&
		     !strcmp(de->d_name + len - strlen(STATE_TMP_SUFFIX), STATE_TMP_SUFFIX)))
			continue;
		nv = realloc(v, (*n + 1) * sizeof(*v));
		if (!nv) {
			r = -ENOMEM;
			break;
		}
		v = nv;
		v[(*n)++] = xstrdup(de->d_name);
	}
	closedir(d);
	if (r) {
		for (i = 0; i < *n; i++)
			free(v[i]);
		free(v);
		*n = 0;
		return r;
	}
	*names = v;
	return 0;
}

/* --- locks ------------------------------------------------------------- */

#define FLEECE_LOCK_DIR "/run/fleece"

static const char *lock_dir(void)
{
	const char *d = getenv("FLEECE_LOCK_DIR");

	return d && *d ? d : FLEECE_LOCK_DIR;
}

/*
 * A directory whose files decide what fleece removes and which commands
 * exclude each other must be root's alone, as sshd's StrictModes wants
 * it: @dir itself no symbolic link, and it and every directory above it
 * owned by root (or the caller) and not writable by group or others (a
 * sticky directory such as /tmp excepted above @dir).  A missing @dir is
 * created by fleece, 0700: then the directories above it are checked.
 * 0, or -EFLEECE_REFUSED with a message.
 */
int private_dir_check(const char *dir, const char *what)
{
	char *path = xstrdup(dir), *real, *p;
	struct stat st;
	bool top = true;
	int r = 0;

	if (!lstat(dir, &st)) {
		if (S_ISLNK(st.st_mode)) {
			msg_error("%s %s: is a symbolic link: refusing to use it", what, dir);
			free(path);
			return -EFLEECE_REFUSED;
		}
	} else if (errno == ENOENT) {
		/* To be created: where. */
		top = false;
		p = strrchr(path, '/');
		if (p == path)
			p[1] = '\0';
		else if (p)
			*p = '\0';
		else
			snprintf(path, strlen(path) + 1, ".");
	}
	real = realpath(path, NULL);
	free(path);
	if (!real) {
		msg_errno("%s %s", what, dir);
		return -EFLEECE_REFUSED;
	}
	for (;;) {
		if (stat(real, &st)) {
			msg_errno("%s %s: %s", what, dir, real);
			r = -EFLEECE_REFUSED;
		} else if (!S_ISDIR(st.st_mode)) {
			msg_error("%s %s: %s is not a directory", what, dir, real);
			r = -EFLEECE_REFUSED;
		} else if (st.st_uid && st.st_uid != geteuid()) {
			msg_error("%s %s: %s is owned by uid %u, not by root: refusing to use it",
				  what, dir, real, (unsigned int)st.st_uid);
			r = -EFLEECE_REFUSED;
		} else if ((st.st_mode & (S_IWGRP | S_IWOTH)) && (top || !(st.st_mode & S_ISVTX))) {
			msg_error("%s %s: %s is writable by %s (mode %04o): refusing to use it",
				  what, dir, real, st.st_mode & S_IWOTH ? "others" : "its group",
				  (unsigned int)(st.st_mode & 07777));
			r = -EFLEECE_REFUSED;
		}
		if (r || !strcmp(real, "/"))
			break;
		top = false;
		p = strrchr(real, '/');		/* one level up */
		if (p == real)
			p[1] = '\0';
		else
			*p = '\0';
	}
	free(real);
	return r;
}

/* The state and lock directories, if they exist: private_dir_check(). */
int fleece_dirs_check(void)
{
	static int checked = 1;

	if (checked > 0) {
		checked = private_dir_check(state_dir(), "FLEECE_STATE_DIR");
		if (!checked)
			checked = private_dir_check(lock_dir(), "FLEECE_LOCK_DIR");
	}
	return checked;
}

/* The locks this process holds: as many as the NAMEs of one command. */
static struct held_lock {
	char *name;
	int fd;
} *held_locks;
static unsigned int nr_held_locks;

/*
 * One fleece command at a time per NAME: a second "start" could otherwise
 * take the first one's devices for leftovers and undo them.  The lock is
 * held until the process ends.
 */
int fleece_lock(const char *name)
{
	const char *dir = lock_dir();
	struct held_lock *held;
	unsigned int i;
	char *path;
	int fd, r;

	for (i = 0; i < nr_held_locks; i++)
		if (!strcmp(held_locks[i].name, name))
			return 0;
	r = fleece_dirs_check();
	if (r)
		return r;
	if (mkdir(dir, 0700) && errno != EEXIST) {
		r = -errno;
		msg_errno("cannot create %s", dir);
		return r;
	}
	path = xasprintf("%s/%s.lock", dir, name);
	fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		r = -errno;
		msg_errno("cannot open %s", path);
		free(path);
		return r;
	}
	if (flock(fd, LOCK_EX | LOCK_NB)) {
		r = errno == EWOULDBLOCK ? -EBUSY : -errno;
		if (r == -EBUSY)
			msg_error("%s: another fleece command is working on it (lock %s)", name, path);
		else
			msg_errno("cannot lock %s", path);
		close(fd);
		free(path);
		return r;
	}
	free(path);
	held = realloc(held_locks, (nr_held_locks + 1) * sizeof(*held_locks));
	if (!held) {
		msg_error("%s: out of memory", name);
		close(fd);
		return -ENOMEM;
	}
	held_locks = held;
	held_locks[nr_held_locks].name = xstrdup(name);
	held_locks[nr_held_locks++].fd = fd;
	return 0;
}

/* --- tables and status lines ------------------------------------------- */

int parse_devno(const char *s, dev_t *dev)
{
	unsigned int ma, mi;
	char c;

	if (sscanf(s, "%u:%u%c", &ma, &mi, &c) != 2)
		return -EINVAL;
	*dev = makedev(ma, mi);
	return 0;
}

int parse_linear_params(const char *s, dev_t *dev, uint64_t *offset)
{
	unsigned int ma, mi;
	unsigned long long off;
	char c;

	if (sscanf(s, "%u:%u %llu%c", &ma, &mi, &off, &c) != 3)
		return -EINVAL;
	*dev = makedev(ma, mi);
	*offset = off;
	return 0;
}

int parse_fleece_params(const char *params, struct fleece_params *p)
{
	char *copy = xstrdup(params), *save = NULL, *tok;
	unsigned int i = 0, nfeat = 0;
	int r = -EINVAL;

	memset(p, 0, sizeof(*p));
	for (tok = strtok_r(copy, " ", &save); tok; tok = strtok_r(NULL, " ", &save), i++) {
		if (i == 0 && parse_devno(tok, &p->origin))
			goto out;
		if (i == 1 && parse_devno(tok, &p->fleece))
			goto out;
		if (i == 2)
			p->chunk_sectors = strtoul(tok, NULL, 10);
		if (i == 3)
			nfeat = strtoul(tok, NULL, 10);
		if (i > 3 && i <= 3 + nfeat) {
			if (!strcmp(tok, FLEECE_FEATURE_FAIL_ORIGIN_WRITES)) {
				p->fail_origin_writes = true;
			} else if (!strcmp(tok, FLEECE_FEATURE_CBW_TIMEOUT_MS)) {
				tok = strtok_r(NULL, " ", &save);
				i++;
				if (!tok)
					goto out;
				p->cbw_timeout_ms = strtoul(tok, NULL, 10);
			} else if (!strcmp(tok, FLEECE_FEATURE_ORIGIN_OFFSET)) {
				tok = strtok_r(NULL, " ", &save);
				i++;
				if (!tok)
					goto out;
				p->origin_offset = strtoull(tok, NULL, 10);
			}
		}
	}
	if (i >= 3 && p->chunk_sectors)
		r = 0;
out:
	free(copy);
	return r;
}

bool table_is_fleece(const struct dmw_table *t, struct fleece_params *p)
{
	return t->n == 1 && !strcmp(t->t[0].type, FLEECE_TARGET_NAME) &&
	       !parse_fleece_params(t->t[0].params, p);
}

bool fleece_table_ours(const struct fleece_params *p, dev_t hidden,
		       const struct fleece_state *st)
{
	if (hidden)
		return p->origin == hidden && !p->origin_offset;
	return st->linear_dev && p->origin == st->linear_dev &&
	       p->origin_offset == st->linear_offset;
}

int parse_fleece_status(const char *params, struct fleece_status *s)
{
	char *copy = xstrdup(params), *save = NULL, *tok;
	unsigned int i = 0;

	memset(s, 0, sizeof(*s));
	for (tok = strtok_r(copy, " ", &save); tok && i < FLEECE_ST_NR_FIELDS;
	     tok = strtok_r(NULL, " ", &save), i++) {
		if (i == FLEECE_ST_STATE)
			s->invalid = !!strcmp(tok, FLEECE_STATE_ACTIVE);
		else
			s->f[i] = strtoull(tok, NULL, 10);
	}
	free(copy);
	/* A module older than target version 1.1 ends at the state. */
	return i > FLEECE_ST_STATE ? 0 : -EINVAL;
}

int fleece_need_module(void)
{
	struct utsname u;
	int r;

	if (!dmw_target_present(FLEECE_TARGET_NAME) &&
	    !dmw_target_present(FLEECE_VIEW_TARGET_NAME))
		return 0;
	msg_debug("the fleece targets are not registered: running modprobe %s", FLEECE_MODULE);
	r = run_modprobe(FLEECE_MODULE, verbose < 1);
	if (!dmw_target_present(FLEECE_TARGET_NAME) &&
	    !dmw_target_present(FLEECE_VIEW_TARGET_NAME))
		return 0;
	if (r < 0)
		msg_error("the kernel has no '%s' target and modprobe could not be run: load the %s module",
			  FLEECE_TARGET_NAME, FLEECE_MODULE);
	else
		msg_error("the kernel has no '%s' target and 'modprobe %s' failed: install the %s module for kernel %s (make install) or load it with insmod",
			  FLEECE_TARGET_NAME, FLEECE_MODULE, FLEECE_MODULE,
			  uname(&u) ? "this kernel" : u.release);
	return -ENOENT;
}

/*
 * Every NAME that has something of a fleece: devices or a state file.  A
 * failed query fails the whole search (-errno, with a message): a partial
 * list would read as "nothing else is fleeced".
 */
int fleece_find_all(char ***out, unsigned int *nout)
{
	char **names = NULL, **states = NULL, **v;
	unsigned int n = 0, ns = 0, i, j;
	struct dmw_info info;
	int r;

	*out = NULL;
	*nout = 0;
	r = dmw_list(&names, &n);
	if (r) {
		msg_error("cannot list the device-mapper devices: %s", dmw_strerror(r));
		return r;
	}
	r = state_list(&states, &ns);
	if (r) {
		errno = -r;
		msg_errno("cannot list the state files in %s", state_dir());
		goto out;
	}
	for (i = 0; i < n + ns; i++) {
		const char *cand = NULL;

		if (i < n) {
			r = dmw_info(names[i], &info);
			if (r) {
				msg_error("%s: cannot query device-mapper: %s", names[i],
					  dmw_strerror(r));
				goto out;
			}
			if (info.exists) {
				if (!strncmp(info.uuid, FLEECE_UUID_ORIGIN, strlen(FLEECE_UUID_ORIGIN)))
					cand = info.uuid + strlen(FLEECE_UUID_ORIGIN);
				else if (!strncmp(info.uuid, FLEECE_UUID_VIEW, strlen(FLEECE_UUID_VIEW)))
					cand = info.uuid + strlen(FLEECE_UUID_VIEW);
			}
		} else {
			cand = states[i - n];
		}
		if (!cand)
			continue;
		for (j = 0; j < *nout; j++)
			if (!strcmp((*out)[j], cand))
				break;
		if (j < *nout)
			continue;
		v = realloc(*out, (*nout + 1) * sizeof(char *));
		if (!v) {
			r = -ENOMEM;
			goto out;
		}
		*out = v;
		(*out)[(*nout)++] = xstrdup(cand);
	}
out:
	if (r) {
		for (i = 0; i < *nout; i++)
			free((*out)[i]);
		free(*out);
		*out = NULL;
		*nout = 0;
	}
	for (i = 0; i < n; i++)
		free(names[i]);
	for (i = 0; i < ns; i++)
		free(states[i]);
	free(names);
	free(states);
	return r;
}

/* --- signals ------------------------------------------------------------- */

volatile sig_atomic_t fleece_signal;

static void on_signal(int sig)
{
	if (!fleece_signal)
		fleece_signal = sig;
}

void signals_install(void)
{
	struct sigaction sa, old;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;	/* no SA_RESTART: blocking calls return EINTR */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	/* nohup, or a script's trap '' HUP: a hang-up is to be ignored. */
	if (sigaction(SIGHUP, NULL, &old) || old.sa_handler != SIG_IGN)
		sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
}

void signals_block(sigset_t *old)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	sigprocmask(SIG_BLOCK, &set, old);
}

void signals_restore(const sigset_t *old)
{
	sigprocmask(SIG_SETMASK, old, NULL);
}
