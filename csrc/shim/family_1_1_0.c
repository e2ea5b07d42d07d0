/* rkllm-cffi shim: conversions for ABI family 1.1.0 (see family_impl.h). */
#define FAM_ID 110
#define FAM_NAME "1.1.0"
#define FAM_TABLE rkshim_family_1_1_0
#include "1.1.0/rkllm.h"
#include "family_impl.h"
