/* mockhost.h: a stand-in for the core's plugin loader, for plugin tests (STYLE.md 6).
 *
 * mockhost_load("threshold_consensus") dlopens the built plugin by name and returns its
 * descriptor.  It looks, in order, at
 *   $PRIMAL_BUILD_DIR/{plugins,grids,schedulers,loaders}/.libs/NAME.so  (libtool's output)
 *   $PRIMAL_BUILD_DIR/{plugins,grids,schedulers,loaders}/NAME.so
 *   $PRIMAL_TEST_PLUGINDIR/NAME.so
 * and checks only that the descriptor symbol exists and returns non-NULL; tests check the rest
 * (or call primal_plugin_check from core/registry.h).  The test binary must export the primal_*
 * functions the plugin calls (link with -rdynamic).  Handles stay open until
 * mockhost_unload_all(). */
#ifndef PRIMAL_TEST_MOCKHOST_H
#define PRIMAL_TEST_MOCKHOST_H

#include <primal/plugin.h>

/* The descriptor of plugin `name`, or NULL with err saying where it looked and why it failed.
 * If path is not NULL it receives the file's path (valid until mockhost_unload_all). */
const primal_plugin *mockhost_load(const char *name, const char **path, primal_err *err);

/* dlclose every plugin opened so far. */
void mockhost_unload_all(void);

#endif
