/* primal/primal.h: everything a program or plugin needs, in one include. */
#ifndef PRIMAL_PRIMAL_H
#define PRIMAL_PRIMAL_H

#include <primal/datafiles.h>
#include <primal/error.h>
#include <primal/plugin.h>
#include <primal/rng.h>
#include <primal/safetensors.h>
#include <primal/tokenizer.h>

#define PRIMAL_VERSION_STRING "0.1.0"

#endif
