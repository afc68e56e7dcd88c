// SPDX-License-Identifier: GPL-2.0
/*
 * dm-fleece: module entry points.
 *
 * Copyright (C) 2026 The dm-fleece authors
 */

#include <linux/module.h>

#include "dm-fleece.h"
#include "dm-fleece-track.h"

static int __init dm_fleece_init(void)
{
	int r;

	r = fleece_cbw_module_init();
	if (r)
		return r;
	r = fleece_origin_register();
	if (r)
		goto bad_origin;
	r = fleece_view_register();
	if (r)
		goto bad_view;
	r = fleece_track_register();
	if (r)
		goto bad_track;
	return 0;

bad_track:
	fleece_view_unregister();
bad_view:
	fleece_origin_unregister();
bad_origin:
	fleece_cbw_module_exit();
	return r;
}

static void __exit dm_fleece_exit(void)
{
	fleece_track_unregister();
	fleece_view_unregister();
	fleece_origin_unregister();
	fleece_cbw_module_exit();
}

module_init(dm_fleece_init);
module_exit(dm_fleece_exit);

MODULE_DESCRIPTION(DM_NAME " copy-before-write onto a fleece device, with a frozen view, and change tracking");
MODULE_AUTHOR("The dm-fleece authors");
MODULE_LICENSE("GPL");
