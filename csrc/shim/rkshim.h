/* rkllm-cffi shim: the header the compiled module includes (see rkshim_api.h). */
#ifndef RKSHIM_H
#define RKSHIM_H

#include <stddef.h>
#include <stdint.h>

#include "rkshim_api.h"

/* Bumped whenever rkshim_api.h changes; rkllm/_lowlevel.py checks it at import. */
#define RKSHIM_INTERFACE_VERSION 2

#endif
