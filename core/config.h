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

/* What the reader (inih) takes: lines of at most PRIMAL_INI_MAX_LINE characters, section names
 * of at most PRIMAL_INI_MAX_SECTION (longer ones inih would cut silently).  The resolved
 * configuration (config.ini) must keep to them too, to load again. */
#define PRIMAL_INI_MAX_LINE 198
#define PRIMAL_INI_MAX_SECTION 49

/* Read path.  Syntax errors (no '=', a line too long, an unterminated section, a section name
 * longer than PRIMAL_INI_MAX_SECTION, a key given twice, a value starting with ';', which
 * "key =;v" gives but config.ini could not write back) are PRIMAL_ECONFIG with
 * "path:line: ...", the first by line; a file that cannot be opened, or a directory ("path: is
 * a directory, not an INI file"), PRIMAL_EIO. */
int primal_ini_load(const char *path, primal_ini **out, primal_err *err);
/* An empty file (for tests and tools); name is used in messages. */
primal_ini *primal_ini_new(const char *name);
void primal_ini_free(primal_ini *ini);
/* Apply "section.key=value" (the key is after the last dot, so section names may contain dots,
 * as in grid.model.layers.*.mlp.down_proj.weight).  The value is read as a file's line reads
 * it: cut at an inline comment (a ';' after white space), without leading and trailing white
 * space.  Refused (PRIMAL_ECONFIG, "--set: [section] ..."): a section name a [header] could not
 * give back (primal_ini_section_problem), a value starting with ';' or holding a line break. */
int primal_ini_set(primal_ini *ini, const char *assignment, primal_err *err);
/* NULL when "[name]" reads back as section name, else why not ("section name longer than 49
 * characters", ...). */
const char *primal_ini_section_problem(const char *name);
/* NULL when a line "key = value" reads back as value, else why not ("starts with ';', ...",
 * "ends in white space, ...", ...).  The length is not checked. */
const char *primal_ini_value_problem(const char *value);
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
