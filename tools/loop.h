/* SPDX-License-Identifier: GPL-2.0 */
/*
 * fleece(8): loop devices over sparse fleece files (--fleece-dir).
 */
#ifndef FLEECE_LOOP_H
#define FLEECE_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * Attach @file to a free loop device, with direct I/O when the file system
 * allows it, and auto-clear: the loop device goes away by itself once the
 * last user (the fleece tables) lets go of it.  Returns an open fd on the
 * loop device (the caller keeps it until a table holds the device) and its
 * path in @path.
 */
int loop_attach(const char *file, unsigned int block_size, char *path, size_t len,
		dev_t *dev, bool *dio);

/* The backing file of a loop device, or -ENXIO when it is not bound. */
int loop_backing_file(dev_t dev, char *buf, size_t len);

/* Detach @dev if it is still bound to @file; waits until it is gone. */
int loop_detach_file(dev_t dev, const char *file);

/* Is any loop device bound to @file?  Returns its number in @dev. */
bool loop_find_file(const char *file, dev_t *dev);

#endif
