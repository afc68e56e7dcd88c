/* SPDX-License-Identifier: GPL-2.0 */
/*
 * fleece(8): a small wrapper around libdevmapper.  Every device-mapper
 * operation of the tool goes through here: dm tasks, udev cookies and
 * udev flags, as lvm2 uses them.
 */
#ifndef FLEECE_DM_H
#define FLEECE_DM_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* One line of a table, or of a status: "<start> <len> <type> <params>". */
struct dmw_target {
	uint64_t start, len;	/* sectors */
	char *type;
	char *params;
};

struct dmw_table {
	struct dmw_target *t;
	unsigned int n;
};

struct dmw_info {
	bool exists;
	bool suspended;
	bool live_table;
	bool inactive_table;
	bool read_only;
	int open_count;
	int target_count;
	unsigned int major, minor;
	char name[128];
	char uuid[130];
};

int dmw_init(void);
void dmw_exit(void);

/* While > 0, libdevmapper's error messages are not printed. */
void dmw_quiet(int delta);

void dmw_table_add(struct dmw_table *t, uint64_t start, uint64_t len,
		   const char *type, const char *params);
void dmw_table_free(struct dmw_table *t);
uint64_t dmw_table_len(const struct dmw_table *t);
bool dmw_tables_equal(const struct dmw_table *a, const struct dmw_table *b);

/*
 * Every function returns 0 or -errno.  Only the kernel's "no such device"
 * means absent: the info calls return 0 with info->exists == false then,
 * the table and status calls -ENXIO.  Any other error (-EACCES when not
 * root, -ENOENT without /dev/mapper/control, ...) is an error: never take
 * it for "absent".
 */
const char *dmw_strerror(int err);	/* for a -errno from these functions */

/* 0 and info->exists == false when there is no such device. */
int dmw_info(const char *name, struct dmw_info *info);
int dmw_info_devno(dev_t dev, struct dmw_info *info);
/* A device by its DM UUID. */
int dmw_info_uuid(const char *uuid, struct dmw_info *info);

int dmw_get_table(const char *name, bool inactive, struct dmw_table *out);
int dmw_get_status(const char *name, struct dmw_table *out);

/* Create a device with a table (created, loaded and resumed). */
/* @read_only: the device (or the table loaded) is read-only, as dmsetup -r. */
int dmw_create(const char *name, const char *uuid, const struct dmw_table *t,
	       bool read_only, uint16_t udev_flags);
int dmw_load(const char *name, const struct dmw_table *t, bool read_only);
int dmw_clear(const char *name);
int dmw_suspend(const char *name, bool lockfs);
int dmw_resume(const char *name, uint16_t udev_flags);
/*
 * Resume several devices under one udev cookie, waiting for udev once at
 * the end: a device resumed first may sit on one resumed later, and udev
 * must not be waited for while it could be reading a suspended device.
 * Stops at the first failure; *done tells how many were resumed.
 */
int dmw_resume_many(char *const names[], unsigned int n, uint16_t udev_flags,
		    unsigned int *done, double *resumed_at);
int dmw_remove(const char *name, bool retry);
/*
 * Between begin and end (they nest), the operations above that make
 * uevents share one udev cookie and udev is waited for once, at the end:
 * nothing in between may need what udev does for them (/dev/mapper nodes).
 */
void dmw_udev_batch_begin(void);
void dmw_udev_batch_end(void);
/*
 * Send a target message ("dmsetup message NAME 0 MSG"): 0 or -errno.  With
 * @response, the target's answer (NULL: none) is returned there, to free.
 */
int dmw_message(const char *name, const char *msg, char **response);

/* All dm device names; free each and the array. */
int dmw_list(char ***names, unsigned int *n);

/* 0 if the target type is registered with the kernel. */
int dmw_target_present(const char *type);

bool dmw_is_dm_major(unsigned int major);

#endif
