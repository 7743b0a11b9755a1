/* config.h (private to libprimal): the experiment file.
 *
 * The INI file is read with inih into sections of (key, value, line).  `--set section.key=value`
 * overrides are applied on top (line 0, shown as "--set").  Each section is then bound to a key
 * table (the core's own for [run], [model], [optim], [data]; a plugin's descriptor for a plugin
 * section), which checks every key's presence, type and range and fills the defaults.  A bound
 * section is what plugins see as `primal_config` (primal/plugin.h).  Every section and every key
 * of the file must be bound by someone, or the file is refused (a typo never passes silently). */
#ifndef PRIMAL_CONFIG_H
#define PRIMAL_CONFIG_H

#include <stdio.h>

#include <primal/plugin.h>

typedef struct primal_ini primal_ini;

/* Read path.  Syntax errors (no '=', a line too long, an unterminated section) are
 * PRIMAL_ECONFIG with "path:line: ..."; a file that cannot be opened, or a directory
 * ("path: is a directory, not an INI file"), PRIMAL_EIO. */
int primal_ini_load(const char *path, primal_ini **out, primal_err *err);
/* An empty file (for tests and tools); name is used in messages. */
primal_ini *primal_ini_new(const char *name);
void primal_ini_free(primal_ini *ini);
/* Apply "section.key=value" (the key is after the last dot, so section names may contain dots,
 * as in grid.model.layers.*.mlp.down_proj.weight). */
int primal_ini_set(primal_ini *ini, const char *assignment, primal_err *err);
const char *primal_ini_path(const primal_ini *ini);
int primal_ini_nsections(const primal_ini *ini);
const char *primal_ini_section_name(const primal_ini *ini, int i);
int primal_ini_has_section(const primal_ini *ini, const char *section);
/* The raw text of a key, or NULL; *line gets its line (-1 for --set). */
const char *primal_ini_get(const primal_ini *ini, const char *section, const char *key,
                           int *line);
/* Mark a whole section as known although nothing is bound to it yet. */
void primal_ini_claim(primal_ini *ini, const char *section);
/* Refuse sections never bound or claimed: "path:line: [name]: unknown section (...)". */
int primal_ini_check_unused(const primal_ini *ini, const char *known_hint, primal_err *err);

/* Bind one section to a key table.  owner names who accepts the keys in messages ("prime13",
 * "the core"); `ignore` lists keys the caller handles itself (such as "plugin"), NULL-terminated.
 * A section absent from the file binds to all defaults (and fails if a key is required). */
int primal_config_bind(primal_ini *ini, const char *section, const primal_key *keys,
                       const char *owner, const char *const *ignore, primal_config **out,
                       primal_err *err);

/* Build a validated config for one plugin section from "key=value" strings, as the INI reader
 * would (tests, tools).  section names it in messages; the file is "<test>". */
int primal_config_from_kv(const primal_plugin *p, const char *section, const char *const *kv,
                          primal_config **out, primal_err *err);
void primal_config_free(primal_config *c);

/* Replace the text of a bound STRING key's value, keeping where it came from (its line): the
 * core's own resolved values, such as [run] out's run directory. */
int primal_config_set_str(primal_config *c, const char *key, const char *text, primal_err *err);

/* Write the bound section, every key with its value (defaults included), as INI text. */
void primal_config_write(const primal_config *c, FILE *f);
/* Same into a malloc'ed string appended to *buf (for config.ini and checkpoints). */
const primal_key *primal_config_keys(const primal_config *c);

/* Check one text value against a key's type and range; used by --set validation and tests. */
int primal_key_check(const primal_key *k, const char *text, char *why, size_t whylen);

#endif
