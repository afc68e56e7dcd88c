/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dm-fleece: the one place for differences between kernel versions.
 *
 * The FLEECE_HAVE_* macros come from feature tests that Kbuild runs on the
 * kernel headers at build time, never from version numbers: Debian's stable
 * kernels backport API changes within one version.
 */
#ifndef DM_FLEECE_COMPAT_H
#define DM_FLEECE_COMPAT_H

#include <linux/blkdev.h>
#include <linux/device-mapper.h>
#include <linux/dm-io.h>
#include <linux/ioprio.h>

/*
 * Newer kernels derive max_discard_sectors from max_hw_discard_sectors and
 * the user's limit; older ones let the target set it directly.
 */
static inline void fleece_set_max_discard(struct queue_limits *limits,
					  unsigned int sectors)
{
#ifdef FLEECE_HAVE_DERIVED_MAX_DISCARD
	limits->max_hw_discard_sectors = sectors;
#else
	limits->max_discard_sectors = sectors;
	limits->max_hw_discard_sectors = sectors;
#endif
}

/* dm_io() gained an I/O priority argument, in 6.1.y stable too. */
#ifdef FLEECE_HAVE_DM_IO_IOPRIO
#define fleece_dm_io(req, n, where) dm_io(req, n, where, NULL, IOPRIO_DEFAULT)
#else
#define fleece_dm_io(req, n, where) dm_io(req, n, where, NULL)
#endif

#endif /* DM_FLEECE_COMPAT_H */
